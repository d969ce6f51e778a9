//! `micn-launch`: builds the `mpirun` command for a micn job, starts it, streams every rank's
//! output with a `[rank N]` prefix, forwards Ctrl-C / SIGTERM to the job, and exits with the
//! job's status after a one-line summary. With `--max-restarts N` a job that dies (a rank
//! killed, a non-zero exit) or stalls (no output for `--stall-timeout` seconds) is relaunched with
//! `--resume auto`, after a doubling back-off. It never links libtorch, so it starts on any node
//! that has `mpirun`.
//!
//! `micn-launch --np 2 --config configs/quickstart.toml` runs `micn train --config ...` on two
//! ranks; anything after `--` replaces the micn arguments (`micn-launch --np 2 -- doctor`).
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

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
    let micn_args: Vec<String> = if !args.micn_args.is_empty() {
        args.micn_args.clone()
    } else {
        let config = args.config.as_ref().context("give --config F (to train) or micn arguments after `--`")?;
        let mut v = vec!["train".to_string(), "--config".into(), config.display().to_string()];
        for s in &args.sets {
            v.extend(["--set".to_string(), s.clone()]);
        }
        v
    };
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
    if std::env::var_os("RUST_LOG").is_some() {
        cmd.extend(["-x".into(), "RUST_LOG".into()]);
    }
    cmd.extend(args.mpirun_args.iter().cloned());
    cmd.push(micn.display().to_string());
    cmd.extend(micn_args);
    Ok(cmd)
}

/// `[1,3]<stdout>:text` (OpenMPI's --tag-output) becomes `[rank 3] text`.
fn retag(line: &str) -> String {
    let tagged = line.strip_prefix('[').and_then(|rest| {
        let (ids, rest) = rest.split_once(']')?;
        let rank = ids.split(',').nth(1)?;
        let text = rest.strip_prefix("<stdout>:").or_else(|| rest.strip_prefix("<stderr>:"))?;
        // micn's own log lines already carry the rank.
        Some(if text.starts_with("[rank ") { text.to_string() } else { format!("[rank {rank}] {text}") })
    });
    tagged.unwrap_or_else(|| line.to_string())
}

async fn stream(reader: impl tokio::io::AsyncRead + Unpin, to_stderr: bool, last_line: Arc<Mutex<Instant>>) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        *last_line.lock().expect("timestamp lock") = Instant::now();
        if to_stderr {
            eprintln!("{}", retag(&line));
        } else {
            println!("{}", retag(&line));
        }
    }
}

/// How one attempt ended.
enum Outcome {
    Finished(std::process::ExitStatus),
    /// The user interrupted it (the signal was forwarded): never restarted.
    Interrupted(std::process::ExitStatus),
    /// No output for the stall timeout: stopped by us.
    Stalled,
}

async fn run_once(cmd: &[String], stall: Option<Duration>) -> anyhow::Result<Outcome> {
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`: is OpenMPI installed? (bash cluster/setup-node.sh)", cmd[0]))?;
    let pid = child.id().context("mpirun exited at once")? as i32;
    let last_line = Arc::new(Mutex::new(Instant::now()));
    let out = tokio::spawn(stream(child.stdout.take().expect("piped"), false, Arc::clone(&last_line)));
    let err = tokio::spawn(stream(child.stderr.take().expect("piped"), true, Arc::clone(&last_line)));
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupted = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                break if interrupted { Outcome::Interrupted(status) } else { Outcome::Finished(status) };
            }
            _ = sigint.recv() => { interrupted = true; forward(pid, libc::SIGINT, "SIGINT") }
            _ = sigterm.recv() => { interrupted = true; forward(pid, libc::SIGTERM, "SIGTERM") }
            _ = tick.tick() => {
                let quiet = last_line.lock().expect("timestamp lock").elapsed();
                if stall.is_some_and(|limit| quiet > limit) && !interrupted {
                    eprintln!("micn-launch: no output for {:.0} s: the job is stalled; stopping it", quiet.as_secs_f64());
                    forward(pid, libc::SIGTERM, "SIGTERM");
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
    let started = Instant::now();
    let stall = args.stall_timeout.map(Duration::from_secs);
    let mut attempt = 0u32;
    loop {
        let outcome = run_once(&cmd, stall).await?;
        let secs = started.elapsed().as_secs_f64();
        let why = match outcome {
            Outcome::Finished(status) if status.success() => {
                eprintln!("micn-launch: {} rank(s) finished in {secs:.1} s", args.np);
                return Ok(0);
            }
            Outcome::Interrupted(status) => {
                eprintln!("micn-launch: job stopped on request after {secs:.1} s ({status})");
                return Ok(status.code().unwrap_or(1));
            }
            Outcome::Finished(status) => format!("failed ({status})"),
            Outcome::Stalled => "stalled".to_string(),
        };
        if attempt >= args.max_restarts {
            eprintln!("micn-launch: job {why} after {secs:.1} s; see the rank messages above");
            return Ok(1);
        }
        attempt += 1;
        let wait = args.restart_backoff.saturating_mul(1 << (attempt - 1).min(16));
        eprintln!(
            "micn-launch: job {why}; restarting from the latest checkpoint in {wait} s (restart {attempt} of {})",
            args.max_restarts
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
        if !cmd.iter().any(|a| a == "--resume") {
            cmd.extend(["--resume".to_string(), "auto".to_string()]);
        }
    }
}

fn forward(pid: i32, signal: i32, name: &str) {
    eprintln!("micn-launch: forwarding {name} to the job");
    // SAFETY: kill only sends a signal to our own child process.
    unsafe {
        libc::kill(pid, signal);
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
    fn tagged_lines_get_a_rank_prefix() {
        assert_eq!(retag("[1,3]<stdout>:hello"), "[rank 3] hello");
        assert_eq!(retag("[1,0]<stderr>:warn: x"), "[rank 0] warn: x");
        assert_eq!(retag("plain mpirun message"), "plain mpirun message");
        assert_eq!(retag("[1,1]<stderr>:[rank 1] INFO ready"), "[rank 1] INFO ready");
    }
}
