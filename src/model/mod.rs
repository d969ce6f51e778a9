//! The CTR models: framework-owned embeddings ([`embeddings`]) and the main models (Wide&Deep,
//! DIN, DIEN; SPEC §2.2; MIND, [`mind`]; MFN, [`mfn`]; CAMN, [`camn`]) built from [`layers`]. The main models see only `e = e_orig ⊕ e_aux`
//! and never know about MICN; [`crate::network`] assembles them with it.
pub mod batch_stats;
pub mod camn;
pub mod dien;
pub mod din;
pub mod embeddings;
pub mod item_attributes;
pub mod layers;
pub mod mfn;
pub mod mind;
pub mod wide_deep;

use tch::{nn, Tensor};

use crate::config::{ModelConfig, ModelKind};
use batch_stats::Mode;
pub use camn::Camn;
pub use dien::Dien;
pub use din::Din;
use embeddings::{HostIds, MainInput};
pub use item_attributes::{AttributeEmbeddings, ItemAttributeIds};
pub use mfn::Mfn;
pub use mind::Mind;
pub use wide_deep::WideDeep;

/// A model that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("vocabulary `{name}` has size {size}; it needs at least the padding id 0")]
    Vocab { name: &'static str, size: i64 },
    #[error("embedding width {dim} must be at least 1")]
    Dim { dim: i64 },
    #[error("item→category table {why}")]
    ItemCats { why: String },
    #[error("item-attribute table {why}")]
    Attributes { why: String },
    #[error("{path}: pretrained MFN embeddings and centres: {why}")]
    Pretrained { path: std::path::PathBuf, why: String },
    #[error(
        "model.kind = \"{model}\" reads item attributes, and this dataset {}",
        match has {
            NoAttributeTable::Missing => "has no item-attribute table (prepare it from Amazon meta with --meta, or from \
                                          sequences with --item-attributes)",
            NoAttributeTable::Empty => "gives no item an attribute: its meta file names no brand, category or price, \
                                        or its attributes file lists none (prepare it with one that does)",
        }
    )]
    NoAttributes { model: &'static str, has: NoAttributeTable },
}

/// Why a dataset gives a model that needs item attributes none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAttributeTable {
    Missing,
    /// A table whose every column is empty.
    Empty,
}

/// What a main model returns.
#[derive(Debug)]
pub struct MainOutput {
    /// The click logit, `[b]`; the caller applies binary cross-entropy with logits.
    pub logit: Tensor,
    /// The model's own auxiliary loss, per sample (`[b]`) and already weighted: DIEN's auxiliary
    /// loss (present when the batch has no-click samples), CAMN's diversity loss (when α > 0).
    /// Reduce it over the batch the same way as the main BCE.
    pub aux_loss: Option<Tensor>,
    /// The user vector `[b, w]` a retrieval objective trains against the items (MIND's), in
    /// place of the binary cross-entropy of `logit`.
    pub user_vector: Option<Tensor>,
}

/// The lookups of one training batch in a main model's own table updated by rows.
#[derive(Debug)]
pub struct RowLookups {
    /// The table's name under the model's path (one of [`MainModel::row_tables`]).
    pub table: &'static str,
    /// The table.
    pub variable: Tensor,
    /// Every lookup's id, in the order the model reads [`MainInput::planned_rows`].
    pub ids: Vec<i64>,
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
    Mind(Mind),
    Mfn(Box<Mfn>),
    Camn(Box<Camn>),
}

impl MainModel {
    /// The model `cfg.kind` for inputs of `dims`; `attributes` are every item's attribute ids
    /// (`items` rows), which CAMN needs, MFN reads when given and the others ignore.
    pub fn new(
        p: &nn::Path,
        cfg: &ModelConfig,
        dims: InputDims,
        attributes: Option<&ItemAttributeIds>,
        items: i64,
    ) -> Result<Self, ModelError> {
        Ok(match cfg.kind {
            ModelKind::WideDeep => MainModel::WideDeep(WideDeep::new(p, cfg, dims)),
            ModelKind::Din => MainModel::Din(Din::new(p, cfg, dims)),
            ModelKind::Dien => MainModel::Dien(Box::new(Dien::new(p, cfg, dims))),
            ModelKind::Mind => MainModel::Mind(Mind::new(p, cfg, dims, items)?),
            ModelKind::Mfn => MainModel::Mfn(Box::new(Mfn::new(p, cfg, dims, attributes, items)?)),
            ModelKind::Camn => {
                let has = NoAttributeTable::Missing;
                let ids = attributes.ok_or(ModelError::NoAttributes { model: cfg.kind.name(), has })?;
                MainModel::Camn(Box::new(Camn::new(p, cfg, dims, ids, items)?))
            }
        })
    }

    /// The main model's own variables (names under its path) that are updated by rows, as the
    /// embedding tables are: Wide&Deep's hashed cross weights, MFN's and CAMN's attribute
    /// embeddings.
    pub fn row_tables(&self) -> &'static [&'static str] {
        match self {
            MainModel::WideDeep(m) => m.row_tables(),
            MainModel::Camn(_) => &[item_attributes::ATTRIBUTE_TABLE],
            MainModel::Mfn(m) => m.row_tables(),
            MainModel::Din(_) | MainModel::Dien(_) | MainModel::Mind(_) => &[],
        }
    }

    /// The lookups a training batch makes in the model's own table updated by rows (at most one;
    /// see [`MainModel::row_tables`]), from the batch's ids on the host, so that the step reads
    /// that table through a row leaf as it reads the embeddings ([`MainInput::planned_rows`]).
    pub fn row_lookups(&self, host: &HostIds<'_>) -> Option<RowLookups> {
        match self {
            MainModel::WideDeep(m) => m.row_lookups(host),
            MainModel::Mfn(m) => m.row_lookups(host),
            MainModel::Camn(m) => Some(m.row_lookups(host)),
            MainModel::Din(_) | MainModel::Dien(_) | MainModel::Mind(_) => None,
        }
    }

    /// Whether the item-attribute ids the model holds (MFN's, CAMN's) are those its training
    /// steps are planned with: false once a checkpoint of another attribute table was loaded.
    pub fn attribute_ids_agree(&self) -> bool {
        match self {
            MainModel::Mfn(m) => m.attributes().is_none_or(AttributeEmbeddings::host_ids_agree),
            MainModel::Camn(m) => m.attributes().host_ids_agree(),
            MainModel::WideDeep(_) | MainModel::Din(_) | MainModel::Dien(_) | MainModel::Mind(_) => true,
        }
    }

    /// With a retrieval objective (MIND's): its sampler and the step's negatives.
    pub fn retrieval_negatives(&self, seed: crate::micn::StepSeed) -> Option<(&crate::micn::loss::Sampler, Vec<i64>)> {
        match self {
            MainModel::Mind(m) => m.retrieval_negatives(seed),
            _ => None,
        }
    }

    /// Logits of the batch; `mode` says how the normalising layers take their statistics.
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        match self {
            MainModel::WideDeep(m) => m.forward(x, mode),
            MainModel::Din(m) => m.forward(x, mode),
            MainModel::Dien(m) => m.forward(x, mode),
            MainModel::Mind(m) => m.forward(x, mode),
            MainModel::Mfn(m) => m.forward(x, mode),
            MainModel::Camn(m) => m.forward(x, mode),
        }
    }
}

/// Helpers shared by the model and MICN tests.
#[cfg(test)]
pub(crate) mod testing {
    use tch::{Kind, Tensor};

    use super::embeddings::{BatchIds, NoClick, RealSlots, Vocab};
    use super::ItemAttributeIds;
    use crate::rng::Rng;

    /// Attribute ids of `items` items in two columns of 4 and 3 values (ids 1..=7, item 0 none,
    /// every fifth item without a value in the second column), for the models that read them.
    pub fn attributes(items: i64) -> ItemAttributeIds {
        let rows: Vec<u32> = (0..items as u32)
            .flat_map(|i| if i == 0 { [0, 0] } else { [1 + i % 4, if i % 5 == 0 { 0 } else { 5 + i % 3 }] })
            .collect();
        ItemAttributeIds::from_rows(&rows, 2, 8)
    }

    /// One libtorch thread for the test process: with two cores shared by parallel tests (and
    /// other builds), libtorch's spinning thread pool is many times slower than one thread.
    pub fn one_thread() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| tch::set_num_threads(1));
    }

    /// The small vocabulary the models' tests use: 5 users, 11 items, 4 categories.
    pub const VOCAB: Vocab = Vocab { users: 5, items: 11, cats: 4 };

    /// Embeddings of width 3 for [`VOCAB`] under `vs`'s `embeddings` (items in categories
    /// 1, 2, 3 in turn), without MICN.
    pub fn embeddings(vs: &tch::nn::VarStore) -> super::embeddings::Embeddings {
        let item_cats = tch::Tensor::from_slice(&[0i64, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]);
        super::embeddings::Embeddings::new(&(vs.root() / "embeddings"), &VOCAB, 3, false, &item_cats).unwrap()
    }

    /// Samples `start..start + len` of a batch, as a batch of their own.
    pub fn rows(ids: &BatchIds, start: i64, len: i64) -> BatchIds {
        let part = |t: &tch::Tensor| t.narrow(0, start, len);
        BatchIds {
            users: part(&ids.users),
            items: part(&ids.items),
            cats: part(&ids.cats),
            hist_items: part(&ids.hist_items),
            hist_cats: part(&ids.hist_cats),
            hist_mask: part(&ids.hist_mask),
            noclick: None,
            real: RealSlots::from_mask(&part(&ids.hist_mask)),
        }
    }

    /// A batch of `b` samples with histories of width `t` whose lengths cycle through
    /// `t, t−1, …, 0`, ids drawn from `seed` (real ids are never 0, padding always is).
    pub fn batch(seed: u64, b: i64, t: i64, vocab: &Vocab, noclick: bool) -> BatchIds {
        let draw = |stream: u64, i: i64, j: i64, n: i64| {
            1 + (Rng::derive(seed, &[99, stream, i as u64, j as u64]).next_u64() % (n as u64 - 1)) as i64
        };
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
