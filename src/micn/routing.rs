//! Behaviour-to-interest dynamic routing (MIND, Li et al., CIKM 2019), as SPEC §2.3 fixes it.
//!
//! With `ê_i = S e_i` (one shared bilinear map `S`, `h × h`) and routing logits `b_ij ~ N(0, 1)`
//! drawn per sample from the step seed, each iteration computes `w_ij = softmax_j(b_ij)` over the
//! user's active capsules, `s_j = Σ_i w_ij ê_i` over real behaviours, `u_j = squash(s_j)` and
//! `b_ij += u_jᵀ ê_i`. Only the last iteration carries gradient: the logits it starts from are
//! built from detached `ê` (and the random start), so `S` learns only through `s_j` of the last
//! iteration. A user with `len_u` real behaviours has `K_u = max(1, min(K_max, ⌊log₂ len_u⌋))`
//! active capsules; capsules `j ≥ K_u` get no routing weight and come out as zero vectors.
use tch::{nn, Device, Kind, Tensor};

use super::rng::{NormalField, StepSeed, ROUTING_STREAM};

/// Inside the square root of squash, so that `s = 0` gives 0 with a finite gradient.
pub const SQUASH_EPS: f64 = 1e-9;

/// `squash(s) = |s|² / (1 + |s|²) · s / sqrt(|s|² + ε)` over the last dimension.
///
/// # Shapes
/// `s [.., h]` → same
pub fn squash(s: &Tensor) -> Tensor {
    let norm2 = s.square().sum_dim_intlist(-1, true, s.kind()); // [.., 1]
    &norm2 / (1.0 + &norm2) * s / (norm2 + SQUASH_EPS).sqrt()
}

/// `K_u = max(1, min(K_max, ⌊log₂ len⌋))`, computed exactly in integers:
/// `min(K_max, ⌊log₂ n⌋) = #{k ∈ 1..=K_max : n ≥ 2^k}`.
///
/// # Shapes
/// `lengths [b]` (any numeric kind) → `[b]` i64
pub fn interest_count(lengths: &Tensor, k_max: i64) -> Tensor {
    let lengths = lengths.to_kind(Kind::Int64);
    let mut count = lengths.zeros_like();
    // No i64 length reaches 2⁶³, so thresholds past 2⁶² would only overflow.
    for k in 1..=k_max.min(62) {
        count += lengths.ge(1i64 << k).to_kind(Kind::Int64);
    }
    count.clamp_min(1)
}

/// Which capsules are active: `1` for `j < K_u`.
///
/// # Shapes
/// `hist_mask [b, T]` → `[b, K_max]` f32
pub fn active_capsules(hist_mask: &Tensor, k_max: i64) -> Tensor {
    let lengths = hist_mask.sum_dim_intlist(1, false, Kind::Float).round();
    let count = interest_count(&lengths, k_max); // [b]
    let j = Tensor::arange(k_max, (Kind::Int64, hist_mask.device())); // [K]
    j.unsqueeze(0).lt_tensor(&count.unsqueeze(1)).to_kind(hist_mask.kind())
}

/// The initial routing logits `b_ij ~ N(0, 1)`: the value of sample `i`, slot `t`, capsule `j` is
/// a function of `(seed.seed, seed.first_sample + i, t, j)` only, so it does not depend on the
/// batch's padding width or on the rank that holds the sample. Drawn by tensor operations on
/// `device` ([`NormalField`]): no transfer. Routing reads only real behaviours and active
/// capsules; the other entries are drawn too and change nothing.
///
/// # Shapes
/// → `[b, T, K]` f32
pub fn initial_logits(seed: StepSeed, batch: i64, steps: i64, capsules: i64, device: Device) -> Tensor {
    let range = |n: i64, shape: [i64; 3]| Tensor::arange(n, (Kind::Int64, device)).view(shape);
    let sample = range(batch, [batch, 1, 1]) + seed.first_sample as i64;
    let words = [
        sample.bitwise_and(0xFFFF_FFFFi64),
        sample.bitwise_right_shift_tensor_scalar(32),
        range(steps, [1, steps, 1]),
        range(capsules, [1, 1, capsules]),
    ];
    NormalField::new(seed.seed, ROUTING_STREAM).tensor(&words).to_kind(Kind::Float)
}

/// Interest capsules of a batch of users.
#[derive(Debug)]
pub struct Capsules {
    /// `u_j`, `[b, K_max, h]`; inactive capsules are zero.
    pub vectors: Tensor,
    /// `[b, K_max]` f32: 1 for the user's `K_u` active capsules.
    pub active: Tensor,
}

/// The routing layer: the shared bilinear map and the routing schedule.
#[derive(Debug)]
pub struct Routing {
    /// `S`, `[h, h]`.
    bilinear: Tensor,
    iterations: usize,
    k_max: i64,
}

impl Routing {
    /// `S` starts from N(0, 1) entries, as in DeepMatch's MIND `CapsuleLayer`
    /// (`RandomNormal(stddev=1.0)`).
    pub fn new(p: &nn::Path, width: i64, k_max: usize, iterations: usize) -> Self {
        Self {
            bilinear: p.var("bilinear", &[width, width], nn::Init::Randn { mean: 0.0, stdev: 1.0 }),
            iterations: iterations.max(1),
            k_max: k_max as i64,
        }
    }

    /// Most capsules per user.
    pub fn k_max(&self) -> i64 {
        self.k_max
    }

    /// Routes the history into capsules, drawing the initial logits from `seed`
    /// ([`initial_logits`]).
    ///
    /// # Shapes
    /// `hist [b, T, h]`, `hist_mask [b, T]` → [`Capsules`]
    pub fn forward(&self, hist: &Tensor, hist_mask: &Tensor, seed: StepSeed) -> Capsules {
        let (b, steps) = (hist_mask.size()[0], hist_mask.size()[1]);
        let logits = initial_logits(seed, b, steps, self.k_max, hist.device());
        self.forward_from_logits(hist, hist_mask, &logits.to_kind(hist.kind()))
    }

    /// Routes from given initial logits `b_ij` (what [`Routing::forward`] draws), for tests and
    /// oracles.
    ///
    /// # Shapes
    /// `hist [b, T, h]`, `hist_mask [b, T]`, `logits [b, T, K_max]` → [`Capsules`]
    pub fn forward_from_logits(&self, hist: &Tensor, hist_mask: &Tensor, logits: &Tensor) -> Capsules {
        self.route(hist, hist_mask, logits, active_capsules(hist_mask, self.k_max))
    }

    /// Routing with the user's active capsules `active [b, K_max]`.
    fn route(&self, hist: &Tensor, hist_mask: &Tensor, logits: &Tensor, active: Tensor) -> Capsules {
        let inactive = active.le(0.5).unsqueeze(1); // [b, 1, K]
        let mapped = hist.matmul(&self.bilinear.tr()); // ê_i = S e_i, [b, T, h]
        let real = hist_mask.unsqueeze(-1); // [b, T, 1]
        let mut logits = logits.detach();
        let mut capsules = None;
        for iteration in 0..self.iterations {
            let last = iteration + 1 == self.iterations;
            let mapped = if last { mapped.shallow_clone() } else { mapped.detach() };
            // Softmax over the active capsules only; K_u ≥ 1, so every row has one.
            let weights = logits.masked_fill(&inactive, f64::NEG_INFINITY).softmax(-1, logits.kind()) * &real; // [b, T, K]
            let s = weights.transpose(1, 2).matmul(&mapped); // [b, K, h]
            let u = squash(&s);
            if !last {
                // b_ij += u_jᵀ ê_i, [b, T, K]; out of place, as `logits` shares the caller's storage.
                logits = &logits + mapped.matmul(&u.transpose(1, 2));
            }
            capsules = Some(u);
        }
        let vectors = capsules.expect("at least one routing iteration");
        Capsules { vectors, active }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn mask(rows: &[&[f32]]) -> Tensor {
        let t = rows[0].len() as i64;
        Tensor::from_slice(&rows.concat()).view([rows.len() as i64, t])
    }

    #[test]
    fn squash_matches_hand_computed_values() {
        // s = [3, 4]: |s|² = 25, |s| = 5, squash = 25/26 · [0.6, 0.8] = [0.576923, 0.769231].
        let s = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0, 0.1, 0.0]).view([3, 2]);
        let out = squash(&s);
        let expected = [25.0 / 26.0 * 0.6, 25.0 / 26.0 * 0.8, 0.0, 0.0, 0.01 / 1.01, 0.0];
        // s = [0.1, 0]: |s|² = 0.01, squash = 0.01/1.01 · [1, 0] (ε = 1e-9 moves it by < 1e-7).
        let got: Vec<f32> = Vec::try_from(&out.flatten(0, -1)).unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?}");
        }
        // The zero vector has a finite gradient.
        let zero = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        squash(&zero).sum(Kind::Float).backward();
        assert!(bool::try_from(zero.grad().isfinite().all()).unwrap());
    }

    #[test]
    fn interest_count_follows_the_log2_rule() {
        // K_u = max(1, min(4, ⌊log₂ n⌋)) by hand: log₂ of 0 is −∞ and of 1 is 0, both give 1;
        // 3 → 1.58 → 1; 4 → 2; 7 → 2; 8 → 3; 15 → 3; 16 → 4; 100 → 6 → 4.
        let lengths = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 7, 8, 15, 16, 100]);
        let counts: Vec<i64> = Vec::try_from(&interest_count(&lengths, 4)).unwrap();
        assert_eq!(counts, [1, 1, 1, 1, 2, 2, 3, 3, 4, 4]);
        let counts: Vec<i64> = Vec::try_from(&interest_count(&lengths, 2)).unwrap();
        assert_eq!(counts, [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn appending_padded_behaviours_changes_nothing() {
        let vs = nn::VarStore::new(Device::Cpu);
        let routing = Routing::new(&vs.root(), 4, 4, 3);
        let seed = StepSeed { seed: 17, first_sample: 40 };
        let hist = randn(&[2, 5, 4]);
        let short_mask = mask(&[&[1.0, 1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 0.0, 0.0]]);
        let short = routing.forward(&hist, &short_mask, seed);
        // Three more slots of padding holding arbitrary, large values.
        let long_hist = Tensor::cat(&[&hist, &(randn(&[2, 3, 4]) * 50.0)], 1);
        let long_mask = Tensor::cat(&[&short_mask, &Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))], 1);
        let long = routing.forward(&long_hist, &long_mask, seed);
        assert!(short.vectors.allclose(&long.vectors, 1e-6, 1e-6, false));
        assert!(short.active.equal(&long.active));
        // Same with the padded slots inside the original width.
        let replaced = hist.shallow_clone().masked_fill(&short_mask.le(0.5).unsqueeze(-1), 1e3);
        let again = routing.forward(&replaced, &short_mask, seed);
        assert!(short.vectors.allclose(&again.vectors, 1e-6, 1e-6, false));
    }

    #[test]
    fn capsules_beyond_k_u_have_no_effect() {
        let vs = nn::VarStore::new(Device::Cpu);
        let routing = Routing::new(&vs.root(), 3, 4, 3);
        // Lengths 5 and 9: K_u = 2 and 3 of K_max = 4.
        let hist = randn(&[2, 9, 3]);
        let m = mask(&[&[1., 1., 1., 1., 1., 0., 0., 0., 0.], &[1.; 9]]);
        let logits = randn(&[2, 9, 4]);
        let out = routing.forward_from_logits(&hist, &m, &logits);
        let active: Vec<Vec<f32>> = Vec::try_from(&out.active).unwrap();
        assert_eq!(active, [vec![1.0, 1.0, 0.0, 0.0], vec![1.0, 1.0, 1.0, 0.0]]);
        // Initial logits of inactive capsules are the only thing that feeds them; change them.
        let mut changed: Vec<Vec<Vec<f32>>> = Vec::try_from(&logits).unwrap();
        for (i, k_u) in [(0, 2), (1, 3)] {
            for row in changed[i].iter_mut() {
                for b in row[k_u..].iter_mut() {
                    *b += 100.0;
                }
            }
        }
        let changed = Tensor::from_slice(&changed.concat().concat()).view([2, 9, 4]);
        let again = routing.forward_from_logits(&hist, &m, &changed);
        assert!(out.vectors.equal(&again.vectors));
        // Inactive capsules are zero.
        assert_eq!(out.vectors.get(0).narrow(0, 2, 2).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(out.vectors.get(1).get(2).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// MIND's routing written out with explicit detaching: all iterations but the last run on a
    /// detached copy of `S`; `detach_early = false` lets gradient through every iteration.
    fn reference_routing(s: &Tensor, hist: &Tensor, m: &Tensor, logits: &Tensor, detach_early: bool) -> Tensor {
        let early_s = if detach_early { s.detach() } else { s.shallow_clone() };
        let active = active_capsules(m, 4);
        let inactive = active.le(0.5).unsqueeze(1);
        let mut b = logits.shallow_clone();
        let mut u = None;
        for it in 0..3 {
            let s_now = if it == 2 { s.shallow_clone() } else { early_s.shallow_clone() };
            let mapped = hist.matmul(&s_now.tr());
            let w = b.masked_fill(&inactive, f64::NEG_INFINITY).softmax(-1, Kind::Float) * m.unsqueeze(-1);
            let caps = squash(&w.transpose(1, 2).matmul(&mapped));
            b = &b + mapped.matmul(&caps.transpose(1, 2));
            u = Some(caps);
        }
        u.unwrap()
    }

    #[test]
    fn gradient_reaches_s_only_through_the_last_iteration() {
        let vs = nn::VarStore::new(Device::Cpu);
        let routing = Routing::new(&vs.root(), 3, 4, 3);
        let hist = randn(&[3, 8, 3]);
        let m = mask(&[&[1.; 8], &[1., 1., 1., 1., 0., 0., 0., 0.], &[1., 1., 0., 0., 0., 0., 0., 0.]]);
        let logits = randn(&[3, 8, 4]);
        let probe = randn(&[3, 4, 3]);
        let grad_of = |caps: &Tensor| {
            let s = &routing.bilinear;
            let mut s_grad = s.shallow_clone();
            s_grad.zero_grad();
            (caps * &probe).sum(Kind::Float).backward();
            let g = s.grad().copy();
            s_grad.zero_grad();
            g
        };
        let ours = grad_of(&routing.forward_from_logits(&hist, &m, &logits).vectors);
        let last_only = grad_of(&reference_routing(&routing.bilinear, &hist, &m, &logits, true));
        let everywhere = grad_of(&reference_routing(&routing.bilinear, &hist, &m, &logits, false));
        assert!(ours.allclose(&last_only, 1e-5, 1e-6, false), "{ours} vs {last_only}");
        // The check can fail: letting gradient through every iteration gives another gradient.
        assert!(!ours.allclose(&everywhere, 1e-3, 1e-5, false));
    }

    #[test]
    fn routing_reads_the_drawn_logits_only_at_real_behaviours_and_active_capsules() {
        let vs = nn::VarStore::new(Device::Cpu);
        let routing = Routing::new(&vs.root(), 4, 4, 3);
        let seed = StepSeed { seed: 3, first_sample: 7 };
        let hist = randn(&[3, 9, 4]);
        // 9 real behaviours (K = 3), 4 (K = 2), 2 with a hole (K = 1).
        let hist_mask = mask(&[
            &[1.0; 9],
            &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            &[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]);
        let all = initial_logits(seed, 3, 9, 4, Device::Cpu);
        let read = hist_mask.unsqueeze(-1) * active_capsules(&hist_mask, 4).unsqueeze(1); // [b, T, K]
        assert_eq!(f64::try_from(read.sum(Kind::Float)).unwrap(), (9 * 3 + 4 * 2 + 2) as f64);
        let drawn = routing.forward(&hist, &hist_mask, seed);
        let from_all = routing.forward_from_logits(&hist, &hist_mask, &all);
        assert!(drawn.vectors.equal(&from_all.vectors), "forward draws initial_logits");
        let only_read = routing.forward_from_logits(&hist, &hist_mask, &(&all * &read));
        assert!(only_read.vectors.equal(&from_all.vectors), "the same capsules, bit for bit");
        assert!(drawn.active.equal(&only_read.active));
    }

    #[test]
    fn initial_logits_are_keyed_by_global_sample_index() {
        let a = initial_logits(StepSeed { seed: 5, first_sample: 10 }, 4, 3, 2, Device::Cpu);
        let b = initial_logits(StepSeed { seed: 5, first_sample: 12 }, 2, 5, 2, Device::Cpu);
        // Samples 12 and 13 are rows 2, 3 of the first batch and rows 0, 1 of the second.
        assert!(a.narrow(0, 2, 2).equal(&b.narrow(1, 0, 3)));
        let c = initial_logits(StepSeed { seed: 6, first_sample: 10 }, 4, 3, 2, Device::Cpu);
        // Past 2³² samples the high word keys the draw too.
        let far = |first_sample| initial_logits(StepSeed { seed: 5, first_sample }, 1, 3, 2, Device::Cpu);
        assert!(!far(10).equal(&far(10 + (1 << 32))));
        assert!(!a.equal(&c));
    }
}
