//! Which samples each rank trains on (SPEC §3): one permutation of all training samples per
//! epoch, drawn from `(seed, epoch)` and identical on every rank; step `s` covers positions
//! `s·B .. (s+1)·B` of it (B = global batch), and rank `r` of `N` takes the `r`-th slice of
//! `B / N` positions. So N ranks × b samples cover exactly what 1 rank × N·b does, and a run
//! resumed with another world size continues from the same global position.
//!
//! Before any of this, a seeded share of the training archive is held out for validation
//! ([`validation_split`]): mid-run evaluations and the choice of the best checkpoint use it, never
//! the test set.
use crate::rng::{stream, Rng};

/// The training archive's samples divided into those trained on and those held out for
/// validation, both in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
}

/// Hold out a seeded share of the `n` training samples. `by_user`: whole users go to validation
/// (the `dien` protocol, whose test set holds out whole users too), judged by `user_key(i)`;
/// otherwise single samples (the `din` protocol, whose test set is each user's last behaviour).
/// A share of 0 holds out nothing, and the training order is then exactly that of all samples.
pub fn validation_split(n: usize, user_key: impl Fn(usize) -> u32, by_user: bool, share: f64, seed: u64) -> Split {
    let mut split = Split { train: Vec::with_capacity(n), valid: Vec::new() };
    for i in 0..n {
        let key = if by_user { u64::from(user_key(i)) } else { i as u64 };
        let held_out = share > 0.0 && Rng::derive(seed, &[stream::VALIDATION, u64::from(by_user), key]).chance(share);
        if held_out { &mut split.valid } else { &mut split.train }.push(i as u32);
    }
    split
}

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
    "train.global_batch_size = {global_batch} is not divisible by the world size {world}: run on a number of ranks \
     that divides it ({}), or choose a multiple of {world} (not on a resume: a run keeps its checkpoint's global \
     batch)",
    divisors(*global_batch)
)]
pub struct Indivisible {
    pub global_batch: usize,
    pub world: usize,
}

/// The numbers of ranks up to 64 that divide `n`, as a list to read (`1, 2, 4, 8`).
fn divisors(n: usize) -> String {
    let all: Vec<String> = (1..=n.min(64)).filter(|d| n % d == 0).map(|d| d.to_string()).collect();
    all.join(", ")
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
    fn a_global_batch_that_does_not_split_evenly_names_the_world_sizes_that_would() {
        assert_eq!(local_batch(96, 3).unwrap(), 32);
        let e = local_batch(64, 3).unwrap_err().to_string();
        assert!(
            e.contains(
                "not divisible by the world size 3: run on a number of ranks that divides it (1, 2, 4, 8, 16, 32, 64)"
            ),
            "{e}"
        );
    }

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
    fn validation_holds_out_a_seeded_share_of_users_or_samples() {
        // 20,000 samples of 2,000 users (10 each, interleaved).
        let user = |i: usize| (i % 2000) as u32;
        let by_user = validation_split(20_000, user, true, 0.1, 7);
        assert_eq!(by_user.train.len() + by_user.valid.len(), 20_000);
        let share = by_user.valid.len() as f64 / 20_000.0;
        assert!((0.08..0.12).contains(&share), "share of users held out: {share}");
        let valid_users: std::collections::HashSet<u32> = by_user.valid.iter().map(|&i| user(i as usize)).collect();
        assert!(by_user.train.iter().all(|&i| !valid_users.contains(&user(i as usize))), "a user is on both sides");
        assert_eq!(by_user, validation_split(20_000, user, true, 0.1, 7), "the same seed, the same split");
        assert_ne!(by_user, validation_split(20_000, user, true, 0.1, 8));
        let by_sample = validation_split(20_000, user, false, 0.1, 7);
        let users_on_both_sides = by_sample.valid.iter().filter(|&&i| by_sample.train.contains(&(i + 2000))).count();
        assert!(users_on_both_sides > 0, "single samples, not whole users, are held out");
        let none = validation_split(500, user, true, 0.0, 7);
        assert_eq!((none.train, none.valid), ((0..500).collect(), vec![]));
    }

    #[test]
    fn indivisible_batches_are_refused_with_the_numbers() {
        assert_eq!(local_batch(128, 4), Ok(32));
        let e = local_batch(128, 3).unwrap_err();
        assert!(e.to_string().contains("128") && e.to_string().contains("world size 3"), "{e}");
    }

    proptest::proptest! {
        /// Over an epoch the ranks' slices take every sample of the epoch's permutation: exactly
        /// once when the remainder is dropped (and then as many as fill whole batches), and at least
        /// once otherwise, the only repeats being the last batch's wrap-around.
        #[test]
        fn over_an_epoch_the_ranks_shards_are_disjoint_and_cover_every_sample(
            samples in 1usize..300, per_rank in 1usize..12, world in 1usize..5, seed in proptest::num::u64::ANY, epoch in 0u64..3,
        ) {
            let global = per_rank * world;
            let order = permutation(samples, seed, epoch);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            proptest::prop_assert_eq!(sorted, (0..samples as u32).collect::<Vec<_>>());
            for drop_remainder in [false, true] {
                let steps = steps_per_epoch(samples, global, drop_remainder);
                let mut seen = vec![0usize; samples];
                for step in 0..steps {
                    for rank in 0..world {
                        let (first, ids) = rank_slice(&order, step, global, world, rank);
                        proptest::prop_assert_eq!(first as usize, step as usize * global + rank * per_rank);
                        proptest::prop_assert_eq!(ids.len(), per_rank);
                        ids.into_iter().for_each(|id| seen[id as usize] += 1);
                    }
                }
                let total = steps as usize * global;
                if drop_remainder {
                    proptest::prop_assert!(seen.iter().all(|&c| c <= 1));
                    proptest::prop_assert_eq!(seen.iter().sum::<usize>(), samples / global * global);
                } else {
                    proptest::prop_assert!(seen.iter().all(|&c| c >= 1));
                    proptest::prop_assert_eq!(seen.iter().sum::<usize>(), total);
                    proptest::prop_assert!(total - samples < global, "padding is less than one batch");
                }
            }
        }
    }
}
