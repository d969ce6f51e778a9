//! A battery of every collective with rank-dependent inputs and closed-form expected results.
//! `micn doctor --check-comm` runs it to prove a cluster's MPI set-up works; the tests run it
//! over every back-end and compare the outcomes, which must not depend on the back-end.
use serde::Serialize;

use super::{Communicator, CommunicatorExt, Gathered};

/// What every operation returned on this rank; equal on every rank and every back-end for the
/// same world size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub world_size: usize,
    pub all_reduce_sum: Vec<f32>,
    pub all_gather_u32: Gathered<u32>,
    pub all_gather_i64: Gathered<i64>,
    pub all_gather_f32: Gathered<f32>,
    pub all_gather_bytes: Gathered<u8>,
    pub all_gather_bytes_sized: Gathered<u8>,
    pub broadcast_from_last: Vec<i64>,
    pub broadcast_vec_from_first: Vec<u8>,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A collective failed outright.
    #[error(transparent)]
    Comm(#[from] super::CommError),
    /// A collective returned something other than its formula's value.
    #[error("rank {rank}: {operation} gave {got}")]
    Wrong { rank: usize, operation: &'static str, got: String },
}

/// Run every collective once and check each result against its formula; the first mismatch is
/// the error.
pub fn run(comm: &dyn Communicator) -> Result<Outcome, CheckError> {
    let (r, n) = (comm.rank(), comm.size());
    let fail = |operation: &'static str, got: &dyn std::fmt::Debug| CheckError::Wrong {
        rank: r,
        operation,
        got: format!("{got:?}"),
    };

    // Sum: rank r contributes (r + 1)·i + 0.5; integers and halves are exact in f32.
    let mut sum: Vec<f32> = (0..1000).map(|i| (r + 1) as f32 * i as f32 + 0.5).collect();
    comm.all_reduce_sum_f32(&mut sum)?;
    let tri = (n * (n + 1) / 2) as f32;
    if sum.iter().enumerate().any(|(i, &s)| s != tri * i as f32 + 0.5 * n as f32) {
        return Err(fail("all_reduce_sum_f32", &&sum[..4]));
    }
    let mut empty: Vec<f32> = Vec::new();
    comm.all_reduce_sum_f32(&mut empty)?;

    // Variable lengths, rank 0 contributing nothing.
    let mine_u32: Vec<u32> = (0..r as u32).map(|k| 100 * r as u32 + k).collect();
    let all_u32 = comm.all_gather(&mine_u32)?;
    let expect_u32: Vec<u32> = (0..n as u32).flat_map(|q| (0..q).map(move |k| 100 * q + k)).collect();
    if all_u32.data != expect_u32 || all_u32.counts != (0..n).collect::<Vec<_>>() {
        return Err(fail("all_gather::<u32>", &all_u32));
    }
    let mine_i64: Vec<i64> = (0..=r as i64).map(|k| -((r as i64) << 40) - k).collect();
    let all_i64 = comm.all_gather(&mine_i64)?;
    let expect_i64: Vec<i64> = (0..n as i64).flat_map(|q| (0..=q).map(move |k| -(q << 40) - k)).collect();
    if all_i64.data != expect_i64 {
        return Err(fail("all_gather::<i64>", &all_i64));
    }
    let mine_f32: Vec<f32> = (0..2 * r + 1).map(|k| r as f32 + k as f32 / 4.0).collect();
    let all_f32 = comm.all_gather(&mine_f32)?;
    let expect_f32: Vec<f32> = (0..n).flat_map(|q| (0..2 * q + 1).map(move |k| q as f32 + k as f32 / 4.0)).collect();
    if all_f32.data != expect_f32 {
        return Err(fail("all_gather::<f32>", &all_f32));
    }
    let all_bytes = comm.all_gather_bytes(format!("rank-{r}").as_bytes())?;
    let expect_bytes: Vec<u8> = (0..n).flat_map(|q| format!("rank-{q}").into_bytes()).collect();
    if all_bytes.data != expect_bytes {
        return Err(fail("all_gather_bytes", &all_bytes));
    }
    // Lengths every rank knows beforehand: rank q sends 3·q bytes of value q.
    let sized_counts: Vec<usize> = (0..n).map(|q| 3 * q).collect();
    let sized = comm.all_gather_bytes_sized(&vec![r as u8; 3 * r], &sized_counts)?;
    let expect_sized: Vec<u8> = (0..n).flat_map(|q| vec![q as u8; 3 * q]).collect();
    if sized.data != expect_sized || sized.counts != sized_counts {
        return Err(fail("all_gather_bytes_sized", &sized));
    }

    let last = n - 1;
    let mut from_last: Vec<i64> = if r == last { (0..17).map(|k| k * 1_000_000_007).collect() } else { vec![0; 17] };
    comm.broadcast(last, &mut from_last)?;
    if from_last != (0..17).map(|k| k * 1_000_000_007).collect::<Vec<i64>>() {
        return Err(fail("broadcast::<i64>", &from_last));
    }
    let payload = if r == 0 { b"root says hello".to_vec() } else { b"ignored".to_vec() };
    let from_first = comm.broadcast_vec(0, &payload)?;
    if from_first != b"root says hello" {
        return Err(fail("broadcast_vec", &from_first));
    }
    let empty = comm.broadcast_vec(0, &[])?;
    if !empty.is_empty() {
        return Err(fail("broadcast_vec of nothing", &empty));
    }
    // Every rank sending nothing (OpenMPI refuses such a gather: it is skipped by all alike).
    let nothing = comm.all_gather_bytes(&[])?;
    if !nothing.data.is_empty() || nothing.counts != vec![0; n] {
        return Err(fail("all_gather_bytes of nothing", &nothing));
    }
    comm.barrier()?;

    Ok(Outcome {
        world_size: n,
        all_reduce_sum: sum,
        all_gather_u32: all_u32,
        all_gather_i64: all_i64,
        all_gather_f32: all_f32,
        all_gather_bytes: all_bytes,
        all_gather_bytes_sized: sized,
        broadcast_from_last: from_last,
        broadcast_vec_from_first: from_first,
    })
}
