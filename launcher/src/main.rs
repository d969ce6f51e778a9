//! `micn-launch`: builds the `mpirun` command for a micn job, starts it, streams every rank's
//! output (each line whole, under its own rank), turns Ctrl-C, SIGTERM and a closed terminal into
//! one graceful stop of the job, and exits with the job's status after a one-line summary. With
//! `--max-restarts N` a job that dies (a rank killed, a non-zero exit) or stalls (no output for
//! `--stall-timeout` seconds) is relaunched, after a doubling back-off, with the same command: the
//! run it started resumes from its newest checkpoint (see [`launch_id`]); a job
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
mod hosts;
mod output;
mod usage;

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{signal, Signal, SignalKind};

use output::{Printer, Reassembler, Stream};
use usage::log_format_json;

/// micn's exit status (and MPI_Abort code, which mpirun exits with) for a failure that running
/// again cannot fix: a bad configuration, argument or input. Such a job is not restarted.
const EXIT_INPUT_ERROR: i32 = 3;

/// Read by micn's logging set-up: ranks other than 0 print only warnings and errors on standard
/// error (every rank's whole log is in `run.dir/logs/rank-N.log`).
const QUIET_RANKS_ENV: &str = "MICN_QUIET_RANKS";

/// Read by micn's `train`: see [`launch_id`].
const LAUNCH_ID_ENV: &str = "MICN_LAUNCH_ID";

/// The line every micn rank that [`LAUNCH_ID_ENV`] marks as this launcher's writes to standard
/// error once its stop signals are set (micn's `STARTED_LINE`, word for word): until every rank
/// has, a graceful stop waits ([`run_once`]), as mpirun's SIGUSR1 would reach no rank, or one
/// that it ends unsaid. The line itself is not shown.
const STARTED_LINE: &str = "micn: this rank now takes stop signals (micn-launch)";

/// How long a graceful stop asked for while the job starts waits for every rank's
/// [`STARTED_LINE`] (one lost in mpirun's output, say) before it is sent all the same.
const STARTED_WAIT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(name = "micn-launch", version, about = "Run micn on N ranks under mpirun")]
struct Args {
    /// Number of ranks.
    #[arg(long, default_value_t = 1)]
    np: usize,
    /// OpenMPI hostfile (`host slots=N` per line); without it all ranks run on this host.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Extra argument passed to mpirun (repeatable): one argument each; one given with spaces
    /// (`--mpirun-arg="--mca btl tcp,self"`) is split at them, and the launcher says so.
    #[arg(long = "mpirun-arg", allow_hyphen_values = true)]
    mpirun_args: Vec<String>,
    /// libtorch threads per rank (default: each host's cores divided among the ranks it runs, at
    /// least 1; with a hostfile every rank works this out on its own host). Sets
    /// `OMP_NUM_THREADS`, and with --config also `train.threads` (which a configuration's
    /// `train.threads`, when set, would otherwise win over), unless a --set gives it.
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
    /// When the job dies (a rank killed, a non-zero exit) or stalls, relaunch it up to this many
    /// times: the run it started resumes from its newest checkpoint.
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
    /// Seconds without any output line after which the job counts as stalled (stopped and,
    /// with restarts left, relaunched).
    #[arg(long)]
    stall_timeout: Option<u64>,
    /// Seconds before the first restart; doubled for each further one.
    #[arg(long, default_value_t = 2)]
    restart_backoff: u64,
    /// Elastic restarts (with --hostfile and --max-restarts): before each restart every host is
    /// probed, the ones that do not answer are left out, and the job resumes on the rest (on the
    /// most ranks their slots hold that divide --np, so that the global batch splits evenly) as
    /// long as that is at least this many ranks; when the lost hosts answer again, the job is
    /// stopped with a checkpoint and resumes on all of them.
    #[arg(long)]
    min_np: Option<usize>,
    /// Seconds a host has to answer a probe (through mpirun's remote shell).
    #[arg(long, default_value_t = 10)]
    probe_timeout: u64,
    /// While running on fewer hosts than the hostfile's, seconds between probes of the lost ones.
    #[arg(long, default_value_t = 30)]
    regrow_interval: u64,
    /// Seconds mpirun has to end the job after a rank has reported an error (or after mpirun's
    /// own `ORTE_ERROR_LOG`, when the job is then silent); past them the launcher kills the whole
    /// job (mpirun, its daemons and every rank in its process group).
    #[arg(long, default_value_t = 30)]
    exit_grace: u64,
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
    /// Passed on to `micn train`: continue the run in run.dir (`auto`: from its newest
    /// checkpoint) or from the checkpoint directory PATH.
    #[arg(long, value_name = "auto|PATH", conflicts_with = "overwrite")]
    resume: Option<String>,
    /// Passed on to `micn train`: replace the run that run.dir holds.
    #[arg(long)]
    overwrite: bool,
    /// micn arguments instead of `train --config F --set ...`.
    #[arg(last = true)]
    micn_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The CPUs this process may run on (hardware threads): what the ranks' threads divide.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What this host gives the ranks mpirun starts on it without a hostfile.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalHost {
    /// The CPUs the ranks' threads divide ([`cores`]: a CPU quota counts).
    cpus: usize,
    /// The hardware threads of each physical core (1 without SMT).
    threads_per_core: usize,
    /// mpirun's slots: OpenMPI counts physical cores (the hardware threads of one core share a
    /// slot) among the CPUs it may use. A 2-CPU machine of one core with two threads has one
    /// slot, and two ranks there need `--oversubscribe`.
    slots: usize,
    /// The batch system's allocation this runs in, which mpirun places the ranks in without a
    /// hostfile (its nodes and slots, not this host's): `Slurm job 42`, say.
    allocation: Option<String>,
}

impl LocalHost {
    fn this() -> Self {
        let allowed = allowed_cpus();
        let allocation = allocation(|name| std::env::var(name).ok());
        match physical_cores(std::path::Path::new("/sys/devices/system/cpu"), &allowed) {
            Some(slots) => {
                LocalHost { cpus: cores(), threads_per_core: (allowed.len() / slots).max(1), slots, allocation }
            }
            // Without the topology, one thread a core: a CPU quota must not pass for threads.
            None => LocalHost { cpus: cores(), threads_per_core: 1, slots: cores(), allocation },
        }
    }
}

/// The allocation of a batch system whose nodes OpenMPI 4.1's mpirun takes for its own without a
/// hostfile (its `ras` components for Slurm and Grid Engine, as Debian builds it), from the
/// variables those components read (`var`; set, even if empty, as OpenMPI tells).
fn allocation(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    if let (Some(job), Some(_)) = (var("SLURM_JOBID"), var("SLURM_NODELIST")) {
        return Some(format!("Slurm job {job}"));
    }
    match (var("SGE_ROOT"), var("ARC"), var("PE_HOSTFILE"), var("JOB_ID")) {
        (Some(_), Some(_), Some(_), Some(job)) => Some(format!("Grid Engine job {job}")),
        _ => None,
    }
}

/// The CPUs this process may run on, by number (none where that cannot be read). A CPU quota
/// (`docker --cpus`) limits none of them: it shows in [`cores`] only.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    };
    match allowed {
        // SAFETY: CPU_ISSET reads a set we own, at an index below CPU_SETSIZE.
        Some(set) => (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect(),
        None => Vec::new(),
    }
}

/// The physical cores (distinct package and core ids, as `sysfs` under `root` gives them) that
/// `cpus` lie on; `None` where any of it cannot be read.
fn physical_cores(root: &std::path::Path, cpus: &[usize]) -> Option<usize> {
    let mut seen = std::collections::BTreeSet::new();
    for cpu in cpus {
        let topology = root.join(format!("cpu{cpu}/topology"));
        let id = |file: &str| std::fs::read_to_string(topology.join(file)).ok()?.trim().parse::<i64>().ok();
        seen.insert((id("physical_package_id")?, id("core_id")?));
    }
    (!seen.is_empty()).then_some(seen.len())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where an attempt runs: its rank count and hostfile (a restart may use fewer hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    np: usize,
    hostfile: Option<PathBuf>,
}

/// `--mpirun-arg` values as mpirun's arguments: each one whole, one with spaces split at them.
fn mpirun_tokens(given: &[String]) -> (Vec<String>, Vec<String>) {
    let mut tokens = Vec::new();
    let mut notes = Vec::new();
    for arg in given {
        let parts: Vec<String> = arg.split_whitespace().map(String::from).collect();
        if parts.len() > 1 {
            notes.push(format!(
                "--mpirun-arg {arg:?} holds spaces: passed to mpirun as {} arguments {parts:?}",
                parts.len()
            ));
        }
        tokens.extend(parts);
    }
    (tokens, notes)
}

/// The micn binary the ranks run: `--micn`, else `micn` beside this launcher.
fn micn_binary(args: &Args) -> anyhow::Result<PathBuf> {
    match &args.micn {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe().context("locating micn-launch")?.with_file_name("micn")),
    }
}

/// The full mpirun command line, and what the user should know of it (an argument split at its
/// spaces, a binding asked for and not made).
#[derive(Debug)]
struct MpirunCommand {
    args: Vec<String>,
    notes: Vec<String>,
}

/// The mpirun command that runs `placement`, on this host when there is no hostfile.
fn build_command(args: &Args, placement: &Placement) -> anyhow::Result<MpirunCommand> {
    build_command_on(args, placement, &LocalHost::this())
}

fn build_command_on(args: &Args, placement: &Placement, local: &LocalHost) -> anyhow::Result<MpirunCommand> {
    if placement.np == 0 {
        bail!("--np must be at least 1");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1 (leave it out for each host's cores divided among its ranks)");
    }
    let micn = micn_binary(args)?;

    let mut micn_args: Vec<String> = if !args.micn_args.is_empty() {
        if args.config.is_some() || !args.sets.is_empty() || args.resume.is_some() || args.overwrite {
            bail!(
                "--config, --set, --resume and --overwrite make the command `micn train --config F ...`; with \
                 micn's arguments after `--`, give them there instead"
            );
        }
        args.micn_args.clone()
    } else {
        let config = args.config.as_ref().context("give --config F (to train) or micn arguments after `--`")?;
        let mut v = vec!["train".to_string(), "--config".into(), config.display().to_string()];
        for s in &args.sets {
            v.extend(["--set".to_string(), s.clone()]);
        }
        // Unless a `--set` names train.threads itself.
        if let Some(threads) = args.threads.filter(|_| threads_set(&args.sets).is_none()) {
            v.extend(["--set".to_string(), format!("train.threads={threads}")]);
        }
        if let Some(resume) = &args.resume {
            // An unset variable in a script: refused here as micn would, before any restart.
            if resume.is_empty() {
                bail!("--resume is empty: give `auto` or a checkpoint directory");
            }
            v.extend(["--resume".to_string(), resume.clone()]);
        }
        if args.overwrite {
            v.push("--overwrite".into());
        }
        v
    };
    if args.log_format == LogFormat::Json && !log_format_json(&micn_args) {
        if micn_args.iter().any(|a| a == "--log-format" || a.starts_with("--log-format=")) {
            bail!("--log-format json here, and another --log-format among micn's arguments: give one of them");
        }
        micn_args.splice(0..0, ["--log-format".to_string(), "json".to_string()]);
    }
    let np = placement.np;
    let mut notes = Vec::new();
    // Where the ranks run: the hostfile's hosts, else the allocation's nodes (mpirun's to count:
    // it refuses more ranks than their slots), else this host alone.
    let here_only = placement.hostfile.is_none() && local.allocation.is_none();
    let slots = match (&placement.hostfile, &local.allocation) {
        (Some(h), _) => Some(hosts::total_slots(&hosts::read_hostfile(h)?)),
        (None, Some(allocation)) => {
            notes.push(format!(
                "in {allocation}: mpirun places the ranks on its nodes and slots, each rank dividing its \
                 node's cores among the ranks there (give --hostfile to place them yourself)"
            ));
            None
        }
        (None, None) => Some(local.slots),
    };
    let oversubscribed = slots.is_some_and(|slots| np > slots);
    // The threads each rank runs: `--threads`, else a `--set train.threads=N` of micn's (which
    // wins over OMP_NUM_THREADS there), else each host's share of its cores.
    // (0 there is micn's "this host's share": not a count.)
    let asked_threads =
        args.threads.or_else(|| threads_set(&args.sets)?.trim().parse().ok().filter(|&n: &usize| n > 0));
    let binding = match args.bind.as_str() {
        "none" => None,
        "core" => {
            bind_to_cores(asked_threads, np, (here_only, local), oversubscribed).map_err(|why| notes.push(why)).ok()
        }
        other => bail!("--bind must be `none` or `core`, not `{other}`"),
    };
    // Every rank here: each on the hardware threads of the cores it is bound to, or on its share
    // of this host's. Else each rank divides its own host's cores among the ranks there (micn
    // does, when OMP_NUM_THREADS is not set).
    let threads = args.threads.or_else(|| {
        here_only.then(|| {
            let share = (local.cpus / np).max(1);
            binding.map_or(share, |cores| share.min(cores * local.threads_per_core))
        })
    });
    let mut cmd = vec![args.mpirun.display().to_string(), "-np".into(), np.to_string(), "--tag-output".into()];
    if is_root() {
        cmd.push("--allow-run-as-root".into());
    }
    if let Some(h) = &placement.hostfile {
        cmd.extend(["--hostfile".into(), h.display().to_string()]);
    }
    if oversubscribed {
        cmd.push("--oversubscribe".into());
    }
    match binding {
        Some(pe) => cmd.extend(["--map-by".into(), format!("slot:PE={pe}"), "--bind-to".into(), "core".into()]),
        None => cmd.extend(["--bind-to".into(), "none".into()]),
    }
    // Each rank also runs a loader thread: when ranks and loaders outnumber this host's cores,
    // ranks waiting in a collective must yield the core instead of spinning on it.
    if here_only && np * (threads.unwrap_or(1) + 1) > local.cpus {
        cmd.extend(["--mca".into(), "mpi_yield_when_idle".into(), "1".into()]);
    }
    if let Some(threads) = threads {
        cmd.extend(["-x".into(), format!("OMP_NUM_THREADS={threads}")]);
    }
    if !args.all_ranks {
        cmd.extend(["-x".into(), format!("{QUIET_RANKS_ENV}=1")]);
    }
    if std::env::var_os("RUST_LOG").is_some() {
        cmd.extend(["-x".into(), "RUST_LOG".into()]);
    }
    cmd.extend(["-x".into(), format!("{LAUNCH_ID_ENV}={}", launch_id())]);
    let (tokens, split_notes) = mpirun_tokens(&args.mpirun_args);
    cmd.extend(tokens);
    cmd.push(micn.display().to_string());
    cmd.extend(micn_args);
    notes.extend(split_notes);
    Ok(MpirunCommand { args: cmd, notes })
}

/// The value the last `--set train.threads=…` among `sets` gives, the one micn takes.
fn threads_set(sets: &[String]) -> Option<&str> {
    sets.iter().rev().find_map(|s| s.split_once('=').filter(|(key, _)| key.trim() == "train.threads").map(|(_, v)| v))
}

/// `--bind core`: the physical cores each rank is bound to (mpirun's `PE`), or why it binds
/// none. With ranks on other hosts (a hostfile's, an allocation's), each rank gets as many cores
/// as it runs threads (`--threads`: without it, each rank would size its threads on the one
/// core it was bound to), its host's to count; with every rank here, the cores whose hardware
/// threads its `threads` run on (an equal share of this host's cores when not given), if this
/// host has that many for every rank.
fn bind_to_cores(
    threads: Option<usize>,
    np: usize,
    (here_only, local): (bool, &LocalHost),
    oversubscribed: bool,
) -> Result<usize, String> {
    if oversubscribed {
        return Err(format!("--bind core: {np} ranks oversubscribe the slots: ranks left unbound"));
    }
    if !here_only {
        return threads.ok_or_else(|| {
            "--bind core: ranks placed by a hostfile or an allocation need --threads T (the cores each is bound to): ranks left unbound".into()
        });
    }
    let Some(threads) = threads else {
        return Ok(local.slots / np);
    };
    let per_rank = threads.div_ceil(local.threads_per_core);
    if np * per_rank > local.slots {
        return Err(format!(
            "--bind core: {np} ranks of {threads} threads need {} cores, this host has {}: ranks left unbound",
            np * per_rank,
            local.slots
        ));
    }
    Ok(per_rank)
}

/// This job's identity, the same for every attempt (micn's `MICN_LAUNCH_ID`): rank 0 records it in
/// the run directory it claims, so that a restart, which runs the very same command, knows the
/// run there is this job's and resumes it from its newest checkpoint, or starts it again as first
/// asked (`--overwrite`, `--resume PATH`) when the earlier attempt wrote none or never claimed it.
fn launch_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("micn-launch-{}-{}", std::process::id(), now.as_nanos())
    })
}

/// `cmd` without its `-x MICN_LAUNCH_ID=…` pair.
fn without_launch_id(cmd: &[String]) -> Vec<&String> {
    let id = |a: &String| a.starts_with(&format!("{LAUNCH_ID_ENV}="));
    let mut shown = Vec::with_capacity(cmd.len());
    let mut args = cmd.iter().peekable();
    while let Some(arg) = args.next() {
        if arg == "-x" && args.peek().is_some_and(|next| id(next)) {
            args.next();
            continue;
        }
        shown.push(arg);
    }
    shown
}

/// What the output streams have seen, for the watch over the job.
#[derive(Debug, Default)]
struct Seen {
    /// When the last line arrived (or the attempt started).
    last_output: Option<Instant>,
    /// When a rank first reported an error.
    rank_error: Option<Instant>,
    /// Whether mpirun reported an internal error of its own (see [`is_mpirun_error_line`]).
    mpirun_error: bool,
    /// Whether mpirun refused its own command line (an unknown option from `--mpirun-arg`).
    mpirun_usage: bool,
    /// Whether mpirun said it met a limit of this host (open files, processes): it may then wait
    /// for good, or crash.
    host_limit: bool,
    /// The ranks that said [`STARTED_LINE`], and a wake-up for each one that does.
    started: std::collections::BTreeSet<usize>,
    rank_started: Arc<tokio::sync::Notify>,
}

/// mpirun's words for a command line, a hostfile or a binary it refuses (`mpirun: Error: unknown
/// option "--x"`, then the first line here), which no restart can change.
fn is_mpirun_usage_error(line: &output::Line) -> bool {
    const REFUSALS: [&str; 8] = [
        "Type 'mpirun --help' for usage",
        "Open RTE detected a parse error in the hostfile",
        "Open RTE detected a bad parameter in the hostfile",
        "A hostfile was provided that contains multiple definitions",
        "presence of an illegal character in the following node name",
        "A request was made to bind to that would result in binding more",
        // More ranks than the slots of a batch system's allocation (its own, or Grid Engine's).
        "There are not enough slots available in the",
        // A micn binary missing (or not executable) on a host: it is not there at a restart either.
        "mpirun was unable to launch the specified application as it could not access",
    ];
    matches!(line, output::Line::Mpirun(text) if REFUSALS.iter().any(|r| text.trim_start().starts_with(r)))
}

/// Whether mpirun reports an internal error of its own (`ORTE_ERROR_LOG`; PRRTE's
/// `PRTE_ERROR_LOG`), after which it may wait for good (out of pipes under a low `ulimit -n`,
/// say): a job silent for the exit grace after one is ended.
fn is_mpirun_error_line(line: &output::Line) -> bool {
    matches!(line, output::Line::Mpirun(text) if text.contains("ORTE_ERROR_LOG") || text.contains("PRTE_ERROR_LOG"))
}

/// Whether mpirun says it met a limit of this host (`ORTE_ERROR_LOG: The system limit on number
/// of pipes ...`, its help text's `system limit exceeded`).
fn is_host_limit(line: &output::Line) -> bool {
    matches!(line, output::Line::Mpirun(text) if text.contains("system limit"))
}

/// Whether a rank's line reports an error that ends it: micn's one-line errors (`error: ...`),
/// its log lines at level ERROR (`<time> ERROR ...`, its watchdog's), or either as JSON.
fn is_error_line(line: &output::Line) -> bool {
    match line {
        output::Line::Rank { rank, text } => {
            // micn's text log lines carry their rank already.
            let label = format!("[rank {rank}] ");
            let text = text.strip_prefix(&label).unwrap_or(text);
            text.starts_with("error:")
                || text.split_whitespace().nth(1) == Some("ERROR")
                || (text.starts_with('{') && text.contains(r#""level":"ERROR""#))
        }
        output::Line::Mpirun(_) => false,
    }
}

/// Print what mpirun writes on one of its streams, each rank's line whole and under its rank.
async fn stream(reader: impl tokio::io::AsyncRead + Unpin, to: Stream, printer: Printer, seen: Arc<Mutex<Seen>>) {
    let mut reader = BufReader::new(reader);
    let mut lines = Reassembler::default();
    let mut buf = Vec::new();
    // Bytes, not `lines()`: a rank's invalid UTF-8 must not stop the draining (mpirun, and then
    // the ranks, would block on a full pipe).
    while let Ok(n) = reader.read_until(b'\n', &mut buf).await {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let done = lines.push(text);
        {
            let mut seen = seen.lock().expect("output state lock");
            seen.last_output = Some(Instant::now());
            if seen.rank_error.is_none() && done.iter().any(is_error_line) {
                seen.rank_error = Some(Instant::now());
            }
            seen.mpirun_error |= done.iter().any(is_mpirun_error_line);
            seen.mpirun_usage |= done.iter().any(is_mpirun_usage_error);
            seen.host_limit |= done.iter().any(is_host_limit);
        }
        for line in done {
            match line {
                output::Line::Rank { rank, text } if text.trim_end() == STARTED_LINE => {
                    let mut seen = seen.lock().expect("output state lock");
                    seen.started.insert(rank);
                    seen.rank_started.notify_one();
                }
                line => printer.line(to, &line),
            }
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
    /// A rank (or mpirun) reported an error and mpirun did not end the job within the grace:
    /// killed by us.
    Killed,
    /// Stopped with a checkpoint because the hosts it lost answer again: resumes on all of them.
    Regrow,
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
/// A stop asked for before every rank takes stop signals, sent once they all do.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The signal that asked for it (the last, for a stop asked again).
    signal: i32,
    /// When the first was held.
    at: Instant,
    request: Request,
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
            printer.say(
                "WARN",
                &format!(
                    "{why}: stopping the job: every rank finishes its step, checkpoints and exits{}",
                    firmer(signal)
                ),
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

/// What the same stop signal again would do, said beside a graceful stop (a hang-up never asks
/// more firmly: a closing shell may send it more than once).
fn firmer(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => " (Ctrl-C again stops it at once, without a checkpoint)",
        libc::SIGTERM => " (a second SIGTERM stops it at once, without a checkpoint)",
        _ => "",
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

/// Kill everything left of a job on this machine: mpirun leads a session of its own, which holds
/// its local ranks and the remote shells it started (each in a process group of its own, so the
/// session, not mpirun's group, is what holds them all) and what those started here.
fn kill_job_group(pid: i32) {
    for member in session_members(pid) {
        // SAFETY: kill only sends a signal, to a process of the session our own child leads.
        unsafe {
            libc::kill(member, libc::SIGKILL);
        }
    }
}

/// The processes of session `sid` (`/proc/PID/stat`'s sixth field).
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The command name, in parentheses, may hold spaces: the fields follow its last `)`.
            let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            fields.split_whitespace().nth(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid)
        })
        .collect()
}

/// The hosts a job runs without, to probe while it runs.
struct Regrow {
    prober: hosts::Prober,
    lost: Vec<hosts::Host>,
    interval: Duration,
}

/// One attempt: mpirun started, its output streamed, stop signals passed on, and the job
/// watched (silence past the stall timeout, an error that mpirun does not act on, lost
/// hosts that answer again). Never waits on a dead job's pipes. Also says whether a rank
/// reported an error.
async fn run_once(
    cmd: &[String],
    ranks: usize,
    limits: &Limits,
    regrow: Option<&Regrow>,
    signals: &mut StopSignals,
    stops: &mut Stops,
    printer: Printer,
) -> anyhow::Result<(Outcome, Reported)> {
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: `detach` calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(detach);
    }
    let mut child = command.spawn().map_err(|e| {
        // Only a missing program is a missing installation (not too many open files, say).
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => ": is OpenMPI installed? (bash cluster/setup-node.sh)",
            _ => "",
        };
        anyhow::Error::new(e).context(format!("cannot start `{}`{hint}", cmd[0]))
    })?;
    let pid = child.id().context("mpirun exited at once")? as i32;
    // A stop asked for before every rank takes stop signals.
    let mut held: Option<Held> = None;
    let rank_started = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(Mutex::new(Seen {
        last_output: Some(Instant::now()),
        rank_started: Arc::clone(&rank_started),
        ..Seen::default()
    }));
    let out = tokio::spawn(stream(child.stdout.take().expect("piped"), Stream::Stdout, printer, Arc::clone(&seen)));
    let err = tokio::spawn(stream(child.stderr.take().expect("piped"), Stream::Stderr, printer, Arc::clone(&seen)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_probe = regrow.map(|r| Instant::now() + r.interval);
    let mut probe: Option<tokio::task::JoinHandle<Vec<bool>>> = None;
    let mut regrowing = false;
    let outcome = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                break match () {
                    _ if regrowing => Outcome::Regrow,
                    // A job that ended before a stop held for its start went out just ended.
                    _ if held.is_some() && status.success() => Outcome::Finished(status),
                    _ if stops.asked.is_some() => Outcome::Interrupted(status),
                    _ => Outcome::Finished(status),
                };
            }
            signal = signals.recv() => {
                match stops.on(signal) {
                    Some(Request::Graceful) if seen.lock().expect("output state lock").started.len() < ranks => {
                        printer.say("WARN", &format!(
                            "{}: the job stops with a checkpoint once its ranks have started{}",
                            signal_name(signal),
                            firmer(signal)
                        ));
                        held = Some(Held { signal, at: Instant::now(), request: Request::Graceful });
                    }
                    // Asked again while held: a SIGTERM would not reach the ranks yet either
                    // (mpirun passes it on once they run, late, where micn takes it for a
                    // graceful stop): it waits with the held one, and is sent in its place.
                    Some(Request::Terminate) if held.is_some() => {
                        printer.say("WARN", &format!(
                            "{}: the job stops at once, without a checkpoint, once its ranks have started",
                            signal_name(signal)
                        ));
                        held = held.map(|first| Held { signal, request: Request::Terminate, ..first });
                    }
                    Some(request) => {
                        held = None;
                        stop_job(pid, request, signal, printer);
                    }
                    None => {}
                }
            }
            () = rank_started.notified(), if held.is_some() => {
                let started = seen.lock().expect("output state lock").started.len();
                if let Some(Held { signal, request, .. }) = held.filter(|_| started >= ranks) {
                    held = None;
                    stop_job(pid, request, signal, printer);
                }
            }
            answered = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                probe = None;
                let lost = &regrow.expect("probes only with lost hosts").lost;
                if answered.is_ok_and(|a| a.iter().all(|&yes| yes)) && stops.asked.is_none() && !regrowing {
                    let names: Vec<&str> = lost.iter().map(|h| h.name.as_str()).collect();
                    printer.say("WARN", &format!(
                        "lost host(s) {} answer again: stopping the job with a checkpoint to resume on every host",
                        names.join(", ")
                    ));
                    regrowing = true;
                    // SAFETY: kill only sends a signal to our own child process.
                    unsafe { libc::kill(pid, libc::SIGUSR1) };
                }
            }
            _ = tick.tick() => {
                let (quiet, rank_error_for, mpirun_error, started) = {
                    let seen = seen.lock().expect("output state lock");
                    let quiet = seen.last_output.map(|t| t.elapsed()).unwrap_or_default();
                    (quiet, seen.rank_error.map(|t| t.elapsed()), seen.mpirun_error, seen.started.len())
                };
                // The ranks' lines may be lost in mpirun's output: waited for so long, no longer.
                if let Some(Held { signal, request, .. }) =
                    held.filter(|held| started >= ranks || held.at.elapsed() >= STARTED_WAIT)
                {
                    held = None;
                    stop_job(pid, request, signal, printer);
                }
                if let Some(limit) = limits.stall.filter(|&limit| quiet > limit && stops.asked.is_none()) {
                    printer.say("WARN", &format!(
                        "no output for more than {} s (--stall-timeout): the job is stalled; stopping it",
                        limit.as_secs()
                    ));
                    // SAFETY: kill only sends a signal to our own child process.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                        kill_job_group(pid);
                        let _ = child.wait().await;
                    }
                    break Outcome::Stalled;
                }
                let waited = rank_error_for.is_some_and(|t| t > limits.exit_grace)
                    || (mpirun_error && quiet > limits.exit_grace);
                if waited {
                    printer.say("ERROR", &format!(
                        "mpirun has not ended the job {:.0} s after the error above (--exit-grace): killing the whole \
                         job",
                        limits.exit_grace.as_secs_f64()
                    ));
                    kill_job_group(pid);
                    let _ = child.wait().await;
                    break Outcome::Killed;
                }
                if let (Some(r), Some(at)) = (regrow, next_probe) {
                    if Instant::now() >= at && probe.is_none() {
                        let (prober, lost) = (r.prober.clone(), r.lost.clone());
                        probe = Some(tokio::spawn(async move { prober.answering(&lost).await }));
                        next_probe = Some(Instant::now() + r.interval);
                    }
                }
            }
        }
    };
    // Whatever of the job is left (a daemon waiting on a lost host, a rank it never reached).
    kill_job_group(pid);
    // Processes of the job outside its process group (on a host that is gone) may keep the
    // pipes open for good: wait a few seconds for the last lines, no longer.
    let aborts = [out.abort_handle(), err.abort_handle()];
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tokio::join!(out, err);
    })
    .await;
    if drained.is_err() {
        aborts.iter().for_each(tokio::task::AbortHandle::abort);
        printer.say(
            "WARN",
            "the job's output stayed open after it ended (a process on a host that is gone): not waiting for it",
        );
    }
    let seen = seen.lock().expect("output state lock");
    let error = seen.rank_error.is_some() || seen.mpirun_error;
    Ok((outcome, Reported { error, host_limit: seen.host_limit, mpirun_usage: seen.mpirun_usage }))
}

/// What an attempt's output said about its end.
#[derive(Debug, Clone, Copy)]
struct Reported {
    /// A rank, or mpirun itself, reported an error.
    error: bool,
    /// mpirun reported a limit of this host it ran into.
    host_limit: bool,
    /// mpirun refused its command line.
    mpirun_usage: bool,
}

/// Where to look for why a job failed: the errors printed above or, when no rank (nor mpirun)
/// reported one, the ranks' own logs; after the limit to raise, where mpirun met one.
fn failure_pointer(reported: Reported) -> String {
    let pointer = match reported.error {
        true => "see the error messages above",
        false => "no rank reported an error; each rank's full log is in run.dir/logs/rank-N.log",
    };
    format!("{}{pointer}", host_limit_hint(reported))
}

/// What to do about a limit of this host that mpirun met, where it met one (a restart here meets
/// it again).
fn host_limit_hint(reported: Reported) -> &'static str {
    match reported.host_limit {
        true => "mpirun met a limit of this host: raise it for the job (`ulimit -n`, `ulimit -u`); ",
        false => "",
    }
}

/// The launcher's time limits on a job.
struct Limits {
    stall: Option<Duration>,
    exit_grace: Duration,
}

/// Where the next attempt runs after a failure: every host that answers a probe, unless they
/// hold fewer than `--min-np` ranks. Without `--min-np`, where the first attempt ran.
async fn placement_for_restart(
    args: &Args,
    original: &Placement,
    all_hosts: &[hosts::Host],
    prober: &hosts::Prober,
    printer: Printer,
) -> anyhow::Result<Option<(Placement, Vec<hosts::Host>)>> {
    let Some(min_np) = args.min_np else { return Ok(Some((original.clone(), Vec::new()))) };
    let answers = prober.answering(all_hosts).await;
    let (alive, lost): (Vec<_>, Vec<_>) = all_hosts.iter().cloned().zip(answers).partition(|(_, yes)| *yes);
    let alive: Vec<hosts::Host> = alive.into_iter().map(|(h, _)| h).collect();
    let lost: Vec<hosts::Host> = lost.into_iter().map(|(h, _)| h).collect();
    if lost.is_empty() {
        return Ok(Some((original.clone(), lost)));
    }
    let slots = hosts::total_slots(&alive);
    let np = elastic_np(original.np, slots);
    let names: Vec<&str> = lost.iter().map(|h| h.name.as_str()).collect();
    // Said when fewer ranks than slots: a divisor of --np, so that it divides the global batch.
    let divisor = match np < original.np.min(slots) {
        true => format!(" (the most that divide --np {}, as the global batch must split evenly)", original.np),
        false => String::new(),
    };
    if np < min_np {
        printer.say(
            "ERROR",
            &format!(
                "host(s) {} do not answer; the rest hold {slots} slot(s), room for {np} rank(s){divisor}, fewer than \
                 --min-np {min_np}",
                names.join(", ")
            ),
        );
        return Ok(None);
    }
    let path = shrunk_hostfile();
    hosts::write_hostfile(&path, &alive)?;
    printer.say(
        "WARN",
        &format!(
            "host(s) {} do not answer: resuming on {np} rank(s){divisor} over the remaining hosts ({})",
            names.join(", "),
            path.display()
        ),
    );
    Ok(Some((Placement { np, hostfile: Some(path) }, lost)))
}

/// The number of ranks a shrunk job resumes on: the most, within `slots`, that divide the first
/// attempt's `np`. The global batch, split evenly over `np` ranks, then splits evenly over them
/// too (3 of 4 ranks would refuse a batch of 64 at every attempt).
fn elastic_np(np: usize, slots: usize) -> usize {
    (1..=np.min(slots)).rev().find(|n| np % n == 0).unwrap_or(0)
}

/// The hostfile of the hosts that answered, for an attempt on fewer hosts (removed at exit).
fn shrunk_hostfile() -> PathBuf {
    std::env::temp_dir().join(format!("micn-launch-{}.hosts", std::process::id()))
}

async fn launch(args: Args) -> anyhow::Result<i32> {
    let original = Placement { np: args.np, hostfile: args.hostfile.clone() };
    let all_hosts = match (&args.min_np, &args.hostfile) {
        (None, _) => Vec::new(),
        (Some(_), None) => bail!("--min-np needs --hostfile (the hosts to probe and to leave out)"),
        (&Some(k), Some(path)) => {
            let hosts = hosts::read_hostfile(path)?;
            if k == 0 || k > args.np {
                bail!("--min-np must be between 1 and --np ({}), not {k}", args.np);
            }
            hosts
        }
    };
    if args.min_np.is_some() && args.max_restarts == 0 {
        bail!("--min-np acts at a restart: give --max-restarts N too");
    }
    if args.stall_timeout == Some(0) {
        bail!("--stall-timeout must be at least 1 second (leave it out for no stall detection)");
    }
    let prober =
        hosts::Prober::new(&mpirun_tokens(&args.mpirun_args).0, Duration::from_secs(args.probe_timeout.max(1)));
    let mut placement = original.clone();
    let MpirunCommand { args: mut cmd, notes } = build_command(&args, &placement)?;
    let printer = Printer { json: log_format_json(&cmd) };
    for note in &notes {
        printer.say("INFO", note);
    }
    if args.dry_run {
        // Without this launch's id: a command run by hand is a job of its own each time.
        let shown = without_launch_id(&cmd);
        output::write_line(Stream::Stdout, &shown.iter().map(|a| shell_quoted(a)).collect::<Vec<_>>().join(" "));
        return Ok(0);
    }
    // Without a hostfile every rank runs on this machine: a missing binary is known now, not
    // from mpirun's "unable to launch" (whose status a restart would retry).
    let micn = micn_binary(&args)?;
    if args.hostfile.is_none() && !micn.is_file() {
        bail!("{}: no micn binary there (give its path with --micn)", micn.display());
    }
    let mut signals = StopSignals::catch()?;
    let mut stops = Stops::default();
    let started = Instant::now();
    let limits =
        Limits { stall: args.stall_timeout.map(Duration::from_secs), exit_grace: Duration::from_secs(args.exit_grace) };
    let mut lost: Vec<hosts::Host> = Vec::new();
    let mut attempt = 0u32;
    loop {
        let regrow = (!lost.is_empty() && args.regrow_interval > 0).then(|| Regrow {
            prober: prober.clone(),
            lost: lost.clone(),
            interval: Duration::from_secs(args.regrow_interval),
        });
        let (outcome, reported) =
            run_once(&cmd, placement.np, &limits, regrow.as_ref(), &mut signals, &mut stops, printer).await?;
        let error = reported.error;
        let secs = started.elapsed().as_secs_f64();
        let (why, code) = match outcome {
            Outcome::Finished(status) if !status.success() && reported.mpirun_usage => {
                printer.say(
                    "ERROR",
                    &format!(
                        "mpirun refused its command line, hostfile or micn binary ({status}, its message \
                         above; see --mpirun-arg, --hostfile, --micn and --dry-run); not restarting"
                    ),
                );
                return Ok(EXIT_INPUT_ERROR);
            }
            Outcome::Finished(status) if status.success() => {
                printer.say("INFO", &format!("{} rank(s) finished in {secs:.1} s", placement.np));
                return Ok(0);
            }
            Outcome::Interrupted(status) => {
                // A rank that had not yet set up its stop handling (the first moments of its start)
                // ends at the SIGUSR1 itself.
                let usr1 = status.code() == Some(128 + libc::SIGUSR1) || status.signal() == Some(libc::SIGUSR1);
                let at_once = stops.asked.is_some_and(|asked| asked > Request::Graceful);
                let (level, why) = match (usr1, status.success()) {
                    (true, _) => ("INFO", ", while its ranks were still starting: nothing was trained or checkpointed"),
                    (false, true) => ("INFO", ""),
                    // The launcher's own doing: the stop asked again, at once.
                    (false, false) if at_once => (
                        "WARN",
                        ": stopped at once, as the stop asked again says: the stop's checkpoint may not have been \
                         written; --resume auto takes the newest checkpoint there is",
                    ),
                    // mpirun itself signalled (Slurm's plain `scancel` signals every process of
                    // the job) kills the ranks about a second later, stopped or not.
                    (false, false) => (
                        "WARN",
                        ": it did not end cleanly (was mpirun signalled too, as a plain `scancel` does?), so a \
                         rank may have ended before the stop's checkpoint; --resume auto takes the newest checkpoint \
                         there is",
                    ),
                };
                printer.say(level, &format!("job stopped on request after {secs:.1} s ({status}){why}"));
                return Ok(status.code().unwrap_or(1));
            }
            Outcome::Finished(status) if status.code() == Some(EXIT_INPUT_ERROR) => {
                printer.say(
                    "ERROR",
                    &format!(
                        "job failed after {secs:.1} s ({status}): an error that running again cannot fix (a \
                         configuration, an argument or the input); not restarting; {}",
                        failure_pointer(reported)
                    ),
                );
                return Ok(EXIT_INPUT_ERROR);
            }
            Outcome::Regrow => {
                printer.say("INFO", &format!("resuming on all {} rank(s) of the hostfile", original.np));
                (placement, lost) = (original.clone(), Vec::new());
                cmd = build_command(&args, &placement)?.args;
                continue;
            }
            // mpirun killed by a signal with no error reported: from outside the job.
            Outcome::Finished(status) if status.signal().is_some() && !error => {
                (format!("was killed ({status}) from outside: by the kernel's out-of-memory killer, say"), 1)
            }
            Outcome::Finished(status) => (format!("failed ({status})"), status.code().unwrap_or(1)),
            Outcome::Stalled => ("stalled".to_string(), 1),
            Outcome::Killed => ("was killed (mpirun did not end it after the error)".to_string(), 1),
        };
        loop {
            if attempt >= args.max_restarts {
                // Back-offs and probes since the job ended count too.
                let secs = started.elapsed().as_secs_f64();
                printer.say("ERROR", &format!("job {why} after {secs:.1} s; {}", failure_pointer(reported)));
                return Ok(code);
            }
            attempt += 1;
            let wait = args.restart_backoff.saturating_mul(1 << (attempt - 1).min(16));
            printer.say(
                "WARN",
                &format!(
                    "job {why}; {}restarting in {wait} s: from the job's newest checkpoint if it wrote one, else as \
                     it first started (restart {attempt} of {})",
                    host_limit_hint(reported),
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
            if let Some((next, still_lost)) =
                placement_for_restart(&args, &original, &all_hosts, &prober, printer).await?
            {
                (placement, lost) = (next, still_lost);
                break;
            }
        }
        cmd = build_command(&args, &placement)?.args;
    }
}

/// `arg` as a shell would need it written (for `--dry-run`).
fn shell_quoted(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The soft limit on open files [`more_open_files`] raises a lower one to, where the hard limit
/// allows (not to a hard limit of a million or more, which makes programs that close every
/// descriptor up to the limit slow).
const OPEN_FILES: libc::rlim_t = 65_536;

/// Raises this process's soft limit on open files towards [`OPEN_FILES`], within its hard limit,
/// for mpirun and the ranks it starts on this host (mpirun takes pipes and sockets for every
/// rank; a shell's soft `ulimit -n` of 1024, or less, is a default, not a need). A hard limit too
/// low for the job still makes mpirun fail; the job's watch then ends it (see
/// [`is_mpirun_error_line`]). Other hosts' daemons keep their own limits.
fn more_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a `rlimit` we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = OPEN_FILES.min(limit.rlim_max);
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// The launcher's own failures (a bad argument or hostfile, mpirun or micn not found) exit like
/// micn's input errors: running the same command again cannot help, so nothing retries them.
fn main() -> ExitCode {
    output::stdout_is_terminal();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Under `--log-format json` (the launcher's or micn's) every line on standard error is
            // a JSON object, this one too.
            let argv: Vec<String> = std::env::args().collect();
            match log_format_json(&argv) {
                true => Printer { json: true }.say("ERROR", &format!("error: {}", usage::clap_sentence(&e))),
                false => drop(e.print()),
            }
            return ExitCode::from(EXIT_INPUT_ERROR as u8);
        }
    };
    let printer = Printer { json: args.log_format == LogFormat::Json || log_format_json(&args.micn_args) };
    more_open_files();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let ended = runtime.block_on(launch(args));
    let _ = std::fs::remove_file(shrunk_hostfile());
    match ended {
        // A job that did its work, but whose output was lost on the way (a full disk), failed.
        Ok(0) => ExitCode::from(output::stdout_status(printer) as u8),
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            printer.say("ERROR", &format!("error: {e:#}"));
            ExitCode::from(EXIT_INPUT_ERROR as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micn_says_the_very_line_the_launcher_waits_for() {
        let micn = include_str!("../../src/main.rs");
        assert!(micn.contains(&format!("const STARTED_LINE: &str = {STARTED_LINE:?};")), "micn's STARTED_LINE differs");
    }

    #[test]
    fn a_shrunk_job_runs_on_the_most_ranks_that_divide_the_first_attempts() {
        // (--np, slots that answer) → ranks: every one divides --np, so the global batch too.
        for (np, slots, ranks) in
            [(4, 3, 2), (4, 4, 4), (4, 9, 4), (6, 5, 3), (6, 4, 3), (8, 7, 4), (3, 2, 1), (5, 4, 1)]
        {
            assert_eq!(elastic_np(np, slots), ranks, "--np {np} on {slots} slots");
        }
        assert_eq!(elastic_np(4, 0), 0);
    }

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["micn-launch", "--micn", "/bin/micn"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    /// The command for `extra`, placed as the arguments say.
    fn command(extra: &[&str]) -> anyhow::Result<Vec<String>> {
        let a = args(extra);
        let placement = Placement { np: a.np, hostfile: a.hostfile.clone() };
        build_command(&a, &placement).map(|c| c.args)
    }

    #[test]
    fn train_command_carries_config_and_overrides() {
        let cmd = command(&["--np", "2", "--config", "c.toml", "--set", "micn.phi=0.5"]).unwrap();
        let tail = &cmd[cmd.iter().position(|a| a == "/bin/micn").unwrap()..];
        assert_eq!(tail, ["/bin/micn", "train", "--config", "c.toml", "--set", "micn.phi=0.5"]);
        assert_eq!(&cmd[..3], ["mpirun", "-np", "2"]);
        // What micn's refusal of an occupied run.dir advises, given to the launcher.
        for (flag, passed) in
            [(&["--resume", "auto"][..], &["--resume", "auto"][..]), (&["--overwrite"], &["--overwrite"])]
        {
            let cmd = command(&[&["--config", "c.toml"][..], flag].concat()).unwrap();
            let expected: Vec<String> =
                ["train", "--config", "c.toml"].iter().chain(passed).map(|a| a.to_string()).collect();
            assert!(cmd.ends_with(&expected), "{cmd:?}");
            let e = command(&[flag, &["--", "eval"]].concat()).unwrap_err();
            assert!(e.to_string().contains("give them there instead"), "{e}");
        }
        assert!(Args::try_parse_from(["micn-launch", "--config", "c", "--resume", "auto", "--overwrite"]).is_err());
        let e = command(&["--config", "c.toml", "--resume", ""]).unwrap_err();
        assert!(e.to_string().starts_with("--resume is empty"), "{e}");
    }

    #[test]
    fn more_ranks_than_cores_oversubscribe_and_get_one_thread() {
        let cmd = command(&["--np", "64", "--", "doctor"]).unwrap();
        assert!(cmd.contains(&"--oversubscribe".to_string()), "{cmd:?}");
        assert!(cmd.contains(&"OMP_NUM_THREADS=1".to_string()), "{cmd:?}");
        assert!(cmd.windows(2).any(|w| w == ["mpi_yield_when_idle", "1"]), "{cmd:?}");
        assert_eq!(cmd.last().unwrap(), "doctor");
    }

    #[test]
    fn the_slots_of_this_host_are_its_physical_cores_as_mpirun_counts_them() {
        let root = std::env::temp_dir().join(format!("micn-launch-cpus-{}", std::process::id()));
        // Two packages; package 0 has one core of two hardware threads (cpus 0 and 1).
        for (cpu, package, core) in [(0, 0, 0), (1, 0, 0), (2, 1, 0), (3, 1, 1)] {
            let topology = root.join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&topology).unwrap();
            std::fs::write(topology.join("physical_package_id"), format!("{package}\n")).unwrap();
            std::fs::write(topology.join("core_id"), format!("{core}\n")).unwrap();
        }
        assert_eq!(physical_cores(&root, &[0, 1]), Some(1), "two threads of one core: one slot");
        // Core 0 of each package is another core.
        assert_eq!(physical_cores(&root, &[0, 1, 2, 3]), Some(3));
        assert_eq!(physical_cores(&root, &[0, 5]), None, "cpu 5 unreadable");
        assert_eq!(physical_cores(&root, &[]), None);
        std::fs::remove_dir_all(&root).unwrap();
        // Here: at least one slot, never more than the CPUs this process may use.
        let most = allowed_cpus().len().max(cores());
        let slots = LocalHost::this().slots;
        assert!((1..=most).contains(&slots), "{slots} slots, {most} cpus");
        // More ranks than slots are oversubscribed; as many are not.
        let oversubscribed = |np: usize| {
            let a = args(&["--np", &np.to_string(), "--", "doctor"]);
            // This host's slots, even where the tests run inside a batch system's allocation.
            let here = LocalHost { allocation: None, ..LocalHost::this() };
            build_command_on(&a, &Placement { np, hostfile: None }, &here).unwrap().args
        };
        assert!(oversubscribed(slots + 1).contains(&"--oversubscribe".to_string()));
        assert!(!oversubscribed(slots).contains(&"--oversubscribe".to_string()));
    }

    #[test]
    fn bind_core_binds_each_rank_to_the_cores_whose_hardware_threads_it_runs_on() {
        // 16 cores of two hardware threads each.
        let smt = &LocalHost { cpus: 32, threads_per_core: 2, slots: 16, allocation: None };
        let on = |extra: &[&str], host| {
            let a = args(&[&["--bind", "core"][..], extra, &["--", "doctor"]].concat());
            build_command_on(&a, &Placement { np: a.np, hostfile: None }, host).unwrap()
        };
        let bound = |c: &MpirunCommand, pe: usize, threads: usize| {
            assert!(
                c.args.windows(4).any(|w| w == ["--map-by", &format!("slot:PE={pe}"), "--bind-to", "core"]),
                "{:?}",
                c.args
            );
            assert!(c.args.contains(&format!("OMP_NUM_THREADS={threads}")), "{:?}", c.args);
            assert!(c.notes.is_empty(), "{:?}", c.notes);
        };
        let unbound = |c: &MpirunCommand, why: &str| {
            assert!(c.args.windows(2).any(|w| w == ["--bind-to", "none"]), "{:?}", c.args);
            assert!(c.notes.iter().any(|n| n.contains(why)), "{:?}", c.notes);
        };
        // Each rank's share of the cores, its threads on their hardware threads (it was left
        // unbound: 4 ranks of 8 threads taken for 32 cores).
        bound(&on(&["--np", "4"], smt), 4, 8);
        bound(&on(&["--np", "3"], smt), 5, 10);
        bound(&on(&["--np", "16"], smt), 1, 2);
        // Threads given: the cores that hold them.
        bound(&on(&["--np", "2", "--threads", "8"], smt), 4, 8);
        bound(&on(&["--np", "2", "--threads", "5"], smt), 3, 5);
        unbound(&on(&["--np", "4", "--threads", "10"], smt), "4 ranks of 10 threads need 20 cores, this host has 16");
        unbound(&on(&["--np", "17"], smt), "17 ranks oversubscribe");
        // Without SMT a thread needs a core.
        let plain = &LocalHost { cpus: 8, threads_per_core: 1, slots: 8, allocation: None };
        bound(&on(&["--np", "2"], plain), 4, 4);
        bound(&on(&["--np", "2", "--threads", "4"], plain), 4, 4);
        unbound(&on(&["--np", "2", "--threads", "5"], plain), "need 10 cores, this host has 8");
        // A `--set train.threads=N` of micn's is the rank's threads, as --threads is.
        let a = args(&["--np", "4", "--bind", "core", "--config", "c.toml", "--set", "train.threads=4"]);
        let c = build_command_on(&a, &Placement { np: 4, hostfile: None }, smt).unwrap();
        bound(&c, 2, 4);
        // `train.threads = 0` is micn's "this host's share": as if not given.
        let a = args(&["--np", "4", "--bind", "core", "--config", "c.toml", "--set", "train.threads=0"]);
        bound(&build_command_on(&a, &Placement { np: 4, hostfile: None }, smt).unwrap(), 4, 8);
        // Not asked for: nothing said.
        let a = args(&["--np", "2", "--threads", "5", "--", "doctor"]);
        let c = build_command_on(&a, &Placement { np: 2, hostfile: None }, plain).unwrap();
        assert!(c.args.windows(2).any(|w| w == ["--bind-to", "none"]) && c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn in_a_batch_allocation_mpirun_places_the_ranks_and_each_sizes_its_threads_on_its_node() {
        let env = |vars: &'static [(&str, &str)]| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        let slurm = allocation(env(&[("SLURM_JOBID", "42"), ("SLURM_NODELIST", "node[1-2]")]));
        assert_eq!(slurm.as_deref(), Some("Slurm job 42"));
        let grid = allocation(env(&[("PE_HOSTFILE", "/sge/pe"), ("JOB_ID", "7"), ("SGE_ROOT", "/sge"), ("ARC", "lx")]));
        assert_eq!(grid.as_deref(), Some("Grid Engine job 7"));
        assert_eq!(allocation(env(&[("PE_HOSTFILE", "/sge/pe"), ("JOB_ID", "7"), ("SGE_ROOT", "/sge")])), None);
        // A job id alone (a shell left from an allocation, a step's own variables) is not one.
        assert_eq!(allocation(env(&[("SLURM_JOBID", "42")])), None);
        assert_eq!(allocation(env(&[("JOB_ID", "7")])), None);
        // 8 ranks in an allocation, from a node of 4 cores: mpirun's slots, not this node's.
        let node = &LocalHost { cpus: 4, threads_per_core: 1, slots: 4, allocation: slurm };
        let on = |extra: &[&str]| {
            let a = args(&[&["--np", "8"][..], extra, &["--", "doctor"]].concat());
            build_command_on(&a, &Placement { np: 8, hostfile: None }, node).unwrap()
        };
        let c = on(&[]);
        assert!(!c.args.contains(&"--oversubscribe".to_string()), "{:?}", c.args);
        assert!(!c.args.iter().any(|a| a.starts_with("OMP_NUM_THREADS") || a == "mpi_yield_when_idle"), "{:?}", c.args);
        assert!(c.notes.iter().any(|n| n.starts_with("in Slurm job 42: mpirun places the ranks")), "{:?}", c.notes);
        let c = on(&["--bind", "core", "--threads", "2"]);
        assert!(c.args.windows(4).any(|w| w == ["--map-by", "slot:PE=2", "--bind-to", "core"]), "{:?}", c.args);
        assert!(c.args.contains(&"OMP_NUM_THREADS=2".to_string()), "{:?}", c.args);
        // Without --threads a rank bound to one core would size its threads on it: not bound.
        let c = on(&["--bind", "core"]);
        assert!(c.args.windows(2).any(|w| w == ["--bind-to", "none"]), "{:?}", c.args);
        assert!(
            c.notes.iter().any(|n| n.contains("ranks placed by a hostfile or an allocation need --threads T")),
            "{:?}",
            c.notes
        );
        // More ranks than the allocation's slots: mpirun's refusal, which no restart changes.
        let refusal = "There are not enough slots available in the system to satisfy the 3";
        assert!(is_mpirun_usage_error(&output::Line::Mpirun(refusal.into())));
        // A hostfile places them itself: nothing said of the allocation.
        let dir = std::env::temp_dir().join(format!("micn-launch-alloc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hostfile = dir.join("hosts");
        std::fs::write(&hostfile, "node1 slots=2\n").unwrap();
        let a = args(&["--np", "8", "--hostfile", hostfile.to_str().unwrap(), "--", "doctor"]);
        let c = build_command_on(&a, &Placement { np: 8, hostfile: a.hostfile.clone() }, node).unwrap();
        assert!(c.args.contains(&"--oversubscribe".to_string()) && c.notes.is_empty(), "{:?}", c);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_hostfile_is_named() {
        let e = command(&["--np", "2", "--hostfile", "/no/such/hosts", "--", "doctor"]).unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/hosts"), "{e:#}");
    }

    #[test]
    fn with_a_hostfile_each_rank_sizes_its_threads_on_its_own_host_unless_told() {
        let dir = std::env::temp_dir().join(format!("micn-launch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "node1 slots=4\nnode2 slots=4\n").unwrap();
        let hostfile = path.to_str().unwrap();
        let cmd = command(&["--np", "8", "--hostfile", hostfile, "--", "doctor"]).unwrap();
        assert!(!cmd.iter().any(|a| a.starts_with("OMP_NUM_THREADS")), "{cmd:?}");
        assert!(!cmd.contains(&"--oversubscribe".to_string()), "8 ranks in 8 slots: {cmd:?}");
        let cmd = command(&["--np", "8", "--hostfile", hostfile, "--threads", "2", "--", "doctor"]).unwrap();
        assert!(cmd.windows(2).any(|w| w == ["-x", "OMP_NUM_THREADS=2"]), "{cmd:?}");
        // A configuration's own train.threads would win over OMP_NUM_THREADS: set it too.
        let cmd = command(&["--np", "8", "--hostfile", hostfile, "--threads", "2", "--config", "c.toml"]).unwrap();
        assert!(cmd.ends_with(&["--set".to_string(), "train.threads=2".to_string()]), "{cmd:?}");
        let cmd = command(&["--threads", "2", "--config", "c.toml", "--set", "train.threads=1"]).unwrap();
        assert!(cmd.ends_with(&["--set".to_string(), "train.threads=1".to_string()]), "the user's own: {cmd:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ranks_error_is_told_from_its_other_lines() {
        let rank = |text: &str| output::Line::Rank { rank: 1, text: text.into() };
        assert!(is_error_line(&rank("error: rank 1: data.dir: no such directory")));
        assert!(is_error_line(&rank("2026-12-05T00:10:21.650240Z ERROR watchdog: rank 1 (b) waited 7 s")));
        assert!(is_error_line(&rank("[rank 1] 2026-12-05T00:10:21.650240Z ERROR watchdog: rank 1 (b) waited 7 s")));
        assert!(is_error_line(&rank(r#"{"time":1.0,"level":"ERROR","target":"micn","message":"error: x"}"#)));
        assert!(!is_error_line(&rank("2026-12-05T00:10:21.650240Z  WARN checkpoint skipped: ERROR in name")));
        assert!(!is_error_line(&rank(r#"{"level":"INFO","message":"level ERROR"}"#)));
        assert!(!is_error_line(&output::Line::Mpirun("error: mpirun's own".into())));
    }

    #[test]
    fn an_mpirun_argument_with_spaces_is_split_and_said() {
        let cmd = command(&[
            "--np",
            "2",
            "--mpirun-arg=--mca btl tcp,self",
            "--mpirun-arg",
            "--report-bindings",
            "--",
            "doctor",
        ])
        .unwrap();
        assert!(cmd.windows(4).any(|w| w == ["--mca", "btl", "tcp,self", "--report-bindings"]), "{cmd:?}");
        let (tokens, notes) = mpirun_tokens(&["--mca btl tcp,self".to_string(), "-v".to_string()]);
        assert_eq!(tokens, ["--mca", "btl", "tcp,self", "-v"]);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("3 arguments"), "{notes:?}");
        assert_eq!(shell_quoted("OMP_NUM_THREADS=1"), "OMP_NUM_THREADS=1");
        assert_eq!(shell_quoted("run.dir=\"a b\""), "'run.dir=\"a b\"'");
        assert_eq!(shell_quoted("it's"), "'it'\\''s'");
    }

    #[test]
    fn quiet_ranks_and_json_logs_are_asked_of_micn() {
        let cmd = command(&["--np", "2", "--log-format", "json", "--config", "c.toml"]).unwrap();
        assert!(cmd.windows(2).any(|w| w == ["-x", "MICN_QUIET_RANKS=1"]), "{cmd:?}");
        let tail = &cmd[cmd.iter().position(|a| a == "/bin/micn").unwrap()..];
        assert_eq!(tail, ["/bin/micn", "--log-format", "json", "train", "--config", "c.toml"]);
        assert!(log_format_json(&cmd));
        let cmd = command(&["--np", "2", "--all-ranks", "--", "--log-format=json", "doctor"]).unwrap();
        assert!(!cmd.iter().any(|a| a.starts_with("MICN_QUIET_RANKS")), "{cmd:?}");
        assert!(log_format_json(&cmd));
        assert!(!log_format_json(&command(&["--", "doctor", "--json"]).unwrap()));
    }

    #[test]
    fn every_attempt_runs_the_same_command_carrying_the_same_launch_id() {
        let first = command(&["--np", "2", "--", "train", "--config", "c.toml", "--overwrite"]).unwrap();
        let id = format!("MICN_LAUNCH_ID={}", launch_id());
        assert!(first.windows(2).any(|w| w[0] == "-x" && w[1] == id), "{first:?}");
        assert!(first.ends_with(&["train", "--config", "c.toml", "--overwrite"].map(String::from)), "{first:?}");
        assert_eq!(command(&["--np", "2", "--", "train", "--config", "c.toml", "--overwrite"]).unwrap(), first);
        // `--dry-run` shows the command without it: run by hand, each run is a job of its own.
        let shown = without_launch_id(&first);
        assert_eq!(shown.len(), first.len() - 2);
        assert!(!shown.iter().any(|a| a.contains("MICN_LAUNCH_ID")), "{shown:?}");
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
    fn a_sessions_members_are_found_in_proc() {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep");
        child.arg("30");
        // SAFETY: setsid in the child before exec.
        unsafe { child.pre_exec(|| (libc::setsid() != -1).then_some(()).ok_or_else(std::io::Error::last_os_error)) };
        let mut child = child.spawn().unwrap();
        let sid = child.id() as i32;
        assert_eq!(session_members(sid), [sid]);
        kill_job_group(sid);
        assert!(!child.wait().unwrap().success());
        assert_eq!(session_members(sid), Vec::<i32>::new());
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
