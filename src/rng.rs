//! The project's own deterministic random numbers.
//!
//! Every random draw in micn's data and steps (synthetic data, protocol negatives, epoch
//! permutations, DIEN's no-click items, MICN's negatives) comes from an [`Rng`] derived from an
//! explicit seed and a stream path (`Rng::derive(seed, &[STREAM, epoch, step])`), never from a
//! global state; MICN's routing logits come from the counter-based draws of
//! [`crate::micn::rng`]. The one use of global random state is the models' initial parameters:
//! libtorch's generator, seeded with `train.seed` just before the model is built. The generators are written here rather than taken from a crate so that the same
//! seed gives the same bytes forever, whatever crate versions the build resolves.
//!
//! Generator: xoshiro256** (Blackman & Vigna), seeded through SplitMix64.

/// Well-known stream identifiers, so that two uses of one seed never share draws.
pub mod stream {
    pub const SYNTH: u64 = 1;
    pub const PROTOCOL: u64 = 2;
    pub const SPLIT: u64 = 3;
    pub const EPOCH_PERMUTATION: u64 = 4;
    pub const NOCLICK: u64 = 5;
    pub const ROUTING: u64 = 6;
    pub const MICN_NEGATIVES: u64 = 7;
    pub const INIT: u64 = 8;
    pub const VALIDATION: u64 = 9;
}

/// SplitMix64's output function (Steele, Lea & Flood, OOPSLA 2014): a bijection on `u64` with
/// good avalanche, shared by every generator of the project.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 step: a strong 64-bit mixer, also used to hash stream paths.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// xoshiro256**.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        Self { s: [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)] }
    }

    /// An independent generator for the stream `path` under `seed` (e.g. `[NOCLICK, epoch, step]`).
    pub fn derive(seed: u64, path: &[u64]) -> Self {
        let mut h = seed ^ 0x6A09_E667_F3BC_C908;
        let mut acc = splitmix64(&mut h);
        for &p in path {
            let mut x = acc ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            acc = splitmix64(&mut x);
        }
        Self::new(acc)
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Standard normal (Box–Muller; one of the pair is discarded to keep the state simple).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Draws indices with probability proportional to fixed non-negative weights (Walker's alias
/// method: O(n) set-up, O(1) per draw).
#[derive(Debug, Clone)]
pub struct WeightedIndex {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl WeightedIndex {
    /// `None` when there are no weights or they do not sum to a positive finite number.
    pub fn new(weights: &[f64]) -> Option<Self> {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        if n == 0 || !(total > 0.0 && total.is_finite()) || weights.iter().any(|&w| w < 0.0) {
            return None;
        }
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            prob[i] = 1.0;
        }
        Some(Self { prob, alias })
    }

    pub fn len(&self) -> usize {
        self.prob.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prob.is_empty()
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let i = rng.below(self.prob.len() as u64) as usize;
        if rng.next_f64() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_sequence() {
        // Reference: xoshiro256** from its authors' C code with state {1, 2, 3, 4} gives
        // 11520, 0, 1509978240, 1215971899390074240 as its first outputs.
        let mut r = Rng { s: [1, 2, 3, 4] };
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64(), r.next_u64()],
            [11520, 0, 1509978240, 1215971899390074240]
        );
    }

    #[test]
    fn derived_streams_differ_and_repeat() {
        let a = Rng::derive(7, &[stream::NOCLICK, 0, 3]).next_u64();
        assert_eq!(a, Rng::derive(7, &[stream::NOCLICK, 0, 3]).next_u64());
        assert_ne!(a, Rng::derive(7, &[stream::NOCLICK, 0, 4]).next_u64());
        assert_ne!(a, Rng::derive(8, &[stream::NOCLICK, 0, 3]).next_u64());
        assert_ne!(Rng::derive(1, &[0, 1]).next_u64(), Rng::derive(1, &[1, 0]).next_u64());
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(3);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
    }

    #[test]
    fn weighted_index_follows_its_weights() {
        let w = WeightedIndex::new(&[1.0, 0.0, 3.0, 6.0]).unwrap();
        let mut r = Rng::new(5);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[w.sample(&mut r)] += 1;
        }
        assert_eq!(counts[1], 0, "zero weight is never drawn");
        for (c, p) in counts.iter().zip([0.1, 0.0, 0.3, 0.6]) {
            assert!((*c as f64 / 100_000.0 - p).abs() < 0.01, "{counts:?}");
        }
        assert!(WeightedIndex::new(&[]).is_none());
        assert!(WeightedIndex::new(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(11);
        let xs: Vec<f64> = (0..50_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "{mean} {var}");
    }
}
