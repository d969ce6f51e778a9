//! Configuration: TOML files (`configs/`), command-line overrides (`--set section.key=value`),
//! defaults taken from the papers (SPEC §2), and one validation pass.
//!
//! Every error names where the bad value came from (the file, or the `--set` argument) and the
//! key (`micn.phi`), so a user can fix it without reading code. The validated [`Config`] is what
//! the rest of the crate takes by reference; nothing reads configuration anywhere else.
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
    #[error("--set {arg}: expected `section.key=value`")]
    BadOverride { arg: String },
}

/// Where the values come from: the device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("data/quickstart"), max_hist_len: 20, drop_remainder: true, prefetch_batches: 4 }
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
    /// Buckets of Wide&Deep's hashed cross-product features.
    pub wide_buckets: usize,
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
            wide_buckets: 1 << 18,
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
    pub seed: u64,
    /// Evaluate every N steps (0: only at the end of each epoch).
    pub eval_every_steps: u64,
    /// Write a metrics line every N steps.
    pub log_every_steps: u64,
    /// Compare a digest of every rank's parameters, buffers and optimizer state every N steps
    /// and stop if replicas differ (0: never).
    pub check_replicas_every_steps: u64,
    /// libtorch intra-op threads per rank (0: libtorch's default).
    pub threads: usize,
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
    /// The argument as given, for error messages.
    pub arg: String,
    /// Dotted key, e.g. `micn.phi`.
    pub key: String,
    pub value: toml::Value,
}

impl Override {
    /// Parse `section.key=value`; the value is read as a TOML value, and a bare word that is not
    /// valid TOML is taken as a string (`--set device=cuda`).
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadOverride { arg: arg.to_string() };
        let (key, raw) = arg.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
            return Err(bad());
        }
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self { arg: arg.to_string(), key: key.to_string(), value })
    }

    fn apply(&self, root: &mut toml::Table) -> Result<(), ConfigError> {
        let parts: Vec<&str> = self.key.split('.').map(str::trim).collect();
        let (last, sections) = parts.split_last().expect("a key has at least one part");
        let mut table = root;
        for (depth, section) in sections.iter().enumerate() {
            let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            table = entry.as_table_mut().ok_or_else(|| ConfigError::Key {
                origin: format!("--set {}", self.arg),
                key: parts[..=depth].join("."),
                message: "is a value, not a section".into(),
            })?;
        }
        table.insert(last.to_string(), self.value.clone());
        Ok(())
    }
}

impl Config {
    /// Read `path` (or start from the defaults when `None`), apply `overrides` in order, and
    /// validate.
    pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string().trim().to_string() })?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            o.apply(&mut table)?;
        }
        let file_origin = path.map_or_else(|| "default configuration".to_string(), |p| p.display().to_string());
        // The origin of a key is the last `--set` that touched it, else the file.
        let origin_of = |key: &str| {
            overrides
                .iter()
                .rev()
                .find(|o| {
                    key == o.key || key.starts_with(&format!("{}.", o.key)) || o.key.starts_with(&format!("{key}."))
                })
                .map_or_else(|| file_origin.clone(), |o| format!("--set {}", o.arg))
        };
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            // The path includes the offending key, unknown ones too.
            let key = e.path().to_string();
            let message = e.inner().to_string();
            ConfigError::Key { origin: origin_of(&key), key, message }
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Key {
            origin: origin_of(key),
            key: key.into(),
            message,
        })?;
        Ok(config)
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
        let (d, m, x, t, c) = (&self.data, &self.model, &self.micn, &self.train, &self.checkpoint);
        check(d.max_hist_len > 0, "data.max_hist_len", "must be at least 1")?;
        check(d.prefetch_batches > 0, "data.prefetch_batches", "must be at least 1")?;
        check(m.embedding_dim > 0, "model.embedding_dim", "must be at least 1")?;
        check(m.gru_hidden > 0, "model.gru_hidden", "must be at least 1")?;
        for (key, widths) in [
            ("model.head_hidden", &m.head_hidden),
            ("model.attention_hidden", &m.attention_hidden),
            ("model.dien_aux_hidden", &m.dien_aux_hidden),
        ] {
            check(widths.iter().all(|&w| w > 0), key, "every width must be at least 1")?;
        }
        check(m.dien_aux_alpha >= 0.0 && m.dien_aux_alpha.is_finite(), "model.dien_aux_alpha", "must be ≥ 0")?;
        check(m.wide_buckets > 0, "model.wide_buckets", "must be at least 1")?;
        check(x.lambda >= 0.0 && x.lambda.is_finite(), "micn.lambda", format!("must be ≥ 0, got {}", x.lambda))?;
        check((0.0..=1.0).contains(&x.phi), "micn.phi", format!("must lie in [0, 1], got {}", x.phi))?;
        check(x.k_max > 0, "micn.k_max", "must be at least 1")?;
        check(x.routing_iters > 0, "micn.routing_iters", "must be at least 1")?;
        if let AttentionPower::Soft(p) = x.pow_p {
            check(p >= 0.0 && p.is_finite(), "micn.pow_p", format!("must be ≥ 0 or \"inf\", got {p}"))?;
        }
        check(x.num_negatives > 0, "micn.num_negatives", "must be at least 1")?;
        check(t.epochs > 0, "train.epochs", "must be at least 1")?;
        check(t.max_steps != Some(0), "train.max_steps", "must be at least 1 (leave it out for no limit)")?;
        check(t.global_batch_size > 0, "train.global_batch_size", "must be at least 1")?;
        check(t.lr > 0.0 && t.lr.is_finite(), "train.lr", format!("must be > 0, got {}", t.lr))?;
        check((0.0..1.0).contains(&t.adam_beta1), "train.adam_beta1", "must lie in [0, 1)")?;
        check((0.0..1.0).contains(&t.adam_beta2), "train.adam_beta2", "must lie in [0, 1)")?;
        check(t.adam_eps > 0.0, "train.adam_eps", "must be > 0")?;
        check(t.log_every_steps > 0, "train.log_every_steps", "must be at least 1")?;
        check(c.every_minutes >= 0.0 && c.every_minutes.is_finite(), "checkpoint.every_minutes", "must be ≥ 0")?;
        check(c.keep_last > 0, "checkpoint.keep_last", "must be at least 1")?;
        Ok(())
    }

    /// The resolved configuration as TOML (saved in the run directory, hashed into checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every config value has a TOML form")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn override_errors_name_the_argument() {
        let sets = [Override::parse("micn.phi=-0.1").unwrap()];
        let (origin, key, _) = key_error(Config::load(None, &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set micn.phi=-0.1", "micn.phi"));
        let sets = [Override::parse("train.nope=1").unwrap()];
        let (origin, key, _) = key_error(Config::load(None, &sets).unwrap_err());
        assert_eq!((origin.as_str(), key.as_str()), ("--set train.nope=1", "train.nope"));
        assert!(matches!(Override::parse("micn.phi"), Err(ConfigError::BadOverride { .. })));
        assert!(matches!(Override::parse("micn..phi=1"), Err(ConfigError::BadOverride { .. })));
        let sets = [Override::parse("device.kind=1").unwrap()];
        let (_, key, message) = key_error(Config::load(Some(&write("device = \"cpu\"\n").1), &sets).unwrap_err());
        assert_eq!((key.as_str(), message.as_str()), ("device", "is a value, not a section"));
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
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
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
