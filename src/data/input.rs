//! Reading raw line-oriented inputs: gzip or plain (detected by magic bytes), hashed as read
//! (for `dataset.json`), split into chunks of whole lines and parsed on every core, with results
//! handed back in file order so that preparation stays deterministic.
//!
//! Bad lines are classified ([`BadKind`]) and either skipped and counted ([`Issues`]) or, in
//! strict mode, fatal with the file and line number.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;

use super::DataError;

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadKind {
    NonUtf8,
    /// Not parseable (bad JSON or Python literal syntax).
    Malformed,
    /// The line ends in the middle of a value.
    Truncated,
    MissingField,
    WrongType,
    /// The same (user, item) review seen before; the first is kept.
    Duplicate,
}

impl std::fmt::Display for BadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadKind::NonUtf8 => "not UTF-8",
            BadKind::Malformed => "malformed",
            BadKind::Truncated => "truncated",
            BadKind::MissingField => "missing field",
            BadKind::WrongType => "wrong type",
            BadKind::Duplicate => "duplicate review",
        })
    }
}

/// A rejected line: what and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Bad {
    pub kind: BadKind,
    pub detail: String,
}

impl Bad {
    pub fn new(kind: BadKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    /// Classify a serde_json error.
    pub fn from_json(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match e.classify() {
            Category::Eof => BadKind::Truncated,
            Category::Syntax | Category::Io => BadKind::Malformed,
            Category::Data if e.to_string().starts_with("missing field") => BadKind::MissingField,
            Category::Data => BadKind::WrongType,
        };
        Self::new(kind, e.to_string())
    }
}

/// Lines skipped in one file, by kind, with the first few line numbers of each kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Issues {
    pub counts: BTreeMap<BadKind, u64>,
    pub first_lines: BTreeMap<BadKind, Vec<u64>>,
    /// The first rejected line: number and reason.
    pub first_problem: Option<(u64, String)>,
}

impl Issues {
    const EXAMPLES: usize = 5;

    pub fn record(&mut self, kind: BadKind, line: u64, detail: &str) {
        if self.first_problem.is_none() {
            self.first_problem = Some((line, format!("{kind}: {detail}")));
        }
        *self.counts.entry(kind).or_default() += 1;
        let lines = self.first_lines.entry(kind).or_default();
        if lines.len() < Self::EXAMPLES {
            lines.push(line);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// One line per kind: `malformed: 3 (lines 4, 9, 12)`.
    pub fn summary(&self) -> Vec<String> {
        self.counts
            .iter()
            .map(|(kind, n)| {
                let lines: Vec<String> = self.first_lines[kind].iter().map(u64::to_string).collect();
                let more = if *n as usize > lines.len() { ", ..." } else { "" };
                format!("{kind}: {n} (line {}{more})", lines.join(", "))
            })
            .collect()
    }
}

/// Skip-and-count or fail-fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    Lenient,
    Strict,
}

/// What reading one file produced besides its records.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    pub path: PathBuf,
    /// xxh3-64 of the file's bytes as stored (compressed if gzip), hex.
    pub xxh3: String,
    pub bytes: u64,
    /// Bytes after decompression.
    pub raw_bytes: u64,
    pub lines: u64,
    pub issues: Issues,
}

/// A reader that hashes the stored bytes as they pass.
struct Hashing<R> {
    inner: R,
    hasher: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

const CHUNK: usize = 4 << 20;

struct Chunk {
    index: usize,
    first_line: u64,
    data: Vec<u8>,
}

/// Read `path` (gzip or plain), parse every non-blank line with `parse` on all cores, and hand
/// each good record to `sink` in file order with its 1-based line number. Bad lines are counted,
/// or in strict mode stop the read with [`DataError::BadLine`].
pub fn parse_lines<T: Send>(
    path: &Path,
    strictness: Strictness,
    parse: impl Fn(&str) -> Result<T, Bad> + Sync,
    mut sink: impl FnMut(T, u64),
) -> Result<FileSummary, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let gzip = {
        use std::io::BufRead;
        file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b])
    };
    let hashing = Hashing { inner: file, hasher: xxhash_rust::xxh3::Xxh3::new(), bytes: 0 };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);

    let mut issues = Issues::default();
    let mut lines_total = 0u64;
    let mut raw_bytes = 0u64;
    let mut failure: Option<DataError> = None;

    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Chunk>(workers * 2);
    let chunk_rx = std::sync::Mutex::new(chunk_rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<(usize, Vec<(u64, Result<T, Bad>)>)>(workers * 2);
    let hashing = std::thread::scope(|scope| -> Result<Hashing<BufReader<File>>, DataError> {
        // Reader: split the (decompressed) stream into chunks of whole lines.
        let reader = scope.spawn(move || -> Result<(Hashing<BufReader<File>>, u64, u64), std::io::Error> {
            let mut hashing = hashing;
            let (lines, raw) = {
                let mut source: Box<dyn Read + '_> = if gzip {
                    Box::new(flate2::read::MultiGzDecoder::new(&mut hashing))
                } else {
                    Box::new(&mut hashing)
                };
                let mut carry: Vec<u8> = Vec::new();
                let (mut index, mut next_line, mut raw) = (0usize, 1u64, 0u64);
                loop {
                    let mut data = std::mem::take(&mut carry);
                    let start = data.len();
                    data.resize(start + CHUNK, 0);
                    let mut filled = start;
                    while filled < data.len() {
                        match source.read(&mut data[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    raw += (filled - start) as u64;
                    data.truncate(filled);
                    let eof = filled < start + CHUNK;
                    if !eof {
                        // Keep the trailing partial line for the next chunk.
                        match data.iter().rposition(|&b| b == b'\n') {
                            Some(pos) => carry = data.split_off(pos + 1),
                            None => continue, // a line longer than a chunk: read more
                        }
                    }
                    if data.is_empty() {
                        break;
                    }
                    let n_lines =
                        data.iter().filter(|&&b| b == b'\n').count() as u64 + u64::from(data.last() != Some(&b'\n'));
                    if chunk_tx.send(Chunk { index, first_line: next_line, data }).is_err() {
                        break;
                    }
                    index += 1;
                    next_line += n_lines;
                    if eof {
                        break;
                    }
                }
                (next_line - 1, raw)
            };
            drop(chunk_tx);
            Ok((hashing, lines, raw))
        });

        // Workers: parse chunks.
        for _ in 0..workers {
            let (rx, tx, parse) = (&chunk_rx, done_tx.clone(), &parse);
            scope.spawn(move || loop {
                let chunk = match rx.lock().expect("chunk queue").recv() {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let mut out = Vec::new();
                for (i, line) in chunk.data.split(|&b| b == b'\n').enumerate() {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let number = chunk.first_line + i as u64;
                    let parsed = match std::str::from_utf8(line) {
                        Ok(text) => parse(text),
                        Err(e) => Err(Bad::new(BadKind::NonUtf8, e.to_string())),
                    };
                    out.push((number, parsed));
                }
                if tx.send((chunk.index, out)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);

        // In-order hand-off.
        let mut pending = BTreeMap::new();
        let mut next = 0usize;
        for (index, results) in done_rx.iter() {
            pending.insert(index, results);
            while let Some(results) = pending.remove(&next) {
                next += 1;
                if failure.is_some() {
                    continue;
                }
                for (line, parsed) in results {
                    match parsed {
                        Ok(record) => sink(record, line),
                        Err(bad) if strictness == Strictness::Strict => {
                            failure = Some(DataError::BadLine {
                                path: path.to_path_buf(),
                                line,
                                kind: bad.kind,
                                detail: bad.detail,
                            });
                            break;
                        }
                        Err(bad) => issues.record(bad.kind, line, &bad.detail),
                    }
                }
            }
        }
        let (hashing, lines, raw) = reader.join().expect("reader thread").map_err(io)?;
        lines_total = lines;
        raw_bytes = raw;
        Ok(hashing)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(FileSummary {
        path: path.to_path_buf(),
        xxh3: format!("{:016x}", hashing.hasher.digest()),
        bytes: hashing.bytes,
        raw_bytes,
        lines: lines_total,
        issues,
    })
}
