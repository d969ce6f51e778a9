//! `micn bench throughput`: samples per second of one training step (forward, both backward
//! passes, exchange, φ, Adam) for every model with and without MICN, single process, at the
//! papers' sizes (embedding 18, history 20, global batch 128) and Books-sized vocabularies.
//! Batches are drawn at random (ids by a power law, random history lengths) so that no data
//! preparation is needed; loading is measured by `micn bench prepare`.
use std::time::Instant;

use serde::Serialize;
use tch::Device;

use crate::config::{Config, ModelKind};
use crate::data::batch::Batch;
use crate::dist::SingleProcess;
use crate::model::embeddings::Vocab;
use crate::rng::Rng;
use crate::train::optim::{Adam, AdamConfig};
use crate::train::step::{train_step, StepContext, Trainable};
use crate::train::trainer::{build_network, Built, TrainError};

#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    pub users: i64,
    pub items: i64,
    pub cats: i64,
    pub hist_len: usize,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub threads: i32,
}

impl Default for ThroughputOptions {
    fn default() -> Self {
        // Amazon Books 5-core as DIEN prepares it: ~600k users, ~370k items, ~1.6k categories.
        Self { users: 603_668, items: 367_983, cats: 1_601, hist_len: 20, batch: 128, warmup: 5, steps: 40, threads: 1 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub model: String,
    pub micn: bool,
    pub samples_per_sec: f64,
    pub ms_per_step: f64,
}

/// A random batch shaped like real ones.
pub fn random_batch(opts: &ThroughputOptions, rng: &mut Rng, noclick: bool) -> Batch {
    let (b, t) = (opts.batch, opts.hist_len);
    // Power-law ids: frequent (small) ids are drawn most, as in frequency-ordered vocabularies.
    let id = |rng: &mut Rng, n: i64| 1 + ((n - 1) as f64).powf(rng.next_f64()) as i64 % (n - 1);
    let mut batch = Batch {
        epoch: 0,
        step: 0,
        first_position: 0,
        sample_ids: (0..b as u32).collect(),
        hist_len: t,
        users: (0..b).map(|_| id(rng, opts.users)).collect(),
        user_keys: (0..b as u32).collect(),
        items: (0..b).map(|_| id(rng, opts.items)).collect(),
        cats: (0..b).map(|_| id(rng, opts.cats)).collect(),
        labels: (0..b).map(|k| (k % 2) as f32).collect(),
        hist_items: vec![0; b * t],
        hist_cats: vec![0; b * t],
        hist_mask: vec![0.0; b * t],
        noclick: noclick.then(|| (vec![0; b * t], vec![0; b * t])),
        global_positives: None,
    };
    for row in 0..b {
        let len = 1 + rng.below(t as u64) as usize;
        for k in 0..len {
            let at = row * t + k;
            batch.hist_items[at] = id(rng, opts.items);
            batch.hist_cats[at] = id(rng, opts.cats);
            batch.hist_mask[at] = 1.0;
            if let Some((ni, nc)) = batch.noclick.as_mut() {
                ni[at] = id(rng, opts.items);
                nc[at] = id(rng, opts.cats);
            }
        }
    }
    batch
}

/// Time `steps` training steps (after `warmup`) of one model.
pub fn measure(opts: &ThroughputOptions, kind: ModelKind, micn: bool) -> Result<ThroughputRow, TrainError> {
    tch::set_num_threads(opts.threads);
    let mut cfg = Config::default();
    cfg.model.kind = kind;
    cfg.micn.enabled = micn;
    cfg.train.global_batch_size = opts.batch;
    let vocab = Vocab { users: opts.users, items: opts.items, cats: opts.cats };
    let item_cat: Vec<u32> = (0..opts.items).map(|i| (i % opts.cats) as u32).collect();
    let Built { vs, net } = build_network(&cfg, vocab, &item_cat, Device::Cpu)?;
    let mut t = Trainable::new(&vs)?;
    let adam_cfg = AdamConfig { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    let mut adam = Adam::new(adam_cfg, &t.tensors);
    let mut rng = Rng::new(7);
    let batches: Vec<Batch> =
        (0..opts.warmup + opts.steps).map(|_| random_batch(opts, &mut rng, kind == ModelKind::Dien)).collect();
    let comm = SingleProcess;
    let mut started = Instant::now();
    for (step, batch) in batches.iter().enumerate() {
        if step == opts.warmup {
            started = Instant::now();
        }
        let ctx = StepContext {
            comm: &comm,
            device: Device::Cpu,
            global_batch: opts.batch,
            lambda: cfg.micn.lambda,
            phi: cfg.micn.phi,
            embedding_optimizer: cfg.train.embedding_optimizer,
            seed: 1,
            step: step as u64,
            first_sample: (step * opts.batch) as u64,
            control: Default::default(),
        };
        train_step(&net, &mut t, &mut adam, batch, &ctx)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(ThroughputRow {
        model: format!("{kind:?}").to_lowercase(),
        micn,
        samples_per_sec: (opts.steps * opts.batch) as f64 / secs,
        ms_per_step: 1000.0 * secs / opts.steps as f64,
    })
}

/// Every model ± MICN.
pub fn run(opts: &ThroughputOptions) -> Result<Vec<ThroughputRow>, TrainError> {
    // As in training, so that the figures are those of `micn train`.
    crate::train::trainer::keep_freed_memory();
    let mut rows = Vec::new();
    for kind in [ModelKind::WideDeep, ModelKind::Din, ModelKind::Dien] {
        for micn in [false, true] {
            let row = measure(opts, kind, micn)?;
            tracing::info!(model = row.model, micn, samples_per_sec = row.samples_per_sec, "measured");
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A markdown table of the rows.
pub fn table(opts: &ThroughputOptions, rows: &[ThroughputRow]) -> String {
    let mut s = format!(
        "Training-step throughput, 1 process, CPU, {} libtorch thread(s); batch {}, history {}, embedding 18; vocabularies users {} items {} categories {}\n\n| model | MICN | samples/s | ms/step |\n|---|---|---:|---:|\n",
        opts.threads, opts.batch, opts.hist_len, opts.users, opts.items, opts.cats
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {:.0} | {:.1} |\n",
            r.model,
            if r.micn { "yes" } else { "no" },
            r.samples_per_sec,
            r.ms_per_step
        );
    }
    s
}
