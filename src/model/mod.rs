//! The CTR network: framework-owned embeddings ([`embeddings`]), the main models (Wide&Deep,
//! DIN, DIEN; SPEC §2.2) built from [`layers`], and the MICN auxiliary task ([`crate::micn`])
//! beside them, assembled by [`Network`] under fixed variable paths.
//!
//! The main models see only `e = e_orig ⊕ e_aux` and never know about MICN. The variable paths
//! are what lets the training step split gradients (SPEC §2.4): [`classify`] puts every variable
//! into [`VarGroup::Orig`], [`VarGroup::Aux`] or [`VarGroup::Shared`].
pub mod dien;
pub mod din;
pub mod embeddings;
pub mod layers;
pub mod wide_deep;

use tch::{nn, Tensor};

use crate::config::{MicnConfig, ModelConfig, ModelKind};
use crate::micn::{Micn, MicnError};
pub use dien::Dien;
pub use din::Din;
use embeddings::{Embeddings, MainInput, Vocab};
pub use wide_deep::WideDeep;

/// Path of the embedding tables under the root of the var store.
pub const EMBEDDINGS_PATH: &str = "embeddings";
/// Path of the main model.
pub const MAIN_PATH: &str = "main";
/// Path of the MICN auxiliary task.
pub const MICN_PATH: &str = "micn";

/// A model that cannot be built, or a variable the network does not own.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("vocabulary `{name}` has size {size}; it needs at least the padding id 0")]
    Vocab { name: &'static str, size: i64 },
    #[error("embedding width {dim} must be at least 1")]
    Dim { dim: i64 },
    #[error("item→category table {why}")]
    ItemCats { why: String },
    #[error("variable `{name}` belongs to none of `embeddings`, `main` and `micn`")]
    UnknownVariable { name: String },
    #[error("cannot build MICN: {0}")]
    Micn(#[from] MicnError),
}

/// Which gradient a variable is updated with (SPEC §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VarGroup {
    /// The main-task gradient only: the `e_orig` tables (user, item, cat) and the main model's
    /// parameters (and its buffers, such as Dice's running statistics, which get no gradient).
    Orig,
    /// The auxiliary gradient only: MICN's parameters.
    Aux,
    /// `(1 − φ)·aux + φ·main`: the `e_aux` tables.
    Shared,
}

/// The group of a variable of a [`Network`], from its name in the var store.
pub fn classify(name: &str) -> Result<VarGroup, ModelError> {
    let (owner, rest) = name.split_once('.').unwrap_or((name, ""));
    match owner {
        EMBEDDINGS_PATH if embeddings::AUX_TABLES.contains(&rest) => Ok(VarGroup::Shared),
        EMBEDDINGS_PATH | MAIN_PATH => Ok(VarGroup::Orig),
        MICN_PATH => Ok(VarGroup::Aux),
        _ => Err(ModelError::UnknownVariable { name: name.to_string() }),
    }
}

/// What a main model returns.
#[derive(Debug)]
pub struct MainOutput {
    /// The click logit, `[b]`; the caller applies binary cross-entropy with logits.
    pub logit: Tensor,
    /// DIEN's auxiliary loss, per sample (`[b]`) and already weighted by α; reduce it over the
    /// batch the same way as the main BCE. Present for DIEN when the batch has no-click samples.
    pub aux_loss: Option<Tensor>,
}

/// Widths of what a main model receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputDims {
    /// Width `d` of the user vector.
    pub user: i64,
    /// Width `w` of an item vector `e` (`2d`, or `4d` with MICN).
    pub item: i64,
}

/// One of the main CTR models.
#[derive(Debug)]
pub enum MainModel {
    WideDeep(WideDeep),
    Din(Din),
    Dien(Box<Dien>),
}

impl MainModel {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, dims: InputDims) -> Self {
        match cfg.kind {
            ModelKind::WideDeep => MainModel::WideDeep(WideDeep::new(p, cfg, dims)),
            ModelKind::Din => MainModel::Din(Din::new(p, cfg, dims)),
            ModelKind::Dien => MainModel::Dien(Box::new(Dien::new(p, cfg, dims))),
        }
    }

    /// Logits of the batch; `train` selects Dice's batch statistics (and updates its running
    /// ones).
    pub fn forward(&self, x: &MainInput, train: bool) -> MainOutput {
        match self {
            MainModel::WideDeep(m) => m.forward(x, train),
            MainModel::Din(m) => m.forward(x, train),
            MainModel::Dien(m) => m.forward(x, train),
        }
    }
}

/// The whole network: embeddings at [`EMBEDDINGS_PATH`], the main model at [`MAIN_PATH`] and,
/// when enabled, MICN at [`MICN_PATH`].
#[derive(Debug)]
pub struct Network {
    pub embeddings: Embeddings,
    pub main: MainModel,
    pub micn: Option<Micn>,
}

impl Network {
    /// Builds every part under `root` (normally `vs.root()`); `item_cats [n_items]` (i64) gives
    /// each item's category.
    pub fn new(
        root: &nn::Path,
        model: &ModelConfig,
        micn: &MicnConfig,
        vocab: &Vocab,
        item_cats: &Tensor,
    ) -> Result<Self, ModelError> {
        let dim = model.embedding_dim as i64;
        let embeddings = Embeddings::new(&(root / EMBEDDINGS_PATH), vocab, dim, micn.enabled, item_cats)?;
        let dims = InputDims { user: dim, item: embeddings.item_width() };
        let main = MainModel::new(&(root / MAIN_PATH), model, dims);
        let micn = match embeddings.aux_width() {
            Some(width) => Some(Micn::new(&(root / MICN_PATH), micn, width, vocab.items)?),
            None => None,
        };
        Ok(Self { embeddings, main, micn })
    }
}

/// Helpers shared by the model and MICN tests.
#[cfg(test)]
pub(crate) mod testing {
    use tch::{Kind, Tensor};

    use super::embeddings::{BatchIds, NoClick, RealSlots, Vocab};
    use crate::micn::rng::CounterRng;

    /// One libtorch thread for the test process: with two cores shared by parallel tests (and
    /// other builds), libtorch's spinning thread pool is many times slower than one thread.
    pub fn one_thread() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| tch::set_num_threads(1));
    }

    /// A batch of `b` samples with histories of width `t` whose lengths cycle through
    /// `t, t−1, …, 0`, ids drawn from `seed` (real ids are never 0, padding always is).
    pub fn batch(seed: u64, b: i64, t: i64, vocab: &Vocab, noclick: bool) -> BatchIds {
        let rng = CounterRng::new(seed, 99);
        let draw =
            |stream: u64, i: i64, j: i64, n: i64| 1 + (rng.bits(&[stream, i as u64, j as u64]) % (n as u64 - 1)) as i64;
        let len = |i: i64| t - i % (t + 1);
        let hist = |stream: u64, n: i64| {
            let v: Vec<i64> = (0..b)
                .flat_map(|i| (0..t).map(move |j| (i, j)))
                .map(|(i, j)| if j < len(i) { draw(stream, i, j, n) } else { 0 })
                .collect();
            Tensor::from_slice(&v).view([b, t])
        };
        let mask: Vec<f32> = (0..b).flat_map(|i| (0..t).map(move |j| if j < len(i) { 1.0 } else { 0.0 })).collect();
        let one = |stream: u64, n: i64| Tensor::from_slice(&(0..b).map(|i| draw(stream, i, 0, n)).collect::<Vec<_>>());
        BatchIds {
            users: one(0, vocab.users),
            items: one(1, vocab.items),
            cats: one(2, vocab.cats),
            hist_items: hist(3, vocab.items),
            hist_cats: hist(4, vocab.cats),
            hist_mask: Tensor::from_slice(&mask).view([b, t]).to_kind(Kind::Float),
            noclick: noclick.then(|| NoClick { items: hist(5, vocab.items), cats: hist(6, vocab.cats) }),
            real: RealSlots::from_host_mask(&mask, t as usize, tch::Device::Cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn every_variable_of_a_network_falls_in_exactly_one_group() {
        let vocab = Vocab { users: 4, items: 7, cats: 3 };
        let item_cats = Tensor::from_slice(&[0i64, 1, 1, 2, 2, 1, 2]);
        for kind in [ModelKind::WideDeep, ModelKind::Din, ModelKind::Dien] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ModelConfig { kind, embedding_dim: 2, wide_buckets: 16, ..Default::default() };
            Network::new(&vs.root(), &model, &MicnConfig::default(), &vocab, &item_cats).unwrap();
            let mut counts = std::collections::HashMap::new();
            for name in vs.variables().keys() {
                let group = classify(name).unwrap_or_else(|e| panic!("{e}"));
                *counts.entry(group).or_insert(0) += 1;
                let expected = if name == "embeddings.item_aux" || name == "embeddings.cat_aux" {
                    VarGroup::Shared
                } else if name.starts_with("micn.") {
                    VarGroup::Aux
                } else {
                    VarGroup::Orig
                };
                assert_eq!(group, expected, "{name}");
            }
            assert_eq!(counts[&VarGroup::Shared], 2, "{kind:?}");
            assert!(counts[&VarGroup::Aux] >= 3 && counts[&VarGroup::Orig] > 3, "{kind:?}: {counts:?}");
        }
    }

    #[test]
    fn names_outside_the_network_are_refused() {
        assert!(matches!(classify("optimizer.m"), Err(ModelError::UnknownVariable { .. })));
        assert_eq!(classify("embeddings.item").unwrap(), VarGroup::Orig);
        assert_eq!(classify("embeddings.item_aux").unwrap(), VarGroup::Shared);
        assert_eq!(classify("embeddings.item_aux_extra").unwrap(), VarGroup::Orig);
        assert_eq!(classify("micn.routing.bilinear").unwrap(), VarGroup::Aux);
    }

    const VOCAB: Vocab = Vocab { users: 6, items: 13, cats: 4 };

    fn item_cats() -> Tensor {
        Tensor::from_slice(&[0i64, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    }

    /// Small widths so the tests run fast; the structure is the paper's.
    fn small(kind: ModelKind) -> ModelConfig {
        ModelConfig {
            kind,
            embedding_dim: 4,
            head_hidden: vec![16, 8],
            attention_hidden: vec![8, 4],
            gru_hidden: 6,
            dien_aux_hidden: vec![8, 4],
            dien_aux_alpha: 1.0,
            // Both wide parts, so the hashed crosses stay exercised.
            wide_crosses: true,
            wide_buckets: 64,
        }
    }

    fn network(vs: &nn::VarStore, kind: ModelKind, with_micn: bool) -> Network {
        testing::one_thread();
        let micn = MicnConfig { enabled: with_micn, num_negatives: 5, ..Default::default() };
        Network::new(&vs.root(), &small(kind), &micn, &VOCAB, &item_cats()).unwrap()
    }

    const KINDS: [ModelKind; 3] = [ModelKind::WideDeep, ModelKind::Din, ModelKind::Dien];

    #[test]
    fn every_model_gives_finite_logits_of_shape_b() {
        for kind in KINDS {
            for with_micn in [false, true] {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = network(&vs, kind, with_micn);
                let ids = testing::batch(1, 7, 5, &VOCAB, true);
                let x = net.embeddings.forward(&ids).main;
                for train in [true, false] {
                    let out = net.main.forward(&x, train);
                    assert_eq!(out.logit.size(), [7], "{kind:?}");
                    assert!(bool::try_from(out.logit.isfinite().all()).unwrap(), "{kind:?}");
                    assert_eq!(out.aux_loss.is_some(), kind == ModelKind::Dien, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn histories_of_width_zero_or_one_give_finite_outputs() {
        for kind in KINDS {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = network(&vs, kind, true);
            for width in [0, 1] {
                let ids = testing::batch(6, 4, width, &VOCAB, true);
                let embedded = net.embeddings.forward(&ids);
                let out = net.main.forward(&embedded.main, true);
                assert!(bool::try_from(out.logit.isfinite().all()).unwrap(), "{kind:?}, T = {width}");
                if let Some(aux) = out.aux_loss {
                    // No transition t → t+1 exists: DIEN's auxiliary loss is 0.
                    assert_eq!(aux.abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
                }
                let labels = Tensor::ones([4], (tch::Kind::Float, Device::Cpu));
                let seed = crate::micn::StepSeed { seed: 1, first_sample: 0 };
                let micn = net.micn.as_ref().unwrap();
                let out = micn.loss(&net.embeddings, embedded.aux.as_ref().unwrap(), &ids.items, &labels, seed, 4.0);
                assert!(out.unwrap().loss.double_value(&[]).is_finite(), "{kind:?}, T = {width}");
            }
        }
    }

    /// Every trainable variable the main model uses gets a non-zero gradient from one backward
    /// pass of `BCE + DIEN's aux loss`: the e_orig tables, the e_aux tables (the main model reads
    /// them too), and every parameter of the main model. Expected exceptions: MICN's variables
    /// (the main loss does not reach them), and the output bias of the attention MLP, which adds
    /// the same constant to every score of a softmax and so has a gradient of exactly zero in
    /// exact arithmetic (rounding noise in floats).
    #[test]
    fn one_backward_pass_reaches_every_main_model_variable() {
        for kind in KINDS {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = network(&vs, kind, true);
            let ids = testing::batch(2, 16, 6, &VOCAB, true);
            let labels = Tensor::from_slice(&[1.0f32, 0.0]).repeat([8]);
            let out = net.main.forward(&net.embeddings.forward(&ids).main, true);
            let mut loss =
                out.logit.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, tch::Reduction::Mean);
            if let Some(aux) = out.aux_loss {
                loss = &loss + aux.mean(tch::Kind::Float);
            }
            loss.backward();
            for (name, var) in vs.variables() {
                let grad = var.grad();
                let size = if grad.defined() { grad.abs().sum(tch::Kind::Float).double_value(&[]) } else { 0.0 };
                if name.ends_with("attention.mlp.output.bias") {
                    assert!(size < 1e-6, "{kind:?}: {name} has gradient {size}");
                    continue;
                }
                let expected = var.requires_grad() && !name.starts_with("micn.");
                assert_eq!(size > 0.0, expected, "{kind:?}: {name}");
            }
        }
    }

    /// A tiny separable problem: the click label is whether the target item is odd.
    #[test]
    fn a_few_adam_steps_reduce_the_loss_of_every_model() {
        // The project's Adam (tch's refuses the sparse gradients of the embedding lookups).
        use crate::train::optim::{Adam, AdamConfig};
        for kind in KINDS {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let net = network(&vs, kind, true);
            let ids = testing::batch(3, 32, 6, &VOCAB, true);
            let labels = ids.items.remainder(2).to_kind(tch::Kind::Float);
            let mut params = vs.trainable_variables();
            let mut adam = Adam::new(AdamConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8 }, &params);
            let loss_of = |train: bool| {
                let out = net.main.forward(&net.embeddings.forward(&ids).main, train);
                out.logit.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, tch::Reduction::Mean)
            };
            let before = tch::no_grad(|| loss_of(true)).double_value(&[]);
            for _ in 0..40 {
                let loss = loss_of(true);
                let grads = Tensor::run_backward(&[&loss], &params, false, false);
                let bc = adam.begin_step();
                for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    if g.defined() {
                        let g = if g.is_sparse() { g.to_dense(None, false) } else { g };
                        adam.update_dense(i, p, &g, bc);
                    }
                }
            }
            let after = tch::no_grad(|| loss_of(true)).double_value(&[]);
            assert!(after < 0.5 * before, "{kind:?}: {before} → {after}");
        }
    }

    #[test]
    fn micn_gradient_reaches_micn_and_the_aux_tables_only() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = network(&vs, ModelKind::Din, true);
        let ids = testing::batch(4, 12, 8, &VOCAB, false);
        let labels = Tensor::from_slice(&[1.0f32, 1.0, 0.0]).repeat([4]);
        let embedded = net.embeddings.forward(&ids);
        let micn = net.micn.as_ref().unwrap();
        let seed = crate::micn::StepSeed { seed: 3, first_sample: 0 };
        let out = micn.loss(&net.embeddings, embedded.aux.as_ref().unwrap(), &ids.items, &labels, seed, 8.0).unwrap();
        assert_eq!(out.positives, 8);
        out.loss.backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            let reached = grad.defined() && grad.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0;
            let expected = matches!(classify(&name).unwrap(), VarGroup::Aux | VarGroup::Shared);
            assert_eq!(reached, expected, "{name}");
        }
    }

    #[test]
    fn without_micn_there_is_no_aux_or_shared_variable() {
        let vocab = Vocab { users: 4, items: 7, cats: 3 };
        let item_cats = Tensor::from_slice(&[0i64, 1, 1, 2, 2, 1, 2]);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ModelConfig { embedding_dim: 2, ..Default::default() };
        let micn = MicnConfig { enabled: false, ..Default::default() };
        let net = Network::new(&vs.root(), &model, &micn, &vocab, &item_cats).unwrap();
        assert!(net.micn.is_none());
        assert!(vs.variables().keys().all(|n| classify(n).unwrap() == VarGroup::Orig));
    }
}
