//! ComiRec's files: `micn prepare --input-format interactions` on the real head of ComiRec's
//! Amazon Books training file, the same samples as the time-sorted sequences of the same
//! interactions, bad lines named; `micn eval --retrieval --heldout` refusing what it cannot
//! score, naming the file, line or model. (Its figures against ComiRec's evaluation written out:
//! `twin::held_out_users_retrieve_as_comirec_s_evaluation_written_out_over_the_twin`.)
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use micn::dist::SingleProcess;
use micn::train::{train_from, Resume};

use crate::{micn_bin, run_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comirec-books-head").join(name)
}

fn prepare(format: &str, input: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(micn_bin())
        .args(["prepare", "--input-format", format, "--protocol", "din", "--max-hist-len", "20", "--out"])
        .arg(out)
        .arg(format!("--{format}"))
        .arg(input)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn comirec_s_books_interactions_prepare_into_the_samples_of_their_time_sorted_sequences() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("mind_train_demo.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let from_file = tmp.path().join("from-file");
    let out = prepare("interactions", &fixture("mind_train_demo.txt"), &from_file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("interactions carry no categories"), "{}", stderr(&out));
    let stats = run_ok(Command::new(micn_bin()).args(["data", "stats", "--json"]).arg(&from_file));
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    // The fixture's counts (its README): 20,000 interactions of 1,467 users; under `din` each
    // user gives one positive and one negative test sample.
    assert_eq!((s["reviews"].as_u64(), s["source"].as_str()), (Some(20_000), Some("interactions")), "{s}");
    assert_eq!(s["users"].as_u64(), Some(1_467 + 1), "{s}");
    assert_eq!(s["test"]["samples"], 2 * 1_467, "{s}");
    // A user's last item that no other line names can only enter the vocabulary as a drawn
    // negative; the test samples whose target it does not hold are counted: at most one
    // positive for each such item, and at most one negative for each user.
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    let mut last: std::collections::HashMap<&str, &str> = Default::default();
    for line in &lines {
        let f: Vec<&str> = line.split(',').collect();
        *seen.entry(f[1]).or_default() += 1;
        last.insert(f[0], f[1]);
    }
    let only_last = last.values().filter(|item| seen[*item] == 1).count() as u64;
    let unknown = s["test"]["unknown_items"].as_u64().unwrap();
    assert!(only_last > 0 && unknown > 0 && unknown <= only_last + 1_467, "{unknown} unknown, {only_last} only last");
    let text =
        String::from_utf8(run_ok(Command::new(micn_bin()).args(["data", "stats"]).arg(&from_file)).stdout).unwrap();
    assert!(text.contains(&format!("unknown items {unknown}")), "{text}");

    // The same interactions with each user's lines reversed (the times put them back in
    // order), and as one time-ordered sequence per user: the same samples, byte for byte.
    let mut users: Vec<(String, Vec<(i64, String)>)> = Vec::new();
    for line in &lines {
        let f: Vec<&str> = line.split(',').collect();
        if users.last().is_none_or(|(user, _)| user != f[0]) {
            users.push((f[0].to_string(), Vec::new()));
        }
        users.last_mut().unwrap().1.push((f[2].parse().unwrap(), f[1].to_string()));
    }
    let reversed = tmp.path().join("reversed.txt");
    let text: String = users
        .iter()
        .flat_map(|(user, items)| items.iter().rev().map(move |(time, item)| format!("{user},{item},{time}\n")))
        .collect();
    std::fs::write(&reversed, text).unwrap();
    let sequences_file = tmp.path().join("sequences.txt");
    let text: String = users
        .iter_mut()
        .map(|(user, items)| {
            items.sort();
            let items: Vec<&str> = items.iter().map(|(_, item)| item.as_str()).collect();
            format!("{user} {}\n", items.join(" "))
        })
        .collect();
    std::fs::write(&sequences_file, text).unwrap();
    let (from_reversed, from_sequences) = (tmp.path().join("from-reversed"), tmp.path().join("from-sequences"));
    assert!(prepare("interactions", &reversed, &from_reversed, &[]).status.success());
    assert!(prepare("sequences", &sequences_file, &from_sequences, &[]).status.success());
    for file in ["train.rkyv", "test.rkyv", "items.tsv", "users.tsv", "cats.tsv"] {
        let original = std::fs::read(from_file.join(file)).unwrap();
        assert!(original == std::fs::read(from_sequences.join(file)).unwrap(), "{file}: sequences differ");
    }
    // Reversed lines intern the items in another order, so the uniform negatives differ (and
    // with them which test-only items the vocabulary holds); the clicked training samples
    // (user, target, history) do not.
    let clicked = positives(&from_file);
    assert_eq!(clicked.len(), 20_000 - 2 * 1_467, "all but each user's first and last interaction");
    assert!(clicked == positives(&from_reversed), "the clicked samples of reversed lines differ");
}

/// The same interactions as RecBole's atomic `.inter` file (tab-separated, typed names, a rating
/// column, times written as floats) and as Amazon Reviews'23's benchmark file (`user_id,
/// parent_asin,rating,timestamp,history`, the history of each row the user's items before it):
/// read by their headers into the same dataset as ComiRec's file, byte for byte.
#[test]
fn recbole_and_amazon_2023_interaction_files_are_read_by_their_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("mind_train_demo.txt")).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let mut recbole = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    let mut amazon = String::from("user_id,parent_asin,rating,timestamp,history\n");
    let mut histories: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for f in &rows {
        recbole.push_str(&format!("{}\t{}\t5.0\t{}.0\n", f[0], f[1], f[2]));
        let history = histories.entry(f[0]).or_default();
        amazon.push_str(&format!("{},{},5.0,{},{}\n", f[0], f[1], f[2], history.join(" ")));
        history.push(f[1]);
    }
    let comirec = tmp.path().join("comirec");
    assert!(prepare("interactions", &fixture("mind_train_demo.txt"), &comirec, &[]).status.success());
    for (name, text) in [("books.inter", recbole), ("Books.train.csv", amazon)] {
        let (input, out) = (tmp.path().join(name), tmp.path().join(format!("from-{name}")));
        std::fs::write(&input, text).unwrap();
        let done = prepare("interactions", &input, &out, &[]);
        assert!(done.status.success(), "{name}: {}", stderr(&done));
        assert!(!stderr(&done).contains("skipped"), "{name}: {}", stderr(&done));
        for file in ["train.rkyv", "test.rkyv", "items.tsv", "users.tsv", "cats.tsv"] {
            let same = std::fs::read(comirec.join(file)).unwrap() == std::fs::read(out.join(file)).unwrap();
            assert!(same, "{name}: {file} differs from ComiRec's file's");
        }
    }
    // A header that names no time column is refused, not read with the rating as the time.
    let no_time = tmp.path().join("no-time.csv");
    std::fs::write(&no_time, "user_id,item_id,rating\n1,2,5\n1,3,4\n2,3,5\n").unwrap();
    let refused = prepare("interactions", &no_time, &tmp.path().join("no-time"), &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(
            "no valid interaction (line 2: missing field: the header (`user_id,item_id,rating`) names no time column"
        ),
        "{}",
        stderr(&refused)
    );
}

/// A click repeated later in a log is a behaviour of its own (interaction logs and sequences
/// record every click; only reviews are one per user and item); a byte-order mark opening the
/// file is not part of its first user's name.
#[test]
fn repeated_clicks_are_kept_and_a_byte_order_mark_is_not_part_of_the_first_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, marked) = (tmp.path().join("plain.txt"), tmp.path().join("marked.txt"));
    // User 7 clicks item 1 again after item 2; users 8 and 9 leave items for negatives to draw.
    let text = "7,1,1\n7,2,2\n7,1,3\n7,3,4\n8,2,1\n8,3,2\n8,1,3\n9,4,1\n9,5,2\n9,6,3\n";
    std::fs::write(&plain, text).unwrap();
    std::fs::write(&marked, [&b"\xEF\xBB\xBF"[..], text.as_bytes()].concat()).unwrap();
    let (from_plain, from_marked) = (tmp.path().join("from-plain"), tmp.path().join("from-marked"));
    for (input, out) in [(&plain, &from_plain), (&marked, &from_marked)] {
        let prepared = prepare("interactions", input, out, &["--strict"]);
        assert!(prepared.status.success(), "{}", stderr(&prepared));
        assert!(!stderr(&prepared).contains("duplicate"), "{}", stderr(&prepared));
    }
    let clicked = positives(&from_plain);
    let seven: Vec<_> = clicked.iter().filter(|(user, ..)| user == "7").map(|(_, item, h)| (item, h.len())).collect();
    assert_eq!(seven, [(&"1".to_string(), 2), (&"2".to_string(), 1)], "{clicked:?}");
    for file in ["train.rkyv", "test.rkyv", "items.tsv", "users.tsv"] {
        assert!(
            std::fs::read(from_plain.join(file)).unwrap() == std::fs::read(from_marked.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Every clicked training sample, by names: (user, target, history), sorted.
fn positives(dir: &Path) -> Vec<(String, String, Vec<String>)> {
    let dataset = micn::data::Dataset::open(dir).unwrap();
    let (users, items, samples) = (&dataset.vocab.users.names, &dataset.vocab.items.names, dataset.train.samples());
    let mut all = Vec::new();
    for i in (0..samples.labels.len()).filter(|&i| samples.labels[i] == 1) {
        let history = samples.history_range(i).map(|p| items[samples.hist_items[p].to_native() as usize].clone());
        let (user, item) = (samples.users[i].to_native() as usize, samples.items[i].to_native() as usize);
        all.push((users[user].clone(), items[item].clone(), history.collect()));
    }
    all.sort();
    all
}

#[test]
fn bad_interaction_lines_are_counted_or_fatal_with_strict_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("interactions.txt");
    std::fs::write(&input, "1,10,0\n1,11,1\n1,12,two\n1,13,3\n2,10,0\n2,13,1\n2,14\n2,11,3\n3,11,0\n3,12,1\n3,10,2\n")
        .unwrap();
    let out = prepare("interactions", &input, &tmp.path().join("lenient"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("skipped wrong type: 1 (line 3)") && said.contains("skipped missing field: 1 (line 7)"),
        "{said}"
    );
    let out = prepare("interactions", &input, &tmp.path().join("strict"), &["--strict"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("interactions.txt:3: wrong type: time `two` is not an integer"), "{}", stderr(&out));
    assert!(!tmp.path().join("strict").exists(), "nothing written");
    // Sequences' attribute lists have no meaning here: refused, not ignored.
    let out = prepare("interactions", &input, &tmp.path().join("meta"), &["--item-attributes", "x.json"]);
    assert_eq!(out.status.code(), Some(3));
    let said = stderr(&out);
    assert!(said.contains("--input-format interactions does not read --item-attributes (its items' categories come from Amazon meta, --meta)"), "{said}");
}

#[test]
fn held_out_retrieval_refuses_bad_files_and_models_without_interests() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    assert!(prepare("interactions", &fixture("mind_train_demo.txt"), &data, &[]).status.success());
    let train = |kind: &str, extra: &[&str]| {
        let run = tmp.path().join(kind);
        let mut sets = vec![
            format!("data.dir={:?}", data.display().to_string()),
            format!("model.kind={kind:?}"),
            "data.max_hist_len=20".into(),
        ];
        sets.extend(["train.max_steps=3", "train.epochs=1", "micn.enabled=false"].map(String::from));
        sets.extend(extra.iter().map(|s| s.to_string()));
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        train_from(&crate::small_config(&run, &sets), &SingleProcess, &Resume::Fresh).unwrap();
        run
    };
    let mind = train("mind", &["model.mind_objective=\"retrieval\"", "model.mind_negatives=16"]);
    let eval = |run: &Path, heldout: &Path| {
        Command::new(micn_bin())
            .args(["eval", "--retrieval", "20"])
            .arg("--run")
            .arg(run)
            .arg("--heldout")
            .arg(heldout)
            .output()
            .unwrap()
    };
    // The real validation users: read, and their counts said.
    let out = eval(&mind, &fixture("mind_valid_part-0"));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("499 held-out users") && text.contains("most popular  recall@20"), "{text}");
    // A bad line, by its number; a missing file, by its name.
    let bad = tmp.path().join("valid.txt");
    std::fs::write(&bad, "7,1,0\n7,2,1\n7,3\n").unwrap();
    let out = eval(&mind, &bad);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("valid.txt:3: missing field"), "{}", stderr(&out));
    let out = eval(&mind, &tmp.path().join("absent.txt"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("absent.txt"), "{}", stderr(&out));
    // A list as long as the catalogue would retrieve every item: refused, naming how many there are.
    let out =
        Command::new(micn_bin()).args(["eval", "--retrieval", "20,1000000", "--run"]).arg(&mind).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--retrieval 1000000: the model knows"), "{}", stderr(&out));
    // A model without interests.
    let din = train("din", &[]);
    let out = eval(&din, &fixture("mind_valid_part-0"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("din"), "{}", stderr(&out));
    // --heldout without --retrieval, or beside --split, is a usage error.
    let out = Command::new(micn_bin()).args(["eval", "--heldout", "x", "--run"]).arg(&mind).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let both = ["eval", "--retrieval", "20", "--heldout", "x", "--split", "valid", "--run"];
    let out = Command::new(micn_bin()).args(both).arg(&mind).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot be used with '--split"), "{}", stderr(&out));
}
