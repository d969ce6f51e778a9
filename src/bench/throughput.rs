//! `micn bench throughput`: samples per second of one training step (forward, the backward
//! pass, exchange, φ, Adam) for every model with and without MICN (or the chosen ones), single
//! process, on the CPU or a GPU, at the papers' sizes (embedding 18, history 20, global batch 128,
//! or the chosen batches) and Books-sized vocabularies. Batches are drawn at random (ids by a
//! power law, random history lengths) so that no data preparation is needed; loading is measured
//! by `micn bench prepare`.
use std::time::Instant;

use serde::Serialize;

use super::{device_label, synchronize, BenchDevice};
use crate::config::{Config, ModelKind};
use crate::data::batch::Batch;
use crate::dist::SingleProcess;
use crate::model::embeddings::Vocab;
use crate::model::ItemAttributeIds;
use crate::rng::Rng;
use crate::train::step::{read_unread, StepContext};
use crate::train::trainer::{build_network, Replica, TrainError};

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
    pub device: BenchDevice,
}

impl Default for ThroughputOptions {
    fn default() -> Self {
        // Amazon Books 5-core as DIEN prepares it: ~600k users, ~370k items, ~1.6k categories.
        Self {
            users: 603_668,
            items: 367_983,
            cats: 1_601,
            hist_len: 20,
            batch: 128,
            warmup: 5,
            steps: 40,
            threads: 1,
            device: BenchDevice::Cpu,
        }
    }
}

/// A model with or without MICN, written `din`, `din+micn`, `wide_deep`, `dien+micn`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub kind: ModelKind,
    pub micn: bool,
}

impl Variant {
    /// Every model without and with MICN, in the tables' order.
    pub fn all() -> Vec<Variant> {
        ModelKind::ALL.into_iter().flat_map(|kind| [false, true].map(|micn| Variant { kind, micn })).collect()
    }
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (model, micn) = match s.strip_suffix("+micn") {
            Some(model) => (model, true),
            None => (s, false),
        };
        let Some(kind) = ModelKind::ALL.into_iter().find(|k| k.name() == model) else {
            let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
            return Err(format!("`{s}`: expected one of {}, optionally followed by +micn", names.join(", ")));
        };
        Ok(Variant { kind, micn })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub model: String,
    pub micn: bool,
    pub batch: usize,
    /// e.g. "cpu" or "cuda:0 (NVIDIA H200)".
    pub device: String,
    pub samples_per_sec: f64,
    pub ms_per_step: f64,
    /// Of `ms_per_step`, the host's work building each step's upload (negatives, the row
    /// leaves' plan, packing): on a GPU, where the host prepares a step while the device
    /// computes the one before, `batch / host time` bounds samples/s.
    pub host_ms_per_step: f64,
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

/// Attribute columns of the benchmark's items, as many as the synthetic data's (brand, two category
/// levels, price bucket).
const ATTRIBUTE_COLUMNS: u32 = 4;
/// Values per attribute column.
const ATTRIBUTE_VALUES: u32 = 50;

/// Every item's attribute ids for the models that read them: column `c` of item `i` holds one of
/// [`ATTRIBUTE_VALUES`] ids of its own, spread over the items by a fixed stride.
fn attribute_table(items: i64) -> ItemAttributeIds {
    let rows: Vec<u32> = (0..items as u32)
        .flat_map(|i| {
            (0..ATTRIBUTE_COLUMNS).map(move |c| {
                if i == 0 {
                    0
                } else {
                    1 + c * ATTRIBUTE_VALUES + (i * (7 + c)) % ATTRIBUTE_VALUES
                }
            })
        })
        .collect();
    ItemAttributeIds::from_rows(&rows, ATTRIBUTE_COLUMNS as usize, (1 + ATTRIBUTE_COLUMNS * ATTRIBUTE_VALUES) as usize)
}

/// Distinct random batches drawn before timing: all of them up to about 200k samples in all,
/// then the steps cycle through them (a batch of 8192 is ~8 MB of ids on the host).
const DISTINCT_SAMPLES: usize = 200_000;

/// Time `steps` training steps (after `warmup`) of one model on `opts.device`.
pub fn measure(opts: &ThroughputOptions, kind: ModelKind, micn: bool) -> Result<ThroughputRow, TrainError> {
    tch::set_num_threads(opts.threads);
    let device = opts.device.resolve()?;
    let mut cfg = Config::default();
    cfg.model.kind = kind;
    cfg.micn.enabled = micn;
    cfg.train.global_batch_size = opts.batch;
    let vocab = Vocab { users: opts.users, items: opts.items, cats: opts.cats };
    let item_cat: Vec<u32> = (0..opts.items).map(|i| (i % opts.cats) as u32).collect();
    let attributes = kind.reads_attributes().then(|| attribute_table(opts.items));
    let comm = SingleProcess;
    let mut replica = Replica::new(build_network(&cfg, vocab, &item_cat, attributes.as_ref(), device)?, &cfg, &comm)?;
    let mut rng = Rng::new(7);
    let total = opts.warmup + opts.steps;
    let distinct = total.min((DISTINCT_SAMPLES / opts.batch.max(1)).max(1));
    let batches: Vec<Batch> = (0..distinct).map(|_| random_batch(opts, &mut rng, kind == ModelKind::Dien)).collect();
    let mut started = Instant::now();
    // As in training: a step on the device path leaves its losses there; they are read (and
    // checked to be finite) at the end, in one download.
    let mut unread = Vec::new();
    let mut prepare_seconds = 0.0;
    for (step, batch) in batches.iter().cycle().take(total).enumerate() {
        if step == opts.warmup {
            synchronize(device);
            started = Instant::now();
            prepare_seconds = 0.0;
        }
        let ctx = StepContext {
            defer_read: true,
            ..StepContext::new(&cfg, &comm, device, step as u64, (step * opts.batch) as u64)
        };
        let stats = replica.step(batch, &ctx)?;
        prepare_seconds += stats.prepare_seconds;
        unread.extend(stats.unread);
    }
    read_unread(&unread)?;
    synchronize(device);
    let secs = started.elapsed().as_secs_f64();
    Ok(ThroughputRow {
        model: kind.name().to_string(),
        micn,
        batch: opts.batch,
        device: device_label(device),
        samples_per_sec: (opts.steps * opts.batch) as f64 / secs,
        ms_per_step: 1000.0 * secs / opts.steps as f64,
        host_ms_per_step: 1000.0 * prepare_seconds / opts.steps as f64,
    })
}

/// The given models (every model ± MICN when empty) at each batch size (`opts.batch` when
/// empty), one row each, batch by batch.
pub fn run(
    opts: &ThroughputOptions,
    variants: &[Variant],
    batches: &[usize],
) -> Result<Vec<ThroughputRow>, TrainError> {
    // As in training, so that the figures are those of `micn train`.
    crate::train::trainer::keep_freed_memory();
    let variants = if variants.is_empty() { Variant::all() } else { variants.to_vec() };
    let batches = if batches.is_empty() { vec![opts.batch] } else { batches.to_vec() };
    let mut rows = Vec::new();
    for &batch in &batches {
        let opts = ThroughputOptions { batch, ..opts.clone() };
        for v in &variants {
            let row = measure(&opts, v.kind, v.micn)?;
            tracing::info!(model = row.model, micn = v.micn, batch, samples_per_sec = row.samples_per_sec, "measured");
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A markdown table of the rows.
pub fn table(opts: &ThroughputOptions, rows: &[ThroughputRow]) -> String {
    let device = rows.first().map_or_else(|| format!("{:?}", opts.device).to_lowercase(), |r| r.device.clone());
    let mut s = format!(
        "Training-step throughput, 1 process, {device}, {} libtorch thread(s); history {}, embedding 18; vocabularies users {} items {} categories {}; {} timed steps after {} warm-up steps; host ms/step: the host's share, building each step's upload\n\n| model | MICN | batch | samples/s | ms/step | host ms/step |\n|---|---|---:|---:|---:|---:|\n",
        opts.threads, opts.hist_len, opts.users, opts.items, opts.cats, opts.steps, opts.warmup
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} |\n",
            r.model,
            if r.micn { "yes" } else { "no" },
            r.batch,
            r.samples_per_sec,
            r.ms_per_step,
            r.host_ms_per_step
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_read_as_a_model_and_an_optional_micn() {
        assert_eq!("din+micn".parse(), Ok(Variant { kind: ModelKind::Din, micn: true }));
        assert_eq!("wide_deep".parse(), Ok(Variant { kind: ModelKind::WideDeep, micn: false }));
        assert_eq!("dien+micn".parse(), Ok(Variant { kind: ModelKind::Dien, micn: true }));
        assert_eq!("mind".parse(), Ok(Variant { kind: ModelKind::Mind, micn: false }));
        let e = "din+MICN".parse::<Variant>().unwrap_err();
        assert!(e.contains("one of wide_deep, din, dien, mind, mfn, camn,"), "{e}");
        assert_eq!("camn+micn".parse(), Ok(Variant { kind: ModelKind::Camn, micn: true }));
        assert_eq!(Variant::all().len(), 2 * ModelKind::ALL.len());
    }
}
