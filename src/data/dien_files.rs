//! DIEN's pre-processed Books files (the reference implementation's data):
//! `local_train_splitByUser` and `local_test_splitByUser` (`label \t uid \t mid \t cat \t
//! hist_mids \t hist_cats`, lists joined by the byte 0x02, LF or CRLF), `item-info`
//! (`asin \t cat`), `reviews-info` (`uid \t asin \t rating \t time`), and, when present, the
//! vocabulary pickles `uid_voc.pkl`, `mid_voc.pkl`, `cat_voc.pkl`, whose ids are then used as they
//! are so that ids match the reference exactly. Without the pickles, vocabularies are built by
//! frequency like for the raw dumps.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::input::{self, Bad, BadKind, FileSummary, Strictness};
use super::prepare::{issue_warnings, source_entry, write_dataset, DatasetParts, Report, Staging};
use super::protocol::{Interner, DEFAULT_CAT};
use super::samples::{Row, Samples};
use super::vocab::{self, Vocab, Vocabularies, DEFAULT_MID, UNKNOWN_USER};
use super::DataError;
use crate::io_error::WithPath;

/// One line of a DIEN sample file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DienLine {
    pub label: u8,
    pub user: String,
    pub item: String,
    pub cat: String,
    pub hist_items: Vec<String>,
    pub hist_cats: Vec<String>,
}

const LIST_SEPARATOR: char = '\u{2}';

/// DIEN's vocabulary pickles: users, items, categories.
const PICKLES: [&str; 3] = ["uid_voc.pkl", "mid_voc.pkl", "cat_voc.pkl"];
const REVIEWS_INFO: &str = "reviews-info";

/// Parse `label \t uid \t mid \t cat \t hist_mids \t hist_cats`.
pub fn parse_line(line: &str) -> Result<DienLine, Bad> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 6 {
        let kind = if fields.len() < 6 { BadKind::Truncated } else { BadKind::Malformed };
        return Err(Bad::new(kind, format!("{} tab-separated fields, expected 6", fields.len())));
    }
    let label = match fields[0] {
        "0" => 0,
        "1" => 1,
        other => return Err(Bad::new(BadKind::WrongType, format!("label {other:?} is not 0 or 1"))),
    };
    let list = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split(LIST_SEPARATOR).map(str::to_string).collect()
        }
    };
    let (hist_items, hist_cats) = (list(fields[4]), list(fields[5]));
    if hist_items.len() != hist_cats.len() {
        return Err(Bad::new(
            BadKind::Malformed,
            format!("{} history items but {} history categories", hist_items.len(), hist_cats.len()),
        ));
    }
    if fields[1..4].iter().any(|f| f.is_empty()) {
        return Err(Bad::new(BadKind::MissingField, "empty uid, mid or cat"));
    }
    Ok(DienLine { label, user: fields[1].into(), item: fields[2].into(), cat: fields[3].into(), hist_items, hist_cats })
}

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

/// Samples in intern space plus the interners.
#[derive(Default)]
struct Interned {
    users: Interner,
    items: Interner,
    cats: Interner,
    item_cat: Vec<u32>,
}

impl Interned {
    fn add(&mut self, out: &mut Samples, l: DienLine) {
        let cat = self.cats.intern(&l.cat);
        let item = self.item(&l.item, cat);
        let hist_cats: Vec<u32> = l.hist_cats.iter().map(|c| self.cats.intern(c)).collect();
        let hist_items: Vec<u32> = l.hist_items.iter().zip(&hist_cats).map(|(i, &c)| self.item(i, c)).collect();
        let user = self.users.intern(&l.user);
        out.push(Row {
            label: l.label,
            user,
            user_key: user,
            item,
            cat,
            hist_items: &hist_items,
            hist_cats: &hist_cats,
        });
    }

    fn item(&mut self, name: &str, cat: u32) -> u32 {
        let id = self.items.intern(name);
        if id as usize == self.item_cat.len() {
            self.item_cat.push(cat);
        }
        id
    }
}

/// A vocabulary from a pickle (names by the pickle's ids, gaps filled with placeholders) and the
/// map name → id. Refused, naming the file: bytes that are not a `str → int` pickle, an empty
/// dict, an id outside `0..=N` for `N` entries, and two names with one id. DIEN numbers the
/// entries `0..N`; the one gap `0..=N` allows (a missing reserved 0, say) keeps the table, and
/// so memory, bounded by the entries whatever the ids claim.
fn vocab_from_pickle(path: &Path, zero_name: &str) -> Result<(Vocab, HashMap<String, u32>), DataError> {
    let invalid = |message: String| DataError::Invalid { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).with_path(path)?;
    let entries = super::pickle::read_str_int_entries(&bytes)
        .map_err(|e| invalid(format!("not a vocabulary pickle (a str → int dict): {e}")))?;
    if entries.is_empty() {
        return Err(invalid("the pickle holds an empty dict: a vocabulary needs at least one entry".into()));
    }
    let n = entries.len();
    let mut names: Vec<Option<String>> = Vec::new();
    for (name, id) in &entries {
        let slot = usize::try_from(*id).ok().filter(|&id| id <= n).ok_or_else(|| {
            invalid(format!("key {name:?}: id {id} is outside 0..={n}: the ids of a vocabulary number its {n} entries"))
        })?;
        if names.len() <= slot {
            names.resize(slot + 1, None);
        }
        if let Some(first) = &names[slot] {
            return Err(invalid(format!("keys {first:?} and {name:?} both have id {slot}: ids must be unique")));
        }
        names[slot] = Some(name.clone());
    }
    let names: Vec<String> = names
        .into_iter()
        .enumerate()
        .map(|(id, name)| match (id, name) {
            (_, Some(name)) => name,
            (0, None) => zero_name.to_string(),
            (id, None) => format!("<unused {id}>"),
        })
        .collect();
    let map = entries.into_iter().map(|(name, id)| (name, id as u32)).collect();
    Ok((Vocab { counts: vec![0; names.len()], names }, map))
}

/// The distinct ids (intern space) of one kind in the training samples.
fn distinct(ids: impl IntoIterator<Item = u32>, len: usize) -> Vec<u32> {
    let mut seen = vec![false; len];
    ids.into_iter().for_each(|i| seen[i as usize] = true);
    (0..len as u32).filter(|&i| seen[i as usize]).collect()
}

/// Check that a vocabulary pickle is the one for its names: refused when fewer than half of the
/// names of that kind in the training file are in it (an item vocabulary given where the
/// category one belongs finds none of them), saying which other pickle holds them; a warning
/// when some are missing (they get id 0).
fn check_pickle_matches(
    what: &str,
    names: &[&str],
    pickles: &[(&Path, &HashMap<String, u32>)],
    k: usize,
    train_path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(), DataError> {
    let found_in = |ids: &HashMap<String, u32>| names.iter().filter(|n| ids.contains_key(**n)).count();
    let (path, ids) = pickles[k];
    let found = found_in(ids);
    let missing = names.iter().find(|n| !ids.contains_key(**n));
    if found * 2 < names.len() {
        let better = pickles
            .iter()
            .enumerate()
            .filter(|&(j, (_, other))| j != k && found_in(other) * 2 >= names.len())
            .map(|(_, (p, _))| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())
            .next();
        let hint = match better {
            Some(other) => format!("; they are in {other}: were the pickles swapped?"),
            None => String::new(),
        };
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "not the {what} vocabulary of these files: only {found} of the {} {what} names of {} are in it \
                 (e.g. {:?}){hint}",
                names.len(),
                train_path.display(),
                missing.copied().unwrap_or_default()
            ),
        });
    }
    if let Some(example) = missing {
        warnings.push(format!(
            "{}: {} of the {} {what} names of {} are not in it (e.g. {example:?}): they get id 0",
            path.display(),
            names.len() - found,
            names.len(),
            train_path.display()
        ));
    }
    Ok(())
}

/// How often each id occurs in the training samples (targets and histories for items and
/// categories); id 0 (padding and unknowns) counts nothing, so it is never a no-click item.
fn training_counts(train: &Samples, vocab: &Vocabularies) -> [Vec<u64>; 3] {
    let count = |ids: &mut dyn Iterator<Item = &u32>, len: usize| {
        let mut counts = vec![0u64; len];
        ids.for_each(|&i| counts[i as usize] += 1);
        counts[0] = 0;
        counts
    };
    [
        count(&mut train.users.iter(), vocab.users.len()),
        count(&mut train.items.iter().chain(&train.hist_items), vocab.items.len()),
        count(&mut train.cats.iter().chain(&train.hist_cats), vocab.cats.len()),
    ]
}

/// Where the item popularity for DIEN's no-click items came from (`notes.item_counts`).
const COUNTS_FROM_REVIEWS: &str = "reviews-info";
const COUNTS_FROM_TRAINING: &str = "training samples";

/// The vocabularies of DIEN's pickles (ids then match the reference), checked against the names
/// in the training samples, and the maps from interned ids to theirs.
fn vocab_from_pickles(
    pickles: &[PathBuf; 3],
    interned: &Interned,
    train: &Samples,
    train_path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vocabularies, vocab::IdMaps), DataError> {
    let (users, user_ids) = vocab_from_pickle(&pickles[0], UNKNOWN_USER)?;
    let (items, item_ids) = vocab_from_pickle(&pickles[1], DEFAULT_MID)?;
    let (cats, cat_ids) = vocab_from_pickle(&pickles[2], DEFAULT_CAT)?;
    let names = |interner: &Interner, ids: Vec<u32>| -> Vec<String> {
        ids.into_iter().map(|i| interner.name(i).to_string()).collect()
    };
    let train_names = [
        names(&interned.users, distinct(train.users.iter().copied(), interned.users.len())),
        names(&interned.items, distinct(train.items.iter().chain(&train.hist_items).copied(), interned.items.len())),
        names(&interned.cats, distinct(train.cats.iter().chain(&train.hist_cats).copied(), interned.cats.len())),
    ];
    let by_kind = [(&*pickles[0], &user_ids), (&*pickles[1], &item_ids), (&*pickles[2], &cat_ids)];
    for (k, what) in ["user", "item", "category"].into_iter().enumerate() {
        let names: Vec<&str> = train_names[k].iter().map(String::as_str).collect();
        check_pickle_matches(what, &names, &by_kind, k, train_path, warnings)?;
    }
    let map = |interner: &Interner, ids: &HashMap<String, u32>| -> Vec<u32> {
        (0..interner.len() as u32).map(|i| ids.get(interner.name(i)).copied().unwrap_or(0)).collect()
    };
    let maps = vocab::IdMaps {
        users: map(&interned.users, &user_ids),
        items: map(&interned.items, &item_ids),
        cats: map(&interned.cats, &cat_ids),
    };
    let mut item_cat = vec![0u32; items.len()];
    for (intern, &id) in maps.items.iter().enumerate() {
        item_cat[id as usize] = maps.cats[interned.item_cat[intern] as usize];
    }
    item_cat[0] = 0;
    Ok((Vocabularies { users, items, cats, item_cat }, maps))
}

/// DIEN's text files in a directory, parsed: the samples with their names interned, the
/// categories `item-info` gives, and the reviews per item `reviews-info` counts.
struct DienFiles {
    train_path: PathBuf,
    interned: Interned,
    train: Samples,
    test: Samples,
    review_counts: HashMap<String, u64>,
    summaries: Vec<FileSummary>,
}

fn read_files(dir: &Path, strictness: Strictness) -> Result<DienFiles, DataError> {
    let missing = |what: &str| DataError::Invalid { path: dir.to_path_buf(), message: format!("no {what} file here") };
    let train_path = first_existing(dir, &["local_train_splitByUser", "local_train"])
        .ok_or_else(|| missing("local_train_splitByUser"))?;
    let test_path = first_existing(dir, &["local_test_splitByUser", "local_test"])
        .ok_or_else(|| missing("local_test_splitByUser"))?;
    let mut interned = Interned::default();
    interned.cats.intern(DEFAULT_CAT);
    let (mut train, mut test) = (Samples::default(), Samples::default());
    let mut summaries: Vec<FileSummary> = Vec::new();
    // Each line interned as it is read: the files' text is not held (it took ten times its size).
    summaries.push(input::parse_lines(&train_path, strictness, parse_line, |l, _| interned.add(&mut train, l))?);
    summaries.push(input::parse_lines(&test_path, strictness, parse_line, |l, _| interned.add(&mut test, l))?);
    for (path, samples) in [(&train_path, &train), (&test_path, &test)] {
        if samples.is_empty() {
            return Err(DataError::Invalid { path: path.clone(), message: "no valid sample line".into() });
        }
    }
    // item-info: the category of items that only appear in it (or that it corrects).
    if let Some(path) = first_existing(dir, &["item-info"]) {
        let parse = |line: &str| -> Result<(String, String), Bad> {
            match line.split_once('\t') {
                Some((a, c)) if !a.is_empty() && !c.contains('\t') => Ok((a.to_string(), c.to_string())),
                _ => Err(Bad::new(BadKind::Malformed, "expected `asin \\t category`")),
            }
        };
        let mut pairs = Vec::new();
        summaries.push(input::parse_lines(&path, strictness, parse, |p, _| pairs.push(p))?);
        for (asin, cat) in pairs {
            let cat = interned.cats.intern(&cat);
            if let Some(item) = interned.items.get(&asin) {
                interned.item_cat[item as usize] = cat;
            }
        }
    }
    // reviews-info: one entry per review, for popularity counts.
    let mut review_counts: HashMap<String, u64> = HashMap::new();
    if let Some(path) = first_existing(dir, &[REVIEWS_INFO]) {
        let parse = |line: &str| -> Result<String, Bad> {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 4 {
                return Err(Bad::new(BadKind::Malformed, format!("{} fields, expected 4", f.len())));
            }
            f[3].parse::<i64>().map_err(|_| Bad::new(BadKind::WrongType, "time is not an integer"))?;
            Ok(f[1].to_string())
        };
        summaries.push(input::parse_lines(&path, strictness, parse, |asin, _| {
            *review_counts.entry(asin).or_default() += 1
        })?);
    }
    Ok(DienFiles { train_path, interned, train, test, review_counts, summaries })
}

/// The item popularity DIEN's no-click items are drawn by, put in `vocab.items.counts`; returns
/// where it came from (`notes.item_counts`).
fn choose_item_popularity(
    vocab: &mut Vocabularies,
    review_counts: &HashMap<String, u64>,
    dir: &Path,
    train_path: &Path,
    warnings: &mut Vec<String>,
) -> &'static str {
    // DIEN draws no-click items by popularity in reviews-info, as its reference code does;
    // without it (or when it names too few of these items), by the training samples' counts,
    // which `vocab.items.counts` now holds. Either way said, never a silent aux loss of 0.
    let drawable = |counts: &[u64]| counts.iter().skip(1).filter(|&&c| c > 0).count();
    let reviews_path = dir.join(REVIEWS_INFO);
    let from_reviews: Vec<u64> = vocab
        .items
        .names
        .iter()
        .enumerate()
        .map(|(id, name)| if id == 0 { 0 } else { review_counts.get(name).copied().unwrap_or(0) })
        .collect();
    let item_counts = if drawable(&from_reviews) >= 2 {
        tracing::info!(
            items = drawable(&from_reviews),
            reviews = review_counts.values().sum::<u64>(),
            "item popularity for DIEN's no-click items: {}",
            reviews_path.display()
        );
        vocab.items.counts = from_reviews;
        COUNTS_FROM_REVIEWS
    } else {
        let why = if review_counts.is_empty() && !reviews_path.exists() {
            format!("there is no {}", reviews_path.display())
        } else {
            format!("{} names {} of the items", reviews_path.display(), drawable(&from_reviews))
        };
        warnings.push(format!(
            "{why}: DIEN's no-click items are drawn by the items' counts in the training samples \
         (targets and histories: {} items) instead of by reviews",
            drawable(&vocab.items.counts)
        ));
        COUNTS_FROM_TRAINING
    };
    if drawable(&vocab.items.counts) < 2 {
        warnings.push(format!(
            "{}: fewer than 2 items have a count: DIEN's auxiliary loss cannot draw no-click items",
            train_path.display()
        ));
    }
    item_counts
}

/// Prepare a dataset directory from DIEN's files in `dir`.
pub fn prepare(dir: &Path, strictness: Strictness, out: &Path) -> Result<Report, DataError> {
    let started = Instant::now();
    let DienFiles { train_path, interned, train, test, review_counts, summaries } = read_files(dir, strictness)?;
    let staging = Staging::new(out)?;
    let mut warnings: Vec<String> = summaries.iter().flat_map(issue_warnings).collect();
    let pickles = PICKLES.map(|n| dir.join(n));
    let present: Vec<&str> = PICKLES.iter().zip(&pickles).filter(|(_, p)| p.exists()).map(|(n, _)| *n).collect();
    let from_pickles = present.len() == PICKLES.len();
    if !present.is_empty() && !from_pickles {
        return Err(DataError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "only {} of DIEN's vocabulary pickles ({}) {} here: give all three, or none to number by frequency",
                present.join(" and "),
                PICKLES.join(", "),
                if present.len() == 1 { "is" } else { "are" }
            ),
        });
    }
    let (mut vocab, maps) = if from_pickles {
        vocab_from_pickles(&pickles, &interned, &train, &train_path, &mut warnings)?
    } else {
        vocab::build(&train, &interned.users, &interned.items, &interned.cats, &interned.item_cat)
    };
    let train_v = train.remap(&maps.users, &maps.items, &maps.cats);
    let test_v = test.remap(&maps.users, &maps.items, &maps.cats);
    if from_pickles {
        // The pickles hold ids only: count like `vocab::build` does for its own vocabularies.
        let [users, items, cats] = training_counts(&train_v, &vocab);
        (vocab.users.counts, vocab.items.counts, vocab.cats.counts) = (users, items, cats);
    }
    let item_counts = choose_item_popularity(&mut vocab, &review_counts, dir, &train_path, &mut warnings);
    let max_hist_len = [&train_v, &test_v]
        .iter()
        .flat_map(|s| s.hist_offsets.windows(2).map(|w| (w[1] - w[0]) as usize))
        .max()
        .unwrap_or(0);
    if max_hist_len == 0 {
        return Err(DataError::Invalid {
            path: train_path.clone(),
            message: "every sample's history is empty (here and in the test file): the models learn from behaviour \
                      histories, so there is nothing to train them on"
                .into(),
        });
    }
    super::input::check_unreplaced(&summaries)?;
    let sources = summaries.iter().map(source_entry).collect();
    let meta = write_dataset(
        &staging,
        DatasetParts {
            source: "dien_files".into(),
            protocol: "dien".into(),
            seed: 0,
            max_hist_len,
            reviews: review_counts.values().sum(),
            sources,
            vocab: &vocab,
            train: &train_v,
            test: &test_v,
            oracle: None,
            attributes: None,
            item_interactions: None,
            notes: json!({
                "vocabularies": if from_pickles { "pickles" } else { "frequency" },
                "item_counts": item_counts,
            }),
        },
    )?;
    staging.commit()?;
    let raw: u64 = summaries.iter().map(|s| s.raw_bytes).sum();
    let secs = started.elapsed().as_secs_f64();
    Ok(Report {
        out: out.to_path_buf(),
        meta,
        seconds: secs,
        review_mb_per_s: raw as f64 / 1e6 / secs.max(1e-9),
        reviews_per_s: (train_v.len() + test_v.len()) as f64 / secs.max(1e-9),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_dien_line_with_crlf_and_0x02_parses() {
        // Line 1 of the real DIEN sample (shared fixtures, dien-books/local_test), CR removed by
        // the line reader.
        let l = parse_line("0\tA38AAPXSJN4C5G\t0001714384\tBooks\t0000015393\u{2}0000230022\tdefault_cat\u{2}Books")
            .unwrap();
        assert_eq!(
            (l.label, l.user.as_str(), l.item.as_str(), l.cat.as_str()),
            (0, "A38AAPXSJN4C5G", "0001714384", "Books")
        );
        assert_eq!(l.hist_items, ["0000015393", "0000230022"]);
        assert_eq!(l.hist_cats, ["default_cat", "Books"]);
    }

    #[test]
    fn bad_dien_lines_are_classified() {
        assert_eq!(parse_line("1\tA\tB\tBooks").unwrap_err().kind, BadKind::Truncated);
        assert_eq!(parse_line("2\tA\tB\tBooks\tx\ty").unwrap_err().kind, BadKind::WrongType);
        assert_eq!(parse_line("1\tA\tB\tBooks\tx\u{2}z\ty").unwrap_err().kind, BadKind::Malformed);
        assert_eq!(parse_line("1\t\tB\tBooks\tx\ty").unwrap_err().kind, BadKind::MissingField);
    }
}
