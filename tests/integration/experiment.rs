//! Experiments (issue: sweeps and reports): a sweep stopped by SIGTERM in its second run resumes
//! on the same command without redoing the first, and its resumed run ends with the same bytes
//! as an uninterrupted one; a changed command is refused before anything trains; `micn report`
//! names unfinished and foreign directories instead of failing.
use std::path::Path;
use std::process::{Command, Stdio};

use micn::dist::SingleProcess;
use micn::experiment::sweep::{self, SweepSpec};
use micn::train::{train_from, Resume};

use crate::{micn_bin, run_ok};

/// The sweep command of these tests: φ ∈ {0.1, 0.9}, one repeat.
fn sweep_cmd(base: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(micn_bin());
    cmd.arg("sweep").arg("--config").arg(base).args(["--grid", "micn.phi=[0.1,0.9]", "--out"]).arg(out).args(extra);
    cmd
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn an_interrupted_sweep_resumes_without_redoing_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.toml");
    let cfg = crate::small_config(
        &tmp.path().join("unused"),
        &["train.epochs=4", "train.log_every_steps=5", "checkpoint.every_steps=10", "train.eval_every_steps=0"],
    );
    std::fs::write(&base, cfg.to_toml()).unwrap();
    let out = tmp.path().join("sweep");
    let first = out.join("micn.phi=0.1/repeat-0");
    let second = out.join("micn.phi=0.9/repeat-0");

    // Stop the sweep with SIGTERM once its second run has trained a few steps.
    let child = sweep_cmd(&base, &out, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while read_lines(&second.join("metrics.jsonl")) < 2 {
        assert!(started.elapsed().as_secs() < 300, "the second run did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success(), "an interrupted sweep is not a success");
    assert!(stderr.contains("stopped by a signal during") && stderr.contains("micn.phi=0.9"), "{stderr}");
    let first_summary = read(&first.join("summary.json"));
    assert!(read(&second.join("summary.json")).contains("\"stopped_by_signal\": true"));
    assert!(!micn::checkpoint::list(&second.join("checkpoints")).is_empty(), "the stopped run checkpointed");

    // The same command again: the first run is skipped, the second resumed to its end.
    let again = run_ok(&mut sweep_cmd(&base, &out, &[]));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("micn.phi=0.1/repeat-0: finished earlier"), "{stdout}");
    assert!(stdout.contains("micn.phi=0.9/repeat-0: resumed"), "{stdout}");
    assert!(stdout.contains("1 runs trained, 1 finished earlier"), "{stdout}");
    assert_eq!(read(&first.join("summary.json")), first_summary, "the finished run was not redone");
    // Exact resume through the sweep: the same bytes as an uninterrupted run of the same plan.
    let spec = SweepSpec {
        configs: vec![base.clone()],
        grid: vec![sweep::parse_grid("micn.phi=[0.1,0.9]").unwrap()],
        repeats: 1,
        np: 1,
        out: out.clone(),
        ..Default::default()
    };
    let mut planned = sweep::plan(&spec).unwrap()[1].config.clone();
    planned.run.dir = tmp.path().join("straight");
    train_from(&planned, &SingleProcess, &Resume::Fresh).unwrap();
    assert_eq!(
        std::fs::read(second.join("model.safetensors")).unwrap(),
        std::fs::read(planned.run.dir.join("model.safetensors")).unwrap()
    );
    // The report of the sweep: one group per φ, n = 1 each.
    let md = read(&out.join("report/report.md"));
    assert!(md.contains("| `micn.phi` | n |") && md.contains("| 0.1 | 1 |") && md.contains("| 0.9 | 1 |"), "{md}");
    assert!(out.join("report/auc-vs-micn.phi.png").is_file());

    // A nothing-left re-run trains nothing; a changed setting is refused, naming the key.
    let done = run_ok(&mut sweep_cmd(&base, &out, &[]));
    assert!(String::from_utf8_lossy(&done.stdout).contains("0 runs trained, 2 finished earlier"));
    let changed = sweep_cmd(&base, &out, &["--set", "train.lr=0.01"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success() && stderr.contains("differs in train.lr"), "{stderr}");

    // Moved, and named another way: the same runs, none trained again.
    let moved = tmp.path().join("moved");
    std::fs::rename(&out, &moved).unwrap();
    let again = run_ok(sweep_cmd(&base, Path::new("./moved"), &[]).current_dir(tmp.path()));
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 runs trained, 2 finished earlier"));
    // A run stopped before its first checkpoint starts again (`--resume auto` would refuse to).
    let second = moved.join("micn.phi=0.9/repeat-0");
    std::fs::remove_dir_all(second.join("checkpoints")).unwrap();
    std::fs::remove_file(second.join("summary.json")).unwrap();
    let again = run_ok(&mut sweep_cmd(&base, &moved, &[]));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("1 runs trained, 1 finished earlier"), "{stdout}");
    assert!(stdout.contains("starting again (it stopped before its first checkpoint)"), "{stdout}");
    assert!(!stdout.contains("resum"), "nothing was resumed: {stdout}");
    assert!(
        std::fs::read(second.join("model.safetensors")).unwrap()
            == std::fs::read(planned.run.dir.join("model.safetensors")).unwrap(),
        "started again, it ends as an uninterrupted run"
    );
    // A finished run that lost its config.toml: trained again, it ends at once with the summary
    // it had, and gets its configuration back.
    let first = moved.join("micn.phi=0.1/repeat-0");
    let summary = read(&first.join("summary.json"));
    std::fs::remove_file(first.join("config.toml")).unwrap();
    let again = run_ok(&mut sweep_cmd(&base, &moved, &[]));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("1 runs trained, 1 finished earlier"), "{stdout}");
    assert_eq!(read(&first.join("summary.json")), summary);
    assert!(first.join("config.toml").is_file());
}

fn read_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |m| m.lines().count())
}

#[test]
fn bad_sweep_arguments_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.toml");
    std::fs::write(&base, crate::small_config(&tmp.path().join("r"), &[]).to_toml()).unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--grid", "micn.phi=0.5"], "--grid micn.phi=0.5: the values must be a list"),
        (&["--grid", "micn.phi=[0.1,0.2]", "--grid", "micn.phi=[0.3]"], "--grid micn.phi=… given twice"),
        (&["--launch-arg=--max-restarts", "--launch-arg=3"], "set --np (or np) above 1, or leave them out"),
        (&["--set", "run.dir=\"elsewhere\""], "--set run.dir=\"elsewhere\": is set by the sweep itself"),
        (&["--grid", "micn.phi=[1.0,0.5,1]"], "micn.phi=1/repeat-0: configures the same training as"),
        (&["--grid", "micn.phi=[0.5,2.0]"], "grid value micn.phi=2.0"),
        (&["--grid", "micn.nonsense=[1,2]"], "nonsense"),
        (&["--repeats", "0"], "repeats: must be at least 1"),
    ];
    for (args, expected) in cases {
        let mut cmd = Command::new(micn_bin());
        cmd.arg("sweep").arg("--config").arg(&base).arg("--out").arg(tmp.path().join("out")).args(args);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!tmp.path().join("out").exists(), "nothing is written for a refused sweep");
    // An --out that is a file or a run's directory, found by a dry run too.
    std::fs::write(tmp.path().join("afile"), "mine").unwrap();
    std::fs::create_dir(tmp.path().join("arun")).unwrap();
    std::fs::write(tmp.path().join("arun/config.toml"), "").unwrap();
    for (out, expected) in [("afile", "afile: is not a directory"), ("arun", "arun: holds a run (config.toml)")] {
        let mut cmd = Command::new(micn_bin());
        cmd.arg("sweep").arg("--config").arg(&base).arg("--dry-run").arg("--out").arg(tmp.path().join(out));
        let done = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(done.status.code() == Some(3) && stderr.contains(expected), "{out}: {stderr}");
    }
    // The root directory, whose report would walk the whole machine.
    let done = Command::new(micn_bin()).arg("sweep").arg("--config").arg(&base).args(["--out", "/"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.code() == Some(3) && stderr.contains("--out /: the root directory"), "{stderr}");
    // Points apart only in a key the model does not read are planned (a grid may vary a key
    // only one of its models reads), and said to train alike.
    let mut cmd = Command::new(micn_bin());
    cmd.arg("sweep").arg("--config").arg(&base).args(["--grid", "model.mind_interests=[2,4]", "--dry-run", "--out"]);
    let done = cmd.arg(tmp.path().join("alike")).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("model.mind_interests=4/repeat-0 trains as")
            && stderr.contains("they differ only in model.mind_interests, which model.kind = \"dien\" does not read"),
        "{stderr}"
    );
    let missing = Command::new(micn_bin()).args(["sweep", "no-such-sweep.toml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-sweep.toml"));
}

/// A sweep whose standard output fails never leaves a run going unwatched: on a full disk it
/// stops before training anything; when its pipe closes during a run (`micn sweep … | head -n
/// 1`), that run ends and the sweep stops saying why.
#[test]
fn a_sweep_whose_output_fails_stops_with_an_error_and_leaves_nothing_running() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.toml");
    let sets = ["train.max_steps=20", "train.eval_every_steps=0", "train.log_every_steps=5"];
    std::fs::write(&base, crate::small_config(&tmp.path().join("unused"), &sets).to_toml()).unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = tmp.path().join("full");
    let ended = sweep_cmd(&base, &out, &[]).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to standard output: No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked") && !out.join("micn.phi=0.1/repeat-0/config.toml").exists(), "{stderr}");

    let out = tmp.path().join("pipe");
    let mut child = sweep_cmd(&base, &out, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("micn.phi=0.1/repeat-0: training"), "{first}");
    // The reader is gone: the pipe is closed.
    let ended = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to standard output: Broken pipe"), "{stderr}");
    assert!(out.join("micn.phi=0.1/repeat-0/summary.json").exists(), "the run in progress ended");
    let needle = out.to_str().unwrap();
    assert_eq!(crate::launch::processes_mentioning(needle), Vec::<i32>::new(), "a run was left going");
}

/// A sweep killed outright (SIGKILL: no handler runs) takes its run down with it: the run gets
/// SIGTERM, checkpoints and ends, rather than training on unwatched and holding its directory
/// against the same sweep run again.
#[test]
fn a_killed_sweep_leaves_no_run_training() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.toml");
    let sets = ["train.epochs=1000", "train.max_steps=100000", "train.log_every_steps=5", "checkpoint.every_steps=0"];
    std::fs::write(&base, crate::small_config(&tmp.path().join("unused"), &sets).to_toml()).unwrap();
    let out = tmp.path().join("out");
    let mut sweep = sweep_cmd(&base, &out, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let run = out.join("micn.phi=0.1/repeat-0");
    crate::launch::wait_for_training_past(&run, 5);
    sweep.kill().unwrap();
    sweep.wait().unwrap();
    all_end_within_a_minute(&out, "the run trains on without its sweep");
    let summary: serde_json::Value = serde_json::from_str(&read(&run.join("summary.json"))).unwrap();
    assert_eq!(summary["stopped_by_signal"], true, "{summary}");
}

/// `micn bench dist` killed outright takes the job it times (launcher, mpirun, ranks) down with
/// it, as a killed sweep does its run.
#[test]
fn a_killed_distribution_benchmark_leaves_no_job_running() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("bench-dist");
    // Its runs' lines in a file: a pipe nobody reads would stop them once full.
    let log = tmp.path().join("bench.log");
    let bench = Command::new(micn_bin())
        .args(["bench", "dist", "--samples", "100000000", "--batch", "128", "--trials", "1", "--work-dir"])
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed however the test ends: a benchmark of 100 million samples left running is not.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut bench = Killed(bench);
    let run = work.join("np1-b128");
    let started = std::time::Instant::now();
    while !run.join("metrics.jsonl").exists() {
        if let Some(status) = bench.0.try_wait().unwrap() {
            panic!("bench dist ended ({status}) before its job trained: {}", read(&log));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "bench dist's job never trained");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    crate::launch::wait_for_training_past(&run, 1);
    drop(bench);
    all_end_within_a_minute(&work, "the benchmark's job trains on without it");
}

/// Wait for every process whose command line names `dir` to end; `why` if one is left after a
/// minute (then killed, not left running after the test).
fn all_end_within_a_minute(dir: &Path, why: &str) {
    let started = std::time::Instant::now();
    let needle = dir.to_str().unwrap();
    loop {
        let left = crate::launch::processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            for &pid in &left {
                // SAFETY: a signal to a process of this test's own making.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("{why}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn report_names_what_it_leaves_out() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("holiday-photos");
    std::fs::create_dir_all(&foreign).unwrap();
    let out =
        Command::new(micn_bin()).arg("report").arg(&foreign).arg("--out").arg(tmp.path().join("r")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no runs at all is an error");
    assert!(stderr.contains("no finished run") && stderr.contains("holiday-photos"), "{stderr}");
    // A run that never finished beside a finished one: reported, the table still written.
    let runs = tmp.path().join("runs");
    let done = runs.join("done");
    let cfg = crate::small_config(&done, &["train.max_steps=3", "train.eval_every_steps=0"]);
    train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    let unfinished = runs.join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(done.join("config.toml"), unfinished.join("config.toml")).unwrap();
    std::fs::create_dir_all(runs.join("notes")).unwrap();
    let out = run_ok(Command::new(micn_bin()).arg("report").arg(&runs).arg("--out").arg(tmp.path().join("r")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("left out") && stdout.contains("unfinished: no summary.json"), "{stdout}");
    assert!(stdout.contains("notes: not a run directory"), "{stdout}");
    assert!(stdout.contains("1 runs; report:"), "{stdout}");
    assert!(tmp.path().join("r/report.csv").is_file());
    // A report written among the runs it reports hides none of them the next time.
    for _ in 0..2 {
        let out = run_ok(Command::new(micn_bin()).arg("report").arg(&runs).arg("--out").arg(&runs));
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 runs; report:"));
    }
    // But not into a run's own directories, which its --overwrite or retention deletes.
    let inside = done.join("checkpoints/report");
    let refused = Command::new(micn_bin()).arg("report").arg(&runs).arg("--out").arg(&inside).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("is a file in the run {}'s own checkpoints", done.display())), "{stderr}");
    assert!(!inside.exists());
}

#[test]
fn a_sweep_with_np_2_runs_each_point_on_two_ranks_through_the_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.toml");
    let cfg = crate::small_config(&tmp.path().join("unused"), &["train.max_steps=6", "train.eval_every_steps=0"]);
    std::fs::write(&base, cfg.to_toml()).unwrap();
    let out = tmp.path().join("sweep");
    let mut cmd = Command::new(micn_bin());
    cmd.arg("sweep").arg("--config").arg(&base).args(["--grid", "micn.phi=[0.5]", "--np", "2", "--out"]).arg(&out);
    let printed = run_ok(&mut cmd);
    assert!(String::from_utf8_lossy(&printed.stdout).contains("1 runs trained"));
    let run = out.join("micn.phi=0.5/repeat-0");
    let summary: serde_json::Value = serde_json::from_str(&read(&run.join("summary.json"))).unwrap();
    assert_eq!(summary["world_size"], 2);
    // The terminal (here train.log) shows rank 0; every rank's full log is in its own file.
    let log = read(&run.join("logs/rank-1.log"));
    assert!(log.lines().all(|l| l.starts_with("[rank 1] ")) && log.contains("training"), "{log}");
}

#[test]
fn every_shipped_sweep_file_plans_and_the_table_2_files_hold_their_models_and_variants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/experiments");
    let files: Vec<_> = ["", "synthetic"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(root.join(sub)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        // The synthetic sweeps' base configurations.
        .filter(|p| !["books", "electronics"].iter().any(|set| p.ends_with(format!("synthetic/{set}.toml"))))
        .filter(|p| !["books", "electronics"].iter().any(|set| p.ends_with(format!("synthetic/{set}-attributes.toml"))))
        .collect();
    assert_eq!(files.len(), 8, "{files:?}");
    for file in &files {
        let runs =
            sweep::plan(&SweepSpec::from_file(file).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if file.ends_with("table2-camn.toml") {
            // The CAMN paper's six models, each without and with MICN, on both sets.
            let first: Vec<_> = runs.iter().filter(|r| r.dir.ends_with("repeat-0")).collect();
            assert_eq!(first.len(), 24, "{}", file.display());
            for kind in micn::config::ModelKind::ALL {
                let micn: Vec<bool> =
                    first.iter().filter(|r| r.config.model.kind == kind).map(|r| r.config.micn.enabled).collect();
                assert_eq!(micn.iter().filter(|&&m| m).count(), 2, "{}: {kind:?} {micn:?}", file.display());
                assert_eq!(micn.len(), 4, "{}: {kind:?}", file.display());
            }
        }
        if !file.ends_with("table2-models.toml") {
            continue;
        }
        // Every model without MICN, with it, and with its wider embeddings but λ = 0, on both sets.
        let mut variants: Vec<(String, bool, f64)> = runs
            .iter()
            .filter(|r| r.dir.ends_with("repeat-0"))
            .map(|r| (format!("{:?}", r.config.model.kind), r.config.micn.enabled, r.config.micn.lambda))
            .collect();
        variants.sort_by(|a, b| a.partial_cmp(b).unwrap());
        variants.dedup();
        assert_eq!(variants.len(), 9, "{}: {variants:?}", file.display());
        assert_eq!(variants.iter().filter(|v| v.1 && v.2 == 0.0).count(), 3, "{variants:?}");
        assert_eq!(runs.iter().filter(|r| r.dir.ends_with("repeat-0")).count(), 18, "{}", file.display());
    }
}
