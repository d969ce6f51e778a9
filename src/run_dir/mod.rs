//! The one owner of a run directory's layout: `config.toml`, `metrics.jsonl` (and the same
//! figures as TensorBoard event files, [`events`]), `summary.json`, `model.safetensors`,
//! `checkpoints/` and `logs/rank-N.log`. Training writes through it (each
//! file replaced whole, never half-written; `metrics.jsonl` appended line by line), and `micn
//! eval`, `micn sweep`, `micn report` and the benches read through it, so the names and the
//! checks on reading live in one place.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Tensor;
use tracing_subscriber::fmt::format::Writer;

pub mod events;

use self::events::EventWriter;
use crate::config::Config;
use crate::io_error::{replace_file, PathIo, WithPath};

/// A run directory file that exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The configuration is not one `micn train` accepts (the error names the file and key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Another process trains into the directory (it holds [`LOCK_FILE`]'s lock).
    #[error(
        "{}: another micn train is writing this run ({holder}); wait for it to end, or stop it, or give this run \
         another run.dir",
        path.display()
    )]
    InUse { path: PathBuf, holder: String },
    /// The directory this run locked is gone or another one stands at its path.
    #[error(
        "{}: the run directory was removed or replaced while this run wrote into it (its config.toml, metrics and \
         logs went with it); nothing more is written there: start the run again",
        path.display()
    )]
    Replaced { path: PathBuf },
}

impl RunDirError {
    /// Whether running the same command again fails the same way. Another run's lock is released
    /// when that run ends: not an input error, so that `micn-launch` retries (after a restart, the
    /// stalled attempt's rank 0 on another host may hold it until its watchdog ends it). A run
    /// directory removed under a run is one: starting again in its place is for the user to
    /// decide.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::Io(e) => e.is_lasting(),
            Self::InUse { .. } => false,
            Self::Invalid { .. } | Self::Config(_) | Self::Replaced { .. } => true,
        }
    }
}

/// The file whose lock (`flock`) says that a process trains into the directory: rank 0 holds it
/// until it exits, and the kernel releases it however the process ends (a crash or a SIGKILL
/// included). It holds who took it, for the message a second run gets.
pub const LOCK_FILE: &str = ".lock";

/// Rank 0's hold on its run directory (see [`LOCK_FILE`]); released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: Option<std::fs::File>,
    path: PathBuf,
    /// The locked directory's device and inode.
    identity: (u64, u64),
}

impl RunLock {
    /// Whether the locked directory still stands at its path: a run whose directory was deleted
    /// (or deleted and made anew, perhaps by another run) must not go on as if its files were
    /// there, nor write into another run's directory.
    pub fn check(&self) -> Result<(), RunDirError> {
        match identity(&self.path) {
            Some(now) if now == self.identity => Ok(()),
            _ => Err(RunDirError::Replaced { path: self.path.clone() }),
        }
    }
}

/// A directory's device and inode (none when it cannot be read).
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// The files that make a directory hold a run: a fresh run refuses a directory with any of them
/// (`logs/` alone is not a run), `--overwrite` deletes them.
const RUN_FILES: [&str; 6] =
    ["config.toml", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoints", ABANDONED_DIR];

/// Where a resume from step N moves what of the run came after it
/// (`abandoned/after-step-N-<unix seconds>/`): the checkpoints of a history it abandons, out of
/// `checkpoints/` so that neither `--resume auto` nor the selection of the best checkpoint takes
/// them, and the summary and model of an earlier end, which would otherwise pass for the result
/// of a resumed attempt that died. Moved, not deleted.
pub const ABANDONED_DIR: &str = "abandoned";

/// Set by `micn-launch` to one value for every attempt of a job: rank 0 writes it to
/// [`LAUNCH_FILE`] when it claims the run directory, so that a restart knows the run there is
/// its own job's (see `train::run`).
pub const LAUNCH_ID_ENV: &str = "MICN_LAUNCH_ID";

/// The launch this process belongs to ([`LAUNCH_ID_ENV`]), if `micn-launch` started it.
pub fn this_launch() -> Option<String> {
    std::env::var(LAUNCH_ID_ENV).ok().filter(|id| !id.is_empty())
}

/// The launch that last claimed the directory ([`LAUNCH_ID_ENV`]).
pub const LAUNCH_FILE: &str = ".launch";

/// What a set-aside is moving ([`RunDir::set_aside_after`]), while it moves it.
const SET_ASIDE_FILE: &str = ".set-aside";

/// A set-aside's record: the checkpoints and files to delete, those to move and the directory
/// they go into, each relative to the run's directory (which a restart may name from elsewhere).
#[derive(Debug, Serialize, serde::Deserialize)]
struct SetAside {
    to: Option<PathBuf>,
    moved: Vec<PathBuf>,
    deleted: Vec<PathBuf>,
}

impl SetAside {
    /// Why it is no record [`RunDir::set_aside_after`] writes: a path that leaves the run's
    /// directory, or names none of its files, or files to move nowhere.
    fn check(&self) -> Result<(), String> {
        let inside = |path: &Path| {
            path.file_name().is_some() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        };
        let paths = self.to.iter().chain(&self.moved).chain(&self.deleted);
        if let Some(outside) = paths.into_iter().find(|p| !inside(p)) {
            return Err(format!("{} is not a path inside the run's directory", outside.display()));
        }
        match self.to.is_none() && !self.moved.is_empty() {
            true => Err("files to move, and nowhere to".into()),
            false => Ok(()),
        }
    }

    /// Delete and move what is still in place in the run directory `run`; the names of all
    /// moved, now or before.
    fn finish(&self, run: &Path) -> Result<Vec<String>, PathIo> {
        for path in self.deleted.iter().map(|p| run.join(p)) {
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path).with_path(&path)?,
                Ok(_) => std::fs::remove_file(&path).with_path(&path)?,
                Err(_) => {}
            }
        }
        let mut names = Vec::new();
        let into = run.join(self.to.as_deref().unwrap_or(Path::new("")));
        for path in &self.moved {
            let name = path.file_name().unwrap_or_default().to_owned();
            let (from, to) = (run.join(path), into.join(&name));
            if std::fs::symlink_metadata(&from).is_ok() {
                std::fs::rename(&from, to).with_path(&from)?;
            }
            names.push(name.to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

/// When a run file goes as a run's files are deleted (lowest first): the end (summary and
/// model) and TensorBoard's files, then the checkpoints, then the metrics, and `config.toml`,
/// which marks the directory as a run's, last. Cut short anywhere, what is left is the earlier
/// run, unfinished, to resume, or a run with nothing to resume, which `--resume auto` starts again.
fn removal_rank(file: &str) -> u8 {
    match file {
        "checkpoints" | ABANDONED_DIR => 1,
        "metrics.jsonl" => 2,
        "config.toml" => 3,
        _ => 0,
    }
}

/// A run directory (it need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    pub fn summary(&self) -> PathBuf {
        self.path.join("summary.json")
    }

    pub fn model(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// The log file of `rank`.
    pub fn log(&self, rank: usize) -> PathBuf {
        self.path.join("logs").join(format!("rank-{rank}.log"))
    }

    /// Take the directory for this process (made if missing): a second `micn train` into it, or
    /// an `--overwrite` of it, is refused ([`RunDirError::InUse`]) while the returned lock lives.
    /// On a file system without locks a warning says that concurrent runs go unnoticed there.
    pub fn lock(&self) -> Result<RunLock, RunDirError> {
        use std::os::fd::AsRawFd as _;
        crate::io_error::create_dirs(&self.path)?;
        let path = self.path.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_path(&path)?;
        let identity = identity(&self.path).unwrap_or_default();
        // SAFETY: flock on a descriptor this function owns; it only takes or refuses the lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(RunDirError::InUse { path: self.path.clone(), holder: holder(&path) });
            }
            tracing::warn!(
                path = %path.display(),
                %error,
                "cannot lock the run directory: a second micn train into it would go unnoticed"
            );
            return Ok(RunLock { _file: None, path: self.path.clone(), identity });
        }
        let mut since = String::new();
        {
            use tracing_subscriber::fmt::time::FormatTime as _;
            let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut since));
        }
        let holder = format!("pid {} on {} since {since}\n", std::process::id(), crate::dist::hostname());
        file.set_len(0).and_then(|()| file.write_all(holder.as_bytes())).with_path(&path)?;
        Ok(RunLock { _file: Some(file), path: self.path.clone(), identity })
    }

    /// Who trains into the directory now, as its [`LOCK_FILE`] says (`pid P on HOST since T`),
    /// when a process of this machine holds that file's lock: read from the kernel's table of
    /// locks (`/proc/locks`), never by taking the lock, which a run starting that moment would
    /// then be refused. `None` where nobody here holds it (a run on another host sharing the file
    /// system goes unseen).
    pub fn writer(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.path.join(LOCK_FILE);
        let file = std::fs::metadata(&path).ok()?;
        let (dev, ino) = (file.dev(), file.ino());
        // `ID: FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE START END`, the device numbers in hex.
        let device = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let held = locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // A lock someone waits for has a `->` of its own before its fields.
            let fields = if fields.get(1) == Some(&"->") { &fields[1..] } else { &fields[..] };
            fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&device.as_str())
        });
        held.then(|| holder(&path))
    }

    /// The launch ([`LAUNCH_ID_ENV`]) that last claimed the directory, if one did.
    fn launch_id(&self) -> Option<String> {
        std::fs::read_to_string(self.path.join(LAUNCH_FILE)).ok().map(|s| s.trim().to_string())
    }

    /// Whether this process is a restart of the launch that last claimed the directory: an
    /// earlier attempt of the same job (`micn-launch --max-restarts`) started the run there.
    pub fn claimed_by_this_launch(&self) -> bool {
        let launch = this_launch();
        launch.is_some() && self.launch_id() == launch
    }

    /// Record that launch `id` claimed the directory.
    pub fn record_launch(&self, id: &str) -> Result<(), PathIo> {
        let line = format!("{id}\n");
        replace_file(&self.path.join(LAUNCH_FILE), |tmp| std::fs::write(tmp, &line))
    }

    /// What of the run comes after `step`, for a resume from that step: the later checkpoints
    /// and the summary and model of an earlier end (a finished run's result, kept) are moved into
    /// [`ABANDONED_DIR`]; those of a stop are deleted (its checkpoint holds the same model), and
    /// so is a checkpoint a kill cut short (the newest, the only one without its completion
    /// marker: several such are a run whose markers were lost, set aside with the rest).
    /// Returns the names moved and where to (none: nothing was moved).
    pub fn set_aside_after(&self, step: u64) -> Result<Option<(Vec<String>, PathBuf)>, PathIo> {
        let mut later: Vec<PathBuf> = crate::checkpoint::list(&self.checkpoints())
            .into_iter()
            .filter(|dir| crate::checkpoint::step_of(dir).is_some_and(|s| s > step))
            .rev()
            .collect();
        let finished = crate::checkpoint::finished(&self.checkpoints());
        let unmarked = later.iter().filter(|dir| !finished.contains(dir)).count();
        let mut deleted = Vec::new();
        if unmarked == 1 && later.last().is_some_and(|newest| !finished.contains(newest)) {
            let cut_short = later.pop().expect("the newest checkpoint");
            tracing::warn!(
                path = %cut_short.display(),
                "removing a checkpoint that a kill cut short (no completion marker): it cannot be resumed"
            );
            deleted.push(cut_short);
        }
        let end = [self.summary(), self.model()];
        let stopped = self.read_summary().ok().flatten().is_some_and(|s| s["stopped_by_signal"] == true);
        for file in end.iter().filter(|f| f.exists()) {
            match stopped {
                true => {
                    tracing::info!(path = %file.display(), "removing the stopped run's end (its checkpoint holds it)");
                    deleted.push(file.clone());
                }
                false => later.push(file.clone()),
            }
        }
        if later.is_empty() && deleted.is_empty() {
            return Ok(None);
        }
        let to = match later.is_empty() {
            true => None,
            false => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Some(self.new_abandoned_dir(&format!("after-step-{step}-{}", now.as_secs()))?)
            }
        };
        // One deletion or rename at a time: what is to go is recorded first, so that a kill
        // midway leaves a set-aside the next start finishes ([`finish_set_aside`](Self::finish_set_aside)),
        // not the left history's newest checkpoint for `--resume auto` to take.
        let within = |path: &PathBuf| path.strip_prefix(&self.path).map_or_else(|_| path.clone(), Path::to_path_buf);
        let record = SetAside {
            to: to.as_ref().map(within),
            moved: later.iter().map(within).collect(),
            deleted: deleted.iter().map(within).collect(),
        };
        let record_path = self.path.join(SET_ASIDE_FILE);
        let text = serde_json::to_string(&record).expect("paths serialise") + "\n";
        crate::io_error::replace_file_synced(&record_path, text.as_bytes())?;
        let names = record.finish(&self.path)?;
        std::fs::remove_file(&record_path).with_path(&record_path)?;
        Ok(to.map(|to| (names, to)))
    }

    /// Finish a set-aside a kill cut short ([`set_aside_after`](Self::set_aside_after)): what
    /// it recorded and did not delete or move yet goes now. Returns the names moved and where
    /// to.
    pub fn finish_set_aside(&self) -> Result<Option<(Vec<String>, PathBuf)>, PathIo> {
        let record_path = self.path.join(SET_ASIDE_FILE);
        let text = match std::fs::read_to_string(&record_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            read => read.with_path(&record_path)?,
        };
        let invalid = |why: String| PathIo {
            path: record_path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not a record of a set-aside ({why}); move the checkpoints after the step resumed from into \
                     {ABANDONED_DIR}/ by hand, then remove it"
                ),
            ),
        };
        let record: SetAside = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        record.check().map_err(invalid)?;
        let to = record.to.as_ref().map(|to| self.path.join(to));
        if let Some(to) = &to {
            crate::io_error::create_dirs(to)?;
        }
        let names = record.finish(&self.path)?;
        std::fs::remove_file(&record_path).with_path(&record_path)?;
        Ok(to.map(|to| (names, to)))
    }

    /// A directory of [`ABANDONED_DIR`] made for this call alone: `name`, or `name-2`, `name-3`,
    /// ... when an earlier set-aside (in the same second) took it.
    fn new_abandoned_dir(&self, name: &str) -> Result<PathBuf, PathIo> {
        let root = self.path.join(ABANDONED_DIR);
        crate::io_error::create_dirs(&root)?;
        let mut to = root.join(name);
        for n in 2..=1000 {
            match std::fs::create_dir(&to) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => to = root.join(format!("{name}-{n}")),
                made => return made.with_path(&to).map(|()| to),
            }
        }
        std::fs::create_dir(&to).with_path(&to).map(|()| to)
    }

    /// Whether the directory holds a run (its `config.toml` is written first).
    pub fn holds_run(&self) -> bool {
        self.config().is_file()
    }

    /// Why a run may not be written into this directory, not a run's yet: it holds a dataset
    /// (`dataset.json`) or runs in directories below it (up to three levels down, not in hidden
    /// directories; the first few named), whose files it would mix with its own (and `micn
    /// report`, which takes a run's directory for one run, would not look below it), or it lies
    /// in another run's own `checkpoints/`, `abandoned/` or `logs/`, which that run's
    /// `--overwrite` deletes (where `run.dir` resolves, through links). A run's own directory is
    /// its own (a branch of it may have been made below it since).
    pub fn foreign_contents(&self) -> Option<String> {
        const SHOWN: usize = 3;
        if self.holds_run() {
            return None;
        }
        // Where the run's files land: through a link into another run's directories too.
        for dir in crate::io_error::resolved(&self.path).ancestors() {
            let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) else { continue };
            if ["checkpoints", ABANDONED_DIR, "logs"].contains(&&*name.to_string_lossy())
                && RunDir::new(parent).holds_run()
            {
                let (name, parent) = (name.to_string_lossy(), parent.display());
                return Some(format!("lies in the run {parent}'s own {name}/, which its --overwrite deletes"));
            }
        }
        if self.path.join("dataset.json").is_file() {
            return Some("holds a dataset (dataset.json), whose files a run's would mix with".into());
        }
        let mut runs = Vec::new();
        let mut level = vec![self.path.clone()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for dir in &level {
                let Ok(entries) = std::fs::read_dir(dir) else { continue };
                let mut subdirs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    // Not hidden directories (`.cargo/config.toml` is no run).
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect();
                subdirs.sort();
                for sub in subdirs {
                    match RunDir::new(&sub).holds_run() {
                        true => runs.push(sub),
                        false => next.push(sub),
                    }
                }
            }
            level = next;
        }
        if runs.is_empty() {
            return None;
        }
        let names: Vec<String> = runs.iter().take(SHOWN).map(|r| r.display().to_string()).collect();
        let more = runs.len().saturating_sub(SHOWN);
        Some(format!(
            "holds {} run(s) in directories below it ({}{}), whose files a run's would mix with",
            runs.len(),
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ))
    }

    /// What of a run writing the file `out` would replace: a run's own file (its configuration,
    /// metrics, summary, model, lock or launch mark, a TensorBoard event file) or anything in its
    /// `checkpoints/`, `abandoned/` or `logs/`, through links too. `None` for any other path,
    /// a file of one's own beside a run's included.
    pub fn part_of_a_run(out: &Path) -> Option<String> {
        // Where a write lands: through a link to a file not made yet too.
        let out = crate::io_error::resolved(&crate::io_error::followed(out).unwrap_or_else(|_| out.to_path_buf()));
        let mut below = Vec::new();
        for dir in out.ancestors() {
            if let Some(&first) = below.last() {
                let name: &std::ffi::OsStr = first;
                let name = name.to_string_lossy();
                let owned = RUN_FILES.contains(&&*name)
                    || ["logs", LOCK_FILE, LAUNCH_FILE].contains(&&*name)
                    || name.starts_with(events::EVENT_FILE_PREFIX);
                if owned && RunDir::new(dir).holds_run() {
                    let whole = below.len() == 1;
                    let what = if whole { "" } else { "a file in " };
                    return Some(format!("is {what}the run {}'s own {name}", dir.display()));
                }
            }
            below.push(dir.file_name().unwrap_or_default());
        }
        None
    }

    /// The run files present (see [`RUN_FILES`], and TensorBoard event files), by name.
    pub fn present_files(&self) -> Vec<String> {
        let mut found: Vec<String> =
            RUN_FILES.into_iter().filter(|f| self.path.join(f).exists()).map(String::from).collect();
        found.extend(events::event_files(&self.path));
        found
    }

    /// Delete every run file (logs stay: the run about to replace them appends), `config.toml`
    /// last: a kill midway leaves a run that holds no checkpoint to resume but is still marked
    /// as one, which `--resume auto` then starts again and a fresh start refuses, not the earlier
    /// run's checkpoints without its metrics, which `--resume auto` would take up.
    pub fn remove_run_files(&self) -> Result<(), PathIo> {
        let mut files = self.present_files();
        files.sort_by_key(|f| removal_rank(f));
        files.into_iter().try_for_each(|f| {
            let path = self.path.join(&f);
            tracing::warn!(path = %path.display(), "--overwrite: deleting");
            if path.is_dir() {
                std::fs::remove_dir_all(&path).with_path(&path)
            } else {
                std::fs::remove_file(&path).with_path(&path)
            }
        })
    }

    /// The run's configuration as a TOML table (as written; for comparing and grouping runs).
    pub fn read_config_table(&self) -> Result<toml::Table, RunDirError> {
        let path = self.config();
        let text = crate::io_error::read_text_file(&path).with_path(&path)?;
        toml::from_str(&text).map_err(|e| RunDirError::Invalid { path, message: crate::config::toml_error_message(&e) })
    }

    /// The run's configuration, validated as `micn train` validates its own.
    pub fn read_config(&self) -> Result<Config, RunDirError> {
        Ok(Config::load(Some(&self.config()), &[])?)
    }

    /// `summary.json`, or nothing when the run has not finished (there is no such file).
    pub fn read_summary(&self) -> Result<Option<serde_json::Value>, RunDirError> {
        let path = self.summary();
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            read => read.with_path(&path)?,
        };
        serde_json::from_str(&text).map(Some).map_err(|e| RunDirError::Invalid { path, message: e.to_string() })
    }

    /// The lines of `metrics.jsonl` (none when there is no such file); a line that is not JSON is
    /// an error naming it.
    pub fn read_metrics(&self) -> Result<Vec<serde_json::Value>, RunDirError> {
        let path = self.metrics();
        let text = read_if_present(&path)?;
        // A blank line (a hand edit, a line break added at the end) holds nothing.
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| RunDirError::Invalid { path: path.clone(), message: format!("line {}: {e}", i + 1) })
            })
            .collect()
    }

    /// Start writing a run: its configuration, and its metrics log, kept up to step `kept_to`
    /// for a run that resumes (lines a run that then died wrote later are dropped, and so are the
    /// test-set lines of attempts that were stopped: the test set is scored once, at the run's
    /// end), else empty; its TensorBoard event file holds the same lines
    /// ([`EventWriter::create`]).
    pub fn start_writing(&self, config_toml: &str, kept_to: Option<u64>) -> Result<MetricsLog, PathIo> {
        crate::io_error::create_dirs(&self.path)?;
        replace_file(&self.config(), |tmp| std::fs::write(tmp, config_toml))?;
        let path = self.metrics();
        let kept: String = match kept_to {
            Some(step) => read_if_present(&path)?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .is_some_and(|v| v["step"].as_u64().is_some_and(|s| s <= step) && v["test_auc"].is_null())
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            None => String::new(),
        };
        replace_file(&path, |tmp| std::fs::write(tmp, &kept))?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).with_path(&path)?;
        let lines: Vec<serde_json::Value> = kept.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let events = EventWriter::create(&self.path, &lines)?;
        Ok(MetricsLog { file: Some(file), path, events: Some(events) })
    }

    /// The end of a run, first of two: the final model. Returns the file's checksum (as a
    /// checkpoint's manifest records it), for the summary written next to record, and `eval`,
    /// `predict` and the exports to check ([`RunDir::check_model`]).
    pub fn write_model(&self, variables: &[(String, Tensor)]) -> Result<String, PathIo> {
        let mut digest = String::new();
        replace_file(&self.model(), |tmp| {
            crate::checkpoint::write_tensors(tmp, variables)?;
            digest = crate::checkpoint::file_digest(tmp)?;
            Ok(())
        })?;
        Ok(digest)
    }

    /// The end of a run, second of two: the summary.
    pub fn write_summary(&self, summary: &impl Serialize) -> Result<(), PathIo> {
        let text = serde_json::to_string_pretty(summary).expect("plain data") + "\n";
        replace_file(&self.summary(), |tmp| std::fs::write(tmp, &text))
    }

    /// Refuse a `model.safetensors` other than the run wrote: of another checksum than
    /// `summary.json`'s `model_xxh3` (a damaged disk, a file copied over it). A summary without
    /// one (written before it was kept) checks nothing.
    pub fn check_model(&self, summary: &serde_json::Value) -> Result<(), RunDirError> {
        let Some(recorded) = summary.get("model_xxh3").and_then(|v| v.as_str()) else { return Ok(()) };
        let path = self.model();
        let actual = crate::checkpoint::file_digest(&path).with_path(&path)?;
        if actual == recorded {
            return Ok(());
        }
        let message = format!(
            "its checksum is {actual}, summary.json's model_xxh3 {recorded}: the file is not the one the run wrote \
             (damaged, or replaced since); `micn train --resume auto` on the run writes it again from its last \
             checkpoint, or {}",
            self.newest_checkpoint()
        );
        Err(RunDirError::Invalid { path, message })
    }

    /// What to score instead of the run's end, where it is missing or damaged: its newest
    /// checkpoint, said as the way out.
    pub fn newest_checkpoint(&self) -> String {
        match crate::checkpoint::latest(&self.checkpoints()).0 {
            Some((path, _)) => format!("score its newest checkpoint with --checkpoint {}", path.display()),
            None => "it has no checkpoint yet".to_string(),
        }
    }
}

/// Appends lines to `metrics.jsonl` and their figures to a TensorBoard event file (on rank 0;
/// the other ranks hold one that writes nothing).
pub struct MetricsLog {
    file: Option<std::fs::File>,
    path: PathBuf,
    events: Option<EventWriter>,
}

impl MetricsLog {
    /// A log that writes nothing (ranks other than 0).
    pub fn discard() -> Self {
        Self { file: None, path: PathBuf::new(), events: None }
    }

    /// One line (an object with a `step` field).
    pub fn write(&mut self, line: &impl Serialize) -> Result<(), PathIo> {
        if let Some(f) = &mut self.file {
            // The line's own field order in the file; the figures from its value.
            let text = serde_json::to_string(line).expect("plain data") + "\n";
            f.write_all(text.as_bytes()).with_path(&self.path)?;
            if let Some(events) = &mut self.events {
                let value = serde_json::to_value(line).expect("plain data");
                let step = value["step"].as_u64().unwrap_or(0);
                events.scalars(step, &events::scalars_of(&value))?;
            }
        }
        Ok(())
    }
}

/// The text of `path`, or nothing when there is no such file (any other error is one).
/// Who holds the lock on `lock_file`, as the holder wrote it there (`pid P on HOST since T`).
fn holder(lock_file: &Path) -> String {
    match std::fs::read_to_string(lock_file).unwrap_or_default().trim() {
        "" => "its process did not say who it is".to_string(),
        said => said.to_string(),
    }
}

fn read_if_present(path: &Path) -> Result<String, PathIo> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        read => read.with_path(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_writing_a_run_is_seen_without_taking_its_lock_and_its_checkpoint_is_said_unfinished() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        // A checkpoint renamed into place before its completion marker.
        let checkpoint = run.checkpoints().join("step-00000004");
        std::fs::create_dir_all(&checkpoint).unwrap();
        std::fs::write(checkpoint.join("state.json"), "{}").unwrap();
        let unfinished = crate::checkpoint::verify_reading(&checkpoint).unwrap_err();
        assert!(unfinished.is_input_error() && unfinished.to_string().contains("no completion marker"), "{unfinished}");
        let lock = run.lock().unwrap();
        let holder = run.writer().expect("the lock is seen held");
        assert!(holder.starts_with(&format!("pid {} on ", std::process::id())), "{holder}");
        let written = crate::checkpoint::verify_reading(&checkpoint).unwrap_err();
        assert!(!written.is_input_error(), "a passing error: {written}");
        assert!(written.to_string().contains("not finished: its run is training now (pid "), "{written}");
        // Named through a link to it, or from inside it as `.`, it is the same checkpoint.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&checkpoint, &link).unwrap();
        for named in [link.clone(), checkpoint.join(".")] {
            let written = crate::checkpoint::verify_reading(&named).unwrap_err();
            assert!(written.to_string().contains("its run is training now"), "{}: {written}", named.display());
        }
        // Free again once its holder lets go.
        drop(lock);
        assert_eq!(run.writer(), None);
        let _again = run.lock().expect("free after its holder let go");
    }

    #[test]
    fn two_set_asides_in_one_second_go_to_two_directories_and_a_stops_end_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        let end = |summary: &str| {
            std::fs::create_dir_all(run.path()).unwrap();
            std::fs::write(run.summary(), summary).unwrap();
            std::fs::write(run.model(), summary.len().to_string()).unwrap();
        };
        end("{\"stopped_by_signal\": false, \"steps\": 9}");
        let (names, first) = run.set_aside_after(6).unwrap().unwrap();
        assert_eq!(names, ["summary.json", "model.safetensors"]);
        end("{\"stopped_by_signal\": false, \"steps\": 8}");
        let (_, second) = run.set_aside_after(6).unwrap().unwrap();
        assert_ne!(first, second, "the first set-aside is not overwritten");
        assert!(second.file_name().unwrap().to_string_lossy().starts_with("after-step-6-"));
        let summary = |dir: &Path| std::fs::read_to_string(dir.join("summary.json")).unwrap();
        assert!(summary(&first).contains("\"steps\": 9") && summary(&second).contains("\"steps\": 8"));
        // A stop's summary and model go (its checkpoint holds the model); nothing is moved.
        end("{\"stopped_by_signal\": true, \"steps\": 7}");
        assert!(run.set_aside_after(6).unwrap().is_none());
        assert!(!run.summary().exists() && !run.model().exists());
    }

    #[test]
    fn a_model_file_other_than_the_summary_records_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        let variables = [("w".to_string(), Tensor::from_slice(&[1f32, 2., 3.]))];
        let digest = run.write_model(&variables).unwrap();
        assert_eq!(digest, format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&std::fs::read(run.model()).unwrap())));
        let summary = serde_json::json!({ "model_xxh3": digest });
        run.check_model(&summary).unwrap();
        // One bit flipped in the data: the same size, the same header, another file.
        let mut bytes = std::fs::read(run.model()).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(run.model(), &bytes).unwrap();
        let e = run.check_model(&summary).unwrap_err().to_string();
        assert!(e.starts_with(&run.model().display().to_string()), "{e}");
        assert!(
            e.contains(&format!("summary.json's model_xxh3 {digest}: the file is not the one the run wrote")),
            "{e}"
        );
        // A summary from before the checksum was kept checks nothing; a missing model is named.
        run.check_model(&serde_json::json!({ "steps": 3 })).unwrap();
        std::fs::remove_file(run.model()).unwrap();
        let e = run.check_model(&summary).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn a_checkpoint_a_kill_cut_short_is_removed_and_unmarked_ones_before_it_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        let checkpoint = |step: u64, marked: bool| {
            let dir = run.checkpoints().join(crate::checkpoint::dir_name(step));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("state.json"), "{}").unwrap();
            if marked {
                std::fs::write(dir.join("COMPLETE"), "").unwrap();
            }
        };
        // Killed while step 9 was written: it goes, and nothing else is there to set aside.
        checkpoint(6, true);
        checkpoint(9, false);
        assert!(run.set_aside_after(6).unwrap().is_none());
        assert!(!run.checkpoints().join("step-00000009").exists());
        // After a finished step 9, an unmarked step 12 goes; step 9 is set aside.
        checkpoint(9, true);
        checkpoint(12, false);
        let (names, _) = run.set_aside_after(6).unwrap().unwrap();
        assert_eq!(names, ["step-00000009"]);
        assert!(!run.checkpoints().join("step-00000012").exists());
        // Two unmarked checkpoints are no kill's: both are kept, set aside.
        checkpoint(9, false);
        checkpoint(12, false);
        let (names, _) = run.set_aside_after(6).unwrap().unwrap();
        assert_eq!(names, ["step-00000009", "step-00000012"]);
        // An unmarked checkpoint below a finished one is no kill's either.
        checkpoint(9, false);
        checkpoint(12, true);
        let (names, _) = run.set_aside_after(6).unwrap().unwrap();
        assert_eq!(names, ["step-00000009", "step-00000012"]);
    }

    #[test]
    fn a_resumed_run_keeps_the_metrics_lines_up_to_its_step_and_drops_later_ones_and_test_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        let mut log = run.start_writing("device = \"cpu\"\n", None).unwrap();
        for step in [10u64, 20, 30] {
            log.write(&serde_json::json!({ "step": step })).unwrap();
        }
        // A stopped attempt's test-set line (at its last step, up to which a run resumes).
        log.write(&serde_json::json!({ "step": 20, "test_auc": 0.7 })).unwrap();
        drop(log);
        let first = events::event_files(run.path());
        run.start_writing("device = \"cpu\"\n", Some(20)).unwrap();
        let steps: Vec<u64> = run.read_metrics().unwrap().iter().map(|v| v["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [10, 20]);
        assert!(run.read_metrics().unwrap().iter().all(|v| v["test_auc"].is_null()));
        assert!(run.holds_run());
        let files = run.present_files();
        assert_eq!(files.len(), 3, "the first event file replaced: {files:?}");
        assert_eq!(files[..2], ["config.toml", "metrics.jsonl"]);
        assert!(files[2].starts_with("events.out.tfevents."), "{files:?}");
        assert!(first.len() == 1 && first[0] < files[2], "the resumed run's event file sorts after the first");
        assert!(!run.path().join(".events.partial").exists());
        run.remove_run_files().unwrap();
        assert!(run.present_files().is_empty());
    }

    #[test]
    fn the_removal_order_takes_the_end_then_the_checkpoints_and_the_mark_of_a_run_last() {
        let mut files: Vec<&str> = RUN_FILES.to_vec();
        files.push("events.out.tfevents.1.host.micn");
        files.sort_by_key(|f| removal_rank(f));
        assert_eq!(
            files,
            [
                "summary.json",
                "model.safetensors",
                "events.out.tfevents.1.host.micn",
                "checkpoints",
                ABANDONED_DIR,
                "metrics.jsonl",
                "config.toml"
            ]
        );
    }

    #[test]
    fn a_set_aside_record_that_leaves_the_run_is_refused_and_moves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        std::fs::create_dir_all(run.checkpoints().join("step-00000009")).unwrap();
        std::fs::write(tmp.path().join("mine"), "mine").unwrap();
        for record in [
            r#"{"to": "abandoned/x", "moved": [".."], "deleted": []}"#,
            r#"{"to": "abandoned/x", "moved": [], "deleted": ["../mine"]}"#,
            r#"{"to": "/tmp", "moved": ["checkpoints/step-00000009"], "deleted": []}"#,
            r#"{"to": null, "moved": ["checkpoints/step-00000009"], "deleted": []}"#,
        ] {
            std::fs::write(run.path().join(SET_ASIDE_FILE), record).unwrap();
            let e = run.finish_set_aside().unwrap_err().to_string();
            assert!(e.contains(".set-aside: not a record of a set-aside"), "{record}: {e}");
            assert!(run.checkpoints().join("step-00000009").exists() && tmp.path().join("mine").exists());
        }
        // What a kill left: one checkpoint deleted, none moved yet.
        let record = r#"{"to": "abandoned/x", "moved": ["checkpoints/step-00000009"], "deleted": ["checkpoints/step-00000012"]}"#;
        std::fs::write(run.path().join(SET_ASIDE_FILE), record).unwrap();
        let (names, to) = run.finish_set_aside().unwrap().unwrap();
        assert_eq!((names, to), (vec!["step-00000009".to_string()], run.path().join("abandoned/x")));
        assert!(run.path().join("abandoned/x/step-00000009").is_dir());
        assert!(!run.path().join(SET_ASIDE_FILE).exists());
    }

    #[test]
    fn unreadable_files_are_named_with_their_line_and_a_missing_summary_is_no_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        assert!(run.read_summary().unwrap().is_none());
        assert!(run.read_metrics().unwrap().is_empty());
        std::fs::write(run.metrics(), "{\"step\": 1}\n{\"step\": \n").unwrap();
        let e = run.read_metrics().unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 2"), "{e}");
        std::fs::write(run.summary(), "{\"test_auc\": ").unwrap();
        assert!(run.read_summary().unwrap_err().to_string().contains("summary.json"));
        std::fs::write(run.config(), "[train]\nepochs = \"two\"\n").unwrap();
        let e = run.read_config().unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("epochs"), "{e}");
    }
}
