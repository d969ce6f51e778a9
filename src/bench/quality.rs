//! `micn bench quality`: does each model learn, and does MICN help? On freshly generated
//! synthetic data (by default Books-style: hidden interest clusters, nearly uninformative
//! categories, popularity-weighted negatives, the `dien` protocol; or the quickstart's, with
//! informative categories and the `din` protocol), every model is trained for several seeds
//! without MICN, with it, and with MICN's wider embeddings but its loss off (`micn.lambda = 0`,
//! the capacity-matched ablation: what the wider item vectors alone give); the table gives mean ±
//! std of test AUC and GAUC beside the generator's oracle AUC (the ceiling). `device` says where
//! the runs train.
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::BenchDevice;
use crate::config::{Config, ModelKind};
use crate::data::prepare::synthetic_dataset;
use crate::data::protocol::Protocol;
use crate::data::synth::{Preset, SynthConfig};
use crate::dist::SingleProcess;
use crate::metrics::mean_std;
use crate::train::TrainError;
use crate::train::{train_from, Resume};

#[derive(Debug, Clone)]
pub struct QualityOptions {
    pub work_dir: PathBuf,
    /// The data: `books-like` (reduced to the sizes below) or `quickstart`.
    pub preset: Preset,
    /// Sizes; `None` takes the preset's (Books-style: 60k users, 20k items, 400 clusters).
    pub users: Option<usize>,
    pub items: Option<usize>,
    pub clusters: Option<usize>,
    pub seeds: u64,
    pub epochs: usize,
    pub lr: f64,
    pub threads: usize,
    pub device: BenchDevice,
}

impl Default for QualityOptions {
    fn default() -> Self {
        Self {
            work_dir: PathBuf::from("runs/bench-quality"),
            preset: Preset::BooksLike,
            users: None,
            items: None,
            clusters: None,
            seeds: 3,
            epochs: 2,
            lr: 1e-3,
            threads: 1,
            device: BenchDevice::Cpu,
        }
    }
}

/// How a model runs beside MICN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MicnVariant {
    /// Without MICN.
    Off,
    /// With MICN (its wider embeddings and its loss).
    On,
    /// With MICN's wider embeddings, its loss weighted by λ = 0.
    WidthOnly,
}

impl MicnVariant {
    pub const ALL: [MicnVariant; 3] = [MicnVariant::Off, MicnVariant::On, MicnVariant::WidthOnly];

    /// How the table shows it.
    pub fn label(self) -> &'static str {
        match self {
            MicnVariant::Off => "no",
            MicnVariant::On => "yes",
            MicnVariant::WidthOnly => "width only (λ = 0)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            MicnVariant::Off => "micn_off",
            MicnVariant::On => "micn_on",
            MicnVariant::WidthOnly => "micn_width_only",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityRow {
    pub model: String,
    pub micn: MicnVariant,
    pub aucs: Vec<f64>,
    pub gaucs: Vec<f64>,
    pub seconds: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// e.g. "cpu" or "cuda:0 (NVIDIA H200)".
    pub device: String,
    pub synth: SynthConfig,
    pub protocol: Protocol,
    pub train_samples: u64,
    pub test_samples: u64,
    pub oracle_auc: Option<f64>,
    pub epochs: usize,
    pub lr: f64,
    pub rows: Vec<QualityRow>,
}

/// The synthetic set (made once per preset and sizes under the work directory) and its protocol.
fn prepare(opts: &QualityOptions) -> Result<(SynthConfig, Protocol, PathBuf), TrainError> {
    let (base, protocol) = match opts.preset {
        // Books-style, reduced to what trains in minutes on a few cores.
        Preset::BooksLike => (
            SynthConfig { users: 60_000, items: 20_000, clusters: 400, categories: 100, ..opts.preset.config(1) },
            Protocol::Dien,
        ),
        other => (other.config(1), Protocol::Din),
    };
    let synth_cfg = SynthConfig {
        users: opts.users.unwrap_or(base.users),
        items: opts.items.unwrap_or(base.items),
        clusters: opts.clusters.unwrap_or(base.clusters),
        ..base
    };
    let name = format!("{:?}-{}u-{}i-{}c", opts.preset, synth_cfg.users, synth_cfg.items, synth_cfg.clusters);
    let data = synthetic_dataset(&synth_cfg, protocol, 20, &opts.work_dir.join(name.to_lowercase()))?;
    Ok((synth_cfg, protocol, data))
}

/// What the runs' configurations come from, for their errors.
const OPTIONS: &str = "micn bench quality's options (--epochs, --lr, --seeds)";

/// Train every model, in every [`MicnVariant`], for every seed.
pub fn run(opts: &QualityOptions) -> Result<QualityReport, TrainError> {
    // Refused before any data is made when the device is missing.
    let device = super::device_label(opts.device.resolve()?);
    // And so are options `micn train` would refuse in the runs' configurations.
    for kind in ModelKind::ALL {
        for micn in MicnVariant::ALL {
            config(opts, &opts.work_dir, kind, micn, opts.seeds, &opts.work_dir)
                .checked(OPTIONS)
                .map_err(crate::run_dir::RunDirError::from)?;
        }
    }
    let (synth_cfg, protocol, data) = prepare(opts)?;
    let dataset = crate::data::Dataset::open(&data)?;
    let mut rows = Vec::new();
    for kind in ModelKind::ALL {
        let name = kind.name();
        for micn in MicnVariant::ALL {
            let mut row = QualityRow { model: name.into(), micn, aucs: vec![], gaucs: vec![], seconds: vec![] };
            for seed in 1..=opts.seeds {
                let run = opts.work_dir.join(format!("{name}-{}-seed{seed}", micn.name()));
                let cfg = config(opts, &data, kind, micn, seed, &run);
                // A benchmark run replaces the same run of an earlier benchmark.
                let summary = train_from(&cfg, &SingleProcess, &Resume::Overwrite)?;
                tracing::info!(model = name, micn = micn.name(), seed, auc = summary.test_auc, "quality run done");
                row.aucs.push(summary.test_auc);
                row.gaucs.push(summary.test_gauc);
                row.seconds.push(summary.seconds);
            }
            rows.push(row);
        }
    }
    Ok(QualityReport {
        device,
        synth: synth_cfg,
        protocol,
        train_samples: dataset.meta.counts.train_samples,
        test_samples: dataset.meta.counts.test_samples,
        oracle_auc: dataset.meta.oracle_auc,
        epochs: opts.epochs,
        lr: opts.lr,
        rows,
    })
}

fn config(opts: &QualityOptions, data: &Path, kind: ModelKind, micn: MicnVariant, seed: u64, run: &Path) -> Config {
    let mut cfg = Config { device: opts.device.config(), ..Default::default() };
    cfg.data.dir = data.to_path_buf();
    cfg.data.max_hist_len = 20;
    cfg.model.kind = kind;
    cfg.micn.enabled = micn != MicnVariant::Off;
    if micn == MicnVariant::WidthOnly {
        cfg.micn.lambda = 0.0;
    }
    cfg.train.epochs = opts.epochs;
    cfg.train.lr = opts.lr;
    cfg.train.seed = seed;
    cfg.train.threads = opts.threads;
    cfg.train.log_every_steps = 200;
    cfg.run.dir = run.to_path_buf();
    cfg
}

impl std::fmt::Display for QualityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.synth;
        writeln!(
            f,
            "Synthetic data: {} users, {} items, {} hidden clusters, {} categories (signal {}), noise {}, `{}` protocol; {} train / {} test samples (a tenth of the training users or samples held out for validation); {} epochs, lr {}, {} seeds, on {}",
            s.users, s.items, s.clusters, s.categories, s.category_signal, s.noise, clap::ValueEnum::to_possible_value(&self.protocol).expect("every protocol has a name").get_name(), self.train_samples, self.test_samples,
            self.epochs, self.lr, self.rows.first().map_or(0, |r| r.aucs.len()), self.device
        )?;
        writeln!(f)?;
        writeln!(f, "| model | MICN | test AUC (mean ± std) | test GAUC (mean ± std) | runs | s/run |")?;
        writeln!(f, "|---|---|---|---|---:|---:|")?;
        for r in &self.rows {
            let (a, sa) = mean_std(&r.aucs);
            let (g, sg) = mean_std(&r.gaucs);
            let (secs, _) = mean_std(&r.seconds);
            writeln!(
                f,
                "| {} | {} | {a:.4} ± {sa:.4} | {g:.4} ± {sg:.4} | {} | {secs:.0} |",
                r.model,
                r.micn.label(),
                r.aucs.len()
            )?;
        }
        if let Some(o) = self.oracle_auc {
            writeln!(f, "| oracle (generator's scores) | | {o:.4} | | | |")?;
        }
        Ok(())
    }
}
