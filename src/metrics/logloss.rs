//! Log-loss (mean binary cross-entropy), from probabilities or from logits, computed in `f64`.

/// Probabilities are clipped to `[CLIP, 1 - CLIP]` before taking logarithms.
const CLIP: f64 = 1e-7;

/// Mean binary cross-entropy `-(1/n) * sum(y ln p + (1 - y) ln(1 - p))` of probabilities
/// `probs` against labels (any non-zero label is a positive), in `f64`.
///
/// Each probability is first clipped to `[1e-7, 1 - 1e-7]`, so a confidently wrong prediction
/// (p = 0 for a positive, or p = 1 for a negative) costs at most `-ln(1e-7) ≈ 16.12` instead of
/// infinity. This bound is coarser than scikit-learn's: `sklearn.metrics.log_loss` (checked on
/// 1.9.1) clips to the machine epsilon of the input's dtype, about 2.2e-16 for float64 (a cap of
/// about 36.04) or 1.2e-7 for float32; older releases used a fixed `eps=1e-15` (a cap of about
/// 34.54). The two agree exactly whenever every probability lies inside `[1e-7, 1 - 1e-7]`.
/// The 1e-7 floor suits probabilities that come from `f32` sigmoids, which cannot resolve
/// `1 - p` much below `f32::EPSILON` anyway.
///
/// Where the loss is undefined the result is NaN: a NaN probability, slices of different
/// lengths, or no samples (the mean of nothing). Never panics.
pub fn log_loss(probs: &[f32], labels: &[u8]) -> f64 {
    if probs.len() != labels.len() || probs.is_empty() {
        return f64::NAN;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = f64::from(p).clamp(CLIP, 1.0 - CLIP);
            if y != 0 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / probs.len() as f64
}

/// Mean binary cross-entropy of `sigmoid(logits)` against labels, computed from the logits
/// directly with the numerically stable form `max(x, 0) - x*y + ln(1 + exp(-|x|))`, in `f64`.
///
/// No clipping is applied: the loss stays finite for any finite logit (for x = ±100 it is about
/// 100 when wrong and about 3.7e-44 when right), which makes this the preferred form when the
/// model's logits are at hand. For probabilities inside `[1e-7, 1 - 1e-7]` it agrees with
/// [`log_loss`] of the sigmoid. Any non-zero label is a positive.
///
/// NaN where undefined, as for [`log_loss`]. Never panics.
pub fn log_loss_from_logits(logits: &[f32], labels: &[u8]) -> f64 {
    if logits.len() != labels.len() || logits.is_empty() {
        return f64::NAN;
    }
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(&x, &y)| {
            let x = f64::from(x);
            let y = if y != 0 { 1.0 } else { 0.0 };
            x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
        })
        .sum();
    total / logits.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    // The sklearn references below were computed on the f32 inputs widened to float64
    // (np.array(p, dtype=np.float32).astype(np.float64)), i.e. on exactly the values these
    // functions see.

    #[test]
    fn log_loss_matches_sklearn() {
        let p = [0.9, 0.2, 0.6, 0.35, 0.05];
        let y = [1, 0, 1, 1, 0];
        // sklearn 1.9.1 log_loss([1,0,1,1,0], [0.9,0.2,0.6,0.35,0.05]) prints 0.388089023583648
        let got = log_loss(&p, &y);
        assert!(close(got, 0.388089023583648, 1e-14), "got {got}");
    }

    #[test]
    fn log_loss_with_confident_predictions_matches_sklearn() {
        let p = [0.5, 0.999, 0.001, 0.7, 0.25, 0.01, 0.45, 0.8];
        let y = [0, 1, 1, 0, 1, 0, 0, 1];
        // sklearn 1.9.1 log_loss([0,1,1,0,1,0,0,1], [0.5,0.999,0.001,0.7,0.25,0.01,0.45,0.8])
        // prints 1.377900109540263
        let got = log_loss(&p, &y);
        assert!(close(got, 1.377900109540263, 1e-14), "got {got}");
    }

    #[test]
    fn probabilities_are_clipped_to_one_minus_ten_to_the_minus_seven() {
        // By hand (Python math): -ln(1e-7) = 16.11809565095832 and
        // -ln(1 - 1e-7) = 1.0000000494736474e-07. Unclipped, the first would be infinite;
        // sklearn 1.9.1 would clip at float64 eps instead and report about 36.04.
        assert!(close(log_loss(&[0.0], &[1]), 16.11809565095832, 1e-12));
        assert!(close(log_loss(&[1.0], &[0]), 16.11809565095832, 1e-6));
        assert!(close(log_loss(&[1.0], &[1]), 1.0000000494736474e-07, 1e-15));
        assert!(close(log_loss(&[0.0], &[0]), 1.0000000494736474e-07, 1e-15));
    }

    #[test]
    fn any_non_zero_label_is_a_positive() {
        let p = [0.9, 0.2, 0.6];
        assert_eq!(log_loss(&p, &[3, 0, 200]), log_loss(&p, &[1, 0, 1]));
        assert_eq!(log_loss_from_logits(&p, &[3, 0, 200]), log_loss_from_logits(&p, &[1, 0, 1]));
    }

    #[test]
    fn logits_version_matches_sklearn_on_the_sigmoid() {
        let x = [-3.0, -0.5, 0.0, 0.25, 2.0, 4.5];
        let y = [0, 1, 1, 0, 1, 1];
        // sklearn 1.9.1 log_loss([0,1,1,0,1,1], 1/(1+np.exp(-x))) with x the logits above as
        // float64 prints 0.44662111534736737
        let got = log_loss_from_logits(&x, &y);
        assert!(close(got, 0.44662111534736737, 1e-14), "got {got}");
    }

    #[test]
    fn logits_version_equals_probability_version_on_moderate_logits() {
        // Logits in [-2.5, 2.5]. The probability version sees sigmoid(x) rounded to f32, an error
        // of up to 3e-8 in p, hence up to 3e-8 / min(p, 1 - p) <= 4e-7 in each sample's loss
        // here; at |x| = 8 that rounding alone already exceeds 1e-4, which is why the logits form
        // is preferred whenever logits are available.
        let x: Vec<f32> = (-25..=25).map(|i| i as f32 * 0.1).collect();
        for y in [vec![1u8; x.len()], vec![0u8; x.len()], (0..x.len()).map(|i| (i % 3 == 0) as u8).collect()] {
            let p: Vec<f32> = x.iter().map(|&v| sigmoid(f64::from(v)) as f32).collect();
            let from_logits = log_loss_from_logits(&x, &y);
            let from_probs = log_loss(&p, &y);
            assert!(close(from_logits, from_probs, 1e-6), "{from_logits} vs {from_probs}");
        }
    }

    #[test]
    fn logits_version_stays_finite_for_extreme_logits() {
        // By hand: max(x, 0) - x*y + ln(1 + e^-|x|) is 100 + 3.7e-44 (= 100.0 in f64) when
        // wrong and 3.7e-44 when right.
        assert_eq!(log_loss_from_logits(&[100.0, -100.0], &[0, 1]), 100.0);
        let right = log_loss_from_logits(&[100.0, -100.0], &[1, 0]);
        assert!(right.is_finite() && (0.0..1e-40).contains(&right), "got {right}");
        let huge = log_loss_from_logits(&[f32::MAX, -f32::MAX], &[0, 1]);
        assert!(huge.is_finite(), "got {huge}");
    }

    #[test]
    fn undefined_losses_are_nan_not_panics() {
        assert!(log_loss(&[0.1, 0.2], &[0]).is_nan());
        assert!(log_loss(&[], &[]).is_nan());
        assert!(log_loss(&[0.5, f32::NAN], &[0, 1]).is_nan());
        assert!(log_loss_from_logits(&[], &[]).is_nan());
        assert!(log_loss_from_logits(&[0.0], &[0, 1]).is_nan());
    }
}
