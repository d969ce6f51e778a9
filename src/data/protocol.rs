//! How samples are built from reviews (SPEC §1.2): the `dien` protocol (last review of each
//! user → one positive and one popularity-weighted negative; users split 90/10) and the `din`
//! protocol (every prefix of each user's time-sorted reviews; the last position is the test
//! pair; negatives uniform over items the user never reviewed). Pure functions of the corpus
//! and the seed.
//!
//! Negatives are drawn by bounded rejection ([`NEGATIVE_TRIES`] draws, then one exact draw from
//! the allowed items), so no corpus makes a draw spin. A `din` user who reviewed every item has
//! no negative at all: that user's samples are left out and counted
//! ([`ProtocolSummary::users_without_negatives`], [`Built::without_negatives`]); `prepare`
//! warns, naming the user, or refuses under `--strict`.
use std::collections::HashMap;

use serde::Serialize;

use super::samples::{Row, Samples};
use crate::rng::{stream, Rng};

/// Which protocol builds the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Dien,
    Din,
}

/// Strings to dense ids in order of first appearance.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One review in intern-id space; `line` orders reviews with equal times as in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewRef {
    pub user: u32,
    pub item: u32,
    pub time: i64,
    pub line: u64,
}

/// Everything the protocols need: interned reviews and each item's category.
#[derive(Debug, Default)]
pub struct Corpus {
    pub users: Interner,
    pub items: Interner,
    pub cats: Interner,
    pub reviews: Vec<ReviewRef>,
    /// Category intern id per item intern id (the `default_cat` id where meta is missing).
    pub item_cat: Vec<u32>,
    /// The items' attributes, when the input has them (meta or a sequences attributes file).
    pub attributes: Option<super::attributes::RawAttributes>,
}

impl Corpus {
    /// One review (or interaction), read from line `line`, its user and item interned.
    pub fn push(&mut self, review: &super::amazon::Review, line: u64) {
        let user = self.users.intern(&review.user);
        let item = self.items.intern(&review.item);
        self.reviews.push(ReviewRef { user, item, time: review.time, line });
    }
}

/// The category name of items without meta (and vocabulary id 0).
pub const DEFAULT_CAT: &str = "default_cat";

/// Share of users that go to the training split under the `dien` protocol.
pub const DIEN_TRAIN_SHARE: f64 = 0.9;

/// Rejected draws of a negative before the exact draw among the allowed items.
///
/// A negative found within these tries is the one the former unbounded loop found, from the
/// same random stream, so datasets prepared before the bound came in are reproduced byte for
/// byte unless one of their negatives needed more tries. That needs a positive (`dien`) or a
/// user's reviewed items (`din`) holding most of the draw's mass: the chance is (1 − q)^64 for
/// an allowed share q, about 10⁻³ at q = 0.1 and 10⁻²⁰ at q = 0.5. Hence 64 here rather than
/// the no-click sampler's 8 ([`super::batch::NoClickSampler`], which had no earlier bytes to
/// keep): a try costs one index or binary search, so 64 of them stay cheap.
pub const NEGATIVE_TRIES: usize = 64;

/// Counts of what a protocol did (in `dataset.json`'s notes).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProtocolSummary {
    pub users_with_samples: u64,
    /// Users with a single review: no history, so no sample.
    pub users_skipped: u64,
    pub train_users: u64,
    pub test_users: u64,
    /// `din`: users with at least 2 reviews who reviewed every item, so that no negative can be
    /// drawn for them: their samples are left out. Written only when there are such users, so
    /// that other datasets' descriptions stay as they were.
    #[serde(skip_serializing_if = "is_zero")]
    pub users_without_negatives: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Samples in intern-id space.
#[derive(Debug)]
pub struct Built {
    pub train: Samples,
    pub test: Samples,
    pub summary: ProtocolSummary,
    /// The users counted in [`ProtocolSummary::users_without_negatives`] (intern ids, in id
    /// order), so that a report can name them.
    pub without_negatives: Vec<u32>,
}

/// Reviews grouped by user, each group sorted by (time, file line), as indices into
/// `corpus.reviews`: user `u`'s are `order[offsets[u]..offsets[u + 1]]`. Indices (4 bytes per
/// review, by a counting sort on the user) rather than copies of the reviews (24 bytes each) and
/// one vector per user: at Books size that is the difference between 36 MB and 230 MB.
struct ByUser {
    offsets: Vec<usize>,
    order: Vec<u32>,
}

impl ByUser {
    fn new(corpus: &Corpus) -> Self {
        let mut offsets = vec![0usize; corpus.users.len() + 1];
        for r in &corpus.reviews {
            offsets[r.user as usize + 1] += 1;
        }
        for u in 0..corpus.users.len() {
            offsets[u + 1] += offsets[u];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; corpus.reviews.len()];
        for (i, r) in corpus.reviews.iter().enumerate() {
            order[next[r.user as usize]] = i as u32;
            next[r.user as usize] += 1;
        }
        for u in 0..corpus.users.len() {
            // (time, line) is unique per review: any sort gives the same order.
            order[offsets[u]..offsets[u + 1]].sort_unstable_by_key(|&i| {
                let r = &corpus.reviews[i as usize];
                (r.time, r.line)
            });
        }
        Self { offsets, order }
    }

    /// User `u`'s reviews in time order.
    fn reviews<'a>(&'a self, corpus: &'a Corpus, u: usize) -> impl Iterator<Item = &'a ReviewRef> + 'a {
        self.order[self.offsets[u]..self.offsets[u + 1]].iter().map(move |&i| &corpus.reviews[i as usize])
    }

    fn len(&self, u: usize) -> usize {
        self.offsets[u + 1] - self.offsets[u]
    }
}

/// A corpus a protocol cannot make samples of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the `dien` protocol needs reviews of at least 2 items")]
    NoNegatives,
}

/// Build train and test samples; an error when the `dien` protocol could never draw a negative
/// (fewer than 2 items reviewed). A `din` user left without a negative is skipped and counted
/// instead ([`Built::without_negatives`]): one such user does not make the corpus unusable.
pub fn build(corpus: &Corpus, protocol: Protocol, max_hist_len: usize, seed: u64) -> Result<Built, ProtocolError> {
    assert!(max_hist_len > 0, "max_hist_len must be positive");
    check_negatives_possible(corpus, protocol)?;
    let groups = ByUser::new(corpus);
    let mut rng = Rng::derive(seed, &[stream::PROTOCOL]);
    let (mut train, mut test) = (Samples::default(), Samples::default());
    let mut summary = ProtocolSummary::default();
    let cats_of = |items: &[u32]| items.iter().map(|&i| corpus.item_cat[i as usize]).collect::<Vec<_>>();
    let push_pair = |out: &mut Samples, user: u32, pos: u32, neg: u32, hist: &[u32]| {
        let hist_cats = cats_of(hist);
        for (label, item) in [(1u8, pos), (0u8, neg)] {
            out.push(Row {
                label,
                user,
                user_key: user,
                item,
                cat: corpus.item_cat[item as usize],
                hist_items: hist,
                hist_cats: &hist_cats,
            });
        }
    };
    let n_items = corpus.items.len() as u64;
    let review_totals = match protocol {
        Protocol::Dien => review_totals(corpus),
        Protocol::Din => Vec::new(),
    };
    let mut without_negatives = Vec::new();
    for u in 0..corpus.users.len() {
        let user = u as u32;
        if groups.len(u) < 2 {
            summary.users_skipped += u64::from(groups.len(u) > 0);
            continue;
        }
        let items: Vec<u32> = groups.reviews(corpus, u).map(|r| r.item).collect();
        match protocol {
            Protocol::Dien => {
                summary.users_with_samples += 1;
                let last = items.len() - 1;
                let hist = &items[last.saturating_sub(max_hist_len)..last];
                let pos = items[last];
                let neg = dien_negative(&mut rng, &corpus.reviews, &review_totals, pos);
                let to_train = Rng::derive(seed, &[stream::SPLIT, user as u64]).next_f64() < DIEN_TRAIN_SHARE;
                if to_train {
                    summary.train_users += 1;
                    push_pair(&mut train, user, pos, neg, hist);
                } else {
                    summary.test_users += 1;
                    push_pair(&mut test, user, pos, neg, hist);
                }
            }
            Protocol::Din => {
                let mut reviewed = items.clone();
                reviewed.sort_unstable();
                reviewed.dedup();
                if reviewed.len() as u64 == n_items {
                    // Nothing left to draw; no random number is used, so other users' draws
                    // are those they would be without this user.
                    summary.users_without_negatives += 1;
                    without_negatives.push(user);
                    continue;
                }
                summary.users_with_samples += 1;
                summary.train_users += u64::from(items.len() > 2);
                summary.test_users += 1;
                for i in 1..items.len() {
                    let hist = &items[i.saturating_sub(max_hist_len)..i];
                    let neg = din_negative(&mut rng, n_items, &reviewed);
                    let out = if i + 1 < items.len() { &mut train } else { &mut test };
                    push_pair(out, user, items[i], neg, hist);
                }
            }
        }
    }
    Ok(Built { train, test, summary, without_negatives })
}

/// Whether negatives can be drawn at all: `dien` draws among reviews of items other than the
/// positive, so it needs reviews of 2 items. (`din`'s condition is per user: see [`build`].)
fn check_negatives_possible(corpus: &Corpus, protocol: Protocol) -> Result<(), ProtocolError> {
    if protocol != Protocol::Dien {
        return Ok(());
    }
    let mut seen = vec![false; corpus.items.len()];
    corpus.reviews.iter().for_each(|r| seen[r.item as usize] = true);
    match seen.iter().filter(|&&s| s).count() {
        0 | 1 => Err(ProtocolError::NoNegatives),
        _ => Ok(()),
    }
}

/// Running totals of the review counts: `totals[i]` is the number of reviews of the items
/// before `i` (one more entry than items), for [`dien_negative`]'s exact draw.
fn review_totals(corpus: &Corpus) -> Vec<u64> {
    let mut totals = vec![0u64; corpus.items.len() + 1];
    corpus.reviews.iter().for_each(|r| totals[r.item as usize + 1] += 1);
    for i in 1..totals.len() {
        totals[i] += totals[i - 1];
    }
    totals
}

/// `dien`'s negative for positive `pos`: popularity-weighted, that is the item of a uniformly
/// drawn review, never `pos`.
///
/// Up to [`NEGATIVE_TRIES`] reviews are drawn, each rejected only if of `pos`; if all were
/// (likely only when `pos` holds nearly all reviews), one exact draw ([`draw_excluding`]). The
/// corpus must have reviews of another item than `pos` ([`check_negatives_possible`]).
fn dien_negative(rng: &mut Rng, reviews: &[ReviewRef], totals: &[u64], pos: u32) -> u32 {
    for _ in 0..NEGATIVE_TRIES {
        let candidate = reviews[rng.below(reviews.len() as u64) as usize].item;
        if candidate != pos {
            return candidate;
        }
    }
    draw_excluding(rng, totals, pos)
}

/// An item drawn by its review count with `pos`'s left out, as rejection sampling would give:
/// a uniform position among the reviews of other items, stepped over `pos`'s span of `totals`
/// ([`review_totals`]), then the item whose span holds it. Some other item must have reviews.
fn draw_excluding(rng: &mut Rng, totals: &[u64], pos: u32) -> u32 {
    let (start, end) = (totals[pos as usize], totals[pos as usize + 1]);
    let mut at = rng.below(totals[totals.len() - 1] - (end - start));
    if at >= start {
        at += end - start;
    }
    // The item i with totals[i] <= at < totals[i + 1]: unreviewed items have empty spans.
    (totals.partition_point(|&t| t <= at) - 1) as u32
}

/// `din`'s negative for a user whose distinct reviewed items are `reviewed` (sorted): uniform
/// over the other items of `0..n_items`.
///
/// Up to [`NEGATIVE_TRIES`] uniform items, each rejected only if reviewed; if all were (likely
/// only when the user reviewed nearly every item), one exact draw: the `j`-th unreviewed item
/// for a uniform `j`. `reviewed` must leave at least one item out.
fn din_negative(rng: &mut Rng, n_items: u64, reviewed: &[u32]) -> u32 {
    for _ in 0..NEGATIVE_TRIES {
        let candidate = rng.below(n_items) as u32;
        if reviewed.binary_search(&candidate).is_err() {
            return candidate;
        }
    }
    let j = rng.below(n_items - reviewed.len() as u64) as u32;
    jth_unreviewed(reviewed, j)
}

/// The `j`-th (from 0) item id not in `reviewed` (sorted, distinct). `reviewed[m] - m` counts
/// the unreviewed ids below `reviewed[m]` and never decreases, so the reviewed ids at or below
/// the answer are those with `reviewed[m] - m <= j`, found by binary search.
fn jth_unreviewed(reviewed: &[u32], j: u32) -> u32 {
    let (mut lo, mut hi) = (0usize, reviewed.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if reviewed[mid] - mid as u32 <= j {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    j + lo as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corpus from (user, item, time) triples; item `i{n}` has category `c{n % 3}`.
    pub(crate) fn corpus(reviews: &[(&str, &str, i64)]) -> Corpus {
        let mut c = Corpus::default();
        c.cats.intern(DEFAULT_CAT);
        for (line, (u, i, t)) in reviews.iter().enumerate() {
            let user = c.users.intern(u);
            let item = c.items.intern(i);
            if item as usize == c.item_cat.len() {
                let n: u32 = i.trim_start_matches('i').parse().unwrap_or(0);
                let cat = c.cats.intern(&format!("c{}", n % 3));
                c.item_cat.push(cat);
            }
            c.reviews.push(ReviewRef { user, item, time: *t, line: line as u64 + 1 });
        }
        c
    }

    fn synthetic(users: usize, per_user: impl Fn(usize) -> usize, items: usize) -> Corpus {
        let mut rng = Rng::new(99);
        let mut triples = Vec::new();
        for u in 0..users {
            for k in 0..per_user(u) {
                triples.push((format!("u{u}"), format!("i{}", rng.below(items as u64)), (k * 10) as i64));
            }
        }
        let refs: Vec<(&str, &str, i64)> = triples.iter().map(|(u, i, t)| (u.as_str(), i.as_str(), *t)).collect();
        corpus(&refs)
    }

    #[test]
    fn din_counts_follow_the_published_rule() {
        // DIN (Zhou et al. 2018) on Electronics: 2,608,764 train and 192,403 test samples from
        // 1,689,188 reviews of 192,403 users: train = 2·(reviews − 2·users), test = 2·users
        // (2·(1,689,188 − 2·192,403) = 2,608,764).
        let c = synthetic(300, |u| 2 + u % 9, 500);
        let built = build(&c, Protocol::Din, 10, 1).unwrap();
        let (reviews, users) = (c.reviews.len(), 300);
        assert_eq!(built.train.len(), 2 * (reviews - 2 * users));
        assert_eq!(built.test.len(), 2 * users);
        // One (positive, negative) pair per user in test, sharing the history.
        for pair in 0..users {
            let (p, n) = (2 * pair, 2 * pair + 1);
            assert_eq!((built.test.labels[p], built.test.labels[n]), (1, 0));
            assert_eq!(built.test.history(p), built.test.history(n));
            assert_eq!(built.test.users[p], built.test.users[n]);
        }
    }

    #[test]
    fn din_negatives_avoid_the_users_items() {
        let c = synthetic(100, |_| 8, 40);
        let built = build(&c, Protocol::Din, 10, 3).unwrap();
        let groups = ByUser::new(&c);
        for s in [&built.train, &built.test] {
            for i in (0..s.len()).filter(|&i| s.labels[i] == 0) {
                let user = s.users[i] as usize;
                assert!(!groups.reviews(&c, user).any(|r| r.item == s.items[i]), "negative reviewed by its user");
            }
        }
    }

    #[test]
    fn dien_gives_one_pair_per_user_split_about_90_10() {
        let c = synthetic(2000, |u| 1 + u % 7, 300);
        let built = build(&c, Protocol::Dien, 20, 5).unwrap();
        let users_with_two = (0..2000).filter(|u| 1 + u % 7 >= 2).count();
        assert_eq!(built.train.len() + built.test.len(), 2 * users_with_two);
        assert_eq!(built.summary.users_skipped as usize, 2000 - users_with_two);
        let share = built.test.len() as f64 / (2 * users_with_two) as f64;
        assert!((0.07..0.13).contains(&share), "test share {share}");
        // Train and test users are disjoint.
        let train_users: std::collections::HashSet<_> = built.train.users.iter().collect();
        assert!(built.test.users.iter().all(|u| !train_users.contains(u)));
        for s in [&built.train, &built.test] {
            for i in (0..s.len()).filter(|&i| s.labels[i] == 0) {
                assert_ne!(s.items[i], s.items[i - 1], "a negative equals its positive");
            }
        }
    }

    #[test]
    fn histories_are_time_ordered_and_truncated_to_the_most_recent() {
        // Times out of file order; u1's reviews sorted: i5(1) i3(2) i4(3) i1(4) i2(5).
        let c = corpus(&[
            ("u1", "i1", 4),
            ("u1", "i2", 5),
            ("u1", "i3", 2),
            ("u1", "i4", 3),
            ("u1", "i5", 1),
            ("u2", "i1", 1),
            ("u2", "i2", 1),
            ("u3", "i6", 1),
        ]);
        let built = build(&c, Protocol::Din, 3, 1).unwrap();
        let name = |id: u32| c.items.name(id).to_string();
        let hist = |s: &Samples, i: usize| s.history(i).0.iter().map(|&x| name(x)).collect::<Vec<_>>();
        // u1's test sample: target i2 with the 3 most recent earlier items.
        assert_eq!(name(built.test.items[0]), "i2");
        assert_eq!(hist(&built.test, 0), ["i3", "i4", "i1"]);
        // Equal times keep file order: u2 = i1 then i2.
        assert_eq!(name(built.test.items[2]), "i2");
        assert_eq!(hist(&built.test, 2), ["i1"]);
        // History categories follow the items.
        let (items, cats) = built.test.history(0);
        assert!(items.iter().zip(cats).all(|(&i, &c2)| c.item_cat[i as usize] == c2));
    }

    #[test]
    fn a_din_user_who_reviewed_every_item_is_left_out_and_counted_not_a_hang() {
        // u1 reviewed all 3 items; u2 reviewed 2 of them, so i3 is u2's every negative.
        let c = corpus(&[("u1", "i1", 1), ("u1", "i2", 2), ("u1", "i3", 3), ("u2", "i1", 1), ("u2", "i2", 2)]);
        let built = build(&c, Protocol::Din, 5, 1).unwrap();
        assert_eq!(built.without_negatives, [c.users.get("u1").unwrap()]);
        let expected = ProtocolSummary {
            users_with_samples: 1,
            users_skipped: 0,
            train_users: 0,
            test_users: 1,
            users_without_negatives: 1,
        };
        assert_eq!(built.summary, expected);
        assert!(built.train.is_empty());
        let u2 = c.users.get("u2").unwrap();
        assert_eq!(built.test.users, [u2, u2]);
        assert_eq!(built.test.items, [c.items.get("i2").unwrap(), c.items.get("i3").unwrap()]);
        // A corpus of one item (the protocol sees repeated reviews; only `prepare` drops them):
        // the former loop never ended here.
        let c = corpus(&[("u1", "i1", 1), ("u1", "i1", 2)]);
        let built = build(&c, Protocol::Din, 5, 1).unwrap();
        assert_eq!((built.train.len(), built.test.len(), built.summary.users_without_negatives), (0, 0, 1));
        // `dien` has no negative for anyone then: an error for the corpus.
        assert_eq!(build(&c, Protocol::Dien, 5, 1).unwrap_err(), ProtocolError::NoNegatives);
        assert!(ProtocolError::NoNegatives.to_string().contains("at least 2 items"));
    }

    #[test]
    fn the_jth_unreviewed_item_skips_the_reviewed_ones() {
        // Of 0..8 without {1, 2, 5}: 0, 3, 4, 6, 7 (counted by hand).
        let reviewed = [1, 2, 5];
        assert_eq!((0..5).map(|j| jth_unreviewed(&reviewed, j)).collect::<Vec<_>>(), [0, 3, 4, 6, 7]);
        assert_eq!((0..3).map(|j| jth_unreviewed(&[], j)).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(jth_unreviewed(&[0, 1, 2, 3], 0), 4);
    }

    /// Shares of `n` draws per item id.
    fn shares(n: usize, items: usize, mut draw: impl FnMut() -> u32) -> Vec<f64> {
        let mut seen = vec![0usize; items];
        (0..n).for_each(|_| seen[draw() as usize] += 1);
        seen.iter().map(|&k| k as f64 / n as f64).collect()
    }

    #[test]
    fn the_exact_draws_follow_the_rejection_samplers_distributions() {
        let mut rng = Rng::new(17);
        // dien: review counts 5, 0, 3, 2 of items 0..4 (totals 0, 5, 5, 8, 10). Without item 0:
        // 3 and 2 of 5; without item 2: 5 and 2 of 7; without the unreviewed item 1: 5, 3, 2 of 10.
        let totals = [0, 5, 5, 8, 10];
        for (pos, expected) in
            [(0, [0.0, 0.0, 0.6, 0.4]), (2, [5.0 / 7.0, 0.0, 0.0, 2.0 / 7.0]), (1, [0.5, 0.0, 0.3, 0.2])]
        {
            let seen = shares(100_000, 4, || draw_excluding(&mut rng, &totals, pos));
            for (p, q) in seen.iter().zip(expected) {
                assert!((p - q).abs() < 0.01 && (q > 0.0 || *p == 0.0), "without {pos}: {seen:?}");
            }
        }
        // din: 10 items, 7 reviewed: the other 3, a third each.
        let reviewed = [0, 1, 2, 4, 5, 7, 8];
        let seen = shares(100_000, 10, || jth_unreviewed(&reviewed, rng.below(3) as u32));
        for (id, p) in seen.iter().enumerate() {
            let q = if [3, 6, 9].contains(&id) { 1.0 / 3.0 } else { 0.0 };
            assert!((p - q).abs() < 0.01 && (q > 0.0 || *p == 0.0), "{seen:?}");
        }
    }

    /// Reviews `(user, item, time)` owned, for corpora too large to write out.
    fn owned_corpus(reviews: &[(String, String, i64)]) -> Corpus {
        let refs: Vec<(&str, &str, i64)> = reviews.iter().map(|(u, i, t)| (u.as_str(), i.as_str(), *t)).collect();
        corpus(&refs)
    }

    #[test]
    fn a_dominant_positive_does_not_make_the_dien_negative_draw_spin() {
        // 20,000 users review item i1 fifty times each (the protocol sees every review; only
        // `prepare` removes repeated ones), and two users end on i1 after one review of i2 and
        // three of i3: i1 holds 1,000,100 of 1,000,104 reviews. Every user's positive is i1, so
        // an unbounded rejection loop needed about 250,000 draws per negative (5·10^9 in all).
        let mut reviews = Vec::new();
        for u in 0..20_000 {
            reviews.extend((0..50).map(|t| (format!("u{u}"), "i1".to_string(), t)));
        }
        reviews.extend(
            [("a", "i2", 1), ("a", "i1", 2), ("b", "i3", 1), ("b", "i3", 2), ("b", "i3", 3), ("b", "i1", 4)]
                .map(|(u, i, t)| (u.to_string(), i.to_string(), t)),
        );
        let c = owned_corpus(&reviews);
        let started = std::time::Instant::now();
        let built = build(&c, Protocol::Dien, 5, 3).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        let negatives: Vec<&str> = [&built.train, &built.test]
            .iter()
            .flat_map(|s| (0..s.len()).filter(|&i| s.labels[i] == 0).map(|i| c.items.name(s.items[i])))
            .collect();
        assert_eq!(negatives.len(), 20_002, "one pair per user");
        // Without i1, i2 and i3 hold 1 and 3 of the 4 other reviews: drawn 1 : 3.
        assert!(negatives.iter().all(|&n| n == "i2" || n == "i3"), "a negative equals the positive");
        let share = negatives.iter().filter(|&&n| n == "i3").count() as f64 / negatives.len() as f64;
        assert!((share - 0.75).abs() < 0.02, "share of i3: {share}");
    }

    #[test]
    fn a_user_who_reviewed_every_item_but_one_gets_that_one_as_every_din_negative_quickly() {
        // u1 reviewed items 0..100,000 and u2 the one item more: u1's 99,999 samples each had
        // one allowed item in 100,001, about 10^5 draws per negative (10^10 in all) unbounded.
        let n = 100_000;
        let mut reviews: Vec<(String, String, i64)> =
            (0..n).map(|i| ("u1".into(), format!("i{i}"), i as i64)).collect();
        reviews.extend([("u2".into(), "i0".into(), 1), ("u2".into(), format!("i{n}"), 2)]);
        let c = owned_corpus(&reviews);
        let started = std::time::Instant::now();
        let built = build(&c, Protocol::Din, 10, 4).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        let u1 = c.users.get("u1").unwrap();
        let last = c.items.get(&format!("i{n}")).unwrap();
        let mut u1_negatives = 0;
        for s in [&built.train, &built.test] {
            for i in (0..s.len()).filter(|&i| s.labels[i] == 0 && s.users[i] == u1) {
                assert_eq!(s.items[i], last, "u1's only item never reviewed");
                u1_negatives += 1;
            }
        }
        assert_eq!(u1_negatives, n - 1, "one negative per prefix of u1's reviews");
    }

    #[test]
    fn same_seed_same_samples_other_seed_other_negatives() {
        let c = synthetic(200, |_| 6, 100);
        for protocol in [Protocol::Din, Protocol::Dien] {
            let a = build(&c, protocol, 10, 7).unwrap();
            let b = build(&c, protocol, 10, 7).unwrap();
            assert_eq!((a.train.clone(), a.test.clone()), (b.train, b.test));
            let other = build(&c, protocol, 10, 8).unwrap();
            assert_ne!(a.train, other.train);
        }
    }
}
