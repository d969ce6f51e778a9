//! `micn bench dist`: what data parallelism costs and gains on this machine.
//! (a) bytes one rank sends per step for item vocabularies of 10k and 1M (sparse rows: the
//!     ratio should stay near 1); (b) samples/s of 1 rank vs 2 ranks under `mpirun` (1 libtorch
//!     thread each); (c) the share of a step spent in collective operations.
use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;
use tch::Device;

use super::throughput::{random_batch, ThroughputOptions};
use crate::config::{Config, ModelKind};
use crate::data::prepare::synthetic_dataset;
use crate::data::protocol::Protocol;
use crate::data::synth::{Preset, SynthConfig};
use crate::dist::SingleProcess;
use crate::model::embeddings::Vocab;
use crate::rng::Rng;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::{train_step, StepContext, Trainable};
use crate::train::trainer::{build_network, Built, TrainError};

#[derive(Debug, Clone)]
pub struct DistOptions {
    pub work_dir: PathBuf,
    /// Training steps of each timed run.
    pub steps: u64,
    pub users: usize,
    pub items: usize,
}

impl Default for DistOptions {
    fn default() -> Self {
        Self { work_dir: PathBuf::from("runs/bench-dist"), steps: 400, users: 20_000, items: 8_000 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RankRun {
    pub ranks: usize,
    pub samples_per_sec: f64,
    pub comm_share: f64,
    pub bytes_sent_per_step: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistReport {
    pub bytes_per_step_10k_items: f64,
    pub bytes_per_step_1m_items: f64,
    pub runs: Vec<RankRun>,
}

/// Mean bytes a rank sends per step (DIN + MICN, random batches of 128).
fn bytes_per_step(items: i64) -> Result<f64, TrainError> {
    let opts = ThroughputOptions { items, users: 100_000, ..Default::default() };
    let mut cfg = Config::default();
    cfg.model.kind = ModelKind::Din;
    let item_cat: Vec<u32> = (0..items).map(|i| (i % opts.cats) as u32).collect();
    let Built { vs, net } =
        build_network(&cfg, Vocab { users: opts.users, items, cats: opts.cats }, &item_cat, Device::Cpu)?;
    let mut t = Trainable::new(&vs)?;
    let mut adam = Adam::new(AdamConfig { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8 }, &t.tensors);
    let mut rng = Rng::new(3);
    let comm = SingleProcess;
    let steps = 10;
    let mut total = 0u64;
    for step in 0..steps {
        let batch = random_batch(&opts, &mut rng, false);
        let ctx = StepContext {
            comm: &comm,
            device: Device::Cpu,
            global_batch: opts.batch,
            lambda: 1.0,
            phi: 0.3,
            embedding_optimizer: cfg.train.embedding_optimizer,
            seed: 1,
            step,
            first_sample: step * opts.batch as u64,
        };
        total += train_step(&net, &mut t, &mut adam, &batch, &ctx)?.bytes_sent;
    }
    Ok(total as f64 / steps as f64)
}

pub fn run(opts: &DistOptions) -> Result<DistReport, TrainError> {
    tch::set_num_threads(1);
    let bytes_10k = bytes_per_step(10_000)?;
    let bytes_1m = bytes_per_step(1_000_000)?;

    let synth_cfg = SynthConfig { users: opts.users, items: opts.items, clusters: 200, ..Preset::Quickstart.config(1) };
    let data = synthetic_dataset(&synth_cfg, Protocol::Din, 20, &opts.work_dir)?;
    let mut cfg = Config { device: crate::config::Device::Cpu, ..Default::default() };
    cfg.data.dir = data;
    cfg.model.kind = ModelKind::Din;
    cfg.train.max_steps = Some(opts.steps);
    cfg.train.threads = 1;
    cfg.train.log_every_steps = 100;
    let config_path = opts.work_dir.join("bench.toml");
    let io = |source| TrainError::Io { path: config_path.clone(), source };
    std::fs::write(&config_path, cfg.to_toml()).map_err(io)?;
    let launcher = std::env::current_exe().map_err(io)?.with_file_name("micn-launch");
    let mut runs = Vec::new();
    for ranks in [1usize, 2] {
        let run_dir = opts.work_dir.join(format!("np{ranks}"));
        let status = Command::new(&launcher)
            .args(["--np", &ranks.to_string(), "--threads", "1", "--config"])
            .arg(&config_path)
            .arg("--set")
            .arg(format!("run.dir={:?}", run_dir.display().to_string()))
            .status()
            .map_err(io)?;
        if !status.success() {
            return Err(TrainError::RunFile {
                path: run_dir,
                message: format!("the {ranks}-rank run failed ({status})"),
            });
        }
        let summary_path = run_dir.join("summary.json");
        let text = std::fs::read_to_string(&summary_path)
            .map_err(|source| TrainError::Io { path: summary_path.clone(), source })?;
        let s: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::RunFile { path: summary_path.clone(), message: e.to_string() })?;
        runs.push(RankRun {
            ranks,
            samples_per_sec: s["samples_per_sec"].as_f64().unwrap_or(f64::NAN),
            comm_share: s["comm_share"].as_f64().unwrap_or(f64::NAN),
            bytes_sent_per_step: s["bytes_sent_per_step"].as_f64().unwrap_or(f64::NAN),
        });
    }
    Ok(DistReport { bytes_per_step_10k_items: bytes_10k, bytes_per_step_1m_items: bytes_1m, runs })
}

impl std::fmt::Display for DistReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "(a) bytes sent per rank per step (DIN + MICN, batch 128): 10k items {:.0}, 1M items {:.0}, ratio {:.3}",
            self.bytes_per_step_10k_items,
            self.bytes_per_step_1m_items,
            self.bytes_per_step_1m_items / self.bytes_per_step_10k_items
        )?;
        writeln!(f, "\n| ranks | samples/s | speed-up | share of step in communication | bytes sent/step |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|")?;
        let base = self.runs.first().map_or(f64::NAN, |r| r.samples_per_sec);
        for r in &self.runs {
            writeln!(
                f,
                "| {} | {:.0} | {:.2}× | {:.1} % | {:.0} |",
                r.ranks,
                r.samples_per_sec,
                r.samples_per_sec / base,
                100.0 * r.comm_share,
                r.bytes_sent_per_step
            )?;
        }
        Ok(())
    }
}
