//! `micn bench quality`: does each model learn, and does MICN help? On freshly generated
//! Books-style synthetic data (hidden interest clusters, nearly uninformative categories,
//! popularity-weighted negatives, the `dien` protocol), every model with and without MICN is
//! trained for several seeds; the table gives mean ± std of test AUC and GAUC beside the
//! generator's oracle AUC (the ceiling).
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, Device, ModelKind};
use crate::data::prepare::synthetic_dataset;
use crate::data::protocol::Protocol;
use crate::data::synth::{Preset, SynthConfig};
use crate::dist::SingleProcess;
use crate::metrics::mean_std;
use crate::train::{train, TrainError};

#[derive(Debug, Clone)]
pub struct QualityOptions {
    pub work_dir: PathBuf,
    pub users: usize,
    pub items: usize,
    pub clusters: usize,
    pub categories: usize,
    pub seeds: u64,
    pub epochs: usize,
    pub lr: f64,
    pub threads: usize,
}

impl Default for QualityOptions {
    fn default() -> Self {
        Self {
            work_dir: PathBuf::from("runs/bench-quality"),
            users: 60_000,
            items: 20_000,
            clusters: 400,
            categories: 100,
            seeds: 3,
            epochs: 2,
            lr: 1e-3,
            threads: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityRow {
    pub model: String,
    pub micn: bool,
    pub aucs: Vec<f64>,
    pub gaucs: Vec<f64>,
    pub seconds: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub synth: SynthConfig,
    pub train_samples: u64,
    pub test_samples: u64,
    pub oracle_auc: Option<f64>,
    pub epochs: usize,
    pub lr: f64,
    pub rows: Vec<QualityRow>,
}

fn prepare(opts: &QualityOptions) -> Result<(SynthConfig, PathBuf), TrainError> {
    let synth_cfg = SynthConfig {
        users: opts.users,
        items: opts.items,
        clusters: opts.clusters,
        categories: opts.categories,
        ..Preset::BooksLike.config(1)
    };
    let data = synthetic_dataset(&synth_cfg, Protocol::Dien, 20, &opts.work_dir)?;
    Ok((synth_cfg, data))
}

/// Train every model ± MICN for every seed.
pub fn run(opts: &QualityOptions) -> Result<QualityReport, TrainError> {
    let (synth_cfg, data) = prepare(opts)?;
    let dataset = crate::data::Dataset::open(&data)?;
    let mut rows = Vec::new();
    for (kind, name) in [(ModelKind::WideDeep, "wide_deep"), (ModelKind::Din, "din"), (ModelKind::Dien, "dien")] {
        for micn in [false, true] {
            let mut row = QualityRow { model: name.into(), micn, aucs: vec![], gaucs: vec![], seconds: vec![] };
            for seed in 1..=opts.seeds {
                let cfg =
                    config(opts, &data, kind, micn, seed, &opts.work_dir.join(format!("{name}-micn{micn}-seed{seed}")));
                let summary = train(&cfg, &SingleProcess)?;
                tracing::info!(model = name, micn, seed, auc = summary.test_auc, "quality run done");
                row.aucs.push(summary.test_auc);
                row.gaucs.push(summary.test_gauc);
                row.seconds.push(summary.seconds);
            }
            rows.push(row);
        }
    }
    Ok(QualityReport {
        synth: synth_cfg,
        train_samples: dataset.meta.counts.train_samples,
        test_samples: dataset.meta.counts.test_samples,
        oracle_auc: dataset.meta.oracle_auc,
        epochs: opts.epochs,
        lr: opts.lr,
        rows,
    })
}

fn config(opts: &QualityOptions, data: &Path, kind: ModelKind, micn: bool, seed: u64, run: &Path) -> Config {
    let mut cfg = Config { device: Device::Cpu, ..Default::default() };
    cfg.data.dir = data.to_path_buf();
    cfg.data.max_hist_len = 20;
    cfg.model.kind = kind;
    cfg.micn.enabled = micn;
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
            "Synthetic Books-style data: {} users, {} items, {} hidden clusters, {} categories (signal {}), noise {}, `dien` protocol; {} train / {} test samples; {} epochs, lr {}, {} seeds",
            s.users, s.items, s.clusters, s.categories, s.category_signal, s.noise, self.train_samples, self.test_samples,
            self.epochs, self.lr, self.rows.first().map_or(0, |r| r.aucs.len())
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
                if r.micn { "yes" } else { "no" },
                r.aucs.len()
            )?;
        }
        if let Some(o) = self.oracle_auc {
            writeln!(f, "| oracle (generator's scores) | | {o:.4} | | | |")?;
        }
        Ok(())
    }
}
