//! Collation: sample indices → one padded batch on the host, read from the memory-mapped
//! archive without copying it. Histories keep their most recent `max_hist_len` behaviours,
//! oldest first and left-aligned, padded with id 0 and mask 0. For DIEN, a "no-click" item is
//! drawn for every real history position, popularity-weighted and never the clicked item, from a
//! seed derived from `(seed, epoch, global sample position)` — so a sample draws the same
//! no-clicks whichever rank holds it, and every epoch draws fresh ones.
use tch::{Device, Tensor};

use super::samples::ArchivedSamples;
use crate::model::embeddings::{BatchIds, NoClick};
use crate::rng::{stream, Rng, WeightedIndex};

/// A batch on the host. Row-major `[b, T]` for the history columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    /// Step within the epoch.
    pub step: u64,
    /// Position within the epoch (in global samples) of this batch's first sample.
    pub first_position: u64,
    /// Archive index of every sample.
    pub sample_ids: Vec<u32>,
    pub hist_len: usize,
    pub users: Vec<i64>,
    pub user_keys: Vec<u32>,
    pub items: Vec<i64>,
    pub cats: Vec<i64>,
    pub labels: Vec<f32>,
    pub hist_items: Vec<i64>,
    pub hist_cats: Vec<i64>,
    pub hist_mask: Vec<f32>,
    /// DIEN's no-click items and their categories, `[b, T]`.
    pub noclick: Option<(Vec<i64>, Vec<i64>)>,
    /// MICN positives ([`is_micn_positive`]) in the whole global batch this batch is a slice
    /// of, when known: the loader counts them from the sample order every rank shares, so MICN's
    /// normaliser needs no collective. `None`: the step sums the ranks' counts.
    pub global_positives: Option<u32>,
}

/// Whether a sample enters MICN's loss: clicked, with a known target item (id 0, the unknown
/// item, has no sampling probability). [`crate::micn::loss::positive_mask`] is the same test on
/// tensors.
pub fn is_micn_positive(label: f32, item: i64) -> bool {
    label > 0.5 && item >= 1
}

/// MICN positives among the samples `ids`.
pub fn count_micn_positives(samples: &ArchivedSamples, ids: impl IntoIterator<Item = u32>) -> u32 {
    ids.into_iter()
        .filter(|&i| is_micn_positive(samples.labels[i as usize] as f32, samples.items[i as usize].to_native() as i64))
        .count() as u32
}

/// Draws DIEN's no-click items: popularity-weighted over item ids (training counts), never the
/// clicked item.
pub struct NoClickSampler {
    weights: WeightedIndex,
    item_cat: Vec<u32>,
    seed: u64,
}

impl NoClickSampler {
    /// `None` when fewer than two items have a positive count (no valid draw would exist).
    pub fn new(item_counts: &[u64], item_cat: &[u32], seed: u64) -> Option<Self> {
        if item_counts.iter().filter(|&&c| c > 0).count() < 2 {
            return None;
        }
        let weights = WeightedIndex::new(&item_counts.iter().map(|&c| c as f64).collect::<Vec<_>>())?;
        Some(Self { weights, item_cat: item_cat.to_vec(), seed })
    }

    fn draw(&self, rng: &mut Rng, clicked: i64) -> i64 {
        loop {
            let item = self.weights.sample(rng) as i64;
            if item != clicked {
                return item;
            }
        }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Collate the samples `ids` of `samples`. `first_position` is the epoch position of the
    /// first one (consecutive positions follow).
    pub fn collate(
        samples: &ArchivedSamples,
        ids: &[u32],
        max_hist_len: usize,
        (epoch, step, first_position): (u64, u64, u64),
        noclick: Option<&NoClickSampler>,
    ) -> Batch {
        let (b, t) = (ids.len(), max_hist_len);
        let mut batch = Batch {
            epoch,
            step,
            first_position,
            sample_ids: ids.to_vec(),
            hist_len: t,
            users: Vec::with_capacity(b),
            user_keys: Vec::with_capacity(b),
            items: Vec::with_capacity(b),
            cats: Vec::with_capacity(b),
            labels: Vec::with_capacity(b),
            hist_items: vec![0; b * t],
            hist_cats: vec![0; b * t],
            hist_mask: vec![0.0; b * t],
            noclick: noclick.map(|_| (vec![0; b * t], vec![0; b * t])),
            global_positives: None,
        };
        for (row, &i) in ids.iter().enumerate() {
            let i = i as usize;
            batch.users.push(samples.users[i].to_native() as i64);
            batch.user_keys.push(samples.user_keys[i].to_native());
            batch.items.push(samples.items[i].to_native() as i64);
            batch.cats.push(samples.cats[i].to_native() as i64);
            batch.labels.push(samples.labels[i] as f32);
            let range = samples.history_range(i);
            let start = range.end.saturating_sub(t).max(range.start);
            let mut rng = noclick.map(|s| Rng::derive(s.seed, &[stream::NOCLICK, epoch, first_position + row as u64]));
            for (k, pos) in (start..range.end).enumerate() {
                let at = row * t + k;
                let item = samples.hist_items[pos].to_native() as i64;
                batch.hist_items[at] = item;
                batch.hist_cats[at] = samples.hist_cats[pos].to_native() as i64;
                batch.hist_mask[at] = 1.0;
                if let (Some(sampler), Some(rng), Some((ni, nc))) = (noclick, rng.as_mut(), batch.noclick.as_mut()) {
                    let n = sampler.draw(rng, item);
                    ni[at] = n;
                    nc[at] = sampler.item_cat[n as usize] as i64;
                }
            }
        }
        batch
    }

    /// The batch as tensors on `device`.
    pub fn to_ids(&self, device: Device) -> BatchIds {
        let (b, t) = (self.len() as i64, self.hist_len as i64);
        let v = |x: &[i64]| Tensor::from_slice(x).to_device(device);
        let m = |x: &[i64]| Tensor::from_slice(x).view([b, t]).to_device(device);
        BatchIds {
            users: v(&self.users),
            items: v(&self.items),
            cats: v(&self.cats),
            hist_items: m(&self.hist_items),
            hist_cats: m(&self.hist_cats),
            hist_mask: Tensor::from_slice(&self.hist_mask).view([b, t]).to_device(device),
            noclick: self.noclick.as_ref().map(|(items, cats)| NoClick { items: m(items), cats: m(cats) }),
        }
    }

    /// MICN positives among this batch's own samples.
    pub fn micn_positives(&self) -> usize {
        self.labels.iter().zip(&self.items).filter(|(&l, &i)| is_micn_positive(l, i)).count()
    }

    /// Labels as a `[b]` f32 tensor.
    pub fn labels(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.labels).to_device(device)
    }
}
