//! Evaluation metrics for click-through-rate models, as pure functions over slices.
//!
//! Nothing here touches libtorch or knows about ranks: callers gather scores, labels and user ids
//! into plain slices (on one rank, or after an all-gather) and call these functions. Every
//! function is deterministic and, where the metric allows, independent of the order of its
//! input.
//!
//! - [`auc()`]: exact ROC AUC (the Mann–Whitney statistic, ties counted one half).
//! - [`gauc()`]: group AUC as in the DIN paper, per-user AUC weighted by impressions.
//! - [`log_loss`] and [`log_loss_from_logits`]: mean binary cross-entropy.
//! - [`mean_std`]: mean and sample standard deviation over repeated runs.

mod auc;
mod gauc;
mod logloss;

pub use self::auc::auc;
pub use self::gauc::gauc;
pub use self::logloss::{log_loss, log_loss_from_logits};

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
}
