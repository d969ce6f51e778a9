//! Configuration: TOML files (`configs/`), command-line overrides (`--set section.key=value`),
//! defaults taken from the papers (SPEC §2), and one validation pass.
//!
//! Every error names where the bad value came from (the file, or the `--set` argument) and the
//! key (`micn.phi`), so a user can fix it without reading code. The validated [`Config`] is what
//! the rest of the crate takes by reference; nothing reads configuration anywhere else.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration problem, always naming its origin (file or `--set`) and, when it concerns a
/// value, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read configuration: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Key { origin: String, key: String, message: String },
    /// A `--set` argument that is not one `section.key=value` on a single line.
    #[error("--set {}: {why}", arg.escape_debug())]
    BadOverride { arg: String, why: String },
}

/// A number in a message: as written where that is short, else in scientific notation (`1e300`,
/// not three hundred digits).
pub(crate) struct Compact(pub f64);

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if x == 0.0 || !x.is_finite() || (1e-4..1e16).contains(&x.abs()) {
            write!(f, "{x}")
        } else {
            write!(f, "{x:e}")
        }
    }
}

/// Keys whose valid range depends on other keys' values (checked in `Config::validate`): an
/// error on the first may come from a `--set` of one of the others, which it then names.
const DEPENDS_ON: &[(&str, &[&str])] = &[
    ("train.lr_step_every", &["train.lr_schedule"]),
    ("train.lr_min", &["train.lr"]),
    ("train.weight_decay", &["train.lr"]),
    ("train.early_stop_patience", &["data.valid_share"]),
    ("model.mfn_heads", &["model.embedding_dim"]),
    ("model.gru_hidden", &["model.embedding_dim"]),
    ("model.head_hidden", &["model.embedding_dim", "model.gru_hidden"]),
    ("model.attention_hidden", &["model.embedding_dim", "model.gru_hidden"]),
    ("model.dien_aux_hidden", &["model.embedding_dim", "model.gru_hidden"]),
];

/// Upper bounds of the sizes a configuration may ask for.
///
/// Each is far above anything the papers use (18-wide embeddings, layers of at most 200 units,
/// 4 interests, 32 negatives), so no real configuration meets them; past them libtorch or the
/// allocator would abort, panic or hang instead of reporting an error, so [`Config::load`]
/// refuses them with the key named.
pub mod limits {
    /// `model.embedding_dim`.
    pub const EMBEDDING_DIM: usize = 4096;
    /// Every width in `model.head_hidden`, `model.attention_hidden`, `model.dien_aux_hidden`.
    pub const LAYER_WIDTH: usize = 65_536;
    /// Layers in each of those lists.
    pub const LAYERS: usize = 64;
    /// `model.gru_hidden`.
    pub const GRU_HIDDEN: usize = 8192;
    /// `model.wide_buckets` (one f32 weight each, plus Adam's two moments: 12 GiB at the bound).
    pub const WIDE_BUCKETS: usize = 1 << 30;
    /// Elements of the largest weight matrix a configuration may imply (2³¹ f32 = 8 GiB, three
    /// times that with Adam's moments). Checked for the MLPs and the GRU, whose sizes follow
    /// from the configuration alone; embedding tables also depend on the dataset's vocabulary.
    pub const TENSOR_ELEMENTS: u128 = 1 << 31;
    /// `micn.k_max`: a user has `K_u = min(K_max, ⌊log₂ len⌋)` interests and no history length
    /// (an i64) reaches 2⁶³, so capsules past the 62nd could never be active.
    pub const K_MAX: usize = 62;
    /// `micn.routing_iters`.
    pub const ROUTING_ITERS: usize = 100;
    /// `micn.num_negatives`.
    pub const NUM_NEGATIVES: usize = 65_536;
    /// `data.prefetch_batches` (each a whole local batch held in memory).
    pub const PREFETCH_BATCHES: usize = 1024;
    /// `train.global_batch_size`.
    pub const GLOBAL_BATCH_SIZE: usize = 1 << 24;
    /// `train.epochs`.
    pub const EPOCHS: usize = 1_000_000;
    /// `train.threads` (libtorch takes an i32 and starts every thread at once).
    pub const THREADS: usize = 1024;
}

/// Where the values come from: the device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Cpu,
    Cuda,
    /// CUDA when available, else CPU.
    Auto,
}

/// The main CTR model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    WideDeep,
    Din,
    Dien,
    Mind,
    Mfn,
    Camn,
}

impl ModelKind {
    /// Every main model.
    pub const ALL: [ModelKind; 6] =
        [ModelKind::WideDeep, ModelKind::Din, ModelKind::Dien, ModelKind::Mind, ModelKind::Mfn, ModelKind::Camn];

    /// The name configurations use (`wide_deep`, `din`, `dien`, `mind`, `mfn`, `camn`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::WideDeep => "wide_deep",
            ModelKind::Din => "din",
            ModelKind::Dien => "dien",
            ModelKind::Mind => "mind",
            ModelKind::Mfn => "mfn",
            ModelKind::Camn => "camn",
        }
    }

    /// Whether the model cannot be built without the item-attribute table.
    pub fn needs_attributes(self) -> bool {
        self == ModelKind::Camn
    }

    /// Whether the model reads the item-attribute table when the data has one.
    pub fn reads_attributes(self) -> bool {
        matches!(self, ModelKind::Camn | ModelKind::Mfn)
    }
}

/// How MICN draws the negatives of its sampled softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeSampler {
    /// Log-uniform over frequency-ordered ids (approximates popularity).
    LogUniform,
    Uniform,
}

/// How the embedding tables are updated by Adam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingOptimizer {
    /// Row-sparse ("lazy") Adam on the rows a step touched.
    Lazy,
    /// Exact dense Adam over the whole table.
    Dense,
}

/// How the learning rate changes after the warm-up (see [`crate::train::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `train.lr` throughout.
    Constant,
    /// Multiplied by `train.lr_step_gamma` every `train.lr_step_every` steps.
    Step,
    /// Half a cosine from `train.lr` down to `train.lr_min` over the run's remaining steps.
    Cosine,
}

/// What MIND is trained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MindObjective {
    /// Click-through rate: a Dice head, binary cross-entropy.
    #[default]
    Ctr,
    /// Retrieval: the label-aware user vector against the target and sampled negatives (sampled
    /// softmax over all items), the score `v_u · e_target`; no head.
    Retrieval,
}

/// The power `p` of MICN's label-aware attention: `pow(score, p)`, or hard (argmax) attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttentionPower {
    Soft(f64),
    /// `p = "inf"`: all weight on the best-matching interest.
    Hard,
}

impl Serialize for AttentionPower {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AttentionPower::Soft(p) => s.serialize_f64(*p),
            AttentionPower::Hard => s.serialize_str("inf"),
        }
    }
}

impl<'de> Deserialize<'de> for AttentionPower {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(p) => Ok(AttentionPower::Soft(p as f64)),
            Raw::Float(p) if p.is_infinite() && p > 0.0 => Ok(AttentionPower::Hard),
            Raw::Float(p) => Ok(AttentionPower::Soft(p)),
            Raw::Word(w) if w == "inf" => Ok(AttentionPower::Hard),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("expected a number or \"inf\", found \"{w}\""))),
        }
    }
}

/// A u64 seed in TOML: an integer up to 2⁶³ − 1, a decimal string for any u64. Written as an
/// integer when it fits, so ordinary configurations read as before.
mod seed_format {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(seed: &u64, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*seed) {
            Ok(small) => s.serialize_i64(small),
            Err(_) => s.serialize_str(&seed.to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct Seed;
        impl de::Visitor<'_> for Seed {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "an integer from 0 to 18446744073709551615 (from 2^63 on, as a string: \"18446744073709551615\")",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.trim().parse().map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(Seed)
    }
}

/// `[data]`: the prepared dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Directory written by `micn prepare`.
    pub dir: PathBuf,
    /// Most recent behaviours kept per history (Books 20, Electronics 10; MICN paper §3.2).
    pub max_hist_len: usize,
    /// Drop the last incomplete global batch of an epoch (else pad it with repeated samples).
    pub drop_remainder: bool,
    /// Batches the loader prepares ahead of the trainer.
    pub prefetch_batches: usize,
    /// Share of the training archive held out for validation (mid-run evaluations, the best
    /// checkpoint): whole users with the `dien` protocol, single samples with `din`. 0 holds out
    /// nothing and turns mid-run evaluations off; the test set is only ever scored at the end.
    pub valid_share: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/quickstart"),
            max_hist_len: 20,
            drop_remainder: true,
            prefetch_batches: 4,
            valid_share: 0.1,
        }
    }
}

/// `[model]`: the main CTR model (SPEC §2.1–2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Width of each id embedding (user, item, category); DIEN's code uses 18.
    pub embedding_dim: usize,
    /// Hidden widths of the head MLP (200-80-1).
    pub head_hidden: Vec<usize>,
    /// Hidden widths of DIN/DIEN's attention MLP (80-40-1).
    pub attention_hidden: Vec<usize>,
    /// DIEN's GRU/AUGRU state width.
    pub gru_hidden: usize,
    /// Hidden widths of DIEN's auxiliary-loss MLP (100-50-1).
    pub dien_aux_hidden: Vec<usize>,
    /// Weight α of DIEN's auxiliary loss.
    pub dien_aux_alpha: f64,
    /// Add hashed cross-product features (target × history categories) to Wide&Deep's wide part,
    /// which is otherwise DIEN's reference: a linear layer over `[e_t, Σ hist, e_t ⊙ Σ hist]`.
    pub wide_crosses: bool,
    /// Buckets of Wide&Deep's hashed cross-product features (with `wide_crosses`).
    pub wide_buckets: usize,
    /// MIND's most interest capsules per user.
    pub mind_interests: usize,
    /// MIND's dynamic-routing iterations.
    pub mind_routing_iters: usize,
    /// Power of MIND's label-aware attention, or "inf" for hard attention.
    pub mind_pow_p: AttentionPower,
    /// What MIND is trained for: `ctr` (a head and binary cross-entropy) or `retrieval`.
    pub mind_objective: MindObjective,
    /// Negatives per step of MIND's retrieval objective, shared by the batch, drawn log-uniformly.
    pub mind_negatives: usize,
    /// CAMN's collaborative attribute routing keeps the `camn_top_q` largest scores of each
    /// behaviour (Eq. 3).
    pub camn_top_q: usize,
    /// Weight α of CAMN's diversity loss (Eq. 8); 0 is the paper's CAMN-route.
    pub camn_alpha: f64,
    /// Scale the attention by the collaborative scores (Eq. 4); off is the paper's CAMN-loss.
    pub camn_routing: bool,
    /// MFN's interest centres `K` (similarity interests; as many combination interests).
    pub mfn_interests: usize,
    /// Heads of MFN's multi-head self-attention (they divide the item vector's width).
    pub mfn_heads: usize,
    /// Width `d_h` of MFN's self-attentive layer (`W_1`, Eq. 6).
    pub mfn_hidden: usize,
    /// Pretrained fixed item embeddings and interest centres (`micn mfn-centres`); without them
    /// MFN weighs by its own item vectors (stopped gradient) and learns the centres with the main
    /// task (the paper's "MFN w/o pretrain").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfn_pretrained: Option<PathBuf>,
    /// Add the item attributes' embeddings to MFN's behaviour vectors (fine-grained features) when
    /// the dataset has an item-attribute table.
    pub mfn_attributes: bool,
}

impl ModelConfig {
    /// Whether every loss of the model ignores unclicked samples (MIND trained for retrieval:
    /// its sampled softmax, like MICN's, has a term for clicked samples only), so that training
    /// skips them rather than spending a forward pass on each.
    pub fn learns_from_clicks_only(&self) -> bool {
        self.kind == ModelKind::Mind && self.mind_objective == MindObjective::Retrieval
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Din,
            embedding_dim: 18,
            head_hidden: vec![200, 80],
            attention_hidden: vec![80, 40],
            gru_hidden: 36,
            dien_aux_hidden: vec![100, 50],
            dien_aux_alpha: 1.0,
            wide_crosses: false,
            wide_buckets: 1 << 18,
            mind_interests: 4,
            mind_routing_iters: 3,
            mind_pow_p: AttentionPower::Soft(2.0),
            mind_objective: MindObjective::Ctr,
            mind_negatives: 128,
            camn_top_q: 3,
            camn_alpha: 1e-4,
            camn_routing: true,
            mfn_interests: 4,
            mfn_heads: 2,
            mfn_hidden: 64,
            mfn_pretrained: None,
            mfn_attributes: true,
        }
    }
}

/// `[micn]`: the auxiliary task (SPEC §2.3–2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MicnConfig {
    pub enabled: bool,
    /// Weight λ of the MICN loss.
    pub lambda: f64,
    /// φ: share of the main-task gradient in the update of the shared `e_aux` tables.
    pub phi: f64,
    /// Most interests per user.
    pub k_max: usize,
    /// Dynamic-routing iterations.
    pub routing_iters: usize,
    /// Power of label-aware attention, or "inf" for hard attention.
    pub pow_p: AttentionPower,
    /// Negatives of the sampled softmax, shared by the batch.
    pub num_negatives: usize,
    pub sampler: NegativeSampler,
}

impl Default for MicnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lambda: 1.0,
            phi: 0.3,
            k_max: 4,
            routing_iters: 3,
            pow_p: AttentionPower::Soft(2.0),
            num_negatives: 32,
            sampler: NegativeSampler::LogUniform,
        }
    }
}

/// `[train]`: optimisation and the training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many steps (absent: run all epochs).
    pub max_steps: Option<u64>,
    /// Samples per step over all ranks.
    pub global_batch_size: usize,
    pub lr: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub embedding_optimizer: EmbeddingOptimizer,
    /// Any u64. TOML integers stop at 2⁶³ − 1, so larger seeds are written as decimal strings
    /// (`seed = "18446744073709551615"`); `--set train.seed=18446744073709551615` works as is.
    #[serde(with = "seed_format")]
    pub seed: u64,
    /// Evaluate every N steps (0: only at the end of each epoch).
    pub eval_every_steps: u64,
    /// Write a metrics line every N steps.
    pub log_every_steps: u64,
    /// Compare a digest of every rank's parameters, buffers and optimizer state every N steps
    /// and stop if replicas differ (0: never; a run of one rank has none to compare).
    pub check_replicas_every_steps: u64,
    /// libtorch intra-op threads per rank (0: libtorch's default).
    pub threads: usize,
    /// Run the step's device path on the CPU too: per-row gradient sums and Adam as tensor
    /// operations, exactly the code a GPU runs, instead of the CPU's host fast paths (which
    /// compute the same up to rounding). For testing the GPU path without a GPU; off by default.
    /// On a GPU the device path is always taken.
    pub device_path: bool,
    /// libtorch's deterministic algorithms (and cuDNN's deterministic mode): on a GPU, two runs
    /// and a run and its resume then agree bit for bit, at some cost in speed (the row sums
    /// without atomics). The CPU is deterministic either way. Off by default.
    pub deterministic: bool,
    /// Seconds any one collective or training step may take before the rank's watchdog aborts
    /// the job, naming what it waited for (a lost host, a cut link, a hung peer); 0: no watchdog.
    pub watchdog_seconds: u64,
    /// How the learning rate changes after the warm-up.
    pub lr_schedule: LrSchedule,
    /// Steps over which the learning rate rises linearly from `lr / warmup_steps` to `lr`.
    pub warmup_steps: u64,
    /// `step` schedule: steps between two decays (after the warm-up).
    pub lr_step_every: u64,
    /// `step` schedule: the factor of each decay.
    pub lr_step_gamma: f64,
    /// `cosine` schedule: the learning rate at the last step.
    pub lr_min: f64,
    /// Stop when this many validation evaluations in a row have not improved on the best
    /// validation AUC so far (0: never stop early).
    pub early_stop_patience: u64,
    /// Scale the gradients down to this global L2 norm when above it (0: no clipping).
    pub clip_grad_norm: f64,
    /// Decoupled weight decay (AdamW) of the dense parameters; embedding tables are not decayed.
    pub weight_decay: f64,
    /// At the end, make the checkpoint selected by validation AUC the run's model:
    /// `model.safetensors` holds it, and `summary.json` says its step (`model_step`).
    pub restore_best: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 2,
            max_steps: None,
            global_batch_size: 128,
            lr: 1e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            embedding_optimizer: EmbeddingOptimizer::Lazy,
            seed: 1,
            eval_every_steps: 0,
            log_every_steps: 100,
            check_replicas_every_steps: 0,
            threads: 0,
            device_path: false,
            deterministic: false,
            watchdog_seconds: 600,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            lr_step_every: 0,
            lr_step_gamma: 0.1,
            lr_min: 0.0,
            early_stop_patience: 0,
            clip_grad_norm: 0.0,
            weight_decay: 0.0,
            restore_best: false,
        }
    }
}

/// `[checkpoint]`: when to save and what to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save every N steps (0: off).
    pub every_steps: u64,
    /// Save every T minutes of wall-clock time (0: off).
    pub every_minutes: f64,
    /// Checkpoints kept besides the best one.
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every_steps: 0, every_minutes: 30.0, keep_last: 3 }
    }
}

/// `[run]`: where outputs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub dir: PathBuf,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/default") }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub device: Device,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub micn: MicnConfig,
    pub train: TrainConfig,
    pub checkpoint: CheckpointConfig,
    pub run: RunConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            micn: MicnConfig::default(),
            train: TrainConfig::default(),
            checkpoint: CheckpointConfig::default(),
            run: RunConfig::default(),
        }
    }
}

/// One `--set section.key=value` argument, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The argument as given (`micn.phi=0.5`).
    pub arg: String,
    /// Where it came from, for error messages: `--set micn.phi=0.5`, or a sweep's grid value.
    pub origin: String,
    /// Dotted key, e.g. `micn.phi`.
    pub key: String,
    pub value: toml::Value,
}

impl Override {
    /// Parse `section.key=value`; the value is read as a TOML value, and a bare word that is not
    /// valid TOML is taken as a string (`--set device=cuda`, `--set train.seed=18446744073709551615`).
    /// A value may not span lines: TOML would read the extra lines as further keys, which would
    /// otherwise be dropped without a word.
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadOverride { arg: arg.to_string(), why: why.to_string() };
        let (key, raw) = arg.split_once('=').ok_or_else(|| bad("expected `section.key=value`"))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
            return Err(bad("expected `section.key=value`"));
        }
        // `train . lr` is `train.lr`, as TOML reads it (and as an error names it).
        let key = key.split('.').map(str::trim).collect::<Vec<_>>().join(".");
        let raw = raw.trim();
        if raw.contains(['\n', '\r']) {
            return Err(bad("the value spans several lines; give each key its own --set"));
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self { arg: arg.to_string(), origin: format!("--set {arg}"), key, value })
    }

    /// The same override, named by `origin` in error messages.
    pub fn named(self, origin: String) -> Self {
        Self { origin, ..self }
    }

    /// Set the key in `root`. An inline table given for a section (`--set train={lr=1}`) is
    /// merged into it key by key, as if each key had been set on its own, instead of replacing
    /// the section and with it every key the file set there.
    fn apply(&self, root: &mut toml::Table) -> Result<(), ConfigError> {
        let parts: Vec<&str> = self.key.split('.').map(str::trim).collect();
        let (last, sections) = parts.split_last().expect("a key has at least one part");
        let mut table = root;
        for (depth, section) in sections.iter().enumerate() {
            let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            table = entry.as_table_mut().ok_or_else(|| ConfigError::Key {
                origin: self.origin.clone(),
                key: parts[..=depth].join("."),
                message: "is a value, not a section".into(),
            })?;
        }
        match (table.get_mut(*last), &self.value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(given)) => merge(existing, given),
            _ => {
                table.insert(last.to_string(), self.value.clone());
            }
        }
        Ok(())
    }
}

const SECTION_GIVEN_A_VALUE: &str = "is a section (a table of keys), not a value";

/// The default configuration as TOML: its sections are tables.
fn defaults() -> toml::Value {
    toml::Value::try_from(Config::default()).expect("the defaults serialise")
}

/// Whether the dotted `key` names a section of the configuration (`train`), not a value.
fn is_section(key: &str) -> bool {
    key.split('.').try_fold(&defaults(), |value, part| value.get(part)).is_some_and(toml::Value::is_table)
}

/// The first key of `table` (dotted, after `prefix`) that is a section in `defaults` but holds
/// something other than a table.
fn section_given_a_value(table: &toml::Table, defaults: &toml::Value, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let section = defaults.get(key).filter(|d| d.is_table())?;
        let dotted = format!("{prefix}{key}");
        match value.as_table() {
            Some(inner) => section_given_a_value(inner, section, &format!("{dotted}.")),
            None => Some(dotted),
        }
    })
}

/// Merge `given` into `into`: nested tables key by key, anything else replaced.
fn merge(into: &mut toml::Table, given: &toml::Table) {
    for (key, value) in given {
        match (into.get_mut(key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(nested)) => merge(existing, nested),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A TOML parse error as a message. The parser quotes the offending line whole: a line of
/// megabytes is cut (its line and column are named above it).
pub fn toml_error_message(e: &toml::de::Error) -> String {
    const SHOWN: usize = 240;
    let cut = |line: &str| match line.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{} …", &line[..at]),
        None => line.to_string(),
    };
    e.to_string().trim().lines().map(cut).collect::<Vec<_>>().join("\n")
}

/// Parse TOML text into a table; a syntax error names `origin` and the line.
fn parse_table(text: &str, origin: &Path) -> Result<toml::Table, ConfigError> {
    toml::from_str::<toml::Table>(text).map_err(|e| {
        let mut message = toml_error_message(&e);
        if message.contains("number too large to fit in target type") {
            // Only a seed may lie past i64 (written as a string).
            message.push_str(
                "\n(TOML integers stop at 9223372036854775807; only train.seed takes a larger value, written as a string)",
            );
        }
        ConfigError::Syntax { path: origin.into(), message }
    })
}

impl Config {
    /// Read `path` (or start from the defaults when `None`), apply `overrides` in order, and
    /// validate.
    pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        let table = match path {
            Some(path) => {
                let text = crate::io_error::read_text_file(path)
                    .map_err(|source| ConfigError::Read { path: path.into(), source })?;
                parse_table(&text, path)?
            }
            None => toml::Table::new(),
        };
        let file_origin = path.map_or_else(|| "default configuration".to_string(), |p| p.display().to_string());
        Self::resolve(table, &file_origin, overrides)
    }

    /// Parse and validate configuration text that did not come from a file of its own (the
    /// resolved config saved in a checkpoint's `state.json`); errors name `origin`.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        Self::resolve(parse_table(text, origin)?, &origin.display().to_string(), &[])
    }

    /// Apply `overrides` to `table`, deserialise and validate; `file_origin` names where the
    /// table came from.
    fn resolve(mut table: toml::Table, file_origin: &str, overrides: &[Override]) -> Result<Self, ConfigError> {
        for (i, o) in overrides.iter().enumerate() {
            o.apply(&mut table).map_err(|e| match e {
                // A section made a value by an earlier `--set` (or the file) is that one's error.
                ConfigError::Key { key, .. } if is_section(&key) => ConfigError::Key {
                    origin: overrides[..i]
                        .iter()
                        .rev()
                        .find(|earlier| earlier.key == key)
                        .map_or_else(|| file_origin.to_string(), |earlier| earlier.origin.clone()),
                    key,
                    message: SECTION_GIVEN_A_VALUE.into(),
                },
                e => e,
            })?;
        }
        // The origin of a key is the last `--set` that touched it (the key, a key under it or an
        // element of it, `model.head_hidden[0]`) or a key its range depends on, else the file.
        let origin_of = |key: &str| {
            let depends_on = DEPENDS_ON.iter().filter(|(k, _)| *k == key).flat_map(|(_, on)| on.iter().copied());
            let keys: Vec<&str> = std::iter::once(key).chain(depends_on).collect();
            overrides
                .iter()
                .rev()
                .find(|o| {
                    keys.iter().any(|key| {
                        *key == o.key
                            || key.starts_with(&format!("{}.", o.key))
                            || key.starts_with(&format!("{}[", o.key))
                            || o.key.starts_with(&format!("{key}."))
                    })
                })
                .map_or_else(|| file_origin.to_string(), |o| o.origin.clone())
        };
        // A section given a value (`train = [3, 7]`, `[[data]]`, `--set train=[1]`) would be read
        // field by field in order, or name a field's type: refused as what it is.
        if let Some(key) = section_given_a_value(&table, &defaults(), "") {
            return Err(ConfigError::Key { origin: origin_of(&key), key, message: SECTION_GIVEN_A_VALUE.into() });
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            // The path includes the offending key, unknown ones too.
            let key = e.path().to_string();
            let mut message = e.inner().to_string();
            if message.starts_with("invalid type: string \"")
                && (message.contains("expected u") || message.contains("expected f"))
            {
                let given = message.split('"').nth(1).unwrap_or_default();
                let digits = !given.is_empty() && given.bytes().all(|b| b.is_ascii_digit());
                let toml_number = toml::from_str::<toml::Table>(&format!("v = {given}"))
                    .is_ok_and(|t| t.get("v").is_some_and(|v| v.is_integer() || v.is_float()));
                if digits && given.parse::<i64>().is_err() {
                    // A bare number past TOML's integers is read as a string.
                    message = format!("{given} is larger than this key takes (TOML integers stop at {})", i64::MAX);
                } else if toml_number {
                    message = format!("takes a number, got the string \"{given}\": write it without quotes");
                } else if given.parse::<f64>().is_ok() {
                    // `.5`, `5.`, `NaN`: numbers elsewhere, read as strings here.
                    message = format!("takes a number; TOML does not read \"{given}\" as one (write 0.5, 5.0, nan)");
                }
            }
            ConfigError::Key { origin: origin_of(&key), key, message }
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Key {
            origin: origin_of(key),
            key: key.into(),
            message,
        })?;
        Ok(config)
    }

    /// Validate a configuration built in code (a benchmark's, from its options) as [`Config::load`]
    /// validates one it reads; an error names `origin` (the options it came from) and the key.
    pub fn checked(self, origin: &str) -> Result<Self, ConfigError> {
        self.validate().map_err(|(key, message)| ConfigError::Key {
            origin: origin.into(),
            key: key.into(),
            message,
        })?;
        Ok(self)
    }

    /// Range checks that types cannot express; returns the offending key and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        fn check(ok: bool, key: &'static str, why: impl fmt::Display) -> Result<(), (&'static str, String)> {
            if ok {
                Ok(())
            } else {
                Err((key, why.to_string()))
            }
        }
        /// A count from 1 to `max`.
        fn count(value: usize, max: usize, key: &'static str) -> Result<(), (&'static str, String)> {
            check(value > 0, key, "must be at least 1")?;
            check(value <= max, key, format!("must be at most {max} (see config::limits), got {value}"))
        }
        /// Positive and finite once cast to f32, as the optimizer computes.
        fn positive_f32(value: f64, key: &'static str) -> Result<(), (&'static str, String)> {
            let single = value as f32;
            check(
                single > 0.0 && single.is_finite(),
                key,
                format!("must be > 0 and finite in f32, got {}", Compact(value)),
            )
        }
        /// Non-negative and finite once cast to f32, as the model computes.
        fn nonnegative_f32(value: f64, key: &'static str) -> Result<(), (&'static str, String)> {
            let ok = value >= 0.0 && (value as f32).is_finite();
            check(ok, key, format!("must be ≥ 0 and finite in f32, got {}", Compact(value)))
        }
        /// A label-aware attention's power: `"inf"`, or a soft power as [`nonnegative_f32`].
        fn power(p: AttentionPower, key: &'static str) -> Result<(), (&'static str, String)> {
            let AttentionPower::Soft(p) = p else { return Ok(()) };
            check(
                p >= 0.0 && (p as f32).is_finite(),
                key,
                format!("must be ≥ 0 and finite in f32, or \"inf\", got {}", Compact(p)),
            )
        }
        use limits::*;
        let (d, m, x, t, c) = (&self.data, &self.model, &self.micn, &self.train, &self.checkpoint);
        let paths = [
            ("data.dir", Some(&d.dir)),
            ("run.dir", Some(&self.run.dir)),
            ("model.mfn_pretrained", m.mfn_pretrained.as_ref()),
        ];
        for (key, path) in paths {
            let nul = path.is_some_and(|p| p.as_os_str().as_encoded_bytes().contains(&0));
            check(!nul, key, "holds a NUL byte, which no file name may")?;
        }
        check(
            m.mfn_pretrained.as_ref().is_none_or(|p| !p.as_os_str().is_empty()),
            "model.mfn_pretrained",
            "is empty: name the file `micn export mfn-centres` wrote, or leave the key out",
        )?;
        check(d.max_hist_len > 0, "data.max_hist_len", "must be at least 1")?;
        count(d.prefetch_batches, PREFETCH_BATCHES, "data.prefetch_batches")?;
        let share = d.valid_share;
        check((0.0..1.0).contains(&share), "data.valid_share", format!("must lie in [0, 1), got {}", Compact(share)))?;
        count(m.embedding_dim, EMBEDDING_DIM, "model.embedding_dim")?;
        count(m.gru_hidden, GRU_HIDDEN, "model.gru_hidden")?;
        // Widest input any MLP sees: DIN's head takes the user and four item vectors of up to
        // 4·dim each (e_orig ⊕ e_aux of item and category), DIEN's head adds the GRU state, and
        // DIEN's attention MLP takes four GRU states.
        let (dim, hidden) = (m.embedding_dim as u128, m.gru_hidden as u128);
        let widest_input = (17 * dim + hidden).max(4 * hidden);
        for (key, widths) in [
            ("model.head_hidden", &m.head_hidden),
            ("model.attention_hidden", &m.attention_hidden),
            ("model.dien_aux_hidden", &m.dien_aux_hidden),
        ] {
            check(widths.iter().all(|&w| w > 0), key, "every width must be at least 1")?;
            check(widths.len() <= LAYERS, key, format!("at most {LAYERS} layers (see config::limits)"))?;
            if let Some(&w) = widths.iter().find(|&&w| w > LAYER_WIDTH) {
                return Err((key, format!("every width must be at most {LAYER_WIDTH} (see config::limits), got {w}")));
            }
            let inputs = std::iter::once(widest_input).chain(widths.iter().map(|&w| w as u128));
            let largest = inputs.zip(widths.iter().map(|&w| w as u128)).map(|(a, b)| a * b).max().unwrap_or(0);
            check(
                largest <= TENSOR_ELEMENTS,
                key,
                format!("a layer would hold {largest} weights, more than {TENSOR_ELEMENTS} (see config::limits)"),
            )?;
        }
        // The GRU's input-to-hidden and hidden-to-hidden weights: 3·h × (4·dim + h).
        let gru = 3 * hidden * (4 * dim + hidden);
        check(
            gru <= TENSOR_ELEMENTS,
            "model.gru_hidden",
            format!("the GRU would hold {gru} weights, more than {TENSOR_ELEMENTS} (see config::limits)"),
        )?;
        nonnegative_f32(m.dien_aux_alpha, "model.dien_aux_alpha")?;
        count(m.wide_buckets, WIDE_BUCKETS, "model.wide_buckets")?;
        count(m.mind_interests, K_MAX, "model.mind_interests")?;
        count(m.mind_routing_iters, ROUTING_ITERS, "model.mind_routing_iters")?;
        power(m.mind_pow_p, "model.mind_pow_p")?;
        count(m.mind_negatives, NUM_NEGATIVES, "model.mind_negatives")?;
        count(m.camn_top_q, K_MAX, "model.camn_top_q")?;
        count(m.mfn_interests, K_MAX, "model.mfn_interests")?;
        count(m.mfn_heads, K_MAX, "model.mfn_heads")?;
        count(m.mfn_hidden, LAYER_WIDTH, "model.mfn_hidden")?;
        check(
            (2 * m.embedding_dim) % m.mfn_heads == 0,
            "model.mfn_heads",
            format!("must divide the item vector's width 2 × embedding_dim = {}", 2 * m.embedding_dim),
        )?;
        nonnegative_f32(m.camn_alpha, "model.camn_alpha")?;
        nonnegative_f32(x.lambda, "micn.lambda")?;
        check((0.0..=1.0).contains(&x.phi), "micn.phi", format!("must lie in [0, 1], got {}", Compact(x.phi)))?;
        count(x.k_max, K_MAX, "micn.k_max")?;
        count(x.routing_iters, ROUTING_ITERS, "micn.routing_iters")?;
        power(x.pow_p, "micn.pow_p")?;
        count(x.num_negatives, NUM_NEGATIVES, "micn.num_negatives")?;
        count(t.epochs, EPOCHS, "train.epochs")?;
        check(t.max_steps != Some(0), "train.max_steps", "must be at least 1 (leave it out for no limit)")?;
        count(t.global_batch_size, GLOBAL_BATCH_SIZE, "train.global_batch_size")?;
        positive_f32(t.lr, "train.lr")?;
        check((0.0..1.0).contains(&t.adam_beta1), "train.adam_beta1", "must lie in [0, 1)")?;
        check((0.0..1.0).contains(&t.adam_beta2), "train.adam_beta2", "must lie in [0, 1)")?;
        positive_f32(t.adam_eps, "train.adam_eps")?;
        check(t.log_every_steps > 0, "train.log_every_steps", "must be at least 1")?;
        check(
            t.threads <= THREADS,
            "train.threads",
            format!("must be at most {THREADS} (0: libtorch's default; see config::limits), got {}", t.threads),
        )?;
        check(
            t.lr_schedule != LrSchedule::Step || t.lr_step_every > 0,
            "train.lr_step_every",
            "must be at least 1 with train.lr_schedule = \"step\"",
        )?;
        check(
            t.lr_step_gamma > 0.0 && t.lr_step_gamma <= 1.0,
            "train.lr_step_gamma",
            format!("must lie in (0, 1], got {}", Compact(t.lr_step_gamma)),
        )?;
        check(
            t.lr_min >= 0.0 && t.lr_min <= t.lr,
            "train.lr_min",
            format!("must lie in [0, train.lr = {}], got {}", Compact(t.lr), Compact(t.lr_min)),
        )?;
        let (clip, decay) = (t.clip_grad_norm, t.weight_decay);
        nonnegative_f32(clip, "train.clip_grad_norm")?;
        check(
            decay >= 0.0 && decay * t.lr < 1.0,
            "train.weight_decay",
            format!("must be ≥ 0 with train.lr · weight_decay < 1, got {}", Compact(decay)),
        )?;
        check(
            t.early_stop_patience == 0 || d.valid_share > 0.0,
            "train.early_stop_patience",
            "needs a validation split (data.valid_share > 0) to watch",
        )?;
        check(
            c.every_minutes >= 0.0 && c.every_minutes.is_finite(),
            "checkpoint.every_minutes",
            format!("must be ≥ 0 and finite (0: no checkpoints by time), got {}", Compact(c.every_minutes)),
        )?;
        check(c.keep_last > 0, "checkpoint.keep_last", "must be at least 1")?;
        Ok(())
    }

    /// The resolved configuration as TOML (saved in the run directory, hashed into checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every config value has a TOML form")
    }

    /// The configuration as a TOML table, as [`Config::to_toml`] writes it (for [`diff`]).
    pub fn to_table(&self) -> toml::Table {
        toml::from_str(&self.to_toml()).expect("a config's own TOML parses")
    }

    /// The configuration with every key that it does not read back at its default: the keys of
    /// the other models (`model.mind_*` for DIN), `model.wide_buckets` without `wide_crosses`,
    /// MIND's head and negatives where its objective has none, `[micn]` with MICN off, and the
    /// other learning-rate schedules' keys. Two configurations equal here train alike.
    pub fn as_trained(&self) -> Config {
        use ModelKind::*;
        // Every field by name: a new one must say here which models read it.
        let ModelConfig {
            kind,
            embedding_dim,
            head_hidden,
            attention_hidden,
            gru_hidden,
            dien_aux_hidden,
            dien_aux_alpha,
            wide_crosses,
            wide_buckets,
            mind_interests,
            mind_routing_iters,
            mind_pow_p,
            mind_objective,
            mind_negatives,
            camn_top_q,
            camn_alpha,
            camn_routing,
            mfn_interests,
            mfn_heads,
            mfn_hidden,
            mfn_pretrained,
            mfn_attributes,
        } = self.model.clone();
        fn read<T>(reads: bool, given: T, default: T) -> T {
            if reads {
                given
            } else {
                default
            }
        }
        let d = ModelConfig::default();
        let (wide, dien, mind, mfn, camn) = (kind == WideDeep, kind == Dien, kind == Mind, kind == Mfn, kind == Camn);
        let retrieval = mind && mind_objective == MindObjective::Retrieval;
        let model = ModelConfig {
            kind,
            embedding_dim,
            head_hidden: read(!retrieval, head_hidden, d.head_hidden),
            attention_hidden: read(matches!(kind, Din | Dien | Mfn | Camn), attention_hidden, d.attention_hidden),
            gru_hidden: read(dien, gru_hidden, d.gru_hidden),
            dien_aux_hidden: read(dien, dien_aux_hidden, d.dien_aux_hidden),
            dien_aux_alpha: read(dien, dien_aux_alpha, d.dien_aux_alpha),
            wide_crosses: read(wide, wide_crosses, d.wide_crosses),
            wide_buckets: read(wide && wide_crosses, wide_buckets, d.wide_buckets),
            mind_interests: read(mind, mind_interests, d.mind_interests),
            mind_routing_iters: read(mind, mind_routing_iters, d.mind_routing_iters),
            mind_pow_p: read(mind, mind_pow_p, d.mind_pow_p),
            mind_objective: read(mind, mind_objective, d.mind_objective),
            mind_negatives: read(retrieval, mind_negatives, d.mind_negatives),
            camn_top_q: read(camn, camn_top_q, d.camn_top_q),
            camn_alpha: read(camn, camn_alpha, d.camn_alpha),
            camn_routing: read(camn, camn_routing, d.camn_routing),
            mfn_interests: read(mfn, mfn_interests, d.mfn_interests),
            mfn_heads: read(mfn, mfn_heads, d.mfn_heads),
            mfn_hidden: read(mfn, mfn_hidden, d.mfn_hidden),
            mfn_pretrained: read(mfn, mfn_pretrained, d.mfn_pretrained),
            mfn_attributes: read(mfn, mfn_attributes, d.mfn_attributes),
        };
        // MICN off reads none of its keys.
        let micn = read(self.micn.enabled, self.micn.clone(), MicnConfig { enabled: false, ..Default::default() });
        let (t, d) = (&self.train, TrainConfig::default());
        let (step, cosine) = (t.lr_schedule == LrSchedule::Step, t.lr_schedule == LrSchedule::Cosine);
        let train = TrainConfig {
            lr_step_every: read(step, t.lr_step_every, d.lr_step_every),
            lr_step_gamma: read(step, t.lr_step_gamma, d.lr_step_gamma),
            lr_min: read(cosine, t.lr_min, d.lr_min),
            ..t.clone()
        };
        Config { model, micn, train, ..self.clone() }
    }

    /// The dotted keys set to something other than their default that this configuration does
    /// not read (see [`Config::as_trained`]).
    pub fn unread_keys(&self) -> Vec<String> {
        diff(&self.to_table(), &self.as_trained().to_table())
    }

    /// For a warning: each key of [`Config::unread_keys`] with its value and the setting that
    /// leaves it unread (`model.mind_interests = 2: model.kind = "din" does not read it`).
    pub fn unread_settings(&self) -> Vec<String> {
        let table = self.flat_table();
        self.unread_keys()
            .iter()
            .map(|key| format!("{}: {} does not read it", setting(&table, key), setting(&table, self.reader_of(key))))
            .collect()
    }

    /// The setting, with its value, that leaves `key` (one of [`Config::unread_keys`] when set)
    /// unread: `model.kind = "din"` for `model.mind_interests`.
    pub fn unread_by(&self, key: &str) -> String {
        setting(&self.flat_table(), self.reader_of(key))
    }

    /// The key whose value leaves `key` unread.
    fn reader_of(&self, key: &str) -> &'static str {
        if key.starts_with("micn.") {
            "micn.enabled"
        } else if key.starts_with("train.") {
            "train.lr_schedule"
        } else if key == "model.wide_buckets" && self.model.kind == ModelKind::WideDeep {
            "model.wide_crosses"
        } else if self.model.kind == ModelKind::Mind && ["model.head_hidden", "model.mind_negatives"].contains(&key) {
            "model.mind_objective"
        } else {
            "model.kind"
        }
    }

    /// The configuration as dotted keys and their values.
    fn flat_table(&self) -> BTreeMap<String, toml::Value> {
        flatten(&self.to_table()).into_iter().collect()
    }
}

/// `key = value` as the dotted configuration `table` holds it.
fn setting(table: &BTreeMap<String, toml::Value>, key: &str) -> String {
    format!("{key} = {}", table.get(key).map(ToString::to_string).unwrap_or_default())
}

/// `{a = {b = 1}}` and `{"a.b" = 1}` both become `[("a.b", 1)]`: a TOML table as dotted keys.
pub fn flatten(table: &toml::Table) -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (key, value) in table {
            let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, out),
                other => out.push((key, other.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

/// The dotted keys whose values differ between two configuration tables (a key present in one
/// only differs), sorted.
pub fn diff(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let (a, b): (BTreeMap<String, toml::Value>, BTreeMap<String, toml::Value>) =
        (flatten(a).into_iter().collect(), flatten(b).into_iter().collect());
    let keys: std::collections::BTreeSet<&String> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
    keys.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_on_a_very_long_line_quotes_its_start_only() {
        let text = format!("[train]\nlr = [{}\n", "[".repeat(100_000));
        let e = parse_table(&text, Path::new("run.toml")).unwrap_err().to_string();
        assert!(e.starts_with("run.toml: invalid TOML: TOML parse error at line 2"), "{}", &e[..e.len().min(300)]);
        assert!(e.len() < 2_000 && e.contains(" …"), "{} bytes: {}", e.len(), &e[..e.len().min(300)]);
    }

    #[test]
    fn diff_names_every_dotted_key_that_differs_or_is_missing_on_one_side() {
        let a: toml::Table =
            toml::from_str("device = \"cpu\"\n[train]\nlr = 1e-3\nseed = 1\n[micn]\nphi = 0.3").unwrap();
        let b: toml::Table =
            toml::from_str("device = \"cpu\"\n\"train.lr\" = 1e-3\n[train]\nseed = 2\n[data]\ndir = \"d\"").unwrap();
        assert_eq!(diff(&a, &b), ["data.dir", "micn.phi", "train.seed"]);
        assert!(diff(&a, &a).is_empty());
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn key_error(e: ConfigError) -> (String, String, String) {
        match e {
            ConfigError::Key { origin, key, message } => (origin, key, message),
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn a_models_name_is_the_one_its_key_takes() {
        for kind in ModelKind::ALL {
            let table: toml::Table = toml::from_str(&format!("kind = \"{}\"", kind.name())).unwrap();
            assert_eq!(table["kind"].clone().try_into::<ModelKind>().unwrap(), kind);
        }
    }

    #[test]
    fn defaults_are_the_papers_values() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!((c.micn.lambda, c.micn.phi, c.micn.k_max, c.micn.routing_iters), (1.0, 0.3, 4, 3));
        assert_eq!(c.micn.pow_p, AttentionPower::Soft(2.0));
        assert_eq!(c.micn.num_negatives, 32);
        assert_eq!((c.train.lr, c.train.global_batch_size), (1e-4, 128));
        assert_eq!((c.model.embedding_dim, c.model.gru_hidden), (18, 36));
        assert_eq!(c.model.head_hidden, vec![200, 80]);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let (_d, path) = write("[micn]\nphi = 0.5\nphii = 0.3\n");
        let (origin, key, message) = key_error(Config::load(Some(&path), &[]).unwrap_err());
        assert_eq!(origin, path.display().to_string());
        assert_eq!(key, "micn.phii");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn unknown_section_names_the_section() {
        let (_d, path) = write("[mcin]\nphi = 0.5\n");
        let (_, key, _) = key_error(Config::load(Some(&path), &[]).unwrap_err());
        assert_eq!(key, "mcin");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let (_d, path) = write("[train]\nglobal_batch_size = \"big\"\n");
        let (origin, key, message) = key_error(Config::load(Some(&path), &[]).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), (path.to_str().unwrap(), "train.global_batch_size"));
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let (_d, path) = write("[micn]\nphi = 1.5\n");
        let (origin, key, message) = key_error(Config::load(Some(&path), &[]).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), (path.to_str().unwrap(), "micn.phi"));
        assert!(message.contains("[0, 1]"), "{message}");
        let (_d, path) = write("[train]\nglobal_batch_size = 0\n");
        let (_, key, _) = key_error(Config::load(Some(&path), &[]).unwrap_err());
        assert_eq!(key, "train.global_batch_size");
    }

    #[test]
    fn syntax_error_names_the_file_and_line() {
        let (_d, path) = write("[micn]\nphi = = 3\n");
        let msg = Config::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(msg.starts_with(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let msg = Config::load(Some(Path::new("/nonexistent/x.toml")), &[]).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/x.toml"), "{msg}");
    }

    #[test]
    fn overrides_replace_file_values_and_parse_toml() {
        let (_d, path) = write("device = \"cpu\"\n[micn]\nphi = 0.5\n[model]\nkind = \"din\"\n");
        let sets: Vec<Override> =
            ["micn.phi=0.7", "model.kind=dien", "device=cuda", "train.max_steps=12", "micn.pow_p=inf"]
                .iter()
                .map(|a| Override::parse(a).unwrap())
                .collect();
        let c = Config::load(Some(&path), &sets).unwrap();
        assert_eq!(c.micn.phi, 0.7);
        assert_eq!(c.model.kind, ModelKind::Dien);
        assert_eq!(c.device, Device::Cuda);
        assert_eq!(c.train.max_steps, Some(12));
        assert_eq!(c.micn.pow_p, AttentionPower::Hard);
        // Later overrides win.
        let sets = [Override::parse("micn.phi=0.1").unwrap(), Override::parse("micn.phi=0.2").unwrap()];
        assert_eq!(Config::load(Some(&path), &sets).unwrap().micn.phi, 0.2);
        // Lists are TOML too.
        let sets = [Override::parse("model.head_hidden=[64, 32]").unwrap()];
        assert_eq!(Config::load(None, &sets).unwrap().model.head_hidden, vec![64, 32]);
    }

    #[test]
    fn the_other_schedules_keys_are_not_read() {
        let mut cfg = Config::default();
        (cfg.train.lr_min, cfg.train.lr_step_every, cfg.train.lr_step_gamma) = (1e-5, 10, 0.5);
        assert_eq!(cfg.unread_keys(), ["train.lr_min", "train.lr_step_every", "train.lr_step_gamma"]);
        assert_eq!(cfg.unread_by("train.lr_min"), "train.lr_schedule = \"constant\"");
        cfg.train.lr_schedule = LrSchedule::Cosine;
        assert_eq!(cfg.unread_keys(), ["train.lr_step_every", "train.lr_step_gamma"]);
        cfg.train.lr_schedule = LrSchedule::Step;
        assert_eq!(cfg.unread_keys(), ["train.lr_min"]);
    }

    #[test]
    fn override_errors_name_the_argument() {
        let sets = [Override::parse("micn.phi=-0.1").unwrap()];
        let (origin, key, _) = key_error(Config::load(None, &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set micn.phi=-0.1", "micn.phi"));
        let sets = [Override::parse("train.nope=1").unwrap()];
        let (origin, key, _) = key_error(Config::load(None, &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set train.nope=1", "train.nope"));
        // An element of a list: the argument, not the file, which may not set the key at all.
        let sets = [Override::parse("model.head_hidden=[8, -1]").unwrap()];
        let (origin, key, _) = key_error(Config::load(Some(&write("device = \"cpu\"\n").1), &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set model.head_hidden=[8, -1]", "model.head_hidden[1]"));
        assert!(matches!(Override::parse("micn.phi"), Err(ConfigError::BadOverride { .. })));
        assert!(matches!(Override::parse("micn..phi=1"), Err(ConfigError::BadOverride { .. })));
        let sets = [Override::parse("device.kind=1").unwrap()];
        let (_, key, message) = key_error(Config::load(Some(&write("device = \"cpu\"\n").1), &sets).unwrap_err());
        assert_eq!((key.as_str(), message.as_str()), ("device", "is a value, not a section"));
        // A section that an earlier `--set` made a value: that `--set` is named, whatever follows.
        for later in [&[][..], &["train.seed=2"]] {
            let sets: Vec<Override> =
                ["train=1"].iter().chain(later).map(|arg| Override::parse(arg).unwrap()).collect();
            let (origin, key, message) = key_error(Config::load(None, &sets).unwrap_err());
            assert_eq!(
                (origin.as_str(), key.as_str(), message.as_str()),
                ("--set train=1", "train", "is a section (a table of keys), not a value")
            );
        }
        // An array for a section would be read field by field in order (`train = [3, 7]`:
        // epochs 3, max_steps 7), and `--set train=[1]` would replace the file's section.
        let (_d, path) = write("[train]\nlr = 0.5\n");
        let sets = [Override::parse("train=[1]").unwrap()];
        let (origin, key, message) = key_error(Config::load(Some(&path), &sets).unwrap_err());
        assert_eq!(
            (origin.as_str(), key.as_str(), message.as_str()),
            ("--set train=[1]", "train", SECTION_GIVEN_A_VALUE)
        );
        for text in ["train = [3, 7]\n", "[[data]]\ndir = \"d\"\n"] {
            let (_d, path) = write(text);
            let (origin, key, message) = key_error(Config::load(Some(&path), &[]).unwrap_err());
            assert_eq!((origin.as_str(), message.as_str()), (path.to_str().unwrap(), SECTION_GIVEN_A_VALUE), "{text}");
            assert!(["train", "data"].contains(&key.as_str()), "{key}");
        }
    }

    #[test]
    fn a_range_that_another_key_sets_names_the_set_of_that_key_and_paths_may_not_hold_nul() {
        // `train.lr_step_every` keeps its default (0); what made it wrong is the `--set` of the
        // schedule, not the file.
        let (_d, path) = write("device = \"cpu\"\n");
        let sets = [Override::parse("train.lr_schedule=step").unwrap()];
        let (origin, key, _) = key_error(Config::load(Some(&path), &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set train.lr_schedule=step", "train.lr_step_every"));
        let (_d, heads) = write("[model]\nmfn_heads = 4\n");
        let sets = [Override::parse("model.embedding_dim=7").unwrap().named("grid value model.embedding_dim=7".into())];
        let (origin, key, _) = key_error(Config::load(Some(&heads), &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("grid value model.embedding_dim=7", "model.mfn_heads"));
        // Without a `--set` of either key, the file.
        let (_d, path) = write("[train]\nlr_schedule = \"step\"\n");
        assert_eq!(key_error(Config::load(Some(&path), &[]).unwrap_err()).0, path.to_str().unwrap());
        for key in ["data.dir", "run.dir", "model.mfn_pretrained"] {
            let sets = [Override::parse(&format!("{key}=\"a\\u0000b\"")).unwrap()];
            let (_, named, message) = key_error(Config::load(None, &sets).unwrap_err());
            assert_eq!((named.as_str(), message.as_str()), (key, "holds a NUL byte, which no file name may"));
        }
    }

    #[test]
    fn an_infinite_or_f32_overflowing_adam_eps_is_refused() {
        // Issue 13 item 9: `adam_eps = inf` was accepted.
        let (_d, path) = write("[train]\nadam_eps = inf\n");
        let (origin, key, message) = key_error(Config::load(Some(&path), &[]).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), (path.to_str().unwrap(), "train.adam_eps"));
        assert!(message.contains("finite"), "{message}");
        // 1e39 is finite in f64 but infinite once the optimizer casts it to f32 (max ≈ 3.4e38).
        let sets = [Override::parse("train.adam_eps=1e39").unwrap()];
        assert_eq!(key_error(Config::load(None, &sets).unwrap_err()).1, "train.adam_eps");
        let sets = [Override::parse("train.lr=nan").unwrap()];
        assert_eq!(key_error(Config::load(None, &sets).unwrap_err()).1, "train.lr");
        // Every factor and power the model computes with in f32: 1e39 would make a loss NaN.
        for key in ["micn.lambda", "micn.pow_p", "model.mind_pow_p", "model.dien_aux_alpha", "model.camn_alpha"] {
            let sets = [Override::parse(&format!("{key}=1e39")).unwrap()];
            let (_, named, message) = key_error(Config::load(None, &sets).unwrap_err());
            assert_eq!(named, key);
            assert!(message.contains("finite in f32"), "{message}");
            let sets = [Override::parse(&format!("{key}=3e38")).unwrap()];
            Config::load(None, &sets).unwrap();
        }
        let sets = [Override::parse("train.clip_grad_norm=1e39").unwrap()];
        assert_eq!(key_error(Config::load(None, &sets).unwrap_err()).1, "train.clip_grad_norm");
    }

    #[test]
    fn a_validation_share_outside_zero_to_one_is_refused() {
        for arg in ["data.valid_share=1.0", "data.valid_share=-0.1", "data.valid_share=nan"] {
            let (_, key, message) = key_error(Config::load(None, &[Override::parse(arg).unwrap()]).unwrap_err());
            assert_eq!(key, "data.valid_share", "{arg}");
            assert!(message.contains("[0, 1)"), "{message}");
        }
    }

    #[test]
    fn thread_counts_past_the_limit_are_refused_instead_of_wrapping() {
        // 100000 threads hung libtorch; 2^32 + 1 wrapped to 1 through `as i32`.
        for threads in [100_000u64, (1 << 32) + 1] {
            let arg = format!("train.threads={threads}");
            let sets = [Override::parse(&arg).unwrap()];
            let (origin, key, message) = key_error(Config::load(None, &sets).unwrap_err());
            assert_eq!((origin, key.as_str()), (format!("--set {arg}"), "train.threads"));
            assert!(message.contains("at most 1024"), "{message}");
        }
        let sets = [Override::parse("train.threads=1024").unwrap()];
        assert_eq!(Config::load(None, &sets).unwrap().train.threads, limits::THREADS);
    }

    #[test]
    fn sizes_past_their_limit_are_refused_with_the_key_named() {
        // Each of these aborted or panicked inside libtorch or the allocator (issue 13 item 9).
        let cases = [
            ("model.embedding_dim=1000000000", "model.embedding_dim"),
            ("model.wide_buckets=1099511627776", "model.wide_buckets"),
            ("micn.num_negatives=100000000", "micn.num_negatives"),
            ("micn.k_max=63", "micn.k_max"),
            ("micn.routing_iters=1000000000", "micn.routing_iters"),
            ("model.head_hidden=[200, 1000000000]", "model.head_hidden"),
            ("model.attention_hidden=[80, 1000000]", "model.attention_hidden"),
            ("model.gru_hidden=1000000000", "model.gru_hidden"),
            ("data.prefetch_batches=10000000000", "data.prefetch_batches"),
            ("train.global_batch_size=1099511627776", "train.global_batch_size"),
            ("train.epochs=10000000000000", "train.epochs"),
        ];
        for (arg, want) in cases {
            let sets = [Override::parse(arg).unwrap()];
            let (origin, key, message) = key_error(Config::load(None, &sets).unwrap_err());
            assert_eq!((origin, key.as_str()), (format!("--set {arg}"), want));
            assert!(message.contains("at most") && message.contains("config::limits"), "{arg}: {message}");
        }
    }

    #[test]
    fn a_layer_too_large_in_total_is_refused_though_each_width_is_allowed() {
        // 65536 × 65536 = 2^32 weights in the second layer, past limits::TENSOR_ELEMENTS = 2^31.
        let sets = [Override::parse("model.head_hidden=[65536, 65536]").unwrap()];
        let (_, key, message) = key_error(Config::load(None, &sets).unwrap_err());
        assert_eq!(key, "model.head_hidden");
        assert!(message.contains("4294967296 weights"), "{message}");
        // The GRU's 3 · 8192 · (4 · 4096 + 8192) = 603979776 weights are allowed, but the widest
        // MLP input, max(17 · 4096 + 8192, 4 · 8192) = 77824, times 65536 is 5100273664.
        let sets: Vec<Override> = ["model.embedding_dim=4096", "model.gru_hidden=8192", "model.head_hidden=[65536]"]
            .iter()
            .map(|a| Override::parse(a).unwrap())
            .collect();
        let (_, key, message) = key_error(Config::load(None, &sets).unwrap_err());
        assert_eq!(key, "model.head_hidden");
        assert!(message.contains("5100273664 weights"), "{message}");
        // Every limit on its own is accepted.
        let at_limits = [
            "model.embedding_dim=4096",
            "model.gru_hidden=8192",
            "model.wide_buckets=1073741824",
            "micn.num_negatives=65536",
            "micn.k_max=62",
            "data.prefetch_batches=1024",
        ];
        for arg in at_limits {
            Config::load(None, &[Override::parse(arg).unwrap()]).unwrap_or_else(|e| panic!("{arg}: {e}"));
        }
    }

    #[test]
    fn an_inline_table_for_a_section_merges_into_it() {
        // `--set train={lr=1}` used to replace [train] and silently drop the file's epochs.
        let (_d, path) = write("[train]\nepochs = 5\nlr = 0.01\n[micn]\nphi = 0.5\n");
        let sets = [Override::parse("train={lr=0.5, seed=9}").unwrap(), Override::parse("micn={k_max=2}").unwrap()];
        let c = Config::load(Some(&path), &sets).unwrap();
        assert_eq!((c.train.epochs, c.train.lr, c.train.seed), (5, 0.5, 9));
        assert_eq!((c.micn.phi, c.micn.k_max), (0.5, 2));
        // A bad key inside the table is named in full, with the argument as its origin.
        let sets = [Override::parse("train={lr=-1}").unwrap()];
        let (origin, key, _) = key_error(Config::load(Some(&path), &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set train={lr=-1}", "train.lr"));
    }

    #[test]
    fn a_value_spanning_lines_is_refused() {
        // The second line used to be parsed as another key of the scratch table and dropped.
        let e = Override::parse("micn.phi=0.5\nlambda = 3").unwrap_err();
        assert!(matches!(e, ConfigError::BadOverride { .. }), "{e}");
        let message = e.to_string();
        assert!(message.starts_with("--set micn.phi=0.5\\nlambda = 3:"), "{message}");
        assert!(message.contains("spans several lines"), "{message}");
        assert!(Override::parse("micn.phi=0.5\r\n").is_ok(), "trailing line ends are trimmed");
    }

    #[test]
    fn every_u64_seed_can_be_given_and_round_trips() {
        let sets = [Override::parse("train.seed=18446744073709551615").unwrap()];
        let c = Config::load(None, &sets).unwrap();
        assert_eq!(c.train.seed, u64::MAX);
        // Written as a string (TOML integers stop at 2^63 − 1), read back equal.
        let text = c.to_toml();
        assert!(text.contains("seed = \"18446744073709551615\""), "{text}");
        let (_d, path) = write(&text);
        assert_eq!(Config::load(Some(&path), &[]).unwrap().train.seed, u64::MAX);
        // Seeds below 2^63 stay plain integers.
        assert!(Config::load(None, &[]).unwrap().to_toml().contains("seed = 1\n"));
        let (_d, path) = write("[train]\nseed = \"9223372036854775808\"\n");
        assert_eq!(Config::load(Some(&path), &[]).unwrap().train.seed, 1 << 63);
    }

    #[test]
    fn a_seed_that_is_not_a_u64_names_the_key() {
        for arg in ["train.seed=-1", "train.seed=1.5", "train.seed=18446744073709551616", "train.seed=abc"] {
            let (origin, key, message) = key_error(Config::load(None, &[Override::parse(arg).unwrap()]).unwrap_err());
            assert_eq!((origin, key.as_str()), (format!("--set {arg}"), "train.seed"));
            assert!(message.contains("18446744073709551615"), "{arg}: {message}");
        }
        // An unquoted seed past i64 is a TOML syntax error; the message says how to write it.
        let (_d, path) = write("[train]\nseed = 18446744073709551615\n");
        let msg = Config::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("as a string"), "{msg}");
        // Other whole numbers past i64 are too large for their key, said so.
        let arg = "train.watchdog_seconds=99999999999999999999";
        let (_, key, message) = key_error(Config::load(None, &[Override::parse(arg).unwrap()]).unwrap_err());
        assert_eq!(key, "train.watchdog_seconds");
        assert_eq!(
            message,
            "99999999999999999999 is larger than this key takes (TOML integers stop at 9223372036854775807)"
        );
    }

    #[test]
    fn odd_values_are_refused_in_plain_words() {
        let error = |args: &[&str]| {
            let sets: Vec<Override> = args.iter().map(|a| Override::parse(a).unwrap()).collect();
            key_error(Config::load(None, &sets).unwrap_err())
        };
        // Far-off numbers in scientific notation, not hundreds of digits.
        let (_, key, message) = error(&["train.lr=1e300"]);
        assert_eq!((key.as_str(), message.as_str()), ("train.lr", "must be > 0 and finite in f32, got 1e300"));
        let (_, _, message) = error(&["data.valid_share=-5e-324"]);
        assert_eq!(message, "must lie in [0, 1), got -5e-324");
        assert_eq!(error(&["micn.phi=1.5"]).2, "must lie in [0, 1], got 1.5");
        // Infinity is not a number of minutes.
        let (_, key, message) = error(&["checkpoint.every_minutes=inf"]);
        assert_eq!(key, "checkpoint.every_minutes");
        assert!(message.contains("finite") && message.ends_with("got inf"), "{message}");
        // A number written as a string is said to be one (not "larger than this key takes").
        for arg in ["checkpoint.keep_last=\"3\"", "train.epochs=\"2\"", "train.lr=\"0.1\""] {
            let (_, _, message) = error(&[arg]);
            assert!(message.starts_with("takes a number, got the string \""), "{arg}: {message}");
        }
        // Written without quotes, but in a form TOML does not read as a number.
        let (_, _, message) = error(&["train.lr=.5"]);
        assert_eq!(message, "takes a number; TOML does not read \".5\" as one (write 0.5, 5.0, nan)");
        // An empty pretrained file name is named by its key.
        let (_, key, message) = error(&["model.mfn_pretrained=\"\""]);
        assert_eq!(key, "model.mfn_pretrained");
        assert!(message.starts_with("is empty"), "{message}");
    }

    #[test]
    fn config_text_from_elsewhere_is_validated_and_names_its_origin() {
        let origin = Path::new("/runs/x/checkpoints/step-00000005/state.json");
        let c = Config::from_toml(&Config::default().to_toml(), origin).unwrap();
        assert_eq!(c, Config::default());
        let (o, key, _) = key_error(Config::from_toml("[micn]\nphi = 2.0\n", origin).unwrap_err());
        assert_eq!((o.as_str(), key.as_str()), (origin.to_str().unwrap(), "micn.phi"));
        let msg = Config::from_toml("[micn\n", origin).unwrap_err().to_string();
        assert!(msg.starts_with(origin.to_str().unwrap()) && msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let sets = [Override::parse("micn.pow_p=inf").unwrap(), Override::parse("train.max_steps=5").unwrap()];
        let c = Config::load(None, &sets).unwrap();
        let (_d, path) = write(&c.to_toml());
        assert_eq!(Config::load(Some(&path), &[]).unwrap(), c);
    }

    #[test]
    fn every_shipped_config_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        // The base configurations; the sweep files beside them are planned by their own test.
        for dir in [root.clone(), root.join("experiments/ablation")] {
            let mut seen = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
                    seen += 1;
                }
            }
            assert!(seen > 0, "no configs in {}", dir.display());
        }
    }
}
