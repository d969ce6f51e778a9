//! Checkpoints (SPEC §4): one directory per step under `run.dir/checkpoints/`:
//!
//! ```text
//! step-00000123/model.safetensors      every parameter and buffer, by its var-store name
//! step-00000123/optimizer.safetensors  Adam's moments (`m.<name>`, `v.<name>`)
//! step-00000123/state.json             step, epoch, position in the epoch (global samples),
//!                                      seed, world size, resolved config and its hash, version
//! step-00000123/manifest.json          size and xxh3 of each file above
//! step-00000123/COMPLETE               written last
//! ```
//!
//! Rank 0 writes into `.step-….partial`, fsyncs every file, renames the directory into place and
//! then writes the completion marker; a directory without the marker or with a file whose
//! checksum differs is never loaded. Only rank 0 writes; every rank reads.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;
const MARKER: &str = "COMPLETE";
const FILES: [&str; 3] = ["model.safetensors", "optimizer.safetensors", "state.json"];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

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
    /// Every evaluation so far: (step, AUC, GAUC, log-loss).
    pub evaluations: Vec<(u64, f64, f64, f64)>,
}

impl State {
    /// AUC of the latest evaluation, if any.
    pub fn last_auc(&self) -> Option<f64> {
        self.evaluations.last().map(|e| e.1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    files: Vec<(String, u64, String)>,
}

fn digest(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Hash of a resolved configuration.
pub fn config_hash(config_toml: &str) -> String {
    digest(config_toml.as_bytes())
}

/// The directory name of a step's checkpoint.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Write a checkpoint under `root`. `write_model` and `write_optimizer` write the two tensor
/// files at the paths they are given.
pub fn save(
    root: &Path,
    state: &State,
    write_model: impl FnOnce(&Path) -> Result<(), String>,
    write_optimizer: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let name = dir_name(state.step);
    let tmp = root.join(format!(".{name}.partial"));
    let done = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let failed = |path: PathBuf| move |message: String| CheckpointError::Invalid { path, message };
    write_model(&tmp.join(FILES[0])).map_err(failed(tmp.join(FILES[0])))?;
    write_optimizer(&tmp.join(FILES[1])).map_err(failed(tmp.join(FILES[1])))?;
    let state_path = tmp.join(FILES[2]);
    std::fs::write(&state_path, serde_json::to_string_pretty(state).expect("plain data")).map_err(io(&state_path))?;
    let mut manifest = Manifest { files: Vec::new() };
    for f in FILES {
        let path = tmp.join(f);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        std::fs::File::open(&path).and_then(|file| file.sync_all()).map_err(io(&path))?;
        manifest.files.push((f.to_string(), bytes.len() as u64, digest(&bytes)));
    }
    let manifest_path = tmp.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).expect("plain data"))
        .and_then(|_| std::fs::File::open(&manifest_path)?.sync_all())
        .map_err(io(&manifest_path))?;
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(io(&done))?;
    }
    std::fs::rename(&tmp, &done).map_err(io(&done))?;
    sync_dir(root)?;
    let marker = done.join(MARKER);
    std::fs::write(&marker, b"").and_then(|_| std::fs::File::open(&marker)?.sync_all()).map_err(io(&marker))?;
    sync_dir(&done)?;
    Ok(done)
}

/// Check the marker and every checksum; returns the state.
pub fn verify(dir: &Path) -> Result<State, CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid { path: dir.to_path_buf(), message };
    if !dir.join(MARKER).exists() {
        return Err(invalid("no completion marker: the checkpoint was not finished".into()));
    }
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    for f in FILES {
        let entry = manifest
            .files
            .iter()
            .find(|(n, ..)| n == f)
            .ok_or_else(|| invalid(format!("{f} is not in the manifest")))?;
        let path = dir.join(f);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if bytes.len() as u64 != entry.1 || digest(&bytes) != entry.2 {
            return Err(invalid(format!("{f}: size or checksum differs from the manifest (damaged)")));
        }
    }
    let state_path = dir.join(FILES[2]);
    let state: State = serde_json::from_str(&std::fs::read_to_string(&state_path).map_err(io(&state_path))?)
        .map_err(|e| invalid(format!("state.json: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(invalid(format!("format version {} (this micn reads {FORMAT_VERSION})", state.format_version)));
    }
    Ok(state)
}

/// Complete checkpoint directories under `root`, newest first.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_checkpoint_name(p)).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

fn is_checkpoint_name(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"))
}

/// The newest checkpoint that verifies; the refused ones with their reasons.
pub fn latest(root: &Path) -> (Option<(PathBuf, State)>, Vec<CheckpointError>) {
    let mut refused = Vec::new();
    for dir in list(root) {
        match verify(&dir) {
            Ok(state) => return (Some((dir, state)), refused),
            Err(e) => refused.push(e),
        }
    }
    (None, refused)
}

/// Remove all but the newest `keep` checkpoints and the one with the best evaluation AUC.
pub fn retain(root: &Path, keep: usize) -> Result<(), CheckpointError> {
    let dirs = list(root);
    let auc = |dir: &Path| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(FILES[2])).ok()?;
        serde_json::from_str::<State>(&text).ok()?.last_auc()
    };
    let best =
        dirs.iter().filter_map(|d| auc(d).map(|a| (a, d.clone()))).max_by(|a, b| a.0.total_cmp(&b.0)).map(|(_, d)| d);
    for dir in dirs.into_iter().skip(keep) {
        if Some(&dir) != best.as_ref() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    Ok(())
}

/// Configuration keys that change the model's shape (or the data it was built for): a resumed
/// run must keep them. Returns the differing keys.
pub fn incompatible_keys(saved: &crate::config::Config, now: &crate::config::Config) -> Vec<String> {
    let mut keys = Vec::new();
    let pairs: [(&str, bool); 8] = [
        ("model", saved.model != now.model),
        ("micn.enabled", saved.micn.enabled != now.micn.enabled),
        ("micn.k_max", saved.micn.k_max != now.micn.k_max),
        ("micn.routing_iters", saved.micn.routing_iters != now.micn.routing_iters),
        ("data.dir", saved.data.dir != now.data.dir),
        ("data.max_hist_len", saved.data.max_hist_len != now.data.max_hist_len),
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
