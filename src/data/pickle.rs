//! Reading DIEN's vocabulary pickles (`uid_voc.pkl`, `mid_voc.pkl`, `cat_voc.pkl`): Python
//! pickles of one flat `str → int` dict, written by Python 2 (`cPickle`, protocols 0–2) or
//! Python 3 (protocols 2–5). Only the opcodes such a dict can contain are understood; anything
//! else is a [`PickleError`] naming the opcode and its offset. Nothing is ever executed.
//!
//! Hostile or damaged bytes cannot exhaust the stack or the memory:
//! - a dict may only hold `str → int` entries, checked as each entry is set, so values never
//!   nest (a dict inside a dict is refused at the offset where it is set: the nesting limit is
//!   one level) and nothing is ever walked recursively;
//! - the memo shares values by reference, as Python's does (a dict or string fetched a million
//!   times is one object, never a deep copy), and a dict changed after it was memoised is seen
//!   changed through the memo, as in Python;
//! - every length is checked against the bytes that remain before anything is allocated, and
//!   every value the parser creates comes from at least one input byte, so memory stays linear
//!   in the file's size.
//!
//! What the ids mean (their range, duplicates, which file is which) is for the caller to judge:
//! see [`super::dien_files`].
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Why bytes are not a pickle of a `str → int` dict, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte offset {offset}: {message}")]
pub struct PickleError {
    /// Offset of the opcode where the problem was found (the file's length at its end).
    pub offset: usize,
    pub message: String,
}

/// The newest pickle protocol (Python 3.8's 5).
const HIGHEST_PROTOCOL: u8 = 5;

/// A dict under construction: entries in insertion order, a key set twice keeping its first
/// place and its last value (Python's dict).
#[derive(Debug, Default)]
struct Dict {
    entries: Vec<(Rc<str>, i64)>,
    index: HashMap<Rc<str>, usize>,
}

impl Dict {
    fn set(&mut self, key: Rc<str>, value: i64) {
        match self.index.get(&key) {
            Some(&at) => self.entries[at].1 = value,
            None => {
                self.index.insert(Rc::clone(&key), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }
}

/// One value on the unpickler's stack. Cloning is cheap and shares (`Rc`): the memo holds the
/// same objects as the stack.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
    Dict(Rc<RefCell<Dict>>),
}

impl Value {
    /// What the value is, for messages (long strings shortened).
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => if *b { "True" } else { "False" }.into(),
            Value::Int(i) => format!("the int {i}"),
            Value::Str(s) => format!("the str {}", quoted(s)),
            Value::Dict(_) => "a dict".into(),
        }
    }
}

/// `'text'` shortened to 40 characters, for messages.
fn quoted(s: &str) -> String {
    let mut short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// Parse a pickle holding a `str → int` dict.
pub fn read_str_int_dict(bytes: &[u8]) -> Result<HashMap<String, i64>, PickleError> {
    Ok(read_str_int_entries(bytes)?.into_iter().collect())
}

/// Parse a pickle holding a `str → int` dict: its entries in the dict's order (insertion order,
/// as Python keeps it), each key once.
pub fn read_str_int_entries(bytes: &[u8]) -> Result<Vec<(String, i64)>, PickleError> {
    let mut p = Parser { b: bytes, pos: 0, at: 0 };
    match p.run()? {
        Value::Dict(dict) => {
            let dict = dict.borrow();
            Ok(dict.entries.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        }
        other => Err(PickleError {
            offset: bytes.len(),
            message: format!("the pickle holds {}, expected a dict of str → int", other.describe()),
        }),
    }
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for errors.
    at: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, message: impl Into<String>) -> PickleError {
        PickleError { offset: self.at, message: message.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| {
                self.err(format!("truncated pickle: {n} bytes needed, {} left", self.b.len() - self.pos))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn line_bytes(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.b[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("truncated pickle: unterminated text argument"))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let bytes = self.line_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.err("text argument is not UTF-8"))
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    /// A length prefix of `n` bytes; the bytes it announces must still be there.
    fn length(&mut self, n: usize) -> Result<usize, PickleError> {
        let len = self.uint(n)?;
        let left = self.b.len() - self.pos;
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= left)
            .ok_or_else(|| self.err(format!("truncated pickle: a string of {len} bytes announced, {left} left")))
    }

    fn utf8(&self, bytes: &[u8]) -> Result<Value, PickleError> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => Err(self.err("string is not UTF-8")),
        }
    }

    /// Interpret the opcodes up to STOP and return the value it pops: stack and memo operations
    /// here, [`Parser::scalar`] for the opcodes that push one value read from the stream.
    fn run(&mut self) -> Result<Value, PickleError> {
        let mut stack: Vec<Value> = Vec::new();
        // Stack heights at each MARK (Python's metastack): a value below the last mark belongs
        // to an outer frame and cannot be popped by the inner one.
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u64, Value> = HashMap::new();
        loop {
            self.at = self.pos;
            let floor = marks.last().copied().unwrap_or(0);
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let proto = self.uint(1)? as u8;
                    if proto > HIGHEST_PROTOCOL {
                        return Err(self.err(format!("pickle protocol {proto} (known: 0 to {HIGHEST_PROTOCOL})")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME length: a hint for buffering
                }
                b'.' => {
                    return match stack.pop() {
                        Some(v) if stack.len() >= floor && marks.is_empty() => Ok(v),
                        Some(_) => Err(self.err("STOP with a MARK still open")),
                        None => Err(self.err("STOP with an empty stack")),
                    };
                }
                b'(' => marks.push(stack.len()),
                b'}' => stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark(&mut stack, &mut marks)?;
                    let dict = Rc::new(RefCell::new(Dict::default()));
                    self.set_items(&dict, items)?;
                    stack.push(Value::Dict(dict));
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        if stack.len() < floor + 2 {
                            return Err(self.err("SETITEM needs a key and a value on the stack"));
                        }
                        stack.split_off(stack.len() - 2)
                    } else {
                        self.pop_mark(&mut stack, &mut marks)?
                    };
                    let target = match stack.last() {
                        Some(Value::Dict(d)) if stack.len() > marks.last().copied().unwrap_or(0) => Rc::clone(d),
                        Some(other) => return Err(self.err(format!("SETITEM(S) on {}, not a dict", other.describe()))),
                        None => return Err(self.err("SETITEM(S) without a dict")),
                    };
                    self.set_items(&target, items)?;
                }
                b'p' | b'q' | b'r' | 0x94 => {
                    let id = match op {
                        b'p' => self.line()?.parse().map_err(|_| self.err("bad PUT index"))?,
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => memo.len() as u64,
                    };
                    if stack.len() <= floor {
                        return Err(self.err("PUT or MEMOIZE with nothing to memoise"));
                    }
                    memo.insert(id, stack.last().cloned().expect("checked above"));
                }
                b'g' | b'h' | b'j' => {
                    let id = match op {
                        b'g' => self.line()?.parse().map_err(|_| self.err("bad GET index"))?,
                        b'h' => self.uint(1)?,
                        _ => self.uint(4)?,
                    };
                    let value = memo.get(&id).cloned().ok_or_else(|| self.err(format!("GET of unknown memo {id}")))?;
                    stack.push(value);
                }
                other => match self.scalar(other)? {
                    Some(value) => stack.push(value),
                    None => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
                },
            }
        }
    }

    /// The value a scalar opcode pushes (none, a bool, an integer, a string), read from the
    /// stream; `None` for an opcode that is not one.
    fn scalar(&mut self, op: u8) -> Result<Option<Value>, PickleError> {
        Ok(Some(match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(self.uint(4)? as u32 as i32 as i64),
            b'K' => Value::Int(self.uint(1)? as i64),
            b'M' => Value::Int(self.uint(2)? as i64),
            b'I' => {
                let text = self.line()?;
                match text {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    t => Value::Int(t.parse().map_err(|_| self.err(format!("bad INT {}", quoted(t))))?),
                }
            }
            b'L' => {
                let text = self.line()?;
                let t = text.trim_end_matches('L');
                Value::Int(t.parse().map_err(|_| self.err(format!("bad or too large LONG {}", quoted(text))))?)
            }
            0x8a => {
                let n = self.uint(1)? as usize;
                if n > 8 {
                    return Err(self.err(format!("an integer of {n} bytes, wider than 64 bits")));
                }
                let bytes = self.take(n)?;
                let mut v: i64 = bytes.iter().rev().fold(0i64, |acc, &b| (acc << 8) | b as i64);
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                Value::Int(v)
            }
            b'X' | b'T' | b'B' => {
                let n = self.length(4)?;
                let bytes = self.take(n)?;
                self.utf8(bytes)?
            }
            0x8c | b'U' | b'C' => {
                let n = self.length(1)?;
                let bytes = self.take(n)?;
                self.utf8(bytes)?
            }
            0x8d | 0x8e => {
                let n = self.length(8)?;
                let bytes = self.take(n)?;
                self.utf8(bytes)?
            }
            // raw-unicode-escape: bytes are Latin-1 code points, plus \u escapes.
            b'V' => {
                let latin1: String = self.line_bytes()?.iter().map(|&b| b as char).collect();
                let text = unescape_raw_unicode(&latin1).map_err(|m| self.err(m))?;
                Value::Str(Rc::from(text))
            }
            b'S' => {
                let text = self.line()?;
                let s = unquote_repr(text).ok_or_else(|| self.err(format!("bad STRING {}", quoted(text))))?;
                Value::Str(Rc::from(s))
            }
            _ => return Ok(None),
        }))
    }

    /// The values above the last MARK, which is removed.
    fn pop_mark(&self, stack: &mut Vec<Value>, marks: &mut Vec<usize>) -> Result<Vec<Value>, PickleError> {
        let at = marks.pop().ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(stack.split_off(at))
    }

    /// Set alternating keys and values into `dict`: only `str → int` entries, so that a value
    /// never holds another container.
    fn set_items(&self, dict: &RefCell<Dict>, items: Vec<Value>) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return Err(self.err(format!("{} dict items: keys and values do not pair up", items.len())));
        }
        let mut dict = dict.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match (k, v) {
                (Value::Str(k), Value::Int(v)) => dict.set(k, v),
                (Value::Str(k), Value::Dict(_)) => {
                    return Err(self.err(format!(
                        "key {} holds a nested dict: a vocabulary is one flat str → int dict (nesting limit 1)",
                        quoted(&k)
                    )))
                }
                (Value::Str(k), v) => {
                    return Err(self.err(format!("key {} holds {}, expected an int id", quoted(&k), v.describe())))
                }
                (k, _) => return Err(self.err(format!("a key is {}, expected a str", k.describe()))),
            }
        }
        Ok(())
    }
}

/// Python 2 `repr` of a byte string: `'abc'` or `"it's"`, with backslash escapes.
fn unquote_repr(text: &str) -> Option<String> {
    let q = text.chars().next()?;
    if !(q == '\'' || q == '"') || !text.ends_with(q) || text.len() < 2 {
        return None;
    }
    let inner = &text[1..text.len() - 1];
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.bytes();
    while let Some(c) = chars.next() {
        if c != b'\\' {
            bytes.push(c);
            continue;
        }
        match chars.next()? {
            b'n' => bytes.push(b'\n'),
            b't' => bytes.push(b'\t'),
            b'r' => bytes.push(b'\r'),
            b'x' => {
                let hex = [chars.next()?, chars.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}

/// Python's raw-unicode-escape (protocol 0 `UNICODE`): only `\uXXXX` and `\UXXXXXXXX` escapes.
fn unescape_raw_unicode(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let width = match tail.as_bytes().get(1) {
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => {
                out.push('\\');
                rest = &tail[1..];
                continue;
            }
        };
        let hex = tail.get(2..2 + width).ok_or("truncated \\u escape")?;
        let c = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).ok_or("bad \\u escape")?;
        out.push(c);
        rest = &tail[2 + width..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python2_protocol_0_dict_of_byte_strings() {
        // What Python 2's cPickle.dumps({'default_mid': 0, "it's": 2}, 0) writes (dict order
        // as the interpreter chose): MARK, DICT, PUT, then STRING / INT / SETITEM per entry.
        let bytes = b"(dp0\nS'default_mid'\np1\nI0\nsS\"it's\"\np2\nI2\ns.";
        let d = read_str_int_dict(bytes).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d["default_mid"], d["it's"]), (0, 2));
    }

    #[test]
    fn python3_protocol_2_and_4_dicts() {
        // pickle.dumps({'a': 1, 'B01': 300, 'c': 70000}, protocol=2) in CPython 3.11.
        let p2 = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x03\x00\x00\x00B01q\x02M,\x01X\x01\x00\x00\x00cq\x03Jp\x11\x01\x00u.";
        // pickle.dumps({'a': 1, 'B01': 300, 'c': 70000}, protocol=4) in CPython 3.11.
        let p4 = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94K\x01\x8c\x03B01\x94M,\x01\x8c\x01c\x94Jp\x11\x01\x00u.";
        for bytes in [&p2[..], &p4[..]] {
            let entries = read_str_int_entries(bytes).unwrap();
            assert_eq!(entries, [("a".to_string(), 1), ("B01".to_string(), 300), ("c".to_string(), 70000)]);
        }
    }

    #[test]
    fn python3_protocol_0_unicode_strings() {
        // pickle.dumps({'caf\u00e9': 5}, protocol=0) in CPython 3.11 writes é as the Latin-1
        // byte; characters above U+00FF become \uXXXX escapes.
        let bytes = b"(dp0\nVcaf\xe9\np1\nI5\nsVsnow\\u2603\np2\nI6\ns.";
        let d = read_str_int_dict(bytes).unwrap();
        assert_eq!((d["caf\u{e9}"], d["snow\u{2603}"]), (5, 6));
    }

    #[test]
    fn bad_pickles_are_errors_not_panics() {
        let err = |bytes: &[u8]| read_str_int_dict(bytes).unwrap_err().to_string();
        assert_eq!(err(b""), "byte offset 0: truncated pickle: 1 bytes needed, 0 left");
        assert!(err(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").contains("a string of 5 bytes announced, 2 left"));
        assert_eq!(err(b"cos\nsystem\n"), "byte offset 0: unsupported pickle opcode 0x63");
        assert!(err(b"K\x01.").ends_with("the pickle holds the int 1, expected a dict of str → int"));
        assert_eq!(err(b"\x80\x06}."), "byte offset 0: pickle protocol 6 (known: 0 to 5)");
        let full = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u.";
        for cut in 0..full.len() {
            assert!(read_str_int_dict(&full[..cut]).is_err(), "{cut} bytes of {}", full.len());
        }
    }

    #[test]
    fn entries_other_than_str_to_int_are_refused_naming_the_key_and_offset() {
        // CPython 3.11, protocol 2: {'a': None} and {1: 2}; SETITEM `s` is the last opcode but one.
        let none = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01Ns.";
        assert_eq!(
            read_str_int_dict(none).unwrap_err(),
            PickleError { offset: 14, message: "key \"a\" holds None, expected an int id".into() }
        );
        let int_key = b"\x80\x02}q\x00K\x01K\x02s.";
        assert_eq!(read_str_int_dict(int_key).unwrap_err().message, "a key is the int 1, expected a str");
    }

    #[test]
    fn nested_dicts_are_refused_at_the_first_level_even_a_million_deep() {
        // CPython 3.11: pickle.dumps({'a': {'b': 1}}, protocol=2).
        let nested = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01}q\x02X\x01\x00\x00\x00bq\x03K\x01ss.";
        let e = read_str_int_dict(nested).unwrap_err();
        assert_eq!(e.offset, nested.len() - 2, "the outer SETITEM");
        assert!(e.message.contains("key \"a\" holds a nested dict"), "{e}");
        // {'a': {'a': {'a': ...}}} a million levels deep, the same way: the old parser built the
        // whole tree and overflowed the stack dropping or printing it (exit 134).
        let depth = 1_000_000;
        let mut deep = b"\x80\x02}".to_vec();
        for _ in 0..depth {
            deep.extend_from_slice(b"X\x01\x00\x00\x00a}");
        }
        deep.extend(std::iter::repeat_n(b's', depth));
        deep.push(b'.');
        let e = read_str_int_dict(&deep).unwrap_err();
        assert!(e.message.contains("nested dict"), "{e}");
    }

    #[test]
    fn the_memo_shares_values_instead_of_copying_them() {
        // A dict memoised while empty, filled, then fetched: CPython's pickle.loads gives
        // {'a': 1} for these bytes (one object, seen through the memo); a copying memo gave {}.
        let shared = b"}q\x00(X\x01\x00\x00\x00aK\x01uh\x00.";
        assert_eq!(read_str_int_entries(shared).unwrap(), [("a".to_string(), 1)]);
        // A 1 MB key fetched from the memo 100,000 times (a key set again keeps one entry, the
        // last value, as in Python): a copying memo allocated 100 GB.
        let key = "k".repeat(1 << 20);
        let mut bytes = b"\x80\x02}(X".to_vec();
        bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(b"q\x00K\x00");
        for i in 0..100_000u32 {
            bytes.extend_from_slice(b"h\x00J");
            bytes.extend_from_slice(&i.to_le_bytes());
        }
        bytes.extend_from_slice(b"u.");
        let entries = read_str_int_entries(&bytes).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].0.len(), entries[0].1), (1 << 20, 99_999));
    }
}
