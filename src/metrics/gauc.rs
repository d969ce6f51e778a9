//! Group AUC (GAUC) as defined in the DIN paper (Zhou et al., "Deep Interest Network for
//! Click-Through Rate Prediction", KDD 2018, eq. 6): the AUC of each user's own impressions,
//! averaged with each user weighted by their number of impressions.

use super::auc::auc_of_sorted;
use super::MetricError;

/// Group AUC: `sum_u n_u * AUC_u / sum_u n_u` over the users `u` whose impressions include both
/// a positive and a negative, where `n_u` is the user's number of samples (impressions) and
/// `AUC_u` the exact AUC of those samples, ties counting one half (see [`try_auc`](super::try_auc)).
///
/// Users whose samples are all one class have no AUC and are skipped: they add nothing to the
/// numerator or to the weights. Any non-zero label is a positive.
///
/// The samples are sorted by (user, score) once, O(n log n), and users are summed in ascending
/// id order, so the result depends only on the multiset of (user, score, label) triples, never
/// on their order.
///
/// # Errors
///
/// [`MetricError::LengthMismatch`] when the slices differ in length, [`MetricError::NanScores`]
/// when any score is NaN, and [`MetricError::NoUserWithBothClasses`] when no user has both
/// classes (empty input included).
pub fn try_gauc(users: &[u32], scores: &[f32], labels: &[u8]) -> Result<f64, MetricError> {
    super::check_lengths("users", users.len(), labels.len())?;
    super::check_lengths("scores", scores.len(), labels.len())?;
    super::check_not_nan(scores)?;
    let mut samples: Vec<(u32, f32, bool)> =
        users.iter().zip(scores).zip(labels).map(|((&u, &s), &y)| (u, s, y != 0)).collect();
    samples.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));

    let mut weighted_sum = 0.0f64;
    let mut total_weight: u64 = 0;
    for group in samples.chunk_by(|a, b| a.0 == b.0) {
        if let Some(user_auc) = auc_of_sorted(group.iter().map(|&(_, s, y)| (s, y))) {
            let weight = group.len() as u64;
            weighted_sum += weight as f64 * user_auc;
            total_weight += weight;
        }
    }
    if total_weight == 0 {
        return Err(MetricError::NoUserWithBothClasses);
    }
    Ok(weighted_sum / total_weight as f64)
}

/// [`try_gauc`] without the reason: `None` wherever the GAUC is undefined. Never panics.
pub fn gauc(users: &[u32], scores: &[f32], labels: &[u8]) -> Option<f64> {
    try_gauc(users, scores, labels).ok()
}

#[cfg(test)]
mod tests {
    use super::super::auc::auc;
    use super::super::auc::tests::XorShift;
    use super::*;

    #[test]
    fn weighted_per_user_auc_matches_sklearn() {
        let users = [7, 7, 7, 7, 3, 3, 3, 3, 3, 9, 9, 9, 5, 5];
        let scores = [0.9, 0.2, 0.6, 0.6, 0.1, 0.8, 0.4, 0.4, 0.3, 0.5, 0.7, 0.2, 0.9, 0.1];
        let labels = [1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1];
        // Python with sklearn 1.9.1, per user: roc_auc_score(labels[m], scores[m]) gives
        // user 3 (5 samples) 0.9166666666666667, user 5 (2) 0.0, user 7 (4) 0.875, user 9 all
        // positive, skipped; sum(n_u * auc_u) / sum(n_u) prints 0.7348484848484849
        // (by hand: (5 * 11/12 + 2 * 0 + 4 * 7/8) / 11 = (97/12) / 11 = 97/132).
        let got = gauc(&users, &scores, &labels).expect("three users have both classes");
        assert!((got - 0.7348484848484849).abs() <= 1e-15, "got {got}");
    }

    #[test]
    fn users_with_a_single_class_are_skipped() {
        // User 1 has both classes (AUC 1 by hand: the positive 0.8 beats the negative 0.2);
        // user 2 is all negative and user 3 all positive. Were they counted, with any AUC, the
        // weights would change, so GAUC must equal user 1's AUC alone.
        let users = [1, 1, 2, 2, 2, 3];
        let scores = [0.8, 0.2, 0.9, 0.1, 0.5, 0.0];
        let labels = [1, 0, 0, 0, 0, 1];
        assert_eq!(gauc(&users, &scores, &labels), Some(1.0));
    }

    #[test]
    fn no_qualifying_user_gives_none() {
        assert_eq!(gauc(&[1, 1, 2], &[0.1, 0.2, 0.3], &[1, 1, 0]), None);
        assert_eq!(gauc(&[], &[], &[]), None);
    }

    #[test]
    fn one_user_gauc_equals_plain_auc() {
        let mut rng = XorShift(7);
        let n = 120;
        let scores: Vec<f32> = (0..n).map(|_| rng.below(9) as f32 / 9.0).collect();
        let labels: Vec<u8> = (0..n).map(|_| u8::from(rng.below(2) == 0)).collect();
        let users = vec![11u32; n];
        assert_eq!(gauc(&users, &scores, &labels), auc(&scores, &labels));
    }

    #[test]
    fn result_is_independent_of_input_order() {
        let mut rng = XorShift(2024);
        let n = 400;
        let users: Vec<u32> = (0..n).map(|_| rng.below(25) as u32).collect();
        let scores: Vec<f32> = (0..n).map(|_| rng.below(6) as f32 * 0.25).collect();
        let labels: Vec<u8> = (0..n).map(|_| u8::from(rng.below(3) == 0)).collect();
        let reference = gauc(&users, &scores, &labels).expect("some user has both classes");
        for _ in 0..5 {
            let perm = rng.permutation(n);
            let u: Vec<u32> = perm.iter().map(|&i| users[i]).collect();
            let s: Vec<f32> = perm.iter().map(|&i| scores[i]).collect();
            let y: Vec<u8> = perm.iter().map(|&i| labels[i]).collect();
            let got = gauc(&u, &s, &y).expect("some user has both classes");
            assert_eq!(got.to_bits(), reference.to_bits(), "shuffled input changed the GAUC");
        }
    }

    #[test]
    fn mismatched_lengths_and_nan_scores_are_errors_not_panics() {
        let e = try_gauc(&[1, 2], &[0.1, 0.2, 0.3], &[0, 1, 1]).unwrap_err();
        assert_eq!(e, MetricError::LengthMismatch { what: "users", values: 2, labels: 3 });
        let e = try_gauc(&[1, 1, 2], &[0.1, f32::NAN, 0.3], &[0, 1, 1]).unwrap_err();
        assert_eq!(e.to_string(), "the model's scores are not finite (1 of 3 are NaN)");
        assert_eq!(gauc(&[1, 1], &[f32::NAN, 0.2], &[0, 1]), None);
        assert_eq!(try_gauc(&[], &[], &[]).unwrap_err(), MetricError::NoUserWithBothClasses);
    }
}
