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
//!
//! With `model.mind_objective = "retrieval"` MIND is trained as its paper trains it for
//! retrieval: no head; the label-aware user vector `v_u` (the target as query) against the
//! target's item vector and `mind_negatives` items drawn log-uniformly for the whole step (the
//! same on every rank), a sampled softmax over the clicked samples (MICN's, with the `log Q`
//! correction), normalised by the global count of clicked samples; the score is `v_u · e_t`.
use tch::nn::{self, Module};
use tch::Tensor;

use super::batch_stats::Mode;
use super::embeddings::MainInput;
use super::layers::{masked_sum, ActivationKind, Mlp};
use super::{InputDims, MainOutput, ModelError};
use crate::config::{MindObjective, ModelConfig, NegativeSampler};
use crate::micn::attention::LabelAwareAttention;
use crate::micn::loss::Sampler;
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
    objective: Objective,
}

/// What MIND is trained with.
#[derive(Debug)]
enum Objective {
    /// A Dice head over `[user, e_t, Σ hist, e_t·Σ hist, v_u]`, binary cross-entropy.
    Ctr(Mlp),
    /// The sampled softmax of `v_u` against the target and `negatives` items drawn by `sampler`.
    Retrieval { sampler: Sampler, negatives: usize },
}

/// Tag of the draw of MIND's retrieval negatives, derived from the step's seed (MICN's negatives
/// are drawn from the seed itself).
const NEGATIVES_TAG: u64 = 0x004D_494E_444E_4547; // "MINDNEG"

impl Mind {
    /// MIND over `items` items (the retrieval objective samples its negatives among them).
    pub fn new(p: &nn::Path, cfg: &ModelConfig, dims: InputDims, items: i64) -> Result<Self, ModelError> {
        let w = dims.item;
        // The variables in the order of the release before the retrieval objective (routing,
        // interest, head), so that a CTR-trained MIND starts from the same initial values.
        let routing = Routing::new(&(p / "routing"), w, cfg.mind_interests, cfg.mind_routing_iters);
        let interest = nn::linear(p / "interest", w, w, Default::default());
        let objective = match cfg.mind_objective {
            MindObjective::Ctr => {
                Objective::Ctr(Mlp::new(&(p / "head"), dims.user + 4 * w, &cfg.head_hidden, 1, ActivationKind::Dice))
            }
            MindObjective::Retrieval => Objective::Retrieval {
                sampler: Sampler::new(NegativeSampler::LogUniform, items)
                    .map_err(|_| ModelError::Vocab { name: "items", size: items })?,
                negatives: cfg.mind_negatives,
            },
        };
        Ok(Self { routing, interest, attention: LabelAwareAttention::new(cfg.mind_pow_p), objective })
    }

    /// With the retrieval objective: its sampler, and the negatives it draws for the step of
    /// `seed` (the same on every rank).
    pub fn retrieval_negatives(&self, seed: StepSeed) -> Option<(&Sampler, Vec<i64>)> {
        match &self.objective {
            Objective::Retrieval { sampler, negatives } => {
                let draw_seed = crate::rng::Rng::derive(seed.seed, &[NEGATIVES_TAG]).next_u64();
                Some((sampler, sampler.draw(draw_seed, *negatives)))
            }
            Objective::Ctr(_) => None,
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
    ///
    /// With the retrieval objective the logit is `v_u · e_t` and the output carries `v_u`.
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        let (interests, active) = self.interests(&x.hist, &x.hist_mask);
        let user_vector = self.attention.forward(&interests, &active, &x.target); // [b, w]
        match &self.objective {
            Objective::Ctr(head) => {
                let hist_sum = masked_sum(&x.hist, &x.hist_mask);
                let input = Tensor::cat(&[&x.user, &x.target, &hist_sum, &(&x.target * &hist_sum), &user_vector], -1);
                MainOutput { logit: head.forward(&input, mode).squeeze_dim(-1), aux_loss: None, user_vector: None }
            }
            Objective::Retrieval { .. } => MainOutput {
                logit: (&user_vector * &x.target).sum_dim_intlist(-1, false, user_vector.kind()),
                aux_loss: None,
                user_vector: Some(user_vector),
            },
        }
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
        let mind = Mind::new(&vs.root(), &cfg, InputDims { user: 2, item: 3 }, 10).unwrap();
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
        let (vocab, vs) = (crate::model::testing::VOCAB, nn::VarStore::new(Device::Cpu));
        let emb = crate::model::testing::embeddings(&vs);
        let mind = Mind::new(
            &(vs.root() / "main"),
            &ModelConfig::default(),
            InputDims { user: 3, item: emb.item_width() },
            11,
        )
        .unwrap();
        // Lengths 4, 3, 2, 1, 0, 4: the fifth has no history.
        let ids = crate::model::testing::batch(5, 6, 4, &vocab, false);
        let logits = mind.forward(&emb.forward(&ids).main, Mode::Eval).logit;
        assert!(bool::try_from(logits.isfinite().all()).unwrap(), "{logits}");
        // The last three samples alone, in a batch of their own, score the same.
        let part = crate::model::testing::rows(&ids, 3, 3);
        let alone = mind.forward(&emb.forward(&part).main, Mode::Eval).logit;
        assert!(close(&alone, &logits.narrow(0, 3, 3), 1e-6), "{alone} vs {logits}");
    }

    /// The retrieval objective: no head; the logit is `v_u · e_t`; the step's negatives depend on
    /// its seed only, lie among the real items and differ from MICN's draw of the same seed.
    #[test]
    fn the_retrieval_objective_scores_by_the_user_vector_and_draws_its_negatives_from_the_seed() {
        crate::model::testing::one_thread();
        let (vocab, vs) = (crate::model::testing::VOCAB, nn::VarStore::new(Device::Cpu));
        let emb = crate::model::testing::embeddings(&vs);
        let cfg = ModelConfig { mind_objective: MindObjective::Retrieval, mind_negatives: 6, ..Default::default() };
        let mind = Mind::new(&(vs.root() / "main"), &cfg, InputDims { user: 3, item: emb.item_width() }, 11).unwrap();
        assert!(vs.variables().keys().all(|name| !name.starts_with("main.head")), "no head");
        let ids = crate::model::testing::batch(5, 6, 4, &vocab, false);
        let x = emb.forward(&ids).main;
        let out = mind.forward(&x, Mode::Train);
        let user = out.user_vector.expect("the user vector");
        let (interests, active) = mind.interests(&x.hist, &x.hist_mask);
        assert!(close(&user, &mind.attention.forward(&interests, &active, &x.target), 1e-6));
        assert!(close(&out.logit, &(&user * &x.target).sum_dim_intlist(-1, false, Kind::Float), 1e-6));
        let seed = |s| StepSeed { seed: s, first_sample: 0 };
        let (sampler, a) = mind.retrieval_negatives(seed(3)).unwrap();
        assert_eq!(a.len(), 6);
        assert!(a.iter().all(|&id| (1..11).contains(&id)), "{a:?}");
        assert_eq!(mind.retrieval_negatives(seed(3)).unwrap().1, a, "the same seed, the same draw");
        assert_ne!(mind.retrieval_negatives(seed(4)).unwrap().1, a);
        assert_ne!(sampler.draw(3, 6), a, "not MICN's draw of the seed");
        let ctr = Mind::new(&(vs.root() / "ctr"), &ModelConfig::default(), InputDims { user: 3, item: 6 }, 11).unwrap();
        assert!(ctr.retrieval_negatives(seed(3)).is_none());
    }
}
