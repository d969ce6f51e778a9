//! `micn bench checkpoint`: save and load time of a checkpoint of a Books-sized DIEN + MICN
//! model (embedding tables for ~604k users and ~368k items, twice for `e_aux`, with Adam's
//! moments), through the same code as training, with the model on the CPU or a GPU (saving
//! then includes the download, loading the upload).
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use super::{device_label, synchronize, BenchDevice};
use crate::checkpoint;
use crate::config::{Config, ModelKind};
use crate::model::embeddings::Vocab;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::Trainable;
use crate::train::trainer::{build_network, Built, TrainError};

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
    let Built { mut vs, net } = build_network(&cfg, vocab, &item_cat, device)?;
    let t = Trainable::new(&vs, &net)?;
    let mut adam = Adam::new(AdamConfig::from_train(&cfg.train), &t.tensors);
    let root: PathBuf = work_dir.join("checkpoints");
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
        code_version: env!("CARGO_PKG_VERSION").into(),
        evaluations: Vec::new(),
    };
    synchronize(device);
    let started = Instant::now();
    let dir = checkpoint::save(
        &root,
        &state,
        |path| {
            let variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            checkpoint::write_tensors(path, &variables).map_err(|e| e.to_string())
        },
        |path| {
            let named: Vec<(String, Tensor)> =
                adam.named_state(&t.names).map(|(k, v)| (k, v.shallow_clone())).collect();
            checkpoint::write_tensors(path, &named).map_err(|e| e.to_string())
        },
    )?;
    let save_seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);

    let started = Instant::now();
    let state = checkpoint::verify(&dir)?;
    let model = dir.join("model.safetensors");
    checkpoint::load_var_store(&mut vs, &model)?;
    let opt = dir.join("optimizer.safetensors");
    let saved = checkpoint::load_tensors_like(&opt, adam.named_state(&t.names))?;
    adam.load_state(&t.names, state.step, |k| saved.get(k).map(|t| t.to_device(device)))
        .map_err(|message| TrainError::RunFile { path: opt.clone(), message })?;
    synchronize(device);
    let load_seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&root);
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
