//! Collation: sample indices → one padded batch on the host, read from the memory-mapped
//! archive without copying it. Histories keep their most recent `max_hist_len` behaviours,
//! oldest first and left-aligned, padded with id 0 and mask 0 to the batch's longest one. For DIEN, a "no-click" item is
//! drawn for every real history position, popularity-weighted and never the clicked item, from a
//! seed derived from `(seed, epoch, global sample position)` — so a sample draws the same
//! no-clicks whichever rank holds it, and every epoch draws fresh ones. Every draw takes a
//! bounded number of steps, however the counts are skewed ([`NoClickSampler`]).
use tch::{Device, Tensor};

use super::samples::ArchivedSamples;
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

/// Whether sample `i` of `samples` is a MICN positive ([`is_micn_positive`]).
pub fn is_positive_sample(samples: &ArchivedSamples, i: u32) -> bool {
    is_micn_positive(f32::from(samples.labels[i as usize]), i64::from(samples.items[i as usize].to_native()))
}

/// MICN positives among the samples `ids`.
pub fn count_micn_positives(samples: &ArchivedSamples, ids: impl IntoIterator<Item = u32>) -> u32 {
    ids.into_iter().filter(|&i| is_positive_sample(samples, i)).count() as u32
}

/// Draws DIEN's no-click items: popularity-weighted over item ids (training counts), never the
/// clicked item.
///
/// A draw is a bounded rejection: up to [`NoClickSampler::TRIES`] weighted draws, and if each
/// gave the clicked item (likely only when it holds nearly all the weight), one exact draw from
/// the counts without the clicked item, by inverse CDF over the precomputed cumulative counts —
/// from the same seeded stream, so the fallback is as deterministic as the rest and the result
/// is distributed exactly as rejection sampling's would be. A draw never loops unboundedly.
pub struct NoClickSampler {
    weights: WeightedIndex,
    /// `cumulative[i]`: the counts of the items before `i` (one more entry than items).
    cumulative: Vec<u64>,
    item_cat: Vec<u32>,
    seed: u64,
}

/// Where a dataset's no-click popularity came from ([`NoClickSampler::for_dataset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoClickCounts {
    /// `items.tsv`'s counts, as prepared.
    Vocabulary,
    /// Counted from the training archive's targets and histories, since `items.tsv` has fewer
    /// than two items with a count (a dataset prepared from DIEN's pickles without
    /// `reviews-info` by an older micn).
    TrainingSamples,
}

impl NoClickSampler {
    /// Weighted draws that gave the clicked item before the exact fallback draw.
    pub const TRIES: usize = 8;

    /// `None` when fewer than two items have a positive count (no valid draw would exist), when
    /// `item_cat` does not cover every item, or when the counts overflow `u64`.
    pub fn new(item_counts: &[u64], item_cat: &[u32], seed: u64) -> Option<Self> {
        if item_counts.iter().filter(|&&c| c > 0).count() < 2 || item_cat.len() < item_counts.len() {
            return None;
        }
        let mut cumulative = Vec::with_capacity(item_counts.len() + 1);
        let mut total = 0u64;
        cumulative.push(0);
        for &c in item_counts {
            total = total.checked_add(c)?;
            cumulative.push(total);
        }
        let weights = WeightedIndex::new(&item_counts.iter().map(|&c| c as f64).collect::<Vec<_>>())?;
        Some(Self { weights, cumulative, item_cat: item_cat.to_vec(), seed })
    }

    /// The sampler for `dataset`'s training archive: by `items.tsv`'s counts, or, where those
    /// cannot draw (fewer than two items with a count), by the counts of item ids among the
    /// training targets and histories (id 0, padding and unknowns, excluded), with a warning.
    /// `None`, with a warning that DIEN's auxiliary loss is off, when neither can.
    pub fn for_dataset(dataset: &super::Dataset, seed: u64) -> Option<(Self, NoClickCounts)> {
        let vocab = &dataset.vocab;
        if let Some(sampler) = Self::new(&vocab.items.counts, &vocab.item_cat, seed) {
            return Some((sampler, NoClickCounts::Vocabulary));
        }
        let samples = dataset.train.samples();
        let mut counts = vec![0u64; vocab.items.len()];
        for id in samples.items.iter().chain(samples.hist_items.iter()) {
            counts[id.to_native() as usize] += 1;
        }
        counts[0] = 0;
        let items = dataset.dir.join("items.tsv");
        match Self::new(&counts, &vocab.item_cat, seed) {
            Some(sampler) => {
                tracing::warn!(
                    "{}: fewer than 2 items have a popularity count (prepared from DIEN's pickles without \
                     reviews-info by an older micn?): DIEN's no-click items are drawn by the items' counts \
                     in the training samples instead",
                    items.display()
                );
                Some((sampler, NoClickCounts::TrainingSamples))
            }
            None => {
                tracing::warn!(
                    "{}: fewer than 2 items have a count, in items.tsv or among the training samples: \
                     no no-click item can be drawn, so DIEN's auxiliary loss is off",
                    items.display()
                );
                None
            }
        }
    }

    fn draw(&self, rng: &mut Rng, clicked: i64) -> i64 {
        for _ in 0..Self::TRIES {
            let item = self.weights.sample(rng) as i64;
            if item != clicked {
                return item;
            }
        }
        self.draw_excluding(rng, clicked)
    }

    /// One draw by the counts with `clicked`'s removed: a uniform position among the other
    /// items' total count, stepped over `clicked`'s span, then the item whose span holds it.
    fn draw_excluding(&self, rng: &mut Rng, clicked: i64) -> i64 {
        let c = &self.cumulative;
        let total = c[c.len() - 1];
        let (start, weight) = match usize::try_from(clicked) {
            Ok(i) if i + 1 < c.len() => (c[i], c[i + 1] - c[i]),
            _ => (0, 0), // not an item: nothing to exclude
        };
        // At least two items have a count, so the others' total is positive.
        let mut u = rng.below(total - weight);
        if u >= start {
            u += weight;
        }
        // The item i with c[i] <= u < c[i + 1]: items with a zero count have empty spans.
        (c.partition_point(|&x| x <= u) - 1) as i64
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The width of the batch of `ids`: its longest history cut to `max_hist_len`, at least 1.
    /// Padding past it would only be masked out again (and cost a step of DIEN's recurrences per
    /// column); every model's output for a sample is the same at any width.
    pub fn width(samples: &ArchivedSamples, ids: &[u32], max_hist_len: usize) -> usize {
        let longest = ids.iter().map(|&i| samples.history_range(i as usize).len().min(max_hist_len)).max();
        longest.unwrap_or(0).max(1)
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
        let (b, t) = (ids.len(), Self::width(samples, ids, max_hist_len));
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

    /// A batch of bare histories (vocabulary item ids, oldest first, already cut to the
    /// model's length), each item with its category from `item_cat`; user, target and label are
    /// 0. For what reads only the history: a retrieval model's interests of held-out users.
    pub fn of_histories(histories: &[&[u32]], item_cat: &[u32]) -> Batch {
        let (b, t) = (histories.len(), histories.iter().map(|h| h.len()).max().unwrap_or(0).max(1));
        let mut batch = Batch {
            epoch: 0,
            step: 0,
            first_position: 0,
            sample_ids: (0..b as u32).collect(),
            hist_len: t,
            users: vec![0; b],
            user_keys: vec![0; b],
            items: vec![0; b],
            cats: vec![0; b],
            labels: vec![0.0; b],
            hist_items: vec![0; b * t],
            hist_cats: vec![0; b * t],
            hist_mask: vec![0.0; b * t],
            noclick: None,
            global_positives: None,
        };
        for (row, history) in histories.iter().enumerate() {
            for (k, &item) in history.iter().enumerate() {
                let at = row * t + k;
                batch.hist_items[at] = i64::from(item);
                batch.hist_cats[at] = i64::from(item_cat[item as usize]);
                batch.hist_mask[at] = 1.0;
            }
        }
        batch
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` draws against `clicked`, as counts per item id.
    fn histogram(
        sampler: &NoClickSampler,
        clicked: i64,
        n: usize,
        draw: fn(&NoClickSampler, &mut Rng, i64) -> i64,
    ) -> Vec<usize> {
        let mut rng = Rng::new(17);
        let mut seen = vec![0; sampler.cumulative.len() - 1];
        for _ in 0..n {
            seen[draw(sampler, &mut rng, clicked) as usize] += 1;
        }
        seen
    }

    #[test]
    fn a_dominant_clicked_item_does_not_make_the_draw_spin() {
        // Item 1 holds all but 4 of 10^15 counts: an unbounded rejection loop needed about
        // 2.5·10^14 tries per draw when item 1 was clicked.
        let sampler = NoClickSampler::new(&[0, 1_000_000_000_000_000, 1, 3], &[0, 1, 1, 2], 5).unwrap();
        let started = std::time::Instant::now();
        let seen = histogram(&sampler, 1, 40_000, NoClickSampler::draw);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        assert_eq!((seen[0], seen[1]), (0, 0), "never padding, never the clicked item: {seen:?}");
        // Without item 1, items 2 and 3 are drawn 1 : 3.
        let share = seen[3] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{seen:?}");
    }

    #[test]
    fn the_fallback_draws_by_the_counts_without_the_clicked_item() {
        let sampler = NoClickSampler::new(&[0, 5, 0, 3, 2], &[0; 5], 5).unwrap();
        let n = 100_000;
        // Without item 1 the counts are 3 and 2 of 5; without item 3, 5 and 2 of 7; an id that
        // is no item excludes nothing: 5, 3 and 2 of 10.
        for (clicked, expected) in
            [(1, [0.0, 0.0, 0.0, 0.6, 0.4]), (3, [0.0, 5.0 / 7.0, 0.0, 0.0, 2.0 / 7.0]), (9, [0.0, 0.5, 0.0, 0.3, 0.2])]
        {
            let seen = histogram(&sampler, clicked, n, NoClickSampler::draw_excluding);
            for (id, p) in expected.iter().enumerate() {
                let share = seen[id] as f64 / n as f64;
                assert!((share - p).abs() < 0.01, "clicked {clicked}: {seen:?}");
                assert!(*p > 0.0 || seen[id] == 0, "clicked {clicked}: item {id} drawn: {seen:?}");
            }
        }
    }

    #[test]
    fn draws_repeat_for_the_same_stream_and_fewer_than_two_counted_items_give_no_sampler() {
        let sampler = NoClickSampler::new(&[0, 1_000_000, 1, 1], &[0; 4], 5).unwrap();
        let draws = |seed| {
            let mut rng = Rng::derive(seed, &[stream::NOCLICK, 0, 7]);
            (0..50).map(|_| sampler.draw(&mut rng, 1)).collect::<Vec<_>>()
        };
        assert_eq!(draws(5), draws(5));
        assert_ne!(draws(5), draws(6));
        assert!(NoClickSampler::new(&[0, 9, 0], &[0; 3], 5).is_none());
        assert!(NoClickSampler::new(&[0, 9, 1], &[0; 2], 5).is_none(), "a category for every item");
        assert!(NoClickSampler::new(&[0, u64::MAX, 1], &[0; 3], 5).is_none(), "counts overflow");
    }
}
