//! A run directory as a user meets it through `micn train` and `micn eval`: an existing run is
//! never replaced by accident, mid-run evaluations never look at the test set, a saved model is
//! only scored on data it fits, and what goes wrong is said in one readable line.
use std::path::Path;
use std::process::{Command, Output};

use micn::data::prepare::synthetic_dataset;
use micn::data::protocol::Protocol;
use micn::data::synth::{self, SynthConfig};

use crate::micn_bin;
use crate::train::{dataset_dir, train_cli};

fn micn(args: &[&str]) -> Command {
    let mut cmd = Command::new(micn_bin());
    cmd.args(args);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `micn train` with the training module's configuration, expected to fail with status 3 (an input
/// error, which `micn-launch --max-restarts` does not retry); returns standard error.
fn train_refused(run: &Path, extra: &[&str]) -> String {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), crate::small_config(run, &[]).to_toml()).unwrap();
    let mut cmd = micn(&["train", "--config"]);
    cmd.arg(config.path()).args(extra);
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    err
}

/// `micn train FLAGS` again on `run`'s own configuration (as [`train_cli`] wrote it beside the
/// run), for `max_steps` steps; it must succeed.
fn train_again(run: &Path, flags: &[&str], max_steps: u64) {
    let out = micn(&[&["train"][..], flags, &["--config"]].concat())
        .arg(run.with_extension("toml"))
        .args(["--set", &format!("run.dir={:?}", run.display().to_string())])
        .args(["--set", &format!("train.max_steps={max_steps}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(run)["steps"], max_steps);
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_second_training_into_a_run_directory_is_refused_and_loses_nothing_unless_told_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_cli(&run, &["train.max_steps=6"]);
    // Every file, the run's own log too: the refused process's lines are not the run's.
    let files = ["summary.json", "model.safetensors", "metrics.jsonl", "config.toml", "logs/rank-0.log"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    let e = train_refused(&run, &["--set", "train.max_steps=4"]);
    assert!(e.contains("already holds a run") && e.contains("--resume auto") && e.contains("--overwrite"), "{e}");
    assert!(e.contains(&run.display().to_string()) && e.contains("checkpoints"), "{e}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    assert!(before == after, "a refused run changed the run directory");
    // An `--overwrite` refused on what its model reads deletes nothing: the model is built first.
    let missing = tmp.path().join("no-such-centres.safetensors");
    let e = train_refused(
        &run,
        &["--overwrite", "--set", "model.kind=mfn", "--set", &format!("model.mfn_pretrained={:?}", missing.display())],
    );
    assert!(e.contains("no-such-centres.safetensors"), "{e}");
    assert_eq!(e.matches("no-such-centres.safetensors").count(), 1, "the file named once: {e}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    assert!(before == after, "a refused --overwrite changed the run directory");
    assert!(run.join("checkpoints").is_dir());
    // Nor one whose log cannot be opened (`logs` a file): refused (exit 3), naming it, before
    // anything is deleted.
    let logs = tmp.path().join("logs-aside");
    std::fs::rename(run.join("logs"), &logs).unwrap();
    std::fs::write(run.join("logs"), "not a directory").unwrap();
    let e = train_refused(&run, &["--overwrite"]);
    assert!(e.contains(&format!("{}: cannot open the log file: is a file", run.join("logs").display())), "{e}");
    std::fs::remove_file(run.join("logs")).unwrap();
    std::fs::rename(&logs, run.join("logs")).unwrap();
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    assert!(before == after && run.join("checkpoints").is_dir(), "a refused --overwrite changed the run directory");
    // `--overwrite` starts afresh: no file of the old run survives, its checkpoints included.
    train_again(&run, &["--overwrite"], 4);
    let checkpoints: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(checkpoints, ["step-00000004"], "the old run's checkpoints are gone");
}

#[test]
fn an_empty_run_dir_is_refused_and_nothing_is_written_in_the_working_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let config = cwd.path().join("run.toml");
    std::fs::write(&config, crate::small_config(Path::new("x"), &[]).to_toml()).unwrap();
    let out = micn(&["train", "--config"])
        .arg(&config)
        .args(["--set", "run.dir=\"\""])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("run.dir is empty"), "{}", stderr(&out));
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["run.toml"]);
}

#[test]
fn print_config_shows_every_key_as_the_run_would_save_it_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tmp.path().join("run.toml");
    // A file of two keys: the rest are defaults.
    std::fs::write(&config, format!("[run]\ndir = {:?}\n[model]\nkind = \"din\"\n", run.display().to_string()))
        .unwrap();
    let print = |config: &Path, sets: &[&str]| {
        let mut cmd = micn(&["train", "--print-config", "--config"]);
        // Where the default data.dir, relative, holds no dataset (a checkout may hold one).
        cmd.arg(config).current_dir(tmp.path());
        for set in sets {
            cmd.args(["--set", set]);
        }
        crate::run_ok(&mut cmd)
    };
    let out = print(&config, &["train.lr=0.25", "model.gru_hidden=7"]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let cfg = micn::config::Config::from_toml(&printed, &config).unwrap();
    assert_eq!((cfg.train.lr, cfg.model.kind.name()), (0.25, "din"), "{printed}");
    assert_eq!(cfg.data.dir, Path::new("data/quickstart"), "the default, said");
    for key in ["[data]", "max_hist_len", "[micn]", "phi", "[checkpoint]", "keep_last", "watchdog_seconds"] {
        assert!(printed.contains(key), "{key} in {printed}");
    }
    // A key DIN does not read is said, as `train` says it, and so is a data.dir with no dataset.
    assert!(stderr(&out).contains("model.gru_hidden") && stderr(&out).contains("changes nothing"), "{}", stderr(&out));
    assert!(stderr(&out).contains("data/quickstart: no dataset there"), "{}", stderr(&out));
    assert!(!run.exists(), "nothing written");
    // What it prints is a configuration that prints the same.
    let again = tmp.path().join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    assert_eq!(String::from_utf8(print(&again, &[]).stdout).unwrap(), printed);
    // What `train` would refuse in run.dir is said in train's words, and nothing is changed there.
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("dataset.json"), "{}").unwrap();
    let warned = stderr(&print(&config, &[]));
    let refusal = format!("train would refuse this: run.dir {}: holds a dataset (dataset.json)", run.display());
    assert!(warned.contains(&refusal), "{warned}");
    std::fs::remove_file(run.join("dataset.json")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    let warned = stderr(&print(&config, &[]));
    assert!(warned.contains(&format!("{}: already holds a run (metrics.jsonl)", run.display())), "{warned}");
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 1, "nothing written");
    // A run directory another process trains into (here `flock` holds its lock, as a run does).
    let mut holder = crate::hold_run_lock(&run, "pid 4242 on elsewhere since now\n");
    let warned = stderr(&print(&config, &[]));
    let _ = holder.kill();
    let _ = holder.wait();
    let in_use = "another micn train is writing this run (pid 4242 on elsewhere since now)";
    assert!(warned.contains("train would refuse this: ") && warned.contains(in_use), "{warned}");
    std::fs::remove_dir_all(&run).unwrap();
    let warned = stderr(&print(&config, &["run.dir=\"\""]));
    assert!(warned.contains("train would refuse this: run.dir is empty"), "{warned}");
    // And what it would refuse in the dataset there, for this configuration.
    let data = format!("data.dir={:?}", dataset_dir().display().to_string());
    for (set, says) in [
        ("data.max_hist_len=400", "keeps histories of at most"),
        ("train.global_batch_size=100000", "fewer than one global batch of 100000"),
    ] {
        let warned = stderr(&print(&config, &[&data, "data.max_hist_len=10", set]));
        assert!(warned.contains("train would refuse this: ") && warned.contains(says), "{set}: {warned}");
    }
    assert!(!stderr(&print(&config, &[&data, "data.max_hist_len=10"])).contains("would refuse"), "a dataset that fits");
    // And what `train` refuses, it refuses alike.
    let e = train_refused(&run, &["--print-config", "--set", "train.max_stps=1"]);
    assert!(e.contains("unknown field `max_stps`"), "{e}");
}

#[test]
fn a_run_dir_that_holds_other_runs_or_a_dataset_is_refused_and_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let listing = |dir: &Path| {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    // `run.dir = "runs"` where `runs/x` was meant: runs one and two levels below.
    let runs = tmp.path().join("runs");
    for run in ["a", "books/seed-1"] {
        std::fs::create_dir_all(runs.join(run)).unwrap();
        std::fs::write(runs.join(run).join("config.toml"), "").unwrap();
    }
    for extra in [&[][..], &["--overwrite"], &["--resume", "auto"]] {
        let e = train_refused(&runs, extra);
        let named = |run: &str| e.contains(&runs.join(run).display().to_string());
        assert!(e.contains("holds 2 run(s) in directories below it") && named("a") && named("books/seed-1"), "{e}");
        assert!(e.contains("give the run a directory of its own"), "{e}");
        assert_eq!(listing(&runs), ["a", "books"], "nothing written there, not even the lock");
    }
    // A run's own directory is its own, a branch made below it since included.
    let base = tmp.path().join("base");
    train_cli(&base, &["train.max_steps=2"]);
    std::fs::create_dir_all(base.join("ft1")).unwrap();
    std::fs::write(base.join("ft1/config.toml"), "").unwrap();
    train_again(&base, &["--resume", "auto"], 3);
    // But a run is not written into another's own directories, which its --overwrite deletes.
    let inside = base.join("checkpoints/mine");
    let e = train_refused(&inside, &[]);
    assert!(e.contains(&format!("lies in the run {}'s own checkpoints/", base.display())), "{e}");
    assert!(!inside.exists());
    // Through a link to them too: the files would land there all the same.
    let link = tmp.path().join("to-base-logs");
    std::os::unix::fs::symlink(base.join("logs"), &link).unwrap();
    let e = train_refused(&link.join("mine"), &[]);
    assert!(e.contains(&format!("lies in the run {}'s own logs/", base.canonicalize().unwrap().display())), "{e}");
    assert!(!base.join("logs/mine").exists());
    // A dataset's directory.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("dataset.json"), "{}").unwrap();
    let e = train_refused(&data, &[]);
    assert!(e.contains(&format!("run.dir {}: holds a dataset (dataset.json)", data.display())), "{e}");
    assert_eq!(listing(&data), ["dataset.json"]);
}

/// `metrics.jsonl` as JSON values.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn mid_run_evaluations_score_the_validation_split_and_only_the_end_scores_the_test_set() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_cli(&run, &["train.max_steps=12", "train.eval_every_steps=4", "checkpoint.every_steps=6"]);
    let lines = metrics(&run);
    let valid_steps: Vec<u64> =
        lines.iter().filter(|v| v["valid_auc"].is_f64()).map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(valid_steps, [4, 6, 8, 12], "every 4 steps and at every checkpoint (6, 12)");
    let test_lines: Vec<&serde_json::Value> = lines.iter().filter(|v| v["test_auc"].is_f64()).collect();
    assert_eq!(test_lines.len(), 1, "the test set is scored once");
    assert_eq!(test_lines[0], lines.last().unwrap(), "at the end");
    assert!(lines.iter().all(|v| v["eval_auc"].is_null()));
    // The validation split holds out about a tenth of the training users (the fixture is `din`:
    // single samples), and they are not trained on.
    let s = summary(&run);
    let selected = &s["selected"];
    assert!([6, 12].contains(&selected["step"].as_u64().unwrap()), "{s}");
    assert_eq!(s["valid_auc"], lines.iter().rev().find(|v| v["valid_auc"].is_f64()).unwrap()["valid_auc"]);
    // Without a validation split there are no mid-run evaluations and nothing is selected.
    let none = tmp.path().join("none");
    train_cli(&none, &["train.max_steps=12", "train.eval_every_steps=4", "data.valid_share=0"]);
    assert!(metrics(&none).iter().all(|v| v["valid_auc"].is_null()));
    assert!(summary(&none)["selected"].is_null());
}

/// A synthetic dataset unlike the shared one: other users and items, histories of `hist`.
fn other_dataset(dir: &Path, seed: u64, hist: usize) -> std::path::PathBuf {
    let cfg =
        SynthConfig { users: 200, items: 120, clusters: 8, categories: 5, ..synth::Preset::Quickstart.config(seed) };
    synthetic_dataset(&cfg, Protocol::Din, hist, dir).unwrap()
}

#[test]
fn eval_on_another_dataset_applies_the_checks_of_train() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_cli(&run, &["train.max_steps=4"]);
    let eval = |data: &Path| micn(&["eval", "--run"]).arg(&run).arg("--data").arg(data).output().unwrap();
    // Another vocabulary: the model's ids would mean other items. Refused by name, no stack trace.
    let other = other_dataset(&tmp.path().join("other"), 9, 10);
    let out = eval(&other);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("vocabulary") && e.contains(&other.display().to_string()), "{e}");
    assert!(e.contains(&dataset_dir().display().to_string()) && !e.contains("frame #"), "{e}");
    // Shorter histories than the model reads.
    let short = other_dataset(&tmp.path().join("short"), 9, 5);
    let e = stderr(&eval(&short));
    assert!(e.contains("data.max_hist_len = 10") && e.contains("at most 5"), "{e}");
    // The same dataset under another path is fine, and scores what the run scored.
    let copy = tmp.path().join("copy");
    crate::copy_dir(dataset_dir(), &copy);
    let out = micn(&["eval", "--json", "--run"]).arg(&run).arg("--data").arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let scored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(scored["auc"], summary(&run)["test_auc"]);
    // Another dataset prepared where the run's data.dir points: the vocabularies' digest recorded
    // with the model (in its summary and in every checkpoint) tells it from the one trained on.
    let here = tmp.path().join("here");
    crate::copy_dir(dataset_dir(), &here);
    let run_here = tmp.path().join("run-here");
    train_cli(&run_here, &["train.max_steps=4", &format!("data.dir={:?}", here.display().to_string())]);
    std::fs::remove_dir_all(&here).unwrap();
    crate::copy_dir(&other, &here);
    let checkpoint = run_here.join("checkpoints/step-00000004");
    assert!(checkpoint.join("COMPLETE").exists());
    for (flag, saved) in [("--run", &run_here), ("--checkpoint", &checkpoint)] {
        let out = micn(&["eval", flag]).arg(saved).output().unwrap();
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{flag}: {e}");
        assert!(
            e.contains(&format!(
                "{}: its vocabularies are not those {} was trained with",
                here.display(),
                saved.display()
            )),
            "{flag}: {e}"
        );
        assert!(e.contains("give the dataset it was trained on with --data DIR"), "{flag}: {e}");
    }
    // The dataset trained on, given with --data (a copy): scored, whatever its path holds now.
    let out = micn(&["eval", "--json", "--run"]).arg(&run_here).arg("--data").arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Its dataset gone: said as such, with the way out.
    std::fs::remove_dir_all(&here).unwrap();
    let out = micn(&["eval", "--run"]).arg(&run_here).output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    let says =
        format!("{}: no dataset there (no dataset.json), and {} was trained on it", here.display(), run_here.display());
    assert!(e.contains(&says) && e.contains("give the dataset with --data DIR"), "{e}");
}

#[test]
fn a_file_size_limit_is_an_error_naming_the_file_not_a_silent_kill() {
    // `ulimit -f` (a batch system's file-size limit) sends SIGXFSZ at the first write past it,
    // which would end micn without a word (exit 153).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("raw");
    let done = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -f 8 && exec "$0" synth --preset quickstart --seed 1 --out "$1""#)
        .arg(micn_bin())
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&done);
    assert_eq!(done.status.code(), Some(3), "{err}");
    assert!(err.starts_with("error: ") && err.contains("File too large") && err.contains("raw"), "{err}");
    assert!(!out.exists(), "nothing half-written is left as the output");
}

#[test]
fn on_a_terminal_a_progress_bar_is_drawn_for_text_logs_and_not_among_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let bar_lines = |format: &str| -> usize {
        let run = tmp.path().join(format);
        let config = tmp.path().join(format!("{format}.toml"));
        let sets = ["train.max_steps=20", "train.log_every_steps=5", "checkpoint.every_steps=0"];
        std::fs::write(&config, crate::small_config(&run, &sets).to_toml()).unwrap();
        // `script` gives micn a terminal and copies what it draws there to its standard output.
        let command = format!("{} --log-format {format} train --config {}", micn_bin().display(), config.display());
        let out = Command::new("script").args(["-q", "-e", "-c", &command, "/dev/null"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split(['\r', '\n']).filter(|l| l.starts_with('[') && l.contains("20 loss")).count()
    };
    assert!(bar_lines("text") > 0, "the progress bar this test looks for is drawn with text logs");
    assert_eq!(bar_lines("json"), 0, "a progress bar among JSON lines");
}

#[test]
fn a_command_whose_reader_goes_away_exits_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    // `micn data stats DIR | head -0`: the reader is gone before micn writes.
    let mut child = micn(&["data", "stats"])
        .arg(dataset_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{}", out.status);
}

#[test]
fn an_error_is_one_line_that_names_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-data");
    let config = tmp.path().join("run.toml");
    let cfg = crate::small_config(&tmp.path().join("run"), &[&format!("data.dir={:?}", missing.display().to_string())]);
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let out = micn(&["train", "--config"]).arg(&config).output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "a missing dataset is not worth a restart: {e}");
    let line = e.lines().last().unwrap();
    assert!(e.ends_with('\n'), "{e:?}");
    assert!(line.starts_with("error: ") && line.contains(&missing.display().to_string()), "{line}");
    // What to do about it, by the key that named it (not the OS's "No such file or directory").
    assert!(line.contains("no dataset there (no dataset.json), and data.dir names it: prepare one"), "{line}");
    // Said once, without an OS error's debug form: a dataset description that is a directory.
    std::fs::create_dir_all(missing.join("dataset.json")).unwrap();
    let out = micn(&["train", "--config"]).arg(&config).output().unwrap();
    let line = stderr(&out).lines().last().unwrap().to_string();
    assert_eq!(out.status.code(), Some(3), "{line}");
    assert!(line.starts_with("error: ") && line.contains(&missing.display().to_string()), "{line}");
    assert_eq!(line.matches("not a regular file").count(), 1, "said once: {line}");
    assert!(!line.contains("Os {") && !line.contains("kind:"), "no debug text: {line}");
}

#[test]
fn a_history_longer_than_dien_files_keep_is_refused_without_a_flag_they_do_not_have() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dir) = (crate::prepare::fixtures().join("dien-books"), tmp.path().join("dien"));
    std::fs::create_dir(&dir).unwrap();
    for (from, to) in [("local_test", "local_train_splitByUser"), ("local_test", "local_test_splitByUser")] {
        std::fs::copy(src.join(from), dir.join(to)).unwrap();
    }
    let data = tmp.path().join("data");
    let out =
        micn(&["prepare", "--input-format", "dien", "--dien-dir"]).arg(&dir).arg("--out").arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = micn::data::Dataset::open(&data).unwrap().meta.max_hist_len;
    let config = tmp.path().join("run.toml");
    let wanted = format!("data.max_hist_len={}", kept + 1);
    let cfg =
        crate::small_config(&tmp.path().join("run"), &[&format!("data.dir={:?}", data.display().to_string()), &wanted]);
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let out = micn(&["train", "--config"]).arg(&config).output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("DIEN's files fix the history length") && !e.contains("--max-hist-len"), "{e}");
    assert!(e.contains(&format!("set data.max_hist_len to {kept} or less")), "{e}");
    // Files whose histories are all empty give nothing to learn from behaviours: refused by
    // `prepare`, not taken for a dataset no history length can train.
    let text = std::fs::read_to_string(src.join("local_test")).unwrap();
    let emptied: String = text
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
            format!("{}\t\t\n", fields[..4].join("\t"))
        })
        .collect();
    for name in ["local_train_splitByUser", "local_test_splitByUser"] {
        std::fs::write(dir.join(name), &emptied).unwrap();
    }
    let empty = tmp.path().join("empty");
    let out =
        micn(&["prepare", "--input-format", "dien", "--dien-dir"]).arg(&dir).arg("--out").arg(&empty).output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("local_train_splitByUser: every sample's history is empty"), "{e}");
    assert!(!empty.exists(), "nothing written");
}

#[test]
fn every_rank_refuses_an_existing_run_with_the_same_input_error_status() {
    // Rank 0 decides; the others must fail the same way (status 3), or an MPI job could exit 1 and
    // be restarted by the launcher with `--resume auto` into the run it refused.
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_cli(&run, &["train.max_steps=2"]);
    let cfg = crate::small_config(&run, &[]);
    let errors = micn::dist::ThreadRanks::run(2, |comm| {
        micn::train::train_from(&cfg, &comm, &micn::train::Resume::Fresh).unwrap_err()
    });
    assert!(errors[0].to_string().contains("already holds a run"), "{}", errors[0]);
    assert!(errors[1].to_string().contains("rank 0 could not claim the run directory"), "{}", errors[1]);
    assert!(errors.iter().all(|e| e.is_input_error()), "{errors:?}");
    // Under mpirun rank 0 says the cause, alone (rank 1's line only pointed to it, and came
    // first in about half the runs), and every rank ends with its status, without MPI_Abort.
    let config = tmp.path().join("again.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let out = crate::mpirun(2).arg(micn_bin()).args(["train", "--config"]).arg(&config).output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(errors[0].starts_with("error: rank 0: ") && errors[0].contains("already holds a run"), "{e}");
    assert!(!e.contains("MPI_ABORT"), "{e}");
}

#[test]
fn a_configuration_every_rank_refuses_is_said_once_and_the_job_ends_without_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, crate::small_config(&run, &[]).to_toml()).unwrap();
    // A job that failed with status 3 and said one error: the line, and all it printed.
    let one_error = |out: &Output| {
        let e = stderr(out);
        assert_eq!(out.status.code(), Some(3), "{e}");
        let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "said once: {e}");
        (errors[0].to_string(), e.clone())
    };
    // A key mistyped, a global batch (48) that 5 ranks cannot split, a data.dir with no
    // dataset, found by every rank.
    let no_data = format!("data.dir={:?}", tmp.path().join("no-data").display().to_string());
    for (np, set, cause) in [
        (2, "train.max_stps=10", "unknown field `max_stps`"),
        (5, "train.epochs=1", "not divisible by the world size 5"),
        (2, no_data.as_str(), "no-data: no dataset there"),
        // A file is no dataset either (it was every rank's "Not a directory", with MPI_Abort).
        (2, &format!("data.dir={:?}", config.display().to_string()), "run.toml: no dataset there"),
        // Found in the dataset by every rank (it was every rank's error, then MPI_Abort's banner).
        (2, "data.max_hist_len=400", "keeps histories of at most"),
    ] {
        let out = crate::mpirun(np)
            .arg(micn_bin())
            .args(["train", "--config"])
            .arg(&config)
            .args(["--set", set])
            .output()
            .unwrap();
        let (error, e) = one_error(&out);
        assert!(error.starts_with("error: rank 0: ") && error.contains(cause), "{e}");
        // Every rank ended on its own with the status: no MPI_Abort, whose banner followed.
        assert!(!e.contains("MPI_ABORT") && !e.contains("ORTE_ERROR_LOG"), "{e}");
        assert!(!run.exists(), "nothing written");
    }
    // Ranks that read different configurations: mpirun gives standard input to rank 0 alone, so
    // rank 1 reads an empty file (every default, another model). It corrupted the heap.
    let out = crate::mpirun(2)
        .arg(micn_bin())
        .args(["train", "--config", "/dev/stdin"])
        .stdin(std::fs::File::open(&config).unwrap())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let (error, e) = one_error(&out);
    assert!(error.contains("the ranks read different configurations (rank 1 in "), "{e}");
    assert!(error.contains("data.dir") && error.contains("model.kind"), "{e}");
    assert!(!run.exists() && !tmp.path().join("runs").exists(), "nothing written");
}

/// `mpirun a : b` with another command on each rank, or hosts holding other datasets at the same
/// `data.dir`: refused once, exit 3, where the ranks waited for ever in collectives of their own,
/// panicked reading each other's messages, or trained on other splits until the shorter epoch
/// ended in the watchdog.
#[test]
fn ranks_that_run_other_commands_or_read_other_datasets_are_refused_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tmp.path().join("run.toml");
    let cfg = crate::small_config(&run, &["data.dir=\"data\""]);
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let refused_once = |job: &mut Command, cause: &str| {
        let out = job.output().unwrap();
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{e}");
        let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "said once: {e}");
        assert!(errors[0].starts_with("error: rank 0: ") && errors[0].contains(cause), "{e}");
        assert!(!e.contains("panicked") && !e.contains("MPI_ABORT"), "{e}");
    };
    // Hosts A and B, each with its own copy of the dataset at `data`; B's prepared with another
    // seed (its description's seed stands for that).
    let hosts = [tmp.path().join("host-a"), tmp.path().join("host-b")];
    for (k, host) in hosts.iter().enumerate() {
        std::fs::create_dir_all(host.join("data")).unwrap();
        for entry in std::fs::read_dir(dataset_dir()).unwrap() {
            let from = entry.unwrap().path();
            std::fs::copy(&from, host.join("data").join(from.file_name().unwrap())).unwrap();
        }
        let description = host.join("data/dataset.json");
        let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&description).unwrap()).unwrap();
        meta["seed"] = (meta["seed"].as_u64().unwrap() + k as u64).into();
        std::fs::write(&description, serde_json::to_string(&meta).unwrap()).unwrap();
    }
    let on = |job: &mut Command, host: &Path, command: &[&str]| {
        job.arg("-wdir").arg(host).arg(micn_bin()).args(command).arg(&config);
    };
    let mut job = crate::mpirun(1);
    on(&mut job, &hosts[0], &["train", "--config"]);
    on(job.args([":", "-np", "1"]), &hosts[1], &["train", "--config"]);
    refused_once(&mut job, "the ranks read different datasets there (rank 1 from rank 0's)");
    // Another command on rank 1: `eval`, or the same `train` that only prints its configuration.
    for other in [&["train", "--print-config", "--config"][..], &["eval", "--run"]] {
        let mut job = crate::mpirun(1);
        on(&mut job, &hosts[0], &["train", "--config"]);
        on(job.args([":", "-np", "1"]), &hosts[0], other);
        let words = if other[0] == "eval" { "eval" } else { "train --print-config" };
        refused_once(
            &mut job,
            &format!("the ranks run different commands (rank 1 `micn {words}` where rank 0 runs `micn train`)"),
        );
    }
    assert!(!run.exists(), "nothing written");
}

#[test]
fn restore_best_without_a_validation_split_is_said_and_its_saved_config_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tmp.path().join("run.toml");
    let sets = ["train.restore_best=true", "data.valid_share=0", "train.max_steps=2"];
    std::fs::write(&config, crate::small_config(&run, &sets).to_toml()).unwrap();
    let out = micn(&["train", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("train.restore_best: no validation split"), "{}", stderr(&out));
    assert_eq!(summary(&run)["model_step"], 2);
    // The run's saved configuration loads again: it scores.
    let out = micn(&["eval", "--run"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_command_line_that_cannot_work_exits_3_and_help_exits_0() {
    let out = micn(&["train", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-flag"));
    let help = micn(&["train", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--overwrite"));
}

#[test]
fn an_interrupter_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    use micn::train::Interrupter;
    use micn::train::{train_until, Resume};
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = crate::small_config(&run, &["train.max_steps=20", "checkpoint.every_steps=1000"]);
    // Rank 1 alone is asked to stop, before the first step: the step's exchange makes it global.
    let summaries = micn::dist::ThreadRanks::run(2, |comm| {
        let interrupter = Interrupter::new();
        if micn::dist::Communicator::rank(&comm) == 1 {
            interrupter.stop();
        }
        train_until(&cfg, &comm, &Resume::Fresh, &interrupter).unwrap()
    });
    for s in &summaries {
        assert!(s.stopped_by_signal, "every rank stopped");
        assert_eq!(s.steps, 1, "after the first step");
    }
    assert!(run.join("checkpoints/step-00000001").is_dir(), "with a checkpoint of that step");
    // Not stopped: the same configuration runs to its end.
    let whole = tmp.path().join("whole");
    let cfg = crate::small_config(&whole, &["train.max_steps=3"]);
    let done = train_until(&cfg, &micn::dist::SingleProcess, &Resume::Fresh, &Interrupter::new()).unwrap();
    assert!(!done.stopped_by_signal && done.steps == 3);
}
