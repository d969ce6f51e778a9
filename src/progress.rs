//! Progress of long work for the person waiting on it: a line redrawn in place on a terminal
//! (standard error, `\r` and erase-to-end; a log line written meanwhile first clears it, see
//! `logging`), else a log line now and then. Training's step bar, the reading of each raw input
//! file in `micn prepare` ([`ReadMeter`]) and the scoring of a large set ([`ScoreMeter`]) use it.
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// A line on a terminal that each update redraws in place.
#[derive(Debug, Default)]
pub struct TerminalLine {
    drawn: bool,
}

impl TerminalLine {
    /// Replace the line with `text`. A closed terminal (EIO) must not stop the work: write errors
    /// are ignored.
    pub fn draw(&mut self, text: &str) {
        let _ = write!(std::io::stderr().lock(), "\r{text}\x1b[K");
        self.drawn = true;
    }

    /// Leave the last line drawn standing, and go on below it.
    pub fn keep(&mut self) {
        if std::mem::take(&mut self.drawn) {
            let _ = writeln!(std::io::stderr().lock());
        }
    }

    /// Erase the last line drawn.
    pub fn erase(&mut self) {
        if std::mem::take(&mut self.drawn) {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// `[#####     ]`, `width` marks wide, filled to the fraction `done` (clamped to [0, 1]).
pub fn bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0) * width as f64) as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), " ".repeat(width - filled))
}

/// Seconds left at the pace so far: `done` units took `elapsed` seconds, `left` remain.
pub fn remaining_seconds(elapsed: f64, done: u64, left: u64) -> Option<f64> {
    (done > 0).then(|| elapsed / done as f64 * left as f64)
}

/// `42s`, `3m07s`, `2h05m`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// How often the reading of a file is shown: redrawn on a terminal, logged otherwise. A file read
/// within the first interval shows nothing (the phase's summary line follows it).
const DRAW_EVERY: Duration = Duration::from_millis(500);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// When progress is shown, and where: redrawn on a terminal every [`DRAW_EVERY`], else logged
/// every [`LOG_EVERY`] (and always as log lines under `--log-format json`, where a redrawn line
/// would be the one line that is not JSON). Work done within the first interval shows nothing.
#[derive(Debug)]
struct Pace {
    started: Instant,
    next: Instant,
    terminal: Option<TerminalLine>,
}

impl Pace {
    fn new() -> Self {
        let redraw = std::io::stderr().is_terminal() && !crate::logging::json_lines();
        Self::starting_at(Instant::now(), redraw.then(TerminalLine::default))
    }

    fn starting_at(started: Instant, terminal: Option<TerminalLine>) -> Self {
        let mut pace = Self { started, next: started, terminal };
        pace.next = started + pace.every();
        pace
    }

    /// The interval between two updates shown: redrawn on a terminal, logged otherwise.
    fn every(&self) -> Duration {
        if self.terminal.is_some() {
            DRAW_EVERY
        } else {
            LOG_EVERY
        }
    }

    /// Whether an update at `now` is shown (at most one per interval).
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every();
        true
    }

    /// Seconds since the work started, when an update is due now.
    fn due_now(&mut self) -> Option<f64> {
        let now = Instant::now();
        self.due(now).then(|| now.duration_since(self.started).as_secs_f64())
    }
}

impl Drop for Pace {
    /// The work is done (or failed): its line goes, the summary or the error follows.
    fn drop(&mut self) {
        if let Some(line) = &mut self.terminal {
            line.erase();
        }
    }
}

/// The progress of reading one input file: how much of it as stored (compressed, for gzip) is
/// read, the lines so far, the pace and the time left.
#[derive(Debug)]
pub struct ReadMeter<'a> {
    path: &'a Path,
    /// The file's size as stored; `None` for a pipe or another file whose size is unknown.
    total: Option<u64>,
    pace: Pace,
}

impl<'a> ReadMeter<'a> {
    /// A meter for `path`, `total` bytes as stored (`None`: unknown, a pipe), shown on standard
    /// error ([`Pace`]).
    pub fn new(path: &'a Path, total: Option<u64>) -> Self {
        Self { path, total, pace: Pace::new() }
    }

    /// `read` stored bytes and `lines` lines are read: show it when the interval is up.
    pub fn update(&mut self, read: u64, lines: u64) {
        let Some(elapsed) = self.pace.due_now() else { return };
        match &mut self.pace.terminal {
            Some(line) => line.draw(&describe_read(self.path, read, self.total, lines, elapsed)),
            None => tracing::info!(
                file = %self.path.display(),
                read_bytes = read,
                total_bytes = self.total,
                lines,
                mb_per_s = read as f64 / 1e6 / elapsed.max(1e-9),
                eta_seconds = self.total.and_then(|total| remaining_seconds(elapsed, read, total.saturating_sub(read))),
                "reading"
            ),
        }
    }
}

/// The progress of scoring a set: the samples scored of how many, the pace and the time left
/// (`scoring the test set: 123,456 of 1,000,000 samples (12 %), 30,000 samples/s, ETA 29s`).
#[derive(Debug)]
pub struct ScoreMeter {
    set: &'static str,
    total: u64,
    pace: Pace,
}

impl ScoreMeter {
    /// A meter for scoring the `set` set of `total` samples, shown on standard error ([`Pace`]).
    pub fn new(set: &'static str, total: u64) -> Self {
        Self { set, total, pace: Pace::new() }
    }

    /// `done` samples are scored: show it when the interval is up.
    pub fn update(&mut self, done: u64) {
        let Some(elapsed) = self.pace.due_now() else { return };
        let rate = done as f64 / elapsed.max(1e-9);
        let eta = remaining_seconds(elapsed, done, self.total.saturating_sub(done));
        match &mut self.pace.terminal {
            Some(line) => line.draw(&describe_scoring(self.set, done, self.total, elapsed)),
            None => tracing::info!(
                set = self.set,
                samples = done,
                total = self.total,
                samples_per_s = rate,
                eta_seconds = eta,
                "scoring"
            ),
        }
    }
}

fn describe_scoring(set: &str, done: u64, total: u64, elapsed: f64) -> String {
    let percent = done as f64 * 100.0 / total.max(1) as f64;
    let eta = remaining_seconds(elapsed, done, total.saturating_sub(done)).map_or_else(|| "?".into(), clock);
    format!(
        "scoring the {set} set: {} of {} samples ({percent:.0} %), {} samples/s, ETA {eta}",
        thousands(done),
        thousands(total),
        thousands((done as f64 / elapsed.max(1e-9)) as u64)
    )
}

/// `reading reviews_Books.json.gz: 1.23 GB of 3.05 GB (40 %), 9,123,456 lines, 123 MB/s, ETA 15s`;
/// of a pipe, whose size is unknown, `reading fifo.json: 1.23 GB, 9,123,456 lines, 123 MB/s`.
fn describe_read(path: &Path, read: u64, total: Option<u64>, lines: u64, elapsed: f64) -> String {
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let share = match total {
        Some(total) => {
            let percent = read as f64 * 100.0 / total.max(1) as f64;
            format!(" of {} ({percent:.0} %)", size(total))
        }
        None => String::new(),
    };
    let pace =
        format!("{}{share}, {} lines, {:.0} MB/s", size(read), thousands(lines), read as f64 / 1e6 / elapsed.max(1e-9));
    match total {
        Some(total) => {
            let eta = remaining_seconds(elapsed, read, total.saturating_sub(read)).map_or_else(|| "?".into(), clock);
            format!("reading {name}: {pace}, ETA {eta}")
        }
        None => format!("reading {name}: {pace}"),
    }
}

/// `12345` as `12,345`, for the sizes in messages.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `512 B`, `34.5 MB`, `3.05 GB` (decimal units).
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_extrapolates_the_pace_so_far_and_reads_as_a_clock() {
        assert_eq!(clock(0.4), "0s");
        assert_eq!(clock(42.4), "42s");
        assert_eq!(clock(187.0), "3m07s");
        assert_eq!(clock(7500.0), "2h05m");
        assert_eq!(clock(-3.0), "0s");
        assert_eq!(remaining_seconds(10.0, 5, 20), Some(40.0));
        assert_eq!(remaining_seconds(10.0, 0, 20), None, "nothing done yet: no pace");
    }

    #[test]
    fn thousands_are_grouped_by_three() {
        assert_eq!(
            [0, 999, 1000, 81_499, 1_234_567].map(thousands),
            ["0", "999", "1,000", "81,499", "1,234,567"].map(String::from)
        );
    }

    #[test]
    fn a_bar_fills_to_its_fraction_and_no_further() {
        assert_eq!(bar(0.5, 10), "[#####     ]");
        assert_eq!(bar(1.7, 4), "[####]");
        assert_eq!(bar(-1.0, 3), "[   ]");
        assert_eq!(bar(f64::NAN, 3), "[   ]");
    }

    #[test]
    fn a_read_is_described_by_its_share_lines_pace_and_time_left() {
        let path = Path::new("/data/reviews_Books.json.gz");
        assert_eq!(
            describe_read(path, 1_230_000_000, Some(3_050_000_000), 9_123_456, 10.0),
            "reading reviews_Books.json.gz: 1.23 GB of 3.05 GB (40 %), 9,123,456 lines, 123 MB/s, ETA 15s"
        );
        // Nothing read yet: no pace to tell the time left by. An empty file is not a division by 0.
        assert_eq!(
            describe_read(path, 0, Some(0), 0, 0.0),
            "reading reviews_Books.json.gz: 0 B of 0 B (0 %), 0 lines, 0 MB/s, ETA ?"
        );
        // A pipe's size is unknown: no share of it and no time left.
        assert_eq!(
            describe_read(Path::new("fifo.json"), 19_700_000, None, 12_345, 2.0),
            "reading fifo.json: 19.7 MB, 12,345 lines, 10 MB/s"
        );
        assert_eq!(size(999), "999 B");
        assert_eq!(size(34_500), "34.5 kB");
        assert_eq!(size(34_500_000), "34.5 MB");
    }

    #[test]
    fn a_read_is_shown_once_an_interval_is_up_and_then_once_per_interval() {
        let start = Instant::now();
        let mut pace = Pace::starting_at(start, None);
        assert!(!pace.due(start), "a file read within the first interval shows nothing");
        assert!(!pace.due(start + LOG_EVERY / 2));
        assert!(pace.due(start + LOG_EVERY));
        assert!(!pace.due(start + LOG_EVERY + LOG_EVERY / 2), "once per interval");
        assert!(pace.due(start + 3 * LOG_EVERY), "a late update is shown");
        assert!(!pace.due(start + 3 * LOG_EVERY + LOG_EVERY / 2), "the next interval counts from the last shown");
        let terminal = Pace::starting_at(start, Some(TerminalLine::default()));
        assert_eq!(terminal.every(), DRAW_EVERY, "a terminal is redrawn more often than a log is written");
    }

    #[test]
    fn scoring_is_described_by_its_share_pace_and_time_left() {
        assert_eq!(
            describe_scoring("test", 123_456, 1_000_000, 4.0),
            "scoring the test set: 123,456 of 1,000,000 samples (12 %), 30,864 samples/s, ETA 28s"
        );
        assert_eq!(
            describe_scoring("validation", 0, 0, 0.0),
            "scoring the validation set: 0 of 0 samples (0 %), 0 samples/s, ETA ?"
        );
    }
}
