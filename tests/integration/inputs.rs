//! Broken and hostile inputs to `micn prepare` end to end: DIEN's vocabulary pickles that cannot
//! be right (empty, an id far beyond the entries, duplicate ids, swapped files, nesting a million
//! deep, an incomplete set), DIEN's popularity counts when `reviews-info` is missing, and a 2014
//! meta line nested a million deep. Every one is a clear error naming the file (and the key or
//! line) or a stated fallback; nothing panics, aborts or hangs. (Cut and damaged gzip streams:
//! see `prepare.rs`.)
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use micn::data::batch::{NoClickCounts, NoClickSampler};
use micn::data::loader::{EpochLoader, LoaderConfig};
use micn::data::Dataset;

use crate::prepare::{
    assert_nothing_left, dataset_json, fixtures, micn, pickle_str_int_dict, prepare_2014, run_fails, small_corpus,
    stderr, write_lines,
};
use crate::run_ok;

/// One line of the real DIEN sample: uid, mid, cat and the history's mids and cats.
struct Line {
    user: String,
    item: String,
    cat: String,
    hist_items: Vec<String>,
    hist_cats: Vec<String>,
}

/// The 38 lines of `dien-books/local_test` (CRLF, lists joined by 0x02), split by hand.
fn real_dien_lines() -> Vec<Line> {
    let text = std::fs::read_to_string(fixtures().join("dien-books/local_test")).unwrap();
    let list = |s: &str| if s.is_empty() { Vec::new() } else { s.split('\u{2}').map(String::from).collect() };
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "{l:?}");
            Line {
                user: f[1].into(),
                item: f[2].into(),
                cat: f[3].into(),
                hist_items: list(f[4]),
                hist_cats: list(f[5]),
            }
        })
        .collect()
}

/// A DIEN directory made of the real sample (as both train and test file) and `item-info`;
/// `reviews-info` only when asked.
fn dien_dir(root: &Path, with_reviews_info: bool) -> PathBuf {
    let src = fixtures().join("dien-books");
    let dir = root.join("dien");
    std::fs::create_dir_all(&dir).unwrap();
    let mut copies = vec![("local_test", "local_train_splitByUser"), ("local_test", "local_test_splitByUser")];
    copies.push(("item-info", "item-info"));
    if with_reviews_info {
        copies.push(("reviews-info", "reviews-info"));
    }
    for (from, to) in copies {
        std::fs::copy(src.join(from), dir.join(to)).unwrap();
    }
    dir
}

/// DIEN's three vocabularies of `lines`, numbered as DIEN's `generate_voc.py` does: users from
/// 0, items and categories from 1 after `default_mid` / `default_cat` at 0 (names in reverse
/// order, so that ids are not frequency ranks).
fn dien_vocabularies(lines: &[Line]) -> [Vec<(String, u32)>; 3] {
    let mut names: [BTreeSet<String>; 3] = Default::default();
    for l in lines {
        names[0].insert(l.user.clone());
        names[1].extend(std::iter::once(l.item.clone()).chain(l.hist_items.iter().cloned()));
        names[2].extend(std::iter::once(l.cat.clone()).chain(l.hist_cats.iter().cloned()));
    }
    names[2].remove("default_cat");
    let number = |k: usize, first: u32| -> Vec<(String, u32)> {
        names[k].iter().rev().enumerate().map(|(n, name)| (name.clone(), first + n as u32)).collect()
    };
    let mut items = number(1, 1);
    items.push(("default_mid".into(), 0));
    let mut cats = number(2, 1);
    cats.push(("default_cat".into(), 0));
    [number(0, 0), items, cats]
}

const PICKLE_FILES: [&str; 3] = ["uid_voc.pkl", "mid_voc.pkl", "cat_voc.pkl"];

fn write_pickles(dir: &Path, vocabularies: &[Vec<(String, u32)>; 3]) {
    for (file, entries) in PICKLE_FILES.iter().zip(vocabularies) {
        std::fs::write(dir.join(file), pickle_str_int_dict(entries)).unwrap();
    }
}

fn prepare_dien(dir: &Path, out: &Path) -> std::process::Command {
    let mut cmd = micn();
    cmd.args(["prepare", "--input-format", "dien", "--dien-dir"]).arg(dir).arg("--out").arg(out);
    cmd
}

#[test]
fn dien_pickles_without_reviews_info_draw_no_clicks_by_the_training_samples_counts() {
    let lines = real_dien_lines();
    assert_eq!(lines.len(), 38);
    let tmp = tempfile::tempdir().unwrap();
    let dir = dien_dir(tmp.path(), false);
    let vocabularies = dien_vocabularies(&lines);
    write_pickles(&dir, &vocabularies);
    let out = tmp.path().join("out");
    let done = run_ok(&mut prepare_dien(&dir, &out));
    let log = stderr(&done);
    assert!(
        log.contains("reviews-info: DIEN's no-click items are drawn by the items' counts in the training"),
        "{log}"
    );
    let d = dataset_json(&out);
    assert_eq!(
        (d["notes"]["vocabularies"].as_str(), d["notes"]["item_counts"].as_str()),
        (Some("pickles"), Some("training samples"))
    );

    // Each item's count is its occurrences as target or in a history, counted here from the
    // file's text (the pickles' ids, not frequency ranks, index them).
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for l in &lines {
        for item in std::iter::once(&l.item).chain(&l.hist_items) {
            *expected.entry(item.as_str()).or_default() += 1;
        }
    }
    let data = Arc::new(Dataset::open(&out).unwrap());
    let items = &data.vocab.items;
    for (name, id) in &vocabularies[1] {
        let want = if *id == 0 { 0 } else { expected.get(name.as_str()).copied().unwrap_or(0) };
        assert_eq!(items.counts[*id as usize], want, "count of {name} (id {id})");
    }
    assert_eq!(items.counts.iter().filter(|&&c| c > 0).count(), expected.len(), "every item of the file counted");

    // The loader draws no-click items: real ones, never the clicked one (the aux loss was
    // silently 0 when it drew none).
    let cfg = LoaderConfig {
        seed: 3,
        global_batch: 8,
        world: 1,
        rank: 0,
        max_hist_len: 20,
        drop_remainder: true,
        prefetch: 2,
        noclick: true,
    };
    let (mut positions, mut expected_positions) = (0, 0);
    for batch in EpochLoader::new(Arc::clone(&data), &cfg, 0, 0).unwrap() {
        // Real history positions: each sample's history, at most max_hist_len of it.
        expected_positions +=
            batch.sample_ids.iter().map(|&i| lines[i as usize].hist_items.len().min(20)).sum::<usize>();
        let (noclick_items, noclick_cats) = batch.noclick.as_ref().expect("no-click items drawn");
        for at in (0..batch.hist_mask.len()).filter(|&at| batch.hist_mask[at] > 0.0) {
            let item = noclick_items[at] as usize;
            assert!(item != 0 && item as i64 != batch.hist_items[at] && items.counts[item] > 0, "position {at}");
            assert_eq!(noclick_cats[at], data.vocab.item_cat[item] as i64);
            positions += 1;
        }
    }
    assert!(positions > 0 && positions == expected_positions, "{positions} of {expected_positions} positions");

    // With reviews-info, its review counts, as DIEN's reference code does, and it says so.
    let dir = dien_dir(&tmp.path().join("with"), true);
    write_pickles(&dir, &vocabularies);
    let out = tmp.path().join("with-reviews");
    let done = run_ok(&mut prepare_dien(&dir, &out));
    assert!(stderr(&done).contains("item popularity for DIEN's no-click items"), "{}", stderr(&done));
    assert_eq!(dataset_json(&out)["notes"]["item_counts"], "reviews-info");
}

#[test]
fn a_dataset_without_item_counts_draws_no_clicks_by_the_training_archive() {
    // What an older micn prepared from DIEN's pickles without reviews-info: every count 0.
    let tmp = tempfile::tempdir().unwrap();
    let dir = dien_dir(tmp.path(), false);
    write_pickles(&dir, &dien_vocabularies(&real_dien_lines()));
    let out = tmp.path().join("out");
    run_ok(&mut prepare_dien(&dir, &out));
    let items_tsv = out.join("items.tsv");
    let zeroed: String = std::fs::read_to_string(&items_tsv)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            format!("{}\t0\t{}\n", f[0], f[2])
        })
        .collect();
    std::fs::write(&items_tsv, &zeroed).unwrap();
    // Where dataset.json checks the vocabularies' sizes and checksums, restamp items.tsv.
    let mut d = dataset_json(&out);
    if d["vocabularies"]["items"].is_object() {
        d["vocabularies"]["items"]["bytes"] = zeroed.len().into();
        d["vocabularies"]["items"]["xxh3"] = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(zeroed.as_bytes())).into();
        std::fs::write(out.join("dataset.json"), serde_json::to_string_pretty(&d).unwrap()).unwrap();
    }
    let data = Dataset::open(&out).unwrap();
    assert!(data.vocab.items.counts.iter().all(|&c| c == 0));
    let (_, counts) = NoClickSampler::for_dataset(&data, 1).expect("a sampler from the training archive");
    assert_eq!(counts, NoClickCounts::TrainingSamples);
}

/// Prepare `dir` and require a failure whose message holds every one of `needles`.
fn refused(dir: &Path, out: &Path, needles: &[&str]) {
    let err = run_fails(&mut prepare_dien(dir, out));
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_nothing_left(out);
}

#[test]
fn vocabulary_pickles_that_cannot_be_right_are_refused_naming_the_file() {
    let lines = real_dien_lines();
    let good = dien_vocabularies(&lines);
    let tmp = tempfile::tempdir().unwrap();
    let dir = dien_dir(tmp.path(), true);
    let out = tmp.path().join("out");
    let path = |file: &str| dir.join(file).display().to_string();
    let with = |file: &str, bytes: &[u8]| {
        write_pickles(&dir, &good);
        std::fs::write(dir.join(file), bytes).unwrap();
    };

    // CPython 3.11: pickle.dumps({}, protocol=2).
    with("cat_voc.pkl", b"\x80\x02}q\x00.");
    refused(&dir, &out, &[&format!("{}: the pickle holds an empty dict", path("cat_voc.pkl"))]);

    // CPython 3.11: pickle.dumps({'x': 2_000_000_000}, protocol=2). A table up to the largest
    // id took 48 GB; ids must number the entries.
    with("mid_voc.pkl", b"\x80\x02}q\x00X\x01\x00\x00\x00xq\x01J\x00\x945ws.");
    refused(&dir, &out, &[&format!("{}: key \"x\": id 2000000000 is outside 0..=1", path("mid_voc.pkl"))]);

    // Two users with one id.
    let mut users = good[0].clone();
    let (first, second) = (users[0].0.clone(), users[1].0.clone());
    users[1].1 = users[0].1;
    with("uid_voc.pkl", &pickle_str_int_dict(&users));
    refused(&dir, &out, &[&path("uid_voc.pkl"), &format!("keys {first:?} and {second:?} both have id 0")]);

    // The item and category vocabularies swapped: found out by the data's names, not the ids.
    write_pickles(&dir, &[good[0].clone(), good[2].clone(), good[1].clone()]);
    refused(
        &dir,
        &out,
        &[
            &format!("{}: not the item vocabulary of these files: only 0 of the", path("mid_voc.pkl")),
            "they are in cat_voc.pkl: were the pickles swapped?",
        ],
    );
    // The item vocabulary given as the category one as well.
    write_pickles(&dir, &[good[0].clone(), good[1].clone(), good[1].clone()]);
    refused(&dir, &out, &[&format!("{}: not the category vocabulary of these files", path("cat_voc.pkl"))]);

    // {'a': {'a': {'a': ...}}} a million deep, the way CPython's protocol 2 writes one level
    // (`}`, key, value, SETITEM): the old reader overflowed its stack (exit 134).
    let depth = 1_000_000;
    let mut deep = b"\x80\x02}".to_vec();
    for _ in 0..depth {
        deep.extend_from_slice(b"X\x01\x00\x00\x00a}");
    }
    deep.extend(std::iter::repeat_n(b's', depth));
    deep.push(b'.');
    with("uid_voc.pkl", &deep);
    refused(
        &dir,
        &out,
        &[&format!("{}: not a vocabulary pickle", path("uid_voc.pkl")), "key \"a\" holds a nested dict"],
    );

    // Not a pickle at all, and a cut one.
    with("cat_voc.pkl", br#"{"Books": 1}"#);
    refused(
        &dir,
        &out,
        &[&format!("{}: not a vocabulary pickle", path("cat_voc.pkl")), "unsupported pickle opcode 0x7b"],
    );
    let whole = pickle_str_int_dict(&good[2]);
    with("cat_voc.pkl", &whole[..whole.len() / 2]);
    refused(&dir, &out, &[&path("cat_voc.pkl"), "truncated pickle"]);

    // Two of the three: a half-applied reference numbering is refused, not silently replaced.
    write_pickles(&dir, &good);
    std::fs::remove_file(dir.join("cat_voc.pkl")).unwrap();
    refused(&dir, &out, &["only uid_voc.pkl and mid_voc.pkl of DIEN's vocabulary pickles"]);

    // And the good ones still prepare.
    write_pickles(&dir, &good);
    run_ok(&mut prepare_dien(&dir, &out));
}

#[test]
fn a_meta_line_nested_a_million_deep_is_a_bad_line_not_a_crash() {
    let corpus = small_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = (tmp.path().join("reviews.json"), tmp.path().join("meta.json"));
    write_lines(&reviews, &corpus.reviews);
    let mut lines = corpus.meta.clone();
    let depth = 1_000_000;
    lines.insert(3, format!("{{'asin': 'B000000099', 'categories': {}{}}}", "[".repeat(depth), "]".repeat(depth)));
    write_lines(&meta, &lines);
    let out = tmp.path().join("lenient");
    let done = run_ok(&mut prepare_2014(&reviews, &meta, &out, &[]));
    assert!(stderr(&done).contains("meta.json: skipped malformed: 1 (line 4)"), "{}", stderr(&done));
    let out = tmp.path().join("strict");
    let err = run_fails(&mut prepare_2014(&reviews, &meta, &out, &["--strict"]));
    assert!(err.contains("meta.json:4: malformed") && err.contains("nesting deeper than 64 levels"), "{err}");
    assert_nothing_left(&out);
}

#[test]
fn a_test_split_of_one_class_is_refused_before_the_first_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dien_dir(tmp.path(), true);
    // Only the clicked samples of the test file: nothing to tell them from.
    let test = dir.join("local_test_splitByUser");
    let clicked: String = std::fs::read_to_string(&test)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("1\t"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&test, clicked).unwrap();
    let data = tmp.path().join("data");
    run_ok(&mut prepare_dien(&dir, &data));
    let run = tmp.path().join("run");
    let data_dir = format!("data.dir={:?}", data.display().to_string());
    let cfg = crate::small_config(&run, &[&data_dir, "data.max_hist_len=2", "data.valid_share=0"]);
    let e = micn::train::train(&cfg, &micn::dist::SingleProcess).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("the test split holds 19 samples, 19 of them clicked"), "{text}");
    assert!(e.is_input_error(), "{text}");
    assert!(!run.exists(), "nothing is written for a refused run");
}
