//! Bad arguments and awkward outputs across commands: each is refused with exit status 3 (running
//! again cannot help) and a message naming the argument, key or path, before anything is written
//! or replaced (`micn-launch`'s own errors too); sizes that would exhaust memory or run for days
//! are refused up front, and a model too large for the memory there is is an error, not a panic;
//! an output that is a device, a pipe or a link is written through, never replaced by a file.
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::micn_bin;

fn micn(args: &[&str]) -> Output {
    let out = Command::new(micn_bin()).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert_ne!(out.status.code(), Some(101), "panicked: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `args` fail with exit status 3 and a message holding `needle`.
fn refused(args: &[&str], needle: &str) {
    let out = micn(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

#[test]
fn bad_arguments_are_refused_with_status_3_naming_them_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |name: &str| tmp.path().join(name).display().to_string();
    // Training: a run.dir that is a file, an empty data.dir, an element of a list set badly.
    std::fs::write(at("afile"), "mine").unwrap();
    let config = "configs/quickstart.toml";
    let run_dir = format!("run.dir=\"{}\"", at("afile"));
    refused(&["train", "--config", config, "--set", &run_dir], "run.dir = ");
    assert_eq!(std::fs::read_to_string(at("afile")).unwrap(), "mine");
    let run_dir = format!("run.dir=\"{}\"", at("run"));
    refused(&["train", "--config", config, "--set", "data.dir=\"\"", "--set", &run_dir], "data.dir is empty");
    refused(
        &["train", "--config", config, "--set", "model.head_hidden=[8, -1]", "--set", &run_dir],
        "--set model.head_hidden=[8, -1]: key `model.head_hidden[1]`",
    );
    assert!(!Path::new(&at("run")).exists());
    // Refused once the dataset is read: no run directory, no log in it.
    refused(
        &["train", "--config", config, "--set", "data.dir=\"/nonexistent-data\"", "--set", &run_dir],
        "/nonexistent-data",
    );
    assert!(!Path::new(&at("run")).exists(), "a refused run writes no log into its run.dir");
    refused(
        &["train", "--config", config, "--set", &run_dir, "--resume", &at("run/checkpoints/step-00000040")],
        "no such directory; a checkpoint is a directory",
    );
    assert!(!Path::new(&at("run")).exists(), "a resume from nothing claims no run.dir");
    // Sizes that would exhaust memory or never end.
    let out = at("synth");
    refused(&["synth", "--preset", "quickstart", "--out", &out, "--users", "99999999999"], "at most 50000000 reviews");
    refused(&["synth", "--preset", "quickstart", "--out", &out, "--min-history", "100000"], "at most 10000 reviews");
    refused(&["synth", "--preset", "quickstart", "--out", &out, "--mean-history", "nan"], "--mean-history must be");
    assert!(!Path::new(&out).exists());
    refused(&["bench", "throughput", "--model", "din", "--items", "1"], "--items must lie in [2, 10000000]");
    refused(&["bench", "throughput", "--model", "din", "--users", "1"], "--users must lie in [2, 10000000]");
    // A sum of steps that overflowed timed no step and printed a huge rate.
    let most = usize::MAX.to_string();
    refused(&["bench", "throughput", "--model", "din", "--warmup", &most], "--steps and --warmup must be at most");
    // The prepare bench's synthetic reviews past the generator's limit: exit 3, as synth's own.
    let work = at("bench-prepare");
    refused(&["bench", "prepare", "--preset", "quickstart", "--users", "99999999999", "--work-dir", &work], "at most");
    refused(
        &["bench", "prepare", "--preset", "quickstart", "--work-dir", &at("afile")],
        "afile: is a file, not a directory",
    );
    // The quality bench's runs get the checks `micn train` makes, before any data is made.
    let work = at("bench-quality");
    let quality = ["bench", "quality", "--preset", "quickstart", "--work-dir", &work];
    for (flag, value, key) in [("--lr", "1e39", "train.lr"), ("--epochs", "99999999999", "train.epochs")] {
        refused(
            &[&quality[..], &[flag, value]].concat(),
            &format!("micn bench quality's options (--epochs, --lr, --seeds): key `{key}`"),
        );
    }
    assert!(!Path::new(&work).exists());
    for bench in ["dist", "quality", "checkpoint", "prepare"] {
        refused(
            &["bench", bench, "--work-dir", "/"],
            "--work-dir /: the root directory; give the benchmark a directory",
        );
    }
    for threads in ["0", "100000"] {
        refused(&["bench", "throughput", "--model", "din", "--threads", threads], "--threads must lie in [1, 1024]");
    }
    let sweep = at("sweep");
    refused(&["sweep", "--config", config, "--repeats", "99999999999", "--out", &sweep, "--dry-run"], "100000 runs");
    refused(&["sweep", "--config", config, "--grid", "micn.phi=[]", "--out", &sweep, "--dry-run"], "no values");
    assert!(!Path::new(&sweep).exists());
    // A flag the input format does not read: refused, not left without effect.
    let prepare = |format: &str, extra: &[&str]| {
        let mut args = vec!["prepare", "--input-format", format];
        args.extend_from_slice(extra);
        args.extend(["--out", "unused"]);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (args, needle) in [
        (
            prepare("dien", &["--dien-dir", "d", "--protocol", "din", "--seed", "7"]),
            "dien does not read --protocol, --seed",
        ),
        (
            prepare("sequences", &["--sequences", "s", "--reviews", "r", "--oracle", "o"]),
            "does not read --reviews, --oracle",
        ),
    ] {
        refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), needle);
    }
    // Inputs that are not there, or not what they should be.
    refused(&["report", &at("nosuch"), "--out", &at("report")], "no finished run");
    refused(&["eval", "--checkpoint", &at("nosuch")], "no such directory; a checkpoint is a directory");
    refused(&["eval", "--checkpoint", tmp.path().to_str().unwrap()], "not a checkpoint (no state.json)");
    refused(&["predict", "--run", &at("nosuch"), "--out", &at("p.csv")], "no such directory; a run is the directory");
    refused(&["eval", "--run", tmp.path().to_str().unwrap()], "not a run directory (no config.toml)");
    let centres = ["export", "mfn-centres", "--run", &at("nosuch"), "--out", &at("c.safetensors")];
    refused(&centres, "--run ");
    refused(&centres, "nosuch: no such directory; a run is the directory");
    // The launcher's own errors: nothing starts, nothing would be retried.
    let (bad_hosts, aliases) = (at("bad-hosts"), at("aliases"));
    std::fs::write(&bad_hosts, "localhost slots=1\n\nbogus line here =\n").unwrap();
    // One host under two names, each with a slot count: only mpirun knows they are one.
    std::fs::write(&aliases, "localhost slots=1\n127.0.0.1 slots=1\n").unwrap();
    // With a hostfile the binary is mpirun's to find on each host: missing, it is not retried.
    let one_host = at("one-host");
    std::fs::write(&one_host, "localhost slots=2\n").unwrap();
    for (args, needle) in [
        (&["--np", "1", "--hostfile", &bad_hosts][..], "bad-hosts:3: expected `line=VALUE` after the host name"),
        (
            &["--np", "1", "--max-restarts", "2", "--hostfile", &aliases][..],
            "mpirun refused its command line, hostfile or micn binary",
        ),
        (&["--np", "0"][..], "--np must be at least 1"),
        (&["--np", "1", "--stall-timeout", "0"][..], "--stall-timeout must be at least 1"),
        (&["--np", "1", "--threads", "0"][..], "--threads must be at least 1"),
        (&["--np", "1", "--max-restarts", "2", "--micn", "/nonexistent/micn"][..], "no micn binary there"),
        (&["--no-such-flag"][..], "unexpected argument"),
        (&["--np", "1", "--set", "train.max_steps=2", "--", "train"][..], "give them there instead"),
        // mpirun's own refusal of an argument is not retried either.
        (&["--np", "1", "--max-restarts", "2", "--mpirun-arg=--bogus-flag"][..], "mpirun refused its command line"),
        (&["--np", "2", "--min-np", "1", "--hostfile", &aliases][..], "--min-np acts at a restart"),
        (
            &["--np", "1", "--max-restarts", "2", "--hostfile", &one_host, "--micn", "/nonexistent/micn"][..],
            "mpirun refused its command line, hostfile or micn binary",
        ),
        (&["--np", "1", "--log-format", "json", "--", "--log-format", "text", "doctor"][..], "give one of them"),
    ] {
        let out = crate::launch::launcher().args(args).args(["--config", config]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Output that already holds something else is left alone.
    std::fs::create_dir(at("mine")).unwrap();
    std::fs::write(tmp.path().join("mine/notes.txt"), "mine").unwrap();
    refused(&["synth", "--preset", "quickstart", "--out", &at("mine")], "mine: already exists");
    assert_eq!(std::fs::read_dir(at("mine")).unwrap().count(), 1);
    // A file of synth's own name beside them does not make it synth's directory.
    std::fs::write(tmp.path().join("mine/synth.json"), "{}").unwrap();
    refused(
        &["synth", "--preset", "quickstart", "--out", &at("mine")],
        "holds notes.txt, which this command does not write",
    );
    assert_eq!(std::fs::read_to_string(tmp.path().join("mine/notes.txt")).unwrap(), "mine");
}

#[test]
fn under_json_logging_argument_errors_are_one_json_line_too() {
    let config = "configs/quickstart.toml";
    let json_error = |out: &Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let line: serde_json::Value = serde_json::from_str(stderr.trim()).expect("a JSON line");
        assert_eq!(line["level"], "ERROR", "{line}");
        let message = line["message"].as_str().unwrap();
        assert!(message.starts_with("error: ") && message.contains(needle), "{line}");
        assert!(!message.contains("Usage:"), "{line}");
    };
    // clap's own errors, from micn and from micn-launch (its flag, or micn's after `--`).
    json_error(&micn(&["--log-format", "json", "train", "--nope"]), "unexpected argument '--nope'");
    json_error(&micn(&["train", "--log-format=json", "--config"]), "'--config <CONFIG>'");
    json_error(&micn(&["--log-format", "json", "data"]), "`micn data` needs a subcommand: stats, export; see --help");
    let launch = |args: &[&str]| crate::launch::launcher().args(args).output().unwrap();
    json_error(&launch(&["--log-format", "json", "--no-such-flag"]), "unexpected argument '--no-such-flag'");
    json_error(&launch(&["--np", "0", "--log-format", "json", "--config", config]), "--np must be at least 1");
    json_error(&launch(&["--np", "x", "--", "--log-format", "json", "doctor"]), "invalid value 'x'");
    // Text stays clap's own, usage block and all.
    let out = micn(&["train", "--nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
}

#[test]
fn predictions_go_through_a_device_or_a_link_and_a_full_device_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    crate::tiny_din_run(&run);
    let run = run.to_str().unwrap();
    // /dev/null stays a device (a file put in its place would swallow nothing).
    let out = micn(&["predict", "--run", run, "--out", "/dev/null", "--format", "csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = micn(&["predict", "--run", run, "--out", "/dev/full", "--format", "csv"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/dev/full: No space left on device"), "{stderr}");
    for device in ["/dev/null", "/dev/full"] {
        assert!(!std::fs::metadata(device).unwrap().is_file(), "{device} was replaced by a file");
    }
    // Standard output holds the scores alone (how many were written is said on standard error).
    let out = micn(&["predict", "--run", run, "--out", "/dev/stdout", "--format", "csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("sample,user,user_key,item,label,score\n"), "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.split(',').count() == 6), "{csv}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("scores of the test set written to /dev/stdout"));
    // The scores for a device go through a temporary file in TMPDIR: where that cannot be made,
    // the error names it and TMPDIR, not the device, and a reader of a named pipe sees its end.
    let fifo = tmp.path().join("scores.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    /// A child at the pipe, ended with the test however it ends.
    struct Reader(std::process::Child);
    impl Drop for Reader {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut reader = Reader(
        std::process::Command::new("cat")
            .arg(&fifo)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let missing = tmp.path().join("no-such-tmp");
    let out = Command::new(micn_bin())
        .args(["predict", "--run", run, "--out", fifo.to_str().unwrap(), "--format", "csv"])
        .env("TMPDIR", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{}/.micn-output-", missing.display())), "{stderr}");
    assert!(stderr.contains("for ") && stderr.contains("scores.fifo: TMPDIR says where"), "{stderr}");
    let started = std::time::Instant::now();
    while reader.0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the pipe's reader was left waiting");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Stopped while it waits for the pipe's reader: no copy of the scores is left in TMPDIR.
    let own_tmp = tmp.path().join("own-tmp");
    std::fs::create_dir(&own_tmp).unwrap();
    let mut waiting = Reader(
        Command::new(micn_bin())
            .args(["predict", "--run", run, "--out", fifo.to_str().unwrap(), "--format", "csv"])
            .env("TMPDIR", &own_tmp)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let fds = format!("/proc/{}/fd", waiting.0.id());
    let holds_unlinked_output = || {
        std::fs::read_dir(&fds).into_iter().flatten().flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|to| {
                let to = to.to_string_lossy();
                to.contains(".micn-output-") && to.ends_with(" (deleted)")
            })
        })
    };
    let started = std::time::Instant::now();
    while !holds_unlinked_output() {
        assert!(waiting.0.try_wait().unwrap().is_none(), "predict ended without a reader");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the temporary file was not unlinked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &waiting.0.id().to_string()]).status().unwrap().success());
    waiting.0.wait().unwrap();
    assert_eq!(std::fs::read_dir(&own_tmp).unwrap().count(), 0, "a copy of the scores was left in TMPDIR");
    // A link: its target gets the scores, in a directory made for it.
    let (link, target) = (tmp.path().join("link.csv"), tmp.path().join("made/scores.csv"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = micn(&["predict", "--run", run, "--out", link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&target).unwrap().starts_with("sample,user,user_key,item,label,score\n"));
    // Below a file: nothing can be made there, and saying so again will not change that.
    let below = tmp.path().join("made/scores.csv/p.csv");
    refused(&["predict", "--run", run, "--out", below.to_str().unwrap()], "scores.csv");
}

/// Standard output on a full disk (`> /dev/full`): an error naming it, status 1, never a panic.
#[test]
fn printing_to_a_full_standard_output_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    crate::tiny_din_run(&run);
    let checkpoint = micn::checkpoint::latest(&run.join("checkpoints")).0.expect("a checkpoint").0;
    let (run, checkpoint) = (run.to_str().unwrap(), checkpoint.to_str().unwrap());
    for args in [&["eval", "--run", run, "--json"][..], &["checkpoint", "inspect", checkpoint], &["doctor", "--json"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = Command::new(micn_bin()).args(args).stdout(full).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("error: writing to standard output: No space left on device"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // `train`'s closing lines too (the run itself is whole in its directory).
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, crate::small_config(&tmp.path().join("trained"), &[]).to_toml()).unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(micn_bin()).args(["train", "--config"]).arg(&config).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: writing to standard output: No space left on device"), "{stderr}");
    assert!(tmp.path().join("trained/summary.json").is_file(), "the run finished");
}

/// Commands that only print, `micn-launch --dry-run` among them: a full standard output is an
/// error (status 1), a closed pipe (`| head`) ends them quietly.
#[test]
fn a_dry_run_to_a_full_or_closed_standard_output_is_an_error_or_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, crate::small_config(&tmp.path().join("run"), &[]).to_toml()).unwrap();
    let config = config.to_str().unwrap();
    let sweep = ["sweep", "--config", config, "--grid", "micn.phi=[0.1,0.2]", "--dry-run", "--out"];
    let sweep_out = tmp.path().join("sweep");
    let mut launch = crate::launch::launcher();
    launch.args(["--np", "2", "--dry-run", "--config", config]);
    let mut sweep_cmd = Command::new(micn_bin());
    sweep_cmd.args(sweep).arg(&sweep_out);
    for cmd in [&mut launch, &mut sweep_cmd] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = cmd.stdout(full).stderr(Stdio::piped()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(stderr.contains("writing to standard output: No space left on device"), "{cmd:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
        // A pipe whose reader is gone before anything is written.
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let quiet = out.status.success() || out.status.signal() == Some(libc::SIGPIPE);
        assert!(
            quiet && !stderr.contains("error") && !stderr.contains("panicked"),
            "{cmd:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[test]
fn a_model_too_large_for_memory_is_an_error_not_a_panic() {
    // Address space limited to 4 GB, of which libtorch's libraries take about 2.5: a 16384 × 16384
    // layer (1 GiB) and Adam's two moments of it cannot all be had.
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tmp.path().join("config.toml");
    let cfg = crate::small_config(&run, &["model.kind=din", "model.head_hidden=[16384, 16384]", "train.max_steps=2"]);
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let script = format!("ulimit -v 4000000; exec {} train --config {}", micn_bin().display(), config.display());
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: out of memory: DefaultCPUAllocator: can't allocate memory"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("frame #"), "{stderr}");
}
