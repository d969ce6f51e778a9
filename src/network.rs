//! The whole CTR network, assembled under fixed variable paths: the framework's embeddings and a
//! main model ([`crate::model`]) and, when enabled, the MICN auxiliary task ([`crate::micn`]);
//! and what the training step must know of every variable ([`VarRole`]): which gradient updates
//! it (SPEC §2.4) and whether it is updated by rows. This module sits above both `model` and
//! `micn`, which know nothing of each other's assembly.
use tch::{nn, Tensor};

use crate::config::{MicnConfig, ModelConfig};
use crate::micn::{Micn, MicnError};
use crate::model::embeddings::{self, Embeddings, Vocab};
use crate::model::{InputDims, ItemAttributeIds, MainModel, ModelError};

/// Path of the embedding tables under the root of the var store.
pub const EMBEDDINGS_PATH: &str = "embeddings";
/// Path of the main model.
pub const MAIN_PATH: &str = "main";
/// Path of the MICN auxiliary task.
pub const MICN_PATH: &str = "micn";

/// A network that cannot be built, or a variable it does not own.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot build MICN: {0}")]
    Micn(#[from] MicnError),
    #[error("variable `{name}` belongs to none of `embeddings`, `main` and `micn`")]
    UnknownVariable { name: String },
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
pub fn classify(name: &str) -> Result<VarGroup, NetworkError> {
    let (owner, rest) = name.split_once('.').unwrap_or((name, ""));
    match owner {
        EMBEDDINGS_PATH if embeddings::AUX_TABLES.contains(&rest) => Ok(VarGroup::Shared),
        EMBEDDINGS_PATH | MAIN_PATH => Ok(VarGroup::Orig),
        MICN_PATH => Ok(VarGroup::Aux),
        _ => Err(NetworkError::UnknownVariable { name: name.to_string() }),
    }
}

/// What the training step needs to know of one variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarRole {
    pub group: VarGroup,
    /// Updated by rows: an embedding table, or a main model's own table (Wide&Deep's hashed
    /// weights, the attribute embeddings) (row gradients, row-sparse Adam).
    pub by_rows: bool,
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
    /// each item's category, `attributes` its attribute ids (for the models that read them).
    pub fn new(
        root: &nn::Path,
        model: &ModelConfig,
        micn: &MicnConfig,
        vocab: &Vocab,
        item_cats: &Tensor,
        attributes: Option<&ItemAttributeIds>,
    ) -> Result<Self, NetworkError> {
        let dim = model.embedding_dim as i64;
        let embeddings = Embeddings::new(&(root / EMBEDDINGS_PATH), vocab, dim, micn.enabled, item_cats)?;
        let dims = InputDims { user: dim, item: embeddings.item_width() };
        let main = MainModel::new(&(root / MAIN_PATH), model, dims, attributes, vocab.items)?;
        let micn = match embeddings.aux_width() {
            Some(width) => Some(Micn::new(&(root / MICN_PATH), micn, width, vocab.items)?),
            None => None,
        };
        Ok(Self { embeddings, main, micn })
    }

    /// The role of the variable `name` (its name in the var store).
    pub fn role(&self, name: &str) -> Result<VarRole, NetworkError> {
        let group = classify(name)?;
        let by_rows = match name.split_once('.') {
            Some((EMBEDDINGS_PATH, _)) => true,
            Some((MAIN_PATH, rest)) => self.main.row_tables().contains(&rest),
            _ => false,
        };
        Ok(VarRole { group, by_rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelKind;
    use crate::model::batch_stats::Mode;
    use crate::model::testing;
    use tch::Device;

    #[test]
    fn every_variable_of_a_network_falls_in_exactly_one_group() {
        let vocab = Vocab { users: 4, items: 7, cats: 3 };
        let item_cats = Tensor::from_slice(&[0i64, 1, 1, 2, 2, 1, 2]);
        for kind in ModelKind::ALL {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ModelConfig { kind, embedding_dim: 2, wide_buckets: 16, ..Default::default() };
            Network::new(&vs.root(), &model, &MicnConfig::default(), &vocab, &item_cats, Some(&testing::attributes(7)))
                .unwrap();
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
    fn embedding_tables_and_wide_deep_s_hashed_weights_are_updated_by_rows_and_nothing_else() {
        for crosses in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ModelConfig { kind: ModelKind::WideDeep, wide_crosses: crosses, ..small(ModelKind::WideDeep) };
            let micn = MicnConfig { enabled: true, num_negatives: 5, ..Default::default() };
            let net = Network::new(&vs.root(), &model, &micn, &VOCAB, &item_cats(), None).unwrap();
            let by_rows: Vec<String> = vs
                .variables()
                .into_keys()
                .filter(|name| net.role(name).unwrap().by_rows)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut expected = vec![
                "embeddings.cat",
                "embeddings.cat_aux",
                "embeddings.item",
                "embeddings.item_aux",
                "embeddings.user",
            ];
            if crosses {
                expected.insert(0, "main.crosses.weights");
            }
            expected.sort();
            assert_eq!(by_rows, expected, "crosses {crosses}");
            assert_eq!(net.role("micn.routing.bilinear").unwrap(), VarRole { group: VarGroup::Aux, by_rows: false });
        }
    }

    #[test]
    fn camn_s_attribute_embeddings_are_updated_by_rows_and_data_without_attributes_is_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = network(&vs, ModelKind::Camn, true);
        assert_eq!(net.role("main.attributes").unwrap(), VarRole { group: VarGroup::Orig, by_rows: true });
        assert_eq!(net.role("main.route.weight").unwrap(), VarRole { group: VarGroup::Orig, by_rows: false });
        let vs = nn::VarStore::new(Device::Cpu);
        let err = Network::new(&vs.root(), &small(ModelKind::Camn), &MicnConfig::default(), &VOCAB, &item_cats(), None)
            .unwrap_err();
        assert!(err.to_string().contains("no item-attribute table"), "{err}");
        let wrong_rows = testing::attributes(VOCAB.items - 1);
        let err = Network::new(
            &vs.root(),
            &small(ModelKind::Camn),
            &MicnConfig::default(),
            &VOCAB,
            &item_cats(),
            Some(&wrong_rows),
        )
        .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
    }

    #[test]
    fn names_outside_the_network_are_refused() {
        assert!(matches!(classify("optimizer.m"), Err(NetworkError::UnknownVariable { .. })));
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
            ..Default::default()
        }
    }

    fn network(vs: &nn::VarStore, kind: ModelKind, with_micn: bool) -> Network {
        testing::one_thread();
        let micn = MicnConfig { enabled: with_micn, num_negatives: 5, ..Default::default() };
        Network::new(&vs.root(), &small(kind), &micn, &VOCAB, &item_cats(), Some(&testing::attributes(VOCAB.items)))
            .unwrap()
    }

    const KINDS: [ModelKind; 6] = ModelKind::ALL;

    /// `Config::as_trained` sets back only keys a model does not read: every model (MIND with
    /// either objective, ± MICN) with every `[model]` key away from its default (but the path of
    /// MFN's pretrained file) builds the same variables,
    /// of the same shapes, from one seed, and computes the same logits and auxiliary loss on one
    /// batch, as its `as_trained` configuration.
    #[test]
    fn the_keys_a_configuration_does_not_read_change_nothing_the_model_computes() {
        use crate::config::{AttentionPower, Config, MindObjective};
        // Both built, then the second given the first's values (the global generator that
        // initialises them is shared with the tests running beside this one).
        let build = |cfg: &Config| {
            testing::one_thread();
            let vs = nn::VarStore::new(Device::Cpu);
            let attributes = testing::attributes(VOCAB.items);
            let net = Network::new(&vs.root(), &cfg.model, &cfg.micn, &VOCAB, &item_cats(), Some(&attributes)).unwrap();
            let shapes: std::collections::BTreeMap<_, _> =
                vs.variables().into_iter().map(|(name, t)| (name, t.size())).collect();
            (vs, net, shapes)
        };
        let computed = |net: &Network| {
            let ids = testing::batch(1, 7, 5, &VOCAB, true);
            let out = net.main.forward(&net.embeddings.forward(&ids).main, Mode::Train);
            let values = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
            (values(&out.logit), out.aux_loss.as_ref().map(values))
        };
        for kind in KINDS {
            for mind_objective in [MindObjective::Ctr, MindObjective::Retrieval] {
                for enabled in [false, true] {
                    let model = ModelConfig {
                        kind,
                        embedding_dim: 4,
                        head_hidden: vec![7, 5],
                        attention_hidden: vec![6, 3],
                        gru_hidden: 5,
                        dien_aux_hidden: vec![6, 2],
                        dien_aux_alpha: 0.5,
                        wide_crosses: true,
                        wide_buckets: 32,
                        mind_interests: 3,
                        mind_routing_iters: 2,
                        mind_pow_p: AttentionPower::Soft(1.0),
                        mind_objective,
                        mind_negatives: 7,
                        camn_top_q: 2,
                        camn_alpha: 0.1,
                        camn_routing: false,
                        mfn_interests: 3,
                        mfn_heads: 1,
                        mfn_hidden: 5,
                        mfn_pretrained: None,
                        mfn_attributes: false,
                    };
                    let micn = MicnConfig { enabled, k_max: 3, num_negatives: 5, ..Default::default() };
                    let cfg = Config { model, micn, ..Default::default() };
                    let trained = cfg.as_trained();
                    let what = format!("{kind:?}, {mind_objective:?}, MICN {enabled}");
                    let ((given_vs, given, given_shapes), (mut trained_vs, as_trained, trained_shapes)) =
                        (build(&cfg), build(&trained));
                    assert_eq!(given_shapes, trained_shapes, "{what}");
                    trained_vs.copy(&given_vs).unwrap();
                    assert_eq!(computed(&given), computed(&as_trained), "{what}");
                    assert_eq!(trained.as_trained(), trained);
                    assert!(trained.unread_keys().is_empty());
                }
            }
        }
        // What is left out, by name.
        let cfg = Config {
            model: ModelConfig { mind_interests: 2, wide_buckets: 8, gru_hidden: 5, ..Default::default() },
            micn: MicnConfig { enabled: false, phi: 0.5, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(cfg.unread_keys(), ["micn.phi", "model.gru_hidden", "model.mind_interests", "model.wide_buckets"]);
        assert_eq!(cfg.unread_settings()[0], "micn.phi = 0.5: micn.enabled = false does not read it");
        assert_eq!(cfg.unread_settings()[2], "model.mind_interests = 2: model.kind = \"din\" does not read it");
    }

    /// Wide&Deep's hashed weights, MFN's and CAMN's attribute embeddings, read in a training
    /// step through a row leaf planned from the batch's ids on the host: the same logits as the
    /// lookups in the table, bit for bit, and the table's gradient at every row the lookups read
    /// (the same rows as the sparse gradient of the lookups).
    #[test]
    fn a_main_model_s_own_table_read_through_a_planned_row_leaf_gives_the_lookups_and_their_gradient() {
        use crate::model::embeddings::{DownloadedIds, PlannedRows, TableOwner, Task};
        use crate::transfer::Upload;
        for kind in [ModelKind::WideDeep, ModelKind::Mfn, ModelKind::Camn] {
            testing::one_thread();
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ModelConfig { wide_crosses: true, mfn_attributes: true, ..small(kind) };
            let attributes = testing::attributes(VOCAB.items);
            let net = Network::new(&vs.root(), &model, &MicnConfig::default(), &VOCAB, &item_cats(), Some(&attributes))
                .unwrap();
            let ids = testing::batch(3, 6, 5, &VOCAB, false);
            let lookups = net.main.row_lookups(&DownloadedIds::of(&ids).host()).expect("a table read by rows");
            assert_eq!(net.main.row_tables(), [lookups.table], "{kind:?}");
            let mut upload = Upload::new();
            let planned = PlannedRows::new(&lookups.ids, &mut upload);
            let sent = upload.send(Device::Cpu);
            let (leaf, rows) =
                planned.gather(&lookups.variable, (TableOwner::MainModel, lookups.table), Task::Main, &sent);

            let weighted = |logit: &Tensor| {
                (logit * Tensor::arange(6, (tch::Kind::Float, Device::Cpu)).sin()).sum(tch::Kind::Float)
            };
            let plain = net.main.forward(&net.embeddings.forward(&ids).main, Mode::Eval);
            let mut x = net.embeddings.forward(&ids).main;
            x.planned_rows = Some(rows);
            let through_leaf = net.main.forward(&x, Mode::Eval);
            assert!(through_leaf.logit.equal(&plain.logit), "{kind:?}");

            let table = &vs.variables()[&format!("main.{}", lookups.table)];
            let reference =
                Tensor::run_backward(&[weighted(&plain.logit)], &[table], false, false).remove(0).coalesce();
            let rows_read = Vec::<i64>::try_from(reference.indices().select(0, 0)).unwrap();
            assert_eq!(rows_read, leaf.ids, "{kind:?}: the rows the lookups read");
            let leaf_grad =
                Tensor::run_backward(&[weighted(&through_leaf.logit)], &[&leaf.leaf], false, false).remove(0);
            let diff = (leaf_grad - reference.values()).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{kind:?}: the gradients differ by {diff}");
        }
    }

    #[test]
    fn every_model_gives_finite_logits_of_shape_b() {
        for kind in KINDS {
            for with_micn in [false, true] {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = network(&vs, kind, with_micn);
                let ids = testing::batch(1, 7, 5, &VOCAB, true);
                let x = net.embeddings.forward(&ids).main;
                for train in [true, false] {
                    let out = net.main.forward(&x, if train { Mode::Train } else { Mode::Eval });
                    assert_eq!(out.logit.size(), [7], "{kind:?}");
                    assert!(bool::try_from(out.logit.isfinite().all()).unwrap(), "{kind:?}");
                    assert_eq!(out.aux_loss.is_some(), matches!(kind, ModelKind::Dien | ModelKind::Camn), "{kind:?}");
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
                let out = net.main.forward(&embedded.main, Mode::Train);
                assert!(bool::try_from(out.logit.isfinite().all()).unwrap(), "{kind:?}, T = {width}");
                if let (Some(aux), true) = (out.aux_loss, kind == ModelKind::Dien) {
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
    /// exact arithmetic (rounding noise in floats); CAMN's interest extractors and MFN's scorers
    /// are such units.
    #[test]
    fn one_backward_pass_reaches_every_main_model_variable() {
        for kind in KINDS {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = network(&vs, kind, true);
            let ids = testing::batch(2, 16, 6, &VOCAB, true);
            let labels = Tensor::from_slice(&[1.0f32, 0.0]).repeat([8]);
            let out = net.main.forward(&net.embeddings.forward(&ids).main, Mode::Train);
            let mut loss =
                out.logit.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, tch::Reduction::Mean);
            if let Some(aux) = out.aux_loss {
                loss = &loss + aux.mean(tch::Kind::Float);
            }
            loss.backward();
            for (name, var) in vs.variables() {
                let grad = var.grad();
                let size = if grad.defined() { grad.abs().sum(tch::Kind::Float).double_value(&[]) } else { 0.0 };
                // DIN's and DIEN's attention units, CAMN's extractors, MFN's two scorers.
                let softmax_unit = ["attention.mlp.", "extractor.", "_scorer."].iter().any(|unit| name.contains(unit));
                if softmax_unit && name.ends_with("output.bias") {
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
                let out =
                    net.main.forward(&net.embeddings.forward(&ids).main, if train { Mode::Train } else { Mode::Eval });
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
        let net = Network::new(&vs.root(), &model, &micn, &vocab, &item_cats, None).unwrap();
        assert!(net.micn.is_none());
        assert!(vs.variables().keys().all(|n| classify(n).unwrap() == VarGroup::Orig));
    }
}
