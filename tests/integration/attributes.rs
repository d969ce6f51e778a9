//! The item-attribute table: filled from the real 2018 Gift Cards meta (brand, category levels,
//! price bucket), from the real S3-Rec Toys attribute lists and from synthetic 2014 meta whose
//! brands follow the generator's hidden clusters, checked item by item against the raw files (or
//! the generator's oracle); shown by `data stats`; a damaged table is refused naming it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use micn::data::Dataset;

use crate::{micn_bin, run_ok};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// Each item's attributes as `field=value` texts (none left out), by item name.
fn rows_by_name(d: &Dataset) -> HashMap<String, Vec<String>> {
    let a = d.attributes.as_ref().expect("the dataset has an attribute table");
    (1..d.vocab.items.len())
        .map(|item| {
            let named = a.row(item).iter().zip(&a.fields).filter(|(&id, _)| id != 0);
            let texts = named.map(|(&id, field)| format!("{field}={}", a.names[id as usize].1)).collect();
            (d.vocab.items.names[item].clone(), texts)
        })
        .collect()
}

#[test]
fn amazon_2018_meta_fills_brand_category_levels_and_price_buckets() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gift-cards");
    run_ok(
        Command::new(micn_bin())
            .args(["prepare", "--input-format", "amazon2018", "--protocol", "din", "--max-hist-len", "10"])
            .arg("--reviews")
            .arg(fixture("amazon-gift-cards-2018/Gift_Cards_5.json.gz"))
            .arg("--meta")
            .arg(fixture("amazon-gift-cards-2018/meta_Gift_Cards.json.gz"))
            .arg("--out")
            .arg(&out),
    );
    let d = Dataset::open(&out).unwrap();
    let rows = rows_by_name(&d);
    // Read off the raw meta lines with Python's json module: brand, `category`, `price`.
    let gift = ["category_1=Gift Cards", "category_2=Gift Cards"];
    let expected: [(&str, Vec<&str>); 5] = [
        ("B00AR51Y5I", [&["brand=Starbucks"], &gift[..], &["price=20-50"]].concat()), // $25.00
        ("B0091JKVU0", [&["brand=Amazon"], &gift[..], &["price=200-500"]].concat()),  // $200.00
        ("B0091JL3OI", [&["brand=Amazon"], &gift[..], &["price=500+"]].concat()),     // $500.00
        ("B00F2RZMEA", vec!["brand=Burger King", "price=20-50"]),                     // no category
        ("B00MV9H6VY", gift.to_vec()),                                                // no brand, no price
    ];
    for (item, attributes) in expected {
        assert_eq!(rows[item], attributes, "{item}");
    }
    // Of the 148 reviewed items (all with meta), 119 have a brand, 146 a category path of two
    // levels, 107 a price (Python over the same files).
    let s: serde_json::Value =
        serde_json::from_slice(&run_ok(Command::new(micn_bin()).args(["data", "stats", "--json"]).arg(&out)).stdout)
            .unwrap();
    let coverage: Vec<(String, u64)> = s["attributes"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap().to_string(), f["items_with_value"].as_u64().unwrap()))
        .collect();
    let expected = [
        ("brand", 119),
        ("category_1", 146),
        ("category_2", 146),
        ("category_3", 0),
        ("category_4", 0),
        ("price", 107),
    ];
    assert_eq!(coverage, expected.map(|(f, n)| (f.to_string(), n)), "{s}");
    let text = String::from_utf8(run_ok(Command::new(micn_bin()).args(["data", "stats"]).arg(&out)).stdout).unwrap();
    assert!(text.contains("item attributes: 6 per item") && text.contains("brand        119 items (80.4 %)"), "{text}");
    // The two items without a category path are in `default_cat` (as `prepare` said).
    assert_eq!(s["items_in_default_cat"], 2, "{s}");
    assert!(text.contains("categories: from the meta file; 2 of the 148 items have none there"), "{text}");

    // A damaged table is refused at open, naming it.
    let table = out.join("item_attributes.u32");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[4 * 6 * 3] ^= 1;
    std::fs::write(&table, &bytes).unwrap();
    let e = Dataset::open(&out).err().expect("a damaged table is refused").to_string();
    assert!(e.contains("item_attributes.u32") && e.contains("checksum"), "{e}");
}

/// A file of the real 2018 Gift Cards fixture, unzipped.
fn gift_cards_text(name: &str) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    let file = std::fs::File::open(fixture(&format!("amazon-gift-cards-2018/{name}"))).unwrap();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).unwrap();
    text
}

/// The real 2018 Gift Cards files written the way Amazon Reviews'23 writes its files (field by
/// field, from the dataset card: `user_id`, `parent_asin`, `timestamp` in milliseconds; meta
/// keyed by `parent_asin` with `categories`, `store`, a numeric `price`) prepare into the same
/// samples, vocabularies and attribute table as the 2018 files, and so do the same reviews as
/// Amazon'23's benchmark file read as interactions beside either meta; a 2023 file read as 2018
/// is named as 2023's, and meta whose category lists are all empty (as 2023's All_Beauty) is said.
#[test]
fn amazon_2023_files_prepare_as_the_same_data_in_2018_form_do() {
    use serde_json::{json, Value};
    let tmp = tempfile::tempdir().unwrap();
    let lines = |name: &str| -> Vec<Value> {
        gift_cards_text(name).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // 2023's `asin` is the variant reviewed (a gift amount, a colour); the item is `parent_asin`.
    let reviews: Vec<Value> = lines("Gift_Cards_5.json.gz")
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "rating": r["overall"], "title": r["summary"], "text": r["reviewText"], "images": [],
                "asin": format!("{}-{}", r["asin"].as_str().unwrap(), i % 3), "parent_asin": r["asin"],
                "user_id": r["reviewerID"],
                "timestamp": r["unixReviewTime"].as_i64().unwrap() * 1000, "helpful_vote": 0,
                "verified_purchase": r["verified"],
            })
        })
        .collect();
    // 2018 writes prices as text (`$25.00`, `$10.00 - $20.00`, or page markup); 2023 as numbers.
    let price = |text: &Value| -> Value {
        let first = text.as_str().unwrap_or("").split(" - ").next().unwrap().trim();
        first.trim_start_matches('$').replace(',', "").parse::<f64>().map_or(Value::Null, |p| json!(p))
    };
    // The brand is `details.Brand` where a line has one (then the store may be a reseller's), else
    // the store: every other line with a brand is written each way.
    let meta = |categories: bool| -> Vec<Value> {
        lines("meta_Gift_Cards.json.gz")
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let (store, details) = if i % 2 == 0 && m["brand"].as_str().is_some_and(|b| !b.trim().is_empty()) {
                    (json!("A Reseller"), json!({"Brand": m["brand"]}))
                } else {
                    (m["brand"].clone(), json!({}))
                };
                json!({
                    "main_category": m["main_cat"], "title": m["title"], "average_rating": null,
                    "rating_number": null, "features": m["feature"], "description": m["description"],
                    "price": price(&m["price"]), "images": [], "videos": [], "store": store,
                    "categories": if categories { m["category"].clone() } else { json!([]) }, "details": details,
                    "parent_asin": m["asin"], "bought_together": null,
                })
            })
            .collect()
    };
    let write = |name: &str, values: &[Value]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, values.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
        path
    };
    let (reviews_2023, meta_2023) = (write("Gift_Cards.jsonl", &reviews), write("meta_Gift_Cards.jsonl", &meta(true)));
    let prepare = |format: &str, reviews: &Path, meta: &Path, out: &str| {
        let mut cmd = Command::new(micn_bin());
        cmd.args(["prepare", "--input-format", format, "--protocol", "din", "--max-hist-len", "10"]);
        cmd.arg("--reviews").arg(reviews).arg("--meta").arg(meta).arg("--out").arg(tmp.path().join(out));
        cmd.output().unwrap()
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let done = prepare("amazon2023", &reviews_2023, &meta_2023, "2023");
    assert!(done.status.success(), "{}", stderr(&done));
    // The fixture's 7 repeated reviews are, in 2023's terms, a product's variants reviewed again:
    // the first kept, said, no bad line (2018 counts them as bad lines; the samples are the same).
    let said = stderr(&done);
    assert!(
        said.contains("7 reviews of a product the same user reviewed before") && !said.contains("skipped"),
        "{said}"
    );
    let (gift_reviews, gift_meta) = (
        fixture("amazon-gift-cards-2018/Gift_Cards_5.json.gz"),
        fixture("amazon-gift-cards-2018/meta_Gift_Cards.json.gz"),
    );
    let done = prepare("amazon2018", &gift_reviews, &gift_meta, "2018");
    assert!(done.status.success(), "{}", stderr(&done));
    // Two of the 148 reviewed items have meta without a category (see the 2018 test above).
    assert!(
        stderr(&done).contains("2 of the 148 reviewed items it describes have no category there"),
        "{}",
        stderr(&done)
    );
    for file in
        ["train.rkyv", "test.rkyv", "users.tsv", "items.tsv", "cats.tsv", "attributes.tsv", "item_attributes.u32"]
    {
        let read = |dir: &str| std::fs::read(tmp.path().join(dir).join(file)).unwrap();
        assert!(read("2018") == read("2023"), "{file} differs between the 2018 and the 2023 form");
    }
    let d: Value = serde_json::from_slice(&std::fs::read(tmp.path().join("2023/dataset.json")).unwrap()).unwrap();
    assert_eq!((d["source"].as_str(), d["notes"]["release"].as_str()), (Some("amazon2023"), Some("amazon2023")), "{d}");

    // The same reviews as Amazon'23's benchmark file (`user_id,parent_asin,rating,timestamp,
    // history`; a user's repeated item left out, as its scripts do and as reviews are read),
    // prepared as interactions beside either release's meta: the same dataset again.
    let mut csv = String::from("user_id,parent_asin,rating,timestamp,history\n");
    let mut histories: HashMap<String, Vec<String>> = HashMap::new();
    for r in &reviews {
        let (user, item) = (r["user_id"].as_str().unwrap(), r["parent_asin"].as_str().unwrap());
        let history = histories.entry(user.to_string()).or_default();
        if history.iter().any(|seen| seen == item) {
            continue;
        }
        csv.push_str(&format!("{user},{item},{},{},{}\n", r["rating"], r["timestamp"], history.join(" ")));
        history.push(item.to_string());
    }
    let benchmark = tmp.path().join("Gift_Cards.csv");
    std::fs::write(&benchmark, csv).unwrap();
    for (meta, out) in [(&meta_2023, "csv-2023-meta"), (&gift_meta, "csv-2018-meta")] {
        let mut cmd = Command::new(micn_bin());
        cmd.args(["prepare", "--input-format", "interactions", "--protocol", "din", "--max-hist-len", "10"]);
        cmd.arg("--interactions").arg(&benchmark).arg("--meta").arg(meta).arg("--out").arg(tmp.path().join(out));
        let done = cmd.output().unwrap();
        assert!(done.status.success(), "{out}: {}", stderr(&done));
        for file in
            ["train.rkyv", "test.rkyv", "users.tsv", "items.tsv", "cats.tsv", "attributes.tsv", "item_attributes.u32"]
        {
            let read = |dir: &str| std::fs::read(tmp.path().join(dir).join(file)).unwrap();
            assert!(read("2018") == read(out), "{file} differs between the reviews and {out}");
        }
        let d: Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join(out).join("dataset.json")).unwrap()).unwrap();
        assert_eq!((d["source"].as_str(), d["categories"].as_str()), (Some("interactions"), Some("meta")), "{d}");
    }

    // Each release's files read as another's are named, with the format that reads them.
    let wrong = prepare("amazon2018", &reviews_2023, &gift_meta, "wrong-reviews");
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("line 1: wrong type: an Amazon 2023 review (`user_id`, `parent_asin`, `timestamp`): read with --input-format amazon2023"), "{}", stderr(&wrong));
    let wrong = prepare("amazon2018", &gift_reviews, &meta_2023, "wrong-meta");
    assert!(
        stderr(&wrong).contains("does not look like a 2018 (JSON, `asin` and `category`) meta file")
            && stderr(&wrong).contains("read with --input-format amazon2023"),
        "{}",
        stderr(&wrong)
    );
    let wrong = prepare("amazon2023", &gift_reviews, &meta_2023, "wrong-format");
    assert!(stderr(&wrong).contains("read with --input-format amazon2014 or amazon2018"), "{}", stderr(&wrong));

    // Meta without any category: said, every item in `default_cat`.
    let bare = write("meta-without-categories.jsonl", &meta(false));
    let done = prepare("amazon2023", &reviews_2023, &bare, "bare");
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(stderr(&done).contains("none of the 148 reviewed items it describes has a category"), "{}", stderr(&done));
    assert_eq!(std::fs::read_to_string(tmp.path().join("bare/cats.tsv")).unwrap().lines().count(), 1, "default_cat");
}

/// Real dumps repeat items in their meta files: the first line of an item is kept (as for a
/// repeated review), said, and fatal with `--strict`. Files that open with a UTF-8 byte-order
/// mark (as Windows tools write them) prepare as without it.
#[test]
fn a_repeated_meta_line_keeps_the_first_and_a_byte_order_mark_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta) = (gift_cards_text("Gift_Cards_5.json.gz"), gift_cards_text("meta_Gift_Cards.json.gz"));
    let first = meta.lines().find(|l| l.contains("\"B00AR51Y5I\"")).unwrap();
    let again: String = first.replace("Starbucks", "Another Brand").replace("Gift Cards", "Elsewhere");
    let write = |name: &str, bytes: Vec<u8>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let bom = |text: &str| [&b"\xEF\xBB\xBF"[..], text.as_bytes()].concat();
    let files = [
        ("plain", write("reviews.json", reviews.clone().into_bytes()), write("meta.json", meta.clone().into_bytes())),
        ("marked", write("reviews-bom.json", bom(&reviews)), write("meta-bom.json", bom(&meta))),
        (
            "repeated",
            write("reviews.json", reviews.into_bytes()),
            write("meta-again.json", format!("{meta}{again}\n").into_bytes()),
        ),
    ];
    let prepare = |reviews: &Path, meta: &Path, out: &Path, strict: bool| {
        let mut cmd = Command::new(micn_bin());
        cmd.args(["prepare", "--input-format", "amazon2018", "--protocol", "din", "--max-hist-len", "10"]);
        cmd.arg("--reviews").arg(reviews).arg("--meta").arg(meta).arg("--out").arg(out);
        if strict {
            cmd.arg("--strict");
        }
        cmd.output().unwrap()
    };
    for (name, reviews, meta) in &files {
        let out = prepare(reviews, meta, &tmp.path().join(name), false);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {said}");
        assert!(!said.contains("malformed"), "{name}: {said}");
        assert_eq!(said.contains("1 meta lines describe a reviewed item again"), *name == "repeated", "{name}: {said}");
    }
    for name in ["marked", "repeated"] {
        for file in ["train.rkyv", "test.rkyv", "items.tsv", "cats.tsv", "attributes.tsv", "item_attributes.u32"] {
            let (a, b) = (tmp.path().join("plain").join(file), tmp.path().join(name).join(file));
            assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{name}: {file} differs");
        }
    }
    // With --strict (on reviews without the dump's own repeated reviews) the repeated meta line is fatal.
    let mut seen = std::collections::HashSet::new();
    let once: String = std::fs::read_to_string(&files[0].1)
        .unwrap()
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            seen.insert((v["reviewerID"].to_string(), v["asin"].to_string()))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let strict = prepare(&write("reviews-once.json", once.into_bytes()), &files[2].2, &tmp.path().join("strict"), true);
    assert_eq!(strict.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&strict.stderr).contains("item B00AR51Y5I"),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );
}

#[test]
fn sequences_attribute_lists_become_the_table_cut_to_max_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("toys");
    let attributes = fixture("s3rec-toys-2014/Toys_and_Games_item2attributes.json");
    let done = run_ok(
        Command::new(micn_bin())
            .args(["prepare", "--input-format", "sequences", "--protocol", "din", "--max-hist-len", "20"])
            .arg("--sequences")
            .arg(fixture("s3rec-toys-2014/Toys_and_Games.txt"))
            .arg("--item-attributes")
            .arg(&attributes)
            .args(["--max-attributes", "8", "--out"])
            .arg(&out),
    );
    // Lists longer than 8: 14 of 10, 8 of 11, 3 of 19, 2 of 31 (Python over the JSON file).
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("27 items have more than 8 attributes (the longest 31)"), "{stderr}");
    let d = Dataset::open(&out).unwrap();
    let table = d.attributes.as_ref().unwrap();
    assert_eq!(table.fields, (1..=8).map(|i| format!("attribute_{i}")).collect::<Vec<_>>());
    // Every item's row is its list from the JSON file, in order, cut to 8.
    let lists: HashMap<String, Vec<u64>> = serde_json::from_slice(&std::fs::read(&attributes).unwrap()).unwrap();
    let rows = rows_by_name(&d);
    assert_eq!(rows.len(), 11_924);
    for (item, row) in &rows {
        let expected: Vec<String> =
            lists[item].iter().take(8).zip(&table.fields).map(|(id, field)| format!("{field}={id}")).collect();
        assert_eq!(row, &expected, "item {item}");
    }
}

/// `micn synth`'s reviews in `raw`, with its meta file `meta` there, prepared into `out` (din).
fn prepare_synthetic(raw: &Path, meta: &str, out: &Path) {
    run_ok(
        Command::new(micn_bin())
            .args(["prepare", "--input-format", "amazon2014", "--protocol", "din", "--max-hist-len", "10"])
            .arg("--reviews")
            .arg(raw.join("reviews_Synthetic_5.json"))
            .arg("--meta")
            .arg(raw.join(meta))
            .arg("--out")
            .arg(out),
    );
}

#[test]
fn amazon_2014_meta_of_synthetic_brands_fills_the_table_as_the_generator_drew_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, out) = (tmp.path().join("raw"), tmp.path().join("data"));
    run_ok(
        Command::new(micn_bin())
            .args(["synth", "--preset", "quickstart", "--seed", "2", "--users", "300", "--items", "200"])
            .args(["--clusters", "10", "--brands", "5", "--brand-signal", "1.0", "--out"])
            .arg(&raw),
    );
    prepare_synthetic(&raw, "meta_Synthetic.json", &out);
    let d = Dataset::open(&out).unwrap();
    let rows = rows_by_name(&d);
    // Signal 1: each item's brand is its hidden cluster's home brand (cluster mod 5), as the
    // generator's oracle file gives the clusters; the 2014 meta's category path is
    // ['Books', category] and its price a whole number of dollars and 99 cents.
    let oracle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(raw.join("oracle-model.json")).unwrap()).unwrap();
    let mut with_meta = 0;
    for (item, row) in &rows {
        if row.is_empty() {
            continue; // no meta line (the generator leaves out 1 %)
        }
        with_meta += 1;
        let cluster = oracle["items"][item][0].as_u64().unwrap();
        assert_eq!(row[0], format!("brand=Brand {:04}", cluster % 5), "{item}: {row:?}");
        assert_eq!(row[1], "category_1=Books", "{item}: {row:?}");
        assert!(row[2].starts_with("category_2="), "{item}: {row:?}");
        assert!(row[3].starts_with("price=") && row.len() == 4, "{item}: {row:?}");
    }
    assert!(with_meta > rows.len() * 9 / 10, "{with_meta} of {}", rows.len());
}

/// A cached synthetic dataset made before the item-attribute table (its `dataset.json` without
/// the `attributes` entry) is made again, with the table, instead of being reused without it.
#[test]
fn a_cached_synthetic_dataset_without_the_attribute_table_is_made_again() {
    use micn::data::prepare::synthetic_dataset;
    use micn::data::protocol::Protocol;
    use micn::data::synth::{Preset, SynthConfig};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { users: 200, items: 80, clusters: 4, categories: 5, ..Preset::Quickstart.config(3) };
    let data = synthetic_dataset(&cfg, Protocol::Din, 10, tmp.path()).unwrap();
    let fresh = Dataset::open(&data).unwrap().attributes.expect("a fresh set has the table");
    // As an older micn left it: no attribute files, no entry.
    let meta_path = data.join("dataset.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert!(meta.as_object_mut().unwrap().remove("attributes").is_some());
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta).unwrap()).unwrap();
    std::fs::remove_file(data.join("attributes.tsv")).unwrap();
    std::fs::remove_file(data.join("item_attributes.u32")).unwrap();
    assert!(Dataset::open(&data).unwrap().attributes.is_none(), "the older directory still opens");
    let again = synthetic_dataset(&cfg, Protocol::Din, 10, tmp.path()).unwrap();
    assert_eq!(Dataset::open(&again).unwrap().attributes, Some(fresh));
}

/// A small sequences dataset prepared into `dir/name` from 80 users' sequences over 40 items and,
/// with `Some(columns)`, an attributes file giving each item `columns` attributes.
fn small_sequences(dir: &Path, name: &str, columns: Option<usize>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let sequences = dir.join("sequences.txt");
    let lines: Vec<String> = (1..=80)
        .map(|u| {
            let items: Vec<String> =
                (0..6 + u % 5).map(|k| format!("i{}", 1 + (u * 7 + k * (u % 3 + 2)) % 40)).collect();
            format!("u{u} {}", items.join(" "))
        })
        .collect();
    std::fs::write(&sequences, lines.join("\n") + "\n").unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["--sequences".into(), sequences.into()];
    if let Some(columns) = columns {
        let lists: HashMap<String, Vec<u64>> = (1..=40u64)
            .map(|i| (format!("i{i}"), (0..columns as u64).map(|c| 1 + (i + 3 * c) % 7).collect()))
            .collect();
        let attributes = dir.join("attributes.json");
        std::fs::write(&attributes, serde_json::to_string(&lists).unwrap()).unwrap();
        args.extend(["--item-attributes".into(), attributes.into_os_string()]);
    }
    let out = dir.join(name);
    run_ok(
        Command::new(micn_bin())
            .args(["prepare", "--input-format", "sequences", "--protocol", "din", "--max-hist-len", "8", "--seed", "1"])
            .args(&args)
            .arg("--out")
            .arg(&out),
    );
    out
}

#[test]
fn camn_refuses_a_dataset_whose_attribute_table_gives_no_item_a_value_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, data) = (tmp.path().join("raw"), tmp.path().join("data"));
    run_ok(
        Command::new(micn_bin())
            .args(["synth", "--preset", "quickstart", "--seed", "3", "--users", "200", "--items", "100", "--out"])
            .arg(&raw),
    );
    // Meta lines that describe every item and give none a brand, category or price.
    let meta = std::fs::read_to_string(raw.join("meta_Synthetic.json")).unwrap();
    let bare: String = meta
        .lines()
        .map(|line| {
            let asin = line.split("'asin': '").nth(1).and_then(|rest| rest.split('\'').next()).unwrap();
            format!("{{'asin': '{asin}', 'title': 'x'}}\n")
        })
        .collect();
    std::fs::write(raw.join("bare_meta.json"), bare).unwrap();
    prepare_synthetic(&raw, "bare_meta.json", &data);
    assert!(Dataset::open(&data).unwrap().attributes.is_some(), "a table, empty");
    let config = tmp.path().join("camn.toml");
    let run = tmp.path().join("run");
    let toml = format!(
        "[data]\ndir = {:?}\nmax_hist_len = 10\n[model]\nkind = \"camn\"\n[run]\ndir = {:?}\n",
        data.display(),
        run.display()
    );
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(micn_bin()).args(["train", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let said = format!(
        "error: {}: model.kind = \"camn\" reads item attributes, and this dataset gives no item",
        data.display()
    );
    assert!(stderr.contains(&said), "{stderr}");
}

/// A model file carries the item-attribute table it was trained with: `eval --data` of a dataset
/// of the same vocabularies whose attribute table differs (other columns; none at all) scores
/// with the model's own table, as the run scored itself, where it was refused as a damaged model
/// file (`stored with shape …`, `is in the file but not in the model`).
#[test]
fn eval_scores_with_the_attribute_table_the_model_was_trained_with_whatever_the_dataset_holds_now() {
    let tmp = tempfile::tempdir().unwrap();
    let with_three = small_sequences(tmp.path(), "three", Some(3));
    let with_one = small_sequences(tmp.path(), "one", Some(1));
    let without = small_sequences(tmp.path(), "none", None);
    for (kind, trained_on, others) in [
        ("camn", &with_three, vec![&with_one]),
        ("mfn", &with_three, vec![&with_one, &without]),
        ("mfn", &without, vec![&with_three]),
    ] {
        let run = tmp.path().join(format!("run-{kind}-{}", trained_on.file_name().unwrap().to_string_lossy()));
        let sets = [
            format!("model.kind={kind}"),
            format!("data.dir={:?}", trained_on.display().to_string()),
            "data.max_hist_len=8".into(),
            "data.valid_share=0".into(),
            "train.global_batch_size=16".into(),
            "train.max_steps=4".into(),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let summary = micn::train::train(&crate::small_config(&run, &sets), &micn::dist::SingleProcess).unwrap();
        for other in others {
            let out =
                run_ok(Command::new(micn_bin()).args(["eval", "--json", "--run"]).arg(&run).arg("--data").arg(other));
            let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let what = format!("{kind} trained on {}, scored on {}", trained_on.display(), other.display());
            assert_eq!(eval["auc"].as_f64(), Some(summary.test_auc), "{what}");
        }
    }
}
