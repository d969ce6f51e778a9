//! Evaluation metrics for click-through-rate models, as pure functions over slices.
//!
//! Nothing here touches libtorch or knows about ranks: callers gather scores, labels and user ids
//! into plain slices (on one rank, or after an all-gather) and call these functions. Every
//! function is deterministic and, where the metric allows, independent of the order of its
//! input.
//!
//! Every function is total: no input makes it panic. Where a metric is undefined the `try_`
//! forms say why ([`MetricError`]), the plain forms return `None` (AUC, GAUC) or NaN (log-loss).
//! Scores containing NaN have no ranking, so their AUC and GAUC are undefined: the error reads
//! "the model's scores are not finite (N of M are NaN)", which is what `micn eval` of a
//! diverged model reports.
//!
//! - [`try_auc`] / [`auc()`]: exact ROC AUC (the Mann–Whitney statistic, ties counted one half).
//! - [`try_gauc`] / [`gauc()`]: group AUC as in the DIN paper, per-user AUC weighted by
//!   impressions.
//! - [`log_loss`] and [`log_loss_from_logits`]: mean binary cross-entropy.
//! - [`test_metrics`]: AUC, GAUC and log-loss of one evaluation, checked once.
//! - [`mean_std`]: mean and sample standard deviation over repeated runs.
//! - [`retrieval`]: recall, hit rate and NDCG at N of multi-interest retrieval, as ComiRec
//!   computes them.

mod auc;
mod gauc;
mod logloss;
pub mod retrieval;

pub use self::auc::{auc, try_auc};
pub use self::gauc::{gauc, try_gauc};
pub use self::logloss::{log_loss, log_loss_from_logits};

/// Why a metric is undefined for its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("{what} has {values} entries but labels has {labels}; they must pair up one to one")]
    LengthMismatch { what: &'static str, values: usize, labels: usize },
    #[error("the model's scores are not finite ({nan} of {total} are NaN)")]
    NanScores { nan: usize, total: usize },
    #[error("the labels have only one class ({positives} positives, {negatives} negatives); AUC is undefined")]
    OneClass { positives: usize, negatives: usize },
    #[error("no user has both a positive and a negative sample; GAUC is undefined")]
    NoUserWithBothClasses,
}

impl MetricError {
    fn one_class(labels: &[u8]) -> Self {
        let positives = labels.iter().filter(|&&y| y != 0).count();
        MetricError::OneClass { positives, negatives: labels.len() - positives }
    }
}

fn check_lengths(what: &'static str, values: usize, labels: usize) -> Result<(), MetricError> {
    if values == labels {
        Ok(())
    } else {
        Err(MetricError::LengthMismatch { what, values, labels })
    }
}

fn check_not_nan(scores: &[f32]) -> Result<(), MetricError> {
    match scores.iter().filter(|s| s.is_nan()).count() {
        0 => Ok(()),
        nan => Err(MetricError::NanScores { nan, total: scores.len() }),
    }
}

/// The test-set metrics of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestMetrics {
    pub auc: f64,
    /// NaN when no user has both classes (GAUC undefined; the AUC may still be).
    pub gauc: f64,
    pub logloss: f64,
}

/// AUC, GAUC (users grouped by `users`) and log-loss of probabilities `probs` against `labels`.
///
/// # Errors
///
/// As [`try_auc`]: slices of different lengths, NaN scores, or a single class.
pub fn test_metrics(users: &[u32], probs: &[f32], labels: &[u8]) -> Result<TestMetrics, MetricError> {
    check_lengths("users", users.len(), labels.len())?;
    let auc = try_auc(probs, labels)?;
    let gauc = gauc(users, probs, labels).unwrap_or(f64::NAN);
    Ok(TestMetrics { auc, gauc, logloss: log_loss(probs, labels) })
}

/// Mean and sample standard deviation (`n - 1` in the denominator; 0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_and_sample_std() {
        // numpy: np.mean([1,2,4]) = 2.3333333, np.std([1,2,4], ddof=1) = 1.5275252
        let (m, s) = super::mean_std(&[1.0, 2.0, 4.0]);
        assert!((m - 2.333_333_3).abs() < 1e-6 && (s - 1.527_525_2).abs() < 1e-6);
        assert_eq!(super::mean_std(&[0.7]), (0.7, 0.0));
    }

    #[test]
    fn test_metrics_of_nan_scores_name_how_many() {
        let e = super::test_metrics(&[1, 1, 2], &[f32::NAN, 0.4, f32::NAN], &[0, 1, 1]).unwrap_err();
        assert_eq!(e.to_string(), "the model's scores are not finite (2 of 3 are NaN)");
    }

    #[test]
    fn test_metrics_agree_with_the_single_metrics() {
        // Values from the GAUC test: sklearn 1.9.1 gives GAUC 0.7348484848484849 for these.
        let users = [7, 7, 7, 7, 3, 3, 3, 3, 3, 9, 9, 9, 5, 5];
        let scores = [0.9, 0.2, 0.6, 0.6, 0.1, 0.8, 0.4, 0.4, 0.3, 0.5, 0.7, 0.2, 0.9, 0.1];
        let labels = [1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1];
        let m = super::test_metrics(&users, &scores, &labels).unwrap();
        assert_eq!(m.auc, super::auc(&scores, &labels).unwrap());
        assert!((m.gauc - 0.7348484848484849).abs() <= 1e-15, "{}", m.gauc);
        assert_eq!(m.logloss, super::log_loss(&scores, &labels));
        // One user, all positive: no GAUC, and no AUC either.
        assert!(super::test_metrics(&[1, 1], &[0.2, 0.3], &[1, 1]).is_err());
    }
}
