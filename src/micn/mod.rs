//! The Multi-Interest Capsule Network auxiliary task (SPEC §2.3): on the `e_aux` vectors of a
//! user's history, dynamic routing ([`routing`]) extracts up to `K_max` interest capsules, a ReLU
//! layer turns them into interest vectors, label-aware attention ([`attention`]) with the
//! target's `e_aux` as query reduces them to one user vector, and a sampled softmax ([`loss`])
//! scores the target against shared negatives, on positive samples only.
//!
//! MICN owns only its parameters (variables under `micn.`); the `e_aux` tables belong to
//! [`crate::model::embeddings`], which also embeds the sampled negatives. Randomness (initial
//! routing logits, negatives) comes from an explicit [`StepSeed`] ([`rng`]), never from
//! libtorch's global generator.
pub mod attention;
pub mod loss;
pub mod rng;
pub mod routing;

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::MicnConfig;
use crate::model::embeddings::{AuxInput, Embeddings};
use attention::LabelAwareAttention;
use loss::{positive_mask, sampled_softmax, Candidates, Sampler};
pub use rng::StepSeed;
use routing::{Capsules, Routing};

/// Why MICN cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum MicnError {
    #[error("the item vocabulary has {n_items} ids; sampling negatives needs at least one item besides padding")]
    TooFewItems { n_items: i64 },
    #[error("the embeddings have no e_aux tables (MICN is disabled in them)")]
    NoAuxTables,
}

/// The auxiliary loss of one batch.
#[derive(Debug)]
pub struct MicnOutput {
    /// `L_micn` (not yet multiplied by λ), a scalar: the local sum over positives divided by the
    /// caller's normaliser.
    pub loss: Tensor,
    /// Positive samples of this batch that entered the loss.
    pub positives: i64,
}

/// The MICN auxiliary task. Variables: `routing.bilinear` (`S`), `interest.{weight,bias}`.
#[derive(Debug)]
pub struct Micn {
    routing: Routing,
    interest: nn::Linear,
    attention: LabelAwareAttention,
    sampler: Sampler,
    num_negatives: usize,
}

impl Micn {
    /// MICN over `e_aux` vectors of width `width` (`h = 2d`), for a vocabulary of `n_items` ids
    /// (padding included).
    pub fn new(p: &nn::Path, cfg: &MicnConfig, width: i64, n_items: i64) -> Result<Self, MicnError> {
        Ok(Self {
            routing: Routing::new(&(p / "routing"), width, cfg.k_max, cfg.routing_iters),
            interest: nn::linear(p / "interest", width, width, Default::default()),
            attention: LabelAwareAttention::new(cfg.pow_p),
            sampler: Sampler::new(cfg.sampler, n_items)?,
            num_negatives: cfg.num_negatives,
        })
    }

    /// Most interest capsules per user.
    pub fn k_max(&self) -> i64 {
        self.routing.k_max()
    }

    /// The negative sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Interest vectors `v_j = ReLU(W u_j + b)` of the routed capsules, with which are active.
    ///
    /// # Shapes
    /// `hist [b, T, h]`, `hist_mask [b, T]` → (`[b, K_max, h]`, `[b, K_max]`)
    pub fn interests(&self, hist: &Tensor, hist_mask: &Tensor, seed: StepSeed) -> (Tensor, Tensor) {
        let Capsules { vectors, active } = self.routing.forward(hist, hist_mask, seed);
        (self.interest.forward(&vectors).relu(), active)
    }

    /// The user vector `v_u` for each sample's target.
    ///
    /// # Shapes
    /// `aux.target [b, h]`, `aux.hist [b, T, h]` → `[b, h]`
    pub fn user_vector(&self, aux: &AuxInput, seed: StepSeed) -> Tensor {
        let (interests, active) = self.interests(&aux.hist, &aux.hist_mask, seed);
        self.attention.forward(&interests, &active, &aux.target)
    }

    /// `L_micn` of a batch: `target_items [b]` (i64) are the targets' ids, `labels [b]` (float)
    /// the click labels, `normaliser` the number of positives over the global batch (see
    /// [`loss::positive_mask`] for what counts). The `seed.seed` draws the shared negatives, so
    /// every rank must pass the same one.
    pub fn loss(
        &self,
        embeddings: &Embeddings,
        aux: &AuxInput,
        target_items: &Tensor,
        labels: &Tensor,
        seed: StepSeed,
        normaliser: f64,
    ) -> Result<MicnOutput, MicnError> {
        let device = aux.target.device();
        let negative_ids = crate::transfer::upload_i64(&self.negative_ids(seed), device);
        let negatives = embeddings.aux_items(&negative_ids).ok_or(MicnError::NoAuxTables)?;
        let (b, steps) = (aux.hist_mask.size()[0], aux.hist_mask.size()[1]);
        let logits = self.routing_logits(seed, b, steps, device);
        let positive = positive_mask(labels, target_items);
        let positives = crate::transfer::download_f32(&positive.sum(tch::Kind::Float))[0].round() as i64;
        let loss =
            self.loss_with_negatives(aux, (&negative_ids, &negatives), target_items, labels, &logits, normaliser);
        Ok(MicnOutput { loss, positives })
    }

    /// The step's shared negatives: `num_negatives` item ids drawn from `seed.seed`.
    pub fn negative_ids(&self, seed: StepSeed) -> Vec<i64> {
        self.sampler.draw(seed.seed, self.num_negatives)
    }

    /// The initial routing logits of a batch of `b` samples padded to `steps`, `[b, T, K_max]`
    /// f32 on `device`, drawn there from `seed` ([`routing::initial_logits`]).
    pub fn routing_logits(&self, seed: StepSeed, b: i64, steps: i64, device: tch::Device) -> Tensor {
        routing::initial_logits(seed, b, steps, self.routing.k_max(), device)
    }

    /// `L_micn` ([`Micn::loss`]) with the negatives already embedded, `(ids, vectors)` (the ids
    /// of [`Micn::negative_ids`] as a tensor and their `e_aux` vectors `[K, h]`), and the initial
    /// routing logits `[b, T, K_max]` of [`Micn::routing_logits`]. No transfer.
    pub fn loss_with_negatives(
        &self,
        aux: &AuxInput,
        (negative_ids, negative_vectors): (&Tensor, &Tensor),
        target_items: &Tensor,
        labels: &Tensor,
        routing_logits: &Tensor,
        normaliser: f64,
    ) -> Tensor {
        let negatives = Candidates {
            vectors: negative_vectors.shallow_clone(),
            log_q: self.sampler.log_q(negative_ids).to_kind(aux.target.kind()),
            ids: negative_ids.shallow_clone(),
        };
        let target = Candidates {
            vectors: aux.target.shallow_clone(),
            ids: target_items.shallow_clone(),
            log_q: self.sampler.log_q(target_items).to_kind(aux.target.kind()),
        };
        let positive = positive_mask(labels, target_items).to_kind(aux.target.kind());
        let Capsules { vectors, active } =
            self.routing.forward_from_logits(&aux.hist, &aux.hist_mask, &routing_logits.to_kind(aux.target.kind()));
        let interests = self.interest.forward(&vectors).relu();
        let user = self.attention.forward(&interests, &active, &aux.target);
        sampled_softmax(&user, &target, &negatives, &positive, normaliser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::embeddings::Vocab;
    use crate::model::testing::batch;
    use tch::{Device, Kind};

    const VOCAB: Vocab = Vocab { users: 4, items: 30, cats: 5 };

    fn setup(vs: &nn::VarStore) -> (Embeddings, Micn) {
        let item_cats = Tensor::arange(30, (Kind::Int64, Device::Cpu)).remainder(5);
        let emb = Embeddings::new(&(vs.root() / "embeddings"), &VOCAB, 3, true, &item_cats).unwrap();
        let cfg = MicnConfig { num_negatives: 8, ..Default::default() };
        let micn = Micn::new(&(vs.root() / "micn"), &cfg, 6, VOCAB.items).unwrap();
        (emb, micn)
    }

    #[test]
    fn the_loss_is_finite_reproducible_and_counts_positives() {
        crate::model::testing::one_thread();
        let vs = nn::VarStore::new(Device::Cpu);
        let (emb, micn) = setup(&vs);
        let ids = batch(8, 10, 7, &VOCAB, false);
        let aux = emb.forward(&ids).aux.unwrap();
        let labels = Tensor::from_slice(&[1.0f32, 0.0]).repeat([5]);
        let seed = StepSeed { seed: 21, first_sample: 100 };
        let out = micn.loss(&emb, &aux, &ids.items, &labels, seed, 5.0).unwrap();
        assert_eq!(out.positives, 5);
        assert!(out.loss.double_value(&[]).is_finite() && out.loss.double_value(&[]) > 0.0);
        let again = micn.loss(&emb, &aux, &ids.items, &labels, seed, 5.0).unwrap();
        assert_eq!(out.loss.double_value(&[]), again.loss.double_value(&[]));
        let other = micn.loss(&emb, &aux, &ids.items, &labels, StepSeed { seed: 22, ..seed }, 5.0).unwrap();
        assert_ne!(out.loss.double_value(&[]), other.loss.double_value(&[]));
    }

    #[test]
    fn a_batch_of_negatives_gives_zero_loss_and_no_gradient() {
        crate::model::testing::one_thread();
        let vs = nn::VarStore::new(Device::Cpu);
        let (emb, micn) = setup(&vs);
        let ids = batch(9, 6, 5, &VOCAB, false);
        let aux = emb.forward(&ids).aux.unwrap();
        let labels = Tensor::zeros([6], (Kind::Float, Device::Cpu));
        let out = micn.loss(&emb, &aux, &ids.items, &labels, StepSeed { seed: 1, first_sample: 0 }, 0.0).unwrap();
        assert_eq!((out.loss.double_value(&[]), out.positives), (0.0, 0));
        out.loss.backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            assert!(!grad.defined() || grad.abs().sum(Kind::Float).double_value(&[]) == 0.0, "{name}");
        }
    }

    #[test]
    fn splitting_a_batch_over_ranks_adds_up_to_the_whole_batch_loss() {
        crate::model::testing::one_thread();
        let vs = nn::VarStore::new(Device::Cpu);
        let (emb, micn) = setup(&vs);
        let ids = batch(10, 8, 6, &VOCAB, false);
        let labels = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 1.0]).repeat([2]);
        let seed = StepSeed { seed: 5, first_sample: 64 };
        let whole = micn.loss(&emb, &emb.forward(&ids).aux.unwrap(), &ids.items, &labels, seed, 6.0).unwrap();
        let half = |start: i64| {
            let part = crate::model::embeddings::BatchIds {
                users: ids.users.narrow(0, start, 4),
                items: ids.items.narrow(0, start, 4),
                cats: ids.cats.narrow(0, start, 4),
                hist_items: ids.hist_items.narrow(0, start, 4),
                hist_cats: ids.hist_cats.narrow(0, start, 4),
                hist_mask: ids.hist_mask.narrow(0, start, 4),
                noclick: None,
                real: crate::model::embeddings::RealSlots::from_mask(&ids.hist_mask.narrow(0, start, 4)),
            };
            let rank_seed = StepSeed { seed: 5, first_sample: 64 + start as u64 };
            let aux = emb.forward(&part).aux.unwrap();
            micn.loss(&emb, &aux, &part.items, &labels.narrow(0, start, 4), rank_seed, 6.0).unwrap()
        };
        let (a, b) = (half(0), half(4));
        assert_eq!(a.positives + b.positives, whole.positives);
        let sum = a.loss.double_value(&[]) + b.loss.double_value(&[]);
        assert!((sum - whole.loss.double_value(&[])).abs() < 1e-5, "{sum} vs {}", whole.loss);
    }
}
