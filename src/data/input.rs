//! Reading raw line-oriented inputs: gzip or plain (detected by magic bytes), hashed as read
//! (for `dataset.json`), split into chunks of whole lines and parsed on every core, with results
//! handed back in file order so that preparation stays deterministic.
//!
//! Bad lines are classified ([`BadKind`]) and either skipped and counted ([`Issues`]) or, in
//! strict mode, fatal with the file and line number. A compressed stream that is cut short or
//! corrupt is a broken file, not a bad line: fatal in either mode, saying how far it was read.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use serde::Serialize;

use super::DataError;
use crate::io_error::PathIo;
use crate::progress::ReadMeter;

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

/// `kind: detail`, or the detail alone where it opens with its kind (serde's "missing field `x`").
pub fn describe(kind: BadKind, detail: &str) -> String {
    let kind = kind.to_string();
    match detail.starts_with(&kind) {
        true => detail.to_string(),
        false => format!("{kind}: {detail}"),
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
            self.first_problem = Some((line, describe(kind, detail)));
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
    /// The file's device and inode when it was opened (a regular file's): see [`check_unreplaced`].
    pub identity: Option<(u64, u64)>,
}

/// Every input read still the file it was: one replaced by another while the preparation read
/// its other inputs (`micn synth` writing into their directory again, say) would give a dataset of
/// two versions' parts, each whole in itself; refused, saying so, exit status 1.
pub fn check_unreplaced(sources: &[FileSummary]) -> Result<(), DataError> {
    use std::os::unix::fs::MetadataExt as _;
    for source in sources {
        let now = std::fs::metadata(&source.path).ok().map(|m| (m.dev(), m.ino()));
        if source.identity.is_some() && now != source.identity {
            return Err(DataError::ReplacedWhileRead { path: source.path.clone() });
        }
    }
    Ok(())
}

/// A reader that hashes the stored bytes as they pass.
struct Hashing<R> {
    inner: R,
    hasher: xxhash_rust::xxh3::Xxh3,
    /// Stored bytes read so far (shared: the progress shown while reading counts them).
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

const CHUNK: usize = 4 << 20;

/// The longest line read: a file with none of its lines ended this far (`/dev/zero`, a binary
/// file, a gzip bomb of zero bytes) is no file of lines, refused before it fills memory. Amazon's
/// longest meta lines are some hundred KB; a one-line attributes document for a million items,
/// some tens of MB.
const MAX_LINE: usize = 256 << 20;

/// How far a file was read: stored bytes read, decompressed bytes, and lines (at the end of a
/// whole stream the last one counts even without its newline; where the stream broke, only
/// complete lines count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadProgress {
    /// Whether the file is gzip (else plain text).
    pub gzip: bool,
    pub stored: u64,
    pub raw: u64,
    pub lines: u64,
}

/// Why the reader thread stopped early.
enum ReadFailure {
    /// The gzip stream breaks off before its end (a cut file, an interrupted download).
    Cut(ReadProgress),
    /// Any other read or decompression error.
    Broken(ReadProgress, std::io::Error),
    /// The file's first bytes show it is not line-oriented text as read here: why, and the fix.
    NotLines(String),
    /// No thread could be started to read or parse it.
    NoThread(std::io::Error),
}

/// What is wrong with a file whose (decompressed) text opens with `head`, when it cannot be read
/// line by line at all: gzip data compressed a second time, or lines that end in a carriage
/// return alone (which would make the whole file one line, read into memory whole).
fn not_lines(head: &[u8], gzip: bool) -> Option<String> {
    if gzip && head.starts_with(&[GZIP_ID1, 0x8b]) {
        return Some(
            "its gzip data decompresses to gzip data again (compressed twice): decompress it once (`gunzip`) and \
             pass the file that leaves"
                .into(),
        );
    }
    // Compressed otherwise than gzip, whatever the name says: their magic numbers.
    let others: [(&[u8], &str, &str); 4] = [
        (b"\xFD7zXZ\x00", "xz", "xz -d"),
        (b"BZh", "bzip2", "bzip2 -d"),
        (b"PK\x03\x04", "zip", "unzip"),
        (b"\x28\xB5\x2F\xFD", "zstd", "zstd -d"),
    ];
    if let Some((_, format, tool)) = others.iter().find(|(magic, ..)| head.starts_with(magic)) {
        let also = if gzip { " inside its gzip data" } else { "" };
        return Some(format!(
            "{format}-compressed{also}: micn reads plain or gzip-compressed text; decompress it first (`{tool}`), \
             or compress it with gzip"
        ));
    }
    // No line feed at all, and a carriage return before the text's end.
    let cr_only = !head.contains(&b'\n') && head.trim_ascii_end().contains(&b'\r');
    cr_only.then(|| {
        "its lines end in a carriage return alone (old Mac line endings), not a line feed: convert them first, \
         e.g. `tr '\\r' '\\n' < FILE > FILE.unix`"
            .into()
    })
}

/// What the reader thread hands back: the hasher and how far it read.
type ReaderEnd = (Hashing<BufReader<File>>, ReadProgress);

struct Chunk {
    index: usize,
    first_line: u64,
    data: Vec<u8>,
}

/// A gzip file's members, one after another (as `gzip -d` reads them; a download concatenated
/// from parts has several), then only zero bytes (padding, which `gzip -d` and Python skip) or
/// nothing. Other bytes after a member are an error that says so: neither the stream's end nor
/// another member, so not a cut file (flate2's `MultiGzDecoder` takes them for a member's start
/// and reports a truncated stream).
struct GzMembers<R: BufRead> {
    /// The member being read; `None` at the end.
    member: Option<flate2::bufread::GzDecoder<R>>,
    /// Stored bytes the input has read from the file (its buffer included): where the gzip
    /// data ends, when other bytes follow it.
    stored_read: Arc<AtomicU64>,
}

impl<R: BufRead> GzMembers<R> {
    fn new(input: R, stored_read: Arc<AtomicU64>) -> Self {
        Self { member: Some(flate2::bufread::GzDecoder::new(input)), stored_read }
    }
}

/// The byte every gzip member opens with (ID1, RFC 1952, section 2.3.1). A member cut after it
/// is reported as a cut stream, one with a wrong second byte as an invalid header.
const GZIP_ID1: u8 = 0x1f;

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(member) = self.member.as_mut() else { return Ok(0) };
            match member.read(buf)? {
                0 if !buf.is_empty() => {}
                n => return Ok(n),
            }
            let mut input = self.member.take().expect("a member is being read").into_inner();
            let next = input.fill_buf()?;
            if next.is_empty() {
                return Ok(0);
            }
            if next[0] == GZIP_ID1 {
                self.member = Some(flate2::bufread::GzDecoder::new(input));
                continue;
            }
            // Zero padding to the end, or bytes that are not gzip.
            let gzip_end = self.stored_read.load(Ordering::Relaxed) - next.len() as u64;
            let mut past_end = 0u64;
            loop {
                let next = input.fill_buf()?;
                if next.is_empty() {
                    return Ok(0);
                }
                if let Some(at) = next.iter().position(|&b| b != 0) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the gzip data ends at byte {}, but the file goes on with bytes that are neither \
                             another gzip member nor zero padding ({:#04x}, {} bytes past the end): remove them, or \
                             get the file again",
                            crate::progress::thousands(gzip_end),
                            next[at],
                            past_end + at as u64
                        ),
                    ));
                }
                let n = next.len();
                past_end += n as u64;
                input.consume(n);
            }
        }
    }
}

/// The reader thread of [`parse_lines`]: the (decompressed) stream split into chunks of whole
/// lines, numbered in order, until the end or a broken stream.
fn read_chunks(
    mut hashing: Hashing<BufReader<File>>,
    gzip: bool,
    chunk_tx: mpsc::SyncSender<Chunk>,
) -> Result<ReaderEnd, ReadFailure> {
    let mut progress = ReadProgress { gzip, ..ReadProgress::default() };
    let mut stopped: Option<std::io::Error> = None;
    {
        let stored_read = hashing.bytes.clone();
        let mut source: Box<dyn Read + '_> = if gzip {
            Box::new(GzMembers::new(BufReader::new(&mut hashing), stored_read))
        } else {
            Box::new(&mut hashing)
        };
        let mut carry: Vec<u8> = Vec::new();
        let (mut index, mut next_line) = (0usize, 1u64);
        loop {
            let mut data = std::mem::take(&mut carry);
            let start = data.len();
            data.reserve_exact(CHUNK);
            data.resize(start + CHUNK, 0);
            let mut filled = start;
            while filled < data.len() {
                match source.read(&mut data[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                }
            }
            progress.raw += (filled - start) as u64;
            data.truncate(filled);
            if stopped.is_some() {
                // Nothing after a broken stream is parsed: count the complete lines.
                progress.lines = next_line - 1 + data.iter().filter(|&&b| b == b'\n').count() as u64;
                break;
            }
            if index == 0 && start == 0 {
                if let Some(why) = not_lines(&data, gzip) {
                    return Err(ReadFailure::NotLines(why));
                }
            }
            let eof = filled < start + CHUNK;
            if !eof {
                // Keep the trailing partial line for the next chunk (the part carried over holds
                // no line feed: only what was read now is searched).
                match data[start..].iter().rposition(|&b| b == b'\n') {
                    Some(pos) => carry = data.split_off(start + pos + 1),
                    None if data.len() > MAX_LINE => {
                        return Err(ReadFailure::NotLines(format!(
                            "line {next_line} runs past {} MiB without a line feed: not a file of lines (one record \
                             per line); a JSON document on one line can be written with line breaks \
                             (`python3 -m json.tool`)",
                            MAX_LINE >> 20
                        )));
                    }
                    None => {
                        carry = data; // a line longer than a chunk: keep it and read more
                        continue;
                    }
                }
            }
            let n_lines = data.iter().filter(|&&b| b == b'\n').count() as u64
                + u64::from(data.last().is_some_and(|&b| b != b'\n'));
            if data.is_empty() {
                break;
            }
            if chunk_tx.send(Chunk { index, first_line: next_line, data }).is_err() {
                break;
            }
            index += 1;
            next_line += n_lines;
            progress.lines = next_line - 1;
            if eof {
                break;
            }
        }
    }
    drop(chunk_tx);
    progress.stored = hashing.bytes.load(Ordering::Relaxed);
    match stopped {
        // flate2's word for a stream that stops before its end.
        Some(e) if gzip && e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadFailure::Cut(progress)),
        Some(e) => Err(ReadFailure::Broken(progress, e)),
        None => Ok((hashing, progress)),
    }
}

/// A parsing thread of [`parse_lines`]: every non-blank line of each chunk parsed, the results
/// sent back with their chunk's index and line numbers.
fn parse_chunks<T>(
    rx: &std::sync::Mutex<mpsc::Receiver<Chunk>>,
    tx: mpsc::SyncSender<ParsedChunk<T>>,
    parse: &(impl Fn(&str) -> Result<T, Bad> + Sync),
) {
    loop {
        let chunk = match rx.lock().expect("chunk queue").recv() {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut out = Vec::new();
        for (i, line) in chunk.data.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // A byte-order mark opening the file (Windows tools write one) is not part of its
            // first line.
            let line = match chunk.first_line + i as u64 {
                1 => line.strip_prefix(UTF8_BOM).unwrap_or(line),
                _ => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = match std::str::from_utf8(line) {
                Ok(text) => parse(text),
                Err(e) => Err(Bad::new(BadKind::NonUtf8, e.to_string())),
            };
            out.push((chunk.first_line + i as u64, parsed));
        }
        if tx.send((chunk.index, out)).is_err() {
            return;
        }
    }
}

/// The UTF-8 byte-order mark.
pub(crate) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A chunk's index and its lines' (number, parse result).
type ParsedChunk<T> = (usize, Vec<(u64, Result<T, Bad>)>);

/// Read `path` (gzip or plain), parse every non-blank line with `parse` on all cores, and hand
/// each good record to `sink` in file order with its 1-based line number. Bad lines are counted,
/// or in strict mode stop the read with [`DataError::BadLine`].
///
/// A compressed stream that cannot be read to its end is a broken file, not a bad line, in
/// either mode: a gzip stream that breaks off early (a cut or interrupted download: the real
/// `*.head.json.gz` fixture is such a cut; [`DataError::TruncatedGzip`]) or a corrupt one
/// ([`DataError::BrokenStream`]) is an error naming the file and how far it was read (stored
/// bytes, decompressed bytes, complete lines). Records handed to `sink` before the error are
/// then to be discarded by the caller.
pub fn parse_lines<T: Send>(
    path: &Path,
    strictness: Strictness,
    parse: impl Fn(&str) -> Result<T, Bad> + Sync,
    mut sink: impl FnMut(T, u64),
) -> Result<FileSummary, DataError> {
    parse_lines_checked(path, strictness, parse, |record, line| {
        sink(record, line);
        Ok(())
    })
}

/// [`parse_lines`] whose `sink` may still find a record bad, in file order: for lines that
/// are read by what an earlier line said (a header naming the columns). What it rejects is a
/// bad line like those `parse` rejects: counted, or fatal in strict mode.
pub fn parse_lines_checked<T: Send>(
    path: &Path,
    strictness: Strictness,
    parse: impl Fn(&str) -> Result<T, Bad> + Sync,
    mut sink: impl FnMut(T, u64) -> Result<(), Bad>,
) -> Result<FileSummary, DataError> {
    let io = |source| DataError::Io(PathIo { path: path.to_path_buf(), source });
    let opened = File::open(path).map_err(io)?;
    // A pipe (or a device) has no size to measure the read against.
    let metadata = Some(opened.metadata().map_err(io)?).filter(|m| m.is_file());
    let stored_total = metadata.as_ref().map(|m| m.len());
    let identity = metadata.map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        (m.dev(), m.ino())
    });
    let mut file = BufReader::with_capacity(1 << 20, opened);
    let gzip = {
        use std::io::BufRead;
        file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b])
    };
    let stored_read = Arc::new(AtomicU64::new(0));
    let hashing = Hashing { inner: file, hasher: xxhash_rust::xxh3::Xxh3::new(), bytes: stored_read.clone() };
    let mut meter = ReadMeter::new(path, stored_total);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);

    let mut issues = Issues::default();
    let mut failure: Option<DataError> = None;

    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Chunk>(workers * 2);
    let chunk_rx = std::sync::Mutex::new(chunk_rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<ParsedChunk<T>>(workers * 2);
    let read = std::thread::scope(|scope| -> Result<ReaderEnd, ReadFailure> {
        // Workers: parse chunks; as many as can be started, one at least. (Before the reader, which
        // would wait for them for good.)
        for started in 0..workers {
            let (rx, tx, parse) = (&chunk_rx, done_tx.clone(), &parse);
            match std::thread::Builder::new().spawn_scoped(scope, move || parse_chunks(rx, tx, parse)) {
                Ok(_) => {}
                Err(e) if started == 0 => return Err(ReadFailure::NoThread(e)),
                Err(_) => break,
            }
        }
        drop(done_tx);
        // Reader: split the (decompressed) stream into chunks of whole lines. Not started, it drops
        // the chunks' sender, and the workers end.
        let reader = std::thread::Builder::new()
            .spawn_scoped(scope, move || read_chunks(hashing, gzip, chunk_tx))
            .map_err(ReadFailure::NoThread)?;

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
                if let Some((last, _)) = results.last() {
                    meter.update(stored_read.load(Ordering::Relaxed), *last);
                }
                for (line, parsed) in results {
                    match parsed.and_then(|record| sink(record, line)) {
                        Ok(()) => {}
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
        reader.join().expect("reader thread")
    });
    // A file cut or written to while it was read comes first: what was read is no version of it,
    // and its change may be what broke the stream or cut the last line. Its size then differs
    // from the one at its opening, now or where the read ended.
    if let Some(at_open) = stored_total {
        let now = std::fs::metadata(path).map_or(at_open, |m| m.len());
        let read_to_end = read.as_ref().ok().map_or(at_open, |(_, progress)| progress.stored);
        if let Some(after) = [now, read_to_end].into_iter().find(|&size| size != at_open) {
            return Err(DataError::ChangedWhileRead { path: path.to_path_buf(), at_open, after });
        }
    }
    // A broken stream comes next: a bad line before it says less about the file.
    let (hashing, progress) = match read {
        Ok(end) => end,
        Err(ReadFailure::Cut(read)) => return Err(DataError::TruncatedGzip { path: path.to_path_buf(), read }),
        Err(ReadFailure::Broken(read, source)) => {
            return Err(DataError::BrokenStream { path: path.to_path_buf(), read, stored_total, source });
        }
        Err(ReadFailure::NotLines(message)) => return Err(DataError::Invalid { path: path.to_path_buf(), message }),
        Err(ReadFailure::NoThread(source)) => {
            let source = crate::io_error::NoThread { what: "reading it", source };
            return Err(DataError::Thread { path: path.to_path_buf(), source });
        }
    };
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(FileSummary {
        path: path.to_path_buf(),
        xxh3: format!("{:016x}", hashing.hasher.digest()),
        bytes: progress.stored,
        raw_bytes: progress.raw,
        lines: progress.lines,
        issues,
        identity,
    })
}

/// A whole text file, gzip or plain as [`parse_lines`] reads it, its non-blank lines joined by
/// `\n` (for a file that is one document, such as a JSON object), and its summary; a line that
/// is not UTF-8 is an error naming it.
pub fn read_text(path: &Path) -> Result<(String, FileSummary), DataError> {
    let mut text = String::new();
    let summary = parse_lines(
        path,
        Strictness::Strict,
        |line| Ok(line.to_string()),
        |line, _| {
            text.push_str(&line);
            text.push('\n');
        },
    )?;
    Ok((text, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::thousands;

    #[test]
    fn a_rejected_line_names_its_kind_once() {
        assert_eq!(describe(BadKind::MissingField, "missing field `asin`"), "missing field `asin`");
        assert_eq!(describe(BadKind::Malformed, "expected value"), "malformed: expected value");
        let mut issues = Issues::default();
        issues.record(BadKind::MissingField, 7, "missing field `unixReviewTime`");
        assert_eq!(issues.first_problem, Some((7, "missing field `unixReviewTime`".into())));
    }

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
    fn a_line_that_never_ends_is_refused_before_it_fills_memory() {
        // A gzip bomb of sorts: a small gzip file holding a line of 260 MiB after a short one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endless.json.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, b"a\n").unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_LINE >> 20) + 4 {
            std::io::Write::write_all(&mut encoder, &block).unwrap();
        }
        std::fs::write(&path, encoder.finish().unwrap()).unwrap();
        let e = read_all(&path, Strictness::Lenient).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 2 runs past 256 MiB without a line feed: not a file of lines (one record per line); a \
                 JSON document on one line can be written with line breaks (`python3 -m json.tool`)",
                path.display()
            )
        );
    }

    #[test]
    fn an_input_replaced_by_another_file_after_it_was_read_is_refused_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (path, other) = (dir.path().join("reviews.json"), dir.path().join("other.json"));
        std::fs::write(&path, "a\nb\n").unwrap();
        let (_, summary) = read_all(&path, Strictness::Strict).unwrap();
        check_unreplaced(std::slice::from_ref(&summary)).unwrap();
        // Written again whole as a new file and renamed over it (as `micn synth` replaces its
        // output): the same size, another file.
        std::fs::write(&other, "c\nd\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let e = check_unreplaced(&[summary]).unwrap_err();
        assert!(!e.is_input_error(), "running again helps");
        assert!(e.to_string().starts_with(&format!("{}: replaced by another file", path.display())), "{e}");
    }

    #[test]
    fn a_file_that_holds_other_than_its_size_when_opened_is_refused() {
        // What a file cut or appended to while it is read looks like: /proc's files say they hold
        // nothing and hold a page.
        let e = read_all(Path::new("/proc/self/status"), Strictness::Lenient).unwrap_err();
        assert!(matches!(e, DataError::ChangedWhileRead { at_open: 0, after, .. } if after > 0), "{e}");
        assert!(
            e.to_string().starts_with("/proc/self/status: changed while it was read (0 bytes when opened, "),
            "{e}"
        );
    }

    #[test]
    fn a_file_compressed_twice_or_with_carriage_returns_alone_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let twice = dir.path().join("twice.json.gz");
        std::fs::write(&twice, gzip(&gzip(b"{\"a\": 1}\n"))).unwrap();
        let cr = dir.path().join("mac.json");
        std::fs::write(&cr, b"{\"a\": 1}\r{\"a\": 2}\r").unwrap();
        for (path, says) in [(&twice, "compressed twice"), (&cr, "carriage return alone")] {
            for strictness in [Strictness::Lenient, Strictness::Strict] {
                let e = read_all(path, strictness).unwrap_err().to_string();
                assert!(e.starts_with(&format!("{}: its ", path.display())) && e.contains(says), "{e}");
            }
        }
        // Another compression, named `.gz` or inside gzip data: said, with the way out.
        let xz = dir.path().join("reviews.json.gz");
        std::fs::write(&xz, b"\xFD7zXZ\x00\x00\x04\xE6\xD6\xB4\x46\x02\x00").unwrap();
        let e = read_all(&xz, Strictness::Lenient).unwrap_err().to_string();
        assert!(e.contains("reviews.json.gz: xz-compressed: micn reads plain or gzip") && e.contains("`xz -d`"), "{e}");
        std::fs::write(&xz, gzip(b"BZh91AY&SY\x01\x02")).unwrap();
        let e = read_all(&xz, Strictness::Lenient).unwrap_err().to_string();
        assert!(e.contains("bzip2-compressed inside its gzip data"), "{e}");
        // Windows line endings, and a carriage return that ends the file's only line, are read.
        std::fs::write(&cr, b"ab\r\ncd\r\n").unwrap();
        assert_eq!(read_all(&cr, Strictness::Strict).unwrap().0, [(1, 2), (2, 2)]);
        std::fs::write(&cr, b"ab\r").unwrap();
        assert_eq!(read_all(&cr, Strictness::Strict).unwrap().0, [(1, 2)]);
        // A stray carriage return inside a line that ends in a line feed is the line's own.
        std::fs::write(&cr, b"a\rb\ncd\n").unwrap();
        assert_eq!(read_all(&cr, Strictness::Strict).unwrap().0, [(1, 3), (2, 2)]);
    }

    #[test]
    fn a_byte_order_mark_opening_the_file_is_not_part_of_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bom.txt");
        std::fs::write(&path, b"\xEF\xBB\xBFab\r\n\xEF\xBB\xBFcd\n").unwrap();
        let mut lines = Vec::new();
        parse_lines(&path, Strictness::Strict, |l| Ok(l.to_string()), |l, n| lines.push((n, l))).unwrap();
        // Only the file's first bytes are a mark; the same bytes later are the line's own.
        assert_eq!(lines, [(1, "ab".to_string()), (2, "\u{feff}cd".to_string())]);
    }

    fn gzip(text: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_cut_gzip_stream_is_refused_in_either_mode_saying_how_far_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..20_000).map(|i| format!("line {i} {}\n", i * 7919 % 10007)).collect();
        let gz = gzip(text.as_bytes());
        let path = dir.path().join("cut.gz");
        let cut = &gz[..gz.len() / 2];
        std::fs::write(&path, cut).unwrap();
        // What an independent decoder makes of the cut bytes: the complete lines the error counts.
        let mut prefix = Vec::new();
        let _ = flate2::read::MultiGzDecoder::new(cut).read_to_end(&mut prefix);
        let complete = prefix.iter().filter(|&&b| b == b'\n').count();
        assert!(complete > 1000 && complete < 20_000, "{complete} lines before the cut");

        for strictness in [Strictness::Lenient, Strictness::Strict] {
            let e = read_all(&path, strictness).unwrap_err();
            // A typed error a caller can act on (fetch the file again), with how far it got.
            let read =
                ReadProgress { gzip: true, stored: cut.len() as u64, raw: prefix.len() as u64, lines: complete as u64 };
            assert!(matches!(&e, DataError::TruncatedGzip { path: p, read: r } if *p == path && *r == read), "{e:?}");
            let e = e.to_string();
            assert!(e.starts_with(&format!("{}: the gzip stream ends early", path.display())), "{e}");
            assert!(e.contains(&format!("all {} stored bytes", thousands(cut.len() as u64))), "{e}");
            assert!(e.contains(&format!("({} complete lines)", thousands(complete as u64))), "{e}");
            assert!(e.contains("truncated"), "{e}");
        }
        // Cut inside the 10-byte gzip header: nothing decompresses, still the same error.
        std::fs::write(&path, &gz[..5]).unwrap();
        let e = read_all(&path, Strictness::Lenient).unwrap_err().to_string();
        assert!(e.contains("the gzip stream ends early") && e.contains("(0 complete lines)"), "{e}");

        // Whole: nothing truncated.
        std::fs::write(&path, &gz).unwrap();
        let (lines, summary) = read_all(&path, Strictness::Strict).unwrap();
        assert_eq!((lines.len(), summary.raw_bytes), (20_000, text.len() as u64));
    }

    #[test]
    fn a_corrupt_gzip_stream_is_refused_in_either_mode_saying_how_far_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        let mut gz = gzip(text.as_bytes());
        // The gzip trailer is CRC-32 then ISIZE (RFC 1952, section 2.2): damage the CRC.
        let crc = gz.len() - 8;
        gz[crc] ^= 0xff;
        let path = dir.path().join("damaged.gz");
        std::fs::write(&path, &gz).unwrap();
        for strictness in [Strictness::Lenient, Strictness::Strict] {
            let e = read_all(&path, strictness).unwrap_err();
            // Typed, with flate2's error kept as the source.
            match &e {
                DataError::BrokenStream { read, stored_total, source, .. } => {
                    assert_eq!((read.gzip, read.lines, *stored_total), (true, 5_000, Some(gz.len() as u64)), "{e:?}");
                    assert_eq!(source.to_string(), "corrupt gzip stream does not have a matching checksum");
                }
                other => panic!("not a broken stream: {other:?}"),
            }
            let e = e.to_string();
            assert!(e.starts_with(&format!("{}: the gzip stream is broken after", path.display())), "{e}");
            // Everything decompressed before the trailer was checked: all 5,000 lines.
            assert!(e.contains("5,000 complete lines read") && e.contains("corrupt gzip stream"), "{e}");
        }
    }

    #[test]
    fn gzip_members_are_read_in_turn_zero_padding_skipped_and_other_trailing_bytes_named() {
        let dir = tempfile::tempdir().unwrap();
        let first: String = (0..3_000).map(|i| format!("a {i}\n")).collect();
        let second: String = (0..2_000).map(|i| format!("b {i}\n")).collect();
        let members = [gzip(first.as_bytes()), gzip(second.as_bytes())].concat();
        let read = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            read_all(&path, Strictness::Strict).map(|(lines, _)| lines.len())
        };
        assert_eq!(read("two.gz", &members).unwrap(), 5_000);
        // Padding past a buffer's length, as a tape or block device leaves it.
        assert_eq!(read("padded.gz", &[&members[..], &[0u8; 70_000]].concat()).unwrap(), 5_000);
        let e = read("garbage.gz", &[&members[..], &[0u8; 3], b"garbage"].concat()).unwrap_err().to_string();
        assert!(e.contains("the gzip stream is broken") && e.contains("5,000 complete lines"), "{e}");
        assert!(e.contains("neither another gzip member nor zero padding (0x67, 3 bytes past the end)"), "{e}");
        assert!(e.contains(&format!("the gzip data ends at byte {},", thousands(members.len() as u64))), "{e}");
        // The same past a read buffer's length: the end is where the members end, not how far
        // the file was read.
        let long: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
        let big = gzip(long.as_bytes());
        let e = read("junk.gz", &[&big[..], &[7u8; 100_000]].concat()).unwrap_err().to_string();
        assert!(e.contains(&format!("the gzip data ends at byte {},", thousands(big.len() as u64))), "{e}");
        // A second member cut short is a cut file, as the first would be.
        let cut = &members[..members.len() - 20];
        assert!(matches!(read("cut.gz", cut).unwrap_err(), DataError::TruncatedGzip { .. }));
    }
}
