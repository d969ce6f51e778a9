//! Every communicator operation gives the same, formula-checked result over thread ranks
//! (1, 2, 3), a single process and a real `mpirun -np 2`.
use micn::dist::{check, CommError, Communicator, CommunicatorExt, SingleProcess, ThreadRanks};

use crate::{micn_bin, mpirun, run_ok};

fn outcomes_over_threads(n: usize) -> Vec<check::Outcome> {
    ThreadRanks::run(n, |comm| check::run(&comm).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn every_operation_matches_its_formula_on_1_2_and_3_thread_ranks() {
    for n in 1..=3 {
        let outcomes = outcomes_over_threads(n);
        assert_eq!(outcomes.len(), n);
        assert!(outcomes.iter().all(|o| o == &outcomes[0]), "ranks disagree for n = {n}");
        assert_eq!(outcomes[0].world_size, n);
    }
}

#[test]
fn single_process_is_a_world_of_one_thread_rank() {
    let single = check::run(&SingleProcess).unwrap();
    assert_eq!(single, outcomes_over_threads(1).remove(0));
}

#[test]
fn a_rank_that_leaves_releases_its_peers_with_an_error() {
    let results = ThreadRanks::run(3, |comm| {
        if comm.rank() == 1 {
            return Ok(()); // leaves without joining the barrier
        }
        comm.barrier()
    });
    assert!(matches!(results[0], Err(CommError::PeerGone { rank: 0 })), "{:?}", results[0]);
    assert!(matches!(results[2], Err(CommError::PeerGone { rank: 2 })), "{:?}", results[2]);
}

#[test]
fn broadcast_rejects_a_root_outside_the_world_and_mismatched_lengths() {
    let results = ThreadRanks::run(2, |comm| {
        let bad_root = comm.broadcast_bytes(5, &mut [0u8; 4]);
        let mut buf = vec![0u8; 3 + comm.rank()];
        let mismatch = comm.broadcast_bytes(0, &mut buf);
        (bad_root, mismatch)
    });
    assert!(matches!(results[0].0, Err(CommError::BadRoot { root: 5, size: 2, .. })));
    assert!(results[0].1.is_ok());
    assert!(matches!(results[1].1, Err(CommError::LengthMismatch { got: 3, expected: 4, .. })));
}

#[test]
fn an_all_gather_with_wrong_announced_lengths_is_an_error_not_a_misread() {
    let results = ThreadRanks::run(2, |comm| comm.all_gather_bytes_sized(&[7u8; 2], &[2, 3]));
    for r in results {
        match r {
            Err(CommError::CountMismatch { announced, sent, .. }) => {
                assert_eq!((announced, sent), (vec![2, 3], vec![2, 2]));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn repeated_collectives_stay_in_step() {
    // Many rounds back to back: a fast rank must never read a slow rank's stale round.
    let sums = ThreadRanks::run(3, |comm| {
        let mut total = 0.0f32;
        for round in 0..500 {
            let mut buf = [comm.rank() as f32 + round as f32];
            comm.all_reduce_sum_f32(&mut buf).unwrap();
            total += buf[0];
            let ids = comm.all_gather(&[round as u32; 2]).unwrap();
            assert_eq!(ids.data, vec![round as u32; 6]);
        }
        total
    });
    // Σ_round (0 + 1 + 2 + 3·round) = 500·3 + 3·(499·500/2)
    assert_eq!(sums, vec![1500.0 + 3.0 * 124_750.0; 3]);
}

#[test]
fn mpirun_two_ranks_match_two_thread_ranks() {
    let out = run_ok(mpirun(2).arg(micn_bin()).args(["--comm", "mpi", "doctor", "--json", "--check-comm"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints one JSON object");
    assert_eq!(report["world_size"], 2);
    assert_eq!(report["backend"], "mpi");
    let expected = serde_json::to_value(&outcomes_over_threads(2)[0]).unwrap();
    assert_eq!(report["comm_check"], expected);
}

/// A rank whose peer never starts waits in `MPI_Init` (OpenMPI's start is a fence over every
/// process of the job), where no collective watchdog can see it; the start limit ends it with a
/// message naming the wait, and mpirun ends the job. The peer here sleeps instead of starting
/// micn: with the limit off, rank 0 waits until the sleep ends.
#[test]
fn a_rank_stuck_in_mpi_init_because_a_peer_never_started_ends_at_the_start_limit() {
    let job = |limit: &str, sleep: &str| {
        let script = format!(
            "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec sleep {sleep}; fi; exec {} doctor",
            micn_bin().display()
        );
        let started = std::time::Instant::now();
        let out =
            mpirun(2).args(["-x", &format!("MICN_MPI_START_TIMEOUT={limit}"), "sh", "-c", &script]).output().unwrap();
        (out, started.elapsed().as_secs_f64())
    };
    let (out, seconds) = job("2", "60");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("error: starting MPI (MPI_Init) did not finish within 2 s on host")
            && stderr.contains("MICN_MPI_START_TIMEOUT"),
        "{stderr}"
    );
    assert!(seconds < 30.0, "the job ended after {seconds:.1} s, not at the 2 s limit");
    let (_, seconds) = job("0", "4");
    assert!(seconds >= 4.0, "without the limit rank 0 waits for its peer ({seconds:.1} s)");
}
