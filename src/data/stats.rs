//! `micn data stats`: what a prepared dataset holds — counts, vocabulary sizes, label balance,
//! the distribution of history lengths and the item-attribute table's columns.
use std::collections::BTreeMap;

use serde::Serialize;

use super::archive::CategorySource;
use super::attributes::FieldStats;
use super::samples::ArchivedSamples;
use super::Dataset;

#[derive(Debug, Clone, Serialize)]
pub struct SplitStats {
    pub samples: u64,
    pub positives: u64,
    pub positive_share: f64,
    pub distinct_user_keys: u64,
    pub mean_history: f64,
    /// Samples whose target item the vocabulary does not hold (id 0, `default_mid`): items seen
    /// only outside the training samples, such as a user's last behaviour under `din`.
    pub unknown_items: u64,
    /// History length → number of samples.
    pub history_lengths: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub source: String,
    pub protocol: String,
    pub seed: u64,
    pub max_hist_len: usize,
    /// Reviews (behaviours) read; unknown (`null`) for DIEN's files without `reviews-info`.
    pub reviews: Option<u64>,
    pub users: u64,
    pub items: u64,
    pub cats: u64,
    /// `meta`, `none` (prepared without `--meta`: every item in `default_cat`) or `dien_files`.
    pub category_source: CategorySource,
    /// Items (id 0 aside) in category 0, `default_cat`: those the category source gives none.
    pub items_in_default_cat: u64,
    pub train: SplitStats,
    pub test: SplitStats,
    pub oracle_auc: Option<f64>,
    /// The item-attribute table, when the dataset has one.
    pub attributes: Option<AttributeStats>,
}

/// The item-attribute table: its width, vocabulary and each column's coverage.
#[derive(Debug, Clone, Serialize)]
pub struct AttributeStats {
    /// Columns per item.
    pub k: usize,
    /// Attribute ids, id 0 (none) included.
    pub values: u64,
    pub fields: Vec<FieldStats>,
}

fn split(s: &ArchivedSamples) -> SplitStats {
    let n = s.len() as u64;
    let positives = s.labels.iter().filter(|&&l| l == 1).count() as u64;
    let mut lengths = BTreeMap::new();
    let mut total = 0u64;
    for w in s.hist_offsets.windows(2) {
        let len = w[1].to_native() - w[0].to_native();
        total += len;
        *lengths.entry(len).or_insert(0u64) += 1;
    }
    let mut keys: Vec<u32> = s.user_keys.iter().map(|k| k.to_native()).collect();
    keys.sort_unstable();
    keys.dedup();
    SplitStats {
        samples: n,
        positives,
        positive_share: if n == 0 { 0.0 } else { positives as f64 / n as f64 },
        distinct_user_keys: keys.len() as u64,
        mean_history: if n == 0 { 0.0 } else { total as f64 / n as f64 },
        unknown_items: s.items.iter().filter(|&&i| i == 0).count() as u64,
        history_lengths: lengths,
    }
}

pub fn compute(d: &Dataset) -> Stats {
    Stats {
        source: d.meta.source.clone(),
        protocol: d.meta.protocol.clone(),
        seed: d.meta.seed,
        max_hist_len: d.meta.max_hist_len,
        reviews: Some(d.meta.counts.reviews).filter(|&n| n > 0 || d.meta.source != "dien_files"),
        users: d.vocab.users.len() as u64,
        items: d.vocab.items.len() as u64,
        cats: d.vocab.cats.len() as u64,
        category_source: d.meta.categories,
        items_in_default_cat: d.vocab.item_cat.iter().skip(1).filter(|&&c| c == 0).count() as u64,
        train: split(d.train.samples()),
        test: split(d.test.samples()),
        oracle_auc: d.meta.oracle_auc,
        attributes: d.attributes.as_ref().map(|a| AttributeStats {
            k: a.k(),
            values: a.names.len() as u64,
            fields: a.coverage(),
        }),
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "source {}  protocol {}  seed {}  max_hist_len {}",
            self.source, self.protocol, self.seed, self.max_hist_len
        )?;
        // Sequences and interactions hold behaviours of any kind, not reviews (the JSON key
        // stays `reviews`); DIEN's files count the lines of their `reviews-info`, when given.
        let behaviours = match (self.source.as_str(), self.reviews) {
            (_, None) => "reviews unknown (no reviews-info)".into(),
            ("sequences" | "interactions", Some(n)) => format!("behaviours {n}"),
            ("dien_files", Some(n)) => format!("reviews (reviews-info) {n}"),
            (_, Some(n)) => format!("reviews {n}"),
        };
        writeln!(
            f,
            "{behaviours}  vocabularies (with id 0): users {}  items {}  categories {}",
            self.users, self.items, self.cats
        )?;
        // Without a source every item is in `default_cat`, which its line says already.
        if self.items_in_default_cat == 0 || self.category_source == CategorySource::WithoutMeta {
            writeln!(f, "categories: {}", self.category_source)?;
        } else {
            writeln!(
                f,
                "categories: {}; {} of the {} items have none there and are in `default_cat`",
                self.category_source,
                self.items_in_default_cat,
                self.items.saturating_sub(1)
            )?;
        }
        for (name, s) in [("train", &self.train), ("test", &self.test)] {
            writeln!(
                f,
                "{name:5}  samples {}  positives {} ({:.1} %)  users {}  mean history {:.2}  unknown items {}",
                s.samples,
                s.positives,
                100.0 * s.positive_share,
                s.distinct_user_keys,
                s.mean_history,
                s.unknown_items
            )?;
        }
        writeln!(f, "history length   train      test")?;
        let lengths: std::collections::BTreeSet<u64> =
            self.train.history_lengths.keys().chain(self.test.history_lengths.keys()).copied().collect();
        for len in lengths {
            let count = |s: &SplitStats| s.history_lengths.get(&len).copied().unwrap_or(0);
            writeln!(f, "{len:>14} {:>9} {:>9}", count(&self.train), count(&self.test))?;
        }
        match &self.attributes {
            None => writeln!(f, "item attributes: none (no meta or attributes file)")?,
            Some(a) => {
                writeln!(f, "item attributes: {} per item, {} distinct (with id 0)", a.k, a.values)?;
                let items = self.items.saturating_sub(1).max(1) as f64;
                for s in &a.fields {
                    writeln!(
                        f,
                        "{:>14}  {:>9} items ({:.1} %)  {} values",
                        s.field,
                        s.items_with_value,
                        100.0 * s.items_with_value as f64 / items,
                        s.distinct_values
                    )?;
                }
            }
        }
        if let Some(auc) = self.oracle_auc {
            writeln!(f, "oracle test AUC {auc:.4} (the generator's own scores: a ceiling for any model)")?;
        }
        Ok(())
    }
}
