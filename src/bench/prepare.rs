//! `micn bench prepare`: how fast `micn prepare` reads raw Amazon-format review JSON and how much
//! memory it needs, on synthetic dumps (SPEC §1.4) of a chosen size.
//!
//! For each run the synthetic raw files are generated first (timed apart, not counted), then
//! `micn prepare` runs in a **fresh child process**, so that the peak memory is prepare's own and
//! not the generator's. The exact peak resident set (`VmHWM`) is logged by the child itself at
//! the end of its work: the parent cannot get it afterwards, because `ru_maxrss` of a child
//! started by `posix_spawn` (vfork, as `std::process::Command` does) includes the *parent's*
//! high-water mark. Beside it, the parent samples the child's `/proc/PID/status` every 5 ms for
//! the peak of its anonymous memory (`RssAnon`: the heap, prepare's own data) and of its
//! file-backed pages (`RssFile`: mostly the libtorch code every `micn` process maps). The reading
//! phase's speed comes from the child's structured `reviews read` log event.
//!
//! Runs at several mean history lengths with the same users and items (same vocabularies, more
//! reviews) show what memory grows with: the compact per-review records and the samples, not the
//! raw bytes and not only the vocabularies.
use std::io::{BufRead as _, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::ValueEnum as _;
use serde::Serialize;

use crate::data::archive::DatasetMeta;
use crate::data::protocol::Protocol;
use crate::data::synth::{self, Preset, SynthConfig};
use crate::data::DataError;
use crate::io_error::PathIo;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PrepareBenchOptions {
    pub preset: Preset,
    /// Override the preset's number of users.
    pub users: Option<usize>,
    /// Override the preset's number of items.
    pub items: Option<usize>,
    /// One run per entry: the preset's mean reviews per user times this factor (same users and
    /// items, so the same vocabularies, at different input sizes).
    pub history_scales: Vec<f64>,
    pub protocol: Protocol,
    pub max_hist_len: usize,
    pub seed: u64,
    /// Where raw dumps and prepared datasets go (several GB at the books-like size).
    pub work_dir: PathBuf,
    /// Keep the generated dumps (reused by the next run with the same settings) and datasets.
    pub keep: bool,
    /// The `micn` binary that runs `prepare` (default: the running executable).
    pub micn: Option<PathBuf>,
}

impl Default for PrepareBenchOptions {
    fn default() -> Self {
        Self {
            preset: Preset::BooksLike,
            users: None,
            items: None,
            history_scales: vec![0.5, 1.0],
            protocol: Protocol::Dien,
            max_hist_len: 20,
            seed: 1,
            work_dir: std::env::temp_dir().join("micn-bench-prepare"),
            keep: false,
            micn: None,
        }
    }
}

/// One preparation, measured.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareRun {
    pub users: usize,
    pub items: usize,
    pub mean_history: f64,
    /// Review lines in the raw file.
    pub review_lines: u64,
    /// Reviews kept (duplicates removed).
    pub reviews: u64,
    /// Size of the raw review JSON.
    pub review_bytes: u64,
    /// Seconds to generate the synthetic dump (`None`: a kept dump was reused).
    pub generate_seconds: Option<f64>,
    /// Reading phase: decompress, parse, intern, de-duplicate, plus the meta file.
    pub read_seconds: f64,
    /// Raw review MB (10⁶ bytes) per second of the reading phase.
    pub read_mb_per_s: f64,
    /// Review lines per second of the reading phase.
    pub reviews_per_s: f64,
    /// Wall time of the whole `micn prepare` process (start-up, reading, protocol, writing).
    pub prepare_seconds: f64,
    /// Peak resident set of the `micn prepare` process (its own `VmHWM`), libtorch's mapped
    /// code included; `None` where the platform does not say.
    pub peak_rss_bytes: Option<u64>,
    /// Peak anonymous memory (`RssAnon`, sampled): prepare's own data.
    pub peak_anon_bytes: Option<u64>,
    /// Peak file-backed resident memory (`RssFile`, sampled): mapped code, libtorch's above all.
    pub peak_file_bytes: Option<u64>,
    pub train_samples: u64,
    pub test_samples: u64,
    pub vocab_users: u64,
    pub vocab_items: u64,
    pub vocab_cats: u64,
    /// The prefetching loader over the prepared archive: batches of 128 with histories of
    /// `max_hist_len` and DIEN's no-click draws, per second, one rank of one.
    pub loader_batches_per_sec: f64,
}

/// Batches per second the prefetching loader delivers from `dir` (global batch 128, one rank,
/// DIEN's no-click draws on: the most work a batch can need).
pub fn loader_batches_per_sec(dir: &Path, max_hist_len: usize, batches: usize) -> Result<f64, DataError> {
    let dataset = std::sync::Arc::new(crate::data::Dataset::open(dir)?);
    let cfg = crate::data::loader::LoaderConfig {
        seed: 1,
        global_batch: 128,
        world: 1,
        rank: 0,
        max_hist_len,
        drop_remainder: true,
        prefetch: 4,
        noclick: true,
    };
    let started = Instant::now();
    let mut n = 0usize;
    for epoch in 0.. {
        let before = n;
        for _batch in crate::data::loader::EpochLoader::new(std::sync::Arc::clone(&dataset), &cfg, epoch, 0)
            .map_err(|source| DataError::Thread { path: dir.to_path_buf(), source })?
        {
            n += 1;
            if n == batches {
                return Ok(n as f64 / started.elapsed().as_secs_f64());
            }
        }
        if n == before {
            break; // an epoch without a full batch
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Everything `micn bench prepare` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareBenchReport {
    pub preset: String,
    pub protocol: String,
    pub max_hist_len: usize,
    pub cores: usize,
    /// What any `micn` process costs before doing anything (`micn --version`, sampled): libtorch
    /// and CUDA libraries mapped and initialised. Subtract it from the runs' peaks.
    pub idle_anon_bytes: Option<u64>,
    pub idle_file_bytes: Option<u64>,
    pub runs: Vec<PrepareRun>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Child { command: String, status: String, stderr: String },
    #[error("`{command}` did not log how long reading took (expected a `reviews read` event)")]
    NoTiming { command: String },
    #[error("history scale {0} must be a positive number")]
    BadScale(f64),
}

impl BenchError {
    /// Whether running the same bench again would fail the same way (exit status 3).
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::Data(e) => e.is_input_error(),
            Self::Io(e) => e.is_lasting(),
            Self::BadScale(_) => true,
            Self::Child { .. } | Self::NoTiming { .. } => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io(PathIo { path: path.to_path_buf(), source })
}

/// Generate, prepare and measure once per history scale.
pub fn run(opts: &PrepareBenchOptions) -> Result<PrepareBenchReport, BenchError> {
    let micn = match &opts.micn {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(io_err(Path::new("current executable")))?,
    };
    crate::io_error::create_dirs(&opts.work_dir)?;
    let idle = measure_child(Command::new(&micn).arg("--version"))?;
    let mut runs = Vec::with_capacity(opts.history_scales.len());
    for &scale in &opts.history_scales {
        if !scale.is_finite() || scale <= 0.0 {
            return Err(BenchError::BadScale(scale));
        }
        let mut cfg = opts.preset.config(opts.seed);
        cfg.users = opts.users.unwrap_or(cfg.users);
        cfg.items = opts.items.unwrap_or(cfg.items);
        cfg.mean_history = (cfg.mean_history * scale).max(cfg.min_history as f64);
        runs.push(run_one(opts, &micn, &cfg)?);
    }
    Ok(PrepareBenchReport {
        preset: opts.preset.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string()),
        protocol: format!("{:?}", opts.protocol).to_lowercase(),
        max_hist_len: opts.max_hist_len,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        idle_anon_bytes: idle.peak_anon,
        idle_file_bytes: idle.peak_file,
        runs,
    })
}

fn run_one(opts: &PrepareBenchOptions, micn: &Path, cfg: &SynthConfig) -> Result<PrepareRun, BenchError> {
    let tag = format!("u{}-i{}-h{:.2}-s{}", cfg.users, cfg.items, cfg.mean_history, cfg.seed);
    let raw = opts.work_dir.join(format!("raw-{tag}"));
    let out = opts.work_dir.join(format!("prepared-{tag}-{:?}", opts.protocol).to_lowercase());
    let (summary, generate_seconds) = match reusable_dump(&raw, cfg) {
        Some(summary) if opts.keep => (summary, None),
        _ => {
            let started = Instant::now();
            let summary = synth::generate(cfg, &raw)?;
            (summary, Some(started.elapsed().as_secs_f64()))
        }
    };
    tracing::info!(reviews = summary.reviews, bytes = summary.review_bytes, "synthetic dump ready");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(io_err(&out))?;
    }
    let mut cmd = Command::new(micn);
    cmd.args(["--log-format", "json", "prepare", "--input-format", "amazon2014", "--reviews"])
        .arg(&summary.reviews_file)
        .arg("--meta")
        .arg(&summary.meta_file)
        .args(["--protocol", &format!("{:?}", opts.protocol).to_lowercase()])
        .args(["--max-hist-len", &opts.max_hist_len.to_string(), "--seed", &opts.seed.to_string(), "--out"])
        .arg(&out)
        .env("RUST_LOG", "info");
    let child = measure_child(&mut cmd)?;
    let read = child.reading.ok_or_else(|| BenchError::NoTiming { command: format!("{cmd:?}") })?;
    let meta_path = out.join("dataset.json");
    let text = std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?;
    let meta: DatasetMeta = serde_json::from_str(&text).map_err(|e| DataError::Invalid {
        path: meta_path.clone(),
        message: format!("not a dataset description: {e}"),
    })?;
    let loader = loader_batches_per_sec(&out, opts.max_hist_len, 2000)?;
    if !opts.keep {
        for dir in [&out, &raw] {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    let secs = read.seconds.max(1e-9);
    Ok(PrepareRun {
        users: cfg.users,
        items: cfg.items,
        mean_history: cfg.mean_history,
        review_lines: read.lines,
        reviews: read.reviews,
        review_bytes: read.raw_bytes,
        generate_seconds,
        read_seconds: read.seconds,
        read_mb_per_s: read.raw_bytes as f64 / 1e6 / secs,
        reviews_per_s: read.lines as f64 / secs,
        prepare_seconds: child.seconds,
        peak_rss_bytes: child.peak_rss,
        peak_anon_bytes: child.peak_anon,
        peak_file_bytes: child.peak_file,
        train_samples: meta.counts.train_samples,
        test_samples: meta.counts.test_samples,
        vocab_users: meta.counts.users,
        vocab_items: meta.counts.items,
        vocab_cats: meta.counts.cats,
        loader_batches_per_sec: loader,
    })
}

/// A dump generated earlier with exactly this configuration, if `raw` holds one.
fn reusable_dump(raw: &Path, cfg: &SynthConfig) -> Option<synth::SynthSummary> {
    #[derive(serde::Deserialize)]
    struct Written {
        config: SynthConfig,
        reviews: u64,
        review_bytes: u64,
    }
    let written: Written = serde_json::from_str(&std::fs::read_to_string(raw.join("synth.json")).ok()?).ok()?;
    let summary = synth::SynthSummary {
        config: written.config,
        reviews: written.reviews,
        review_bytes: written.review_bytes,
        reviews_file: raw.join(synth::REVIEWS_FILE),
        meta_file: raw.join(synth::META_FILE),
        oracle_file: raw.join(synth::ORACLE_FILE),
    };
    let complete = [&summary.reviews_file, &summary.meta_file, &summary.oracle_file].iter().all(|p| p.exists());
    (summary.config == *cfg && complete).then_some(summary)
}

/// The `reviews read` event of `micn prepare --log-format json`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reading {
    lines: u64,
    reviews: u64,
    raw_bytes: u64,
    seconds: f64,
}

fn parse_reading(line: &str) -> Option<Reading> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "reviews read" {
        return None;
    }
    Some(Reading {
        lines: v.get("lines")?.as_u64()?,
        reviews: v.get("reviews")?.as_u64()?,
        raw_bytes: v.get("raw_bytes")?.as_u64()?,
        seconds: v.get("seconds")?.as_f64()?,
    })
}

/// The `dataset written` event: the child's own peak resident set.
fn parse_peak(line: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "dataset written" {
        return None;
    }
    v.get("peak_rss_bytes")?.as_u64()
}

/// A finished child process, measured.
struct Measured {
    seconds: f64,
    /// The child's own `VmHWM` if it logged it, else the largest sampled `VmHWM`.
    peak_rss: Option<u64>,
    peak_anon: Option<u64>,
    peak_file: Option<u64>,
    reading: Option<Reading>,
}

/// Run `cmd` to completion, require success, and measure its wall time and memory.
fn measure_child(cmd: &mut Command) -> Result<Measured, BenchError> {
    let command = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(Path::new(cmd.get_program())))?;
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr is piped");
    let done = AtomicBool::new(false);
    let (sampled, log, status) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_memory(pid, &done));
        let reader = scope.spawn(move || {
            // Keep the structured figures and the last lines (for an error message).
            let (mut reading, mut peak, mut tail) = (None, None, std::collections::VecDeque::new());
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                reading = parse_reading(&line).or(reading);
                peak = parse_peak(&line).or(peak);
                tail.push_back(line);
                if tail.len() > 20 {
                    tail.pop_front();
                }
            }
            (reading, peak, Vec::from(tail).join("\n"))
        });
        let status = child.wait();
        done.store(true, Ordering::Relaxed);
        (sampler.join().expect("memory sampler"), reader.join().expect("log reader"), status)
    });
    let seconds = started.elapsed().as_secs_f64();
    let status = status.map_err(io_err(Path::new(&command)))?;
    let (reading, logged_peak, tail) = log;
    if !status.success() {
        return Err(BenchError::Child { command, status: status.to_string(), stderr: tail });
    }
    Ok(Measured {
        seconds,
        peak_rss: logged_peak.or(sampled.hwm),
        peak_anon: sampled.anon,
        peak_file: sampled.file,
        reading,
    })
}

/// Largest values seen in `/proc/PID/status`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sampled {
    hwm: Option<u64>,
    anon: Option<u64>,
    file: Option<u64>,
}

/// Sample process `pid`'s memory until it ends (or `done`). The status file is opened once:
/// re-reading an open `/proc/PID/status` keeps reporting on the same process (and nothing once
/// it is gone), even if its PID is reused.
fn sample_memory(pid: u32, done: &AtomicBool) -> Sampled {
    let mut peak = Sampled::default();
    let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/status")) else { return peak };
    let mut text = String::new();
    while !done.load(Ordering::Relaxed) {
        text.clear();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            break;
        }
        let Some(anon) = status_bytes(&text, "RssAnon:") else { break }; // a zombie: memory released
        peak.anon = peak.anon.max(Some(anon));
        peak.file = peak.file.max(status_bytes(&text, "RssFile:"));
        peak.hwm = peak.hwm.max(status_bytes(&text, "VmHWM:"));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    peak
}

/// A `Key:   123456 kB` line of a `/proc/PID/status` text, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.0}", b as f64 / 1e6))
}

impl std::fmt::Display for PrepareBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "micn bench prepare: {} preset, protocol {}, max_hist_len {}, {} cores; an idle `micn` process holds \
             {} MB anonymous and {} MB file-backed memory (libtorch)",
            self.preset,
            self.protocol,
            self.max_hist_len,
            self.cores,
            mb(self.idle_anon_bytes),
            mb(self.idle_file_bytes)
        )?;
        writeln!(
            f,
            "{:>8} {:>8} {:>6} {:>11} {:>9} {:>7} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "users",
            "items",
            "hist",
            "JSON lines",
            "JSON MB",
            "gen s",
            "read s",
            "MB/s",
            "total s",
            "kreview/s",
            "peak MB",
            "anon MB",
            "file MB",
            "B/review"
        )?;
        for r in &self.runs {
            let per_review = match (r.peak_anon_bytes, self.idle_anon_bytes) {
                (Some(peak), Some(idle)) => {
                    format!("{:.0}", peak.saturating_sub(idle) as f64 / r.reviews.max(1) as f64)
                }
                _ => "n/a".into(),
            };
            writeln!(
                f,
                "{:>8} {:>8} {:>6.2} {:>11} {:>9.0} {:>7} {:>8.2} {:>10.0} {:>7.2} {:>9.0} {:>9} {:>9} {:>9} {:>9}",
                r.users,
                r.items,
                r.mean_history,
                r.review_lines,
                r.review_bytes as f64 / 1e6,
                r.generate_seconds.map_or_else(|| "kept".into(), |s| format!("{s:.1}")),
                r.read_seconds,
                r.read_mb_per_s,
                r.prepare_seconds,
                r.reviews_per_s / 1e3,
                mb(r.peak_rss_bytes),
                mb(r.peak_anon_bytes),
                mb(r.peak_file_bytes),
                per_review
            )?;
        }
        for r in &self.runs {
            writeln!(
                f,
                "samples at hist {:.2}: train {}  test {}; vocabularies: users {}  items {}  categories {}; loader {:.0} batches/s of 128 ({:.0} samples/s)",
                r.mean_history,
                r.train_samples,
                r.test_samples,
                r.vocab_users,
                r.vocab_items,
                r.vocab_cats,
                r.loader_batches_per_sec,
                128.0 * r.loader_batches_per_sec
            )?;
        }
        if let (Some(small), Some(large)) = (self.runs.first(), self.runs.last()) {
            if let (Some(a), Some(b)) = (small.peak_anon_bytes, large.peak_anon_bytes) {
                if self.runs.len() > 1 {
                    writeln!(
                        f,
                        "same vocabularies, {:.2}× the reviews and {:.2}× the JSON bytes: {:.2}× the anonymous peak ({:+.0} MB)",
                        large.reviews as f64 / small.reviews.max(1) as f64,
                        large.review_bytes as f64 / small.review_bytes.max(1) as f64,
                        b as f64 / a.max(1) as f64,
                        (b as f64 - a as f64) / 1e6
                    )?;
                }
            }
        }
        writeln!(
            f,
            "peak MB: peak resident set of the `micn prepare` process (its VmHWM); anon MB: peak of its heap \
             (RssAnon, sampled every 5 ms); file MB: peak of its mapped files (RssFile: libtorch's code); \
             B/review: anon bytes above the idle process per kept review"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reading_event_is_found_in_json_log_lines() {
        let line = r#"{"time":1.5,"level":"INFO","target":"micn::data::prepare","rank":0,"reviews":1000,"lines":1010,"raw_bytes":600000,"users":90,"items":50,"seconds":0.25,"message":"reviews read"}"#;
        assert_eq!(
            parse_reading(line),
            Some(Reading { lines: 1010, reviews: 1000, raw_bytes: 600_000, seconds: 0.25 })
        );
        assert_eq!(parse_reading(r#"{"message":"samples built","seconds":1.0}"#), None);
        assert_eq!(parse_reading("[rank 0] INFO reviews read"), None);
    }

    #[test]
    fn status_lines_are_read_in_bytes() {
        let status = "Name:\tmicn\nVmHWM:\t  900 kB\nRssAnon:\t  123456 kB\nRssFile:\t 5 kB\n";
        assert_eq!(status_bytes(status, "RssAnon:"), Some(123_456 * 1024));
        assert_eq!(status_bytes(status, "VmHWM:"), Some(900 * 1024));
        assert_eq!(status_bytes("Name:\tmicn\nState:\tZ (zombie)\n", "RssAnon:"), None);
        let event = r#"{"level":"INFO","seconds":2.5,"peak_rss_bytes":734003200,"message":"dataset written"}"#;
        assert_eq!(parse_peak(event), Some(734_003_200));
    }

    #[test]
    fn a_child_s_own_memory_is_sampled_and_a_failure_shows_its_output() {
        // A child that holds ~200 MB of anonymous memory for a moment, started from this process
        // whose own memory is not counted.
        let m =
            measure_child(Command::new("sh").args(["-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 0.2"]))
                .unwrap();
        if let Some(anon) = m.peak_anon {
            assert!(anon > 150_000_000, "sampled anonymous peak {anon} bytes");
        }
        let e = measure_child(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).err().unwrap().to_string();
        assert!(e.contains("oops") && e.contains('3'), "{e}");
    }
}
