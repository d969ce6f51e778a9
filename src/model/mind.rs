//! MIND (Li et al., CIKM 2019) as a CTR model: the history is routed into interest capsules by
//! MIND's behaviour-to-interest dynamic routing (the layer MICN uses, [`crate::micn::routing`]),
//! each capsule passes through a ReLU layer, label-aware attention with the target as query
//! reduces the interests to one user vector `v_u`, and a Dice head reads
//! `[user, e_target, Σ history, e_target·Σ history, v_u]` (DIN's head input, with `v_u` in place
//! of DIN's attended history).
//!
//! Routing starts from fixed logits `b_tj ~ N(0, 1)` that depend on the history slot `t` and the
//! capsule `j` only, drawn from a constant seed by the counter-based field MICN's routing uses
//! ([`routing::initial_logits`] of one sample): as DeepMatch's MIND, which keeps its routing
//! logits in a fixed random weight, every sample starts from the same logits, so a score never
//! depends on the batch, the rank or the step. The user has
//! `K_u = max(1, min(mind_interests, ⌊log₂ len⌋))` interests.
use tch::nn::{self, Module};
use tch::Tensor;

use super::batch_stats::Mode;
use super::embeddings::MainInput;
use super::layers::{masked_sum, ActivationKind, Mlp};
use super::{InputDims, MainOutput};
use crate::config::ModelConfig;
use crate::micn::attention::LabelAwareAttention;
use crate::micn::routing::{self, Capsules, Routing};
use crate::micn::StepSeed;

/// Seed of MIND's fixed initial routing logits.
pub const ROUTING_START_SEED: u64 = 0x4D49_4E44; // "MIND"

/// MIND's fixed initial routing logits for histories of width `steps`: `[steps, K]`.
pub fn routing_start(steps: i64, capsules: i64, device: tch::Device) -> Tensor {
    let seed = StepSeed { seed: ROUTING_START_SEED, first_sample: 0 };
    routing::initial_logits(seed, 1, steps, capsules, device).squeeze_dim(0)
}

/// MIND.
#[derive(Debug)]
pub struct Mind {
    routing: Routing,
    interest: nn::Linear,
    attention: LabelAwareAttention,
    head: Mlp,
}

impl Mind {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, dims: InputDims) -> Self {
        let w = dims.item;
        Self {
            routing: Routing::new(&(p / "routing"), w, cfg.mind_interests, cfg.mind_routing_iters),
            interest: nn::linear(p / "interest", w, w, Default::default()),
            attention: LabelAwareAttention::new(cfg.mind_pow_p),
            head: Mlp::new(&(p / "head"), dims.user + 4 * w, &cfg.head_hidden, 1, ActivationKind::Dice),
        }
    }

    /// The user's interest vectors `ReLU(W u_j + b)` and which are active.
    ///
    /// # Shapes
    /// `hist [b, T, w]`, `hist_mask [b, T]` → (`[b, K, w]`, `[b, K]`)
    pub fn interests(&self, hist: &Tensor, hist_mask: &Tensor) -> (Tensor, Tensor) {
        let (b, steps) = (hist_mask.size()[0], hist_mask.size()[1]);
        let k = self.routing.k_max();
        let start = routing_start(steps, k, hist.device()).to_kind(hist.kind()).expand([b, steps, k], false);
        let Capsules { vectors, active } = self.routing.forward_from_logits(hist, hist_mask, &start);
        (self.interest.forward(&vectors).relu(), active)
    }

    /// Most interests per user.
    pub fn k_max(&self) -> i64 {
        self.routing.k_max()
    }

    /// # Shapes
    /// `user [b, d]`, `target [b, w]`, `hist [b, T, w]`, `hist_mask [b, T]` → `logit [b]`
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        let (interests, active) = self.interests(&x.hist, &x.hist_mask);
        let user_vector = self.attention.forward(&interests, &active, &x.target); // [b, w]
        let hist_sum = masked_sum(&x.hist, &x.hist_mask);
        let input = Tensor::cat(&[&x.user, &x.target, &hist_sum, &(&x.target * &hist_sum), &user_vector], -1);
        MainOutput { logit: self.head.forward(&input, mode).squeeze_dim(-1), aux_loss: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AttentionPower;
    use crate::micn::routing::squash;
    use tch::{Device, Kind};

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.allclose(b, tol, tol, false)
    }

    #[test]
    fn the_routing_start_is_fixed_per_slot_and_capsule() {
        let a = routing_start(5, 3, Device::Cpu);
        assert_eq!(a.size(), [5, 3]);
        // The same values for a narrower history, and from the host's draw of the same words.
        assert!(close(&routing_start(2, 3, Device::Cpu), &a.narrow(0, 0, 2), 0.0));
        let field = crate::micn::rng::NormalField::new(ROUTING_START_SEED, crate::micn::rng::ROUTING_STREAM);
        assert!((a.double_value(&[4, 2]) - field.value(&[0, 0, 4, 2])).abs() < 1e-6);
        assert_ne!(a.double_value(&[0, 0]), a.double_value(&[0, 1]), "capsules start apart");
    }

    /// One user, written out: routing from the fixed start (K_u = 2 for 4 behaviours), ReLU
    /// interests, label-aware attention (p = 1), the head's input.
    #[test]
    fn interests_and_user_vector_follow_the_routing_written_out() {
        crate::model::testing::one_thread();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            mind_interests: 3,
            mind_routing_iters: 2,
            mind_pow_p: AttentionPower::Soft(1.0),
            head_hidden: vec![4],
            ..Default::default()
        };
        let mind = Mind::new(&vs.root(), &cfg, InputDims { user: 2, item: 3 });
        let hist = Tensor::randn([1, 5, 3], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 0.0]).view([1, 5]);
        let (interests, active) = mind.interests(&hist, &mask);
        assert_eq!(Vec::<f32>::try_from(active.view([-1])).unwrap(), [1.0, 1.0, 0.0], "K_u = ⌊log₂ 4⌋ = 2");
        // By hand: ê_i = S e_i; two iterations over the 4 real slots and 2 active capsules.
        let s_map = vs.variables()["routing.bilinear"].shallow_clone();
        let mapped = hist.get(0).narrow(0, 0, 4).matmul(&s_map.tr()); // [4, 3]
        let mut logits = routing_start(5, 3, Device::Cpu).narrow(0, 0, 4).narrow(1, 0, 2); // [4, 2]
        let mut u = Tensor::new();
        for iteration in 0..2 {
            let weights = logits.softmax(-1, Kind::Float); // [4, 2]
            u = squash(&weights.tr().matmul(&mapped)); // [2, 3]
            if iteration == 0 {
                logits = &logits + mapped.matmul(&u.tr());
            }
        }
        let w = &vs.variables()["interest.weight"];
        let b = &vs.variables()["interest.bias"];
        let expected = (u.matmul(&w.tr()) + b).relu(); // [2, 3]
        assert!(close(&interests.get(0).narrow(0, 0, 2), &expected, 1e-5), "{interests} vs {expected}");
        assert_eq!(
            interests.get(0).get(2).abs().sum(Kind::Float).double_value(&[]),
            (b.relu().sum(Kind::Float)).double_value(&[])
        );
        // Label-aware attention with p = 1: softmax of v_jᵀ e_t over the two active interests.
        let target = Tensor::randn([1, 3], (Kind::Float, Device::Cpu));
        let scores = expected.matmul(&target.tr()).view([2]);
        let user = scores.softmax(0, Kind::Float).unsqueeze(0).matmul(&expected);
        let got = mind.attention.forward(&interests, &active, &target);
        assert!(close(&got, &user, 1e-5), "{got} vs {user}");
    }

    #[test]
    fn scores_do_not_depend_on_the_batch_and_an_empty_history_is_finite() {
        crate::model::testing::one_thread();
        let vocab = crate::model::embeddings::Vocab { users: 5, items: 11, cats: 4 };
        let item_cats = Tensor::from_slice(&[0i64, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]);
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = crate::model::embeddings::Embeddings::new(&(vs.root() / "embeddings"), &vocab, 3, false, &item_cats)
            .unwrap();
        let mind =
            Mind::new(&(vs.root() / "main"), &ModelConfig::default(), InputDims { user: 3, item: emb.item_width() });
        // Lengths 4, 3, 2, 1, 0, 4: the fifth has no history.
        let ids = crate::model::testing::batch(5, 6, 4, &vocab, false);
        let logits = mind.forward(&emb.forward(&ids).main, Mode::Eval).logit;
        assert!(bool::try_from(logits.isfinite().all()).unwrap(), "{logits}");
        // The last three samples alone, in a batch of their own, score the same.
        let part = crate::model::embeddings::BatchIds {
            users: ids.users.narrow(0, 3, 3),
            items: ids.items.narrow(0, 3, 3),
            cats: ids.cats.narrow(0, 3, 3),
            hist_items: ids.hist_items.narrow(0, 3, 3),
            hist_cats: ids.hist_cats.narrow(0, 3, 3),
            hist_mask: ids.hist_mask.narrow(0, 3, 3),
            noclick: None,
            real: crate::model::embeddings::RealSlots::from_mask(&ids.hist_mask.narrow(0, 3, 3)),
        };
        let alone = mind.forward(&emb.forward(&part).main, Mode::Eval).logit;
        assert!(close(&alone, &logits.narrow(0, 3, 3), 1e-6), "{alone} vs {logits}");
    }
}
