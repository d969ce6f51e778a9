//! Exact ROC AUC over a slice of scores: the Mann–Whitney U statistic divided by the number of
//! positive–negative pairs, with tied scores counting one half.

use super::MetricError;

/// Exact area under the ROC curve of `scores` against binary `labels`, or why it is undefined.
///
/// This is the probability that a randomly drawn positive scores higher than a randomly drawn
/// negative, where a pair with equal scores counts one half (the average-rank form of the
/// Mann–Whitney statistic). It matches scikit-learn's `roc_auc_score` for binary labels.
///
/// Any non-zero label is a positive. The scores are sorted once, O(n log n); pair counts are
/// accumulated exactly in integers and divided once in `f64`, so the result depends only on the
/// multiset of (score, label) pairs, never on their order. `-0.0` and `0.0` count as a tie, and
/// infinite scores rank like any other.
///
/// # Errors
///
/// - [`MetricError::LengthMismatch`] when `scores` and `labels` differ in length;
/// - [`MetricError::NanScores`] when any score is NaN: a NaN has no rank, so no ordering of the
///   samples (and no AUC) exists; sklearn refuses such input too ("Input contains NaN");
/// - [`MetricError::OneClass`] when there are no positives or no negatives (empty input
///   included), where the AUC is undefined.
pub fn try_auc(scores: &[f32], labels: &[u8]) -> Result<f64, MetricError> {
    super::check_lengths("scores", scores.len(), labels.len())?;
    super::check_not_nan(scores)?;
    let mut pairs: Vec<(f32, bool)> = scores.iter().zip(labels).map(|(&s, &y)| (s, y != 0)).collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    auc_of_sorted(pairs.into_iter()).ok_or_else(|| MetricError::one_class(labels))
}

/// [`try_auc`] without the reason: `None` wherever the AUC is undefined (one class only, a NaN
/// score, or slices of different lengths). Never panics.
pub fn auc(scores: &[f32], labels: &[u8]) -> Option<f64> {
    try_auc(scores, labels).ok()
}

/// AUC of (score, is-positive) pairs that arrive sorted by ascending score, none of them NaN.
///
/// Shared by [`try_auc`] and the per-user pass of [`gauc`](super::gauc()). Within a run of
/// equal scores the order does not matter. Returns `None` when one class is missing.
pub(crate) fn auc_of_sorted(sorted: impl Iterator<Item = (f32, bool)>) -> Option<f64> {
    // Twice the Mann–Whitney U: each positive above a negative adds 2, each tied pair adds 1.
    // Kept as an integer so the sum is exact and order-free; it is at most 2·P·N, which fits in
    // u128 for any slice length.
    let mut twice_u: u128 = 0;
    let mut positives: u64 = 0;
    // Negatives with a score strictly below the current run of equal scores.
    let mut negatives: u64 = 0;
    let mut run_score: Option<f32> = None;
    let (mut run_pos, mut run_neg) = (0u64, 0u64);

    let mut close_run = |run_pos: u64, run_neg: u64, positives: &mut u64, negatives: &mut u64| {
        twice_u += 2 * u128::from(run_pos) * u128::from(*negatives) + u128::from(run_pos) * u128::from(run_neg);
        *positives += run_pos;
        *negatives += run_neg;
    };

    for (score, positive) in sorted {
        match run_score {
            // `==` rather than bit equality, so -0.0 and 0.0 share a run.
            Some(s) if s == score => {}
            Some(s) => {
                debug_assert!(s < score, "auc_of_sorted: scores must arrive in ascending order");
                close_run(run_pos, run_neg, &mut positives, &mut negatives);
                (run_pos, run_neg) = (0, 0);
                run_score = Some(score);
            }
            None => run_score = Some(score),
        }
        if positive {
            run_pos += 1;
        } else {
            run_neg += 1;
        }
    }
    close_run(run_pos, run_neg, &mut positives, &mut negatives);

    if positives == 0 || negatives == 0 {
        return None;
    }
    let twice_pairs = 2.0 * positives as f64 * negatives as f64;
    Some(twice_u as f64 / twice_pairs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny xorshift64 generator, so the property tests need no extra crate and are seeded.
    pub(crate) struct XorShift(pub u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// Uniform-ish integer in `0..n`.
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Fisher–Yates shuffle of the indices `0..n`.
        pub(crate) fn permutation(&mut self, n: usize) -> Vec<usize> {
            let mut idx: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                let j = self.below(i as u64 + 1) as usize;
                idx.swap(i, j);
            }
            idx
        }
    }

    /// The definition, O(n^2): over all positive–negative pairs, 1 if the positive scores higher,
    /// 1/2 if equal.
    fn naive_auc(scores: &[f32], labels: &[u8]) -> Option<f64> {
        let (mut wins, mut pairs) = (0.0f64, 0u64);
        for (sp, _) in scores.iter().zip(labels).filter(|(_, &y)| y != 0) {
            for (sn, _) in scores.iter().zip(labels).filter(|(_, &y)| y == 0) {
                pairs += 1;
                if sp > sn {
                    wins += 1.0;
                } else if sp == sn {
                    wins += 0.5;
                }
            }
        }
        (pairs > 0).then(|| wins / pairs as f64)
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn distinct_scores_match_sklearn() {
        let y = [0, 0, 1, 1];
        let s = [0.1, 0.4, 0.35, 0.8];
        // sklearn 1.9.1 roc_auc_score([0,0,1,1], [0.1,0.4,0.35,0.8]) prints 0.75
        assert_eq!(auc(&s, &y), Some(0.75));
    }

    #[test]
    fn ties_count_one_half() {
        let y = [0, 1, 0, 1, 1, 0];
        let s = [0.5, 0.5, 0.2, 0.9, 0.2, 0.7];
        // sklearn 1.9.1 roc_auc_score([0,1,0,1,1,0], [0.5,0.5,0.2,0.9,0.2,0.7])
        // prints 0.5555555555555556
        let got = auc(&s, &y).expect("both classes present");
        assert!(close(got, 0.5555555555555556, 1e-15), "got {got}");
    }

    #[test]
    fn all_scores_tied_give_one_half() {
        // sklearn 1.9.1 roc_auc_score([1,0,1,0], [0.3,0.3,0.3,0.3]) prints 0.5
        assert_eq!(auc(&[0.3; 4], &[1, 0, 1, 0]), Some(0.5));
    }

    /// 24 samples with several runs of tied scores, shared by the AUC and reversal tests.
    const Y24: [u8; 24] = [1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0];
    const S24: [f32; 24] = [
        0.9, 0.1, 0.4, 0.4, 0.7, 0.7, 0.2, 0.55, 0.1, 0.8, 0.4, 0.4, 0.9, 0.3, 0.7, 0.2, 0.55, 0.6, 0.6, 0.1, 0.9, 0.3,
        0.7, 0.05,
    ];

    #[test]
    fn twenty_four_samples_with_many_ties_match_sklearn() {
        // sklearn 1.9.1 roc_auc_score(Y24, S24) prints 0.6748251748251749
        let got = auc(&S24, &Y24).expect("both classes present");
        assert!(close(got, 0.6748251748251749, 1e-15), "got {got}");
    }

    #[test]
    fn reversed_scores_give_one_minus_auc() {
        let forward = auc(&S24, &Y24).expect("both classes present");
        let negated: Vec<f32> = S24.iter().map(|s| -s).collect();
        let backward = auc(&negated, &Y24).expect("both classes present");
        // sklearn 1.9.1 roc_auc_score(Y24, -S24) prints 0.32517482517482516
        assert!(close(backward, 0.32517482517482516, 1e-15), "got {backward}");
        assert!(close(backward, 1.0 - forward, 1e-15), "{backward} vs 1 - {forward}");
    }

    #[test]
    fn single_class_or_empty_input_gives_none() {
        assert_eq!(auc(&[0.1, 0.5, 0.9], &[1, 1, 1]), None);
        assert_eq!(auc(&[0.1, 0.5, 0.9], &[0, 0, 0]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn any_non_zero_label_is_a_positive() {
        let s = [0.1, 0.4, 0.35, 0.8];
        assert_eq!(auc(&s, &[0, 0, 7, 255]), auc(&s, &[0, 0, 1, 1]));
    }

    #[test]
    fn negative_and_positive_zero_are_a_tie() {
        // One positive at +0.0, one negative at -0.0: a single tied pair, AUC 1/2 by definition.
        assert_eq!(auc(&[0.0, -0.0], &[1, 0]), Some(0.5));
    }

    #[test]
    fn result_is_independent_of_input_order() {
        let mut rng = XorShift(42);
        let n = 300;
        let scores: Vec<f32> = (0..n).map(|_| rng.below(7) as f32 * 0.125).collect();
        let labels: Vec<u8> = (0..n).map(|_| u8::from(rng.below(2) == 0)).collect();
        let reference = auc(&scores, &labels).expect("both classes present");
        for _ in 0..5 {
            let perm = rng.permutation(n);
            let s: Vec<f32> = perm.iter().map(|&i| scores[i]).collect();
            let y: Vec<u8> = perm.iter().map(|&i| labels[i]).collect();
            let got = auc(&s, &y).expect("both classes present");
            assert_eq!(got.to_bits(), reference.to_bits(), "shuffled input changed the AUC");
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_naming_both() {
        let e = try_auc(&[0.1, 0.2, 0.3], &[0, 1]).unwrap_err();
        assert_eq!(e, MetricError::LengthMismatch { what: "scores", values: 3, labels: 2 });
        assert!(e.to_string().contains("scores has 3 entries but labels has 2"), "{e}");
        assert_eq!(auc(&[0.1, 0.2, 0.3], &[0, 1]), None);
    }

    #[test]
    fn nan_scores_are_an_error_counting_them_not_a_panic() {
        // Issue 13 item 8: a NaN model made `micn eval` panic here.
        let e = try_auc(&[0.1, f32::NAN, 0.3, f32::NAN], &[0, 1, 1, 0]).unwrap_err();
        assert_eq!(e, MetricError::NanScores { nan: 2, total: 4 });
        assert_eq!(e.to_string(), "the model's scores are not finite (2 of 4 are NaN)");
        assert_eq!(auc(&[f32::NAN; 3], &[0, 1, 0]), None);
    }

    #[test]
    fn one_class_is_an_error_with_the_counts() {
        let e = try_auc(&[0.1, 0.5, 0.9], &[1, 1, 1]).unwrap_err();
        assert_eq!(e, MetricError::OneClass { positives: 3, negatives: 0 });
        assert_eq!(try_auc(&[], &[]).unwrap_err(), MetricError::OneClass { positives: 0, negatives: 0 });
    }

    #[test]
    fn infinite_scores_rank_like_any_other() {
        // By the definition: the positive at +inf beats both negatives, the one at -inf none.
        assert_eq!(auc(&[f32::INFINITY, 0.5, f32::NEG_INFINITY, 0.1], &[1, 0, 1, 0]), Some(0.5));
        assert_eq!(auc(&[f32::INFINITY, f32::NEG_INFINITY], &[1, 0]), Some(1.0));
    }

    proptest::proptest! {
        /// The sorted, tie-aware computation equals the definition, P(score⁺ > score⁻) with ties
        /// counted half, over every positive–negative pair (scores on a coarse grid: many ties).
        #[test]
        fn sorted_auc_equals_the_pairwise_definition(samples in proptest::collection::vec((0u8..12, proptest::bool::ANY), 0..120)) {
            let scores: Vec<f32> = samples.iter().map(|&(s, _)| f32::from(s) / 4.0).collect();
            let labels: Vec<u8> = samples.iter().map(|&(_, y)| u8::from(y)).collect();
            match (auc(&scores, &labels), naive_auc(&scores, &labels)) {
                (Some(sorted), Some(pairwise)) => proptest::prop_assert!(close(sorted, pairwise, 1e-12), "{} vs {}", sorted, pairwise),
                (sorted, pairwise) => proptest::prop_assert_eq!(sorted, pairwise),
            }
        }
    }
}
