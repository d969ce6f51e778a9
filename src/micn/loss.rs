//! MICN's loss `L_micn` (SPEC §2.3): a sampled softmax of the target item against negatives
//! shared by the batch, with logQ correction and accidental hits removed, over positive samples
//! only.
//!
//! For a positive sample with user vector `v_u`, target `t` and negatives `n_1..n_N` (drawn with
//! replacement from `Q`), the candidate logits are `o_c = v_uᵀ e_c − ln Q(c)` for the target and
//! every negative; a negative equal to the target gets `−∞`; the sample's loss is
//! `logsumexp(o) − o_t`. The batch loss is the sum over positive samples divided by the
//! normaliser the caller passes (the number of positives of the global batch), so that rank
//! shards add up to the global loss.
//!
//! `ln Q(c)` is subtracted rather than TensorFlow's `ln(N·Q(c))` ("expected count"): the two
//! differ by the same `ln N` for every candidate, which a softmax ignores.
use tch::{Kind, Tensor};

use super::rng::{CounterRng, NEGATIVES_STREAM};
use super::MicnError;
use crate::config::NegativeSampler;

/// Draws negative item ids from `1..=N` (`N = n_items − 1`; id 0 is padding and never drawn).
///
/// - Log-uniform (Zipfian over the frequency-ordered vocabulary, TensorFlow's
///   `log_uniform_candidate_sampler` shifted by one id):
///   `Q(k) = (ln(k + 1) − ln k) / ln(N + 1) = ln(1 + 1/k) / ln(N + 1)`, which sums to 1 over
///   `1..=N` (the sum telescopes to `ln(N + 1)`); drawn by inversion as `⌊exp(u·ln(N + 1))⌋`
///   with `u ~ U[0, 1)`.
/// - Uniform: `Q(k) = 1/N`, drawn as `1 + ⌊u·N⌋`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    kind: NegativeSampler,
    max_id: i64,
}

impl Sampler {
    /// A sampler over the vocabulary of `n_items` ids (padding included); it needs at least one
    /// real item.
    pub fn new(kind: NegativeSampler, n_items: i64) -> Result<Self, MicnError> {
        if n_items < 2 {
            return Err(MicnError::TooFewItems { n_items });
        }
        Ok(Self { kind, max_id: n_items - 1 })
    }

    /// `Q(id)` for `id` in `1..=N` (0 outside).
    pub fn probability(&self, id: i64) -> f64 {
        if !(1..=self.max_id).contains(&id) {
            return 0.0;
        }
        match self.kind {
            NegativeSampler::LogUniform => (1.0 / id as f64).ln_1p() / ((self.max_id + 1) as f64).ln(),
            NegativeSampler::Uniform => 1.0 / self.max_id as f64,
        }
    }

    /// `count` ids drawn independently (with replacement) from `seed`; the `k`-th draw depends
    /// only on `(seed, k)`.
    pub fn draw(&self, seed: u64, count: usize) -> Vec<i64> {
        let rng = CounterRng::new(seed, NEGATIVES_STREAM);
        let n = self.max_id as f64;
        (0..count as u64)
            .map(|k| {
                let u = rng.uniform(&[k]);
                let id = match self.kind {
                    NegativeSampler::LogUniform => (u * (n + 1.0).ln()).exp().floor(),
                    NegativeSampler::Uniform => 1.0 + (u * n).floor(),
                };
                // Rounding can only push the value to N + 1 at u → 1.
                (id as i64).clamp(1, self.max_id)
            })
            .collect()
    }

    /// `ln Q(id)` as a tensor (f32), computed in f64 (`ln(1 + 1/k)` through `log1p`, precise for
    /// large ids). Ids outside `1..=N` are clamped into it, so the value is always finite; such
    /// targets must be masked out of the loss (see [`positive_mask`]).
    ///
    /// # Shapes
    /// `ids [..]` i64 → same, f32
    pub fn log_q(&self, ids: &Tensor) -> Tensor {
        let log_q = match self.kind {
            NegativeSampler::LogUniform => {
                let k = ids.clamp(1, self.max_id).to_kind(Kind::Double);
                k.reciprocal().log1p().log() - ((self.max_id + 1) as f64).ln().ln()
            }
            NegativeSampler::Uniform => ids.to_kind(Kind::Double).full_like(-(self.max_id as f64).ln()),
        };
        log_q.to_kind(Kind::Float)
    }
}

/// Items with their vectors and sampling log-probabilities: the targets (`[b, h]`, `[b]`, `[b]`)
/// or the shared negatives (`[N, h]`, `[N]`, `[N]`).
#[derive(Debug)]
pub struct Candidates {
    pub vectors: Tensor,
    /// i64
    pub ids: Tensor,
    /// `ln Q(id)`
    pub log_q: Tensor,
}

/// Which samples enter the loss: clicked ones (label 1) whose target is a real item (id ≥ 1;
/// id 0, the unknown item, has no sampling probability).
///
/// # Shapes
/// `labels [b]` (float), `items [b]` i64 → `[b]` f32 (0/1)
pub fn positive_mask(labels: &Tensor, items: &Tensor) -> Tensor {
    labels.gt(0.5).logical_and(&items.ge(1)).to_kind(Kind::Float)
}

/// The sampled-softmax loss, summed over the samples where `positive` is 1 and divided by
/// `normaliser` (taken as 1 when it is 0). A batch without positives gives exactly 0, with
/// exactly zero gradients.
///
/// # Shapes
/// `user [b, h]`, `target` (`[b, h]`, `[b]`, `[b]`), `negatives` (`[N, h]`, `[N]`, `[N]`),
/// `positive [b]` → scalar
pub fn sampled_softmax(
    user: &Tensor,
    target: &Candidates,
    negatives: &Candidates,
    positive: &Tensor,
    normaliser: f64,
) -> Tensor {
    let true_logit = (user * &target.vectors).sum_dim_intlist(-1, true, user.kind()) - target.log_q.unsqueeze(-1); // [b, 1]
    let hits = negatives.ids.unsqueeze(0).eq_tensor(&target.ids.unsqueeze(-1)); // [b, N]
    let negative_logits =
        (user.matmul(&negatives.vectors.tr()) - negatives.log_q.unsqueeze(0)).masked_fill(&hits, f64::NEG_INFINITY); // [b, N]
    let logits = Tensor::cat(&[&true_logit, &negative_logits], -1); // [b, 1 + N]
    let per_sample = logits.logsumexp(-1, false) - true_logit.squeeze_dim(-1); // [b]
    let normaliser = if normaliser > 0.0 { normaliser } else { 1.0 };
    (per_sample * positive).sum(user.kind()) / normaliser
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::E;
    use tch::Device;

    fn t(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).view(shape)
    }

    /// Three samples, width 2, negatives {3, 5} with Q = 0.25 and 0.125 given by hand.
    /// Row 0: positive, target 7 (Q = 0.5), v_u = [1, 0], e_t = [2, 0].
    /// Row 1: positive, target 5 (an accidental hit), Q = 0.125, v_u = [0, 1], e_t = [0, 1].
    /// Row 2: negative label, target 3: masked out.
    fn case() -> (Tensor, Candidates, Candidates, Tensor) {
        let user = t(&[1.0, 0.0, 0.0, 1.0, 3.0, 3.0], &[3, 2]).set_requires_grad(true);
        let target = Candidates {
            vectors: t(&[2.0, 0.0, 0.0, 1.0, 1.0, 0.0], &[3, 2]).set_requires_grad(true),
            ids: Tensor::from_slice(&[7i64, 5, 3]),
            log_q: t(&[0.5f32.ln(), 0.125f32.ln(), 0.25f32.ln()], &[3]),
        };
        let negatives = Candidates {
            vectors: t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]).set_requires_grad(true),
            ids: Tensor::from_slice(&[3i64, 5]),
            log_q: t(&[0.25f32.ln(), 0.125f32.ln()], &[2]),
        };
        let positive = positive_mask(&t(&[1.0, 1.0, 0.0], &[3]), &target.ids);
        (user, target, negatives, positive)
    }

    #[test]
    fn logq_correction_and_accidental_hits_match_a_hand_computation() {
        let (user, target, negatives, positive) = case();
        let loss = sampled_softmax(&user, &target, &negatives, &positive, 4.0);
        // exp(o_c) = exp(v_uᵀ e_c) / Q(c).
        // Row 0: target e²/0.5 = 2e², negative 3: e¹/0.25 = 4e, negative 5: e⁰/0.125 = 8;
        //        loss = ln((2e² + 4e + 8) / 2e²) = 0.822903.
        // Row 1: target e¹/0.125 = 8e, negative 3: e⁰/0.25 = 4, negative 5 is the target (removed);
        //        loss = ln((8e + 4) / 8e) = 0.168848.
        // Row 2 is not a positive. Normaliser 4: (0.822903 + 0.168848) / 4 = 0.247938.
        let row0 = ((2.0 * E * E + 4.0 * E + 8.0) / (2.0 * E * E)).ln();
        let row1 = ((8.0 * E + 4.0) / (8.0 * E)).ln();
        let expected = (row0 + row1) / 4.0;
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6, "{loss} vs {expected}");
        // Without the correction row 0 would be ln((e² + e + 1)/e²) = 0.4076; without hit removal
        // row 1 would be ln((8e + 4 + 8)/8e) = 0.4394: both far from the expected value.
        assert!((expected - 0.247_938).abs() < 1e-5);
    }

    #[test]
    fn a_batch_without_positives_gives_exactly_zero_loss_and_gradients() {
        let (user, target, negatives, _) = case();
        let none = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let loss = sampled_softmax(&user, &target, &negatives, &none, 0.0);
        assert_eq!(loss.double_value(&[]), 0.0);
        loss.backward();
        for g in [user.grad(), target.vectors.grad(), negatives.vectors.grad()] {
            assert_eq!(g.abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
    }

    #[test]
    fn log_uniform_probabilities_sum_to_one_and_match_the_draws() {
        let sampler = Sampler::new(NegativeSampler::LogUniform, 101).unwrap();
        let total: f64 = (1..=100).map(|k| sampler.probability(k)).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        // Q(1) = ln 2 / ln 101 = 0.150190 (formula in the type's docs).
        assert!((sampler.probability(1) - 2f64.ln() / 101f64.ln()).abs() < 1e-15);
        let draws = sampler.draw(9, 200_000);
        assert!(draws.iter().all(|&k| (1..=100).contains(&k)));
        for k in [1, 2, 10, 100] {
            let freq = draws.iter().filter(|&&d| d == k).count() as f64 / draws.len() as f64;
            let q = sampler.probability(k);
            // Five binomial standard deviations.
            let tolerance = 5.0 * (q * (1.0 - q) / draws.len() as f64).sqrt();
            assert!((freq - q).abs() < tolerance, "id {k}: {freq} vs {q}");
        }
        assert_eq!(draws, sampler.draw(9, 200_000));
        assert_ne!(draws[..32], sampler.draw(10, 32)[..]);
    }

    #[test]
    fn log_q_tensor_agrees_with_the_probabilities() {
        for kind in [NegativeSampler::LogUniform, NegativeSampler::Uniform] {
            let sampler = Sampler::new(kind, 400_000).unwrap();
            let ids = [1i64, 2, 17, 399_999];
            let log_q: Vec<f32> = Vec::try_from(&sampler.log_q(&Tensor::from_slice(&ids))).unwrap();
            for (id, got) in ids.iter().zip(log_q) {
                let expected = sampler.probability(*id).ln();
                assert!((got as f64 - expected).abs() < 1e-5 * expected.abs(), "{kind:?} {id}: {got} vs {expected}");
            }
        }
        let uniform = Sampler::new(NegativeSampler::Uniform, 5).unwrap();
        let draws = uniform.draw(1, 10_000);
        assert!((1..=4).all(|k| draws.contains(&k)) && draws.iter().all(|&k| (1..=4).contains(&k)));
    }

    #[test]
    fn a_vocabulary_without_items_is_refused() {
        assert!(matches!(Sampler::new(NegativeSampler::Uniform, 1), Err(MicnError::TooFewItems { n_items: 1 })));
    }
}
