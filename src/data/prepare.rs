//! `micn prepare`: raw inputs → a dataset directory (see [`super::archive`]).
//!
//! The directory is built under a temporary sibling name (`.NAME.partial-PID`), every file
//! fsynced, then renamed into place: a killed or failed preparation leaves no output directory,
//! and an existing one is never overwritten. What a killed one leaves (its staging directory) is
//! removed by the next preparation of the same output once its process is gone. Same inputs and
//! seed give byte-identical files.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::amazon::{self, Release};
use super::archive::{self, AttributeFiles, CategorySource, Counts, DatasetMeta, FileEntry, VocabFiles};
use super::attributes::{ItemAttributes, RawAttributes};
use super::input::{self, BadKind, FileSummary, Issues, Strictness};
use super::interactions;
use super::protocol::{self, Built, Corpus, Protocol, ReviewRef, DEFAULT_CAT};
use super::samples::Samples;
use super::synth::{self, OracleModel};
use super::vocab::{self, Vocabularies};
use super::DataError;
use crate::io_error::{PathIo, WithPath};

/// `micn prepare` for the raw Amazon dumps.
#[derive(Debug, Clone)]
pub struct AmazonJob {
    pub release: Release,
    /// The reviews file, in the form [`AmazonJob::layout`] says.
    pub reviews: PathBuf,
    /// Item metadata, or with [`Layout::Sequences`] the items' attributes (JSON); without it
    /// every item is in `default_cat`.
    pub meta: Option<PathBuf>,
    pub layout: Layout,
    pub protocol: Protocol,
    pub max_hist_len: usize,
    pub seed: u64,
    pub strictness: Strictness,
    /// The synthetic generator's model, for oracle scores (found beside the reviews if absent).
    pub oracle: Option<PathBuf>,
}

/// What the reviews file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Amazon's reviews, JSON lines (or the 2014 release's Python literals), with `meta`.
    Reviews,
    /// Time-ordered sequences (`user item item …` per line, as SASRec, S3-Rec and RecBole ship
    /// Amazon data) and `meta`, when given, `{"item": [attribute ids]}`.
    Sequences(Sequences),
    /// `user,item,time` lines (ComiRec's training files, [`super::interactions`]); no meta.
    Interactions,
}

/// How to read a sequences file and its item attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sequences {
    /// The position, in each item's attribute list, of the attribute that is its category
    /// (S3-Rec's lists hold the brand, then the category levels below the top one: 1 is the
    /// first level). `None`: every item is in `default_cat`.
    pub category_attribute: Option<usize>,
    /// Most attributes of an item kept in the attribute table (its columns); longer lists are
    /// cut, and `prepare` says how many were.
    pub max_attributes: usize,
}

/// What a preparation did, for the user.
#[derive(Debug, Clone)]
pub struct Report {
    pub out: PathBuf,
    pub meta: DatasetMeta,
    pub seconds: f64,
    /// Raw (decompressed) review bytes per second.
    pub review_mb_per_s: f64,
    pub reviews_per_s: f64,
    pub warnings: Vec<String>,
}

/// Build a directory beside `out` and rename it into place when complete.
pub(crate) struct Staging {
    pub tmp: PathBuf,
    out: PathBuf,
    /// Whether an `out` that exists is replaced whole at the commit (else it is refused at start).
    replaces: bool,
}

/// The first of `entries` (an output directory's) that a command writing `written` (see
/// [`Staging::replacing`]) does not write, as `NAME` or `DIR/NAME`: a file or link not named
/// there, a directory of which it writes no file, anything in one of its directories that is not
/// a file it writes there.
fn not_written(entries: &[std::fs::DirEntry], written: &[&str]) -> Option<String> {
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            if !written.contains(&name.as_str()) {
                return Some(name);
            }
            continue;
        }
        let prefix = format!("{name}/");
        let inside: Vec<&str> = written.iter().filter_map(|w| w.strip_prefix(prefix.as_str())).collect();
        if inside.is_empty() {
            return Some(prefix);
        }
        let Ok(children) = std::fs::read_dir(entry.path()) else { return Some(prefix) };
        for child in children {
            let Ok(child) = child else { return Some(prefix) };
            let child_name = child.file_name().to_string_lossy().into_owned();
            if !child.file_type().is_ok_and(|t| t.is_file()) || !inside.contains(&child_name.as_str()) {
                return Some(format!("{prefix}{child_name}"));
            }
        }
    }
    None
}

/// Inside a staging directory until it is committed: the host that builds it, so that a
/// preparation on another machine sharing the file system (whose process ids mean nothing here)
/// never takes it for a dead one.
const OWNER_FILE: &str = ".micn-staging-host";

impl Staging {
    /// For an `out` that must not exist.
    pub fn new(out: &Path) -> Result<Self, DataError> {
        if out.exists() {
            return Err(DataError::OutputExists(out.to_path_buf()));
        }
        Self::start(out, false)
    }

    /// For an `out` that, when it exists, is replaced whole by the commit: an earlier output of
    /// the same command or an empty directory. An earlier output holds `written[0]` (a file the
    /// command always writes) and nothing but what the command writes (`written`: file names,
    /// `DIR/NAME` for a file in a directory of it, one level down): a directory holding anything
    /// else, a user's own files beside a file of the same name or inside a directory of the same
    /// name, is refused. Until the commit it stays as it was.
    pub fn replacing(out: &Path, written: &[&str]) -> Result<Self, DataError> {
        // One listing of one directory decides: another process replacing the same output in
        // between two looks (its old one aside, its new one in place) would read as neither.
        let entries = match std::fs::read_dir(out) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            // A path that cannot be made (below a file, a loop of links) is `start`'s to name.
            Err(_) if !out.exists() => Vec::new(),
            Err(_) => return Err(DataError::OutputExists(out.to_path_buf())),
            Ok(entries) => entries.flatten().collect(),
        };
        let marked = entries.iter().any(|e| e.file_name() == written[0] && e.file_type().is_ok_and(|t| t.is_file()));
        match (entries.is_empty(), marked, not_written(&entries, written)) {
            (true, ..) | (false, true, None) => Self::start(out, true),
            (false, true, Some(other)) => Err(DataError::Invalid {
                path: out.to_path_buf(),
                message: format!(
                    "holds {other}, which this command does not write: not only an earlier output of it; choose \
                     another --out, or move that aside"
                ),
            }),
            (false, false, _) => Err(DataError::OutputExists(out.to_path_buf())),
        }
    }

    /// For an `out` directory that may exist and hold other files: the commit
    /// ([`commit_into`](Self::commit_into)) moves each new file into it, over one of the same
    /// name; until then it stays as it was.
    pub fn merging(out: &Path) -> Result<Self, DataError> {
        if out.exists() && !out.is_dir() {
            let message = "already exists and is not a directory; remove it, or give another directory".into();
            return Err(DataError::Invalid { path: out.to_path_buf(), message });
        }
        Self::start(out, false)
    }

    fn start(out: &Path, replaces: bool) -> Result<Self, DataError> {
        // Built beside what a link names (the link stays).
        let out = &crate::io_error::followed(out)?;
        let name = out.file_name().ok_or_else(|| DataError::Invalid {
            path: out.to_path_buf(),
            message: "the output must name a directory".into(),
        })?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::io_error::create_dirs(parent)?;
        remove_stale(parent, name)?;
        let tmp = parent.join(staging_name(name, std::process::id()));
        if tmp.exists() {
            // Our own process id: left by an earlier process that had the same id.
            std::fs::remove_dir_all(&tmp).with_path(&tmp)?;
        }
        std::fs::create_dir(&tmp).with_path(&tmp)?;
        let staging = Self { tmp, out: out.to_path_buf(), replaces };
        staging.write(OWNER_FILE, format!("{}\n", crate::dist::hostname()).as_bytes())?;
        Ok(staging)
    }

    /// Write one file inside the staging directory and fsync it.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), DataError> {
        let path = self.tmp.join(name);
        let io = |source| DataError::Io(PathIo { path: path.clone(), source });
        let mut f = std::fs::File::create(&path).map_err(io)?;
        std::io::Write::write_all(&mut f, bytes).map_err(io)?;
        f.sync_all().map_err(io)
    }

    pub fn commit(self) -> Result<(), DataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io(PathIo { path, source })
        };
        for entry in std::fs::read_dir(&self.tmp).map_err(io(&self.tmp))? {
            let path = entry.map_err(io(&self.tmp))?.path();
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        }
        // Waited for with the owner file still there: a stale-staging sweep on another host must
        // not take this directory for a dead process's meanwhile.
        let _committing = commit_lock(&self.out);
        let owner = self.tmp.join(OWNER_FILE);
        std::fs::remove_file(&owner).map_err(io(&owner))?;
        let replacing = self.replaces && self.out.exists();
        // The new output and the earlier one swap names in one step; the earlier one, now the
        // staging directory, is removed (what a kill meanwhile leaves of it, the next run's sweep).
        if replacing && crate::io_error::exchange(&self.tmp, &self.out).with_path(&self.out)? {
            if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
                tracing::warn!("{}: could not remove the output this one replaced: {e}", self.tmp.display());
            }
            return self.committed();
        }
        // Where the file system cannot swap them: the earlier output steps aside first, and comes
        // back if the new one cannot move in (or, after a kill between the two, at the next run:
        // `restore_aside`).
        let aside = self.out.with_file_name(hidden_pid_name(
            self.out.file_name().unwrap_or_default(),
            ASIDE,
            std::process::id(),
        ));
        if replacing {
            std::fs::rename(&self.out, &aside).map_err(io(&self.out))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
            if replacing {
                let _ = std::fs::rename(&aside, &self.out);
            } else if self.out.exists() {
                // Another process (a second `prepare` to the same --out) committed first.
                return Err(DataError::OutputExists(self.out.clone()));
            }
            return Err(io(&self.out)(e));
        }
        if replacing {
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                tracing::warn!("{}: could not remove the output this one replaced: {e}", aside.display());
            }
        }
        self.committed()
    }

    /// The end of a commit: the directory that holds the output synced (the renames on disk),
    /// and the staging directory no longer this value's to remove.
    fn committed(self) -> Result<(), DataError> {
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent).and_then(|f| f.sync_all()).with_path(parent)?;
        }
        std::mem::forget(self);
        Ok(())
    }

    /// The commit of [`merging`](Self::merging): every file built moves into `out` (made if
    /// missing), each by one rename, which needs no room on the disk; other files there stay.
    /// `last` (the output's document, which names the rest) moves in last, so that whenever the
    /// commit stops, a kill say, the document in `out` finds every file it names. Then
    /// `tidy(out, earlier)` runs with the earlier document's text (a report removing the figures
    /// its new one no longer draws); meanwhile a copy of it waits under a hidden name
    /// (`.LAST.previous`), so that a commit killed before its tidying is tidied by the next one.
    /// Tidying is best effort: what it cannot remove is said, and the commit stands.
    pub fn commit_into(self, last: &str, tidy: impl Fn(&Path, &str) -> std::io::Result<()>) -> Result<(), DataError> {
        // Every file moves in before another commit to `out` starts: `out` holds one whole output.
        let _committing = commit_lock(&self.out);
        std::fs::remove_file(self.tmp.join(OWNER_FILE)).with_path(&self.tmp)?;
        crate::io_error::create_dirs(&self.out)?;
        let previous = self.out.join(crate::io_error::hidden_name(OsStr::new(last), "previous", 0));
        let tidied = |earlier: &[u8]| {
            if let Err(e) = tidy(&self.out, &String::from_utf8_lossy(earlier)) {
                tracing::warn!("{}: could not remove what the earlier output held alone: {e}", self.out.display());
            }
            if let Err(e) = std::fs::remove_file(&previous) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("{}: could not remove it: {e}", previous.display());
                }
            }
        };
        // Left by a commit killed before its tidying.
        if let Ok(earlier) = std::fs::read(&previous) {
            tidied(&earlier);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.tmp).with_path(&self.tmp)? {
            files.push(entry.with_path(&self.tmp)?.path());
        }
        // The document after the rest.
        files.sort_by_key(|path| path.file_name() == Some(OsStr::new(last)));
        let mut earlier = None;
        for from in files {
            std::fs::File::open(&from).and_then(|f| f.sync_all()).with_path(&from)?;
            let to = self.out.join(from.file_name().unwrap_or_default());
            if to.file_name() == Some(OsStr::new(last)) && to.is_file() {
                earlier = Some(std::fs::read(&to).with_path(&to)?);
                // A second name for it where the file system makes one, else a copy; without
                // either, a kill before the tidying leaves its files to the user.
                if let Err(e) = std::fs::hard_link(&to, &previous).or_else(|_| std::fs::copy(&to, &previous).map(drop))
                {
                    tracing::warn!("{}: cannot keep the earlier {last} until it is tidied: {e}", previous.display());
                }
            }
            std::fs::rename(&from, &to).with_path(&to)?;
        }
        std::fs::File::open(&self.out).and_then(|f| f.sync_all()).with_path(&self.out)?;
        if let Some(earlier) = earlier {
            tidied(&earlier);
        }
        // Dropping removes the staging directory, empty now.
        Ok(())
    }
}

/// A lock on the directory that holds `out` (`flock`) while a commit moves outputs there: two
/// processes committing to one `out` at once (a report or a synthetic data set written twice)
/// take turns, so that neither finds the other's output half moved, nor moves its files in among
/// the other's. Only the renames wait, a moment each. A lock held longer (another program's,
/// `flock DIR micn ...`; a committer stopped with Ctrl-Z) is said after a few seconds and given up
/// after [`COMMIT_WAIT`]; where the file system cannot lock, commits go on as before.
fn commit_lock(out: &Path) -> Option<std::fs::File> {
    use std::os::unix::io::AsRawFd as _;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::fs::File::open(parent).ok()?;
    let started = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Some(dir);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return None;
        }
        let waited = started.elapsed();
        if waited >= COMMIT_WAIT {
            tracing::warn!(
                "{}: still locked after {} s: moving {} into place without waiting longer",
                parent.display(),
                COMMIT_WAIT.as_secs(),
                out.display()
            );
            return None;
        }
        if !said && waited >= std::time::Duration::from_secs(3) {
            tracing::info!("{}: waiting for another process moving its output into this directory", parent.display());
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How long a commit waits for another one into the same directory ([`commit_lock`]).
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a process names the directory it builds output `NAME` in (`.NAME.partial-PID`), and the
/// earlier output it moves aside to replace it where the file system cannot swap the two
/// (`.NAME.replaced-PID`).
const STAGING: &str = "partial";
const ASIDE: &str = "replaced";

/// `.NAME.KIND-`, followed by the process id in a staging directory's name (`NAME` cut short
/// where a long one would pass the length a file name may have: [`crate::io_error::hidden_name`]).
fn hidden_pid_prefix(name: &OsStr, kind: &str) -> String {
    format!("{}-", crate::io_error::hidden_name(name, kind, PID_ROOM).to_string_lossy())
}

/// A hyphen and a process id of up to 10 digits, after a hidden name.
const PID_ROOM: usize = 11;

fn hidden_pid_name(name: &OsStr, kind: &str, pid: u32) -> String {
    format!("{}{pid}", hidden_pid_prefix(name, kind))
}

fn staging_name(name: &OsStr, pid: u32) -> String {
    hidden_pid_name(name, STAGING, pid)
}

/// The process id in a hidden name of `kind` for output `name`, if `file` is one.
fn hidden_pid(file: &OsStr, name: &OsStr, kind: &str) -> Option<u32> {
    let digits = file.to_str()?.strip_prefix(&hidden_pid_prefix(name, kind))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` is gone: `kill(pid, 0)` fails with ESRCH. Anything else (it exists,
/// it belongs to another user, an id that is not a single process) counts as alive.
fn process_is_gone(pid: u32) -> bool {
    // 0 and ids above i32::MAX would name process groups, not one process.
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let result = unsafe { libc::kill(pid, 0) };
    result == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Remove the staging directories of output `name` in `parent` that killed or crashed
/// preparations left behind: those whose process is gone, made on this host. A live process's
/// directory, or one made on another host, is left alone; each removal is logged.
fn remove_stale(parent: &Path, name: &OsStr) -> Result<(), DataError> {
    let io = |source| DataError::Io(PathIo { path: parent.to_path_buf(), source });
    let here = crate::dist::hostname();
    restore_aside(parent, name)?;
    for entry in std::fs::read_dir(parent).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(pid) = hidden_pid(&entry.file_name(), name, STAGING) else { continue };
        let path = entry.path();
        // Not through a symbolic link, and not our own (`Staging::new` handles that).
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir || pid == std::process::id() || !process_is_gone(pid) {
            continue;
        }
        // Without the file: killed before writing it, or made by an older micn; both local.
        if let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) {
            let owner = owner.trim_end();
            if owner != here {
                tracing::warn!(
                    "{}: left alone: the staging directory of this command on host {owner} (this is {here}); remove it by hand once it no longer runs there",
                    path.display()
                );
                continue;
            }
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::warn!(
                "{}: removed the staging directory of an earlier run of this command that did not finish (its process {pid} is gone)",
                path.display()
            ),
            // It does not stop this preparation, which builds in its own directory.
            Err(e) => tracing::warn!(
                "{}: could not remove the staging directory of an earlier run of this command that did not finish (process {pid}): {e}",
                path.display()
            ),
        }
    }
    Ok(())
}

/// An earlier output of `name` in `parent` that a commit killed between its two renames left
/// aside (a file system that cannot swap two names: [`Staging::commit`]): put back at `name`
/// when nothing is there (the new output never moved in), else removed; said either way. Under
/// the commit lock, so that a live commit's output aside (on another host, whose process ids
/// mean nothing here) is never taken.
fn restore_aside(parent: &Path, name: &OsStr) -> Result<(), DataError> {
    let out = parent.join(name);
    let aside: Vec<(PathBuf, u32)> = std::fs::read_dir(parent)
        .with_path(parent)?
        .flatten()
        .filter_map(|entry| Some((entry.path(), hidden_pid(&entry.file_name(), name, ASIDE)?)))
        .filter(|(path, pid)| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) && process_is_gone(*pid))
        .collect();
    if aside.is_empty() {
        return Ok(());
    }
    let _committing = commit_lock(&out);
    for (path, pid) in aside {
        if !path.exists() {
            continue;
        }
        if std::fs::symlink_metadata(&out).is_err() {
            std::fs::rename(&path, &out).with_path(&out)?;
            tracing::warn!(
                "{}: put back the earlier output that a run of this command (process {pid}, gone) had moved aside to {} when it was stopped",
                out.display(),
                path.display()
            );
        } else {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::warn!(
                    "{}: removed the earlier output that a stopped run of this command (process {pid}) had replaced",
                    path.display()
                ),
                Err(e) => tracing::warn!("{}: could not remove the output a stopped run replaced: {e}", path.display()),
            }
        }
    }
    Ok(())
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Not committed: an error happened; leave nothing behind.
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A source file's entry in `dataset.json`.
pub(crate) fn source_entry(s: &FileSummary) -> serde_json::Value {
    json!({
        "file": s.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "bytes": s.bytes,
        "raw_bytes": s.raw_bytes,
        "xxh3": s.xxh3,
        "lines": s.lines,
        "skipped": s.issues.counts,
        "first_skipped_lines": s.issues.first_lines,
    })
}

/// Warnings for skipped lines, one per kind, naming the file. (A cut or corrupt compressed
/// stream is an error, never a warning: see [`input::parse_lines`].)
pub(crate) fn issue_warnings(s: &FileSummary) -> Vec<String> {
    s.issues.summary().into_iter().map(|line| format!("{}: skipped {line}", s.path.display())).collect()
}

/// One line of a sequences file: a user and its items, in time order.
fn parse_sequence(line: &str) -> Result<(String, Vec<String>), input::Bad> {
    let mut tokens = line.split_whitespace();
    let user = tokens.next().unwrap_or_default().to_string();
    let items: Vec<String> = tokens.map(String::from).collect();
    if items.is_empty() {
        return Err(input::Bad::new(BadKind::Malformed, "expected `user item item …`: a user and at least one item"));
    }
    Ok((user, items))
}

/// An attributes file (`{"item": [attribute ids]}`): every sequenced item's list goes to the
/// attribute table (at most `sequences.max_attributes` columns), and with
/// `category_attribute = Some(k)` its k-th attribute becomes its category. Returns the file's
/// summary and, when categories were taken, the number of items the file gives none for.
fn read_attributes(
    path: &Path,
    corpus: &mut Corpus,
    sequences: Sequences,
    strictness: Strictness,
    warnings: &mut Vec<String>,
) -> Result<(FileSummary, Option<u64>), DataError> {
    let (text, summary) = input::read_text(path)?;
    let invalid = |message: String| DataError::Invalid { path: path.to_path_buf(), message };
    let FirstOfEachItem { lists: attributes, repeated } =
        serde_json::from_str(text.strip_prefix('\u{feff}').unwrap_or(&text))
            .map_err(|e| invalid(format!("expected {{\"item\": [attribute ids]}}: {e}")))?;
    if let Some(first) = repeated.first() {
        let said = format!("{} repeated item lists (first: item {first:?})", repeated.len());
        if strictness == Strictness::Strict {
            return Err(invalid(format!("{said} (--strict)")));
        }
        warnings.push(format!("{}: {said}; the first list of each item is kept", path.display()));
    }
    let mut items: Vec<&String> = attributes.keys().collect();
    items.sort();
    for item in items {
        // A number beyond 64 bits, or with a fraction, is read as a float: two of them could
        // print alike and merge.
        if let Some(v) = attributes[item].iter().find(|v| !(v.is_u64() || v.is_i64() || v.is_string())) {
            return Err(invalid(format!("item {item:?}: attribute {v} is not an id (an integer or a string)")));
        }
    }
    let text_of = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let lists: Vec<Vec<String>> = (0..corpus.items.len() as u32)
        .map(|item| attributes.get(corpus.items.name(item)).map_or_else(Vec::new, |a| a.iter().map(text_of).collect()))
        .collect();
    let covered = lists.iter().filter(|l| !l.is_empty()).count();
    if covered == 0 {
        return Err(invalid(format!(
            "none of the {} sequenced items has an attribute here: the file of another dataset?",
            corpus.items.len()
        )));
    }
    if covered < lists.len() {
        warnings.push(format!(
            "{}: {} of {} sequenced items have no attributes (their row of the attribute table is empty)",
            path.display(),
            lists.len() - covered,
            lists.len()
        ));
    }
    let raw = RawAttributes::from_lists(lists, sequences.max_attributes);
    if raw.cut > 0 {
        warnings.push(format!(
            "{}: {} items have more than {} attributes (the longest {}): the attribute table keeps their first {} (--max-attributes)",
            path.display(),
            raw.cut,
            raw.fields.len(),
            raw.longest,
            raw.fields.len()
        ));
    }
    corpus.attributes = Some(raw);
    let Some(k) = sequences.category_attribute else { return Ok((summary, None)) };
    let mut without = 0u64;
    for item in 0..corpus.items.len() as u32 {
        let name = corpus.items.name(item).to_string();
        let category = attributes.get(&name).and_then(|a| a.get(k)).map(text_of);
        match category {
            Some(c) => corpus.item_cat[item as usize] = corpus.cats.intern(&format!("attribute {c}")),
            None => without += 1,
        }
    }
    if without > 0 {
        warnings.push(format!(
            "{}: {without} of {} sequenced items have no attribute at position {k}: category `{DEFAULT_CAT}`",
            path.display(),
            corpus.items.len()
        ));
    }
    Ok((summary, Some(without)))
}

/// An attributes file's lists by item: the first list of an item listed twice (as a repeated
/// review or meta line keeps its first), and the items listed again, in file order.
#[derive(Default)]
struct FirstOfEachItem {
    lists: std::collections::HashMap<String, Vec<serde_json::Value>>,
    repeated: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for FirstOfEachItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FirstOfEachItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of attribute lists by item")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut read = FirstOfEachItem::default();
                while let Some((item, list)) = map.next_entry::<String, Vec<serde_json::Value>>()? {
                    match read.lists.entry(item) {
                        std::collections::hash_map::Entry::Occupied(e) => read.repeated.push(e.key().clone()),
                        std::collections::hash_map::Entry::Vacant(e) => drop(e.insert(list)),
                    }
                }
                Ok(read)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Duplicate (user, item) reviews: the first in file order is kept; the others are counted as
/// bad lines, or with `--strict` the first one is fatal. Only reviews: one user reviews an item
/// once, while sequences and interaction logs record every click, a repeated one too. In 2023's
/// files, where the item is the product (`parent_asin`), a user's reviews of two of its variants
/// (sizes, colours) are one item reviewed twice: the first is kept, said, never a bad line.
fn drop_duplicates(
    corpus: &mut Corpus,
    job: &AmazonJob,
    reviews_summary: &mut FileSummary,
    warnings: &mut Vec<String>,
) -> Result<(), DataError> {
    let mut order: Vec<u32> = (0..corpus.reviews.len() as u32).collect();
    order.sort_unstable_by_key(|&i| {
        let r = &corpus.reviews[i as usize];
        (r.user, r.item, r.line, r.time)
    });
    let mut duplicate = vec![false; corpus.reviews.len()];
    for w in order.windows(2) {
        let (a, b) = (&corpus.reviews[w[0] as usize], &corpus.reviews[w[1] as usize]);
        if a.user == b.user && a.item == b.item {
            duplicate[w[1] as usize] = true;
        }
    }
    if let Some(first) = duplicate.iter().position(|&d| d) {
        let line = corpus.reviews[first].line;
        if job.release == Release::Amazon2023 {
            let n = duplicate.iter().filter(|&&d| d).count();
            warnings.push(format!(
                "{}: {n} reviews of a product the same user reviewed before (another variant of one \
                 `parent_asin`; first: line {line}); the first review of each is kept",
                job.reviews.display()
            ));
        } else if job.strictness == Strictness::Strict {
            return Err(DataError::BadLine {
                path: job.reviews.clone(),
                line,
                kind: BadKind::Duplicate,
                detail: "the same user reviewed the same item earlier in the file".into(),
            });
        } else {
            for (r, _) in corpus.reviews.iter().zip(&duplicate).filter(|(_, &d)| d) {
                reviews_summary.issues.record(BadKind::Duplicate, r.line, "same user and item as an earlier review");
            }
        }
        let mut keep = duplicate.iter().map(|d| !d);
        corpus.reviews.retain(|_| keep.next().expect("one flag per review"));
    }
    Ok(())
}

/// Read reviews and meta into an interned corpus; also the file summaries and, when there is a
/// meta file, the number of reviewed items it does not describe.
fn read_corpus(
    job: &AmazonJob,
    warnings: &mut Vec<String>,
) -> Result<(Corpus, Vec<FileSummary>, Option<u64>), DataError> {
    let mut corpus = Corpus::default();
    let default_cat = corpus.cats.intern(DEFAULT_CAT);
    let mut reviews_summary = match job.layout {
        Layout::Reviews => {
            input::parse_lines(&job.reviews, job.strictness, amazon::review_parser(job.release), |r, line| {
                corpus.push(&r, line)
            })?
        }
        Layout::Interactions => {
            let mut columns = interactions::Columns::default();
            let summary =
                input::parse_lines_checked(&job.reviews, job.strictness, interactions::split_row, |row, line| {
                    if let Some(r) = columns.read(row)? {
                        corpus.push(&r, line);
                    }
                    Ok(())
                })?;
            if let Some(columns) = columns.describe() {
                tracing::info!("{}: {columns}", job.reviews.display());
            }
            summary
        }
        Layout::Sequences(_) => {
            // A user's items in line order; a user on several lines continues where it stopped.
            let mut next_time: std::collections::HashMap<u32, i64> = Default::default();
            input::parse_lines(&job.reviews, job.strictness, parse_sequence, |(user, items), line| {
                let user = corpus.users.intern(&user);
                let time = next_time.entry(user).or_default();
                for item in items {
                    let item = corpus.items.intern(&item);
                    corpus.reviews.push(ReviewRef { user, item, time: *time, line });
                    *time += 1;
                }
            })?
        }
    };
    if corpus.reviews.is_empty() {
        let records = match job.layout {
            Layout::Reviews => "review",
            Layout::Sequences(_) => "sequence",
            Layout::Interactions => "interaction",
        };
        let why = match &reviews_summary.issues.first_problem {
            Some((line, problem)) => format!("no valid {records} (line {line}: {problem})"),
            None => format!("the file holds no {records}s"),
        };
        return Err(DataError::Invalid { path: job.reviews.clone(), message: why });
    }
    if job.layout == Layout::Reviews {
        drop_duplicates(&mut corpus, job, &mut reviews_summary, warnings)?;
    }

    corpus.item_cat = vec![default_cat; corpus.items.len()];
    warnings.extend(issue_warnings(&reviews_summary));
    if job.layout == Layout::Interactions && job.meta.is_none() {
        warnings.push(format!("interactions carry no categories: every item is in category `{DEFAULT_CAT}`"));
        return Ok((corpus, vec![reviews_summary], None));
    }
    if let Layout::Sequences(sequences) = job.layout {
        let mut sources = vec![reviews_summary];
        let without_category = match &job.meta {
            Some(path) => {
                let (summary, without_category) =
                    read_attributes(path, &mut corpus, sequences, job.strictness, warnings)?;
                sources.push(summary);
                without_category
            }
            None => None,
        };
        if sequences.category_attribute.is_none() || job.meta.is_none() {
            warnings.push(format!("no category attribute: every item is in category `{DEFAULT_CAT}`"));
        }
        return Ok((corpus, sources, without_category));
    }
    let Some(meta_path) = &job.meta else {
        warnings
            .push(format!("no --meta: every item is in category `{DEFAULT_CAT}` (the models see no category signal)"));
        return Ok((corpus, vec![reviews_summary], None));
    };
    let mut has_meta = vec![false; corpus.items.len()];
    let mut good_meta = 0u64;
    let mut attributes = RawAttributes::for_meta(corpus.items.len());
    // A reviewed item described again on a later line: the first line is kept, as for reviews.
    let (mut repeated, mut first_repeat) = (0u64, None);
    let mut without_category = 0u64;
    // Interactions name no release: each meta line is read as the release that wrote it.
    let (parse_meta, meta_form) = match job.layout {
        Layout::Interactions => (amazon::parse_meta_any as fn(&str) -> _, "Amazon (2014, 2018 or 2023)"),
        _ => (amazon::meta_parser(job.release), job.release.meta_form()),
    };
    let meta_summary = input::parse_lines(meta_path, job.strictness, parse_meta, |m, line| {
        good_meta += 1;
        if let Some(item) = corpus.items.get(&m.item) {
            if has_meta[item as usize] {
                repeated += 1;
                first_repeat.get_or_insert((line, m.item));
                return;
            }
            has_meta[item as usize] = true;
            attributes.set_meta(item, &m);
            match m.category {
                Some(cat) => corpus.item_cat[item as usize] = corpus.cats.intern(&cat),
                None => without_category += 1,
            }
        }
    })?;
    corpus.attributes = Some(attributes);
    let bad_meta = meta_summary.issues.total();
    if good_meta == 0 && bad_meta == 0 {
        let message = match meta_summary.lines {
            0 => "the meta file is empty".to_string(),
            lines => format!("the meta file is empty: its {lines} lines are blank"),
        };
        return Err(DataError::Invalid { path: meta_path.clone(), message });
    }
    if good_meta == 0 || bad_meta > good_meta {
        let example = meta_summary
            .issues
            .first_problem
            .as_ref()
            .map(|(line, p)| format!(" (first: line {line}: {p})"))
            .unwrap_or_default();
        return Err(DataError::Invalid {
            path: meta_path.clone(),
            message: format!(
                "does not look like a {meta_form} meta file: {bad_meta} of {} lines rejected{example}",
                meta_summary.lines
            ),
        });
    }
    if let Some((line, item)) = first_repeat {
        let said = format!("{repeated} meta lines describe a reviewed item again (first: line {line}, item {item})");
        if job.strictness == Strictness::Strict {
            return Err(DataError::Invalid { path: meta_path.clone(), message: format!("{said} (--strict)") });
        }
        warnings.push(format!("{}: {said}; the first line of each item is kept", meta_path.display()));
    }
    let without_meta = has_meta.iter().filter(|&&m| !m).count() as u64;
    if without_meta == has_meta.len() as u64 {
        return Err(DataError::Invalid {
            path: meta_path.clone(),
            message: format!(
                "none of the {without_meta} reviewed items has a meta line here ({good_meta} lines describe other \
                 items): the meta file of another dataset?"
            ),
        });
    }
    if without_meta > 0 {
        warnings.push(format!(
            "{} of {} reviewed items have no meta line: category `{DEFAULT_CAT}`",
            without_meta,
            has_meta.len()
        ));
    }
    let described = has_meta.len() as u64 - without_meta;
    if without_category == described {
        warnings.push(format!(
            "{}: none of the {described} reviewed items it describes has a category there: every item is in \
             category `{DEFAULT_CAT}` (the models see no category signal)",
            meta_path.display()
        ));
    } else if without_category > 0 {
        warnings.push(format!(
            "{}: {without_category} of the {described} reviewed items it describes have no category there: \
             category `{DEFAULT_CAT}`",
            meta_path.display()
        ));
    }
    warnings.extend(issue_warnings(&meta_summary));
    Ok((corpus, vec![reviews_summary, meta_summary], Some(without_meta)))
}

/// The generator's oracle for these reviews: `--oracle`, else the one `micn synth` wrote beside
/// them. One generated with other reviews (another seed's, whose names are the same indices) is
/// refused when given, and left out, said, when found beside them.
fn read_oracle(
    job: &AmazonJob,
    reviews: &FileSummary,
    warnings: &mut Vec<String>,
) -> Result<Option<(PathBuf, synth::OracleModel)>, DataError> {
    let beside = job.reviews.with_file_name(synth::ORACLE_FILE);
    let path = match &job.oracle {
        Some(path) => path.clone(),
        None if beside.exists() => beside,
        None => return Ok(None),
    };
    let model = synth::read_oracle(&path)?;
    let read = synth::WrittenReviews { lines: reviews.lines, bytes: reviews.raw_bytes };
    match model.reviews {
        Some(written) if written != read => {
            let message = format!(
                "generated with other reviews ({} lines, {} bytes) than {}'s ({} lines, {} bytes): another `micn \
                 synth` run's oracle",
                written.lines,
                written.bytes,
                job.reviews.display(),
                read.lines,
                read.bytes
            );
            if job.oracle.is_some() {
                return Err(DataError::Invalid { path, message });
            }
            warnings.push(format!("{}: {message}; no oracle AUC", path.display()));
            Ok(None)
        }
        _ => Ok(Some((path, model))),
    }
}

/// Oracle score of every test sample: ln p(item | user) − ln p_negative(item).
fn oracle_scores(model: &OracleModel, corpus: &Corpus, test: &Samples, protocol: Protocol) -> Result<Vec<f32>, String> {
    let mut review_counts = vec![0u64; corpus.items.len()];
    corpus.reviews.iter().for_each(|r| review_counts[r.item as usize] += 1);
    let total = corpus.reviews.len() as f64;
    (0..test.len())
        .map(|i| {
            let (user, item) = (corpus.users.name(test.user_keys[i]), corpus.items.name(test.items[i]));
            let p = model
                .next_item_probability(user, item)
                .ok_or_else(|| format!("the oracle model does not know user {user} or item {item}"))?;
            let negative = match protocol {
                Protocol::Dien => review_counts[test.items[i] as usize] as f64 / total,
                Protocol::Din => 1.0, // uniform: the same for every item
            };
            Ok((p.max(1e-300).ln() - negative.ln()) as f32)
        })
        .collect()
}

/// What the protocol left out, said (or, with `--strict`, refused), and a dataset with no sample
/// at all refused.
fn check_built(job: &AmazonJob, corpus: &Corpus, built: &Built, warnings: &mut Vec<String>) -> Result<(), DataError> {
    // `din` users left without a negative: like a bad line, fatal with --strict, else left out,
    // counted in dataset.json and reported naming the first.
    if let Some(&first) = built.without_negatives.first() {
        let others = match built.without_negatives.len() - 1 {
            0 => String::new(),
            1 => " (and 1 other user)".into(),
            n => format!(" (and {n} other users)"),
        };
        let what = format!(
            "user {}{others} reviewed every one of the {} items, so the `din` protocol has no negative to draw for them",
            corpus.users.name(first),
            corpus.items.len()
        );
        if job.strictness == Strictness::Strict {
            return Err(DataError::Invalid {
                path: job.reviews.clone(),
                message: format!("{what}; without --strict their samples are left out"),
            });
        }
        if !(built.train.is_empty() && built.test.is_empty()) {
            warnings.push(format!(
                "{}: {what}: their samples were left out (notes.protocol_summary.users_without_negatives in dataset.json)",
                job.reviews.display()
            ));
        }
    }
    if built.train.is_empty() && built.test.is_empty() {
        let without_negatives = match built.summary.users_without_negatives {
            0 => String::new(),
            n => format!(", and under `din` an item they never reviewed: {n} reviewed every item"),
        };
        return Err(DataError::Invalid {
            path: job.reviews.clone(),
            message: format!("too little data: no sample at all (users need at least 2 reviews{without_negatives})"),
        });
    }
    // A small file (such as the 290-line real fixture, where one user has two reviews) can leave
    // one split empty: a valid dataset for inspection, not one to train on; say so, loudly.
    for (name, split) in [("train", &built.train), ("test", &built.test)] {
        if split.is_empty() {
            warnings.push(format!(
                "{}: the {name} split is empty (users with at least 2 reviews: {})",
                job.reviews.display(),
                built.summary.users_with_samples
            ));
        }
    }
    Ok(())
}

/// Run a preparation from the raw Amazon dumps.
pub fn prepare_amazon(job: &AmazonJob, out: &Path) -> Result<Report, DataError> {
    let started = Instant::now();
    let staging = Staging::new(out)?;
    let mut warnings = Vec::new();
    let (corpus, sources, without_meta) = read_corpus(job, &mut warnings)?;
    let read_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        lines = sources[0].lines,
        reviews = corpus.reviews.len(),
        raw_bytes = sources[0].raw_bytes,
        users = corpus.users.len(),
        items = corpus.items.len(),
        seconds = read_secs,
        "reviews read"
    );
    let built = protocol::build(&corpus, job.protocol, job.max_hist_len, job.seed)
        .map_err(|e| DataError::Invalid { path: job.reviews.clone(), message: e.to_string() })?;
    check_built(job, &corpus, &built, &mut warnings)?;
    tracing::info!(
        train = built.train.len(),
        test = built.test.len(),
        seconds = started.elapsed().as_secs_f64() - read_secs,
        "samples built"
    );
    let oracle = match read_oracle(job, &sources[0], &mut warnings)? {
        Some((path, model)) => Some(
            oracle_scores(&model, &corpus, &built.test, job.protocol)
                .map_err(|message| DataError::Invalid { path, message })?,
        ),
        None => None,
    };
    let (vocab, maps) = vocab::build(&built.train, &corpus.users, &corpus.items, &corpus.cats, &corpus.item_cat);
    let attributes = corpus.attributes.as_ref().map(|raw| ItemAttributes::build(raw, &maps.items, vocab.items.len()));
    // Every interaction read, per vocabulary item (ComiRec's MostPopular ranks by these).
    let mut item_interactions = vec![0u64; vocab.items.len()];
    for review in &corpus.reviews {
        match maps.items[review.item as usize] {
            0 => {}
            id => item_interactions[id as usize] += 1,
        }
    }
    // The reviews and interners are no longer needed: free them before the archives are built.
    let reviews = corpus.reviews.len();
    drop(corpus);
    let protocol::Built { train, test, summary, .. } = built;
    let train = train.remap(&maps.users, &maps.items, &maps.cats);
    let test = test.remap(&maps.users, &maps.items, &maps.cats);
    let source = match job.layout {
        Layout::Sequences(_) => "sequences".to_string(),
        Layout::Interactions => "interactions".to_string(),
        Layout::Reviews => format!("{:?}", job.release).to_lowercase(),
    };
    let (categories, notes) = match (without_meta, job.layout) {
        (Some(n), Layout::Reviews) => (
            CategorySource::Meta,
            json!({ "protocol_summary": summary, "items_without_meta": n, "release": job.release }),
        ),
        (Some(n), Layout::Interactions) => {
            (CategorySource::Meta, json!({ "protocol_summary": summary, "items_without_meta": n, "source": source }))
        }
        (Some(n), Layout::Sequences(_)) => (
            CategorySource::Attributes,
            json!({ "protocol_summary": summary, "items_without_category_attribute": n, "source": source }),
        ),
        (None, Layout::Reviews) => {
            (CategorySource::WithoutMeta, json!({ "protocol_summary": summary, "release": job.release }))
        }
        (None, _) => (CategorySource::WithoutMeta, json!({ "protocol_summary": summary, "source": source })),
    };
    input::check_unreplaced(&sources)?;
    let meta = write_dataset_with(
        &staging,
        categories,
        DatasetParts {
            source,
            protocol: format!("{:?}", job.protocol).to_lowercase(),
            seed: job.seed,
            max_hist_len: job.max_hist_len,
            reviews: reviews as u64,
            sources: sources.iter().map(source_entry).collect(),
            vocab: &vocab,
            train: &train,
            test: &test,
            oracle: oracle.as_deref(),
            attributes: attributes.as_ref(),
            item_interactions: Some(&item_interactions),
            notes,
        },
    )?;
    staging.commit()?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), peak_rss_bytes = peak_rss_bytes(), "dataset written");
    let raw_bytes = sources[0].raw_bytes as f64;
    Ok(Report {
        out: out.to_path_buf(),
        meta,
        seconds: started.elapsed().as_secs_f64(),
        review_mb_per_s: raw_bytes / 1e6 / read_secs.max(1e-9),
        reviews_per_s: reviews as f64 / read_secs.max(1e-9),
        warnings,
    })
}

/// This process's peak resident set so far (`VmHWM`), where the platform says (Linux).
/// `micn bench prepare` reads it from the log: a parent cannot measure it afterwards, since a
/// child started by `posix_spawn` (vfork) inherits the parent's high-water mark in `ru_maxrss`.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Everything that goes into a dataset directory.
pub(crate) struct DatasetParts<'a> {
    pub source: String,
    pub protocol: String,
    pub seed: u64,
    pub max_hist_len: usize,
    pub reviews: u64,
    pub sources: Vec<serde_json::Value>,
    pub vocab: &'a Vocabularies,
    pub train: &'a Samples,
    pub test: &'a Samples,
    pub oracle: Option<&'a [f32]>,
    pub attributes: Option<&'a ItemAttributes>,
    /// Every interaction read per item id, where the input was reviews or interactions.
    pub item_interactions: Option<&'a [u64]>,
    pub notes: serde_json::Value,
}

/// Write archives, vocabularies, the oracle and `dataset.json` into the staging directory, for
/// DIEN's files (whose lines carry the categories).
pub(crate) fn write_dataset(staging: &Staging, parts: DatasetParts<'_>) -> Result<DatasetMeta, DataError> {
    write_dataset_with(staging, CategorySource::DienFiles, parts)
}

/// [`write_dataset`] with the categories' origin.
fn write_dataset_with(
    staging: &Staging,
    categories: CategorySource,
    parts: DatasetParts<'_>,
) -> Result<DatasetMeta, DataError> {
    // A file written, with its entry in dataset.json.
    let written = |name: &str, bytes: &[u8]| -> Result<FileEntry, DataError> {
        staging.write(name, bytes)?;
        Ok(FileEntry::of(bytes))
    };
    // One archive's bytes at a time (at Books size each is as large as its samples).
    let archive = |name: &str, samples: &Samples| -> Result<FileEntry, DataError> {
        let bytes = archive::to_bytes(samples)
            .map_err(|message| DataError::Invalid { path: staging.out.join(name), message })?;
        written(name, &bytes)
    };
    let train_entry = archive("train.rkyv", parts.train)?;
    let test_entry = archive("test.rkyv", parts.test)?;
    let [users, items, cats] = parts.vocab.to_files().map(|(name, bytes)| written(name, &bytes));
    let vocabularies = VocabFiles { users: users?, items: items?, cats: cats? };
    let oracle = parts
        .oracle
        .map(|scores| written("oracle.f32", &scores.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()))
        .transpose()?;
    let oracle_auc = parts.oracle.and_then(|scores| crate::metrics::auc(scores, &parts.test.labels));
    let attributes = match parts.attributes {
        Some(table) => {
            let [(tsv_name, tsv), (table_name, bytes)] = table.to_files();
            Some(AttributeFiles {
                fields: table.fields.clone(),
                values: written(tsv_name, &tsv)?,
                table: written(table_name, &bytes)?,
            })
        }
        None => None,
    };
    let item_interactions = parts
        .item_interactions
        .map(|counts| {
            written(archive::INTERACTIONS_FILE, &counts.iter().flat_map(|c| c.to_le_bytes()).collect::<Vec<u8>>())
        })
        .transpose()?;
    let meta = DatasetMeta {
        format_version: archive::FORMAT_VERSION,
        source: parts.source,
        protocol: parts.protocol,
        seed: parts.seed,
        max_hist_len: parts.max_hist_len,
        counts: Counts {
            reviews: parts.reviews,
            train_samples: parts.train.len() as u64,
            test_samples: parts.test.len() as u64,
            users: parts.vocab.users.len() as u64,
            items: parts.vocab.items.len() as u64,
            cats: parts.vocab.cats.len() as u64,
        },
        categories,
        sources: parts.sources,
        train: train_entry,
        test: test_entry,
        vocabularies,
        oracle,
        attributes,
        item_interactions,
        oracle_auc,
        notes: parts.notes,
    };
    let text = serde_json::to_string_pretty(&meta).expect("plain data") + "\n";
    staging.write("dataset.json", text.as_bytes())?;
    Ok(meta)
}

impl Issues {
    /// Whether any line was skipped.
    pub fn any(&self) -> bool {
        self.total() > 0
    }
}

/// Whether `meta` is of a dataset [`synthetic_dataset`] made: the generator's 2014 reviews file
/// its input.
fn made_by_synthetic_dataset(meta: &DatasetMeta) -> bool {
    meta.source == "amazon2014" && meta.sources.first().is_some_and(|s| s["file"] == synth::REVIEWS_FILE)
}

/// A prepared synthetic dataset at `work_dir/data` (generated from `synth` through the raw 2014
/// files and the normal preparation, the raw files removed afterwards); reused when present. A
/// dataset of other input there is refused, never replaced.
pub fn synthetic_dataset(
    synth_cfg: &synth::SynthConfig,
    protocol: Protocol,
    max_hist_len: usize,
    work_dir: &Path,
) -> Result<PathBuf, DataError> {
    let data = work_dir.join("data");
    if data.join("dataset.json").exists() {
        // Refuse an older format here, where the fix is plain, rather than at the first open.
        match DatasetMeta::read(&data) {
            // A user's own dataset where the benchmark keeps its synthetic one: neither used nor
            // replaced.
            Ok(meta) if !made_by_synthetic_dataset(&meta) => {
                let file = meta.sources.first().and_then(|s| s["file"].as_str()).unwrap_or("?").to_string();
                return Err(DataError::Invalid {
                    path: data.clone(),
                    message: format!(
                        "a dataset this benchmark did not make ({} data, from {file}) is where it keeps its \
                         synthetic one: give it another work directory",
                        meta.source
                    ),
                });
            }
            Ok(meta) if meta.attributes.is_some() => {
                tracing::info!(
                    reviews = meta.counts.reviews,
                    "{}: the synthetic dataset made here earlier is used again (remove it to make one anew)",
                    data.display()
                );
                return Ok(data);
            }
            // Made before the item-attribute table (which CAMN needs): the same generator's files
            // again, with it.
            Ok(_) => {
                tracing::warn!("{}: made before the item-attribute table; making it again", data.display());
                std::fs::remove_dir_all(&data).with_path(&data)?;
            }
            Err(e) => {
                return Err(DataError::Invalid {
                    path: data.clone(),
                    message: format!(
                        "cannot reuse the synthetic dataset here ({e}); remove this directory and run again"
                    ),
                })
            }
        }
    }
    let raw = work_dir.join("raw");
    synth::generate(synth_cfg, &raw)?;
    let job = AmazonJob {
        release: Release::Amazon2014,
        reviews: raw.join(synth::REVIEWS_FILE),
        meta: Some(raw.join(synth::META_FILE)),
        protocol,
        max_hist_len,
        seed: synth_cfg.seed,
        strictness: Strictness::Lenient,
        oracle: None,
        layout: Layout::Reviews,
    };
    prepare_amazon(&job, &data)?;
    std::fs::remove_dir_all(&raw).with_path(&raw)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id of a process that has ended and been reaped.
    fn gone_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().expect("spawn `true`");
        let pid = child.id();
        child.wait().expect("wait for `true`");
        pid
    }

    #[test]
    fn staging_names_give_back_their_process_id_and_nothing_else_matches() {
        let name = OsStr::new("data");
        assert_eq!(staging_name(name, 4242), ".data.partial-4242");
        assert_eq!(hidden_pid(OsStr::new(".data.partial-4242"), name, STAGING), Some(4242));
        for other in [".data.partial-", ".data.partial-12x", ".data.partial--3", ".data.partial-+3", ".dat.partial-7"] {
            assert_eq!(hidden_pid(OsStr::new(other), name, STAGING), None, "{other}");
        }
        assert_eq!(hidden_pid(OsStr::new(".data.partial-7"), OsStr::new("dat"), STAGING), None);
        assert_eq!(hidden_pid(OsStr::new(".data.partial-99999999999"), name, STAGING), None, "beyond u32");
    }

    #[test]
    fn only_a_reaped_process_counts_as_gone() {
        assert!(!process_is_gone(std::process::id()), "this process");
        assert!(!process_is_gone(0), "0 would name our process group");
        assert!(!process_is_gone(u32::MAX), "-1 would name every process");
        assert!(process_is_gone(gone_pid()));
    }

    #[test]
    fn stale_staging_of_the_same_output_is_removed_and_everything_else_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let path = tmp.path().join(name);
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("train.rkyv"), b"half").unwrap();
            path
        };
        let dead = gone_pid();
        let stale = dir(&format!(".out.partial-{dead}"));
        let alive = dir(&format!(".out.partial-{}", std::process::id()));
        let other_output = dir(&format!(".other.partial-{dead}"));
        let other_host = dir(&format!(".out.partial-{}", gone_pid()));
        std::fs::write(other_host.join(OWNER_FILE), "a-host-that-is-not-this-one\n").unwrap();
        let local = dir(&format!(".out.partial-{}", gone_pid()));
        std::fs::write(local.join(OWNER_FILE), format!("{}\n", crate::dist::hostname())).unwrap();
        let file = tmp.path().join(format!(".out.partial-{}", gone_pid()));
        std::fs::write(&file, b"not a directory").unwrap();

        remove_stale(tmp.path(), OsStr::new("out")).unwrap();
        assert!(!stale.exists() && !local.exists(), "dead processes' directories on this host are removed");
        for kept in [&alive, &other_output, &other_host, &file] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
    }

    #[test]
    fn an_output_is_replaced_whole_with_or_without_the_file_system_s_swap() {
        for swaps in [true, false] {
            crate::io_error::NO_EXCHANGE.set(!swaps);
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            for content in [&b"first"[..], b"second"] {
                let staging = Staging::replacing(&out, &["export.json"]).unwrap();
                staging.write("export.json", content).unwrap();
                staging.commit().unwrap();
                assert_eq!(std::fs::read(out.join("export.json")).unwrap(), content, "swaps: {swaps}");
            }
            let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["out"], "nothing else is left (swaps: {swaps})");
        }
        crate::io_error::NO_EXCHANGE.set(false);
    }

    #[test]
    fn an_earlier_output_a_killed_commit_left_aside_is_put_back_or_removed_by_the_next_run() {
        let tmp = tempfile::tempdir().unwrap();
        let aside = |name: &str, pid: u32| {
            let path = tmp.path().join(hidden_pid_name(OsStr::new(name), ASIDE, pid));
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("export.json"), b"earlier").unwrap();
            path
        };
        // Killed between its renames: `out` gone, the earlier output aside. The next run puts it
        // back before it builds its own, which then replaces it.
        let left = aside("out", gone_pid());
        let staging = Staging::replacing(&tmp.path().join("out"), &["export.json"]).unwrap();
        assert!(!left.exists());
        assert_eq!(std::fs::read(tmp.path().join("out/export.json")).unwrap(), b"earlier");
        staging.write("export.json", b"new").unwrap();
        staging.commit().unwrap();
        assert_eq!(std::fs::read(tmp.path().join("out/export.json")).unwrap(), b"new");
        // Killed after the new one moved in: the earlier one is removed. A live process's is kept.
        let (replaced, live) = (aside("out", gone_pid()), aside("out", std::process::id()));
        drop(Staging::replacing(&tmp.path().join("out"), &["export.json"]).unwrap());
        assert!(!replaced.exists() && live.exists());
        assert_eq!(std::fs::read(tmp.path().join("out/export.json")).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "the output and the live process's directory alone: {names:?}");
    }

    #[test]
    fn an_output_named_through_a_link_replaces_what_the_link_names_and_the_link_stays() {
        let tmp = tempfile::tempdir().unwrap();
        // A link to an earlier output elsewhere (scratch space), and one to nothing yet.
        let (scratch, earlier) = (tmp.path().join("scratch"), tmp.path().join("scratch/raw"));
        std::fs::create_dir_all(&earlier).unwrap();
        std::fs::write(earlier.join("synth.json"), b"earlier").unwrap();
        let (link, dangling) = (tmp.path().join("raw"), tmp.path().join("new"));
        std::os::unix::fs::symlink(&earlier, &link).unwrap();
        std::os::unix::fs::symlink("scratch/new", &dangling).unwrap();
        // A link to a link to nothing yet, and a loop.
        let chained = tmp.path().join("chained");
        std::os::unix::fs::symlink("scratch/via", &chained).unwrap();
        std::os::unix::fs::symlink("newer", scratch.join("via")).unwrap();
        let trailing = PathBuf::from(format!("{}/", link.display()));
        let cases = [
            (&link, earlier.clone()),
            (&trailing, earlier.clone()),
            (&dangling, scratch.join("new")),
            (&chained, scratch.join("newer")),
        ];
        for (out, target) in cases {
            let staging = Staging::replacing(out, &["synth.json"]).unwrap();
            let beside = |p: &Path| std::fs::canonicalize(p.parent().unwrap()).unwrap();
            assert_eq!(beside(&staging.tmp), std::fs::canonicalize(&scratch).unwrap(), "{}", out.display());
            staging.write("synth.json", b"new").unwrap();
            staging.commit().unwrap();
            let named: PathBuf = out.components().collect();
            assert!(std::fs::symlink_metadata(&named).unwrap().file_type().is_symlink(), "{}", out.display());
            assert_eq!(std::fs::read(target.join("synth.json")).unwrap(), b"new", "{}", out.display());
        }
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::os::unix::fs::symlink("b", &a).unwrap();
        std::os::unix::fs::symlink("a", &b).unwrap();
        let e = Staging::new(&a).err().expect("a loop is refused").to_string();
        assert!(e.contains("Too many levels of symbolic links"), "{e}");
    }

    #[test]
    fn an_output_of_the_longest_name_a_file_may_have_is_built_and_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("d".repeat(255));
        for text in [&b"first"[..], b"second"] {
            let staging = Staging::replacing(&out, &["synth.json"]).unwrap();
            staging.write("synth.json", text).unwrap();
            staging.commit().unwrap();
            assert_eq!(std::fs::read(out.join("synth.json")).unwrap(), text);
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing left beside it");
    }

    #[test]
    fn an_output_is_taken_for_an_earlier_one_only_when_it_holds_nothing_the_command_does_not_write() {
        let tmp = tempfile::tempdir().unwrap();
        let written = ["export.json", "train/labels.npy", "train/users.npy", "test/labels.npy"];
        let out = tmp.path().join("out");
        let make = |files: &[&str]| {
            let _ = std::fs::remove_dir_all(&out);
            for file in files {
                let path = out.join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, "x").unwrap();
            }
        };
        let refusal = |files: &[&str]| {
            make(files);
            Staging::replacing(&out, &written).err().map(|e| e.to_string())
        };
        assert_eq!(refusal(&["export.json", "train/labels.npy", "test/labels.npy"]), None);
        assert_eq!(refusal(&["export.json"]), None);
        for (files, named) in [
            (&["export.json", "train/labels.npy", "train/mine.csv"][..], "train/mine.csv"),
            (&["export.json", "train/mine/data.bin"], "train/mine"),
            (&["export.json", "valid/labels.npy"], "valid/"),
            (&["export.json", "notes.txt"], "notes.txt"),
        ] {
            let said = refusal(files).unwrap_or_else(|| panic!("{files:?} taken for an earlier output"));
            assert!(said.contains(&format!("holds {named}, which this command does not write")), "{files:?}: {said}");
        }
        // A file where the command writes a directory.
        assert!(refusal(&["export.json", "train"]).is_some_and(|said| said.contains("holds train,")));
        // Without the command's mark, nothing is taken for its output.
        make(&["train/labels.npy"]);
        assert!(matches!(Staging::replacing(&out, &written), Err(DataError::OutputExists(_))));
    }

    #[test]
    fn a_committed_dataset_holds_no_staging_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let staging = Staging::new(&out).unwrap();
        assert_eq!(
            std::fs::read_to_string(staging.tmp.join(OWNER_FILE)).unwrap(),
            format!("{}\n", crate::dist::hostname())
        );
        staging.write("a.txt", b"a").unwrap();
        staging.commit().unwrap();
        let names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.txt"]);
    }

    #[test]
    fn an_output_another_process_committed_meanwhile_is_named_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let staging = Staging::new(&out).unwrap();
        staging.write("mine.txt", b"mine").unwrap();
        // A second preparation to the same --out finished first.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("theirs.txt"), "theirs").unwrap();
        let tmp_dir = staging.tmp.clone();
        let e = staging.commit().unwrap_err();
        assert!(matches!(e, DataError::OutputExists(ref p) if p == &out), "{e}");
        assert_eq!(std::fs::read_to_string(out.join("theirs.txt")).unwrap(), "theirs");
        assert!(!tmp_dir.exists(), "the staging directory is removed");
    }

    #[test]
    fn a_commit_waits_while_another_process_commits_into_the_same_directory() {
        use std::os::unix::io::AsRawFd as _;
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("report");
        for merging in [false, true] {
            let staging = if merging { Staging::merging(&out) } else { Staging::replacing(&out, &["a.txt"]) }.unwrap();
            staging.write("a.txt", if merging { b"merged" } else { b"replaced" }).unwrap();
            // Another process's commit holds the lock (its own open file description).
            let other = std::fs::File::open(tmp.path()).unwrap();
            assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) }, 0);
            let committing =
                std::thread::spawn(
                    move || if merging { staging.commit_into("a", |_, _| Ok(())) } else { staging.commit() },
                );
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert!(!committing.is_finished(), "merging {merging}: it waits for the other commit");
            drop(other);
            committing.join().unwrap().unwrap();
            let text = std::fs::read_to_string(out.join("a.txt")).unwrap();
            assert_eq!(text, if merging { "merged" } else { "replaced" });
        }
    }

    #[test]
    fn a_file_where_files_are_merged_into_a_directory_is_named_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("bench-checkpoint");
        std::fs::write(&out, "a user's file").unwrap();
        let e = Staging::merging(&out).err().expect("a file is refused").to_string();
        // Said without a flag of one command: `report --out` and the benchmarks' work directories
        // merge alike.
        assert_eq!(
            e,
            format!("{}: already exists and is not a directory; remove it, or give another directory", out.display())
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a user's file");
    }
}
