//! Which samples each rank trains on (SPEC §3): one permutation of all training samples per
//! epoch, drawn from `(seed, epoch)` and identical on every rank; step `s` covers positions
//! `s·B .. (s+1)·B` of it (B = global batch), and rank `r` of `N` takes the `r`-th slice of
//! `B / N` positions. So N ranks × b samples cover exactly what 1 rank × N·b does, and a run
//! resumed with another world size continues from the same global position.
use crate::rng::{stream, Rng};

/// Steps in one epoch: the last incomplete batch is dropped, or padded by wrapping around to the
/// start of the permutation.
pub fn steps_per_epoch(samples: usize, global_batch: usize, drop_remainder: bool) -> u64 {
    assert!(global_batch > 0, "global batch must be positive");
    if drop_remainder {
        (samples / global_batch) as u64
    } else {
        samples.div_ceil(global_batch) as u64
    }
}

/// The epoch's order of sample indices.
pub fn permutation(samples: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..samples as u32).collect();
    Rng::derive(seed, &[stream::EPOCH_PERMUTATION, epoch]).shuffle(&mut order);
    order
}

/// Error for a global batch the world size does not divide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "train.global_batch_size = {global_batch} is not divisible by the world size {world}; choose a multiple of {world}"
)]
pub struct Indivisible {
    pub global_batch: usize,
    pub world: usize,
}

/// Samples per rank and step.
pub fn local_batch(global_batch: usize, world: usize) -> Result<usize, Indivisible> {
    if world == 0 || global_batch % world != 0 {
        return Err(Indivisible { global_batch, world });
    }
    Ok(global_batch / world)
}

/// The sample indices of the whole global batch at `step` (every rank's slice, in rank order).
pub fn global_slice(order: &[u32], step: u64, global_batch: usize) -> impl Iterator<Item = u32> + '_ {
    let first = step as usize * global_batch;
    (first..first + global_batch).map(|pos| order[pos % order.len()])
}

/// The positions (within the epoch) of `rank`'s samples at `step`, and the sample indices.
pub fn rank_slice(order: &[u32], step: u64, global_batch: usize, world: usize, rank: usize) -> (u64, Vec<u32>) {
    let local = global_batch / world;
    let first = step as usize * global_batch + rank * local;
    let ids = (first..first + local).map(|pos| order[pos % order.len()]).collect();
    (first as u64, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_of_a_step_are_disjoint_and_cover_the_global_batch() {
        let order = permutation(1000, 5, 2);
        for world in [1, 2, 4] {
            for step in 0..steps_per_epoch(1000, 64, true) {
                let mut all: Vec<u32> = (0..world).flat_map(|r| rank_slice(&order, step, 64, world, r).1).collect();
                let (_, one) = rank_slice(&order, step, 64, 1, 0);
                assert_eq!(all, one, "ranks in order concatenate to the single-rank batch");
                all.sort();
                all.dedup();
                assert_eq!(all.len(), 64);
            }
        }
    }

    #[test]
    fn an_epoch_visits_every_sample_once() {
        let order = permutation(1000, 5, 0);
        let mut seen: Vec<u32> = (0..steps_per_epoch(1000, 100, true))
            .flat_map(|s| rank_slice(&order, s, 100, 2, 0).1.into_iter().chain(rank_slice(&order, s, 100, 2, 1).1))
            .collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn remainder_is_dropped_or_padded_by_wrapping() {
        assert_eq!(steps_per_epoch(1000, 300, true), 3);
        assert_eq!(steps_per_epoch(1000, 300, false), 4);
        let order = permutation(1000, 1, 0);
        let (first, last) = rank_slice(&order, 3, 300, 1, 0);
        assert_eq!(first, 900);
        assert_eq!(&last[100..], &order[..200], "padding wraps to the start of the permutation");
    }

    #[test]
    fn permutations_depend_on_seed_and_epoch_only() {
        assert_eq!(permutation(50, 1, 1), permutation(50, 1, 1));
        assert_ne!(permutation(50, 1, 1), permutation(50, 1, 2));
        assert_ne!(permutation(50, 1, 1), permutation(50, 2, 1));
    }

    #[test]
    fn indivisible_batches_are_refused_with_the_numbers() {
        assert_eq!(local_batch(128, 4), Ok(32));
        let e = local_batch(128, 3).unwrap_err();
        assert!(e.to_string().contains("128") && e.to_string().contains("world size 3"), "{e}");
    }
}
