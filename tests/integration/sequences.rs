//! `micn prepare --input-format sequences`: the real S3-Rec Toys and Games 5-core (sequences and
//! item attributes) under both protocols, an item attribute as the category, and bad lines and
//! files named.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{micn_bin, run_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/s3rec-toys-2014").join(name)
}

fn prepare(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(micn_bin())
        .args(["prepare", "--input-format", "sequences", "--max-hist-len", "20", "--seed", "1", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn stats(dir: &Path) -> serde_json::Value {
    let out = run_ok(Command::new(micn_bin()).args(["data", "stats", "--json"]).arg(dir));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_real_toys_sequences_prepare_under_both_protocols_with_an_attribute_as_category() {
    let tmp = tempfile::tempdir().unwrap();
    let sequences = fixture("Toys_and_Games.txt");
    let attributes = fixture("Toys_and_Games_item2attributes.json");
    let (seq, attrs) = (sequences.to_str().unwrap(), attributes.to_str().unwrap());
    let din = tmp.path().join("din");
    let out = prepare(
        &din,
        &["--sequences", seq, "--item-attributes", attrs, "--category-attribute", "3", "--protocol", "din"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = stats(&din);
    // The fixture's published counts (its README): 19,412 users, 11,924 items, 167,597
    // interactions; the vocabularies add id 0. Under `din` every user gives one positive and one
    // negative test sample.
    assert_eq!(s["reviews"], 167_597, "{s}");
    assert_eq!((s["users"].as_u64(), s["items"].as_u64()), (Some(19_413), Some(11_925)));
    assert_eq!(s["test"]["samples"], 2 * 19_412);
    // Position 3 of the attribute lists has 166 values; 786 items have no fourth attribute.
    assert_eq!(s["category_source"], "attributes", "{s}");
    assert_eq!(s["cats"].as_u64(), Some(166 + 1), "166 attributes and default_cat (id 0): {s}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("786 of 11924 sequenced items have no attribute at position 3")
    );
    // Both inputs are recorded with their sizes (and so checked unreplaced when the dataset is
    // written), the attributes file as the sequences are.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(din.join("dataset.json")).unwrap()).unwrap();
    let recorded: Vec<(&str, u64)> = meta["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["file"].as_str().unwrap(), s["bytes"].as_u64().unwrap()))
        .collect();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(
        recorded,
        [("Toys_and_Games.txt", size(&sequences)), ("Toys_and_Games_item2attributes.json", size(&attributes))]
    );
    // Under `dien`, without attributes: one category, said.
    let dien = tmp.path().join("dien");
    let out = prepare(&dien, &["--sequences", seq, "--protocol", "dien"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no category attribute"));
    let s = stats(&dien);
    assert_eq!((s["source"].as_str(), s["protocol"].as_str()), (Some("sequences"), Some("dien")));
    assert_eq!(s["category_source"], "none");
    // A model trains on it.
    let run = tmp.path().join("run");
    let cfg = crate::small_config(
        &run,
        &[&format!("data.dir={:?}", din.display().to_string()), "train.max_steps=5", "model.kind=din"],
    );
    let summary = micn::train::train(&cfg, &micn::dist::SingleProcess).unwrap();
    assert_eq!(summary.steps, 5);
}

#[test]
fn a_dataset_whose_training_split_is_empty_is_said_so_by_prepare_and_refused_by_train() {
    // Two items per user: under `din` each user's only sample is a test sample.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("seq.txt");
    let lines: String = (0..20).map(|u| format!("u{u} i{} i{}\n", u % 7, (u + 3) % 7)).collect();
    std::fs::write(&file, lines).unwrap();
    let data = tmp.path().join("data");
    let out = prepare(&data, &["--sequences", file.to_str().unwrap(), "--protocol", "din"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the train split is empty"), "{err}");
    let cfg = crate::small_config(&tmp.path().join("run"), &[&format!("data.dir={:?}", data.display().to_string())]);
    let e = micn::train::train(&cfg, &micn::dist::SingleProcess).unwrap_err().to_string();
    assert!(e.ends_with("its training split is empty (as `micn prepare` said): nothing to train on; prepare it from more data (users with more behaviours)"), "{e}");
}

#[test]
fn bad_sequence_lines_are_counted_or_fatal_with_strict_and_bad_attribute_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("seq.txt");
    std::fs::write(&file, "u1 a b c\nu2\nu3 a c b d\nu4 b c\n").unwrap();
    let seq = file.to_str().unwrap();
    let out = prepare(&tmp.path().join("lenient"), &["--sequences", seq, "--protocol", "din"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("seq.txt: skipped") && err.contains("line 2"), "{err}");
    let out = prepare(&tmp.path().join("strict"), &["--sequences", seq, "--protocol", "din", "--strict"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("seq.txt:2:") && err.contains("a user and at least one item"), "{err}");
    assert!(!tmp.path().join("strict").exists(), "nothing written on error");
    let attrs = tmp.path().join("attrs.json");
    std::fs::write(&attrs, "{\"a\": [1, 2], \"b\": [3").unwrap();
    let out = prepare(
        &tmp.path().join("bad-attrs"),
        &["--sequences", seq, "--item-attributes", attrs.to_str().unwrap(), "--category-attribute", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("attrs.json") && err.contains("attribute ids"), "{err}");
    // Values that are not ids, and a file whose items are none of these (another dataset's).
    for (text, needle) in [
        ("{\"a\": [1, null], \"b\": [3]}", "attrs.json: item \"a\": attribute null is not an id"),
        // Beyond 64 bits: read as a float, which would print as its neighbour does.
        ("{\"a\": [18446744073709551617], \"b\": [3]}", "attribute 1.8446744073709552e+19 is not an id"),
        ("{\"a\": [1.5]}", "attribute 1.5 is not an id (an integer or a string)"),
        ("{\"x\": [1], \"y\": [2]}", "attrs.json: none of the 4 sequenced items has an attribute"),
        ("{\"a\": []}", "none of the 4 sequenced items"),
    ] {
        std::fs::write(&attrs, text).unwrap();
        let out =
            prepare(&tmp.path().join("bad-attrs"), &["--sequences", seq, "--item-attributes", attrs.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains(needle), "{text}: {err}");
    }
    // An item listed twice keeps its first list, said; fatal with --strict.
    std::fs::write(&attrs, "{\"a\": [1], \"b\": [2], \"a\": [7], \"c\": [1], \"d\": [2]}").unwrap();
    let attrs_arg = ["--sequences", seq, "--item-attributes", attrs.to_str().unwrap()];
    let out = prepare(&tmp.path().join("repeated"), &attrs_arg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("attrs.json: 1 repeated item lists (first: item \"a\"); the first list of each"), "{err}");
    let tsv = std::fs::read_to_string(tmp.path().join("repeated/attributes.tsv")).unwrap();
    assert!(!tsv.lines().any(|l| l.split('\t').nth(1) == Some("7")), "item a's second list is not kept: {tsv}");
    let whole = tmp.path().join("whole.txt");
    std::fs::write(&whole, "u1 a b c\nu3 a c b d\nu4 b c d\n").unwrap();
    let strict = ["--sequences", whole.to_str().unwrap(), "--item-attributes", attrs.to_str().unwrap(), "--strict"];
    let out = prepare(&tmp.path().join("repeated-strict"), &strict);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("1 repeated item lists (first: item \"a\") (--strict)"), "{err}");
    // Some items without attributes: said.
    std::fs::write(&attrs, "{\"a\": [1], \"b\": [2], \"c\": [1]}").unwrap();
    let out =
        prepare(&tmp.path().join("some-attrs"), &["--sequences", seq, "--item-attributes", attrs.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 of 4 sequenced items have no attributes"), "{err}");
    // Gzip, as every other input: the same dataset.
    let gz = tmp.path().join("attrs.json.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &std::fs::read(&attrs).unwrap()).unwrap();
    std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    let out = prepare(&tmp.path().join("gz-attrs"), &["--sequences", seq, "--item-attributes", gz.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["item_attributes.u32", "attributes.tsv"] {
        let read = |dir: &str| std::fs::read(tmp.path().join(dir).join(file)).unwrap();
        assert_eq!(read("gz-attrs"), read("some-attrs"), "{file}");
    }
    for flag in ["--category-attribute", "--max-attributes"] {
        let out = prepare(&tmp.path().join("no-attrs"), &["--sequences", seq, flag, "1"]);
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{flag} needs --item-attributes")));
        assert!(!tmp.path().join("no-attrs").exists());
    }
}
