//! Synthetic Amazon-like data (SPEC §1.4): a seeded generative model of users with several
//! latent interests, written as raw files in the real 2014 formats (reviews as JSON lines with
//! realistic text fields, sorted by item like the real 5-core dumps; meta as Python dict
//! literals), so that `micn prepare` runs its normal path on it.
//!
//! The model. Items belong to hidden interest clusters; within a cluster, popularity follows a
//! power law. Each cluster has a home category, but an item shows it only with probability
//! `category_signal` and otherwise shows the dominant category ("Books"-like data: categories
//! nearly uninformative). A user has 1..=`interests` clusters with random mixture weights; a
//! history is a Markov chain over those interests (stay with probability `stay`, else redraw
//! from the weights: interest drift), each step emitting an item of the current cluster, or with
//! probability `noise` an item drawn by global popularity. With `brands > 0` every item's meta
//! also names a brand: its cluster's home brand (`cluster mod brands`) with probability
//! `brand_signal`, else one drawn uniformly, so the attribute's signal about the hidden interest
//! is tunable (the item-attribute table's `brand` column, for attribute-aware models).
//!
//! The oracle. Beside the raw files, `oracle-model.json` holds what the generator knows: each
//! user's weights and the interest state before their last review, and each item's cluster and
//! probabilities. `micn prepare` turns it into the Bayes score of every test sample,
//! `ln p(item | user's state) − ln p_negative(item)`, a ceiling for any model's AUC.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::prepare::Staging;
use super::DataError;
use crate::io_error::{PathIo, WithPath};
use crate::rng::{stream, Rng, WeightedIndex};

/// Generator parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    pub users: usize,
    pub items: usize,
    /// Visible categories (category 0 is the dominant one).
    pub categories: usize,
    /// Hidden interest clusters.
    pub clusters: usize,
    /// Most interests per user (each user draws 1..=this).
    pub interests: usize,
    /// Fewest reviews per user (5 in the 5-core dumps).
    pub min_history: usize,
    /// Mean reviews per user.
    pub mean_history: f64,
    /// Probability that a review is a popularity-drawn noise item.
    pub noise: f64,
    /// Probability of staying on the current interest between two reviews.
    pub stay: f64,
    /// Probability that an item shows its cluster's home category (else the dominant one).
    pub category_signal: f64,
    /// Power-law exponent of item popularity within a cluster.
    pub zipf: f64,
    /// Share of items without a meta line (their category becomes `default_cat`).
    pub missing_meta: f64,
    pub seed: u64,
    /// Brands named in the meta lines (0: none, the meta of earlier releases byte for byte).
    #[serde(default)]
    pub brands: usize,
    /// Probability that an item carries its cluster's home brand (else one drawn uniformly).
    #[serde(default)]
    pub brand_signal: f64,
}

/// Named sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// About 40k reviews: prepares in a second, trains in about a minute on 2 cores.
    Quickstart,
    /// The size of Amazon Books 5-core: ~600k users, ~370k items, 1.6k categories, ~8.9M reviews.
    BooksLike,
    /// The size of Amazon Electronics 5-core: ~192k users, ~63k items, ~1.7M reviews.
    ElectronicsLike,
}

impl Preset {
    pub fn config(self, seed: u64) -> SynthConfig {
        let base = SynthConfig {
            users: 3000,
            items: 1500,
            categories: 20,
            clusters: 40,
            interests: 4,
            min_history: 5,
            mean_history: 14.8,
            noise: 0.1,
            stay: 0.75,
            category_signal: 0.05,
            zipf: 1.0,
            missing_meta: 0.01,
            seed,
            brands: 0,
            brand_signal: 0.0,
        };
        match self {
            Preset::Quickstart => base,
            Preset::BooksLike => {
                SynthConfig { users: 603_668, items: 367_982, categories: 1600, clusters: 4000, ..base }
            }
            Preset::ElectronicsLike => SynthConfig {
                users: 192_403,
                items: 63_001,
                categories: 801,
                clusters: 1000,
                mean_history: 8.78,
                category_signal: 0.5,
                ..base
            },
        }
    }
}

/// What the generator knows, for oracle scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OracleModel {
    pub noise: f64,
    pub stay: f64,
    /// Per item name: (cluster, probability within its cluster, global popularity probability).
    #[serde(serialize_with = "by_name")]
    pub items: HashMap<String, (u32, f64, f64)>,
    /// Per user name: (interest cluster before the last review, [(cluster, weight)]).
    #[serde(serialize_with = "by_name")]
    pub users: HashMap<String, OracleUser>,
    /// The reviews file it was generated with, as written: `prepare` scores with the oracle only
    /// reviews that read the same (names are indices, so another seed's oracle knows every one).
    /// Absent from older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviews: Option<WrittenReviews>,
}

/// A reviews file's size as [`crate::data::input::FileSummary`] counts it: lines, and bytes
/// after decompression.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrittenReviews {
    pub lines: u64,
    pub bytes: u64,
}

/// A map written in the order of its names, so that the same seed writes the same bytes.
fn by_name<S: serde::Serializer, V: Serialize>(map: &HashMap<String, V>, s: S) -> Result<S::Ok, S::Error> {
    map.iter().collect::<std::collections::BTreeMap<_, _>>().serialize(s)
}

/// A user as the oracle sees it: the interest cluster before the last review, and every
/// (cluster, weight) of the user's interests.
pub type OracleUser = (u32, Vec<(u32, f64)>);

impl OracleModel {
    /// p(item | user), the generator's probability that the user's next review is `item`.
    pub fn next_item_probability(&self, user: &str, item: &str) -> Option<f64> {
        let &(cluster, within, popularity) = self.items.get(item)?;
        let (state, weights) = self.users.get(user)?;
        let from_weights: f64 = weights.iter().filter(|(c, _)| *c == cluster).map(|(_, w)| w).sum();
        let from_state = if *state == cluster { 1.0 } else { 0.0 };
        let interest = self.stay * from_state + (1.0 - self.stay) * from_weights;
        Some((1.0 - self.noise) * interest * within + self.noise * popularity)
    }
}

/// File names written by [`generate`].
pub const REVIEWS_FILE: &str = "reviews_Synthetic_5.json";
pub const META_FILE: &str = "meta_Synthetic.json";
pub const ORACLE_FILE: &str = "oracle-model.json";
/// What `synth` was asked for and wrote (`SynthSummary`).
pub const INFO_FILE: &str = "synth.json";

const WORDS: &[&str] = &[
    "the",
    "book",
    "story",
    "great",
    "read",
    "author",
    "characters",
    "plot",
    "really",
    "good",
    "love",
    "series",
    "first",
    "time",
    "would",
    "recommend",
    "well",
    "written",
    "enjoyed",
    "very",
    "much",
    "new",
    "one",
    "little",
    "interesting",
    "page",
    "end",
    "life",
    "world",
    "way",
    "found",
    "made",
    "could",
    "never",
    "also",
    "just",
    "like",
    "novel",
    "quality",
    "works",
    "product",
    "price",
    "battery",
    "easy",
    "use",
    "sound",
    "fast",
    "cable",
    "screen",
    "bought",
    "gift",
    "pretty",
    "nice",
    "again",
    "family",
    "history",
    "mystery",
    "romance",
    "classic",
    "worth",
];

fn word_text(rng: &mut Rng, words: usize) -> String {
    let mut s = String::with_capacity(words * 7);
    for k in 0..words {
        if k > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

fn id_string(prefix: char, n: u64, len: usize) -> String {
    // Base-36 upper-case, fixed width, like real reviewer IDs and ASINs.
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = vec![b'0'; len];
    let mut x = n;
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(x % 36) as usize];
        x /= 36;
    }
    out[0] = prefix as u8;
    String::from_utf8(out).expect("ASCII digits")
}

/// Reviewer ID of user `u` (scrambled so ids do not sort by generation order).
pub fn user_name(u: usize) -> String {
    let mut s = u as u64 ^ 0x5bd1_e995;
    id_string('A', crate::rng::splitmix64(&mut s) % 36u64.pow(12), 13)
}

/// ASIN of item `i`.
pub fn item_name(i: usize) -> String {
    let mut s = i as u64 ^ 0x1b87_3593;
    id_string('B', crate::rng::splitmix64(&mut s) % 36u64.pow(9), 10)
}

/// Summary of a generated data set.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub config: SynthConfig,
    pub reviews: u64,
    pub review_bytes: u64,
    pub reviews_file: PathBuf,
    pub meta_file: PathBuf,
    pub oracle_file: PathBuf,
}

struct ReviewDraw {
    user: u32,
    item: u32,
    time: i64,
}

/// The items: each one's cluster, its within-cluster power-law weight, its category.
struct Catalogue {
    item_cluster: Vec<u32>,
    members: Vec<Vec<u32>>,
    cluster_samplers: Vec<WeightedIndex>,
    within: Vec<f64>,
    popularity: Vec<f64>,
    global: WeightedIndex,
    item_cat: Vec<usize>,
}

impl Catalogue {
    fn draw(cfg: &SynthConfig, rng: &mut Rng) -> Self {
        let clusters = cfg.clusters.min(cfg.items);
        let mut order: Vec<usize> = (0..cfg.items).collect();
        rng.shuffle(&mut order);
        let mut item_cluster = vec![0u32; cfg.items];
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); clusters];
        for (rank, &i) in order.iter().enumerate() {
            let c = rank % clusters;
            item_cluster[i] = c as u32;
            members[c].push(i as u32);
        }
        let weight = |rank: usize| 1.0 / ((rank + 1) as f64).powf(cfg.zipf);
        let cluster_samplers: Vec<WeightedIndex> = members
            .iter()
            .map(|m| WeightedIndex::new(&(0..m.len()).map(weight).collect::<Vec<_>>()).expect("clusters are non-empty"))
            .collect();
        let mut within = vec![0f64; cfg.items];
        for m in &members {
            let total: f64 = (0..m.len()).map(weight).sum();
            for (rank, &i) in m.iter().enumerate() {
                within[i as usize] = weight(rank) / total;
            }
        }
        // Clusters are equally likely a priori, so global popularity = within / clusters.
        let popularity: Vec<f64> = within.iter().map(|w| w / clusters as f64).collect();
        let global = WeightedIndex::new(&popularity).expect("positive popularity");
        let home_cat: Vec<usize> = (0..clusters).map(|c| 1 + c % cfg.categories.saturating_sub(1).max(1)).collect();
        let item_cat: Vec<usize> = (0..cfg.items)
            .map(|i| {
                if cfg.categories > 1 && rng.chance(cfg.category_signal) {
                    home_cat[item_cluster[i] as usize].min(cfg.categories - 1)
                } else {
                    0
                }
            })
            .collect();
        Self { item_cluster, members, cluster_samplers, within, popularity, global, item_cat }
    }
}

/// The users: each one's interests (clusters with Dirichlet weights) and a history that stays
/// in one interest or switches; the reviews drawn, and what the oracle needs of each user.
fn draw_users(
    cfg: &SynthConfig,
    catalogue: &Catalogue,
    rng: &mut Rng,
) -> (Vec<ReviewDraw>, HashMap<String, OracleUser>) {
    let Catalogue { members, cluster_samplers, global, .. } = catalogue;
    let clusters = members.len();
    let mut draws: Vec<ReviewDraw> = Vec::new();
    let mut oracle_users = HashMap::with_capacity(cfg.users);
    let extra_mean = (cfg.mean_history - cfg.min_history as f64).max(0.0);
    let p_more = extra_mean / (1.0 + extra_mean); // geometric extra length with this mean
    for u in 0..cfg.users {
        let k = 1 + rng.below(cfg.interests as u64) as usize;
        // At most one interest per cluster (`--interests` may ask for more: capped, not allocated).
        let k = k.min(clusters);
        let mut interests: Vec<(u32, f64)> = Vec::with_capacity(k);
        while interests.len() < k {
            let c = rng.below(clusters as u64) as u32;
            if !interests.iter().any(|(x, _)| *x == c) {
                interests.push((c, -(1.0 - rng.next_f64()).ln())); // Exp(1): Dirichlet(1) after normalising
            }
        }
        let total: f64 = interests.iter().map(|(_, w)| w).sum();
        interests.iter_mut().for_each(|(_, w)| *w /= total);
        let pick = WeightedIndex::new(&interests.iter().map(|(_, w)| *w).collect::<Vec<_>>()).expect("weights");
        let mut len = cfg.min_history.max(2);
        while rng.chance(p_more) && len < 10 * cfg.mean_history.ceil() as usize + 10 {
            len += 1;
        }
        let mut state = interests[pick.sample(rng)].0;
        let mut time = 946_684_800 + rng.below(13 * 365 * 86_400) as i64; // 2000..2013
        let mut seen: Vec<u32> = Vec::with_capacity(len);
        let mut state_before_last = state;
        for step in 0..len {
            // The oracle's p(next | state) integrates over the last transition (stay, or redraw
            // from the weights), so it needs the state before that transition: the one that
            // drew the second-to-last review.
            if step + 1 == len {
                state_before_last = state;
            }
            if step > 0 && !rng.chance(cfg.stay) {
                state = interests[pick.sample(rng)].0;
            }
            // Redraw items the user already reviewed (a few tries), as real users rarely repeat.
            let mut item = 0;
            for _ in 0..8 {
                item = if rng.chance(cfg.noise) {
                    global.sample(rng) as u32
                } else {
                    members[state as usize][cluster_samplers[state as usize].sample(rng)]
                };
                if !seen.contains(&item) {
                    break;
                }
            }
            seen.push(item);
            time += 86_400 * (1 + rng.below(60) as i64);
            draws.push(ReviewDraw { user: u as u32, item, time });
        }
        oracle_users.insert(user_name(u), (state_before_last, interests));
    }
    (draws, oracle_users)
}

/// The meta file: Python dict literals, as the real dumps have them; some items have none.
/// Each item's brand (`cfg.brands > 0`): its cluster's home brand with probability
/// `brand_signal`, else a uniform draw; from a stream of its own, so the other draws stay as they
/// were.
fn draw_brands(cfg: &SynthConfig, item_cluster: &[u32]) -> Vec<Option<usize>> {
    let mut rng = Rng::derive(cfg.seed, &[stream::SYNTH, 2]);
    item_cluster
        .iter()
        .map(|&cluster| {
            (cfg.brands > 0).then(|| {
                let home = cluster as usize % cfg.brands;
                if rng.chance(cfg.brand_signal) {
                    home
                } else {
                    rng.below(cfg.brands as u64) as usize
                }
            })
        })
        .collect()
}

/// The name of brand `b` in the meta lines.
pub fn brand_name(b: usize) -> String {
    format!("Brand {b:04}")
}

fn write_meta(
    w: &mut dyn std::io::Write,
    cfg: &SynthConfig,
    item_cat: &[usize],
    item_brand: &[Option<usize>],
) -> std::io::Result<u64> {
    let cat_name = |c: usize| if c == 0 { "Books".to_string() } else { format!("Genre {c:04}") };
    let mut meta_rng = Rng::derive(cfg.seed, &[stream::SYNTH, 1]);
    let mut n = 0u64;
    for (i, &cat) in item_cat.iter().enumerate() {
        if meta_rng.chance(cfg.missing_meta) {
            continue;
        }
        let brand = item_brand[i].map(|b| format!(", 'brand': '{}'", brand_name(b))).unwrap_or_default();
        let title = word_text(&mut meta_rng, 4);
        // Titles with an apostrophe use double quotes, as Python's repr does.
        let title = if meta_rng.chance(0.2) { format!("\"{title}'s edition\"") } else { format!("'{title}'") };
        let line = format!(
            "{{'asin': '{}', 'imUrl': 'http://ecx.images-amazon.com/images/I/{}.jpg', 'categories': [['Books', '{}']], 'title': {title}, 'price': {}.99, 'salesRank': {{'Books': {}}}{brand}}}\n",
            item_name(i),
            item_name(i + 7),
            cat_name(cat),
            1 + meta_rng.below(40),
            1 + meta_rng.below(1_000_000)
        );
        w.write_all(line.as_bytes())?;
        n += line.len() as u64;
    }
    Ok(n)
}

/// Most reviews `synth` writes (`users × max(min_history, mean_history)`, about 30 GB of review
/// JSON): more than any Amazon category's 5-core holds.
pub const MAX_REVIEWS: f64 = 5e7;
/// Longest history a user may be asked for (each draw looks through the user's earlier items).
pub const MAX_HISTORY: usize = 10_000;

impl SynthConfig {
    /// Whether these settings make a data set this machine can write; the reason if not.
    pub fn check(&self) -> Result<(), String> {
        if self.users == 0 || self.items < 2 || self.clusters == 0 || self.categories == 0 || self.interests == 0 {
            return Err("synth needs users ≥ 1, items ≥ 2, clusters ≥ 1, categories ≥ 1 and interests ≥ 1".into());
        }
        if !(self.mean_history.is_finite() && self.mean_history >= 0.0) {
            return Err(format!("--mean-history must be a number ≥ 0, got {}", self.mean_history));
        }
        if self.min_history > MAX_HISTORY || self.mean_history > MAX_HISTORY as f64 {
            return Err(format!(
                "--min-history {} / --mean-history {}: at most {MAX_HISTORY} reviews per user",
                self.min_history, self.mean_history
            ));
        }
        // Every user has at least 2 reviews (see `draw_users`).
        let history = (self.min_history.max(2) as f64).max(self.mean_history);
        if self.users as f64 * history > MAX_REVIEWS || self.items as f64 > MAX_REVIEWS {
            return Err(format!(
                "--users {} × a history of {history} and --items {}: at most {MAX_REVIEWS:.0} reviews and \
                 {MAX_REVIEWS:.0} items",
                self.users, self.items
            ));
        }
        Ok(())
    }
}

/// Generate the raw files into `out`, whole or not at all: built beside it and moved into place,
/// replacing an earlier output of `synth` there (a directory with `synth.json`, or an empty one);
/// anything else at `out` is refused. The summary names the files at their final paths.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<SynthSummary, DataError> {
    cfg.check().map_err(|message| DataError::Invalid { path: out.to_path_buf(), message })?;
    let staging = Staging::replacing(out, &[INFO_FILE, REVIEWS_FILE, META_FILE, ORACLE_FILE])?;
    let summary = write_files(cfg, &staging.tmp, out)?;
    staging.commit()?;
    Ok(summary)
}

/// The files, written into `dir`, which becomes `out`.
fn write_files(cfg: &SynthConfig, dir: &Path, out: &Path) -> Result<SynthSummary, DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io(PathIo { path, source })
    };
    let mut rng = Rng::derive(cfg.seed, &[stream::SYNTH]);

    let catalogue = Catalogue::draw(cfg, &mut rng);
    let (mut draws, oracle_users) = draw_users(cfg, &catalogue, &mut rng);
    let Catalogue { item_cluster, within, popularity, item_cat, .. } = catalogue;

    // Reviews file, grouped by item like the real dumps, formatted on all cores.
    draws.sort_by_key(|d| (d.item, d.time, d.user));
    let review_bytes = write_synced(&dir.join(REVIEWS_FILE), |w| write_reviews(w, &draws, cfg.seed))?;

    // Meta file: Python dict literals; some items have none.
    let item_brand = draw_brands(cfg, &item_cluster);
    write_synced(&dir.join(META_FILE), |w| write_meta(w, cfg, &item_cat, &item_brand))?;

    let oracle = OracleModel {
        noise: cfg.noise,
        stay: cfg.stay,
        items: (0..cfg.items).map(|i| (item_name(i), (item_cluster[i], within[i], popularity[i]))).collect(),
        users: oracle_users,
        reviews: Some(WrittenReviews { lines: draws.len() as u64, bytes: review_bytes }),
    };
    write_synced(&dir.join(ORACLE_FILE), |w| {
        serde_json::to_writer(&mut *w, &oracle).map_err(std::io::Error::other)?;
        Ok(0)
    })?;
    let summary = SynthSummary {
        config: cfg.clone(),
        reviews: draws.len() as u64,
        review_bytes,
        reviews_file: out.join(REVIEWS_FILE),
        meta_file: out.join(META_FILE),
        oracle_file: out.join(ORACLE_FILE),
    };
    let info_path = dir.join(INFO_FILE);
    std::fs::write(&info_path, serde_json::to_string_pretty(&summary).expect("plain data")).map_err(io(&info_path))?;
    Ok(summary)
}

/// Format the review lines in parallel blocks and write them in order.
fn write_reviews(w: &mut dyn std::io::Write, draws: &[ReviewDraw], seed: u64) -> std::io::Result<u64> {
    const BLOCK: usize = 20_000;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut written = 0u64;
    for (g, group) in draws.chunks(BLOCK * threads).enumerate() {
        let texts: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .chunks(BLOCK)
                .enumerate()
                .map(|(b, block)| {
                    let first = g * BLOCK * threads + b * BLOCK;
                    // Without a thread to spare (`ulimit -u`), formatted here.
                    std::thread::Builder::new()
                        .spawn_scoped(scope, move || format_block(block, first, seed))
                        .map_err(|_| format_block(block, first, seed))
                })
                .collect();
            handles.into_iter().map(|h| h.map_or_else(|text| text, |h| h.join().expect("formatting thread"))).collect()
        });
        for t in texts {
            w.write_all(&t)?;
            written += t.len() as u64;
        }
    }
    Ok(written)
}

/// A review line with the fields in the real dumps' order.
#[derive(Serialize)]
struct SynthReview {
    #[serde(rename = "reviewerID")]
    reviewer_id: String,
    asin: String,
    #[serde(rename = "reviewerName")]
    reviewer_name: String,
    helpful: [u64; 2],
    #[serde(rename = "reviewText")]
    review_text: String,
    overall: f64,
    summary: String,
    #[serde(rename = "unixReviewTime")]
    unix_review_time: i64,
    #[serde(rename = "reviewTime")]
    review_time: String,
}

fn format_block(block: &[ReviewDraw], first: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() * 600);
    for (k, d) in block.iter().enumerate() {
        let mut rng = Rng::derive(seed, &[stream::SYNTH, 2, (first + k) as u64]);
        let rating = 1 + rng.below(5);
        let helpful_total = rng.below(20);
        let words = 15 + rng.below(90) as usize;
        let (y, m, day) = civil_from_days(d.time.div_euclid(86_400));
        let line = SynthReview {
            reviewer_id: user_name(d.user as usize),
            asin: item_name(d.item as usize),
            reviewer_name: format!("Reader {}", d.user % 9973),
            helpful: [rng.below(helpful_total + 1), helpful_total],
            review_text: word_text(&mut rng, words),
            overall: rating as f64,
            summary: word_text(&mut rng, 3),
            unix_review_time: d.time,
            review_time: format!("{m:02} {day}, {y}"),
        };
        serde_json::to_writer(&mut out, &line).expect("writing to memory");
        out.push(b'\n');
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Write `path` (inside the staging directory, so never seen half-written) through a buffer, and
/// sync it.
fn write_synced(
    path: &Path,
    body: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<u64>,
) -> Result<u64, DataError> {
    let io = |source| DataError::Io(PathIo { path: path.to_path_buf(), source });
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let n = body(&mut w).map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(n)
}

/// Read `oracle-model.json`.
pub fn read_oracle(path: &Path) -> Result<OracleModel, DataError> {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).with_path(path)?);
    // A byte-order mark (Windows tools write one) is not part of the document, as in every text input.
    if reader.fill_buf().with_path(path)?.starts_with(super::input::UTF8_BOM) {
        reader.consume(super::input::UTF8_BOM.len());
    }
    serde_json::from_reader(reader)
        .map_err(|e| DataError::Invalid { path: path.to_path_buf(), message: format!("not an oracle model: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        // 1370131200 is 2013-06-02 (the first review of the real Electronics fixture says "06 2, 2013").
        assert_eq!(civil_from_days(1_370_131_200 / 86_400), (2013, 6, 2));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn names_look_like_amazon_ids_and_are_distinct() {
        let users: std::collections::HashSet<String> = (0..10_000).map(user_name).collect();
        assert_eq!(users.len(), 10_000);
        assert!(users.iter().all(|u| u.len() == 13 && u.starts_with('A')));
        assert_eq!(item_name(3).len(), 10);
    }

    #[test]
    fn brands_follow_the_hidden_cluster_as_often_as_the_signal_says() {
        // Each item's brand, read back from the meta file by the 2014 meta parser.
        let brands_of = |cfg: &SynthConfig| {
            let dir = tempfile::tempdir().unwrap();
            generate(cfg, dir.path()).unwrap();
            let text = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
            let oracle = read_oracle(&dir.path().join(ORACLE_FILE)).unwrap();
            let metas: Vec<_> = text.lines().map(|l| super::super::amazon::parse_meta_2014(l).unwrap()).collect();
            let home = |item: &str| brand_name(oracle.items[item].0 as usize % cfg.brands.max(1));
            let at_home = metas.iter().filter(|m| m.brand.as_deref() == Some(home(&m.item).as_str())).count();
            (metas.iter().filter(|m| m.brand.is_some()).count(), at_home, metas.len(), text)
        };
        let base =
            SynthConfig { users: 50, items: 1000, clusters: 20, missing_meta: 0.0, ..Preset::Quickstart.config(3) };
        let (with_brand, _, lines, plain) = brands_of(&base);
        assert_eq!((with_brand, lines), (0, 1000), "no brands by default");
        let (with_brand, at_home, _, _) = brands_of(&SynthConfig { brands: 10, brand_signal: 1.0, ..base.clone() });
        assert_eq!((with_brand, at_home), (1000, 1000), "signal 1: every item carries its cluster's brand");
        // Signal 0.5: at home with probability 0.5 + 0.5/10 = 0.55; 550 of 1000 expected, binomial
        // standard deviation 15.7, the bounds about four of them.
        let (_, at_home, _, text) = brands_of(&SynthConfig { brands: 10, brand_signal: 0.5, ..base.clone() });
        assert!((490..=610).contains(&at_home), "{at_home}");
        // Everything else of the meta lines is as without brands.
        let strip =
            |t: &str| t.lines().map(|l| l.split(", 'brand'").next().unwrap().to_string() + "}").collect::<Vec<_>>();
        assert_eq!(strip(&text), plain.lines().map(String::from).collect::<Vec<_>>());
    }

    #[test]
    fn more_interests_than_clusters_are_capped_not_allocated() {
        // 10^11 interests asked: each user holds at most one interest per cluster (6 here),
        // instead of reserving room for 10^11 of them (1.6 TB) and failing out of memory.
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            users: 20,
            items: 60,
            clusters: 6,
            interests: 100_000_000_000,
            ..Preset::Quickstart.config(3)
        };
        generate(&cfg, dir.path()).unwrap();
        let oracle = read_oracle(&dir.path().join(ORACLE_FILE)).unwrap();
        assert_eq!(oracle.users.len(), 20);
        assert!(oracle.users.values().all(|(_, interests)| (1..=6).contains(&interests.len())));
    }

    #[test]
    fn oracle_probabilities_form_a_distribution() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig { users: 50, items: 60, clusters: 6, ..Preset::Quickstart.config(3) };
        generate(&cfg, dir.path()).unwrap();
        // The same seed writes the same bytes, the oracle's too.
        let again = tempfile::tempdir().unwrap();
        generate(&cfg, again.path()).unwrap();
        for file in [ORACLE_FILE, REVIEWS_FILE, META_FILE] {
            let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(file)).unwrap();
            assert!(read(&dir) == read(&again), "{file} differs");
        }
        let oracle = read_oracle(&dir.path().join(ORACLE_FILE)).unwrap();
        // Saved again by a tool that opens it with a byte-order mark: the same model.
        let marked = dir.path().join("marked.json");
        let text = std::fs::read(dir.path().join(ORACLE_FILE)).unwrap();
        std::fs::write(&marked, [&b"\xEF\xBB\xBF"[..], &text].concat()).unwrap();
        assert_eq!(read_oracle(&marked).unwrap(), oracle);
        for u in 0..50 {
            let total: f64 = (0..60).map(|i| oracle.next_item_probability(&user_name(u), &item_name(i)).unwrap()).sum();
            assert!((total - 1.0).abs() < 1e-9, "user {u}: {total}");
        }
    }
}
