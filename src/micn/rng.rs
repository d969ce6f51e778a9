//! A small counter-based random number generator for the draws that must be reproducible from an
//! explicit seed: MICN's initial routing logits (per sample) and its sampled-softmax negatives
//! (per step).
//!
//! Every value is a pure function of `(seed, stream, counter…)`, so a draw never depends on
//! libtorch's global generator, on the order of earlier draws, on the device (but for the last
//! bit of a normal draw's final `log`, `sqrt` and `cos`), or on how the global batch is split
//! over ranks (the routing logits of a sample are keyed by its global
//! index). The mixing function is SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014), applied once per counter word.

/// Golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Stream of the initial routing logits `b_ij`.
pub const ROUTING_STREAM: u64 = 1;
/// Stream of the sampled-softmax negatives.
pub const NEGATIVES_STREAM: u64 = 2;

use crate::rng::mix64 as mix;
use tch::{Kind, Tensor};

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
}

fn to_unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal draws computed by tensor operations, on any device, as a pure function of a
/// key and counter words: what a GPU step draws without a transfer (MICN's routing logits).
///
/// Every word is below 2³², and the mixing stays in 32 bits inside i64 tensors (a product is below
/// 2⁵⁹, so nothing overflows): `mix32` is the 32-bit integer finaliser with multiplier
/// `0x045d9f3b` (Thomas Mueller's, as in many hash tables), applied once per word. Two 24-bit
/// uniforms from the result feed Box–Muller in f64. [`NormalField::value`] computes the same
/// thing on the host, as the tests' oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalField {
    key: u32,
}

const MASK32: i64 = 0xFFFF_FFFF;
const MUL32: u32 = 0x045D_9F3B;
const GOLDEN32: u32 = 0x9E37_79B9;
/// Salts of the two uniforms.
const SALTS: [u32; 2] = [0x85EB_CA6B, 0xC2B2_AE35];

fn mix32(x: u32) -> u32 {
    let x = ((x >> 16) ^ x).wrapping_mul(MUL32);
    let x = ((x >> 16) ^ x).wrapping_mul(MUL32);
    (x >> 16) ^ x
}

/// [`mix32`] of every element of an i64 tensor holding values in `0..2³²`.
fn mix32_tensor(x: &Tensor) -> Tensor {
    let round =
        |x: &Tensor| (x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(x) * MUL32 as i64).bitwise_and(MASK32);
    let x = round(&round(x));
    x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(&x)
}

/// A uniform in (0, 1) from the top 24 bits of a 32-bit hash.
fn to_open_unit(bits: u32) -> f64 {
    ((bits >> 8) as f64 + 0.5) / (1u32 << 24) as f64
}

impl NormalField {
    /// The field of `stream` under `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self { key: (CounterRng::new(seed, stream).key >> 32) as u32 }
    }

    /// The draw at `words`, on the host.
    pub fn value(&self, words: &[u32]) -> f64 {
        let h = words.iter().fold(self.key, |h, &w| mix32(h ^ mix32(w.wrapping_add(GOLDEN32))));
        let [u1, u2] = SALTS.map(|salt| to_open_unit(mix32(h ^ salt)));
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// The draws at every position of the broadcast of `words` (i64 tensors of values in
    /// `0..2³²`, on one device), as f64 on that device: element-wise [`NormalField::value`]. The
    /// integer mixing is exact everywhere; the final `log`, `sqrt` and `cos` are the device's
    /// own, which may differ from the host's in the last bit of an f64.
    pub fn tensor(&self, words: &[Tensor]) -> Tensor {
        let first = words.first().expect("at least one counter word");
        let mut h = first.full_like(self.key as i64);
        for w in words {
            let w = mix32_tensor(&(w + GOLDEN32 as i64).bitwise_and(MASK32));
            h = mix32_tensor(&h.bitwise_xor_tensor(&w));
        }
        let uniform = |salt: u32| {
            let bits = mix32_tensor(&h.bitwise_xor(salt as i64)).bitwise_right_shift_tensor_scalar(8);
            (bits.to_kind(Kind::Double) + 0.5) / (1u32 << 24) as f64
        };
        let (u1, u2) = (uniform(SALTS[0]), uniform(SALTS[1]));
        (u1.log() * -2.0).sqrt() * (u2 * std::f64::consts::TAU).cos()
    }
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
    fn normal_draws_have_zero_mean_and_unit_variance_and_the_tensor_ops_give_the_host_values() {
        let field = NormalField::new(3, ROUTING_STREAM);
        let (rows, cols) = (4_000i64, 50i64);
        let i = Tensor::arange(rows, (Kind::Int64, tch::Device::Cpu)).view([rows, 1]);
        let j = Tensor::arange(cols, (Kind::Int64, tch::Device::Cpu)).view([1, cols]) + (u32::MAX as i64 - 20);
        let drawn = field.tensor(&[i, j]);
        let xs = Vec::<f64>::try_from(drawn.flatten(0, -1)).unwrap();
        // The tensor operations compute the host function, word for word (the last columns
        // wrap the 32-bit addition of the golden increment).
        for (k, x) in xs.iter().enumerate() {
            let (r, c) = (k as u32 / cols as u32, k as u32 % cols as u32);
            let host = field.value(&[r, (u32::MAX - 20).wrapping_add(c)]);
            assert!((x - host).abs() < 1e-12, "draw ({r}, {c}): {x} vs {host}");
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        // Standard errors for n = 2e5: mean 1/sqrt(n) ≈ 0.0022, variance sqrt(2/n) ≈ 0.0032;
        // the bounds are about five of them.
        assert!(mean.abs() < 0.012, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
        // P(|z| > 1.96) = 0.05 for a standard normal.
        let tail = xs.iter().filter(|x| x.abs() > 1.96).count() as f64 / n;
        assert!((tail - 0.05).abs() < 0.003, "tail {tail}");
        // Neighbouring counters are not correlated: lag-1 correlation within rows.
        let lag: f64 = xs.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / n;
        assert!(lag.abs() < 0.012, "lag-1 correlation {lag}");
        // Other keys draw other values.
        assert_ne!(field.value(&[1, 2]), NormalField::new(4, ROUTING_STREAM).value(&[1, 2]));
        assert_ne!(field.value(&[1, 2]), field.value(&[2, 1]));
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
