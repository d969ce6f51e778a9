//! `micn doctor`: single process and under `mpirun -np 2`.
use crate::{micn_bin, mpirun, run_ok};

#[test]
fn doctor_without_mpirun_is_a_world_of_one() {
    let out = run_ok(std::process::Command::new(micn_bin()).args(["doctor", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["world_size"], 1);
    assert_eq!(report["backend"], "single");
    assert!(report["libtorch_version"].as_str().unwrap().starts_with("2.11.0"), "{report}");
    assert_eq!(report["ranks"][0]["cuda_available"], false, "this machine has no GPU");
}

#[test]
fn doctor_under_mpirun_reports_both_ranks() {
    let out = run_ok(mpirun(2).arg(micn_bin()).arg("doctor"));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("communicator  mpi (world size 2)"), "{text}");
    assert!(text.contains("rank 0 of 2"), "{text}");
    assert!(text.contains("rank 1 of 2"), "{text}");
    assert!(text.contains("Open MPI"), "{text}");
    // Rank 0 prints the report once for the whole job.
    assert_eq!(text.matches("libtorch ").count(), 1, "{text}");
}

#[test]
fn doctor_json_under_mpirun_lists_ranks_0_and_1() {
    let out = run_ok(mpirun(2).arg(micn_bin()).args(["--log-format", "json", "doctor", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranks: Vec<u64> = report["ranks"].as_array().unwrap().iter().map(|r| r["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, vec![0, 1]);
    let locals: Vec<u64> =
        report["ranks"].as_array().unwrap().iter().map(|r| r["local_rank"].as_u64().unwrap()).collect();
    assert_eq!(locals, vec![0, 1], "both ranks share this host");
    // Every log line is a JSON object carrying its rank.
    let mut log_ranks: Vec<u64> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .map(|v| v["rank"].as_u64().expect("a rank field"))
        .collect();
    log_ranks.sort();
    log_ranks.dedup();
    assert_eq!(log_ranks, vec![0, 1]);
}

#[test]
fn text_log_lines_carry_the_rank() {
    let out = run_ok(mpirun(2).arg(micn_bin()).arg("doctor"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.lines().any(|l| l.starts_with("[rank 0] ")), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("[rank 1] ")), "{stderr}");
}
