//! `micn prepare`, `micn synth` and `micn data stats` end to end: the real fixtures (Amazon
//! Electronics 2014, DIEN Books), the protocols' counts, determinism, every kind of bad input, a
//! killed preparation, corrupted archives and the synthetic oracle.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use micn::data::Dataset;

use crate::{micn_bin, run_ok};

/// `tests/fixtures` (real Amazon-format samples, provenance in its README).
pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    assert!(
        dir.join("amazon-electronics-2014").is_dir() && dir.join("dien-books").is_dir(),
        "the real-data fixtures are missing: expected {} with amazon-electronics-2014/ and dien-books/",
        dir.display()
    );
    dir
}

pub(crate) fn micn() -> Command {
    Command::new(micn_bin())
}

/// `micn prepare --input-format amazon2014 ...` with the given extra flags.
pub(crate) fn prepare_2014(reviews: &Path, meta: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = micn();
    cmd.args(["prepare", "--input-format", "amazon2014", "--reviews"])
        .arg(reviews)
        .arg("--meta")
        .arg(meta)
        .arg("--out")
        .arg(out)
        .args(extra);
    cmd
}

/// Run, require failure, and return standard error.
pub(crate) fn run_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} succeeded but should have failed\nstderr:\n{stderr}");
    assert!(stderr.contains("error: "), "no error message:\n{stderr}");
    stderr
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn dataset_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("dataset.json")).expect("dataset.json");
    serde_json::from_str(&text).expect("dataset.json is JSON")
}

/// After a failed preparation neither the output nor its staging directory may exist.
pub(crate) fn assert_nothing_left(out: &Path) {
    assert!(!out.exists(), "{} exists after a failed preparation", out.display());
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let prefix = format!(".{name}.partial-");
    for entry in std::fs::read_dir(out.parent().unwrap()).unwrap() {
        let entry = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!entry.starts_with(&prefix), "staging directory {entry} left behind");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `12345` as `12,345`, as micn's messages write sizes.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decompress what can be decompressed of a (possibly cut) gzip file.
pub(crate) fn gunzip_prefix(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // A cut stream ends in an error; the bytes before it are kept in `out`.
    let _ = flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out);
    out
}

/// Sample counts the protocols must give, from (user, item) pairs in file order with
/// duplicates already removed: users with at least two reviews, and their reviews.
pub(crate) fn qualifying(pairs: &[(String, String)]) -> (usize, usize) {
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for (user, _) in pairs {
        *per_user.entry(user).or_default() += 1;
    }
    let users = per_user.values().filter(|&&n| n >= 2).count();
    let reviews = per_user.values().filter(|&&n| n >= 2).sum();
    (users, reviews)
}

/// (reviewerID, asin) of every complete JSON review line, first occurrence of a pair only.
pub(crate) fn review_pairs(text: &[u8]) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    let complete = &text[..text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1)];
    for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("a complete review line is JSON");
        let pair = (v["reviewerID"].as_str().unwrap().to_string(), v["asin"].as_str().unwrap().to_string());
        if seen.insert(pair.clone()) {
            pairs.push(pair);
        }
    }
    pairs
}

/// One review line with the fields of the real dumps.
fn review(user: &str, item: &str, time: i64) -> String {
    format!(
        r#"{{"reviewerID": "{user}", "asin": "{item}", "reviewerName": "R. Reader", "helpful": [0, 0], "reviewText": "Works as described.", "overall": 4.0, "summary": "Fine", "unixReviewTime": {time}, "reviewTime": "01 1, 2013"}}"#
    )
}

/// One 2014 meta line (a Python dict literal; titles with an apostrophe in double quotes, as
/// Python's repr writes them).
fn meta_2014(item: &str, category: &str, title: &str) -> String {
    let title = if title.contains('\'') { format!("\"{title}\"") } else { format!("'{title}'") };
    format!("{{'asin': '{item}', 'categories': [['Electronics', '{category}']], 'title': {title}, 'price': 9.99}}")
}

/// A small, fully known corpus: 12 users × 4 reviews of 10 items (every item among some user's
/// first two reviews, so it reaches the `din` training vocabulary), one line per review, and
/// meta lines for all items.
pub(crate) struct Corpus {
    pub(crate) reviews: Vec<String>,
    pub(crate) meta: Vec<String>,
}

fn item(i: usize) -> String {
    format!("B00000{i:04}")
}

fn user(u: usize) -> String {
    format!("A{u:03}USER")
}

pub(crate) fn small_corpus() -> Corpus {
    let mut reviews = Vec::new();
    for u in 0..12 {
        for k in 0..4 {
            reviews.push(review(&user(u), &item((u + 3 * k) % 10), 1_360_000_000 + (k as i64) * 86_400));
        }
    }
    let meta = (0..10).map(|i| meta_2014(&item(i), &format!("Cat {}", i % 3), &format!("Thing {i}"))).collect();
    Corpus { reviews, meta }
}

pub(crate) fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Synthetic raw files from `micn synth` (quickstart preset, sizes overridable).
pub(crate) fn synth(out: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    run_ok(micn().args(["synth", "--preset", "quickstart", "--out"]).arg(out).args(extra));
    (out.join("reviews_Synthetic_5.json"), out.join("meta_Synthetic.json"))
}

#[test]
fn real_electronics_sample_prepares_with_both_protocols_and_the_published_counts() {
    let cut = fixtures().join("amazon-electronics-2014/reviews_Electronics_5.head.json.gz");
    // The fixture is the first 81,499 bytes of the real gzip file: 290 complete lines and a
    // cut 291st. Count independently of micn what the protocols must give.
    let text = gunzip_prefix(&std::fs::read(&cut).unwrap());
    let pairs = review_pairs(&text);
    assert_eq!(pairs.len(), 290, "complete review lines in the fixture");
    let items: Vec<String> =
        pairs.iter().map(|(_, i)| i.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert_eq!(items.len(), 6);
    let (users2, reviews2) = qualifying(&pairs);

    // No real meta sample exists: write one for five of the six items, the 2014 way.
    let tmp = tempfile::tempdir().unwrap();
    let meta = tmp.path().join("meta_Electronics.json");
    let titles = ["Rand McNally's TND 700 GPS", "Kindle Cover", "Barnes & Noble's Nook", "Nook Simple Touch", "Mount"];
    let lines: Vec<String> =
        items.iter().skip(1).zip(titles).map(|(i, t)| meta_2014(i, "GPS & Navigation", t)).collect();
    write_lines(&meta, &lines);

    // As it is, the fixture is an interrupted download: a broken file, refused in either mode,
    // naming it and how far it was read (the README's byte and line counts).
    for extra in [&[][..], &["--strict"][..]] {
        let out = tmp.path().join("cut");
        let err = run_fails(&mut prepare_2014(&cut, &meta, &out, extra));
        assert!(err.contains("reviews_Electronics_5.head.json.gz: the gzip stream ends early"), "{err}");
        assert!(err.contains("all 81,499 stored bytes") && err.contains("(290 complete lines)"), "{err}");
        assert_nothing_left(&out);
    }

    // Its 290 complete lines, compressed whole, are real data to prepare.
    let complete = &text[..text.iter().rposition(|&b| b == b'\n').unwrap() + 1];
    let gz = tmp.path().join("reviews_Electronics_5.complete.json.gz");
    std::fs::write(&gz, gzip(complete)).unwrap();
    for (protocol, max_hist) in [("din", "10"), ("dien", "20")] {
        let out = tmp.path().join(protocol);
        run_ok(&mut prepare_2014(&gz, &meta, &out, &["--protocol", protocol, "--max-hist-len", max_hist]));
        let d = dataset_json(&out);
        let (train, test) =
            (d["counts"]["train_samples"].as_u64().unwrap(), d["counts"]["test_samples"].as_u64().unwrap());
        if protocol == "din" {
            // DIN's rule (2,608,764 and 192,403 on the full Electronics file).
            assert_eq!(train as usize, 2 * (reviews2 - 2 * users2), "din train");
            assert_eq!(test as usize, 2 * users2, "din test");
        } else {
            // One (positive, negative) pair per qualifying user, users split ~90/10: with this
            // file's single qualifying user one split is empty.
            assert_eq!((train + test) as usize, 2 * users2, "dien pairs");
        }
        assert_eq!(d["counts"]["reviews"], 290);
        let source = &d["sources"][0];
        assert_eq!(source["lines"], 290);
        // A cut stream is an error (above), so dataset.json has no `truncated_gzip` flag.
        assert!(source.get("truncated_gzip").is_none(), "{source}");
        assert_eq!(source["skipped"], serde_json::json!({}));
        assert_eq!(d["notes"]["items_without_meta"], 1);

        let stats = run_ok(micn().args(["data", "stats", "--json"]).arg(&out));
        let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats --json is JSON");
        assert_eq!(stats["protocol"], protocol);
        assert_eq!(stats["reviews"], 290);
        assert_eq!(stats["train"]["samples"], train);
        assert_eq!(stats["test"]["samples"], test);
        assert_eq!(stats["test"]["positives"].as_u64().unwrap() * 2, test, "one positive per pair");
        assert_eq!(stats["items"], d["counts"]["items"]);
    }
}

#[test]
fn synthetic_data_gives_the_din_and_dien_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = synth(&tmp.path().join("raw"), &["--users", "400", "--items", "600"]);
    let pairs = review_pairs(&std::fs::read(&reviews).unwrap());
    let (users2, reviews2) = qualifying(&pairs);
    assert!(users2 > 300, "synthetic users have at least 5 reviews");

    let out = tmp.path().join("din");
    run_ok(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", "din"]));
    let d = dataset_json(&out);
    assert_eq!(d["counts"]["train_samples"].as_u64().unwrap() as usize, 2 * (reviews2 - 2 * users2));
    assert_eq!(d["counts"]["test_samples"].as_u64().unwrap() as usize, 2 * users2);

    let out = tmp.path().join("dien");
    run_ok(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", "dien"]));
    let data = Dataset::open(&out).unwrap();
    let (train, test) = (data.train.samples(), data.test.samples());
    assert_eq!(train.len() + test.len(), 2 * users2);
    let share = test.len() as f64 / (train.len() + test.len()) as f64;
    assert!((0.05..0.15).contains(&share), "test share {share}, expected about 0.1");
    // Split by user: no test user appears in training, so every test user is unknown (id 0).
    assert!(test.users.iter().all(|u| u.to_native() == 0), "dien test users are unseen in training");
    let train_keys: HashSet<u32> = train.user_keys.iter().map(|k| k.to_native()).collect();
    assert!(test.user_keys.iter().all(|k| !train_keys.contains(&k.to_native())));
}

/// One parsed line of a DIEN sample file.
struct DienLine {
    label: u8,
    fields: [String; 3],
    hist_items: Vec<String>,
    hist_cats: Vec<String>,
}

fn dien_lines(bytes: &[u8]) -> Vec<DienLine> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "{l:?}");
            let list = |s: &str| if s.is_empty() { Vec::new() } else { s.split('\u{2}').map(String::from).collect() };
            DienLine {
                label: f[0].parse().unwrap(),
                fields: [f[1].into(), f[2].into(), f[3].into()],
                hist_items: list(f[4]),
                hist_cats: list(f[5]),
            }
        })
        .collect()
}

/// A Python pickle (protocol 2, as `pickle.dumps(d, protocol=2)` writes, minus the memo
/// opcodes) of a str → int dict. Checked once against CPython 3.11's `pickle.loads`.
pub(crate) fn pickle_str_int_dict(entries: &[(String, u32)]) -> Vec<u8> {
    let mut b = vec![0x80, 2, b'}', b'('];
    for (key, value) in entries {
        b.push(b'X');
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key.as_bytes());
        match *value {
            v @ 0..=0xff => b.extend_from_slice(&[b'K', v as u8]),
            v @ 0x100..=0xffff => {
                b.push(b'M');
                b.extend_from_slice(&(v as u16).to_le_bytes());
            }
            v => {
                b.push(b'J');
                b.extend_from_slice(&(v as i32).to_le_bytes());
            }
        }
    }
    b.extend_from_slice(b"u.");
    b
}

#[test]
fn hand_written_pickles_are_what_cpython_writes_minus_the_memo() {
    // CPython 3.11: pickle.dumps({'a': 1, 'B01': 300, 'c': 70000}, protocol=2). Its BINPUT
    // opcodes (`q n`, memo entries) are optional; CPython's pickle.loads reads our bytes
    // without them as the same dict (checked once by hand).
    let cpython: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x03\x00\x00\x00B01q\x02M,\x01X\x01\x00\x00\x00cq\x03Jp\x11\x01\x00u.";
    let mut without_memo = cpython.to_vec();
    for memo in (0u8..4).rev() {
        let at = without_memo.windows(2).rposition(|w| w == [b'q', memo]).unwrap();
        without_memo.drain(at..at + 2);
    }
    let ours = pickle_str_int_dict(&[("a".into(), 1), ("B01".into(), 300), ("c".into(), 70000)]);
    assert_eq!(ours, without_memo);
    let read = micn::data::pickle::read_str_int_dict(&ours).unwrap();
    assert_eq!((read["a"], read["B01"], read["c"]), (1, 300, 70000));
}

/// Every archived id mapped back through the vocabularies gives the line it came from.
fn assert_round_trip(data: &Dataset, lines: &[DienLine]) {
    let v = &data.vocab;
    for (name, s) in [("train", data.train.samples()), ("test", data.test.samples())] {
        assert_eq!(s.len(), lines.len(), "{name}: one sample per line");
        for (i, l) in lines.iter().enumerate() {
            let at = |what: &str| format!("{name} sample {i}: {what}");
            assert_eq!(s.labels[i], l.label, "{}", at("label"));
            assert_eq!(v.users.names[s.users[i].to_native() as usize], l.fields[0], "{}", at("uid"));
            assert_eq!(v.items.names[s.items[i].to_native() as usize], l.fields[1], "{}", at("mid"));
            assert_eq!(v.cats.names[s.cats[i].to_native() as usize], l.fields[2], "{}", at("cat"));
            let range = s.history_range(i);
            let items: Vec<&str> =
                s.hist_items[range.clone()].iter().map(|&id| v.items.names[id.to_native() as usize].as_str()).collect();
            let cats: Vec<&str> =
                s.hist_cats[range].iter().map(|&id| v.cats.names[id.to_native() as usize].as_str()).collect();
            assert_eq!(items, l.hist_items, "{}", at("hist mids"));
            assert_eq!(cats, l.hist_cats, "{}", at("hist cats"));
        }
    }
}

#[test]
fn real_dien_sample_round_trips_ids_with_and_without_vocabulary_pickles() {
    let src = fixtures().join("dien-books");
    let sample = std::fs::read(src.join("local_test")).unwrap();
    assert!(sample.windows(2).any(|w| w == b"\r\n") && sample.contains(&2u8), "the fixture has CRLF and 0x02");
    let lines = dien_lines(&sample);
    assert_eq!(lines.len(), 38);
    assert!(lines.iter().any(|l| l.hist_cats.iter().any(|c| c == "default_cat")), "the fixture has default_cat");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dien");
    std::fs::create_dir(&dir).unwrap();
    for (from, to) in [
        ("local_test", "local_train_splitByUser"),
        ("local_test", "local_test_splitByUser"),
        ("item-info", "item-info"),
        ("reviews-info", "reviews-info"),
    ] {
        std::fs::copy(src.join(from), dir.join(to)).unwrap();
    }
    let prepare = |out: &Path| {
        run_ok(micn().args(["prepare", "--input-format", "dien", "--dien-dir"]).arg(&dir).arg("--out").arg(out));
        Dataset::open(out).unwrap()
    };

    let data = prepare(&tmp.path().join("by-frequency"));
    assert_eq!(data.meta.notes["vocabularies"], "frequency");
    assert_eq!(data.vocab.cats.names[0], "default_cat");
    assert_round_trip(&data, &lines);
    // reviews-info gives the popularity counts: 1,000 reviews.
    assert_eq!(data.meta.counts.reviews, 1000);
    let stats = |out: &Path| String::from_utf8(run_ok(micn().args(["data", "stats"]).arg(out)).stdout).unwrap();
    assert!(stats(&tmp.path().join("by-frequency")).starts_with("source dien_files"), "the data stats below");
    assert!(stats(&tmp.path().join("by-frequency")).contains("\nreviews (reviews-info) 1000  vocabularies"));
    // Without reviews-info the number of reviews is not known, not 0.
    let without = tmp.path().join("dien-without-reviews-info");
    std::fs::create_dir(&without).unwrap();
    for name in ["local_train_splitByUser", "local_test_splitByUser", "item-info"] {
        std::fs::copy(dir.join(name), without.join(name)).unwrap();
    }
    let out = tmp.path().join("without-reviews-info");
    run_ok(micn().args(["prepare", "--input-format", "dien", "--dien-dir"]).arg(&without).arg("--out").arg(&out));
    assert!(stats(&out).contains("\nreviews unknown (no reviews-info)  vocabularies"), "{}", stats(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&run_ok(micn().args(["data", "stats", "--json"]).arg(&out)).stdout).unwrap();
    assert!(json["reviews"].is_null(), "{json}");

    // With DIEN's vocabulary pickles the ids are the pickles' ids. Give them an order unlike
    // frequency order (reverse by name), DIEN's conventions: users from 0, `default_mid` and
    // `default_cat` at 0.
    let mut names: [std::collections::BTreeSet<String>; 3] = Default::default();
    for l in &lines {
        names[0].insert(l.fields[0].clone());
        names[1].extend(std::iter::once(l.fields[1].clone()).chain(l.hist_items.iter().cloned()));
        names[2].extend(std::iter::once(l.fields[2].clone()).chain(l.hist_cats.iter().cloned()));
    }
    names[2].remove("default_cat");
    let mut ids: Vec<HashMap<String, u32>> = Vec::new();
    for (k, (file, first)) in [("uid_voc.pkl", 0u32), ("mid_voc.pkl", 1), ("cat_voc.pkl", 1)].into_iter().enumerate() {
        let mut entries: Vec<(String, u32)> =
            names[k].iter().rev().enumerate().map(|(n, name)| (name.clone(), first + n as u32)).collect();
        match k {
            1 => entries.push(("default_mid".into(), 0)),
            2 => entries.push(("default_cat".into(), 0)),
            _ => {}
        }
        std::fs::write(dir.join(file), pickle_str_int_dict(&entries)).unwrap();
        ids.push(entries.into_iter().collect());
    }
    let data = prepare(&tmp.path().join("with-pickles"));
    assert_eq!(data.meta.notes["vocabularies"], "pickles");
    assert_round_trip(&data, &lines);
    for s in [data.train.samples(), data.test.samples()] {
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(s.users[i].to_native(), ids[0][&l.fields[0]], "uid of line {i}");
            assert_eq!(s.items[i].to_native(), ids[1][&l.fields[1]], "mid of line {i}");
            assert_eq!(s.cats[i].to_native(), ids[2][&l.fields[2]], "cat of line {i}");
            let range = s.history_range(i);
            let hist: Vec<u32> = s.hist_items[range.clone()].iter().map(|x| x.to_native()).collect();
            let want: Vec<u32> = l.hist_items.iter().map(|m| ids[1][m]).collect();
            assert_eq!(hist, want, "hist mids of line {i}");
            let hist: Vec<u32> = s.hist_cats[range].iter().map(|x| x.to_native()).collect();
            let want: Vec<u32> = l.hist_cats.iter().map(|c| ids[2][c]).collect();
            assert_eq!(hist, want, "hist cats of line {i}");
        }
    }
}

/// A training archive of one class (DIEN's file with its unclicked lines left out) is refused by
/// `train` as what it is, not with advice to raise the validation share, which cannot help, nor
/// trained in silence with `data.valid_share = 0`.
#[test]
fn a_training_archive_of_clicks_alone_is_refused_naming_what_would_help() {
    let src = fixtures().join("dien-books");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dien");
    std::fs::create_dir(&dir).unwrap();
    let test = std::fs::read(src.join("local_test")).unwrap();
    let clicked: Vec<u8> =
        test.split_inclusive(|&b| b == b'\n').filter(|l| l.starts_with(b"1\t")).flatten().copied().collect();
    std::fs::write(dir.join("local_train_splitByUser"), clicked).unwrap();
    std::fs::write(dir.join("local_test_splitByUser"), test).unwrap();
    let data = tmp.path().join("data");
    run_ok(micn().args(["prepare", "--input-format", "dien", "--dien-dir"]).arg(&dir).arg("--out").arg(&data));
    for share in ["0", "0.5"] {
        let sets = [
            format!("data.dir={:?}", data.display().to_string()),
            format!("data.valid_share={share}"),
            "data.max_hist_len=2".to_string(),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let cfg = crate::small_config(&tmp.path().join(format!("run-{share}")), &sets);
        let e = micn::train::train(&cfg, &micn::dist::SingleProcess).unwrap_err();
        assert!(e.is_input_error(), "{e}");
        let e = e.to_string();
        assert!(e.contains("the training archive holds 19 samples, 19 of them clicked"), "{e}");
        assert!(e.contains("no validation share can change that"), "{e}");
    }
}

/// Every file of a directory, by name.
pub(crate) fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn same_input_and_seed_give_byte_identical_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = synth(&tmp.path().join("raw"), &["--users", "300", "--items", "200"]);
    for protocol in ["dien", "din"] {
        let run = |name: &str, seed: &str| {
            let out = tmp.path().join(format!("{protocol}-{name}"));
            run_ok(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", protocol, "--seed", seed]));
            files(&out)
        };
        let (a, b) = (run("a", "7"), run("b", "7"));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert!(a.contains_key("train.rkyv") && a.contains_key("oracle.f32"), "{:?}", a.keys());
        for (name, bytes) in &a {
            assert!(*bytes == b[name], "{protocol}: {name} differs between two runs with the same seed");
        }
        let other = run("other-seed", "8");
        assert_ne!(a["train.rkyv"], other["train.rkyv"], "{protocol}: another seed draws other negatives");
    }
}

/// Prepare the small corpus with `bad` inserted as line `at` (1-based) in lenient and strict
/// mode: lenient skips exactly that line, counted under `kind`; strict fails naming the file
/// and the line.
fn check_bad_line(kind: &str, bad: &[u8], at: usize) {
    let corpus = small_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let reviews = tmp.path().join("reviews.json");
    let mut bytes = Vec::new();
    let mut lines: Vec<&[u8]> = corpus.reviews.iter().map(|l| l.as_bytes()).collect();
    lines.insert(at - 1, bad);
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    std::fs::write(&reviews, &bytes).unwrap();
    let meta = tmp.path().join("meta.json");
    write_lines(&meta, &corpus.meta);

    let out = tmp.path().join("lenient");
    let done = run_ok(&mut prepare_2014(&reviews, &meta, &out, &[]));
    let log = stderr(&done);
    assert!(log.contains("reviews.json: skipped") && log.contains(&format!("(line {at})")), "{kind}: {log}");
    let d = dataset_json(&out);
    let source = &d["sources"][0];
    assert_eq!(source["lines"].as_u64().unwrap() as usize, corpus.reviews.len() + 1);
    assert_eq!(source["skipped"], serde_json::json!({ kind: 1 }), "{kind}");
    assert_eq!(source["first_skipped_lines"], serde_json::json!({ kind: [at] }), "{kind}");
    assert_eq!(d["counts"]["reviews"].as_u64().unwrap() as usize, corpus.reviews.len(), "{kind}: the good lines");

    let out = tmp.path().join("strict");
    let err = run_fails(&mut prepare_2014(&reviews, &meta, &out, &["--strict"]));
    assert!(err.contains(&format!("reviews.json:{at}:")), "{kind}: the error must name file and line: {err}");
    assert_nothing_left(&out);
}

#[test]
fn malformed_json_is_skipped_and_counted_or_fatal_with_strict() {
    check_bad_line("malformed", br#"{"reviewerID": "A999", "asin" "B0000000001", "unixReviewTime": 5}"#, 7);
}

#[test]
fn a_truncated_line_is_skipped_and_counted_or_fatal_with_strict() {
    let line = review("A999", &item(1), 1_360_000_000);
    check_bad_line("truncated", &line.as_bytes()[..70], 13);
}

#[test]
fn a_non_utf8_line_is_skipped_and_counted_or_fatal_with_strict() {
    // Latin-1 "café": the byte 0xE9 alone is not UTF-8.
    let line = review("A999", &item(1), 1_360_000_000).replace("Works", "Caf\u{1}");
    let bytes: Vec<u8> = line.bytes().map(|b| if b == 1 { 0xE9 } else { b }).collect();
    check_bad_line("non_utf8", &bytes, 1);
}

#[test]
fn a_line_missing_a_field_is_skipped_and_counted_or_fatal_with_strict() {
    let line = review("A999", &item(1), 1_360_000_000).replace(r#""asin": "B000000001", "#, "");
    assert!(!line.contains("asin"), "{line}");
    check_bad_line("missing_field", line.as_bytes(), 20);
}

#[test]
fn a_field_of_the_wrong_type_is_skipped_and_counted_or_fatal_with_strict() {
    let line = review("A999", &item(1), 1_360_000_000).replace("1360000000", r#""last spring""#);
    check_bad_line("wrong_type", line.as_bytes(), 49);
}

#[test]
fn a_duplicate_review_is_skipped_and_counted_or_fatal_with_strict() {
    // User 0's second review (line 2, item 3) again, later: the first is kept.
    let line = review(&user(0), &item(3), 1_370_000_000);
    check_bad_line("duplicate", line.as_bytes(), 30);
}

#[test]
fn items_without_meta_get_default_cat_and_are_counted() {
    let corpus = small_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = (tmp.path().join("reviews.json"), tmp.path().join("meta.json"));
    write_lines(&reviews, &corpus.reviews);
    // No meta for items 4 and 7.
    let kept: Vec<String> =
        corpus.meta.iter().filter(|l| !l.contains(&item(4)) && !l.contains(&item(7))).cloned().collect();
    write_lines(&meta, &kept);
    let out = tmp.path().join("out");
    let done = run_ok(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", "din"]));
    assert!(stderr(&done).contains("2 of 10 reviewed items have no meta line"), "{}", stderr(&done));
    let data = Dataset::open(&out).unwrap();
    assert_eq!(data.meta.notes["items_without_meta"], 2);
    let v = &data.vocab;
    assert_eq!(v.cats.names[0], "default_cat");
    assert_eq!(v.items.len(), 11, "all 10 items are in the training vocabulary");
    for (id, name) in v.items.names.iter().enumerate().skip(1) {
        let cat = &v.cats.names[v.item_cat[id] as usize];
        if *name == item(4) || *name == item(7) {
            assert_eq!(v.item_cat[id], 0, "{name} has no meta: default_cat");
        } else {
            let n: usize = name[6..].parse().unwrap();
            assert_eq!(*cat, format!("Cat {}", n % 3), "{name}");
        }
    }
}

#[test]
fn a_din_user_who_reviewed_every_item_is_left_out_and_reported_or_fatal_with_strict() {
    // The small corpus (12 users, 4 reviews each, of 10 items) plus a user who reviewed all 10:
    // `din` draws a user's negatives among the items the user never reviewed, and this user has
    // none. An unbounded rejection loop spun forever here; a whole-corpus check refused the file.
    let corpus = small_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = (tmp.path().join("reviews.json"), tmp.path().join("meta.json"));
    let mut lines = corpus.reviews.clone();
    let everything = user(99);
    lines.extend((0..10).map(|i| review(&everything, &item(i), 1_360_000_000 + i as i64)));
    write_lines(&reviews, &lines);
    write_lines(&meta, &corpus.meta);

    let out = tmp.path().join("lenient");
    let done = run_ok(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", "din"]));
    let log = stderr(&done);
    assert!(log.contains(&format!("user {everything} reviewed every one of the 10 items")), "{log}");
    assert!(log.contains("samples were left out"), "{log}");
    let d = dataset_json(&out);
    // DIN's rule over the 12 other users (48 reviews): train 2·(48 − 2·12), test 2·12.
    assert_eq!((d["counts"]["train_samples"].as_u64(), d["counts"]["test_samples"].as_u64()), (Some(48), Some(24)));
    assert_eq!(d["notes"]["protocol_summary"]["users_without_negatives"], 1);
    assert_eq!(d["notes"]["protocol_summary"]["users_with_samples"], 12);

    let out = tmp.path().join("strict");
    let err = run_fails(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", "din", "--strict"]));
    assert!(err.contains(&format!("reviews.json: user {everything} reviewed every one of the 10 items")), "{err}");
    assert_nothing_left(&out);

    // Only that user: no sample at all, and the error says why.
    write_lines(&reviews, &lines[corpus.reviews.len()..]);
    let out = tmp.path().join("alone");
    let err = run_fails(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", "din"]));
    assert!(err.contains("no sample at all") && err.contains("reviewed every item"), "{err}");
    assert_nothing_left(&out);
}

#[test]
fn an_empty_reviews_file_is_a_clear_error() {
    let corpus = small_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = (tmp.path().join("reviews.json"), tmp.path().join("meta.json"));
    std::fs::write(&reviews, "").unwrap();
    write_lines(&meta, &corpus.meta);
    let out = tmp.path().join("out");
    let err = run_fails(&mut prepare_2014(&reviews, &meta, &out, &[]));
    assert!(err.contains("reviews.json: the file holds no reviews"), "{err}");
    assert_nothing_left(&out);
    // Only bad lines: the first problem is shown.
    std::fs::write(&reviews, "not json\n{\"reviewerID\": 5}\n").unwrap();
    let err = run_fails(&mut prepare_2014(&reviews, &meta, &out, &[]));
    assert!(err.contains("reviews.json: no valid review (line 1: malformed"), "{err}");
    assert_nothing_left(&out);
}

#[test]
fn a_meta_file_in_the_wrong_format_is_a_clear_error_naming_it() {
    let corpus = small_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let reviews = tmp.path().join("reviews.json");
    write_lines(&reviews, &corpus.reviews);
    let out = tmp.path().join("out");

    // The reviews file given as meta: JSON without true/false/null is a valid Python literal,
    // so only its keys give it away.
    let err = run_fails(&mut prepare_2014(&reviews, &reviews, &out, &[]));
    assert!(err.contains("reviews.json: does not look like a 2014 (Python dict literal) meta file"), "{err}");
    assert!(err.contains("a review (it has `reviewerID`)"), "{err}");
    assert_nothing_left(&out);

    // JSON meta (with `true`) given to the 2014 reader.
    let json_meta = tmp.path().join("meta_json.json");
    let lines: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"asin": "{}", "categories": [["Electronics"]], "in_stock": true}}"#, item(i)))
        .collect();
    write_lines(&json_meta, &lines);
    let err = run_fails(&mut prepare_2014(&reviews, &json_meta, &out, &[]));
    assert!(err.contains("meta_json.json: does not look like a 2014 (Python dict literal) meta file"), "{err}");
    assert_nothing_left(&out);

    // 2018 meta (flat `category`) given to the 2014 reader, and 2014 meta to the 2018 reader.
    let meta_2018 = tmp.path().join("meta_2018.json");
    let lines: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"asin": "{}", "category": ["Electronics", "GPS"], "main_cat": "Electronics"}}"#, item(i)))
        .collect();
    write_lines(&meta_2018, &lines);
    let err = run_fails(&mut prepare_2014(&reviews, &meta_2018, &out, &[]));
    assert!(err.contains("meta_2018.json: does not look like a 2014"), "{err}");
    let meta_2014 = tmp.path().join("meta_2014.json");
    write_lines(&meta_2014, &corpus.meta);
    let mut cmd = micn();
    cmd.args(["prepare", "--input-format", "amazon2018", "--reviews"])
        .arg(&reviews)
        .arg("--meta")
        .arg(&meta_2014)
        .arg("--out")
        .arg(&out);
    let err = run_fails(&mut cmd);
    assert!(err.contains("meta_2014.json: does not look like a 2018 (JSON, `asin` and `category`) meta file"), "{err}");
    assert_nothing_left(&out);

    // An empty meta file.
    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let err = run_fails(&mut prepare_2014(&reviews, &empty, &out, &[]));
    assert!(err.contains("empty.json: the meta file is empty"), "{err}");
    assert_nothing_left(&out);
    // One of blank lines only: empty too, said so (not "0 of 3 lines rejected").
    std::fs::write(&empty, "\n  \n\n").unwrap();
    let err = run_fails(&mut prepare_2014(&reviews, &empty, &out, &[]));
    assert!(err.contains("empty.json: the meta file is empty: its 3 lines are blank"), "{err}");
    assert_nothing_left(&out);

    // Good meta lines, none of them of a reviewed item: another dataset's meta file.
    let other = tmp.path().join("meta_other.json");
    let lines: Vec<String> =
        (0..10).map(|i| format!("{{'asin': 'OTHER{i}', 'categories': [['Books', 'Fiction']]}}")).collect();
    write_lines(&other, &lines);
    let err = run_fails(&mut prepare_2014(&reviews, &other, &out, &[]));
    assert!(err.contains("meta_other.json: none of the") && err.contains("10 lines describe other items"), "{err}");
    assert_nothing_left(&out);
}

#[test]
fn gzip_input_gives_the_same_samples_and_a_cut_or_damaged_gzip_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, plain_meta) = synth(&tmp.path().join("raw"), &["--users", "300", "--items", "200"]);
    let plain = std::fs::read(&reviews).unwrap();
    let meta = tmp.path().join("meta.json.gz");
    std::fs::write(&meta, gzip(&std::fs::read(plain_meta).unwrap())).unwrap();
    let gz = tmp.path().join("reviews.json.gz");
    let compressed = gzip(&plain);
    std::fs::write(&gz, &compressed).unwrap();

    let (a, b) = (tmp.path().join("plain"), tmp.path().join("gzip"));
    run_ok(&mut prepare_2014(&reviews, &meta, &a, &[]));
    run_ok(&mut prepare_2014(&gz, &meta, &b, &[]));
    for name in ["train.rkyv", "test.rkyv", "items.tsv", "users.tsv", "cats.tsv"] {
        assert!(std::fs::read(a.join(name)).unwrap() == std::fs::read(b.join(name)).unwrap(), "{name} differs");
    }
    let d = dataset_json(&b);
    assert_eq!(d["sources"][0]["bytes"].as_u64().unwrap() as usize, compressed.len());
    assert_eq!(d["sources"][0]["raw_bytes"].as_u64().unwrap() as usize, plain.len());
    assert!(d["sources"][0].get("truncated_gzip").is_none(), "{}", d["sources"][0]);

    // Cut in the middle (an interrupted download): a broken file, not bad lines, in either
    // mode: refused, saying how much was read, nothing written.
    let cut = tmp.path().join("cut.json.gz");
    let half = &compressed[..compressed.len() / 2];
    std::fs::write(&cut, half).unwrap();
    let prefix = gunzip_prefix(half);
    let complete = prefix.iter().filter(|&&b| b == b'\n').count();
    let total = plain.iter().filter(|&&b| b == b'\n').count();
    assert!(complete > total / 4 && complete < total, "{complete} of {total} lines before the cut");
    for extra in [&[][..], &["--strict"][..]] {
        let out = tmp.path().join("cut");
        let err = run_fails(&mut prepare_2014(&cut, &meta, &out, extra));
        assert!(err.contains("cut.json.gz: the gzip stream ends early"), "{err}");
        assert!(err.contains(&format!("({} complete lines)", grouped(complete))) && err.contains("truncated"), "{err}");
        assert_nothing_left(&out);
    }

    // A damaged stream (its CRC) is an error in either mode.
    let mut bad = compressed.clone();
    let at = bad.len() - 8;
    bad[at] ^= 0xff;
    let damaged = tmp.path().join("damaged.json.gz");
    std::fs::write(&damaged, &bad).unwrap();
    for extra in [&[][..], &["--strict"][..]] {
        let out = tmp.path().join("damaged");
        let err = run_fails(&mut prepare_2014(&damaged, &meta, &out, extra));
        assert!(err.contains("damaged.json.gz: the gzip stream is broken after"), "{err}");
        assert!(err.contains(&format!("{} complete lines read", grouped(total))), "{err}");
        assert!(err.contains("corrupt gzip stream"), "{err}");
        assert_nothing_left(&out);
    }
}

#[test]
fn a_killed_prepare_leaves_no_output_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = synth(&tmp.path().join("raw"), &["--users", "30000", "--items", "5000"]);
    let out = tmp.path().join("out");
    let mut child = prepare_2014(&reviews, &meta, &out, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staging = tmp.path().join(format!(".out.partial-{}", child.id()));
    let started = Instant::now();
    while !staging.exists() {
        assert!(child.try_wait().unwrap().is_none(), "prepare ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(60), "no staging directory {} appeared", staging.display());
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!out.exists(), "a killed prepare left {}", out.display());
    // The same --out works afterwards.
    run_ok(&mut prepare_2014(&reviews, &meta, &out, &[]));
    Dataset::open(&out).unwrap();
}

/// A prepared quickstart-like dataset (small) to damage.
pub(crate) fn prepared(tmp: &Path) -> PathBuf {
    let (reviews, meta) = synth(&tmp.join("raw"), &["--users", "300", "--items", "200"]);
    let out = tmp.join("data");
    run_ok(&mut prepare_2014(&reviews, &meta, &out, &[]));
    out
}

pub(crate) fn open_error(dir: &Path) -> String {
    match Dataset::open(dir) {
        Ok(_) => panic!("{} opened although it is damaged", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Replace `train.rkyv`'s size and checksum in dataset.json, as if the damage had been there
/// when it was written: only rkyv's own validation stands between the bytes and the reader.
fn restamp(dir: &Path, file: &str, bytes: &[u8]) {
    let mut d = dataset_json(dir);
    let key = file.trim_end_matches(".rkyv");
    d[key]["bytes"] = bytes.len().into();
    d[key]["xxh3"] = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)).into();
    std::fs::write(dir.join("dataset.json"), serde_json::to_string_pretty(&d).unwrap()).unwrap();
}

#[test]
fn a_corrupted_or_truncated_archive_is_a_clear_error_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = prepared(tmp.path());
    let train = dir.join("train.rkyv");
    let good = std::fs::read(&train).unwrap();
    let good_meta = std::fs::read(dir.join("dataset.json")).unwrap();
    Dataset::open(&dir).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    std::fs::write(&train, &flipped).unwrap();
    let e = open_error(&dir);
    assert!(e.contains("train.rkyv") && e.contains("checksum") && e.contains("corrupted"), "{e}");

    std::fs::write(&train, &good[..good.len() - 100]).unwrap();
    let e = open_error(&dir);
    assert!(e.contains("train.rkyv") && e.contains("truncated"), "{e}");

    std::fs::write(&train, &good).unwrap();
    let mut d = dataset_json(&dir);
    d["train"]["xxh3"] = "0123456789abcdef".into();
    std::fs::write(dir.join("dataset.json"), serde_json::to_string(&d).unwrap()).unwrap();
    let e = open_error(&dir);
    assert!(e.contains("train.rkyv") && e.contains("checksum"), "{e}");

    std::fs::write(dir.join("dataset.json"), b"{\"format_version\": 1").unwrap();
    let e = open_error(&dir);
    assert!(e.contains("dataset.json") && e.contains("not a dataset description"), "{e}");
    std::fs::write(dir.join("dataset.json"), &good_meta).unwrap();
    Dataset::open(&dir).unwrap();

    // Damage that passes the checksum (as if written that way): truncated, and single bytes
    // flipped all over the file, the rkyv root at its end most densely. Opening must give
    // Ok (a still-valid archive, every id in range) or a clear error; never a panic.
    let cut = &good[..good.len() - 16];
    std::fs::write(&train, cut).unwrap();
    restamp(&dir, "train.rkyv", cut);
    let e = open_error(&dir);
    assert!(e.contains("train.rkyv") && e.contains("not a valid sample archive"), "{e}");
    // rkyv's own words on what is wrong, not release-mode rkyv's placeholder.
    assert!(!e.contains("without error information"), "{e}");
    let positions: Vec<usize> = (0..good.len()).step_by(61).chain(good.len().saturating_sub(128)..good.len()).collect();
    let mut refused = 0;
    for &at in &positions {
        let mut bytes = good.clone();
        bytes[at] ^= 0x80;
        std::fs::write(&train, &bytes).unwrap();
        restamp(&dir, "train.rkyv", &bytes);
        match Dataset::open(&dir) {
            Ok(data) => {
                // Still readable: the statistics walk every sample.
                let stats = micn::data::stats::compute(&data);
                assert_eq!(stats.train.samples as usize, data.train.samples().len());
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("train.rkyv"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no flipped byte was noticed");
}

#[test]
fn quickstart_data_reports_an_oracle_auc_and_one_score_per_test_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = synth(&tmp.path().join("raw"), &[]);
    for protocol in ["dien", "din"] {
        let out = tmp.path().join(protocol);
        let done = run_ok(&mut prepare_2014(&reviews, &meta, &out, &["--protocol", protocol]));
        let text = String::from_utf8_lossy(&done.stdout).into_owned();
        assert!(text.contains("oracle   test AUC"), "{text}");
        let d = dataset_json(&out);
        let auc = d["oracle_auc"].as_f64().expect("oracle_auc");
        assert!((0.6..1.0).contains(&auc), "{protocol}: oracle AUC {auc}");
        let test = d["counts"]["test_samples"].as_u64().unwrap() as usize;
        assert_eq!(std::fs::metadata(out.join("oracle.f32")).unwrap().len() as usize, 4 * test);
        let data = Dataset::open(&out).unwrap();
        let scores = data.oracle.as_ref().expect("oracle scores");
        assert_eq!(scores.len(), data.test.samples().len());
        assert!(scores.iter().all(|s| s.is_finite()), "{protocol}: a non-finite oracle score");
        let labels: Vec<u8> = data.test.samples().labels.to_vec();
        let again = micn::metrics::auc(scores, &labels).unwrap();
        assert!((again - auc).abs() < 1e-12, "{protocol}: {again} vs {auc}");
    }
    // Compressed, the reviews still read as those the oracle was generated with.
    let packed = tmp.path().join("packed/reviews_Synthetic_5.json.gz");
    std::fs::create_dir(packed.parent().unwrap()).unwrap();
    std::fs::write(&packed, gzip(&std::fs::read(&reviews).unwrap())).unwrap();
    let oracle = tmp.path().join("raw/oracle-model.json");
    let out = tmp.path().join("packed-out");
    run_ok(&mut prepare_2014(&packed, &meta, &out, &["--oracle", oracle.to_str().unwrap()]));
    assert!(dataset_json(&out)["oracle_auc"].is_f64());
    // Another seed's oracle knows every name (they are indices), not these reviews: refused when
    // given, left out and said when found beside them.
    let (other, _) = synth(&tmp.path().join("other"), &["--seed", "2"]);
    let other_oracle = other.with_file_name("oracle-model.json");
    let refused =
        prepare_2014(&reviews, &meta, &tmp.path().join("refused"), &["--oracle", other_oracle.to_str().unwrap()])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("generated with other reviews") && stderr.contains("another `micn synth` run's oracle"),
        "{stderr}"
    );
    assert!(!tmp.path().join("refused").exists());
    std::fs::copy(&other_oracle, &oracle).unwrap();
    let out = tmp.path().join("beside");
    let done = run_ok(&mut prepare_2014(&reviews, &meta, &out, &[]));
    let said = format!("{}{}", String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert!(said.contains("another `micn synth` run's oracle; no oracle AUC"), "{said}");
    assert!(dataset_json(&out)["oracle_auc"].is_null(), "{said}");
    assert!(!out.join("oracle.f32").exists());
}

#[test]
fn the_prepare_benchmark_measures_speed_and_memory_at_two_input_sizes() {
    use micn::bench::prepare::{run, PrepareBenchOptions};
    let tmp = tempfile::tempdir().unwrap();
    let opts = PrepareBenchOptions {
        preset: micn::data::synth::Preset::Quickstart,
        users: Some(1000),
        items: Some(800),
        history_scales: vec![0.5, 1.0],
        work_dir: tmp.path().join("work"),
        micn: Some(micn_bin()),
        ..Default::default()
    };
    let report = run(&opts).unwrap();
    let [small, large] = &report.runs[..] else { panic!("one run per scale: {report:?}") };
    for r in [small, large] {
        assert_eq!((r.users, r.items), (1000, 800));
        assert!(r.reviews > 0 && r.reviews <= r.review_lines && r.review_bytes > 0, "{r:?}");
        assert!(r.read_mb_per_s > 0.0 && r.reviews_per_s > 0.0 && r.prepare_seconds >= r.read_seconds, "{r:?}");
        assert!(r.train_samples > 0 && r.test_samples > 0, "{r:?}");
        assert!(r.vocab_items <= 801 && r.vocab_users <= 1001, "{r:?}");
        let (peak, anon) = (r.peak_rss_bytes.expect("VmHWM on Linux"), r.peak_anon_bytes.expect("RssAnon on Linux"));
        assert!(anon > 0 && anon < peak, "{r:?}");
    }
    assert!(large.review_lines > small.review_lines * 3 / 2, "twice the mean history: {small:?} {large:?}");
    assert!(large.generate_seconds.is_some(), "nothing kept to reuse");
    let table = report.to_string();
    assert!(table.contains("MB/s") && table.contains("same vocabularies"), "{table}");
    // Not kept: the work directory holds nothing afterwards.
    assert_eq!(std::fs::read_dir(&opts.work_dir).unwrap().count(), 0);
}
