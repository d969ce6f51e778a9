//! `micn predict`: one score per sample, with its user and item, equal to what `micn eval`
//! measures — the AUC of the written scores is `micn eval`'s, for the test set and the
//! validation split, from a run directory and from a checkpoint, one process and two ranks.
use std::path::Path;
use std::process::Command;

use micn::dist::SingleProcess;
use micn::train::{train_from, Resume};

use crate::{micn_bin, mpirun, run_ok};

/// One line of `micn predict`'s CSV.
struct Row {
    sample: u32,
    user: String,
    user_key: u32,
    item: String,
    label: u8,
    score: f32,
}

/// Every line of a CSV `micn predict` wrote.
fn read_csv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sample,user,user_key,item,label,score"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            Row {
                sample: f[0].parse().unwrap(),
                user: f[1].into(),
                user_key: f[2].parse().unwrap(),
                item: f[3].into(),
                label: f[4].parse().unwrap(),
                score: f[5].parse().unwrap(),
            }
        })
        .collect()
}

fn eval_auc(args: &[&str]) -> f64 {
    let out = run_ok(Command::new(micn_bin()).arg("eval").arg("--json").args(args));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["auc"].as_f64().unwrap()
}

/// The AUC of the written scores, by the metrics `micn eval` uses.
fn auc(rows: &[Row]) -> f64 {
    let keys: Vec<u32> = rows.iter().map(|r| r.user_key).collect();
    let probs: Vec<f32> = rows.iter().map(|r| r.score).collect();
    let labels: Vec<u8> = rows.iter().map(|r| r.label).collect();
    micn::metrics::test_metrics(&keys, &probs, &labels).unwrap().auc
}

#[test]
fn predictions_carry_user_and_item_and_their_auc_is_evals_on_every_split_and_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = crate::small_config(&run, &["train.max_steps=30", "train.epochs=1", "checkpoint.every_steps=20"]);
    train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    let dataset = micn::data::Dataset::open(&cfg.data.dir).unwrap();
    let run_arg = run.to_str().unwrap();

    let test_csv = tmp.path().join("test.csv");
    let out = run_ok(Command::new(micn_bin()).args(["predict", "--run", run_arg, "--out"]).arg(&test_csv));
    let rows = read_csv(&test_csv);
    // Said on standard error: standard output may be the scores themselves (`--out /dev/stdout`).
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{} scores of the test set", rows.len())));
    assert_eq!(rows.len(), dataset.test.samples().len());
    assert!(rows.iter().enumerate().all(|(k, r)| r.sample == k as u32), "every test sample once, in archive order");
    let test = dataset.test.samples();
    for r in &rows {
        let i = r.sample as usize;
        assert_eq!(r.user, dataset.vocab.users.names[test.users[i].to_native() as usize]);
        assert_eq!(r.user_key, test.user_keys[i].to_native());
        assert_eq!(r.item, dataset.vocab.items.names[test.items[i].to_native() as usize]);
        assert_eq!(r.label, test.labels[i]);
        assert!((0.0..=1.0).contains(&r.score));
    }
    assert_eq!(auc(&rows), eval_auc(&["--run", run_arg]));

    // The same scores as JSON lines, and from two ranks.
    let jsonl = tmp.path().join("test.jsonl");
    run_ok(Command::new(micn_bin()).args(["predict", "--run", run_arg, "--out"]).arg(&jsonl));
    let from_json: Vec<f32> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap() as f32)
        .collect();
    assert_eq!(from_json, rows.iter().map(|r| r.score).collect::<Vec<_>>());
    let two_ranks = tmp.path().join("two.csv");
    run_ok(mpirun(2).arg(micn_bin()).args(["predict", "--run", run_arg, "--out"]).arg(&two_ranks));
    assert_eq!(std::fs::read(&two_ranks).unwrap(), std::fs::read(&test_csv).unwrap());

    // The validation split, from a checkpoint: the score the checkpoint recorded.
    let checkpoint = run.join("checkpoints").join(micn::checkpoint::dir_name(20));
    let valid_csv = tmp.path().join("valid.csv");
    let ck = checkpoint.to_str().unwrap();
    run_ok(Command::new(micn_bin()).args(["predict", "--split", "valid", "--checkpoint", ck, "--out"]).arg(&valid_csv));
    let valid = read_csv(&valid_csv);
    let recorded = micn::checkpoint::verify(&checkpoint).unwrap().own_auc().unwrap();
    assert_eq!(auc(&valid), recorded);
    assert_eq!(auc(&valid), eval_auc(&["--split", "valid", "--checkpoint", ck]));
    // The training split is the rest of the training archive.
    let train_csv = tmp.path().join("train.csv");
    run_ok(Command::new(micn_bin()).args(["predict", "--split", "train", "--run", run_arg, "--out"]).arg(&train_csv));
    assert_eq!(read_csv(&train_csv).len() + valid.len(), dataset.train.samples().len());
}

/// A run that held out no validation samples has no validation split to score: `eval` and
/// `predict` say so instead of "one class", or a file of no scores.
#[test]
fn the_validation_split_of_a_run_without_one_is_refused_by_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = crate::small_config(&run, &["train.max_steps=2", "train.epochs=1", "data.valid_share=0"]);
    micn::train::train_from(&cfg, &micn::dist::SingleProcess, &micn::train::Resume::Fresh).unwrap();
    let out = tmp.path().join("valid.csv");
    for args in [
        &["eval", "--split", "valid", "--run"][..],
        &["predict", "--split", "valid", "--out", out.to_str().unwrap(), "--run"],
    ] {
        let refused = Command::new(micn_bin()).args(args).arg(&run).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("the run holds out no validation samples (data.valid_share = 0)"), "{stderr}");
    }
    assert!(!out.exists());
    // `--data` that names no dataset: `micn data export`'s arrays, a typo.
    let export = tmp.path().join("export");
    run_ok(Command::new(micn_bin()).args(["data", "export"]).arg(&cfg.data.dir).arg("--out").arg(&export));
    for (data, said) in [(export.clone(), "it holds `micn data export`'s arrays"), (tmp.path().join("dta"), "")] {
        let refused =
            Command::new(micn_bin()).args(["eval", "--run"]).arg(&run).arg("--data").arg(&data).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{stderr}");
        let names = format!("{}: no dataset there (no dataset.json", data.display());
        assert!(stderr.contains(&names) && stderr.contains("and --data names it") && stderr.contains(said), "{stderr}");
    }
    // A run whose end is damaged or half written (killed between its model and its summary), or
    // not written yet (one still training), points at its newest checkpoint: without its summary
    // the model file, configuration and vocabularies are vouched for by nothing.
    let newest = run.join("checkpoints").join(micn::checkpoint::dir_name(2));
    let remedy = format!("score its newest checkpoint with --checkpoint {}", newest.display());
    let summary = std::fs::read(run.join("summary.json")).unwrap();
    std::fs::write(run.join("summary.json"), &summary[..summary.len() / 2]).unwrap();
    let unfinished = "the run has not finished (its model.safetensors and summary.json are written at the end)";
    let damaged = "the run's summary is damaged";
    for (said, then_remove) in
        [(damaged, Some("summary.json")), (unfinished, Some("model.safetensors")), (unfinished, None)]
    {
        let refused = Command::new(micn_bin()).args(["eval", "--run"]).arg(&run).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains(&format!("{said}; {remedy}")) || stderr.contains(&format!("{said}: {remedy}")),
            "{stderr}"
        );
        if let Some(file) = then_remove {
            std::fs::remove_file(run.join(file)).unwrap();
        }
    }
    // One that trains now (here `flock` holds its lock, as the run does) is said to, exit 1: the
    // same command works once it ends.
    let mut holder = crate::hold_run_lock(&run, "pid 4242 on elsewhere since now\n");
    let refused = Command::new(micn_bin()).args(["eval", "--run"]).arg(&run).output().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the run has not finished: it is training now (pid 4242 on elsewhere since now)"),
        "{stderr}"
    );
}

#[test]
fn predict_refuses_an_output_it_cannot_name_the_format_of_and_writes_nothing_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scores.txt");
    let bad = Command::new(micn_bin()).args(["predict", "--run", "/no/such/run", "--out"]).arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(3), "{err}");
    assert!(err.contains("scores.txt") && err.contains("--format csv|jsonl"), "{err}");
    let missing = tmp.path().join("scores.csv");
    let bad =
        Command::new(micn_bin()).args(["predict", "--run", "/no/such/run", "--out"]).arg(&missing).output().unwrap();
    assert_eq!(bad.status.code(), Some(3), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/no/such/run"));
    assert!(!missing.exists() && !out.exists());
    // A directory: said so, not asked for a format.
    let bad =
        Command::new(micn_bin()).args(["predict", "--run", "/no/such/run", "--out"]).arg(tmp.path()).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("--out {}: is a directory", tmp.path().display())), "{err}");
}

/// `path`, a safetensors file, with the first value of its f32 tensor `name` set to NaN.
fn poison(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    assert_eq!(header[name]["dtype"], "F32", "{header}");
    let at = 8 + len + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_model_that_scores_nan_and_an_output_that_is_an_input_or_a_run_s_are_refused_by_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = crate::small_config(&run, &["train.max_steps=2", "train.epochs=1"]);
    cfg.data.dir = tmp.path().join("data");
    crate::copy_dir(crate::train::dataset_dir(), &cfg.data.dir);
    train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    // predict would replace what it reads (a file of the dataset), or a part of a run: its model,
    // metrics or log, a checkpoint's file, scoring the run or one of its checkpoints.
    let model = run.join("model.safetensors");
    let checkpoint = std::fs::read_dir(run.join("checkpoints")).unwrap().next().unwrap().unwrap().path();
    let run_arg = ["--run", run.to_str().unwrap()];
    let checkpoint_arg = ["--checkpoint", checkpoint.to_str().unwrap()];
    let read = format!("{}: is a file this command reads", cfg.data.dir.join("items.tsv").display());
    let own = |name: &str| format!("is the run {}'s own {name}, which only the run writes", run.display());
    let in_own = |name: &str| format!("is a file in the run {}'s own {name}", run.display());
    // (Trained in this process, the run logs to standard error alone.)
    std::fs::create_dir_all(run.join("logs")).unwrap();
    std::fs::write(run.join("logs/rank-0.log"), "a log line\n").unwrap();
    for (input, scored, said) in [
        (cfg.data.dir.join("items.tsv"), run_arg, read),
        (model.clone(), run_arg, own("model.safetensors")),
        (model.clone(), checkpoint_arg, own("model.safetensors")),
        (run.join("metrics.jsonl"), run_arg, own("metrics.jsonl")),
        (run.join("logs/rank-0.log"), checkpoint_arg, in_own("logs")),
        (checkpoint.join("model.safetensors"), run_arg, in_own("checkpoints")),
    ] {
        let before = std::fs::read(&input).unwrap();
        let args = ["predict", "--format", "csv", scored[0], scored[1], "--out", input.to_str().unwrap()];
        let refused = Command::new(micn_bin()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(&said), "{said}: {stderr}");
        assert_eq!(std::fs::read(&input).unwrap(), before);
    }
    // A link to a file not made yet in a run's logs/ is where the write would land.
    let link = tmp.path().join("scores.csv");
    std::os::unix::fs::symlink(run.join("logs/scores.csv"), &link).unwrap();
    let refused =
        Command::new(micn_bin()).args(["predict", "--run"]).arg(&run).arg("--out").arg(&link).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.status.code() == Some(3) && stderr.contains(&in_own("logs")), "{stderr}");
    assert!(!run.join("logs/scores.csv").exists());
    std::fs::remove_file(&link).unwrap();
    // export mfn-centres too (its own file, the checkpoint's it reads, the dataset's).
    for (out, said) in [
        (model.clone(), "which only the run writes"),
        (checkpoint.join("state.json"), "which only the run writes"),
        (cfg.data.dir.join("dataset.json"), "is a file this command reads"),
    ] {
        let before = std::fs::read(&out).unwrap();
        let args = ["export", "mfn-centres", "--steps", "1", "--run", checkpoint.to_str().unwrap(), "--out"];
        let refused = Command::new(micn_bin()).args(args).arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }
    // An earlier prediction beside the model is replaced, as any output is.
    let beside = run.join("test.csv");
    for _ in 0..2 {
        run_ok(Command::new(micn_bin()).args(["predict", "--run"]).arg(&run).arg("--out").arg(&beside));
    }
    poison(&model, "main.head.output.bias");
    let out = tmp.path().join("scores.csv");
    // A model file other than the run wrote (its summary records the checksum) is refused as such.
    for args in [&["eval", "--run"][..], &["predict", "--out", out.to_str().unwrap(), "--run"]] {
        let refused = Command::new(micn_bin()).args(args).arg(&run).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("model_xxh3") && stderr.contains("is not the one the run wrote"), "{args:?}: {stderr}");
    }
    // Without the checksum (a summary written before it was kept), the scores are checked.
    let summary_path = run.join("summary.json");
    let mut summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    summary.as_object_mut().unwrap().remove("model_xxh3").expect("the run recorded its model's checksum");
    std::fs::write(&summary_path, summary.to_string()).unwrap();
    for args in [&["eval", "--run"][..], &["predict", "--out", out.to_str().unwrap(), "--run"]] {
        let refused = Command::new(micn_bin()).args(args).arg(&run).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{args:?}: {stderr}");
        let says = format!("{}: the model's scores of the test set are not finite (", model.display());
        assert!(stderr.contains(&says) && stderr.contains("are NaN)"), "{args:?}: {stderr}");
    }
    assert!(!out.exists());
}

/// A run's `config.toml` damaged or edited since the run saved it: what cannot be built or found
/// from it is said to come from it (an empty file named the default dataset as the one "trained
/// on", another model blamed the model file for missing tensors).
#[test]
fn a_damaged_run_configuration_is_named_as_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    crate::tiny_din_run(&run);
    let config = run.join("config.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["config_hash"],
        micn::checkpoint::config_hash(&written).as_str(),
        "the summary hashes config.toml"
    );
    let other_model = written.replace("kind = \"din\"", "kind = \"mind\"");
    assert_ne!(other_model, written);
    let eval = || Command::new(micn_bin()).args(["eval", "--run"]).arg(&run).output().unwrap();
    for damaged in ["", &other_model] {
        std::fs::write(&config, damaged).unwrap();
        let refused = eval();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{damaged:?}: {stderr}");
        let said = format!("{}: not the configuration the run saved (its hash is", config.display());
        assert!(stderr.contains(&said) && stderr.contains("edited or damaged"), "{stderr}");
    }
    // An older summary, without the hash: the model it names tells.
    let mut older = summary.clone();
    older.as_object_mut().unwrap().remove("config_hash");
    std::fs::write(run.join("summary.json"), older.to_string()).unwrap();
    std::fs::write(&config, &other_model).unwrap();
    let stderr = String::from_utf8_lossy(&eval().stderr).into_owned();
    assert!(stderr.contains("it configures mind + MICN, summary.json says din + MICN was trained"), "{stderr}");
    // An edit the model is found and built from is no error.
    std::fs::write(&config, format!("{written}\n# a note of the user's\n")).unwrap();
    run_ok(Command::new(micn_bin()).args(["eval", "--run"]).arg(&run));
}
