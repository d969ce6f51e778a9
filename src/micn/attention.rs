//! Label-aware attention (MIND §3.3, MICN eq. 8): the target's `e_aux` is the query, the interest
//! vectors are keys and values, `v_u = Σ_j softmax_j(pow(v_jᵀ e_t, p)) · v_j` over the user's
//! active interests.
//!
//! The power is sign-preserving for every `p`: `pow(s, p) = sign(s)·|s|^p`, so `p = 1` is the
//! plain score, `p = 2` a sign-preserving square (a plain square would rank a strongly negative
//! match above a weak positive one), and it is defined for negative scores at non-integer `p`.
//! `p = 0` means `s⁰ = 1` for every score: uniform weights over the active interests (MIND: "when
//! p is close to 0, each interest capsule attends to receive even attention"). Hard attention
//! (`p = "inf"`) puts all weight on the best-scoring active interest.
use tch::{Kind, Tensor};

use crate::config::AttentionPower;

/// Floor of `|s|` before `|s|^p`: keeps the gradient of `|s|^p` finite at `s = 0` for `p < 1`
/// (the sign factor is then 0, and so is the value).
const ABS_FLOOR: f64 = 1e-12;
/// Bound of a powered score, so that a huge score at a large `p` cannot overflow to ±∞ (which
/// would make the softmax NaN). `|s|` is clamped before the power, not after, so the gradient of
/// a clamped score is 0 rather than `0 · ∞`.
const POWERED_BOUND: f64 = 1e30;

/// `sign(s)·|s|^p` for `p > 0` (with `|s|` kept in `[1e-12, 1e30^(1/p)]`), `1` for `p = 0`.
///
/// # Shapes
/// any → same
pub fn signed_power(s: &Tensor, p: f64) -> Tensor {
    if p == 0.0 {
        return s.ones_like();
    }
    // Capped at f32's largest value so the bound is representable in the score's kind.
    let ceiling = POWERED_BOUND.powf(1.0 / p).min(f32::MAX as f64);
    let magnitude = s.abs().clamp(ABS_FLOOR, ceiling);
    s.sign() * magnitude.pow_tensor_scalar(p)
}

/// The label-aware attention layer (no parameters).
#[derive(Debug, Clone, Copy)]
pub struct LabelAwareAttention {
    power: AttentionPower,
}

impl LabelAwareAttention {
    pub fn new(power: AttentionPower) -> Self {
        Self { power }
    }

    /// Weights over the interests; inactive ones get exactly 0.
    ///
    /// # Shapes
    /// `interests [b, K, h]`, `active [b, K]` (f32 0/1, at least one 1 per row),
    /// `query [b, h]` → `[b, K]`
    pub fn weights(&self, interests: &Tensor, active: &Tensor, query: &Tensor) -> Tensor {
        let scores = interests.matmul(&query.unsqueeze(-1)).squeeze_dim(-1); // v_jᵀ e_t, [b, K]
        let inactive = active.le(0.5);
        match self.power {
            AttentionPower::Soft(p) => {
                let powered = signed_power(&scores, p).masked_fill(&inactive, f64::NEG_INFINITY);
                powered.softmax(-1, Kind::Float).to_kind(scores.kind())
            }
            AttentionPower::Hard => {
                let best = scores.detach().masked_fill(&inactive, f64::NEG_INFINITY).argmax(-1, false); // [b]
                best.one_hot(active.size()[1]).to_kind(scores.kind())
            }
        }
    }

    /// The user vector for the target.
    ///
    /// # Shapes
    /// `interests [b, K, h]`, `active [b, K]`, `query [b, h]` → `[b, h]`
    pub fn forward(&self, interests: &Tensor, active: &Tensor, query: &Tensor) -> Tensor {
        let weights = self.weights(interests, active, query); // [b, K]
        weights.unsqueeze(1).matmul(interests).squeeze_dim(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two users, three interests of width 2; user 0 has two active interests, user 1 three.
    /// With query [1, 0] the scores are the first coordinates: user 0 [−2, 0.5, 9 (inactive)],
    /// user 1 [−3, −1, 0].
    fn case() -> (Tensor, Tensor, Tensor) {
        let interests = Tensor::from_slice(&[-2.0f32, 1.0, 0.5, 2.0, 9.0, 9.0, -3.0, 1.0, -1.0, 0.0, 0.0, 4.0])
            .view([2, 3, 2])
            .set_requires_grad(true);
        let active = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 1.0, 1.0, 1.0]).view([2, 3]);
        let query = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([2, 2]).set_requires_grad(true);
        (interests, active, query)
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        Vec::try_from(t).unwrap()
    }

    #[test]
    fn power_zero_gives_uniform_weights_over_active_interests() {
        let (interests, active, query) = case();
        let w = LabelAwareAttention::new(AttentionPower::Soft(0.0)).weights(&interests, &active, &query);
        assert_eq!(rows(&w), [vec![0.5, 0.5, 0.0], vec![1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]]);
    }

    #[test]
    fn hard_attention_picks_the_best_active_interest() {
        let (interests, active, query) = case();
        let attention = LabelAwareAttention::new(AttentionPower::Hard);
        // User 0: the inactive interest (score 9) is ignored, 0.5 wins; user 1: 0 wins.
        assert_eq!(rows(&attention.weights(&interests, &active, &query)), [vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]]);
        let v = attention.forward(&interests, &active, &query);
        assert_eq!(rows(&v), [vec![0.5, 2.0], vec![0.0, 4.0]]);
    }

    #[test]
    fn power_keeps_the_sign_of_the_score() {
        // p = 2 on user 0's scores [−2, 0.5]: powered [−4, 0.25], softmax = [e^−4, e^0.25]/Σ
        // = [0.014064, 0.985936] (a plain square would favour −2 instead).
        let (interests, active, query) = case();
        let w = LabelAwareAttention::new(AttentionPower::Soft(2.0)).weights(&interests, &active, &query);
        assert!((w.double_value(&[0, 0]) - 0.014_064).abs() < 1e-6, "{w}");
        assert!((w.double_value(&[0, 1]) - 0.985_936).abs() < 1e-6, "{w}");
    }

    #[test]
    fn negative_scores_never_give_nan_values_or_gradients() {
        for power in [
            AttentionPower::Soft(0.5),
            AttentionPower::Soft(1.0),
            AttentionPower::Soft(2.0),
            AttentionPower::Soft(3.7),
            AttentionPower::Hard,
        ] {
            let (interests, active, query) = case();
            let v = LabelAwareAttention::new(power).forward(&interests, &active, &query);
            (v.square().sum(Kind::Float)).backward();
            // Hard attention sends no gradient to the query (argmax is not differentiable).
            for t in [v, interests.grad(), query.grad()].iter().filter(|t| t.defined()) {
                assert!(bool::try_from(t.isfinite().all()).unwrap(), "{power:?}: {t}");
            }
            assert_eq!(query.grad().defined(), power != AttentionPower::Hard);
        }
        // A zero score (user 1, interest 2) at p < 1, and huge scores at a large p, stay finite.
        let big = Tensor::from_slice(&[1e20f32, -1e20, 0.0]).view([1, 3, 1]).set_requires_grad(true);
        let active = Tensor::ones([1, 3], (Kind::Float, Device::Cpu));
        let query = Tensor::from_slice(&[1.0f32]).view([1, 1]);
        for p in [0.5, 3.7] {
            let v = LabelAwareAttention::new(AttentionPower::Soft(p)).forward(&big, &active, &query);
            v.sum(Kind::Float).backward();
            assert!(
                bool::try_from(v.isfinite().all()).unwrap() && bool::try_from(big.grad().isfinite().all()).unwrap()
            );
        }
    }
}
