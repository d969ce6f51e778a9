//! `tracing` set-up, done once in `main`: readable lines (coloured on a terminal) or JSON lines,
//! on standard error, each carrying the rank; and, once a run's directory is known, the same lines
//! at info level and above in the rank's own file (`run.dir/logs/rank-N.log`, [`also_to_file`]),
//! whatever reaches the terminal. `RUST_LOG` filters standard error as usual; without it the level
//! is `info`, or `warn` for ranks other than 0 when [`QUIET_RANKS_ENV`] is `1` (as `micn-launch`
//! sets it: one rank's progress on the terminal, every rank's in its file).
use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Filter, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl From<crate::io_error::PathIo> for LogFileError {
    fn from(e: crate::io_error::PathIo) -> Self {
        Self { path: e.path, source: e.source }
    }
}

/// Environment variable: `1` puts only warnings and errors of ranks other than 0 on standard
/// error (unless `RUST_LOG` says otherwise). Set by `micn-launch` unless `--all-ranks`.
pub const QUIET_RANKS_ENV: &str = "MICN_QUIET_RANKS";

/// The log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot open the log file", path.display())]
pub struct LogFileError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Whether [`init`] was asked for JSON lines: a terminal then gets no progress bar either, whose
/// redrawn line would sit among them as the one line that is not JSON.
static JSON_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether log lines are JSON objects (`--log-format json`).
pub fn json_lines() -> bool {
    JSON_LINES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Install the global subscriber. Call once, after the rank is known.
pub fn init(format: LogFormat, rank: usize) {
    JSON_LINES.store(format == LogFormat::Json, std::sync::atomic::Ordering::Relaxed);
    let quiet = std::env::var(QUIET_RANKS_ENV).is_ok_and(|v| v == "1");
    let terminal_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level(rank, quiet)));
    // On a terminal, text log lines go above the training's progress bar ([`AboveBar`]); JSON
    // lines stay plain JSON there too (no bar is drawn beside them, no colour codes).
    let ansi = std::io::stderr().is_terminal() && format == LogFormat::Text;
    let terminal = match ansi {
        true => lines(format, rank, ansi, || AboveBar::new(io::stderr()), terminal_filter),
        false => lines(format, rank, ansi, io::stderr, terminal_filter),
    };
    let layers = vec![terminal, lines(format, rank, false, || RankFile, LevelFilter::INFO)];
    // A second call (tests) keeps the first subscriber.
    drop(tracing_subscriber::registry().with(layers).try_init());
}

/// From the moment the run claims its directory ([`open_rank_file`]) append every log line at
/// info level and above to `path` (created with its directory if missing; a resumed run goes on
/// in the same file); the lines before it are kept until then. A run refused before it claims the
/// directory (a bad dataset, a directory that holds another run) writes nothing there.
pub fn also_to_file(path: &Path) {
    *RANK_FILE.lock().unwrap_or_else(PoisonError::into_inner) =
        RankLog::Pending { path: path.to_path_buf(), lines: Vec::new() };
}

/// Whether the file [`also_to_file`] named can be opened where it is, without making or writing
/// anything: a part of its path that is a file, or the file itself a directory, is an error (so
/// that a run refuses before it deletes or claims anything, rather than after).
pub fn check_rank_file() -> Result<(), LogFileError> {
    let log = RANK_FILE.lock().unwrap_or_else(PoisonError::into_inner);
    let RankLog::Pending { path, .. } = &*log else { return Ok(()) };
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        let source = io::Error::new(io::ErrorKind::IsADirectory, "is a directory, not a file");
        return Err(LogFileError { path: path.clone(), source });
    }
    match path.parent().and_then(crate::io_error::file_in_the_way) {
        Some(e) => Err(LogFileError::from(e)),
        None => Ok(()),
    }
}

/// Open the file [`also_to_file`] named, with the lines logged so far; nothing when none was named.
pub fn open_rank_file() -> Result<(), LogFileError> {
    let mut log = RANK_FILE.lock().unwrap_or_else(PoisonError::into_inner);
    let RankLog::Pending { path, lines } = &*log else { return Ok(()) };
    let error = |source| LogFileError { path: path.clone(), source };
    if let Some(dir) = path.parent() {
        // A part of the path that is a file is named as such.
        crate::io_error::create_dirs(dir).map_err(LogFileError::from)?;
    }
    let mut file = File::options().create(true).append(true).open(path).map_err(error)?;
    io::Write::write_all(&mut file, lines).map_err(error)?;
    *log = RankLog::Open(file);
    Ok(())
}

/// Append `line` to the rank's log file as it is, if [`also_to_file`] named one: for what `main`
/// prints itself (the final error), so the file tells why the rank stopped.
pub fn append_to_file(line: &str) {
    let _ = io::Write::write_all(&mut RankFile, line.as_bytes());
}

/// A writer for one log line on a terminal: it first clears the terminal's current line, where
/// the training's progress bar (`\r`-redrawn, no newline) may stand, so the log line replaces it
/// and the bar comes back below it at its next update.
struct AboveBar<W> {
    inner: W,
    cleared: bool,
}

impl<W> AboveBar<W> {
    fn new(inner: W) -> Self {
        Self { inner, cleared: false }
    }
}

impl<W: io::Write> io::Write for AboveBar<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.cleared {
            // Carriage return, then erase to the end of the line (ANSI EL).
            self.inner.write_all(b"\r\x1b[K")?;
            self.cleared = true;
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Standard error's level without `RUST_LOG`.
fn default_level(rank: usize, quiet_ranks: bool) -> &'static str {
    if quiet_ranks && rank != 0 {
        "warn"
    } else {
        "info"
    }
}

/// Log lines in `format`, written to `writer`, of the events `filter` lets through.
fn lines<W, F>(
    format: LogFormat,
    rank: usize,
    ansi: bool,
    writer: W,
    filter: F,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    F: Filter<Registry> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer);
    match format {
        LogFormat::Text => {
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi).with_target(false);
            layer.event_format(RankPrefixed { rank, inner }).with_filter(filter).boxed()
        }
        LogFormat::Json => layer.event_format(JsonLine { rank }).with_filter(filter).boxed(),
    }
}

/// The rank's log file: none, named but not yet opened (its lines kept), or open.
enum RankLog {
    Off,
    Pending { path: PathBuf, lines: Vec<u8> },
    Open(File),
}

/// The most bytes kept for a log file not yet opened (the lines before a run claims its directory).
const PENDING_BYTES: usize = 1 << 20;

static RANK_FILE: Mutex<RankLog> = Mutex::new(RankLog::Off);

/// Writes to [`RANK_FILE`]; each log line arrives in one `write_all`, so it lands whole.
struct RankFile;

impl io::Write for RankFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut *RANK_FILE.lock().unwrap_or_else(PoisonError::into_inner) {
            RankLog::Open(file) => io::Write::write_all(file, buf),
            RankLog::Pending { lines, .. } if lines.len() + buf.len() <= PENDING_BYTES => {
                lines.extend_from_slice(buf);
                Ok(())
            }
            RankLog::Pending { .. } | RankLog::Off => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The default text format with `[rank N]` in front.
struct RankPrefixed<F> {
    rank: usize,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for RankPrefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "[rank {}] ", self.rank)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// One JSON object per event: time, level, target, rank and the event's fields.
struct JsonLine {
    rank: usize,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut fields = FieldMap::default();
        fields.0.insert("time".into(), serde_json::json!(now.as_secs_f64()));
        fields.0.insert("level".into(), serde_json::json!(meta.level().as_str()));
        fields.0.insert("target".into(), serde_json::json!(meta.target()));
        fields.0.insert("rank".into(), serde_json::json!(self.rank));
        event.record(&mut fields);
        let line = serde_json::to_string(&fields.0).map_err(|_| fmt::Error)?;
        writer.write_str(&line)?;
        writer.write_char('\n')
    }
}

#[derive(Default)]
struct FieldMap(serde_json::Map<String, serde_json::Value>);

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), serde_json::json!(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_log_line_on_a_terminal_first_clears_the_progress_bars_line_once() {
        use std::io::Write as _;
        let mut line = AboveBar::new(Vec::new());
        line.write_all(b"INFO evaluation ").unwrap();
        line.write_all(b"auc=0.8\n").unwrap();
        assert_eq!(line.inner, b"\r\x1b[KINFO evaluation auc=0.8\n");
    }

    use super::*;

    #[test]
    fn quiet_ranks_leave_rank_0_at_info() {
        assert_eq!(default_level(0, true), "info");
        assert_eq!(default_level(1, true), "warn");
        assert_eq!(default_level(1, false), "info");
    }
}
