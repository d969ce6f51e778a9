//! The files of a dataset directory and what `micn prepare` leaves around it: every file checked
//! against `dataset.json`, the staging directories of killed preparations removed by the next
//! one, and preparation from a reviews file alone (no `--meta`).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use micn::data::Dataset;

use crate::prepare::{
    dataset_json, fixtures, gunzip_prefix, micn, open_error, prepared, qualifying, review_pairs, run_fails, stderr,
};
use crate::run_ok;

/// The real 2014 Musical Instruments reviews (3,000 lines, no meta file exists: fixtures README).
fn musical_instruments() -> PathBuf {
    fixtures().join("amazon-musical-instruments-2014/reviews_Musical_Instruments_5.head.json.gz")
}

/// `micn prepare --input-format FORMAT --reviews REVIEWS --out OUT` (no `--meta`) with `extra`.
fn prepare_without_meta(format: &str, reviews: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = micn();
    cmd.args(["prepare", "--input-format", format, "--reviews"]).arg(reviews).arg("--out").arg(out).args(extra);
    cmd
}

/// The names in `dir` that start with `.NAME.partial-` for output `out`.
fn staging_dirs(out: &Path) -> Vec<String> {
    let prefix = format!(".{}.partial-", out.file_name().unwrap().to_string_lossy());
    let mut names: Vec<String> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// The write end of `fifo`, once `reader` has opened the read end (a blocking open would hang
/// the test if the reader failed first).
fn open_fifo_writer(fifo: &Path, reader: &mut std::process::Child) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::io::AsRawFd as _;
    let started = Instant::now();
    loop {
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo) {
            Ok(file) => {
                // Blocking writes from here on: the reader takes the bytes as they come.
                // SAFETY: fcntl on a descriptor we own.
                let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
                assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) }, 0);
                return file;
            }
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                assert!(reader.try_wait().unwrap().is_none(), "prepare ended before it read its input");
                assert!(started.elapsed() < Duration::from_secs(60), "prepare never opened {}", fifo.display());
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{}: {e}", fifo.display()),
        }
    }
}

#[test]
fn a_prepare_killed_with_sigkill_leaves_staging_that_the_next_prepare_removes_unless_its_process_lives() {
    let tmp = tempfile::tempdir().unwrap();
    // The reviews come through a FIFO, so the killed preparation is caught mid-read: its staging
    // directory made, half of the reviews read, waiting for the rest.
    let fifo = tmp.path().join("reviews.json");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
    let out = tmp.path().join("out");
    let mut child = prepare_without_meta("amazon2014", &fifo, &out, &["--protocol", "din"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = child.id();
    let staging = tmp.path().join(format!(".out.partial-{killed}"));
    {
        let mut writer = open_fifo_writer(&fifo, &mut child);
        let text = gunzip_prefix(&std::fs::read(musical_instruments()).unwrap());
        std::io::Write::write_all(&mut writer, &text[..text.len() / 2]).unwrap();
        let started = Instant::now();
        while !staging.exists() {
            assert!(started.elapsed() < Duration::from_secs(60), "no staging directory {} appeared", staging.display());
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: sending SIGKILL to our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(killed as libc::pid_t, libc::SIGKILL) }, 0);
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status}");
    }
    assert!(!out.exists(), "a killed prepare left {}", out.display());
    assert!(staging.is_dir(), "SIGKILL leaves the staging directory (nothing can clean up)");

    // Beside it, the staging directory of a preparation that is still running (a live process:
    // `sleep`), which must survive.
    let mut alive = Command::new("sleep").arg("120").spawn().unwrap();
    let live_staging = tmp.path().join(format!(".out.partial-{}", alive.id()));
    std::fs::create_dir(&live_staging).unwrap();
    std::fs::write(live_staging.join("train.rkyv"), b"being written").unwrap();

    let done = run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &out, &["--protocol", "din"]));
    let log = stderr(&done);
    let survived = live_staging.is_dir() && live_staging.join("train.rkyv").exists();
    alive.kill().unwrap();
    alive.wait().unwrap();
    assert!(!staging.exists(), "the killed preparation's staging directory is still there");
    assert!(
        log.contains(&format!(
            ".out.partial-{killed}: removed the staging directory of an earlier run of this command"
        )) && log.contains(&format!("its process {killed} is gone")),
        "the removal is not reported:\n{log}"
    );
    assert!(survived, "the staging directory of a live process was removed:\n{log}");
    assert!(!log.contains(&live_staging.file_name().unwrap().to_string_lossy().into_owned()), "{log}");
    assert_eq!(staging_dirs(&out), [live_staging.file_name().unwrap().to_string_lossy()]);
    Dataset::open(&out).unwrap();
}

#[test]
fn dataset_json_lists_every_file_of_the_directory_with_its_size_and_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = prepared(tmp.path()); // synthetic: with oracle.f32
    let data = Dataset::open(&dir).unwrap();
    let mut listed: Vec<&str> = data.meta.files().into_iter().map(|(name, _)| name).collect();
    listed.push("dataset.json");
    listed.sort_unstable();
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort_unstable();
    assert_eq!(present, listed);
    assert!(present.iter().any(|n| n == "oracle.f32") && present.iter().any(|n| n == "cats.tsv"), "{present:?}");
    // Sizes and hashes computed here with xxhash-rust's xxh3_64, independently of micn.
    for (name, entry) in data.meta.files() {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(entry.bytes, bytes.len() as u64, "{name}");
        assert_eq!(entry.xxh3, format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)), "{name}");
    }
    let d = dataset_json(&dir);
    for key in ["users", "items", "cats"] {
        assert!(d["vocabularies"][key]["xxh3"].is_string(), "vocabularies.{key} in {d}");
    }
    // Every interaction read, per item: as many as the reviews; the dataset's identity is that of
    // the same dataset prepared without them (by an earlier release), so its runs still resume.
    let interactions = data.item_interactions.as_ref().expect("item_interactions.u64");
    assert_eq!(interactions.iter().sum::<u64>(), data.meta.counts.reviews);
    assert_eq!(interactions[0], 0, "the reserved id");
    let mut earlier = data.meta.clone();
    earlier.item_interactions = None;
    assert_eq!(earlier.fingerprint(), data.meta.fingerprint());
}

#[test]
fn a_vocabulary_file_replaced_by_another_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &dir, &["--protocol", "din"]));
    let cats = std::fs::read(dir.join("cats.tsv")).unwrap();

    // The case: both files parse, and users outnumber categories, so every category id
    // stays in range; only the size and checksum tell.
    std::fs::copy(dir.join("users.tsv"), dir.join("cats.tsv")).unwrap();
    let e = open_error(&dir);
    assert!(e.contains("cats.tsv:") && e.contains("was replaced"), "{e}");
    let err = run_fails(micn().args(["data", "stats"]).arg(&dir));
    assert!(err.contains("cats.tsv:") && err.contains("dataset.json says"), "{err}");
    std::fs::write(dir.join("cats.tsv"), &cats).unwrap();
    Dataset::open(&dir).unwrap();

    // Every file: one byte changed (same size) is caught by the checksum, a missing file is
    // named; restored, the directory opens again.
    let data = Dataset::open(&dir).unwrap();
    let names: Vec<&str> = data.meta.files().into_iter().map(|(name, _)| name).collect();
    drop(data);
    for name in names {
        let path = dir.join(name);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let e = open_error(&dir);
        assert!(e.contains(&format!("{name}: checksum")) && e.contains("corrupted or was replaced"), "{name}: {e}");
        std::fs::remove_file(&path).unwrap();
        let e = open_error(&dir);
        assert!(e.contains(&format!("{name}: ")), "{name}: {e}");
        std::fs::write(&path, &good).unwrap();
        Dataset::open(&dir).unwrap();
    }
}

#[test]
fn a_dataset_prepared_before_vocabulary_checksums_is_refused_with_a_request_to_prepare_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &dir, &[]));
    // What format version 1 wrote: the same without `vocabularies` and `categories`.
    let mut d = dataset_json(&dir);
    let fields = d.as_object_mut().unwrap();
    fields.remove("vocabularies");
    fields.remove("categories");
    fields.insert("format_version".into(), 1.into());
    std::fs::write(dir.join("dataset.json"), serde_json::to_string_pretty(&d).unwrap()).unwrap();
    let e = open_error(&dir);
    assert!(e.contains("dataset.json: format version 1, written by an older micn"), "{e}");
    let out = micn().args(["data", "stats"]).arg(&dir).output().unwrap();
    let err = stderr(&out);
    assert!(err.contains("prepare the dataset again with `micn prepare`"), "{err}");
    assert_eq!(out.status.code(), Some(3), "an input error: running again cannot fix it\n{err}");
}

/// `dataset.json`, the one file no checksum covers: a byte-order mark a Windows editor adds is
/// read past; a protocol micn does not prepare, and a history length the archives exceed (an
/// export cut every history to it, unsaid), are refused naming it.
#[test]
fn a_hand_edited_dataset_json_is_read_past_a_bom_and_checked_against_the_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &dir, &["--max-hist-len", "20"]));
    let written = std::fs::read(dir.join("dataset.json")).unwrap();
    std::fs::write(dir.join("dataset.json"), [&b"\xEF\xBB\xBF"[..], &written].concat()).unwrap();
    Dataset::open(&dir).unwrap();
    for (key, value, said) in [
        ("protocol", serde_json::json!("xyz"), "protocol \"xyz\": not `dien` or `din`"),
        ("max_hist_len", 0.into(), "max_hist_len 0: a history keeps at least 1 behaviour"),
        ("max_hist_len", 2.into(), "max_hist_len 2, but"),
    ] {
        let mut d: serde_json::Value = serde_json::from_slice(&written).unwrap();
        d[key] = value;
        std::fs::write(dir.join("dataset.json"), serde_json::to_string_pretty(&d).unwrap()).unwrap();
        let e = open_error(&dir);
        assert!(e.contains("dataset.json: ") && e.contains(said), "{e}");
    }
}

#[test]
fn a_reviews_file_without_meta_prepares_with_both_protocols_every_item_in_default_cat() {
    let reviews = musical_instruments();
    // Count independently of micn what the protocols must give (3,000 complete lines, each a
    // distinct user–item pair: checked here).
    let text = gunzip_prefix(&std::fs::read(&reviews).unwrap());
    let pairs = review_pairs(&text);
    assert_eq!(pairs.len(), 3000, "the fixture's lines (README)");
    let (users2, reviews2) = qualifying(&pairs);
    let tmp = tempfile::tempdir().unwrap();
    for (format, protocol) in [("amazon2014", "din"), ("amazon2014", "dien"), ("amazon2018", "din")] {
        let out = tmp.path().join(format!("{format}-{protocol}"));
        let done = run_ok(&mut prepare_without_meta(format, &reviews, &out, &["--protocol", protocol]));
        let said = String::from_utf8_lossy(&done.stdout).into_owned();
        assert!(
            said.contains("categories: none (no --meta; sequences: no --category-attribute)"),
            "{format} {protocol}: {said}"
        );
        assert!(stderr(&done).contains("no --meta: every item is in category `default_cat`"), "{}", stderr(&done));

        let d = dataset_json(&out);
        assert_eq!(d["categories"], "none", "{format} {protocol}");
        assert_eq!(d["sources"].as_array().unwrap().len(), 1, "the reviews file only");
        assert_eq!(d["counts"]["cats"], 1, "default_cat alone");
        let (train, test) =
            (d["counts"]["train_samples"].as_u64().unwrap(), d["counts"]["test_samples"].as_u64().unwrap());
        if protocol == "din" {
            // DIN's rule: train = 2·(reviews − 2·users), test = 2·users, over users with ≥ 2 reviews.
            assert_eq!(train as usize, 2 * (reviews2 - 2 * users2), "{format} din train");
            assert_eq!(test as usize, 2 * users2, "{format} din test");
        } else {
            assert_eq!((train + test) as usize, 2 * users2, "dien: one pair per qualifying user");
        }

        let data = Dataset::open(&out).unwrap();
        assert_eq!(data.vocab.cats.names, ["default_cat"]);
        assert!(data.vocab.item_cat.iter().all(|&c| c == 0), "every item in default_cat");
        for s in [data.train.samples(), data.test.samples()] {
            assert!(s.cats.iter().chain(s.hist_cats.iter()).all(|c| c.to_native() == 0));
        }

        let stats = run_ok(micn().args(["data", "stats"]).arg(&out));
        let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
        assert!(stats.contains("categories: none (no --meta; sequences: no --category-attribute)"), "{stats}");
        let json = run_ok(micn().args(["data", "stats", "--json"]).arg(&out));
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("stats --json is JSON");
        assert_eq!(json["category_source"], "none");
        assert_eq!(json["cats"], 1);
    }
    // The release only decides how meta is read: without it both give the same samples.
    for name in ["train.rkyv", "test.rkyv", "users.tsv", "items.tsv", "cats.tsv"] {
        let read = |dir: &str| std::fs::read(tmp.path().join(dir).join(name)).unwrap();
        assert!(read("amazon2014-din") == read("amazon2018-din"), "{name} differs between the releases");
    }
}

/// A `.npy` file's shape and values as i64 (f32 values converted), read by this test's own parser
/// of the format (NumPy's `format.py`: magic, version 1.0, little-endian header length, a dict).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<i64>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0, "the values start 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data = &bytes[10 + header_len..];
    let values: Vec<i64> = if header.contains("'<i8'") {
        data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    } else {
        assert!(header.contains("'<f4'"), "{header}");
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as i64).collect()
    };
    assert_eq!(values.len(), shape.iter().product::<usize>(), "{}", path.display());
    (shape, values)
}

#[test]
fn data_export_writes_every_split_as_numpy_arrays_of_the_loaders_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("din");
    run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &data, &["--protocol", "din"]));
    let d = dataset_json(&data);
    let (train, test) = (d["counts"]["train_samples"].as_u64().unwrap(), d["counts"]["test_samples"].as_u64().unwrap());
    let out = tmp.path().join("arrays");
    let said = run_ok(micn().args(["data", "export"]).arg(&data).arg("--out").arg(&out).args(["--max-hist-len", "5"]));
    assert!(String::from_utf8_lossy(&said.stdout).contains(&format!("{train} train, 0 valid, {test} test samples")));
    assert!(!out.join("valid").exists());
    let opened = Dataset::open(&data).unwrap();
    for (split, n, samples) in
        [("train", train as usize, opened.train.samples()), ("test", test as usize, opened.test.samples())]
    {
        let read = |name: &str| read_npy(&out.join(split).join(format!("{name}.npy")));
        let (shape, items) = read("hist_items");
        assert_eq!(shape, [n, 5], "{split}");
        let (_, lengths) = read("hist_len");
        let (_, labels) = read("labels");
        let (_, targets) = read("items");
        // DIN's protocol: every position gives a clicked and a sampled sample.
        assert_eq!(labels.iter().sum::<i64>() as usize, n / 2, "{split}");
        for k in 0..n {
            // The archive's sample k: its target and its last (at most 5) behaviours, left-aligned.
            assert_eq!(targets[k], samples.items[k].to_native() as i64);
            let range = samples.history_range(k);
            let kept: Vec<i64> = (range.end.saturating_sub(5).max(range.start)..range.end)
                .map(|p| samples.hist_items[p].to_native() as i64)
                .collect();
            assert_eq!(lengths[k] as usize, kept.len(), "{split} sample {k}");
            assert_eq!(&items[k * 5..k * 5 + kept.len()], kept.as_slice(), "{split} sample {k}");
            assert!(items[k * 5 + kept.len()..(k + 1) * 5].iter().all(|&i| i == 0), "zero padding");
        }
        assert_eq!(
            out.join(split).join("noclick_items.npy").exists(),
            split == "train",
            "DIEN's no-clicks for training"
        );
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("export.json")).unwrap()).unwrap();
    assert_eq!((meta["cats"].as_u64(), meta["max_hist_len"].as_u64()), (Some(1), Some(5)));

    // A validation share splits the training samples as a run holds them out.
    let held = tmp.path().join("held");
    run_ok(micn().args(["data", "export"]).arg(&data).arg("--out").arg(&held).args(["--valid-share", "0.2"]));
    let count = |split: &str| read_npy(&held.join(split).join("labels.npy")).0[0];
    assert_eq!(count("train") + count("valid"), train as usize);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(held.join("export.json")).unwrap()).unwrap();
    assert_eq!(meta["valid_share"].as_f64(), Some(0.2), "recorded, for the twin to compare");
    assert!(count("valid") > 0 && count("valid") < train as usize / 2);
    // A share outside [0, 1) is a usage error (exit status 3) that writes nothing.
    let bad = tmp.path().join("bad");
    let out = micn()
        .args(["data", "export"])
        .arg(&data)
        .arg("--out")
        .arg(&bad)
        .args(["--valid-share", "1.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--valid-share 1.5"), "{}", stderr(&out));
    assert!(!bad.exists());
    // Histories longer than the dataset keeps cannot be exported (`micn train` refuses them too).
    let out =
        micn().args(["data", "export"]).arg(&data).arg("--out").arg(&bad).args(["--max-hist-len", "500"]).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--max-hist-len 500: the dataset keeps histories of at most"), "{}", stderr(&out));
    assert!(!bad.exists());
}

/// Every file under `dir` with its bytes, by path.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(files_under(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            all.push((path, bytes));
        }
    }
    all.sort();
    all
}

/// An export is whole or absent: one that fills the disk leaves the earlier export there byte for
/// byte (and no staging directory); a directory that is not an export is refused, and so is a
/// history length of 0.
#[test]
fn a_data_export_that_fails_leaves_the_earlier_export_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("din");
    run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &data, &["--protocol", "din"]));
    let export = |out: &Path, width: &str| {
        micn()
            .args(["data", "export"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args(["--max-hist-len", width])
            .output()
            .unwrap()
    };
    // How much room an export of histories of 5 and one of 20 take.
    let size = |width: &str| -> u64 {
        let probe = tmp.path().join(format!("probe-{width}"));
        assert!(export(&probe, width).status.success());
        files_under(&probe).iter().map(|(_, b)| b.len() as u64).sum()
    };
    let (five, twenty) = (size("5"), size("20"));
    assert!(twenty > five * 2, "{five} {twenty}");
    let disk = tmp.path().join("disk");
    // Room for the first and half the second.
    let _mounted = match crate::SmallDisk::mount(&disk, five + twenty / 2 + (64 << 10)) {
        Ok(mounted) => mounted,
        Err(why) => {
            eprintln!("skipped the full-disk half: {why}");
            return;
        }
    };
    let out = disk.join("arrays");
    assert!(export(&out, "5").status.success());
    let before = files_under(&out);
    // The disk fills midway through histories of 20.
    let failed = export(&out, "20");
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("No space left"), "{}", stderr(&failed));
    assert_eq!(files_under(&out), before, "the earlier export changed");
    let left: Vec<_> = std::fs::read_dir(&disk).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["arrays"], "a staging directory was left behind");
    // With room: an empty directory is taken, and an earlier export replaced whole.
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).unwrap();
    assert!(export(&again, "5").status.success());
    assert!(export(&again, "20").status.success());
    let names = |dir: &Path| -> Vec<PathBuf> {
        files_under(dir).into_iter().map(|(p, _)| p.strip_prefix(dir).unwrap().to_path_buf()).collect()
    };
    assert_eq!(names(&again), names(&tmp.path().join("probe-20")));
    // Not an export: refused, untouched.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let refused = export(&mine, "5");
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("mine: already exists"), "{}", stderr(&refused));
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    // A file of an export's name beside the user's own is no export either.
    std::fs::write(mine.join("export.json"), "{}").unwrap();
    let refused = export(&mine, "5");
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("holds notes.txt, which this command does not write"), "{}", stderr(&refused));
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "mine");
    // Nor is an earlier export the user added a file to.
    std::fs::write(again.join("notes.txt"), "mine").unwrap();
    let refused = export(&again, "5");
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert_eq!(std::fs::read_to_string(again.join("notes.txt")).unwrap(), "mine");
    let zero = export(&tmp.path().join("zero"), "0");
    assert_eq!(zero.status.code(), Some(3), "{}", stderr(&zero));
    assert!(stderr(&zero).contains("--max-hist-len must be at least 1"), "{}", stderr(&zero));
}

/// A user's own dataset where a benchmark keeps its synthetic one (`bench dist --work-dir W`
/// reads `W/data`) is refused, byte for byte untouched: it was replaced by synthetic data when it
/// had no item-attribute table, and timed as if synthetic when it had one.
#[test]
fn a_benchmark_refuses_a_dataset_it_did_not_make_where_it_keeps_its_synthetic_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(&mut prepare_without_meta("amazon2014", &musical_instruments(), &data, &["--protocol", "din"]));
    let before = std::fs::read(data.join("dataset.json")).unwrap();
    let cfg = micn::data::synth::SynthConfig {
        users: 200,
        items: 80,
        clusters: 4,
        categories: 5,
        ..micn::data::synth::Preset::Quickstart.config(3)
    };
    let refused = micn::data::prepare::synthetic_dataset(&cfg, micn::data::protocol::Protocol::Din, 10, tmp.path())
        .expect_err("a dataset it did not make");
    let message = refused.to_string();
    assert!(message.contains(&data.display().to_string()), "{message}");
    assert!(
        message.contains("a dataset this benchmark did not make (amazon2014 data, from reviews_Musical_Instruments_5"),
        "{message}"
    );
    assert_eq!(std::fs::read(data.join("dataset.json")).unwrap(), before);
    Dataset::open(&data).unwrap();
}
