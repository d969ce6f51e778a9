//! `micn bench dist`: what data parallelism costs and gains on this machine.
//! (a) bytes one rank sends per step for item vocabularies of 10k and 1M (sparse rows: the
//!     ratio should stay near 1); (b) samples/s of 1 rank vs 2 ranks under `mpirun` (1 libtorch
//!     thread each), at the papers' global batch of 128 and at 512, in alternating trials (the
//!     median is reported: this machine's speed drifts between runs); beside them the samples/s
//!     of 1 rank with half the batch, which bounds 2 ranks from above (2 ranks can at best each
//!     run a half batch as fast as one process alone does); (c) the share of a step spent in
//!     collective operations, and in the optimizer update (the same on every rank).
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
    /// Training samples of each timed run (steps = samples / global batch).
    pub samples: u64,
    /// Global batch sizes to time.
    pub batches: Vec<usize>,
    /// Alternating trials per setting; the median is reported.
    pub trials: usize,
    pub users: usize,
    pub items: usize,
}

impl Default for DistOptions {
    fn default() -> Self {
        Self {
            work_dir: PathBuf::from("runs/bench-dist"),
            samples: 51_200,
            batches: vec![128, 512],
            trials: 3,
            users: 20_000,
            items: 8_000,
        }
    }
}

/// One timed training run.
#[derive(Debug, Clone, Serialize)]
pub struct RankRun {
    pub ranks: usize,
    pub global_batch: usize,
    pub samples_per_sec: f64,
    pub comm_share: f64,
    pub update_share: f64,
    pub bytes_sent_per_step: f64,
}

/// The medians of one global batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub global_batch: usize,
    pub one_rank: RankRun,
    pub two_ranks: RankRun,
    /// 1 rank with half the global batch: what each of 2 ranks computes.
    pub half_batch: RankRun,
}

impl BatchRow {
    pub fn speed_up(&self) -> f64 {
        self.two_ranks.samples_per_sec / self.one_rank.samples_per_sec
    }

    /// 2 ranks against twice a lone process's speed on the half batch.
    pub fn efficiency(&self) -> f64 {
        self.two_ranks.samples_per_sec / (2.0 * self.half_batch.samples_per_sec)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DistReport {
    pub bytes_per_step_10k_items: f64,
    pub bytes_per_step_1m_items: f64,
    pub trials: usize,
    pub rows: Vec<BatchRow>,
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

/// The run with the median samples/s.
fn median(mut runs: Vec<RankRun>) -> RankRun {
    runs.sort_by(|a, b| a.samples_per_sec.total_cmp(&b.samples_per_sec));
    runs.swap_remove(runs.len() / 2)
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
    cfg.train.threads = 1;
    cfg.train.eval_every_steps = 0;
    let config_path = opts.work_dir.join("bench.toml");
    let io = |source| TrainError::Io { path: config_path.clone(), source };
    std::fs::write(&config_path, cfg.to_toml()).map_err(io)?;
    let launcher = std::env::current_exe().map_err(io)?.with_file_name("micn-launch");
    // One timed run through the launcher: its summary.
    let timed = |ranks: usize, batch: usize| -> Result<RankRun, TrainError> {
        let run_dir = opts.work_dir.join(format!("np{ranks}-b{batch}"));
        let steps = (opts.samples / batch as u64).max(1);
        let status = Command::new(&launcher)
            .args(["--np", &ranks.to_string(), "--threads", "1", "--config"])
            .arg(&config_path)
            .args(["--set", &format!("train.global_batch_size={batch}"), "--set", &format!("train.max_steps={steps}")])
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
        let field = |key: &str| s[key].as_f64().unwrap_or(f64::NAN);
        Ok(RankRun {
            ranks,
            global_batch: batch,
            samples_per_sec: field("samples_per_sec"),
            comm_share: field("comm_share"),
            update_share: field("update_share"),
            bytes_sent_per_step: field("bytes_sent_per_step"),
        })
    };
    let mut rows = Vec::new();
    for &batch in &opts.batches {
        let (mut one, mut two, mut half) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..opts.trials.max(1) {
            eprintln!("bench dist: global batch {batch}, trial {}/{}", trial + 1, opts.trials.max(1));
            one.push(timed(1, batch)?);
            two.push(timed(2, batch)?);
            half.push(timed(1, batch / 2)?);
        }
        rows.push(BatchRow {
            global_batch: batch,
            one_rank: median(one),
            two_ranks: median(two),
            half_batch: median(half),
        });
    }
    Ok(DistReport { bytes_per_step_10k_items: bytes_10k, bytes_per_step_1m_items: bytes_1m, trials: opts.trials, rows })
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
        writeln!(f, "\n(b, c) DIN + MICN, 1 libtorch thread per rank; medians of {} alternating trials", self.trials)?;
        writeln!(
            f,
            "\n| global batch | 1 rank samples/s | 2 ranks samples/s | speed-up | 1 rank, half batch | 2 ranks vs 2 × half batch \
             | communication share (1 / 2 ranks) | optimizer-update share (1 / 2 ranks) |"
        )?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.0} % | {:.1} % / {:.1} % | {:.1} % / {:.1} % |",
                r.global_batch,
                r.one_rank.samples_per_sec,
                r.two_ranks.samples_per_sec,
                r.speed_up(),
                r.half_batch.samples_per_sec,
                100.0 * r.efficiency(),
                100.0 * r.one_rank.comm_share,
                100.0 * r.two_ranks.comm_share,
                100.0 * r.one_rank.update_share,
                100.0 * r.two_ranks.update_share,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ranks: usize, samples_per_sec: f64) -> RankRun {
        RankRun {
            ranks,
            global_batch: 128,
            samples_per_sec,
            comm_share: 0.0,
            update_share: 0.0,
            bytes_sent_per_step: 0.0,
        }
    }

    #[test]
    fn medians_speed_up_and_efficiency() {
        assert_eq!(median(vec![run(1, 3.0), run(1, 1.0), run(1, 2.0)]).samples_per_sec, 2.0);
        let row =
            BatchRow { global_batch: 128, one_rank: run(1, 100.0), two_ranks: run(2, 170.0), half_batch: run(1, 90.0) };
        assert!((row.speed_up() - 1.7).abs() < 1e-12);
        assert!((row.efficiency() - 170.0 / 180.0).abs() < 1e-12);
    }
}
