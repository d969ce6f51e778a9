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
    /// The gzip stream breaks off before its end (a cut or interrupted download): the complete
    /// lines before the cut were read and the cut line, if any, counted as truncated.
    pub truncated_gzip: bool,
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

/// What the reader thread hands back: the hasher, lines and decompressed bytes read, and
/// whether a gzip stream broke off early.
type ReaderEnd = (Hashing<BufReader<File>>, u64, u64, bool);

struct Chunk {
    index: usize,
    first_line: u64,
    data: Vec<u8>,
    /// The last line of `data` was cut where a truncated gzip stream ends.
    cut_last_line: bool,
}

/// Read `path` (gzip or plain), parse every non-blank line with `parse` on all cores, and hand
/// each good record to `sink` in file order with its 1-based line number. Bad lines are counted,
/// or in strict mode stop the read with [`DataError::BadLine`].
///
/// A gzip stream that breaks off early (a cut file: the real `*.head.json.gz` fixtures are such
/// cuts) is read up to the cut: the partial last line counts as truncated and
/// [`FileSummary::truncated_gzip`] is set; in strict mode it is an error. A corrupt stream is
/// always an error.
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
    let mut truncated_gzip = false;
    let hashing = std::thread::scope(|scope| -> Result<Hashing<BufReader<File>>, DataError> {
        // Reader: split the (decompressed) stream into chunks of whole lines.
        let reader = scope.spawn(move || -> std::io::Result<ReaderEnd> {
            let mut hashing = hashing;
            let mut cut = false;
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
                            // flate2's word for a stream that stops before its end.
                            Err(e) if gzip && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                                cut = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    raw += (filled - start) as u64;
                    data.truncate(filled);
                    let eof = cut || filled < start + CHUNK;
                    if !eof {
                        // Keep the trailing partial line for the next chunk.
                        match data.iter().rposition(|&b| b == b'\n') {
                            Some(pos) => carry = data.split_off(pos + 1),
                            None => {
                                carry = data; // a line longer than a chunk: keep it and read more
                                continue;
                            }
                        }
                    }
                    if data.is_empty() {
                        break;
                    }
                    let cut_last_line = cut && data.last() != Some(&b'\n');
                    let n_lines =
                        data.iter().filter(|&&b| b == b'\n').count() as u64 + u64::from(data.last() != Some(&b'\n'));
                    if chunk_tx.send(Chunk { index, first_line: next_line, data, cut_last_line }).is_err() {
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
            Ok((hashing, lines, raw, cut))
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
                let last = chunk.data.split(|&b| b == b'\n').count() - 1;
                for (i, line) in chunk.data.split(|&b| b == b'\n').enumerate() {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let number = chunk.first_line + i as u64;
                    let parsed = if chunk.cut_last_line && i == last {
                        // Even if what is left happens to parse (a shorter DIEN history), it is
                        // not the line the file held.
                        Err(Bad::new(BadKind::Truncated, "the line breaks off where the gzip stream ends"))
                    } else {
                        match std::str::from_utf8(line) {
                            Ok(text) => parse(text),
                            Err(e) => Err(Bad::new(BadKind::NonUtf8, e.to_string())),
                        }
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
        let (hashing, lines, raw, cut) = reader.join().expect("reader thread").map_err(io)?;
        lines_total = lines;
        raw_bytes = raw;
        truncated_gzip = cut;
        Ok(hashing)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if truncated_gzip && strictness == Strictness::Strict {
        // The cut line (if any) was already fatal above; here the cut fell between lines.
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: format!("the gzip stream ends early (after line {lines_total}): the file is truncated"),
        });
    }
    Ok(FileSummary {
        path: path.to_path_buf(),
        xxh3: format!("{:016x}", hashing.hasher.digest()),
        bytes: hashing.bytes,
        raw_bytes,
        lines: lines_total,
        issues,
        truncated_gzip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path, strictness: Strictness) -> Result<(Vec<(u64, usize)>, FileSummary), DataError> {
        let mut lines = Vec::new();
        let summary = parse_lines(path, strictness, |l| Ok(l.len()), |len, number| lines.push((number, len)))?;
        Ok((lines, summary))
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.txt");
        // Whole chunks without a newline: first, and again after a short line.
        let long = "x".repeat(2 * CHUNK + CHUNK / 2);
        std::fs::write(&path, format!("{long}\na\n{long}\nbb\r\n\n  \nccc")).unwrap();
        let (lines, summary) = read_all(&path, Strictness::Strict).unwrap();
        assert_eq!(lines, [(1, long.len()), (2, 1), (3, long.len()), (4, 2), (7, 3)]);
        assert_eq!((summary.lines, summary.raw_bytes), (7, 2 * long.len() as u64 + 15));
    }

    #[test]
    fn a_cut_gzip_stream_keeps_the_lines_before_the_cut_or_is_refused() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..20_000).map(|i| format!("line {i} {}\n", i * 7919 % 10007)).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let path = dir.path().join("cut.gz");
        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();

        let (lines, summary) = read_all(&path, Strictness::Lenient).unwrap();
        assert!(summary.truncated_gzip);
        let n = lines.len() as u64;
        assert!(n > 1000 && n < 20_000, "{n} lines before the cut");
        assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
        // The line at the cut is incomplete: counted, not handed on.
        assert_eq!(summary.issues.counts.get(&BadKind::Truncated), Some(&1));
        assert_eq!(summary.issues.first_lines[&BadKind::Truncated], [n + 1]);

        let e = read_all(&path, Strictness::Strict).unwrap_err().to_string();
        assert!(e.contains("cut.gz") && e.contains(&format!(":{}: truncated", n + 1)), "{e}");

        // Whole: nothing truncated.
        std::fs::write(&path, &gz).unwrap();
        let (lines, summary) = read_all(&path, Strictness::Strict).unwrap();
        assert_eq!((lines.len(), summary.truncated_gzip, summary.raw_bytes), (20_000, false, text.len() as u64));
    }
}
