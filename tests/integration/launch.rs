//! `micn-launch` as a user meets it, with real processes under a real `mpirun -np 2`: Ctrl-C
//! and a closed terminal (through a pseudo-terminal) each end the job with a checkpoint and a
//! summary; every rank's line arrives whole, once, under its own rank (text or JSON lines); only
//! rank 0's progress reaches the terminal while each rank logs everything to its own file; a job
//! that fails on its input (exit status 3, mpirun passing on MPI_Abort's code) is not restarted,
//! and a crashed one is, with the same command: micn resumes the run from the job's newest
//! checkpoint (a real rank killed, then the run resumed exactly, is in `checkpoint.rs`).
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `micn-launch` with the environment OpenMPI needs as root, output captured.
pub fn launcher() -> Command {
    let path = crate::micn_bin().with_file_name("micn-launch");
    assert!(path.exists(), "build the workspace first (cargo build --release --workspace)");
    let mut cmd = Command::new(path);
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A training run that goes on until stopped: its directory and configuration file.
fn endless_run(tmp: &Path) -> (PathBuf, PathBuf) {
    let run = tmp.join("run");
    let sets = ["train.epochs=1000", "train.max_steps=100000", "train.log_every_steps=5", "checkpoint.every_steps=0"];
    let path = tmp.join("run.toml");
    std::fs::write(&path, crate::small_config(&run, &sets).to_toml()).unwrap();
    (run, path)
}

/// Wait until `run` has logged training beyond `step`.
pub fn wait_for_training_past(run: &Path, step: u64) {
    let started = Instant::now();
    let past = || {
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
        metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["step"].as_u64().is_some_and(|s| s > step))
    };
    while !past() {
        assert!(started.elapsed() < Duration::from_secs(120), "training did not get past step {step}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's exit status, or a failed test when it runs on for `limit`.
pub fn wait_at_most(child: &mut Child, limit: Duration, what: impl Fn() -> String) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}:\n{}", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The step of the run's summary, after checking that the run stopped on a signal and that the
/// checkpoint of that step is complete.
fn stopped_with_checkpoint_and_summary(run: &Path, printed: &str) -> u64 {
    let text = std::fs::read_to_string(run.join("summary.json"))
        .unwrap_or_else(|e| panic!("no summary.json ({e}); the launcher printed:\n{printed}"));
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["stopped_by_signal"], true, "{text}");
    let step = summary["steps"].as_u64().unwrap();
    let checkpoint = run.join("checkpoints").join(micn::checkpoint::dir_name(step));
    assert!(checkpoint.join("COMPLETE").exists(), "no checkpoint of step {step}; the launcher printed:\n{printed}");
    step
}

/// A pseudo-terminal holding a process as a terminal emulator would: what the process prints
/// is collected, keys can be typed, and closing it hangs the terminal up.
struct Terminal {
    master: Option<Arc<OwnedFd>>,
    screen: Arc<Mutex<Vec<u8>>>,
    close: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    /// Start `cmd` in a new session whose controlling terminal is a new pseudo-terminal, with
    /// the terminal as its standard input, output and error (as a shell starts a command).
    fn spawn(mut cmd: Command) -> (Child, Terminal) {
        // posix_openpt and open with O_CLOEXEC rather than openpty: the other tests of this binary
        // start processes meanwhile, and a child that inherited either side would keep the
        // terminal open after this test closes it.
        // SAFETY: plain system calls on descriptors this function owns.
        let (master, slave) = unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(m);
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(s >= 0, "opening the terminal: {}", std::io::Error::last_os_error());
            (master, OwnedFd::from_raw_fd(s))
        };
        cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the terminal by now.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("the command starts");
        drop(cmd); // our copies of the terminal's process side
        let master = Arc::new(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let close = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, screen, close) = (Arc::clone(&master), Arc::clone(&screen), Arc::clone(&close));
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !close.load(Ordering::SeqCst) {
                    let mut poll = libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd; reading into a buffer of the length given.
                    let n = unsafe {
                        if libc::poll(&mut poll, 1, 50) <= 0 {
                            continue;
                        }
                        libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                    };
                    if n <= 0 {
                        break; // EIO: no process holds the terminal any more
                    }
                    screen.lock().unwrap().extend_from_slice(&buf[..n as usize]);
                }
            })
        };
        (child, Terminal { master: Some(master), screen, close, reader: Some(reader) })
    }

    /// Everything printed so far.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    fn type_ctrl_c(&self) {
        let master = self.master.as_ref().expect("the terminal is open");
        // SAFETY: writing one byte from a valid buffer to an open descriptor.
        let n = unsafe { libc::write(master.as_raw_fd(), b"\x03".as_ptr().cast(), 1) };
        assert_eq!(n, 1, "typing Ctrl-C: {}", std::io::Error::last_os_error());
    }

    /// Close the terminal, as when its window is closed: the session gets SIGHUP.
    fn hang_up(&mut self) {
        self.close.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let master = self.master.take().expect("the terminal is open");
        assert_eq!(Arc::strong_count(&master), 1, "the reader let go of the terminal");
        drop(master);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.close.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// `--log-format json` on a terminal: standard error holds JSON lines and nothing else (no line
/// clearing for a progress bar, no colour codes).
#[test]
fn on_a_terminal_json_logging_writes_json_lines_only() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(r#"exec "$0" --log-format json doctor >/dev/null"#).arg(crate::micn_bin());
    let (mut child, terminal) = Terminal::spawn(cmd);
    let status = wait_at_most(&mut child, Duration::from_secs(60), || terminal.screen());
    let screen = terminal.screen();
    assert!(status.success(), "{screen}");
    let lines: Vec<&str> = screen.split(['\r', '\n']).filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "doctor logs what it does");
    for line in lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
}

#[test]
fn ctrl_c_in_a_terminal_stops_the_job_with_a_checkpoint_and_a_summary_every_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, path) = endless_run(tmp.path());
    let mut step = 0;
    // Stopped twice: a fresh run, then the same run resumed.
    for resume in [false, true] {
        let mut cmd = launcher();
        cmd.args(["--np", "2", "--threads", "1", "--"]).arg("train").arg("--config").arg(&path);
        if resume {
            cmd.args(["--resume", "auto"]);
        }
        let (mut child, terminal) = Terminal::spawn(cmd);
        wait_for_training_past(&run, step + 5);
        terminal.type_ctrl_c();
        let status = wait_at_most(&mut child, Duration::from_secs(60), || terminal.screen());
        let screen = terminal.screen();
        assert!(status.success(), "a graceful stop exits 0, not {status}:\n{screen}");
        assert!(screen.contains("stopped by a signal after checkpointing step"), "{screen}");
        assert!(screen.contains("job stopped on request"), "{screen}");
        let stopped_at = stopped_with_checkpoint_and_summary(&run, &screen);
        assert!(stopped_at > step + 5, "stopped at {stopped_at} after {step}");
        step = stopped_at;
    }
    // Each rank's whole log is in its own file, in text like the terminal's.
    for rank in [0, 1] {
        let log = std::fs::read_to_string(run.join(format!("logs/rank-{rank}.log"))).unwrap();
        assert!(log.lines().all(|l| l.starts_with(&format!("[rank {rank}] "))), "{log}");
        assert!(log.contains("progress") && log.contains("stop requested"), "{log}");
    }
}

#[test]
fn closing_the_terminal_stops_the_job_with_a_checkpoint_and_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, path) = endless_run(tmp.path());
    let mut cmd = launcher();
    cmd.args(["--np", "2", "--threads", "1", "--config"]).arg(&path);
    let (mut child, mut terminal) = Terminal::spawn(cmd);
    wait_for_training_past(&run, 5);
    let before = terminal.screen();
    terminal.hang_up();
    // With nothing left to print to, the launcher sees the job to its end.
    let status = wait_at_most(&mut child, Duration::from_secs(60), || before.clone());
    assert!(
        status.success(),
        "the launcher outlives the hang-up and exits 0, not {status} (signal {:?})",
        status.signal()
    );
    stopped_with_checkpoint_and_summary(&run, &before);
    let log = std::fs::read_to_string(run.join("logs/rank-0.log")).unwrap();
    assert!(log.contains("checkpoint written"), "{log}");
}

#[test]
fn a_graceful_stop_may_take_longer_than_mpirun_gives_a_job_it_kills() {
    // mpirun kills a job one second after passing it SIGTERM; these ranks need two seconds to
    // "checkpoint" after the stop request the launcher passes on.
    let script = r#"r=$OMPI_COMM_WORLD_RANK
trap 'sleep 2; echo "rank $r checkpointed"; exit 0' USR1
echo 'micn: this rank now takes stop signals (micn-launch)' >&2
echo ready
while :; do sleep 0.1; done"#;
    let mut child = launcher()
        .args(["--np", "2", "--threads", "1", "--micn", "/bin/sh", "--", "-c", script, "sh"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stdout) {
            let _ = lines.send(line.unwrap());
        }
    });
    let mut printed = Vec::new();
    while printed.iter().filter(|l: &&String| l.ends_with("ready")).count() < 2 {
        printed.push(received.recv_timeout(Duration::from_secs(60)).expect("both ranks start"));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_at_most(&mut child, Duration::from_secs(60), String::new);
    reader.join().unwrap();
    printed.extend(received.try_iter());
    assert!(status.success(), "{status}: {printed:?}");
    // Rank 0's standard output passes as it is, the other ranks' under their rank.
    assert!(printed.iter().any(|l| l == "rank 0 checkpointed"), "{printed:?}");
    assert!(printed.iter().any(|l| l == "[rank 1] rank 1 checkpointed"), "{printed:?}");
}

/// A stop asked for while the ranks start (before mpirun could pass it on to any, or while a rank
/// cannot take it yet) waits until every rank says it takes stop signals, then stops the job
/// gracefully, as micn ranks do (the line they say; a bare `sh` stands in for micn here).
#[test]
fn a_stop_asked_while_the_ranks_start_waits_for_them_and_is_graceful() {
    let script = r#"r=$OMPI_COMM_WORLD_RANK
sleep 2
trap 'echo "rank $r checkpointed"; exit 0' USR1
echo 'micn: this rank now takes stop signals (micn-launch)' >&2
while :; do sleep 0.1; done"#;
    let tmp = tempfile::tempdir().unwrap();
    let (out_file, err_file) = (tmp.path().join("out"), tmp.path().join("err"));
    let mut child = launcher()
        .args(["--np", "2", "--threads", "1", "--micn", "/bin/sh", "--", "-c", script, "sh"])
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    // Time for the launcher to catch its signals, not for the ranks to start (2 s).
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let status = wait_at_most(&mut child, Duration::from_secs(60), || read(&err_file));
    let (stdout, stderr) = (read(&out_file), read(&err_file));
    assert!(status.success(), "{status}: {stdout} {stderr}");
    assert!(stdout.contains("rank 0 checkpointed") && stdout.contains("[rank 1] rank 1 checkpointed"), "{stdout}");
    assert!(stderr.contains("the job stops with a checkpoint once its ranks have started"), "{stderr}");
    assert!(!stderr.contains("takes stop signals"), "the ranks' line is not shown: {stderr}");
}

/// The stop asked twice (SIGTERM, as a second Ctrl-C is) ends a job that is slow to checkpoint at
/// once, and the launcher says that it did so, not that something outside signalled mpirun.
#[test]
fn a_stop_asked_twice_ends_the_job_at_once_and_says_so() {
    let script = r#"trap 'sleep 30; exit 0' USR1
echo 'micn: this rank now takes stop signals (micn-launch)' >&2
echo ready
while :; do sleep 0.1; done"#;
    let mut child = launcher()
        .args(["--np", "2", "--threads", "1", "--micn", "/bin/sh", "--", "-c", script, "sh"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = std::io::BufRead::lines(stdout);
    let mut ready = 0;
    while ready < 2 {
        ready += usize::from(lines.next().expect("both ranks start").unwrap().ends_with("ready"));
    }
    for _ in 0..2 {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
    }
    // (A job that waited for its ranks' 30-second checkpoint would end with status 0, said otherwise.)
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped at once, as the stop asked again says"), "{stderr}");
    assert!(!stderr.contains("was mpirun signalled too"), "{stderr}");
}

/// Run `script` with `sh -c` on two ranks under the launcher; (exit code, stdout, stderr).
fn launch_script(launch_args: &[&str], script: &str) -> (Option<i32>, String, String) {
    let out = launcher()
        .args(["--np", "2", "--threads", "1", "--micn", "/bin/sh"])
        .args(launch_args)
        .args(["--", "-c", script, "sh"])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_line_written_in_pieces_arrives_whole_once_and_under_its_own_rank() {
    // Both ranks write `error: rank N: bad config` in three pieces at the same time, so mpirun
    // tags pieces in the middle of lines and interleaves the ranks' pieces.
    let script = r#"r=$OMPI_COMM_WORLD_RANK
printf 'error: rank ' >&2; sleep 0.3; printf '%s' "$r" >&2; sleep 0.3; printf ': bad config\n' >&2
printf 'out ' ; sleep 0.3; printf 'of %s\n' "$r""#;
    let (code, stdout, stderr) = launch_script(&[], script);
    assert_eq!(code, Some(0), "{stderr}");
    for rank in [0, 1] {
        let line = format!("error: rank {rank}: bad config");
        assert_eq!(stderr.lines().filter(|l| *l == line).count(), 1, "{line} once:\n{stderr}");
        // Rank 0's standard output passes as it is (micn's results), the other ranks' labelled.
        let line = if rank == 0 { "out of 0".to_string() } else { format!("[rank {rank}] out of {rank}") };
        assert_eq!(stdout.lines().filter(|l| *l == line).count(), 1, "{line} once:\n{stdout}");
    }
    assert!(!stderr.contains("<stderr>") && !stdout.contains("<stdout>"), "{stdout}\n{stderr}");
}

/// A long JSON document of short lines (`doctor --check-comm`'s timings) reaches the launcher's
/// standard output whole: mpirun's `--tag-output` drops what a chunk of lines shorter than its
/// tag grows to past its buffer, so micn prints an array of numbers on one line.
#[test]
fn rank_0_s_json_document_passes_through_the_launcher_whole() {
    let out =
        launcher().args(["--np", "2", "--threads", "1", "--", "doctor", "--check-comm", "--json"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    assert!(doc["comm_check"].is_object(), "{stdout}");
}

#[test]
fn only_rank_0_shows_progress_and_json_lines_stay_json_under_the_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = crate::small_config(&run, &["train.max_steps=10", "train.log_every_steps=5"]);
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let out = launcher()
        .args(["--np", "2", "--threads", "1", "--log-format", "json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let parse = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    let lines: Vec<serde_json::Value> = stderr.lines().map(parse).collect();
    let progress_ranks: Vec<u64> =
        lines.iter().filter(|v| v["message"] == "progress").map(|v| v["rank"].as_u64().unwrap()).collect();
    assert!(!progress_ranks.is_empty() && progress_ranks.iter().all(|r| *r == 0), "only rank 0's:\n{stderr}");
    for v in &lines {
        assert!(v["rank"] == 0 || v["level"] != "INFO" || v["rank"].is_null(), "{v}");
    }
    for rank in [0u64, 1] {
        let log = std::fs::read_to_string(run.join(format!("logs/rank-{rank}.log"))).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(parse).collect();
        assert!(lines.iter().all(|v| v["rank"] == rank), "{log}");
        assert!(lines.iter().any(|v| v["message"] == "progress"), "{log}");
    }
}

#[test]
fn under_a_low_open_files_limit_the_job_runs_or_is_ended_never_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, crate::small_config(&run, &["train.max_steps=4"]).to_toml()).unwrap();
    // `ulimit -n 32`: mpirun runs out of pipes starting two ranks.
    let with_limit = |soft: u64, hard: u64| {
        let mut cmd = launcher();
        cmd.args(["--np", "2", "--threads", "1", "--max-restarts", "0", "--exit-grace", "2", "--config"]).arg(&path);
        // SAFETY: setrlimit is async-signal-safe; it changes only the child about to exec.
        unsafe {
            cmd.pre_exec(move || {
                match libc::setrlimit(libc::RLIMIT_NOFILE, &libc::rlimit { rlim_cur: soft, rlim_max: hard }) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        cmd.output().unwrap()
    };
    // A low soft limit under a higher hard one: the launcher raises it, and the job runs.
    let mut hard = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer to a `rlimit` we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) }, 0);
    let out = with_limit(32, hard.rlim_max.min(4096));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A low hard limit: OpenMPI 4.1's mpirun logs its internal error, then waits for good (the
    // launcher ends it after the exit grace, as `cli.rs` shows with a stand-in) or crashes (exit
    // status 139); the launcher names the limit either way.
    let started = Instant::now();
    let out = with_limit(32, 32);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    if stderr.contains("ORTE_ERROR_LOG: The system limit") {
        assert!(stderr.contains("mpirun met a limit of this host: raise it for the job (`ulimit -n`"), "{stderr}");
    }
}

#[test]
fn an_input_error_exits_3_through_mpirun_and_the_launcher_does_not_restart_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dataset");
    let cfg = crate::small_config(&tmp.path().join("run"), &[&format!("data.dir={:?}", missing.display().to_string())]);
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    // mpirun exits with the code MPI_Abort was given.
    let out = crate::mpirun(2).arg(crate::micn_bin()).arg("train").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // Neither a missing dataset nor a configuration error is retried, in text or JSON.
    for extra in [&[][..], &["--set", "train.nope=1", "--log-format", "json"][..]] {
        let out = launcher()
            .args(["--np", "2", "--threads", "1", "--max-restarts", "2", "--restart-backoff", "0", "--config"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("not restarting") && !stderr.contains("restarting in"), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error: ")).collect();
        assert!(!errors.is_empty(), "{stderr}");
        if extra.is_empty() {
            assert!(errors.iter().all(|l| l.starts_with("error: rank ") && l.contains("no-such-dataset")), "{stderr}");
        } else {
            for line in stderr.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                // micn's own error line is a log line like the others: level, target, rank.
                let message = v["message"].as_str().unwrap_or_default();
                if message.starts_with("error: ") {
                    assert!(v["level"] == "ERROR" && v["target"] == "micn" && v["rank"].is_u64(), "{line}");
                    assert!(message.contains("unknown field `nope`"), "{line}");
                }
            }
        }
    }
}

#[test]
fn a_crashed_job_is_restarted_with_the_same_command_and_launch_id_and_says_so() {
    let (code, stdout, stderr) = launch_script(
        &["--max-restarts", "1", "--restart-backoff", "0"],
        // Rank 1 ends last (mpirun ends it when rank 0 fails), so that mpirun has rank 0's line
        // before it stops the job.
        r#"echo "started as $MICN_LAUNCH_ID with: $*"; [ "$OMPI_COMM_WORLD_RANK" = 0 ] || sleep 5; exit 1"#,
    );
    assert_eq!(code, Some(1), "{stderr}");
    let message = "restarting in 0 s: from the job's newest checkpoint if it wrote one, else as it first started \
                   (restart 1 of 1)";
    assert!(stderr.contains(message), "{stderr}");
    // micn itself tells a restart from a first attempt by the launch id recorded in run.dir.
    let attempts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("started as micn-launch-")).collect();
    assert_eq!(attempts.len(), 2, "{stdout}");
    assert_eq!(attempts[0], attempts[1], "{stdout}");
}

/// Wait for `child` to end (at most `limit`), draining its output meanwhile (a full pipe would
/// stop it); returns its status code and standard error.
pub fn finish(child: std::process::Child, limit: Duration) -> (Option<i32>, String) {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx.recv_timeout(limit).unwrap_or_else(|_| {
        // SAFETY: killing the process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let out = rx.recv().unwrap();
        panic!("still running after {limit:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The processes whose command line mentions `needle` (this test's own files), as pids.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            // Arguments are NUL-separated: read them space-separated, as a shell shows them.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle)
        })
        .collect()
}

/// The `micn` rank process of `rank` among the processes mentioning `needle`.
pub fn rank_process(needle: &str, rank: usize) -> Option<i32> {
    processes_mentioning(needle).into_iter().find(|pid| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        exe.file_name().is_some_and(|n| n == "micn")
            && environ.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
    })
}

#[test]
fn a_hung_rank_is_named_by_its_peers_watchdog_and_the_whole_job_ends_with_no_process_left() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets = ["train.epochs=1000", "train.max_steps=100000", "train.log_every_steps=5", "train.watchdog_seconds=3"];
    let config = tmp.path().join("hung.toml");
    std::fs::write(&config, crate::small_config(&run, &sets).to_toml()).unwrap();
    let child = launcher().args(["--np", "2", "--exit-grace", "10", "--config"]).arg(&config).spawn().unwrap();
    let needle = config.to_str().unwrap().to_string();
    wait_for_training_past(&run, 5);
    let hung = rank_process(&needle, 1).expect("rank 1 is running");
    // SAFETY: stopping a process this test started (through the launcher and mpirun).
    unsafe { libc::kill(hung, libc::SIGSTOP) };
    let stopped_at = Instant::now();
    let (code, stderr) = finish(child, Duration::from_secs(60));
    let took = stopped_at.elapsed();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("watchdog: rank 0 ("), "{stderr}");
    assert!(stderr.contains("waiting for rank 1 ("), "{stderr}");
    assert!(stderr.contains("train.watchdog_seconds"), "{stderr}");
    eprintln!("a hung rank ended the job {:.1} s after it stopped (watchdog limit 3 s)", took.as_secs_f64());
    let started = Instant::now();
    while !processes_mentioning(&needle).is_empty() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_mentioning(&needle), Vec::<i32>::new(), "processes of the job were left behind");
}

/// Ctrl-Z and `fg` (SIGSTOP, then SIGCONT) for longer than the watchdog's limit: the process did
/// not run, so nothing waited; the run goes on and ends as asked.
#[test]
fn a_run_stopped_and_continued_past_its_watchdog_limit_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // A limit a loaded machine's slowest step stays well within, and a stop of twice as long.
    let sets = ["train.epochs=1000", "train.max_steps=100000", "train.log_every_steps=5", "train.watchdog_seconds=5"];
    let config = tmp.path().join("paused.toml");
    std::fs::write(&config, crate::small_config(&run, &sets).to_toml()).unwrap();
    let mut child = Command::new(crate::micn_bin())
        .args(["--comm", "single", "train", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for_training_past(&run, 5);
    // SAFETY: stopping and continuing a process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(10));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let steps = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default().lines().count();
    let before = steps(&run);
    let started = Instant::now();
    while steps(&run) < before + 2 && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "no training after SIGCONT");
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let (code, stderr) = finish(child, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("this process did not run for a while"), "{stderr}");
    assert!(!stderr.contains("watchdog:"), "{stderr}");
    stopped_with_checkpoint_and_summary(&run, &stderr);
}

#[test]
fn a_silent_job_is_stopped_as_stalled_and_restarted_with_nothing_of_it_left() {
    // Both ranks print once, then hang without a word; the restart (each rank finds its mark) ends
    // at once. The stall limit leaves a loaded machine time to start both ranks: a job stopped
    // before a rank ran would stall again at the restart.
    let marks = tempfile::tempdir().unwrap();
    // A sleep no other process on the machine runs (this test's own process id in its length).
    let sleep = format!("sleep 300.{}", std::process::id());
    let script = format!(
        r#"m={}/$OMPI_COMM_WORLD_RANK; [ -e $m ] && {{ echo "up again"; exit 0; }}; echo up; touch $m; exec {sleep}"#,
        marks.path().display()
    );
    let started = Instant::now();
    let (code, stdout, stderr) =
        launch_script(&["--stall-timeout", "5", "--max-restarts", "1", "--restart-backoff", "0"], &script);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("no output for more than 5 s (--stall-timeout): the job is stalled; stopping it"),
        "{stderr}"
    );
    assert!(stdout.lines().any(|l| l == "[rank 1] up again"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    // A process killed on a loaded machine may take a moment to go; a rank left running stays.
    let ended = Instant::now();
    while !processes_mentioning(&sleep).is_empty() && ended.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<String> = processes_mentioning(&sleep)
        .into_iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid} {:?} {}",
                String::from_utf8_lossy(&cmdline),
                status.lines().take(3).collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    assert_eq!(left, Vec::<String>::new(), "a stalled rank was left running");
}
