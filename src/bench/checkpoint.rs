//! `micn bench checkpoint`: save and load time of a checkpoint of a Books-sized DIEN + MICN
//! model (embedding tables for ~604k users and ~368k items, twice for `e_aux`, with Adam's
//! moments), through the same code as training, with the model on the CPU or a GPU (saving
//! then includes the download, loading the upload).
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use super::{device_label, synchronize, BenchDevice};
use crate::checkpoint;
use crate::config::{Config, ModelKind};
use crate::model::embeddings::Vocab;
use crate::train::trainer::{build_network, Replica, TrainError};

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointBench {
    /// e.g. "cpu" or "cuda:0 (NVIDIA H200)".
    pub device: String,
    pub bytes: u64,
    pub save_seconds: f64,
    pub load_seconds: f64,
    pub save_mb_per_s: f64,
    pub load_mb_per_s: f64,
}

pub fn run(work_dir: &std::path::Path, on: BenchDevice) -> Result<CheckpointBench, TrainError> {
    let device = on.resolve()?;
    let cfg = Config {
        model: crate::config::ModelConfig { kind: ModelKind::Dien, ..Default::default() },
        ..Default::default()
    };
    let vocab = Vocab { users: 603_668, items: 367_983, cats: 1_601 };
    let item_cat: Vec<u32> = (0..vocab.items).map(|i| (i % vocab.cats) as u32).collect();
    let mut replica =
        Replica::new(build_network(&cfg, vocab, &item_cat, None, device)?, &cfg, &crate::dist::SingleProcess)?;
    // A directory of the bench's own, removed however the bench ends (one that a killed bench
    // left behind goes at the next): a run's `checkpoints/` in the work directory is left alone.
    let staging = crate::data::prepare::Staging::merging(&work_dir.join("bench-checkpoint"))?;
    let root: &Path = &staging.tmp;
    let config = cfg.to_toml();
    let state = checkpoint::State {
        format_version: checkpoint::FORMAT_VERSION,
        step: 1,
        epoch: 0,
        position: 128,
        seed: 1,
        world_size: 1,
        config_hash: checkpoint::config_hash(&config),
        config,
        code_version: env!("MICN_CODE_VERSION").into(),
        evaluations: Vec::new(),
        loss_window: None,
        seconds: 0.0,
        dataset: None,
        vocabularies: None,
        stopped: false,
    };
    synchronize(device);
    let started = Instant::now();
    let dir = checkpoint::save(
        root,
        &state,
        |path| {
            let variables: Vec<(String, Tensor)> = replica.vs.variables().into_iter().collect();
            checkpoint::write_tensors(path, &variables)
        },
        |path| {
            let named: Vec<(String, Tensor)> =
                replica.adam.named_state(&replica.trainable.names).map(|(k, v)| (k, v.shallow_clone())).collect();
            checkpoint::write_tensors(path, &named)
        },
    )?;
    let save_seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);

    let started = Instant::now();
    let state = checkpoint::verify(&dir)?;
    replica.load_checkpoint(&dir, state.step, device)?;
    synchronize(device);
    let load_seconds = started.elapsed().as_secs_f64();
    drop(staging);
    let mb = bytes as f64 / 1e6;
    Ok(CheckpointBench {
        device: device_label(device),
        bytes,
        save_seconds,
        load_seconds,
        save_mb_per_s: mb / save_seconds,
        load_mb_per_s: mb / load_seconds,
    })
}

impl std::fmt::Display for CheckpointBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "checkpoint of a Books-sized DIEN + MICN model with Adam's moments, on {}: {:.0} MB; save {:.2} s ({:.0} MB/s, fsynced, checksummed); load {:.2} s ({:.0} MB/s, checksums verified)",
            self.device,
            self.bytes as f64 / 1e6,
            self.save_seconds,
            self.save_mb_per_s,
            self.load_seconds,
            self.load_mb_per_s
        )
    }
}
