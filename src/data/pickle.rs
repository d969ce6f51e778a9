//! Reading DIEN's vocabulary pickles (`uid_voc.pkl`, `mid_voc.pkl`, `cat_voc.pkl`): Python
//! pickles of one `str → int` dict, written by Python 2 (`cPickle`, protocols 0–2) or Python 3
//! (protocols 2–5). Only the opcodes such a dict can contain are understood; anything else is a
//! clear error naming the opcode and its offset. Nothing is ever executed.
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Dict(Vec<(Value, Value)>),
}

/// Parse a pickle holding a `str → int` dict.
pub fn read_str_int_dict(bytes: &[u8]) -> Result<HashMap<String, i64>, String> {
    let mut p = Parser { b: bytes, pos: 0 };
    let value = p.run()?;
    match value {
        Value::Dict(entries) => entries
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Int(v)) => Ok((k, v)),
                (k, v) => Err(format!("expected str → int entries, found {k:?} → {v:?}")),
            })
            .collect(),
        other => Err(format!("expected a dict, found {other:?}")),
    }
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("truncated pickle")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn line_bytes(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.b[self.pos..];
        let end = rest.iter().position(|&c| c == b'\n').ok_or("truncated pickle: unterminated text argument")?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn line(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.line_bytes()?).map_err(|_| "text argument is not UTF-8".to_string())
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn utf8(bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }

    fn run(&mut self) -> Result<Value, String> {
        let mut stack: Vec<Value> = Vec::new();
        let mut memo: HashMap<u64, Value> = HashMap::new();
        let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, String> {
            let at = stack.iter().rposition(|v| *v == Value::Mark).ok_or("no MARK on the stack")?;
            let items = stack.split_off(at + 1);
            stack.pop();
            Ok(items)
        };
        loop {
            let at = self.pos;
            let op = *self.take(1)?.first().expect("one byte");
            match op {
                0x80 => {
                    self.take(1)?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME length
                }
                b'.' => return stack.pop().ok_or_else(|| "STOP with an empty stack".to_string()),
                b'(' => stack.push(Value::Mark),
                b'}' => stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = pop_mark(&mut stack)?;
                    stack.push(Value::Dict(pairs(items)?));
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = stack.pop().ok_or("SETITEM on an empty stack")?;
                        let k = stack.pop().ok_or("SETITEM on an empty stack")?;
                        vec![k, v]
                    } else {
                        pop_mark(&mut stack)?
                    };
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => d.extend(pairs(items)?),
                        _ => return Err(format!("offset {at}: SETITEM(S) without a dict")),
                    }
                }
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'J' => stack.push(Value::Int(self.uint(4)? as u32 as i32 as i64)),
                b'K' => stack.push(Value::Int(self.uint(1)? as i64)),
                b'M' => stack.push(Value::Int(self.uint(2)? as i64)),
                b'I' => {
                    let text = self.line()?;
                    stack.push(match text {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        t => Value::Int(t.parse().map_err(|_| format!("offset {at}: bad INT {t:?}"))?),
                    });
                }
                b'L' => {
                    let text = self.line()?;
                    let t = text.trim_end_matches('L');
                    stack.push(Value::Int(t.parse().map_err(|_| format!("offset {at}: bad LONG {text:?}"))?));
                }
                0x8a => {
                    let n = self.uint(1)? as usize;
                    if n > 8 {
                        return Err(format!("offset {at}: integer wider than 64 bits"));
                    }
                    let bytes = self.take(n)?;
                    let mut v: i64 = bytes.iter().rev().fold(0i64, |acc, &b| (acc << 8) | b as i64);
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                }
                b'X' | b'T' | b'B' => {
                    let n = self.uint(4)? as usize;
                    stack.push(Value::Str(Self::utf8(self.take(n)?)?));
                }
                0x8c | b'U' | b'C' => {
                    let n = self.uint(1)? as usize;
                    stack.push(Value::Str(Self::utf8(self.take(n)?)?));
                }
                0x8d | 0x8e => {
                    let n = self.uint(8)? as usize;
                    stack.push(Value::Str(Self::utf8(self.take(n)?)?));
                }
                // raw-unicode-escape: bytes are Latin-1 code points, plus \u escapes.
                b'V' => {
                    let latin1: String = self.line_bytes()?.iter().map(|&b| b as char).collect();
                    stack.push(Value::Str(unescape_raw_unicode(&latin1)?));
                }
                b'S' => stack
                    .push(Value::Str(unquote_repr(self.line()?).ok_or_else(|| format!("offset {at}: bad STRING"))?)),
                b'p' => {
                    let id = self.line()?.parse().map_err(|_| format!("offset {at}: bad PUT"))?;
                    memo.insert(id, stack.last().cloned().ok_or("PUT on an empty stack")?);
                }
                b'q' | b'r' => {
                    let id = self.uint(if op == b'q' { 1 } else { 4 })?;
                    memo.insert(id, stack.last().cloned().ok_or("PUT on an empty stack")?);
                }
                0x94 => {
                    let id = memo.len() as u64;
                    memo.insert(id, stack.last().cloned().ok_or("MEMOIZE on an empty stack")?);
                }
                b'g' | b'h' | b'j' => {
                    let id = match op {
                        b'g' => self.line()?.parse().map_err(|_| format!("offset {at}: bad GET"))?,
                        b'h' => self.uint(1)?,
                        _ => self.uint(4)?,
                    };
                    stack.push(memo.get(&id).cloned().ok_or_else(|| format!("offset {at}: GET of unknown memo {id}"))?);
                }
                other => return Err(format!("offset {at}: unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if items.len() % 2 != 0 {
        return Err("odd number of dict items".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
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
            let d = read_str_int_dict(bytes).unwrap();
            assert_eq!((d["a"], d["B01"], d["c"]), (1, 300, 70000));
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
        assert!(read_str_int_dict(b"").is_err());
        assert!(read_str_int_dict(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").unwrap_err().contains("truncated"));
        assert!(read_str_int_dict(b"cos\nsystem\n").unwrap_err().contains("unsupported pickle opcode 0x63"));
        assert!(read_str_int_dict(b"K\x01.").unwrap_err().contains("expected a dict"));
        let full = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u.";
        for cut in 0..full.len() {
            let _ = read_str_int_dict(&full[..cut]);
        }
    }
}
