//! What the launcher prints: every rank's lines, whole and under their own rank, mpirun's own
//! messages, and the launcher's, as text or (with `--log-format json`) as JSON lines.
//!
//! mpirun (`--tag-output`) reads each rank's pipe in chunks and writes every chunk with a
//! `[job,rank]<stream>:` tag in front, and a fresh tag after each newline inside it. A rank line
//! that reaches mpirun in several chunks therefore arrives with tags in its middle, interleaved
//! with other ranks' chunks:
//!
//! ```text
//! [1,1]<stderr>:error: rank [1,0]<stderr>:WARN x[1,1]<stderr>:1: bad config
//! [1,0]<stderr>: y
//! ```
//!
//! [`Reassembler`] splits each line mpirun prints at its tags, keeps every rank's unfinished text,
//! and hands a rank's line out when the newline ending it arrives (`[rank 1] error: rank 1: bad
//! config`, then `[rank 0] WARN x y`). Writes to a closed terminal or pipe are ignored: after a
//! hang-up the launcher must keep draining mpirun's output until the job has checkpointed.
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};

/// One complete line of mpirun's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line a rank printed.
    Rank { rank: usize, text: String },
    /// A line of mpirun's own (help messages, warnings).
    Mpirun(String),
}

/// Rebuilds each rank's lines from one of mpirun's tagged output streams.
#[derive(Debug, Default)]
pub struct Reassembler {
    /// Text a rank has sent without the newline that ends its line yet.
    partial: BTreeMap<usize, String>,
}

impl Reassembler {
    /// The lines completed by one line of mpirun's output (given without its newline).
    pub fn push(&mut self, line: &str) -> Vec<Line> {
        let (untagged, chunks) = split_tags(line);
        let mut done = Vec::new();
        if !untagged.is_empty() || chunks.is_empty() {
            done.push(Line::Mpirun(untagged.to_string()));
        }
        let Some(((last_rank, last_text), earlier)) = chunks.split_last() else { return done };
        // Every chunk but the last stopped mid-line: its rank's line goes on in a later chunk.
        for &(rank, text) in earlier {
            self.partial.entry(rank).or_default().push_str(text);
        }
        // The newline that ended mpirun's line ended the last chunk's rank line.
        let mut text = self.partial.remove(last_rank).unwrap_or_default();
        text.push_str(last_text);
        done.push(Line::Rank { rank: *last_rank, text });
        done
    }

    /// What ranks left unfinished when the stream ended, one line each.
    pub fn finish(&mut self) -> Vec<Line> {
        std::mem::take(&mut self.partial).into_iter().map(|(rank, text)| Line::Rank { rank, text }).collect()
    }
}

/// The text before the first tag, and each tagged chunk as (rank, text up to the next tag).
fn split_tags(line: &str) -> (&str, Vec<(usize, &str)>) {
    let mut tags = Vec::new(); // (start of the tag, start of its text, rank)
    let mut from = 0;
    while let Some(at) = line[from..].find('[').map(|i| from + i) {
        match parse_tag(&line[at..]) {
            Some((len, rank)) => {
                tags.push((at, at + len, rank));
                from = at + len;
            }
            None => from = at + 1,
        }
    }
    let untagged = &line[..tags.first().map_or(line.len(), |t| t.0)];
    let chunks = tags
        .iter()
        .enumerate()
        .map(|(i, &(_, text_start, rank))| {
            let end = tags.get(i + 1).map_or(line.len(), |next| next.0);
            (rank, &line[text_start..end])
        })
        .collect();
    (untagged, chunks)
}

/// `[job,rank]<stdout|stderr|stddiag>:` at the start of `s`: its length and the rank.
fn parse_tag(s: &str) -> Option<(usize, usize)> {
    let rest = s.strip_prefix('[')?;
    let (ids, rest) = rest.split_once(']')?;
    let (job, rank) = ids.split_once(',')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(job) || !digits(rank) {
        return None;
    }
    let stream = ["<stdout>:", "<stderr>:", "<stddiag>:"].into_iter().find(|t| rest.starts_with(t))?;
    Some((1 + ids.len() + 1 + stream.len(), rank.parse().ok()?))
}

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Prints lines as text, or as JSON lines on standard error for `--log-format json`.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
}

impl Printer {
    /// A rank's or mpirun's line, labelled.
    pub fn line(&self, stream: Stream, line: &Line) {
        let text = match line {
            Line::Rank { rank, text } => self.rank_line(stream, *rank, text),
            Line::Mpirun(text) if self.json && stream == Stream::Stderr => json_object(&[
                ("time", &now()),
                ("level", &json_string("INFO")),
                ("target", &json_string("mpirun")),
                ("message", &json_string(text)),
            ]),
            Line::Mpirun(text) => text.clone(),
        };
        write_line(stream, &text);
    }

    /// One of the launcher's own messages, on standard error.
    pub fn say(&self, level: &str, message: &str) {
        let text = if self.json {
            json_object(&[
                ("time", &now()),
                ("level", &json_string(level)),
                ("target", &json_string("micn-launch")),
                ("message", &json_string(message)),
            ])
        } else {
            format!("micn-launch: {message}")
        };
        write_line(Stream::Stderr, &text);
    }

    /// `[rank N] text`, unless the line already names its rank: micn's text log lines
    /// (`[rank N] ...`), its error line (`error: rank N: ...`) and its JSON log lines (a `rank`
    /// field; on standard error in JSON mode every line is a JSON object, so other lines are
    /// wrapped in one). Rank 0's standard output, where micn prints its results (`eval --json`,
    /// `predict --out /dev/stdout`), passes as it is, for a program to read.
    fn rank_line(&self, stream: Stream, rank: usize, text: &str) -> String {
        if stream == Stream::Stdout && rank == 0 {
            return text.to_string();
        }
        if self.json && stream == Stream::Stderr {
            return if is_json_log_line(text) {
                text.to_string()
            } else {
                let level = if text.starts_with("error: ") { "ERROR" } else { "INFO" };
                json_object(&[
                    ("time", &now()),
                    ("level", &json_string(level)),
                    ("rank", &rank.to_string()),
                    ("message", &json_string(text)),
                ])
            };
        }
        let labelled = text.starts_with(&format!("[rank {rank}] "))
            || text.starts_with(&format!("error: rank {rank}: "))
            || is_json_log_line(text);
        if labelled {
            text.to_string()
        } else {
            format!("[rank {rank}] {text}")
        }
    }
}

/// A JSON object on one line that carries a `rank` field: micn's `--log-format json` lines.
fn is_json_log_line(text: &str) -> bool {
    let text = text.trim_end();
    text.starts_with('{') && text.ends_with('}') && text.contains("\"rank\":")
}

/// The first failure to write standard output other than a closed pipe (a full disk under
/// `> file`), which makes the launcher's exit status 1 ([`stdout_status`]).
static STDOUT_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Write `text` and a newline in one write. A closed pipe or terminal is not an error here (the
/// job's output is still drained, so that no rank blocks on it, and a job whose terminal closed
/// goes on); any other failure to write standard output (a full disk) is kept for
/// [`stdout_status`].
pub fn write_line(stream: Stream, text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    match stream {
        Stream::Stdout => {
            if let Err(e) = std::io::stdout().lock().write_all(&bytes) {
                if e.kind() != std::io::ErrorKind::BrokenPipe && !stdout_is_terminal() {
                    let _ = STDOUT_FAILURE.set(e.to_string());
                }
            }
        }
        Stream::Stderr => drop(std::io::stderr().lock().write_all(&bytes)),
    }
}

/// Whether standard output is a terminal, as it was at the first call (a terminal that was since
/// closed no longer says it is one): [`main`](crate) asks before anything is written.
pub fn stdout_is_terminal() -> bool {
    static TERMINAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stdout().is_terminal())
}

/// 1 after saying why when standard output could not be written (lines were lost), else 0.
pub fn stdout_status(printer: Printer) -> i32 {
    match STDOUT_FAILURE.get() {
        Some(e) => {
            printer.say("ERROR", &format!("error: writing to standard output: {e}"));
            1
        }
        None => 0,
    }
}

/// Seconds since the Unix epoch, as micn's JSON log lines give `time`.
fn now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:.6}", t.as_secs_f64())
}

/// `{"k":v,...}` from keys and values that are already JSON.
fn json_object(fields: &[(&str, &str)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", json_string(k))).collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON string literal (RFC 8259 §7: quote, backslash and control characters escaped).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(rank: usize, text: &str) -> Line {
        Line::Rank { rank, text: text.to_string() }
    }

    #[test]
    fn whole_tagged_lines_pass_through() {
        let mut r = Reassembler::default();
        assert_eq!(r.push("[1,3]<stdout>:hello"), [rank(3, "hello")]);
        assert_eq!(r.push("[1,0]<stderr>:"), [rank(0, "")]);
        assert_eq!(r.push("plain mpirun message"), [Line::Mpirun("plain mpirun message".into())]);
        assert_eq!(r.push(""), [Line::Mpirun(String::new())]);
        assert!(r.finish().is_empty());
    }

    #[test]
    fn a_line_written_in_pieces_between_other_ranks_pieces_is_put_back_together() {
        // What mpirun printed for micn's error line written in pieces (issue 13, item 13),
        // with rank 0 writing its own line at the same time.
        let mut r = Reassembler::default();
        let first = r.push("[1,1]<stderr>:error: rank [1,0]<stderr>:WARN slow[1,1]<stderr>:1[1,1]<stderr>:: bad");
        assert_eq!(first, [rank(1, "error: rank 1: bad")]);
        assert_eq!(r.push("[1,0]<stderr>: disk"), [rank(0, "WARN slow disk")]);
        assert!(r.finish().is_empty());
    }

    #[test]
    fn text_that_only_looks_like_a_tag_is_kept() {
        let mut r = Reassembler::default();
        assert_eq!(r.push("[1,2]<stdout>:see [1,x]<stdout>: and [3]"), [rank(2, "see [1,x]<stdout>: and [3]")]);
        assert_eq!(r.push("[1,2]<stdout>:[rank 2] [1,2] done"), [rank(2, "[rank 2] [1,2] done")]);
    }

    #[test]
    fn mpirun_text_before_a_tag_is_its_own_line_and_unfinished_lines_end_the_stream() {
        let mut r = Reassembler::default();
        let lines = r.push("mpirun says[1,0]<stderr>:partial");
        assert_eq!(lines, [Line::Mpirun("mpirun says".into()), rank(0, "partial")]);
        assert!(r.push("[1,1]<stderr>:no newline yet[1,0]<stderr>:x").contains(&rank(0, "x")));
        assert_eq!(r.finish(), [rank(1, "no newline yet")]);
    }

    #[test]
    fn text_lines_are_labelled_once_with_their_rank() {
        let p = Printer { json: false };
        assert_eq!(p.rank_line(Stream::Stdout, 3, "hello"), "[rank 3] hello");
        assert_eq!(p.rank_line(Stream::Stdout, 0, "sample,user"), "sample,user", "rank 0's results as they are");
        assert_eq!(p.rank_line(Stream::Stderr, 0, "hello"), "[rank 0] hello");
        assert_eq!(p.rank_line(Stream::Stderr, 1, "[rank 1] INFO ready"), "[rank 1] INFO ready");
        assert_eq!(p.rank_line(Stream::Stderr, 1, "error: rank 1: bad"), "error: rank 1: bad");
        // A label naming another rank is the rank's text, not a label.
        assert_eq!(p.rank_line(Stream::Stderr, 0, "error: rank 1: x"), "[rank 0] error: rank 1: x");
        let json = r#"{"level":"INFO","rank":1,"message":"x"}"#;
        assert_eq!(p.rank_line(Stream::Stderr, 1, json), json);
    }

    #[test]
    fn in_json_mode_every_standard_error_line_is_a_json_object() {
        let p = Printer { json: true };
        let json = r#"{"level":"INFO","rank":1,"message":"x"}"#;
        assert_eq!(p.rank_line(Stream::Stderr, 1, json), json);
        let wrapped = p.rank_line(Stream::Stderr, 1, "error: rank 1: \"a\"\tb\\c\u{1}");
        let expected = r#""level":"ERROR","rank":1,"message":"error: rank 1: \"a\"\tb\\c\u0001"}"#;
        assert!(wrapped.starts_with(r#"{"time":"#) && wrapped.ends_with(expected), "{wrapped}");
        // Standard output keeps the command's own text.
        assert_eq!(p.rank_line(Stream::Stdout, 0, "test AUC 0.8"), "test AUC 0.8");
        assert_eq!(p.rank_line(Stream::Stdout, 1, "test AUC 0.8"), "[rank 1] test AUC 0.8");
    }
}
