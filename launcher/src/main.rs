//! `micn-launch`: builds the `mpirun` command for a micn job, starts it, streams every rank's
//! output (each line whole, under its own rank), turns Ctrl-C, SIGTERM and a closed terminal into
//! one graceful stop of the job, and exits with the job's status after a one-line summary. With
//! `--max-restarts N` a job that dies (a rank killed, a non-zero exit) or stalls (no output for
//! `--stall-timeout` seconds) is relaunched with `--resume auto`, after a doubling back-off; a job
//! that exits with status 3 (micn's "running again cannot fix this": a configuration, argument or
//! input error) is not. It never links libtorch, so it starts on any node that has `mpirun`.
//!
//! `micn-launch --np 2 --config configs/quickstart.toml` runs `micn train --config ...` on two
//! ranks; anything after `--` replaces the micn arguments (`micn-launch --np 2 -- doctor`).
//!
//! Signals: mpirun runs in a session of its own, so the terminal's Ctrl-C and hang-up reach only
//! the launcher. mpirun itself treats SIGINT, SIGTERM and SIGHUP as "kill the job" (SIGTERM to
//! every rank, SIGKILL one second later, the ranks' last output dropped), which leaves no time to
//! checkpoint; it passes SIGUSR1 on to every rank on every host and lets the job end by itself.
//! So the first stop signal becomes one SIGUSR1 to mpirun, which micn treats like SIGTERM (the
//! ranks agree on a stop, checkpoint, write `summary.json` and exit 0). A second Ctrl-C or
//! SIGTERM stops the job at once (SIGTERM to mpirun), a third kills mpirun.
mod output;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{signal, Signal, SignalKind};

use output::{Printer, Reassembler, Stream};

/// micn's exit status (and MPI_Abort code, which mpirun exits with) for a failure that running
/// again cannot fix: a bad configuration, argument or input. Such a job is not restarted.
const EXIT_INPUT_ERROR: i32 = 3;

/// Read by micn's logging set-up: ranks other than 0 print only warnings and errors on standard
/// error (every rank's whole log is in `run.dir/logs/rank-N.log`).
const QUIET_RANKS_ENV: &str = "MICN_QUIET_RANKS";

#[derive(Parser, Debug)]
#[command(name = "micn-launch", version, about = "Run micn on N ranks under mpirun")]
struct Args {
    /// Number of ranks.
    #[arg(long, default_value_t = 1)]
    np: usize,
    /// OpenMPI hostfile (`host slots=N` per line); without it all ranks run on this host.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Extra argument passed to mpirun verbatim (repeatable).
    #[arg(long = "mpirun-arg", allow_hyphen_values = true)]
    mpirun_args: Vec<String>,
    /// libtorch threads per rank (default: this host's cores divided among its ranks, at least 1).
    #[arg(long)]
    threads: Option<usize>,
    /// Process binding: `none`, or `core` (each rank bound to its cores; not when oversubscribed).
    #[arg(long, default_value = "none")]
    bind: String,
    /// The micn binary (default: `micn` beside this launcher).
    #[arg(long)]
    micn: Option<PathBuf>,
    /// The mpirun binary.
    #[arg(long, default_value = "mpirun")]
    mpirun: PathBuf,
    /// Print the command and exit.
    #[arg(long)]
    dry_run: bool,
    /// When the job dies (a rank killed, a non-zero exit) or stalls, relaunch it with
    /// `--resume auto` up to this many times.
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
    /// Seconds without any output line after which the job counts as stalled (stopped and,
    /// with restarts left, relaunched).
    #[arg(long)]
    stall_timeout: Option<u64>,
    /// Seconds before the first restart; doubled for each further one.
    #[arg(long, default_value_t = 2)]
    restart_backoff: u64,
    /// Log lines as text or as JSON objects (passed on to micn; the launcher's own messages, and
    /// rank lines that are not JSON, become JSON objects too).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Show every rank's progress and evaluations on the terminal, not only rank 0's (the other
    /// ranks print warnings and errors; their whole logs are in run.dir/logs/rank-N.log).
    #[arg(long)]
    all_ranks: bool,
    /// Training configuration (runs `micn train --config F`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Configuration override `section.key=value`, passed on to micn (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// micn arguments instead of `train --config F --set ...`.
    #[arg(last = true)]
    micn_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total slots in an OpenMPI hostfile: `slots=N` per host line, 1 when absent.
fn hostfile_slots(path: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("hostfile {}", path.display()))?;
    let mut slots = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let n = match line.split_whitespace().find_map(|w| w.strip_prefix("slots=")) {
            Some(n) => n.parse::<usize>().with_context(|| format!("{}:{}: bad slots= value", path.display(), i + 1))?,
            None => 1,
        };
        slots += n;
    }
    if slots == 0 {
        bail!("hostfile {} lists no hosts", path.display());
    }
    Ok(slots)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The full mpirun command line.
fn build_command(args: &Args) -> anyhow::Result<Vec<String>> {
    if args.np == 0 {
        bail!("--np must be at least 1");
    }
    let micn = match &args.micn {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating micn-launch")?.with_file_name("micn"),
    };
    let mut micn_args: Vec<String> = if !args.micn_args.is_empty() {
        args.micn_args.clone()
    } else {
        let config = args.config.as_ref().context("give --config F (to train) or micn arguments after `--`")?;
        let mut v = vec!["train".to_string(), "--config".into(), config.display().to_string()];
        for s in &args.sets {
            v.extend(["--set".to_string(), s.clone()]);
        }
        v
    };
    if args.log_format == LogFormat::Json && !log_format_json(&micn_args) {
        micn_args.splice(0..0, ["--log-format".to_string(), "json".to_string()]);
    }
    let slots = match &args.hostfile {
        Some(h) => hostfile_slots(h)?,
        None => cores(),
    };
    let ranks_here = if args.hostfile.is_some() { 1 } else { args.np };
    let threads = args.threads.unwrap_or_else(|| (cores() / ranks_here).max(1));
    let mut cmd = vec![args.mpirun.display().to_string(), "-np".into(), args.np.to_string(), "--tag-output".into()];
    if is_root() {
        cmd.push("--allow-run-as-root".into());
    }
    if let Some(h) = &args.hostfile {
        cmd.extend(["--hostfile".into(), h.display().to_string()]);
    }
    let oversubscribed = args.np > slots;
    if oversubscribed {
        cmd.push("--oversubscribe".into());
    }
    match args.bind.as_str() {
        "core" if !oversubscribed => {
            cmd.extend(["--map-by".into(), format!("slot:PE={threads}"), "--bind-to".into(), "core".into()])
        }
        "none" | "core" => cmd.extend(["--bind-to".into(), "none".into()]),
        other => bail!("--bind must be `none` or `core`, not `{other}`"),
    }
    // Each rank also runs a loader thread: when ranks and loaders outnumber this host's cores,
    // ranks waiting in a collective must yield the core instead of spinning on it.
    if args.hostfile.is_none() && args.np * (threads + 1) > cores() {
        cmd.extend(["--mca".into(), "mpi_yield_when_idle".into(), "1".into()]);
    }
    cmd.extend(["-x".into(), format!("OMP_NUM_THREADS={threads}")]);
    if !args.all_ranks {
        cmd.extend(["-x".into(), format!("{QUIET_RANKS_ENV}=1")]);
    }
    if std::env::var_os("RUST_LOG").is_some() {
        cmd.extend(["-x".into(), "RUST_LOG".into()]);
    }
    cmd.extend(args.mpirun_args.iter().cloned());
    cmd.push(micn.display().to_string());
    cmd.extend(micn_args);
    Ok(cmd)
}

/// Whether micn's arguments ask for `--log-format json`.
fn log_format_json(micn_args: &[String]) -> bool {
    micn_args.iter().zip(micn_args.iter().skip(1)).any(|(a, b)| a == "--log-format" && b == "json")
        || micn_args.iter().any(|a| a == "--log-format=json")
}

/// The command of a restart: the same, resuming from the newest checkpoint (`--resume auto`,
/// also in place of a `--resume PATH` the first attempt started from, and without the first
/// attempt's `--overwrite`, which would delete the run the restart is to continue).
fn resume_auto(cmd: &mut Vec<String>) {
    cmd.retain(|a| a != "--overwrite");
    if let Some(i) = cmd.iter().position(|a| a == "--resume") {
        if let Some(value) = cmd.get_mut(i + 1) {
            *value = "auto".into();
            return;
        }
    }
    cmd.retain(|a| !a.starts_with("--resume="));
    cmd.extend(["--resume".to_string(), "auto".to_string()]);
}

/// Print what mpirun writes on one of its streams, each rank's line whole and under its rank.
async fn stream(
    reader: impl tokio::io::AsyncRead + Unpin,
    to: Stream,
    printer: Printer,
    last_output: Arc<Mutex<Instant>>,
) {
    let mut reader = BufReader::new(reader);
    let mut lines = Reassembler::default();
    let mut buf = Vec::new();
    // Bytes, not `lines()`: a rank's invalid UTF-8 must not stop the draining (mpirun, and then
    // the ranks, would block on a full pipe).
    while let Ok(n) = reader.read_until(b'\n', &mut buf).await {
        if n == 0 {
            break;
        }
        *last_output.lock().expect("timestamp lock") = Instant::now();
        let text = String::from_utf8_lossy(&buf);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        for line in lines.push(text) {
            printer.line(to, &line);
        }
        buf.clear();
    }
    for line in lines.finish() {
        printer.line(to, &line);
    }
}

/// How one attempt ended.
enum Outcome {
    Finished(std::process::ExitStatus),
    /// The user asked for a stop (the job was told): never restarted.
    Interrupted(std::process::ExitStatus),
    /// No output for the stall timeout: stopped by us.
    Stalled,
}

/// How firmly the user has asked the job to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Request {
    /// Every rank finishes its step, checkpoints, writes its summary and exits.
    Graceful,
    /// mpirun ends the job now (SIGTERM, then SIGKILL to every rank): no checkpoint.
    Terminate,
    /// mpirun itself is killed.
    Kill,
}

/// The stop signals received so far. The first asks for a graceful stop; the second Ctrl-C or
/// SIGTERM asks more firmly, the third more still. One signal of each kind is a single request:
/// a Ctrl-C under `micn sweep` reaches the sweep and this launcher, and the sweep passes a
/// SIGTERM on. A hang-up never escalates (a closing shell may send it more than once).
#[derive(Debug, Default)]
struct Stops {
    interrupts: u32,
    terminates: u32,
    asked: Option<Request>,
}

impl Stops {
    /// What a signal asks for beyond what was asked already.
    fn on(&mut self, signal: i32) -> Option<Request> {
        let count = match signal {
            libc::SIGINT => {
                self.interrupts += 1;
                self.interrupts
            }
            libc::SIGTERM => {
                self.terminates += 1;
                self.terminates
            }
            _ => 1,
        };
        let wanted = match count {
            1 => Request::Graceful,
            2 => Request::Terminate,
            _ => Request::Kill,
        };
        if self.asked.is_some_and(|asked| asked >= wanted) {
            return None;
        }
        self.asked = Some(wanted);
        Some(wanted)
    }
}

/// The signals that stop the job: Ctrl-C, SIGTERM and a hang-up (a closed terminal).
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Catch them from now on (their default action would end the launcher but not the job).
    fn catch() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "Ctrl-C (SIGINT)",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "hang-up (SIGHUP)",
        _ => "a signal",
    }
}

/// Ask the job to stop as firmly as `request` says.
fn stop_job(pid: i32, request: Request, signal: i32, printer: Printer) {
    let why = signal_name(signal);
    let sent = match request {
        // Before mpirun has set up its forwarding, SIGUSR1 would kill mpirun alone; the ranks
        // have not started then, so there is nothing to checkpoint and SIGTERM does.
        Request::Graceful if catches(pid, libc::SIGUSR1) => {
            let firmer = match signal {
                libc::SIGINT => " (Ctrl-C again stops it at once, without a checkpoint)",
                libc::SIGTERM => " (a second SIGTERM stops it at once, without a checkpoint)",
                _ => "",
            };
            printer.say(
                "WARN",
                &format!("{why}: stopping the job: every rank finishes its step, checkpoints and exits{firmer}"),
            );
            libc::SIGUSR1
        }
        Request::Graceful | Request::Terminate => {
            printer.say("WARN", &format!("{why}: stopping the job at once, without a checkpoint"));
            libc::SIGTERM
        }
        Request::Kill => {
            printer.say("WARN", &format!("{why}: killing mpirun"));
            libc::SIGKILL
        }
    };
    // SAFETY: kill only sends a signal to our own child process.
    unsafe {
        libc::kill(pid, sent);
    }
}

/// Whether process `pid` has a handler for `signal` (`SigCgt` in /proc/PID/status).
fn catches(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim);
    mask.and_then(|m| u64::from_str_radix(m, 16).ok()).is_some_and(|m| m & (1 << (signal - 1)) != 0)
}

/// Run in mpirun before it starts: a session of its own (no controlling terminal, so neither
/// Ctrl-C nor a hang-up reaches it or the ranks), and a SIGTERM should the launcher die.
fn detach() -> std::io::Result<()> {
    // SAFETY: setsid and prctl are async-signal-safe and touch only the calling process.
    unsafe {
        if libc::setsid() == -1 {
            return Err(std::io::Error::last_os_error());
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    Ok(())
}

async fn run_once(
    cmd: &[String],
    stall: Option<Duration>,
    signals: &mut StopSignals,
    stops: &mut Stops,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: `detach` calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(detach);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{}`: is OpenMPI installed? (bash cluster/setup-node.sh)", cmd[0]))?;
    let pid = child.id().context("mpirun exited at once")? as i32;
    let last_output = Arc::new(Mutex::new(Instant::now()));
    let out =
        tokio::spawn(stream(child.stdout.take().expect("piped"), Stream::Stdout, printer, Arc::clone(&last_output)));
    let err =
        tokio::spawn(stream(child.stderr.take().expect("piped"), Stream::Stderr, printer, Arc::clone(&last_output)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                break if stops.asked.is_some() { Outcome::Interrupted(status) } else { Outcome::Finished(status) };
            }
            signal = signals.recv() => {
                if let Some(request) = stops.on(signal) {
                    stop_job(pid, request, signal, printer);
                }
            }
            _ = tick.tick() => {
                let quiet = last_output.lock().expect("timestamp lock").elapsed();
                if stall.is_some_and(|limit| quiet > limit) && stops.asked.is_none() {
                    printer.say("WARN", &format!("no output for {:.0} s: the job is stalled; stopping it", quiet.as_secs_f64()));
                    // SAFETY: kill only sends a signal to our own child process.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                    break Outcome::Stalled;
                }
            }
        }
    };
    let _ = tokio::join!(out, err);
    Ok(outcome)
}

async fn launch(args: Args) -> anyhow::Result<i32> {
    let mut cmd = build_command(&args)?;
    if args.dry_run {
        println!("{}", cmd.join(" "));
        return Ok(0);
    }
    let printer = Printer { json: log_format_json(&cmd) };
    let mut signals = StopSignals::catch()?;
    let mut stops = Stops::default();
    let started = Instant::now();
    let stall = args.stall_timeout.map(Duration::from_secs);
    let mut attempt = 0u32;
    loop {
        let outcome = run_once(&cmd, stall, &mut signals, &mut stops, printer).await?;
        let secs = started.elapsed().as_secs_f64();
        let (why, code) = match outcome {
            Outcome::Finished(status) if status.success() => {
                printer.say("INFO", &format!("{} rank(s) finished in {secs:.1} s", args.np));
                return Ok(0);
            }
            Outcome::Interrupted(status) => {
                printer.say("INFO", &format!("job stopped on request after {secs:.1} s ({status})"));
                return Ok(status.code().unwrap_or(1));
            }
            Outcome::Finished(status) if status.code() == Some(EXIT_INPUT_ERROR) => {
                printer.say(
                    "ERROR",
                    &format!(
                        "job failed after {secs:.1} s ({status}): an error that running again cannot fix (a \
                         configuration, an argument or the input); not restarting; see the rank messages above"
                    ),
                );
                return Ok(EXIT_INPUT_ERROR);
            }
            Outcome::Finished(status) => (format!("failed ({status})"), status.code().unwrap_or(1)),
            Outcome::Stalled => ("stalled".to_string(), 1),
        };
        if attempt >= args.max_restarts {
            printer.say("ERROR", &format!("job {why} after {secs:.1} s; see the rank messages above"));
            return Ok(code);
        }
        attempt += 1;
        let wait = args.restart_backoff.saturating_mul(1 << (attempt - 1).min(16));
        printer.say(
            "WARN",
            &format!(
                "job {why}; restarting in {wait} s with --resume auto: from the newest checkpoint if there is one \
                 (restart {attempt} of {})",
                args.max_restarts
            ),
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            signal = signals.recv() => {
                stops.on(signal);
                printer.say("INFO", &format!("{}: not restarting", signal_name(signal)));
                return Ok(code);
            }
        }
        resume_auto(&mut cmd);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(launch(args)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("micn-launch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["micn-launch", "--micn", "/bin/micn"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn train_command_carries_config_and_overrides() {
        let cmd = build_command(&args(&["--np", "2", "--config", "c.toml", "--set", "micn.phi=0.5"])).unwrap();
        let tail = &cmd[cmd.iter().position(|a| a == "/bin/micn").unwrap()..];
        assert_eq!(tail, ["/bin/micn", "train", "--config", "c.toml", "--set", "micn.phi=0.5"]);
        assert_eq!(&cmd[..3], ["mpirun", "-np", "2"]);
    }

    #[test]
    fn more_ranks_than_cores_oversubscribe_and_get_one_thread() {
        let cmd = build_command(&args(&["--np", "64", "--", "doctor"])).unwrap();
        assert!(cmd.contains(&"--oversubscribe".to_string()), "{cmd:?}");
        assert!(cmd.contains(&"OMP_NUM_THREADS=1".to_string()), "{cmd:?}");
        assert!(cmd.windows(2).any(|w| w == ["mpi_yield_when_idle", "1"]), "{cmd:?}");
        assert_eq!(cmd.last().unwrap(), "doctor");
    }

    #[test]
    fn missing_hostfile_is_named() {
        let e = build_command(&args(&["--np", "2", "--hostfile", "/no/such/hosts", "--", "doctor"])).unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/hosts"), "{e:#}");
    }

    #[test]
    fn hostfile_slots_are_summed() {
        let dir = std::env::temp_dir().join(format!("micn-launch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "# cluster\nnode1 slots=4\nnode2 slots=2 # comment\nnode3\n").unwrap();
        assert_eq!(hostfile_slots(&path).unwrap(), 7);
        std::fs::write(&path, "node1 slots=x\n").unwrap();
        assert!(format!("{:#}", hostfile_slots(&path).unwrap_err()).contains(":1: bad slots"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quiet_ranks_and_json_logs_are_asked_of_micn() {
        let cmd = build_command(&args(&["--np", "2", "--log-format", "json", "--config", "c.toml"])).unwrap();
        assert!(cmd.windows(2).any(|w| w == ["-x", "MICN_QUIET_RANKS=1"]), "{cmd:?}");
        let tail = &cmd[cmd.iter().position(|a| a == "/bin/micn").unwrap()..];
        assert_eq!(tail, ["/bin/micn", "--log-format", "json", "train", "--config", "c.toml"]);
        assert!(log_format_json(&cmd));
        let cmd = build_command(&args(&["--np", "2", "--all-ranks", "--", "--log-format=json", "doctor"])).unwrap();
        assert!(!cmd.iter().any(|a| a.starts_with("MICN_QUIET_RANKS")), "{cmd:?}");
        assert!(log_format_json(&cmd));
        assert!(!log_format_json(&build_command(&args(&["--", "doctor", "--json"])).unwrap()));
    }

    #[test]
    fn a_restart_resumes_from_the_newest_checkpoint() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut cmd = strings(&["micn", "train", "--config", "c.toml"]);
        resume_auto(&mut cmd);
        assert_eq!(cmd, strings(&["micn", "train", "--config", "c.toml", "--resume", "auto"]));
        resume_auto(&mut cmd);
        assert_eq!(cmd, strings(&["micn", "train", "--config", "c.toml", "--resume", "auto"]));
        let mut cmd = strings(&["micn", "train", "--resume", "runs/x/checkpoints/step-5", "--config", "c.toml"]);
        resume_auto(&mut cmd);
        assert_eq!(cmd, strings(&["micn", "train", "--resume", "auto", "--config", "c.toml"]));
        let mut cmd = strings(&["micn", "train", "--resume=runs/x/checkpoints/step-5"]);
        resume_auto(&mut cmd);
        assert_eq!(cmd, strings(&["micn", "train", "--resume", "auto"]));
        // A first attempt that replaced an old run: its restart continues the new one.
        let mut cmd = strings(&["micn", "train", "--config", "c.toml", "--overwrite"]);
        resume_auto(&mut cmd);
        assert_eq!(cmd, strings(&["micn", "train", "--config", "c.toml", "--resume", "auto"]));
    }

    #[test]
    fn a_repeated_ctrl_c_or_sigterm_escalates_and_a_hang_up_never_does() {
        let mut stops = Stops::default();
        assert_eq!(stops.on(libc::SIGHUP), Some(Request::Graceful));
        assert_eq!(stops.on(libc::SIGHUP), None);
        assert_eq!(stops.on(libc::SIGINT), None, "Ctrl-C after a hang-up is the same request");
        assert_eq!(stops.on(libc::SIGTERM), None, "as under micn sweep: Ctrl-C, then the sweep's SIGTERM");
        assert_eq!(stops.on(libc::SIGINT), Some(Request::Terminate));
        assert_eq!(stops.on(libc::SIGHUP), None);
        assert_eq!(stops.on(libc::SIGINT), Some(Request::Kill));
        let mut stops = Stops::default();
        assert_eq!(stops.on(libc::SIGTERM), Some(Request::Graceful));
        assert_eq!(stops.on(libc::SIGTERM), Some(Request::Terminate));
    }

    #[test]
    fn a_caught_signal_is_read_from_proc() {
        let me = std::process::id() as i32;
        // SAFETY: installing a handler that does nothing, in this test process.
        extern "C" fn ignore(_: i32) {}
        unsafe { libc::signal(libc::SIGUSR2, ignore as *const () as libc::sighandler_t) };
        assert!(catches(me, libc::SIGUSR2));
        assert!(!catches(me, libc::SIGTTIN));
        assert!(!catches(i32::MAX, libc::SIGUSR2), "no such process");
    }
}
