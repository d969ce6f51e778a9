//! A small counter-based random number generator for the draws that must be reproducible from an
//! explicit seed: MICN's initial routing logits (per sample) and its sampled-softmax negatives
//! (per step).
//!
//! Every value is a pure function of `(seed, stream, counter…)`, so a draw never depends on
//! libtorch's global generator, on the order of earlier draws, on the device, or on how the
//! global batch is split over ranks (the routing logits of a sample are keyed by its global
//! index). The mixing function is SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014), applied once per counter word.

/// Golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Stream of the initial routing logits `b_ij`.
pub const ROUTING_STREAM: u64 = 1;
/// Stream of the sampled-softmax negatives.
pub const NEGATIVES_STREAM: u64 = 2;

use crate::rng::mix64 as mix;

/// The randomness of one training step, as the trainer hands it to MICN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSeed {
    /// Seed of the step (the same on every rank).
    pub seed: u64,
    /// Global index of the local batch's first sample, so that a sample draws the same routing
    /// logits whichever rank holds it.
    pub first_sample: u64,
}

/// A keyed, stateless generator: `bits(counter)` is a hash of the key and the counter words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRng {
    key: u64,
}

impl CounterRng {
    /// The generator of `stream` under `seed`; different streams are independent.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self { key: mix(mix(seed ^ GOLDEN).wrapping_add(stream.wrapping_mul(GOLDEN))) }
    }

    /// 64 random bits for `counter`.
    pub fn bits(&self, counter: &[u64]) -> u64 {
        counter.iter().fold(self.key, |h, &c| mix(h ^ mix(c.wrapping_add(GOLDEN))))
    }

    /// A uniform draw in `[0, 1)` with 53 random bits.
    pub fn uniform(&self, counter: &[u64]) -> f64 {
        to_unit(self.bits(counter))
    }

    /// A standard normal draw (Box–Muller on two uniforms derived from `counter`).
    pub fn normal(&self, counter: &[u64]) -> f64 {
        let bits = self.bits(counter);
        // 1 − u lies in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - to_unit(bits)).ln()).sqrt();
        let angle = std::f64::consts::TAU * to_unit(mix(bits ^ GOLDEN));
        radius * angle.cos()
    }
}

fn to_unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_only_on_seed_stream_and_counter() {
        let a = CounterRng::new(7, ROUTING_STREAM);
        assert_eq!(a.bits(&[1, 2, 3]), CounterRng::new(7, ROUTING_STREAM).bits(&[1, 2, 3]));
        assert_ne!(a.bits(&[1, 2, 3]), a.bits(&[1, 3, 2]));
        assert_ne!(a.bits(&[1, 2, 3]), CounterRng::new(8, ROUTING_STREAM).bits(&[1, 2, 3]));
        assert_ne!(a.bits(&[1, 2, 3]), CounterRng::new(7, NEGATIVES_STREAM).bits(&[1, 2, 3]));
    }

    #[test]
    fn normal_draws_have_zero_mean_and_unit_variance() {
        let rng = CounterRng::new(3, ROUTING_STREAM);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|i| rng.normal(&[i, 0])).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors for n = 2e5: mean 1/sqrt(n) ≈ 0.0022, variance sqrt(2/n) ≈ 0.0032;
        // the bounds are about five of them.
        assert!(mean.abs() < 0.012, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
        // P(|z| > 1.96) = 0.05 for a standard normal.
        let tail = xs.iter().filter(|x| x.abs() > 1.96).count() as f64 / n as f64;
        assert!((tail - 0.05).abs() < 0.003, "tail {tail}");
    }

    #[test]
    fn uniform_draws_stay_in_the_unit_interval_and_fill_it() {
        let rng = CounterRng::new(11, NEGATIVES_STREAM);
        let mut bins = [0usize; 10];
        for i in 0..100_000 {
            let u = rng.uniform(&[i]);
            assert!((0.0..1.0).contains(&u));
            bins[(u * 10.0) as usize] += 1;
        }
        // Each decile expects 10 000 draws, standard deviation ≈ 95.
        assert!(bins.iter().all(|&c| (9_500..=10_500).contains(&c)), "{bins:?}");
    }
}
