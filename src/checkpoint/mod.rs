//! Checkpoints (SPEC §4): one directory per step under `run.dir/checkpoints/`:
//!
//! ```text
//! step-00000123/model.safetensors      every parameter and buffer, by its var-store name
//! step-00000123/optimizer.safetensors  Adam's moments (`m.<name>`, `v.<name>`)
//! step-00000123/state.json             step, epoch, position in the epoch (global samples),
//!                                      seed, world size, resolved config and its hash, version,
//!                                      every validation score so far (one at its own step)
//! step-00000123/manifest.json          size and xxh3 of each file above
//! step-00000123/COMPLETE               written last
//! ```
//!
//! Rank 0 writes into `.step-….partial`, fsyncs every file, renames the directory into place and
//! then writes the completion marker; a directory without the marker or with a file whose
//! checksum differs is never loaded. Retention renames a checkpoint to `.step-….removed` before
//! deleting it; the next save removes what a kill left of either. Only rank 0 writes; every rank
//! reads.
//!
//! Reading back checks more than bytes: [`verify`] also requires a `state.json` that training
//! could have written (its config hash, a valid config, a reachable step), and
//! [`load_var_store`] / [`load_tensors_like`] check every tensor's name, dtype and shape against
//! what it will fill before handing it to libtorch.
//!
//! - `format.rs`: the manifest and the safetensors header, no libtorch.
//! - `save.rs`: [`save`] (atomic; removes what a failed save wrote) and [`retain`].
//! - `load.rs`: [`verify`], [`latest`], the checked loaders and [`write_tensors`] (the
//!   safetensors writer beside its reader).
//! - `policy.rs`: which checkpoints retention keeps, a pure function.
use std::path::{Path, PathBuf};

use crate::io_error::PathIo;
use serde::{Deserialize, Deserializer, Serialize};

mod format;
mod load;
pub mod policy;
mod save;

pub(crate) use self::format::file_digest;
pub use self::format::{SafetensorsLayout, TensorHeader};
pub use self::load::{
    check_state, finished, latest, list, load_tensors_like, load_var_store, read_tensors, read_tensors_where, step_of,
    verify, verify_reading, write_tensors,
};
pub use self::save::{remove_leftovers, retain, save};

pub const FORMAT_VERSION: u32 = 1;
const MARKER: &str = "COMPLETE";
const FILES: [&str; 3] = ["model.safetensors", "optimizer.safetensors", "state.json"];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error("{path}: no such checkpoint directory")]
    NotFound { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A tensor file whose tensor does not fit what it is loaded into.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },
    /// Gone while it was read: a running run's retention removed it.
    #[error(
        "{path}: removed while it was read (a run's retention keeps only its newest checkpoints and the best): give one \
         it keeps"
    )]
    Removed { path: PathBuf },
    /// Not finished yet, while a run trains into its directory.
    #[error(
        "{path}: not finished: its run is training now ({holder}) and is writing it, or removes it as one an earlier \
         process left unfinished; try again in a moment"
    )]
    BeingWritten { path: PathBuf, holder: String },
    /// The configuration saved in `state.json` does not validate (the error names the file).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl CheckpointError {
    /// Whether using the same checkpoint again would fail the same way (it is missing, damaged or
    /// does not fit), as opposed to a passing I/O failure.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::Io(e) => e.is_lasting(),
            Self::BeingWritten { .. } => false,
            _ => true,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io(PathIo { path: path.to_path_buf(), source })
}

/// One evaluation: (step, AUC, GAUC, log-loss).
pub type Evaluation = (u64, f64, f64, f64);

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// Steps completed.
    pub step: u64,
    /// Epoch of the next step.
    pub epoch: u64,
    /// Global samples of that epoch already trained on.
    pub position: u64,
    pub seed: u64,
    pub world_size: usize,
    pub config: String,
    pub config_hash: String,
    pub code_version: String,
    /// Every evaluation so far. JSON has no NaN, so an undefined metric (a GAUC with no user of
    /// both classes) is written as `null` and read back as NaN.
    #[serde(deserialize_with = "evaluations_with_nan")]
    pub evaluations: Vec<Evaluation>,
    /// The training losses since the last metrics line, so that the resumed run's next line
    /// averages the same steps as an uninterrupted run's (absent in checkpoints written before
    /// it was kept: that line then averages the steps since the resume).
    #[serde(default)]
    pub loss_window: Option<LossWindow>,
    /// Wall-clock seconds the run had taken when this checkpoint was written, over every process
    /// that trained it (0 in checkpoints written before it was kept).
    #[serde(default)]
    pub seconds: f64,
    /// The fingerprint of the dataset trained on (`DatasetMeta::fingerprint`): a resume checks
    /// it, wherever `data.dir` now names that dataset (absent in checkpoints written before it
    /// was kept: `data.dir` is then compared as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The digest of the vocabularies trained with ([`crate::data::vocab::Vocabularies::digest`]):
    /// `eval` and `predict` of the checkpoint refuse a dataset whose differ (absent in
    /// checkpoints written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabularies: Option<String>,
    /// Written by a stop signal right after its step, before the metrics line, evaluation and
    /// checkpoint due at that step: a resume does them first (and drops what an earlier resume
    /// from here wrote at this step, to write it again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// Sums of the training losses (main task, MICN, the model's own auxiliary loss) over `steps`
/// steps, exact through JSON (serde_json's `float_roundtrip`), and the gradient norms of the
/// last of them (`e_aux`'s main and MICN norms, the global norm), which the window's metrics
/// line reports (absent in checkpoints written before they were kept, and when `steps` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossWindow {
    pub sums: [f64; 3],
    pub steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "norms_with_nan")]
    pub grad_norms: Option<[f64; 3]>,
}

/// Gradient norms as JSON holds them: null for a non-finite one (serde_json's NaN and infinity),
/// read back as NaN.
fn norms_with_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 3]>, D::Error> {
    let raw: Option<[Option<f64>; 3]> = Deserialize::deserialize(d)?;
    Ok(raw.map(|norms| norms.map(|x| x.unwrap_or(f64::NAN))))
}

fn evaluations_with_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Evaluation>, D::Error> {
    /// An evaluation as JSON holds it: null for NaN.
    type Raw = (u64, Option<f64>, Option<f64>, Option<f64>);
    let raw: Vec<Raw> = Deserialize::deserialize(d)?;
    let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
    Ok(raw.into_iter().map(|(step, auc, gauc, logloss)| (step, nan(auc), nan(gauc), nan(logloss))).collect())
}

impl State {
    /// The evaluation made at this checkpoint's own step, i.e. of the model it holds, if any.
    /// Earlier evaluations in [`evaluations`](Self::evaluations) scored earlier models.
    pub fn own_evaluation(&self) -> Option<Evaluation> {
        self.evaluations.iter().rev().find(|e| e.0 == self.step).copied()
    }

    /// The AUC of [`own_evaluation`](Self::own_evaluation), when finite: what retention ranks
    /// checkpoints by.
    pub fn own_auc(&self) -> Option<f64> {
        self.own_evaluation().map(|e| e.1).filter(|a| a.is_finite())
    }
}

/// Hash of a resolved configuration.
pub fn config_hash(config_toml: &str) -> String {
    format::digest(config_toml.as_bytes())
}

/// The directory name of a step's checkpoint.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Configuration keys that change the model's shape (or the data it was built for): a resumed
/// run must keep them. Returns the differing keys. `data.dir` is compared as written; the caller
/// that knows the datasets' fingerprints compares those instead ([`State::dataset`]). A key that
/// neither configuration reads (`model.mind_interests` of a DIN) changes nothing, and one that
/// only one of them reads is named only when its value changed too.
pub fn incompatible_keys(saved: &crate::config::Config, now: &crate::config::Config) -> Vec<String> {
    let trained = differing_keys(&saved.as_trained(), &now.as_trained());
    let given = differing_keys(saved, now);
    let changed: Vec<String> = trained.iter().filter(|key| given.contains(key)).cloned().collect();
    if changed.is_empty() {
        trained
    } else {
        changed
    }
}

fn differing_keys(saved: &crate::config::Config, now: &crate::config::Config) -> Vec<String> {
    let mut keys = differing_model_keys(&saved.model, &now.model);
    let pairs = [
        ("micn.enabled", saved.micn.enabled != now.micn.enabled),
        ("micn.k_max", saved.micn.k_max != now.micn.k_max),
        ("micn.routing_iters", saved.micn.routing_iters != now.micn.routing_iters),
        ("data.dir", saved.data.dir != now.data.dir),
        ("data.max_hist_len", saved.data.max_hist_len != now.data.max_hist_len),
        ("data.valid_share", saved.data.valid_share != now.data.valid_share),
        ("train.global_batch_size", saved.train.global_batch_size != now.train.global_batch_size),
        ("train.seed", saved.train.seed != now.train.seed),
    ];
    for (key, differs) in pairs {
        if differs {
            keys.push(key.to_string());
        }
    }
    keys
}

/// The `model.*` keys whose values differ (by their TOML form); `model` itself when the tables
/// differ in a way no key shows.
fn differing_model_keys(saved: &crate::config::ModelConfig, now: &crate::config::ModelConfig) -> Vec<String> {
    if saved == now {
        return Vec::new();
    }
    let as_table = |model| {
        let section = toml::Value::try_from(model).unwrap_or_else(|_| toml::Value::Table(Default::default()));
        toml::Table::from_iter([("model".to_string(), section)])
    };
    let keys = crate::config::diff(&as_table(saved), &as_table(now));
    if keys.is_empty() {
        vec!["model".into()]
    } else {
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_setting_that_differs_is_named_by_its_key() {
        let saved = crate::config::Config::default();
        let mut now = saved.clone();
        now.model.embedding_dim += 2;
        now.micn.k_max += 1;
        assert_eq!(incompatible_keys(&saved, &now), ["model.embedding_dim", "micn.k_max"]);
        assert!(incompatible_keys(&saved, &saved).is_empty());
        // Keys that neither configuration reads (MIND's of a DIN, MICN's with MICN off).
        let mut now = saved.clone();
        now.model.mind_interests += 1;
        assert!(incompatible_keys(&saved, &now).is_empty());
        let (mut off, mut other) = (saved.clone(), saved.clone());
        (off.micn.enabled, other.micn.enabled, other.micn.k_max) = (false, false, 2);
        assert!(incompatible_keys(&off, &other).is_empty());
        assert_eq!(incompatible_keys(&saved, &other), ["micn.enabled"]);
        // One side reads a key, the other does not: the key is named only if it changed.
        let mut mind = saved.clone();
        (mind.model.kind, mind.model.mind_interests) = (crate::config::ModelKind::Mind, 2);
        let mut din = mind.clone();
        din.model.kind = crate::config::ModelKind::Din;
        assert_eq!(incompatible_keys(&mind, &din), ["model.kind"]);
        let (mut on, mut off) = (saved.clone(), saved.clone());
        (on.micn.k_max, off.micn.enabled, off.micn.k_max) = (2, false, 2);
        assert_eq!(incompatible_keys(&on, &off), ["micn.enabled"]);
    }

    fn state(step: u64, evaluations: Vec<Evaluation>) -> State {
        State {
            format_version: FORMAT_VERSION,
            step,
            epoch: 0,
            position: 0,
            seed: 1,
            world_size: 1,
            config: String::new(),
            config_hash: String::new(),
            code_version: "test".into(),
            evaluations,
            loss_window: None,
            seconds: 0.0,
            dataset: None,
            vocabularies: None,
            stopped: false,
        }
    }

    #[test]
    fn the_own_evaluation_is_the_one_at_the_checkpoints_step() {
        let s = state(9, vec![(3, 0.6, 0.5, 0.4), (6, 0.9, 0.5, 0.4)]);
        assert_eq!((s.own_evaluation(), s.own_auc()), (None, None));
        let s = state(9, vec![(6, 0.9, 0.5, 0.4), (9, 0.7, 0.5, 0.4)]);
        assert_eq!(s.own_evaluation(), Some((9, 0.7, 0.5, 0.4)));
        assert_eq!(s.own_auc(), Some(0.7));
    }

    #[test]
    fn an_undefined_gauc_survives_state_json() {
        // serde_json writes NaN as null; reading null as f64 used to fail, making the whole
        // checkpoint unreadable after an evaluation without a GAUC.
        let s = state(3, vec![(3, 0.7, f64::NAN, 0.5)]);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("[3,0.7,null,0.5]"), "{text}");
        let back: State = serde_json::from_str(&text).unwrap();
        let (step, auc, gauc, logloss) = back.evaluations[0];
        assert_eq!((step, auc, logloss), (3, 0.7, 0.5));
        assert!(gauc.is_nan());
    }

    #[test]
    fn non_finite_gradient_norms_survive_state_json() {
        // The last step's norms (an overflowed one is infinite) and a window without them.
        let mut s = state(3, Vec::new());
        s.loss_window =
            Some(LossWindow { sums: [1.5, 2.0, 0.0], steps: 2, grad_norms: Some([0.25, f64::INFINITY, 0.0]) });
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"grad_norms\":[0.25,null,0.0]"), "{text}");
        let back: State = serde_json::from_str(&text).unwrap();
        let [main, aux, global] = back.loss_window.unwrap().grad_norms.unwrap();
        assert_eq!((main, global), (0.25, 0.0));
        assert!(aux.is_nan());
        s.loss_window = Some(LossWindow { sums: [1.5, 2.0, 0.0], steps: 2, grad_norms: None });
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("grad_norms"), "{text}");
        assert_eq!(serde_json::from_str::<State>(&text).unwrap().loss_window, s.loss_window);
    }
}
