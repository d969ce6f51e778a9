//! `micn sweep`: every point of a grid of `--set` values over one or more base configurations,
//! each repeated with `train.seed` advanced by the repeat index, run one after another as child
//! processes of the same binary (`micn train --resume auto`, or `micn-launch` for several ranks).
//!
//! Run directories are `OUT/<point>/repeat-<r>`, where `<point>` names the base configuration
//! (when there are several) and the grid values (`micn.phi=0.3`). A grid value may be an inline
//! table that sets several keys at once (`micn = [{enabled = false}, {enabled = true, lambda =
//! 0.0}]`: points `micn.enabled=false` and `micn.enabled=true,micn.lambda=0.0`), for variants
//! that are not a product of independent keys. Running the same command again
//! skips finished runs (a `summary.json` not stopped by a signal) and resumes unfinished ones from
//! their newest checkpoint; a run directory whose configuration differs from the planned one is
//! refused, never overwritten. The report (`micn report`) of the sweep is written to `OUT/report`
//! at the end.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{Config, ConfigError, Override};
use crate::io_error::{PathIo, WithPath};
use crate::run_dir::{RunDir, RunDirError};
use crate::train::Interrupter;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("--grid {arg}: {message}")]
    Grid { arg: String, message: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{what}: {message}")]
    Plan { what: String, message: String },
    #[error("{dir} was trained with another configuration (differs in {keys}); remove it or sweep into another --out")]
    Mismatch { dir: PathBuf, keys: String },
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("could not start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    /// `input`: the run failed on its input (exit status 3), so running again fails alike.
    #[error("{dir}: the run failed ({status}); the last lines of {log}:\n{tail}")]
    RunFailed { dir: PathBuf, status: String, log: PathBuf, tail: String, input: bool },
    /// `progress`: whether the run has a checkpoint to continue from.
    #[error("stopped by a signal during {dir} ({progress}); run the same command again to continue")]
    Interrupted { dir: PathBuf, progress: &'static str },
    #[error(
        "writing to standard output: {0}; the sweep stopped (a run in progress first checkpoints); run the same \
         command again to continue"
    )]
    Stdout(std::io::Error),
    #[error("stopped by a signal before the report, every run trained; `micn report` writes it")]
    StoppedBeforeReport,
    #[error("stopped by a signal before {dir} started; run the same command again to continue")]
    StoppedBefore { dir: PathBuf },
    #[error("{0}")]
    Report(#[from] super::report::ReportError),
}

/// What to sweep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepSpec {
    /// Base configuration files (each is a point of its own when there are several).
    pub configs: Vec<PathBuf>,
    /// Applied to every run, before the grid values.
    pub sets: Vec<Override>,
    /// Swept keys and their values, in order.
    pub grid: Vec<(String, Vec<toml::Value>)>,
    pub repeats: usize,
    /// Ranks per run (1: a child `micn train`; more: a `micn-launch` job).
    pub np: usize,
    pub out: PathBuf,
    /// Passed to `micn-launch` before its own arguments (`--hostfile F`, ...).
    pub launch_args: Vec<String>,
}

/// A sweep file: the same fields as the command line (`configs` relative to the file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    configs: Vec<PathBuf>,
    repeats: Option<usize>,
    np: Option<usize>,
    out: Option<PathBuf>,
    #[serde(default)]
    launch_args: Vec<String>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    grid: toml::Table,
}

/// A value as a `--set` argument reads it back (strings quoted).
fn set_arg(key: &str, value: &toml::Value) -> String {
    format!("{key}={value}")
}

/// Parse `KEY=[v1,v2,...]`: the list as TOML, or as bare words (`model.kind=[din,dien]`).
pub fn parse_grid(arg: &str) -> Result<(String, Vec<toml::Value>), SweepError> {
    let bad = |message: &str| SweepError::Grid { arg: arg.to_string(), message: message.to_string() };
    let parsed = Override::parse(arg).map_err(|_| bad("expected KEY=[v1,v2,...]"))?;
    let values = match parsed.value {
        toml::Value::Array(values) => values,
        toml::Value::String(text) if text.starts_with('[') && text.ends_with(']') => text[1..text.len() - 1]
            .split(',')
            .map(|word| match word.trim() {
                "" => None,
                word => Override::parse(&format!("v={word}")).ok().map(|o| o.value),
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a value is empty"))?,
        _ => return Err(bad("the values must be a list in brackets: KEY=[v1,v2,...]")),
    };
    check_grid_values(&parsed.key, &values).map_err(|m| bad(&m))?;
    Ok((parsed.key, values))
}

fn check_grid_values(key: &str, values: &[toml::Value]) -> Result<(), String> {
    if values.is_empty() {
        return Err(format!("{key} has no values"));
    }
    if let Some(empty) = values.iter().find(|v| v.as_table().is_some_and(|t| t.is_empty())) {
        return Err(format!("{key} has an empty table {empty}: it would set nothing"));
    }
    let names: Vec<String> = values.iter().map(|v| point_name(key, v)).collect();
    for (i, name) in names.iter().enumerate() {
        if let Some(j) = names[..i].iter().position(|earlier| earlier == name) {
            return Err(match values[j] == values[i] {
                true => format!("{key} lists {name} twice"),
                false => {
                    format!("{key}'s values {} and {} would share the directory name {name}", values[j], values[i])
                }
            });
        }
    }
    Ok(())
}

/// The most bytes of a grid point's directory name (file systems allow 255 in one name).
const MAX_POINT_NAME: usize = 200;

/// A grid point's directory name: its `key=value` pairs joined by commas or, when longer than
/// [`MAX_POINT_NAME`] bytes, their beginning and a hash of the whole (the run's `config.toml`
/// holds every value; reports group runs by it, not by the name).
fn point_dir_name(pairs: &[String]) -> String {
    let full = pairs.join(",");
    if full.len() <= MAX_POINT_NAME {
        return full;
    }
    let hash = format!("~{:016x}", xxhash_rust::xxh3::xxh3_64(full.as_bytes()));
    let mut cut = MAX_POINT_NAME - hash.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &full[..cut])
}

impl SweepSpec {
    /// Read a sweep file; its `configs` are relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, SweepError> {
        let fail = |message: String| SweepError::File { path: path.to_path_buf(), message };
        let text = crate::io_error::read_text_file(path).map_err(|e| fail(e.to_string()))?;
        let file: SweepFile = toml::from_str(&text).map_err(|e| fail(crate::config::toml_error_message(&e)))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for (key, value) in [("repeats", file.repeats), ("np", file.np)] {
            if value == Some(0) {
                return Err(fail(format!("{key} = 0: must be at least 1")));
            }
        }
        let sets = crate::config::flatten(&file.set)
            .into_iter()
            .map(|(key, value)| {
                let set = Override::parse(&set_arg(&key, &value))?;
                Ok(set.named(format!("{} [set]", path.display())))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
            .map_err(|e| fail(format!("[set]: {e}")))?;
        let mut grid = Vec::new();
        for (key, value) in crate::config::flatten(&file.grid) {
            let toml::Value::Array(values) = value else {
                return Err(fail(format!("grid key {key}: the values must be a list")));
            };
            check_grid_values(&key, &values).map_err(|m| fail(format!("[grid]: {m}")))?;
            grid.push((key, values));
        }
        Ok(Self {
            configs: file.configs.iter().map(|c| base.join(c)).collect(),
            sets,
            grid,
            repeats: file.repeats.unwrap_or(1),
            np: file.np.unwrap_or(1),
            out: file.out.unwrap_or_default(),
            launch_args: file.launch_args,
        })
    }

    /// Replace a grid key's values, or add the key.
    pub fn set_grid(&mut self, key: String, values: Vec<toml::Value>) {
        match self.grid.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = values,
            None => self.grid.push((key, values)),
        }
    }
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    pub dir: PathBuf,
    pub base: PathBuf,
    /// Everything after the base file: the spec's sets, the grid point, seed and run directory.
    pub overrides: Vec<Override>,
    /// The resolved configuration (validated).
    pub config: Config,
}

/// A grid value as it appears in a directory name: strings bare, paths by their last part.
fn point_value(value: &toml::Value) -> String {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.replace(['/', '\\'], "_")
}

/// The keys a grid value sets: its own key, or every key of an inline table under it.
fn point_sets(key: &str, value: &toml::Value) -> Vec<(String, toml::Value)> {
    match value {
        toml::Value::Table(table) => {
            crate::config::flatten(table).into_iter().map(|(k, v)| (format!("{key}.{k}"), v)).collect()
        }
        other => vec![(key.to_string(), other.clone())],
    }
}

/// A grid value's part of a point's name: `key=value` for each key it sets.
fn point_name(key: &str, value: &toml::Value) -> String {
    point_sets(key, value).iter().map(|(k, v)| format!("{k}={}", point_value(v))).collect::<Vec<_>>().join(",")
}

/// Most runs one sweep plans (each is a training run of its own).
pub const MAX_RUNS: usize = 100_000;

impl SweepError {
    /// Whether running the same command again would fail the same way: a bad sweep file, grid,
    /// configuration or plan, a run directory trained with another configuration, a missing or
    /// unreadable file. A run that failed, a signal or a passing I/O failure may not recur.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::File { .. } | Self::Grid { .. } | Self::Config(_) | Self::Plan { .. } | Self::Mismatch { .. } => true,
            Self::Io(e) => e.is_lasting(),
            Self::Report(e) => e.is_input_error(),
            Self::RunFailed { input, .. } => *input,
            Self::RunDir(e) => e.is_input_error(),
            Self::Spawn { .. } | Self::Interrupted { .. } | Self::Stdout(_) => false,
            Self::StoppedBefore { .. } | Self::StoppedBeforeReport => false,
        }
    }
}

/// Every run, repeat-major: all points of repeat 0 first, so an interrupted sweep already covers
/// the whole grid once. Every configuration is resolved and validated before anything runs.
pub fn plan(spec: &SweepSpec) -> Result<Vec<PlannedRun>, SweepError> {
    let plan_err = |what: &str, message: &str| SweepError::Plan { what: what.into(), message: message.into() };
    if spec.configs.is_empty() {
        return Err(plan_err("micn sweep", "needs a base configuration (--config FILE or a sweep file)"));
    }
    if spec.repeats == 0 {
        return Err(plan_err("repeats", "must be at least 1"));
    }
    if spec.np == 0 {
        return Err(plan_err("np", "must be at least 1"));
    }
    let runs = spec
        .grid
        .iter()
        .try_fold(spec.repeats.saturating_mul(spec.configs.len()), |n, (_, values)| n.checked_mul(values.len()));
    if runs.is_none_or(|n| n > MAX_RUNS) {
        return Err(plan_err(
            "micn sweep",
            &format!("the configurations × grid points × repeats make more than {MAX_RUNS} runs"),
        ));
    }
    if spec.out.as_os_str().is_empty() {
        return Err(plan_err("micn sweep", "needs an output directory (--out DIR or `out` in the sweep file)"));
    }
    if spec.out.exists() && !spec.out.is_dir() {
        return Err(plan_err(&spec.out.display().to_string(), "is not a directory (--out)"));
    }
    let report = spec.out.join("report");
    if report.exists() && !report.is_dir() {
        let message = "is not a directory, and the sweep writes its report there: move it first";
        return Err(plan_err(&report.display().to_string(), message));
    }
    if RunDir::new(&spec.out).holds_run() {
        let message = "holds a run (config.toml): give the sweep a directory of its own (--out)";
        return Err(plan_err(&spec.out.display().to_string(), message));
    }
    let own = |key: &str| match key {
        "train.seed" => Some("is set by the sweep itself (repeat r trains with train.seed + r)"),
        "run.dir" => Some("is set by the sweep itself (OUT/<point>/repeat-<r>)"),
        _ => None,
    };
    for (key, values) in &spec.grid {
        for (key, _) in values.iter().flat_map(|v| point_sets(key, v)) {
            if let Some(why) = own(&key) {
                return Err(plan_err(&key, why));
            }
        }
    }
    // Two grid entries that set one key (`micn.phi` and `micn={phi=...}`): the later would win,
    // under a point name that shows both values.
    let mut set_by: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (i, (entry, values)) in spec.grid.iter().enumerate() {
        for (key, _) in values.iter().flat_map(|v| point_sets(entry, v)) {
            if let Some(&other) = set_by.get(&key).filter(|&&other| other != i) {
                let message = format!("is set by two grid entries, {} and {entry}: keep one", spec.grid[other].0);
                return Err(plan_err(&key, &message));
            }
            set_by.insert(key, i);
        }
    }
    // A base seed may be set; where runs go may not.
    if let Some(set) = spec.sets.iter().find(|o| o.key == "run.dir") {
        return Err(plan_err(&set.origin, own("run.dir").expect("run.dir is the sweep's")));
    }
    // The grid's points: the cartesian product, the last key varying fastest.
    let mut points: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in &spec.grid {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut next = point.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    let stems: Vec<String> =
        spec.configs.iter().map(|c| c.file_stem().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let mut runs = Vec::new();
    for repeat in 0..spec.repeats {
        for (base, stem) in spec.configs.iter().zip(&stems) {
            for point in &points {
                let mut name: Vec<String> = point.iter().map(|(k, v)| point_name(k, v)).collect();
                if spec.configs.len() > 1 || name.is_empty() {
                    name.insert(0, stem.clone());
                }
                let dir = spec.out.join(point_dir_name(&name)).join(format!("repeat-{repeat}"));
                let mut overrides = spec.sets.clone();
                for (key, value) in point.iter().flat_map(|(k, v)| point_sets(k, v)) {
                    let arg = set_arg(&key, &value);
                    overrides.push(Override::parse(&arg)?.named(format!("grid value {arg}")));
                }
                let seed = Config::load(Some(base), &overrides)?.train.seed;
                let Some(seed) = seed.checked_add(repeat as u64) else {
                    let message = format!(
                        "{seed} with --repeats {}: repeat {repeat} would train with seed {seed} + {repeat}, past the \
                         largest seed {}; start from a smaller seed",
                        spec.repeats,
                        u64::MAX
                    );
                    return Err(plan_err("train.seed", &message));
                };
                overrides.push(Override::parse(&format!("train.seed={seed}"))?);
                let dir_value = toml::Value::String(dir.display().to_string());
                overrides.push(Override::parse(&set_arg("run.dir", &dir_value))?);
                let config = Config::load(Some(base), &overrides)?;
                runs.push(PlannedRun { dir, base: base.clone(), overrides, config });
            }
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    if let Some(run) = runs.iter().find(|r| !dirs.insert(&r.dir)) {
        let message = "two runs would share this directory (base configurations with the same file name?)";
        return Err(plan_err(&run.dir.display().to_string(), message));
    }
    // Two points that configure the same training (`micn.phi=[1.0, 1]`, overlapping grid keys)
    // would train one run twice and report it as two repeats.
    let mut trains: std::collections::HashMap<String, &Path> = std::collections::HashMap::new();
    for run in runs.iter().take(runs.len() / spec.repeats) {
        let mut config = run.config.clone();
        config.run.dir = PathBuf::new();
        if let Some(first) = trains.insert(config.to_toml(), &run.dir) {
            let message =
                format!("configures the same training as {}: one run would be trained twice", first.display());
            return Err(plan_err(&run.dir.display().to_string(), &message));
        }
    }
    // Points apart only in keys their model does not read (`model.mind_interests` of a DIN, in a
    // grid that MIND reads too) train alike: said, but trained, as a sweep begun before would be.
    let mut alike: std::collections::HashMap<String, &PlannedRun> = std::collections::HashMap::new();
    for run in runs.iter().take(runs.len() / spec.repeats) {
        let mut config = run.config.as_trained();
        config.run.dir = PathBuf::new();
        let first = *alike.entry(config.to_toml()).or_insert(run);
        if !std::ptr::eq(first, run) {
            let differ = crate::config::diff(&first.config.to_table(), &run.config.to_table());
            let unread: Vec<String> = differ
                .iter()
                .filter(|key| *key != "run.dir")
                .map(|key| format!("{key}, which {} does not read", run.config.unread_by(key)))
                .collect();
            tracing::warn!(
                "{} trains as {} does: they differ only in {}",
                run.dir.display(),
                first.dir.display(),
                unread.join("; ")
            );
        }
    }
    Ok(runs)
}

/// Where a planned run stands on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    NotStarted,
    /// Started (its `config.toml` exists) but not finished as `micn report` reads runs (no final
    /// summary, or one it cannot use).
    Unfinished,
    /// As `micn report` reads it: `test_auc` is the one its table shows (the model selected by
    /// validation AUC, where the run has a validation split).
    Finished {
        test_auc: f64,
    },
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunState::NotStarted => write!(f, "not started"),
            RunState::Unfinished => write!(f, "unfinished (resumes from its newest checkpoint, or starts again)"),
            RunState::Finished { test_auc } => write!(f, "finished, test AUC {test_auc:.4}"),
        }
    }
}

/// Read a run directory's state; refuse one trained with another configuration.
pub fn run_state(run: &PlannedRun) -> Result<RunState, SweepError> {
    let run_dir = RunDir::new(&run.dir);
    if !run_dir.holds_run() {
        return Ok(RunState::NotStarted);
    }
    // Where the run directory is written from (`--out ./x`, an absolute path, a moved sweep) is
    // not part of how it trains.
    let mut differing = crate::config::diff(&run_dir.read_config()?.to_table(), &run.config.to_table());
    differing.retain(|key| key != "run.dir");
    if !differing.is_empty() {
        return Err(SweepError::Mismatch { dir: run.dir.clone(), keys: differing.join(", ") });
    }
    // Finished as the report counts runs (with the test AUC its table shows); anything less is a
    // run to finish again (its checkpoints are what counts).
    Ok(match super::report::read_run(&run.dir) {
        Ok(finished) => RunState::Finished { test_auc: finished.test_auc },
        Err(_) => RunState::Unfinished,
    })
}

/// Whether the run's summary says a signal stopped it.
fn stopped_by_signal(run: &PlannedRun) -> bool {
    RunDir::new(&run.dir).read_summary().ok().flatten().is_some_and(|s| s["stopped_by_signal"] == true)
}

/// How runs are started.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The `micn` binary (normally this process's own).
    pub micn: PathBuf,
    /// `micn-launch`, needed when `np > 1`.
    pub launcher: Option<PathBuf>,
    pub np: usize,
    pub launch_args: Vec<String>,
}

impl Runner {
    /// The binaries beside this process's executable.
    pub fn beside_current_exe(np: usize, launch_args: Vec<String>) -> Result<Self, SweepError> {
        let micn = std::env::current_exe().with_path(Path::new("micn"))?;
        let launcher = micn.with_file_name("micn-launch");
        let launcher = launcher.exists().then_some(launcher);
        if np > 1 && launcher.is_none() {
            return Err(SweepError::Plan {
                what: format!("--np {np}"),
                message: format!(
                    "needs micn-launch beside {} (cargo build --release --workspace builds it)",
                    micn.display()
                ),
            });
        }
        Ok(Self { micn, launcher, np, launch_args })
    }

    /// The command that trains `run` (resuming from its newest checkpoint when it has one).
    pub fn command(&self, run: &PlannedRun) -> Command {
        let mut train_args: Vec<String> = vec!["train".into(), "--config".into(), run.base.display().to_string()];
        for o in &run.overrides {
            train_args.push("--set".into());
            train_args.push(o.arg.clone());
        }
        // A run stopped before its first checkpoint (its configuration checked: the sweep's own)
        // starts again; `--resume auto` refuses to start afresh over a run.
        let run_dir = RunDir::new(&run.dir);
        match run_dir.present_files().is_empty() || has_checkpoints(&run_dir) {
            true => train_args.extend(["--resume".into(), "auto".into()]),
            false => train_args.push("--overwrite".into()),
        }
        let mut cmd = match (&self.launcher, self.np) {
            (Some(launcher), np) if np > 1 => {
                let mut cmd = Command::new(launcher);
                cmd.arg("--np").arg(np.to_string()).args(&self.launch_args).arg("--micn").arg(&self.micn).arg("--");
                cmd
            }
            _ => Command::new(&self.micn),
        };
        cmd.args(train_args);
        stopped_with_this_process(&mut cmd);
        cmd
    }
}

/// A run this process starts (a sweep's, a benchmark's) gets SIGTERM (a checkpoint, then its end)
/// should this process die, even by SIGKILL: left training unwatched, it would hold its run
/// directory against the same command run again. The signal comes when the thread that spawned
/// the run ends: spawn from the main thread.
pub fn stopped_with_this_process(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The sweep died before the prctl, and nothing would send the signal: no run.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Whether a run directory holds a checkpoint to resume from.
fn has_checkpoints(run_dir: &RunDir) -> bool {
    !crate::checkpoint::list(&run_dir.checkpoints()).is_empty()
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How often a running sweep says where its current run is.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub trained: usize,
    pub skipped: usize,
    pub report: super::report::Written,
}

/// A line on standard output. A full disk or a closed pipe there is an error that stops the
/// sweep (its run checkpointed first), never a panic that would leave the run going unwatched.
fn say(line: &str) -> Result<(), SweepError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(SweepError::Stdout)
}

/// Run every planned run that has not finished, one after another; then write `OUT/report`,
/// the stop signals given their default action back (nothing is left to checkpoint: a stop
/// ends the process at once). Each child's output goes to `RUN/train.log`; one line per run goes
/// to standard output.
pub fn run(spec: &SweepSpec, runner: &Runner, interrupter: &Interrupter) -> Result<SweepOutcome, SweepError> {
    let runs = plan(spec)?;
    // Refuse a mismatched directory before training anything.
    let states = runs.iter().map(run_state).collect::<Result<Vec<_>, _>>()?;
    let (mut trained, mut skipped) = (0, 0);
    let total = runs.len();
    for (i, (run, state)) in runs.iter().zip(states).enumerate() {
        let tag = format!("[{}/{total}] {}", i + 1, run.dir.display());
        if let RunState::Finished { test_auc } = state {
            say(&format!("{tag}: finished earlier (test AUC {test_auc:.4}), skipped"))?;
            skipped += 1;
            continue;
        }
        if interrupter.is_stopped() {
            return Err(SweepError::StoppedBefore { dir: run.dir.clone() });
        }
        // An unfinished run without a checkpoint starts again (see `Runner::command`).
        let resuming = state == RunState::Unfinished && has_checkpoints(&RunDir::new(&run.dir));
        crate::io_error::create_dirs(&run.dir)?;
        let log = run.dir.join("train.log");
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| SweepError::Io(PathIo { path: log.clone(), source }))
        };
        let mut cmd = runner.command(run);
        cmd.stdin(Stdio::null()).stdout(open_log()?).stderr(open_log()?);
        let doing = match (resuming, &state) {
            (true, _) => "resuming from its newest checkpoint",
            (false, RunState::Unfinished) => "starting again (it stopped before its first checkpoint)",
            (false, _) => "training",
        };
        say(&format!("{tag}: {doing}"))?;
        let started = Instant::now();
        let program = PathBuf::from(cmd.get_program());
        let mut child = cmd.spawn().map_err(|source| SweepError::Spawn { program, source })?;
        // A failure to write standard output while the run trains: kept, the run stopped with a
        // checkpoint, then returned.
        let mut output = Ok(());
        let mut forwarded = false;
        let mut said = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().with_path(&log)? {
                break status;
            }
            // Which step the run has logged, every half minute.
            if said.elapsed() >= PROGRESS_EVERY {
                let metrics = RunDir::new(&run.dir).read_metrics().unwrap_or_default();
                let step = metrics.iter().rev().find_map(|v| v["step"].as_u64());
                let of = run.config.train.max_steps.map(|m| format!(" of {m}")).unwrap_or_default();
                let step = step.map_or_else(|| "no step logged yet".into(), |s| format!("step {s}{of}"));
                if output.is_ok() {
                    output = say(&format!("{tag}: {step}, {:.0} s", started.elapsed().as_secs_f64()));
                }
                said = Instant::now();
            }
            // A Ctrl-C reaches the child through the terminal; a SIGTERM sent to this process alone
            // is passed on, so the child checkpoints before stopping either way.
            if (interrupter.is_stopped() || output.is_err()) && !forwarded {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                forwarded = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        output?;
        let state = run_state(run)?;
        match state {
            RunState::Finished { test_auc } if status.success() => {
                say(&format!(
                    "{tag}: {}test AUC {test_auc:.4} ({:.0} s)",
                    if resuming { "resumed, " } else { "" },
                    started.elapsed().as_secs_f64()
                ))?;
                trained += 1;
            }
            // Ended as asked (status 0), yet not finished as the report reads runs, with no signal
            // to this sweep or to the run alone (its summary would say): what is wrong, said.
            _ if status.success() && !interrupter.is_stopped() && !stopped_by_signal(run) => {
                let why = super::report::read_run(&run.dir).err().unwrap_or_else(|| state.to_string());
                return Err(SweepError::RunFailed {
                    dir: run.dir.clone(),
                    status: format!("{status}, yet the run there is not finished as the report reads it: {why}"),
                    tail: tail(&log, 15),
                    log,
                    input: true,
                });
            }
            _ if status.success() || interrupter.is_stopped() => {
                // A signal in the run's first moments ends it before it can checkpoint.
                let checkpointed = crate::checkpoint::latest(&RunDir::new(&run.dir).checkpoints()).0.is_some();
                let progress = if checkpointed { "checkpointed" } else { "before its first checkpoint" };
                return Err(SweepError::Interrupted { dir: run.dir.clone(), progress });
            }
            _ => {
                return Err(SweepError::RunFailed {
                    dir: run.dir.clone(),
                    status: status.to_string(),
                    tail: tail(&log, 15),
                    log,
                    input: status.code() == Some(3),
                })
            }
        }
    }
    // Every run is trained: nothing is left to checkpoint, so a stop signal ends the report's
    // walk and writing at once (each file it writes moves into place whole).
    crate::train::interrupt::default_stop_signals();
    if interrupter.is_stopped() {
        return Err(SweepError::StoppedBeforeReport);
    }
    let report = super::report::write(std::slice::from_ref(&spec.out), &spec.out.join("report"))?;
    Ok(SweepOutcome { trained, skipped, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> PathBuf {
        let path = dir.join("base.toml");
        std::fs::write(&path, "[model]\nkind = \"din\"\n[micn]\nenabled = true\n[train]\nseed = 7\n").unwrap();
        path
    }

    fn spec(dir: &Path) -> SweepSpec {
        SweepSpec { configs: vec![base(dir)], repeats: 2, np: 1, out: dir.join("out"), ..Default::default() }
    }

    #[test]
    fn grids_parse_as_toml_lists_or_bare_words() {
        let (key, values) = parse_grid("micn.phi=[0.1, 0.5,1.0]").unwrap();
        assert_eq!(key, "micn.phi");
        assert_eq!(values, vec![toml::Value::Float(0.1), toml::Value::Float(0.5), toml::Value::Float(1.0)]);
        let (_, kinds) = parse_grid("model.kind=[din,dien]").unwrap();
        assert_eq!(kinds, vec![toml::Value::String("din".into()), toml::Value::String("dien".into())]);
        let (_, quoted) = parse_grid("model.kind=[\"din\"]").unwrap();
        assert_eq!(quoted, vec![toml::Value::String("din".into())]);
        for bad in ["micn.phi=0.1", "micn.phi", "micn.phi=[]", "micn.phi=[0.1,0.1]", "micn.phi=[0.1,,0.2]"] {
            let e = parse_grid(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--grid {bad}:")), "{e}");
        }
    }

    #[test]
    fn the_plan_is_the_grid_times_the_repeats_with_seeds_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.sets = vec![Override::parse("train.epochs=3").unwrap()];
        s.set_grid("micn.phi".into(), parse_grid("micn.phi=[0.1,0.9]").unwrap().1);
        s.set_grid("model.kind".into(), parse_grid("model.kind=[din,dien]").unwrap().1);
        let runs = plan(&s).unwrap();
        assert_eq!(runs.len(), 2 * 2 * 2);
        let names: Vec<String> =
            runs.iter().map(|r| r.dir.strip_prefix(&s.out).unwrap().display().to_string()).collect();
        assert_eq!(names[0], "micn.phi=0.1,model.kind=din/repeat-0");
        assert_eq!(names[1], "micn.phi=0.1,model.kind=dien/repeat-0");
        assert_eq!(names[3], "micn.phi=0.9,model.kind=dien/repeat-0");
        assert_eq!(names[4], "micn.phi=0.1,model.kind=din/repeat-1");
        assert_eq!(runs[0].config.train.seed, 7);
        assert_eq!(runs[4].config.train.seed, 8);
        assert_eq!(runs[3].config.micn.phi, 0.9);
        assert_eq!(runs[3].config.train.epochs, 3);
        assert_eq!(runs[3].config.run.dir, runs[3].dir);
        // The command carries everything as --set, resuming automatically.
        let runner = Runner { micn: "micn".into(), launcher: None, np: 1, launch_args: vec![] };
        let cmd = runner.command(&runs[1]);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(&args[..2], ["train", "--config"]);
        assert!(args.contains(&"model.kind=\"dien\"".to_string()), "{args:?}");
        assert!(args.contains(&"train.seed=7".to_string()));
        assert_eq!(&args[args.len() - 2..], ["--resume", "auto"]);
        let launched = Runner { launcher: Some("micn-launch".into()), np: 2, ..runner }.command(&runs[1]);
        let args: Vec<String> = launched.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(&args[..5], ["--np", "2", "--micn", "micn", "--"]);
    }

    #[test]
    fn a_repeat_whose_seed_would_pass_the_largest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.sets = vec![Override::parse(&format!("train.seed={}", u64::MAX - 1)).unwrap()];
        let runs = plan(&s).unwrap();
        assert_eq!((runs[0].config.train.seed, runs[1].config.train.seed), (u64::MAX - 1, u64::MAX));
        // A third repeat would wrap around to seed 0 (another sweep's repeat 0).
        s.repeats = 3;
        let e = plan(&s).unwrap_err().to_string();
        assert!(e.contains("train.seed") && e.contains("repeat 2") && e.contains("past the largest seed"), "{e}");
    }

    #[test]
    fn a_table_valued_grid_point_sets_several_keys_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ablation.toml");
        base(dir.path());
        std::fs::write(
            &file,
            "configs = [\"base.toml\"]\nout = \"runs/a\"\n[grid]\n\"model.kind\" = [\"din\"]\n\
             micn = [{enabled = false}, {enabled = true}, {enabled = true, lambda = 0.0}]\n",
        )
        .unwrap();
        let s = SweepSpec::from_file(&file).unwrap();
        let runs = plan(&s).unwrap();
        let names: Vec<String> =
            runs.iter().map(|r| r.dir.parent().unwrap().file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(
            names,
            [
                "micn.enabled=false,model.kind=din",
                "micn.enabled=true,model.kind=din",
                "micn.enabled=true,micn.lambda=0.0,model.kind=din"
            ]
        );
        let micn: Vec<(bool, f64)> = runs.iter().map(|r| (r.config.micn.enabled, r.config.micn.lambda)).collect();
        assert_eq!(micn, [(false, 1.0), (true, 1.0), (true, 0.0)]);
        // From the command line too, and an empty table or a seed inside one is refused.
        let (key, values) = parse_grid("micn=[{enabled = true}, {enabled = true, lambda = 0.5}]").unwrap();
        assert_eq!((key.as_str(), values.len()), ("micn", 2));
        assert!(parse_grid("micn=[{}]").unwrap_err().to_string().contains("empty table"));
        let mut s = spec(dir.path());
        s.set_grid("train".into(), parse_grid("train=[{seed = 3}]").unwrap().1);
        assert!(plan(&s).unwrap_err().to_string().contains("train.seed"));
    }

    #[test]
    fn bad_plans_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.set_grid("micn.phi".into(), vec![toml::Value::Float(1.5)]);
        let e = plan(&s).unwrap_err().to_string();
        assert!(e.starts_with("grid value micn.phi=1.5: key `micn.phi`"), "{e}");
        let mut s = spec(dir.path());
        s.set_grid("train.seed".into(), vec![toml::Value::Integer(1)]);
        assert!(plan(&s).unwrap_err().to_string().contains("train.seed"));
        let s = SweepSpec { out: PathBuf::new(), ..spec(dir.path()) };
        assert!(plan(&s).unwrap_err().to_string().contains("--out"));
        let s = SweepSpec { repeats: 0, ..spec(dir.path()) };
        assert!(plan(&s).unwrap_err().to_string().contains("repeats"));
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let twin = base(&other);
        let s = SweepSpec { configs: vec![base(dir.path()), twin], ..spec(dir.path()) };
        let e = plan(&s).unwrap_err().to_string();
        assert!(e.contains("base/repeat-0") && e.contains("share this directory"), "{e}");
        // Two grid entries that set one key: the point's name would show a value not trained.
        let mut s = spec(dir.path());
        s.set_grid("micn.phi".into(), parse_grid("micn.phi=[0.2]").unwrap().1);
        s.set_grid("micn".into(), parse_grid("micn=[{phi=0.3}]").unwrap().1);
        let e = plan(&s).unwrap_err().to_string();
        assert_eq!(e, "micn.phi: is set by two grid entries, micn.phi and micn: keep one");
        // Where the report goes holds a file: refused before any run trains.
        let s = spec(dir.path());
        std::fs::create_dir_all(&s.out).unwrap();
        std::fs::write(s.out.join("report"), "notes").unwrap();
        let e = plan(&s).unwrap_err().to_string();
        assert!(e.ends_with("report: is not a directory, and the sweep writes its report there: move it first"), "{e}");
    }

    #[test]
    fn a_point_name_too_long_for_a_file_name_is_cut_and_hashed_and_names_that_collide_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        // 1e-300 is written out in full (302 characters).
        s.set_grid("micn.lambda".into(), parse_grid("micn.lambda=[1.0,1e-300,2e-300]").unwrap().1);
        let runs = plan(&s).unwrap();
        let names: Vec<String> =
            runs.iter().map(|r| r.dir.parent().unwrap().file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(names[0], "micn.lambda=1.0");
        for name in &names[1..3] {
            assert!(name.len() <= MAX_POINT_NAME && name.starts_with("micn.lambda=0.000"), "{name}");
        }
        assert_ne!(names[1], names[2], "the hash tells points apart whose names begin alike");
        assert_eq!(plan(&s).unwrap()[1].dir, runs[1].dir, "the same plan names the same directory");
        // Two values one directory name would mix up, and one value given twice.
        let e = parse_grid(r#"data.dir=["a/b","a_b"]"#).unwrap_err().to_string();
        assert!(e.contains(r#"values "a/b" and "a_b" would share the directory name data.dir=a_b"#), "{e}");
        let e = parse_grid("micn.phi=[0.5,0.5]").unwrap_err().to_string();
        assert!(e.contains("lists micn.phi=0.5 twice"), "{e}");
    }

    #[test]
    fn sweep_files_read_configs_relative_to_themselves() {
        let dir = tempfile::tempdir().unwrap();
        base(dir.path());
        let sub = dir.path().join("experiments");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("phi.toml");
        std::fs::write(
            &file,
            "configs = [\"../base.toml\"]\nrepeats = 3\nout = \"runs/phi\"\n[set]\n\"train.epochs\" = 2\n\
             [set.data]\nmax_hist_len = 10\n[grid]\n\"micn.phi\" = [0.1, 0.3]\n",
        )
        .unwrap();
        let s = SweepSpec::from_file(&file).unwrap();
        assert_eq!(s.configs, vec![sub.join("../base.toml")]);
        assert_eq!((s.repeats, s.np, s.out.clone()), (3, 1, PathBuf::from("runs/phi")));
        let sets: Vec<&str> = s.sets.iter().map(|o| o.arg.as_str()).collect();
        assert_eq!(sets, ["data.max_hist_len=10", "train.epochs=2"]);
        assert_eq!(s.grid[0].0, "micn.phi");
        std::fs::write(&file, "configs = [\"../base.toml\"]\nrepeat = 3\n").unwrap();
        let e = SweepSpec::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("phi.toml") && e.contains("repeat"), "{e}");
        std::fs::write(&file, "configs = [\"../base.toml\"]\n[grid]\n\"micn.phi\" = 0.1\n").unwrap();
        let e = SweepSpec::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("micn.phi") && e.contains("list"), "{e}");
        std::fs::write(&file, "configs = [\"../base.toml\"]\nrepeats = 0\n").unwrap();
        let e = SweepSpec::from_file(&file).unwrap_err().to_string();
        assert_eq!(e, format!("{}: repeats = 0: must be at least 1", file.display()));
    }

    #[test]
    fn a_directory_trained_with_another_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let runs = plan(&spec(dir.path())).unwrap();
        assert_eq!(run_state(&runs[0]).unwrap(), RunState::NotStarted);
        std::fs::create_dir_all(&runs[0].dir).unwrap();
        std::fs::write(runs[0].dir.join("config.toml"), runs[0].config.to_toml()).unwrap();
        assert_eq!(run_state(&runs[0]).unwrap(), RunState::Unfinished);
        // Finished as the report reads runs: every figure its table shows.
        let summary = "{\"test_auc\": 0.75, \"stopped_by_signal\": false}";
        std::fs::write(runs[0].dir.join("summary.json"), summary).unwrap();
        assert_eq!(run_state(&runs[0]).unwrap(), RunState::Unfinished);
        let summary = "{\"test_auc\": 0.75, \"test_gauc\": 0.7, \"test_logloss\": 0.6, \"seconds\": 9, \
                       \"stopped_by_signal\": false}";
        std::fs::write(runs[0].dir.join("summary.json"), summary).unwrap();
        assert_eq!(run_state(&runs[0]).unwrap(), RunState::Finished { test_auc: 0.75 });
        std::fs::write(runs[0].dir.join("summary.json"), summary.replace("false", "true")).unwrap();
        assert_eq!(run_state(&runs[0]).unwrap(), RunState::Unfinished);
        let mut other = runs[0].config.clone();
        other.micn.phi = 0.9;
        std::fs::write(runs[0].dir.join("config.toml"), other.to_toml()).unwrap();
        let e = run_state(&runs[0]).unwrap_err().to_string();
        assert!(e.contains("micn.phi") && e.contains("repeat-0"), "{e}");
    }
}
