//! A prefetching loader: a background thread collates the rank's batches of one epoch from the
//! memory-mapped archive while the trainer computes, holding at most `prefetch` batches.
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::batch::{count_micn_positives, Batch, NoClickSampler};
use super::samples::ArchivedSamples;
use super::shard;
use super::Dataset;
use crate::io_error::NoThread;

/// What the loader needs to know about the run.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub seed: u64,
    pub global_batch: usize,
    pub world: usize,
    pub rank: usize,
    pub max_hist_len: usize,
    pub drop_remainder: bool,
    pub prefetch: usize,
    /// Draw DIEN's no-click items.
    pub noclick: bool,
}

impl LoaderConfig {
    /// The loader of rank `rank` of `world` for the run `cfg`.
    pub fn from_config(cfg: &crate::config::Config, world: usize, rank: usize) -> Self {
        Self {
            seed: cfg.train.seed,
            global_batch: cfg.train.global_batch_size,
            world,
            rank,
            max_hist_len: cfg.data.max_hist_len,
            drop_remainder: cfg.data.drop_remainder,
            prefetch: cfg.data.prefetch_batches,
            noclick: cfg.model.kind == crate::config::ModelKind::Dien,
        }
    }
}

/// One epoch's batches for one rank, from `first_step` on.
pub struct EpochLoader {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
}

impl EpochLoader {
    /// Over every training sample.
    pub fn new(dataset: Arc<Dataset>, cfg: &LoaderConfig, epoch: u64, first_step: u64) -> Result<Self, NoThread> {
        let all: Arc<[u32]> = (0..dataset.train.samples().len() as u32).collect();
        Self::over(dataset, all, cfg, epoch, first_step)
    }

    /// Over the training samples `ids` (those not held out for validation, see
    /// [`shard::validation_split`]): the epoch's permutation orders `ids`.
    pub fn over(
        dataset: Arc<Dataset>,
        ids: Arc<[u32]>,
        cfg: &LoaderConfig,
        epoch: u64,
        first_step: u64,
    ) -> Result<Self, NoThread> {
        let cfg = cfg.clone();
        // Built here rather than in the worker so that its warnings (counts missing, DIEN's aux
        // loss off) carry the caller's span, with the rank.
        let noclick = if cfg.noclick { NoClickSampler::for_dataset(&dataset, cfg.seed).map(|(s, _)| s) } else { None };
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name(format!("loader-{epoch}"))
            .spawn(move || {
                let samples = dataset.train.samples();
                let order: Vec<u32> =
                    shard::permutation(ids.len(), cfg.seed, epoch).into_iter().map(|k| ids[k as usize]).collect();
                let steps = shard::steps_per_epoch(ids.len(), cfg.global_batch, cfg.drop_remainder);
                for step in first_step..steps {
                    let (first, ids) = shard::rank_slice(&order, step, cfg.global_batch, cfg.world, cfg.rank);
                    let mut batch =
                        Batch::collate(samples, &ids, cfg.max_hist_len, (epoch, step, first), noclick.as_ref());
                    let global = shard::global_slice(&order, step, cfg.global_batch);
                    batch.global_positives = Some(count_micn_positives(samples, global));
                    if tx.send(batch).is_err() {
                        return; // the trainer stopped early
                    }
                }
            })
            .map_err(|source| NoThread { what: "loading batches", source })?;
        Ok(Self { rx, worker: Some(worker) })
    }
}

impl Iterator for EpochLoader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        // Unblock a worker waiting to send, then wait for it.
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Evaluation batches of one rank: the samples `ids` of `samples` (the test set, or the held-out
/// validation samples of the training archive) cut into batches of `batch` samples, dealt to the
/// ranks in turn. Every sample is scored in the same batch whatever the world size, so scores do
/// not depend on how many ranks evaluate. Each batch is collated when it is taken: a split of
/// millions of samples never lies in memory as batches at once.
pub fn eval_batches<'a>(
    samples: &'a ArchivedSamples,
    ids: &'a [u32],
    rank: usize,
    world: usize,
    batch: usize,
    max_hist_len: usize,
) -> impl Iterator<Item = Batch> + 'a {
    ids.chunks(batch.max(1))
        .enumerate()
        .filter(move |(k, _)| k % world == rank)
        .map(move |(k, chunk)| Batch::collate(samples, chunk, max_hist_len, (0, k as u64, chunk[0] as u64), None))
}
