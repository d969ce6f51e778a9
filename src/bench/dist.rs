//! `micn bench dist`: what data parallelism costs and gains on this machine.
//! (a) bytes one rank sends per step for item vocabularies of 10k and 1M (sparse rows: the
//!     ratio should stay near 1);
//! (b) samples/s of 1 rank vs 2 ranks under `mpirun` (1 libtorch thread each), at the papers'
//!     global batch of 128 and at 512, in trials that run every setting back to back (the
//!     median is reported: this machine's speed drifts between runs). Two ways to scale out:
//!     the same global batch split over 2 ranks (what an exact comparison of results needs),
//!     bounded from above by twice the speed of 1 rank on half the batch, which is also timed;
//!     and the same batch per rank (2 ranks with twice the global batch), how data-parallel
//!     throughput is usually compared;
//! (c) the share of a step spent in the gradient exchange, and in the optimizer update (the
//!     same on every rank).
//! Throughput is each run's steady rate (after its warm-up steps; checkpoints excluded). With
//! `--device cuda` every rank trains on GPU `local rank mod GPUs` (both on one GPU when there is
//! one).
use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;
use tch::Device;

use super::throughput::{random_batch, ThroughputOptions};
use super::{device_label, BenchDevice};
use crate::config::{Config, ModelKind};
use crate::data::prepare::synthetic_dataset;
use crate::data::protocol::Protocol;
use crate::data::synth::{Preset, SynthConfig};
use crate::dist::SingleProcess;
use crate::io_error::PathIo;
use crate::model::embeddings::Vocab;
use crate::rng::Rng;
use crate::run_dir::{RunDir, RunDirError};
use crate::train::step::StepContext;
use crate::train::trainer::{build_network, Replica, TrainError};

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
    pub device: BenchDevice,
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
            device: BenchDevice::Cpu,
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

/// The runs of one trial for a global batch B, back to back, so that the trial's ratios see the
/// same machine speed.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// 1 rank, batch B.
    pub one: RankRun,
    /// 2 ranks, global batch B (B/2 each).
    pub two: RankRun,
    /// 1 rank, batch B/2: what each of the 2 ranks computes.
    pub half: RankRun,
    /// 2 ranks, global batch 2B (B each, as the one rank).
    pub two_same_per_rank: RankRun,
}

/// One global batch size: its trials.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub global_batch: usize,
    pub trials: Vec<Trial>,
}

/// Median, lowest and highest of some numbers.
fn spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    // An even count's median is the mean of its two middle values.
    let median = if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 };
    (median, xs[0], xs[n - 1])
}

impl BatchRow {
    fn of(&self, f: impl Fn(&Trial) -> f64) -> (f64, f64, f64) {
        spread(self.trials.iter().map(f).collect())
    }

    /// Samples/s of 1 rank, 2 ranks, 1 rank on the half batch and 2 ranks on twice the batch:
    /// medians over the trials.
    pub fn samples_per_sec(&self) -> [f64; 4] {
        let runs: [fn(&Trial) -> &RankRun; 4] = [|t| &t.one, |t| &t.two, |t| &t.half, |t| &t.two_same_per_rank];
        runs.map(|run| self.of(|t| run(t).samples_per_sec).0)
    }

    /// 2 ranks over 1 rank at the same global batch, per trial: (median, lowest, highest).
    pub fn speed_up(&self) -> (f64, f64, f64) {
        self.of(|t| t.two.samples_per_sec / t.one.samples_per_sec)
    }

    /// 2 ranks against twice a lone process's speed on the half batch, per trial.
    pub fn efficiency(&self) -> (f64, f64, f64) {
        self.of(|t| t.two.samples_per_sec / (2.0 * t.half.samples_per_sec))
    }

    /// 2 ranks over 1 rank at the same batch per rank, per trial.
    pub fn speed_up_same_per_rank(&self) -> (f64, f64, f64) {
        self.of(|t| t.two_same_per_rank.samples_per_sec / t.one.samples_per_sec)
    }

    /// Median shares of a step in the gradient exchange and in the optimizer update, 1 and 2 ranks.
    pub fn shares(&self) -> [f64; 4] {
        [
            self.of(|t| t.one.comm_share).0,
            self.of(|t| t.two.comm_share).0,
            self.of(|t| t.one.update_share).0,
            self.of(|t| t.two.update_share).0,
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DistReport {
    /// Where rank 0 of the timed runs trains, e.g. "cpu" or "cuda:0 (NVIDIA H200)".
    pub device: String,
    pub bytes_per_step_10k_items: f64,
    pub bytes_per_step_1m_items: f64,
    pub trials: usize,
    pub rows: Vec<BatchRow>,
}

/// Mean bytes a rank sends per step (DIN + MICN, random batches of 128), the same on any device.
/// Counted on the CPU: one process alone on a GPU keeps its gradients there and sends nothing.
fn bytes_per_step(items: i64) -> Result<f64, TrainError> {
    let device = Device::Cpu;
    let opts = ThroughputOptions { items, users: 100_000, ..Default::default() };
    let mut cfg = Config::default();
    cfg.model.kind = ModelKind::Din;
    let item_cat: Vec<u32> = (0..items).map(|i| (i % opts.cats) as u32).collect();
    let comm = SingleProcess;
    let built = build_network(&cfg, Vocab { users: opts.users, items, cats: opts.cats }, &item_cat, None, device)?;
    let mut replica = Replica::new(built, &cfg, &comm)?;
    let mut rng = Rng::new(3);
    let steps = 10;
    let mut total = 0u64;
    for step in 0..steps {
        let batch = random_batch(&opts, &mut rng, false);
        let ctx = StepContext::new(&cfg, &comm, device, step, step * opts.batch as u64);
        total += replica.step(&batch, &ctx)?.bytes_sent;
    }
    Ok(total as f64 / steps as f64)
}

pub fn run(opts: &DistOptions) -> Result<DistReport, TrainError> {
    tch::set_num_threads(1);
    let device = opts.device.resolve()?;
    let bytes_10k = bytes_per_step(10_000)?;
    let bytes_1m = bytes_per_step(1_000_000)?;

    let synth_cfg = SynthConfig { users: opts.users, items: opts.items, clusters: 200, ..Preset::Quickstart.config(1) };
    let data = synthetic_dataset(&synth_cfg, Protocol::Din, 20, &opts.work_dir)?;
    let mut cfg = Config { device: opts.device.config(), ..Default::default() };
    cfg.data.dir = data;
    cfg.model.kind = ModelKind::Din;
    cfg.train.threads = 1;
    cfg.train.eval_every_steps = 0;
    // `--samples` decides each run's length (its steps), not the default two epochs.
    cfg.train.epochs = crate::config::limits::EPOCHS;
    let config_path = opts.work_dir.join("bench.toml");
    let io = |source| TrainError::Io(PathIo { path: config_path.clone(), source });
    std::fs::write(&config_path, cfg.to_toml()).map_err(io)?;
    let launcher = std::env::current_exe().map_err(io)?.with_file_name("micn-launch");
    // One timed run through the launcher: its summary.
    let timed = |ranks: usize, batch: usize| -> Result<RankRun, TrainError> {
        let run_dir = opts.work_dir.join(format!("np{ranks}-b{batch}"));
        let steps = (opts.samples / batch as u64).max(1);
        // Less a margin: the kernel stamps files with a coarser clock than this one.
        let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        let mut launch = Command::new(&launcher);
        // Its job ends with the benchmark, killed or not.
        crate::experiment::sweep::stopped_with_this_process(&mut launch);
        let status = launch
            .args(["--np", &ranks.to_string(), "--threads", "1", "--", "train", "--overwrite", "--config"])
            .arg(&config_path)
            .args(["--set", &format!("train.global_batch_size={batch}"), "--set", &format!("train.max_steps={steps}")])
            .arg("--set")
            .arg(format!("run.dir={:?}", run_dir.display().to_string()))
            // The runs' own lines go to standard error: standard output holds the report alone.
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .map_err(io)?;
        let run_dir = RunDir::new(run_dir);
        let summary = if status.success() { run_dir.read_summary()? } else { None };
        let Some(s) = summary else {
            // A run that failed before it started logging has only the errors printed above (the
            // logs there may be an earlier trial's).
            let logged = std::fs::metadata(run_dir.path().join("logs/rank-0.log"))
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= started);
            let logs = match logged {
                true => "its errors are printed above and each rank's log is in logs/",
                false => "its errors are printed above",
            };
            let message = format!("the {ranks}-rank run failed ({status}); {logs}");
            return Err(RunDirError::Invalid { path: run_dir.path().to_path_buf(), message }.into());
        };
        let field = |key: &str| s[key].as_f64().unwrap_or(f64::NAN);
        Ok(RankRun {
            ranks,
            global_batch: batch,
            samples_per_sec: field("steady_samples_per_sec"),
            comm_share: field("comm_share"),
            update_share: field("update_share"),
            bytes_sent_per_step: field("bytes_sent_per_step"),
        })
    };
    let mut rows = Vec::new();
    for &batch in &opts.batches {
        let mut trials = Vec::new();
        for trial in 0..opts.trials.max(1) {
            eprintln!("bench dist: global batch {batch}, trial {}/{}", trial + 1, opts.trials.max(1));
            trials.push(Trial {
                one: timed(1, batch)?,
                two: timed(2, batch)?,
                half: timed(1, batch / 2)?,
                two_same_per_rank: timed(2, 2 * batch)?,
            });
        }
        rows.push(BatchRow { global_batch: batch, trials });
    }
    Ok(DistReport {
        device: device_label(device),
        bytes_per_step_10k_items: bytes_10k,
        bytes_per_step_1m_items: bytes_1m,
        trials: opts.trials,
        rows,
    })
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
        writeln!(
            f,
            "\n(b, c) DIN + MICN on {}, 1 libtorch thread per rank; {} trials, each running the four settings of a row back \
             to back: samples/s (steady rates) are medians, ratios the median (lowest–highest) of the trials' own \
             ratios",
            self.device,
            self.trials
        )?;
        writeln!(
            f,
            "\n| global batch B | 1 rank | 2 ranks | speed-up, same global batch | 1 rank, B/2 | 2 ranks vs 2 × (1 rank, B/2) \
             | 2 ranks, 2B | speed-up, same batch per rank | gradient-exchange share (1 / 2 ranks) \
             | optimizer-update share (1 / 2 ranks) |"
        )?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        let ratio = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2}× ({lo:.2}–{hi:.2})");
        // The update's share is not timed on a GPU (`summary.json`'s `update_share`).
        let share = |x: f64| if x.is_nan() { "n/a".to_string() } else { format!("{x:.1} %") };
        for r in &self.rows {
            let [one, two, half, two_2b] = r.samples_per_sec();
            let (e, e_lo, e_hi) = r.efficiency();
            let [c1, c2, u1, u2] = r.shares().map(|x| 100.0 * x);
            writeln!(
                f,
                "| {} | {one:.0} | {two:.0} | {} | {half:.0} | {:.0} % ({:.0}–{:.0}) | {two_2b:.0} | {} \
                 | {} / {} | {} / {} |",
                r.global_batch,
                ratio(r.speed_up()),
                100.0 * e,
                100.0 * e_lo,
                100.0 * e_hi,
                ratio(r.speed_up_same_per_rank()),
                share(c1),
                share(c2),
                share(u1),
                share(u2),
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
    fn ratios_are_taken_per_trial_then_the_median() {
        // The second trial ran on a machine twice as fast; each trial's ratios use its own runs.
        let trial = |one: f64, two: f64, half: f64, two_2b: f64| Trial {
            one: run(1, one),
            two: run(2, two),
            half: run(1, half),
            two_same_per_rank: run(2, two_2b),
        };
        let row = BatchRow {
            global_batch: 128,
            trials: vec![
                trial(100.0, 170.0, 90.0, 190.0),
                trial(200.0, 300.0, 180.0, 360.0),
                trial(110.0, 176.0, 100.0, 198.0),
            ],
        };
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0), "an even count: the middle two's mean");
        let (median, lowest, highest) = row.speed_up();
        assert!((median - 1.6).abs() < 1e-12 && (lowest - 1.5).abs() < 1e-12 && (highest - 1.7).abs() < 1e-12);
        assert_eq!(row.samples_per_sec(), [110.0, 176.0, 100.0, 198.0]);
        assert_eq!(row.speed_up_same_per_rank(), (1.8, 1.8, 1.9));
        let (e, e_lo, e_hi) = row.efficiency();
        assert!(
            (e - 0.88).abs() < 1e-12 && (e_lo - 300.0 / 360.0).abs() < 1e-12 && (e_hi - 170.0 / 180.0).abs() < 1e-12
        );
    }
}
