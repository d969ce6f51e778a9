//! Python literal reprs, as found in the Amazon 2014 metadata dumps.
//!
//! The `meta_<Category>.json` files of the Amazon 2014 review data are not JSON: every line is
//! the `repr` of a Python dict (`{'asin': '0132793040', 'price': 12.5, 'flag': True, ...}`).
//! This module owns turning one such line into a [`PyValue`], by a small strict parser of the
//! literal grammar — never by evaluating anything. It accepts what `ast.literal_eval` accepts for
//! these files and nothing more:
//!
//! - dicts `{k: v, ...}`, lists `[...]`, tuples `(...)` / `(x,)` / `()` and grouping parentheses
//!   `(x)`; a trailing comma is allowed in all of them;
//! - strings in single or double quotes, with the prefixes `u`, `b`, `r`, `br` or `rb` (any
//!   case), adjacent literals concatenated (`'a' 'b'`, but not bytes with text), the escapes
//!   `\\ \' \" \a \b \f \n \r \t \v`, octal `\ooo`, `\xNN`, `\uNNNN`, `\UNNNNNNNN` and
//!   backslash-newline; an unknown escape such as `\d` keeps its backslash, as in Python; an
//!   escaped surrogate pair (`\ud83d\ude00`, as Python 2 wrote astral characters) becomes one
//!   character, while a lone surrogate is an error, since a Rust string cannot hold it;
//!   `b'...'` is read as text (`\xNN` is the code point U+00NN, and `\u`, `\U`, `\N` are not
//!   escapes there, as in Python bytes);
//! - decimal ints (signed, fitting in `i64`) and floats (`1.5`, `-2e3`, `.5`, `5.`);
//! - `True`, `False`, `None`.
//!
//! Everything else — names such as `nan` or `true`, calls, sets, triple-quoted strings, `\N{...}`
//! escapes, unbalanced brackets, unterminated strings, trailing garbage — is a
//! [`PyLiteralError`] carrying the 1-based character column where the problem was found.
//! Nesting is capped at [`MAX_DEPTH`] containers. The parser makes one pass over the bytes and
//! allocates only the output values; it never panics, whatever the input.

/// The deepest nesting of dicts, lists, tuples and parentheses that [`parse`] accepts.
pub const MAX_DEPTH: usize = 64;

/// A parsed Python literal.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// A decimal integer that fits in `i64`.
    Int(i64),
    /// A float literal.
    Float(f64),
    /// A string literal (adjacent literals already concatenated).
    Str(String),
    /// A list or a tuple.
    List(Vec<PyValue>),
    /// A dict, its entries in file order (duplicate keys kept; [`PyValue::get`] finds the last).
    Dict(Vec<(PyValue, PyValue)>),
}

impl PyValue {
    /// The value stored under the string key `key`, if `self` is a dict holding it. When a key
    /// occurs twice, the last occurrence wins, as it does in Python.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(entries) => entries.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a list or tuple value.
    pub fn as_list(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(items) => Some(items),
            _ => None,
        }
    }

    /// The entries of a dict value, in file order.
    pub fn as_dict(&self) -> Option<&[(PyValue, PyValue)]> {
        match self {
            PyValue::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value of an int.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The value of a float, or of an int converted to `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Float(f) => Some(*f),
            PyValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

/// Why a text is not a Python literal, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct PyLiteralError {
    /// 1-based character (not byte) column where the problem was found.
    pub column: usize,
    /// What was wrong there.
    pub message: String,
}

/// Parses `text` as exactly one Python literal. Whitespace (including a trailing `\r`) may
/// surround it; anything else after it is an error.
pub fn parse(text: &str) -> std::result::Result<PyValue, PyLiteralError> {
    let mut parser = Parser { text, bytes: text.as_bytes(), pos: 0 };
    parser.skip_ws();
    if parser.pos >= parser.bytes.len() {
        return Err(parser.err(parser.pos, "empty input, expected a Python literal"));
    }
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos < parser.bytes.len() {
        let found = parser.found(parser.pos);
        return Err(parser.err(parser.pos, format!("unexpected {found} after the end of the literal")));
    }
    Ok(value)
}

type Result<T> = std::result::Result<T, PyLiteralError>;

/// How a string literal starts: its prefix and quote.
#[derive(Debug, Clone, Copy)]
struct StringStart {
    /// Bytes of prefix letters before the quote (0 to 2).
    prefix_len: usize,
    /// `r` prefix: backslashes are kept.
    raw: bool,
    /// `b` prefix: `\u`, `\U` and `\N` are not escapes.
    bytes: bool,
    /// `'` or `"`.
    quote: u8,
}

/// Cursor over the input. `pos` is a byte offset and always lies on a character boundary
/// between calls, since the parser only ever stops right after ASCII bytes or whole runs.
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    /// An error at byte offset `pos`, converted to a 1-based character column.
    fn err(&self, pos: usize, message: impl Into<String>) -> PyLiteralError {
        PyLiteralError { column: self.column(pos), message: message.into() }
    }

    /// 1-based character column of byte offset `pos` (counts UTF-8 lead bytes before it).
    fn column(&self, pos: usize) -> usize {
        let end = pos.min(self.bytes.len());
        self.bytes[..end].iter().filter(|&&b| b & 0xC0 != 0x80).count() + 1
    }

    /// The character at `pos` for messages: `'x'` or `end of input`.
    fn found(&self, pos: usize) -> String {
        match self.text.get(pos..).and_then(|rest| rest.chars().next()) {
            Some(c) => format!("{c:?}"),
            None => "end of input".to_owned(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips spaces, tabs, form feeds and line breaks.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') = self.peek() {
            self.pos += 1;
        }
    }

    /// `text[start..end]`, which the scanners only ask for at ASCII boundaries.
    fn slice(&self, start: usize, end: usize) -> Result<&str> {
        self.text.get(start..end).ok_or_else(|| self.err(start, "internal error: not at a character boundary"))
    }

    /// Skips whitespace inside a container opened at `open` by `open_char`; end of input there
    /// is an unclosed-bracket error.
    fn ws_in(&mut self, open: usize, open_char: char) -> Result<u8> {
        self.skip_ws();
        match self.peek() {
            Some(b) => Ok(b),
            None => Err(self.err(
                self.pos,
                format!(
                    "unexpected end of input: {open_char:?} opened at column {} was never closed",
                    self.column(open)
                ),
            )),
        }
    }

    /// Opens a container at `self.pos`, checking the depth cap.
    fn open(&mut self, depth: usize) -> Result<usize> {
        if depth >= MAX_DEPTH {
            return Err(self.err(self.pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let open = self.pos;
        self.pos += 1;
        Ok(open)
    }

    /// One literal starting at `self.pos` (whitespace already skipped); `depth` is the number of
    /// enclosing containers.
    fn value(&mut self, depth: usize) -> Result<PyValue> {
        match self.peek() {
            None => Err(self.err(self.pos, "unexpected end of input, expected a Python literal")),
            Some(b'{') => self.dict(depth),
            Some(b'[') => self.list(depth),
            Some(b'(') => self.paren(depth),
            Some(b'0'..=b'9' | b'.' | b'-' | b'+') => self.number(),
            Some(b) if b == b'\'' || b == b'"' || b.is_ascii_alphabetic() || b == b'_' => {
                if self.string_start(self.pos).is_some() {
                    self.strings(depth)
                } else {
                    self.name()
                }
            }
            Some(_) => {
                let found = self.found(self.pos);
                Err(self.err(self.pos, format!("expected a Python literal, found {found}")))
            }
        }
    }

    /// `{key: value, ...}`.
    fn dict(&mut self, depth: usize) -> Result<PyValue> {
        let open = self.open(depth)?;
        let mut entries = Vec::new();
        loop {
            let b = self.ws_in(open, '{')?;
            if b == b'}' {
                self.pos += 1;
                return Ok(PyValue::Dict(entries));
            }
            if b == b'[' || b == b'{' {
                let kind = if b == b'[' { "a list" } else { "a dict" };
                return Err(self.err(self.pos, format!("unhashable dict key: {kind} cannot be a key")));
            }
            let key = self.value(depth + 1)?;
            if self.ws_in(open, '{')? != b':' {
                let found = self.found(self.pos);
                let message = format!("expected ':' after a dict key, found {found} (sets are not supported)");
                return Err(self.err(self.pos, message));
            }
            self.pos += 1;
            self.ws_in(open, '{')?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            match self.ws_in(open, '{')? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(PyValue::Dict(entries));
                }
                _ => {
                    let found = self.found(self.pos);
                    let message = format!(
                        "expected ',' or '}}' after a dict value (dict opened at column {}), found {found}",
                        self.column(open)
                    );
                    return Err(self.err(self.pos, message));
                }
            }
        }
    }

    /// `[item, ...]`.
    fn list(&mut self, depth: usize) -> Result<PyValue> {
        let open = self.open(depth)?;
        let mut items = Vec::new();
        self.items(open, '[', b']', depth, &mut items)?;
        Ok(PyValue::List(items))
    }

    /// `()`, `(x)` (just `x`), `(x,)` and `(x, y, ...)`.
    fn paren(&mut self, depth: usize) -> Result<PyValue> {
        let open = self.open(depth)?;
        if self.ws_in(open, '(')? == b')' {
            self.pos += 1;
            return Ok(PyValue::List(Vec::new()));
        }
        let first = self.value(depth + 1)?;
        match self.ws_in(open, '(')? {
            b')' => {
                self.pos += 1;
                Ok(first)
            }
            b',' => {
                self.pos += 1;
                let mut items = vec![first];
                self.items(open, '(', b')', depth, &mut items)?;
                Ok(PyValue::List(items))
            }
            _ => {
                let found = self.found(self.pos);
                let message =
                    format!("expected ',' or ')' (parenthesis opened at column {}), found {found}", self.column(open));
                Err(self.err(self.pos, message))
            }
        }
    }

    /// Comma-separated items up to and including `close`, right after an opening bracket or a
    /// comma.
    fn items(&mut self, open: usize, open_char: char, close: u8, depth: usize, items: &mut Vec<PyValue>) -> Result<()> {
        loop {
            if self.ws_in(open, open_char)? == close {
                self.pos += 1;
                return Ok(());
            }
            items.push(self.value(depth + 1)?);
            let b = self.ws_in(open, open_char)?;
            if b == close {
                self.pos += 1;
                return Ok(());
            }
            if b != b',' {
                let found = self.found(self.pos);
                let message = format!(
                    "expected ',' or {:?} ({open_char:?} opened at column {}), found {found}",
                    char::from(close),
                    self.column(open)
                );
                return Err(self.err(self.pos, message));
            }
            self.pos += 1;
        }
    }

    /// Whether a string literal (with optional prefix) starts at `at`.
    fn string_start(&self, at: usize) -> Option<StringStart> {
        let (mut raw, mut bytes, mut other) = (false, false, false);
        for prefix_len in 0..=2 {
            match self.bytes.get(at + prefix_len).copied()? {
                quote @ (b'\'' | b'"') => return Some(StringStart { prefix_len, raw, bytes, quote }),
                b'r' | b'R' if !raw && !other => raw = true,
                b'b' | b'B' if !bytes && !other => bytes = true,
                b'u' | b'U' if !bytes && !other && !raw => other = true,
                _ => return None,
            }
        }
        None
    }

    /// One or more adjacent string literals, concatenated; bytes and text literals do not mix.
    /// Outside brackets (`depth == 0`) a line break ends the literal, as it ends a Python
    /// expression.
    fn strings(&mut self, depth: usize) -> Result<PyValue> {
        let mut out = String::new();
        let mut first_bytes = None;
        while let Some(start) = self.string_start(self.pos) {
            if *first_bytes.get_or_insert(start.bytes) != start.bytes {
                return Err(self.err(self.pos, "cannot concatenate bytes and text string literals"));
            }
            self.string(start, &mut out)?;
            let after = self.pos;
            if depth > 0 {
                self.skip_ws();
            } else {
                while let Some(b' ' | b'\t' | b'\x0c') = self.peek() {
                    self.pos += 1;
                }
            }
            if self.string_start(self.pos).is_none() {
                self.pos = after;
                break;
            }
        }
        Ok(PyValue::Str(out))
    }

    /// One string literal starting at `self.pos`, appended to `out`.
    fn string(&mut self, start: StringStart, out: &mut String) -> Result<()> {
        let literal = self.pos;
        self.pos += start.prefix_len + 1;
        if self.bytes.get(self.pos..self.pos + 2) == Some(&[start.quote; 2]) {
            return Err(self.err(literal, "triple-quoted strings are not supported"));
        }
        let mut run = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.unterminated(literal));
            };
            if b == start.quote {
                out.push_str(self.slice(run, self.pos)?);
                self.pos += 1;
                return Ok(());
            }
            match b {
                b'\n' | b'\r' => return Err(self.unterminated(literal)),
                b'\\' if start.raw => {
                    // The backslash stays, and protects a quote, a backslash or a line break.
                    self.pos += 1;
                    match self.peek() {
                        Some(b'\'' | b'"' | b'\\' | b'\n') => self.pos += 1,
                        Some(b'\r') => {
                            self.pos += 1;
                            if self.peek() == Some(b'\n') {
                                self.pos += 1;
                            }
                        }
                        _ => {}
                    }
                }
                b'\\' => {
                    out.push_str(self.slice(run, self.pos)?);
                    self.escape(literal, start.bytes, out)?;
                    run = self.pos;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// The error for a string literal starting at `literal` that reaches a line break or the
    /// end of input before its closing quote.
    fn unterminated(&self, literal: usize) -> PyLiteralError {
        let message = format!("unterminated string starting at column {}", self.column(literal));
        self.err(self.pos, message)
    }

    /// The escape sequence at `self.pos` (a backslash) in a non-raw string, decoded into `out`.
    fn escape(&mut self, literal: usize, bytes: bool, out: &mut String) -> Result<()> {
        let at = self.pos;
        let Some(c) = self.bytes.get(at + 1).copied() else {
            self.pos += 1;
            return Err(self.unterminated(literal));
        };
        self.pos += 2;
        match c {
            b'\n' => {}
            b'\r' => {
                if self.peek() == Some(b'\n') {
                    self.pos += 1;
                }
            }
            b'\\' => out.push('\\'),
            b'\'' => out.push('\''),
            b'"' => out.push('"'),
            b'a' => out.push('\x07'),
            b'b' => out.push('\x08'),
            b'f' => out.push('\x0c'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'v' => out.push('\x0b'),
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                out.push(self.code_point(at, value)?);
            }
            b'x' => {
                let value = self.hex(2).ok_or_else(|| self.err(at, "invalid \\x escape: expected 2 hex digits"))?;
                out.push(self.code_point(at, value)?);
            }
            b'u' if !bytes => {
                let value = self.hex(4).ok_or_else(|| self.err(at, "invalid \\u escape: expected 4 hex digits"))?;
                if (0xD800..0xDC00).contains(&value) {
                    // A high surrogate followed by an escaped low one is one astral character,
                    // as Python 2 narrow builds wrote them.
                    let save = self.pos;
                    let low = if self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u") {
                        self.pos += 2;
                        self.hex(4).filter(|low| (0xDC00..0xE000).contains(low))
                    } else {
                        None
                    };
                    if low.is_none() {
                        self.pos = save;
                    }
                    match low {
                        Some(low) => {
                            let combined = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00);
                            out.push(self.code_point(at, combined)?);
                        }
                        None => return Err(self.lone_surrogate(at, value)),
                    }
                } else {
                    out.push(self.code_point(at, value)?);
                }
            }
            b'U' if !bytes => {
                let value = self.hex(8).ok_or_else(|| self.err(at, "invalid \\U escape: expected 8 hex digits"))?;
                out.push(self.code_point(at, value)?);
            }
            b'N' if !bytes => return Err(self.err(at, "\\N{...} named escapes are not supported")),
            _ => {
                // Unknown escape: Python keeps the backslash and the character after it.
                out.push('\\');
                self.pos = at + 1;
            }
        }
        Ok(())
    }

    /// Reads exactly `n` hex digits at `self.pos`, moving past them; `None` (position unchanged)
    /// if there are fewer.
    fn hex(&mut self, n: usize) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + n)?;
        let mut value = 0u32;
        for &d in digits {
            value = value * 16 + char::from(d).to_digit(16)?;
        }
        self.pos += n;
        Some(value)
    }

    /// The character for code point `value` of the escape at `at`.
    fn code_point(&self, at: usize, value: u32) -> Result<char> {
        if (0xD800..0xE000).contains(&value) {
            return Err(self.lone_surrogate(at, value));
        }
        char::from_u32(value).ok_or_else(|| self.err(at, format!("escape gives U+{value:X}, beyond U+10FFFF")))
    }

    fn lone_surrogate(&self, at: usize, value: u32) -> PyLiteralError {
        self.err(at, format!("escape gives the lone surrogate U+{value:04X}, which a Rust string cannot hold"))
    }

    /// A decimal int or float, with an optional sign.
    fn number(&mut self) -> Result<PyValue> {
        let start = self.pos;
        if let Some(b'-' | b'+') = self.peek() {
            self.pos += 1;
        }
        let int_start = self.pos;
        self.digits();
        let int_digits = self.pos - int_start;
        let mut is_float = false;
        let mut frac_digits = 0;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            let frac_start = self.pos;
            self.digits();
            frac_digits = self.pos - frac_start;
        }
        if int_digits == 0 && frac_digits == 0 {
            let found = self.found(start);
            let message = match self.bytes.get(start) {
                Some(b'-' | b'+') => format!("expected a number after {found}, found {}", self.found(int_start)),
                _ => format!("expected a Python literal, found {found}"),
            };
            return Err(self.err(start, message));
        }
        if let Some(b'e' | b'E') = self.peek() {
            is_float = true;
            self.pos += 1;
            if let Some(b'-' | b'+') = self.peek() {
                self.pos += 1;
            }
            let exp_start = self.pos;
            self.digits();
            if self.pos == exp_start {
                return Err(self.err(start, "invalid float literal: exponent has no digits"));
            }
        }
        if let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
                let found = self.found(self.pos);
                return Err(self.err(self.pos, format!("invalid number literal: unexpected {found} in it")));
            }
        }
        let literal = self.slice(start, self.pos)?;
        if is_float {
            return literal
                .parse::<f64>()
                .map(PyValue::Float)
                .map_err(|e| self.err(start, format!("invalid float literal {literal:?}: {e}")));
        }
        let digits = &self.bytes[int_start..int_start + int_digits];
        if digits.len() > 1 && digits[0] == b'0' && digits.iter().any(|&d| d != b'0') {
            return Err(self.err(start, "leading zeros in decimal integer literals are not permitted"));
        }
        literal
            .parse::<i64>()
            .map(PyValue::Int)
            .map_err(|_| self.err(start, format!("integer {literal} does not fit in i64")))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// `True`, `False` or `None`; any other name is an error.
    fn name(&mut self) -> Result<PyValue> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'_' {
                self.pos += 1;
            } else {
                break;
            }
        }
        let name = self.slice(start, self.pos)?;
        match name {
            "True" => Ok(PyValue::Bool(true)),
            "False" => Ok(PyValue::Bool(false)),
            "None" => Ok(PyValue::None),
            "true" | "false" | "null" => {
                let python = match name {
                    "true" => "True",
                    "false" => "False",
                    _ => "None",
                };
                Err(self.err(start, format!("'{name}' is JSON, not a Python literal (Python writes {python})")))
            }
            _ => {
                let call = if self.peek() == Some(b'(') { " (calls are not evaluated)" } else { "" };
                let message = format!("name '{name}' is not a literal; only True, False and None are{call}");
                Err(self.err(start, message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{'asin': '0132793040', 'imUrl': 'http://x/31JIPhp%2BGIL.jpg', 'categories': [['Electronics', 'Computers & Accessories', 'Cable\'s']], 'title': "Kelby's DVD", 'price': 12.5, 'salesRank': {'Electronics': 1234}, 'related': {'also_bought': ['B0001']}, 'flag': True, 'x': None}"#;

    fn s(text: &str) -> PyValue {
        PyValue::Str(text.to_owned())
    }

    fn str_of(text: &str) -> String {
        match parse(text) {
            Ok(PyValue::Str(s)) => s,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn error_of(text: &str) -> PyLiteralError {
        match parse(text) {
            Err(e) => e,
            Ok(v) => panic!("{text:?} parsed as {v:?}"),
        }
    }

    #[test]
    fn the_example_line_parses_fully() {
        let expected = PyValue::Dict(vec![
            (s("asin"), s("0132793040")),
            (s("imUrl"), s("http://x/31JIPhp%2BGIL.jpg")),
            (
                s("categories"),
                PyValue::List(vec![PyValue::List(vec![s("Electronics"), s("Computers & Accessories"), s("Cable's")])]),
            ),
            (s("title"), s("Kelby's DVD")),
            (s("price"), PyValue::Float(12.5)),
            (s("salesRank"), PyValue::Dict(vec![(s("Electronics"), PyValue::Int(1234))])),
            (s("related"), PyValue::Dict(vec![(s("also_bought"), PyValue::List(vec![s("B0001")]))])),
            (s("flag"), PyValue::Bool(true)),
            (s("x"), PyValue::None),
        ]);
        let value = parse(EXAMPLE).unwrap();
        assert_eq!(value, expected);
        assert_eq!(value.get("title").and_then(PyValue::as_str), Some("Kelby's DVD"));
        assert_eq!(value.get("price").and_then(PyValue::as_f64), Some(12.5));
        assert_eq!(value.get("salesRank").and_then(|r| r.get("Electronics")).and_then(PyValue::as_i64), Some(1234));
        assert_eq!(value.get("x"), Some(&PyValue::None));
        assert_eq!(value.get("missing"), None);
        assert_eq!(value.get("categories").and_then(PyValue::as_list).map(<[PyValue]>::len), Some(1));
    }

    #[test]
    fn a_real_looking_2014_meta_line_with_nested_categories_parses() {
        let line = "{'asin': '0000037214', 'related': {'also_bought': ['B00JO8II76', 'B00DGN4R1Q'], \
                    'bought_together': ['B00JO8II76']}, 'title': 'Purple Sequin Tiny Dancer Tutu Ballet Dance \
                    Fairy Princess Costume Accessory', 'price': 6.99, 'salesRank': {'Clothing': 1233557}, \
                    'imUrl': 'http://ecx.images-amazon.com/images/I/31mCncNuAZL.jpg', 'brand': 'Big Dreams', \
                    'categories': [['Clothing, Shoes & Jewelry', 'Girls'], ['Clothing, Shoes & Jewelry', \
                    'Novelty, Costumes & More', 'Costumes & Accessories', 'More Accessories', 'Kids & Baby']]}\r\n";
        let value = parse(line).unwrap();
        assert_eq!(value.get("asin").and_then(PyValue::as_str), Some("0000037214"));
        assert_eq!(value.get("brand").and_then(PyValue::as_str), Some("Big Dreams"));
        assert_eq!(value.get("price"), Some(&PyValue::Float(6.99)));
        assert_eq!(value.get("salesRank").and_then(|r| r.get("Clothing")), Some(&PyValue::Int(1_233_557)));
        let related = value.get("related").unwrap();
        assert_eq!(related.get("also_bought").and_then(PyValue::as_list).map(<[PyValue]>::len), Some(2));
        let categories = value.get("categories").and_then(PyValue::as_list).unwrap();
        assert_eq!(categories.len(), 2);
        let paths: Vec<Vec<&str>> = categories
            .iter()
            .map(|path| path.as_list().unwrap().iter().map(|c| c.as_str().unwrap()).collect())
            .collect();
        assert_eq!(paths[0], ["Clothing, Shoes & Jewelry", "Girls"]);
        assert_eq!(paths[1][4], "Kids & Baby");
        let keys: Vec<&str> = value.as_dict().unwrap().iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["asin", "related", "title", "price", "salesRank", "imUrl", "brand", "categories"]);
    }

    #[test]
    fn escaped_quotes_inside_single_quoted_strings() {
        assert_eq!(str_of(r"'Cable\'s'"), "Cable's");
        assert_eq!(str_of(r#"'say \"hi\"'"#), "say \"hi\"");
        assert_eq!(str_of(r#""it's""#), "it's");
        assert_eq!(str_of(r#""a 'b' \"c\"""#), "a 'b' \"c\"");
    }

    #[test]
    fn every_escape_is_decoded() {
        assert_eq!(str_of(r#"'\\ \' \" \a \b \f \n \r \t \v'"#), "\\ ' \" \x07 \x08 \x0c \n \r \t \x0b");
        assert_eq!(str_of(r"'\0 \7 \12 \101 \1011 \777 \8'"), "\0 \x07 \n A A1 \u{1ff} \\8");
        assert_eq!(str_of(r"'\x41\xe9\xFF'"), "A\u{e9}\u{ff}");
        assert_eq!(str_of(r"'\u00e9\u20AC'"), "é€");
        assert_eq!(str_of(r"'\U0001F600\U000000e9'"), "😀é");
        assert_eq!(str_of("'line one \\\nline two'"), "line one line two");
        assert_eq!(str_of("'crlf \\\r\njoined'"), "crlf joined");
        // A surrogate pair written as two escapes is one astral character.
        assert_eq!(str_of(r"'\ud83d\ude00'"), "😀");
    }

    #[test]
    fn unknown_escapes_keep_their_backslash_as_in_python() {
        assert_eq!(str_of(r"'C:\dir\q'"), "C:\\dir\\q");
        assert_eq!(str_of("'\\é'"), "\\é");
    }

    #[test]
    fn prefixes_raw_strings_and_bytes_are_text() {
        assert_eq!(str_of("u'caf\\xe9'"), "café");
        assert_eq!(str_of("U\"x\""), "x");
        assert_eq!(str_of("b'\\x41\\u0041'"), "A\\u0041");
        assert_eq!(str_of(r"r'a\nb\'c'"), r"a\nb\'c");
        assert_eq!(str_of(r"Rb'\x41'"), r"\x41");
        assert_eq!(str_of(r"bR'\x41'"), r"\x41");
        assert_eq!(str_of(r"BR'\\'"), r"\\");
        assert!(parse("ur'x'").is_err());
        assert!(parse("ru'x'").is_err());
        assert!(parse("f'x'").is_err());
        assert!(parse("ub'x'").is_err());
        assert!(parse("rr'x'").is_err());
    }

    #[test]
    fn adjacent_string_literals_are_concatenated() {
        assert_eq!(str_of("'a' 'b'"), "ab");
        assert_eq!(str_of("'a'\"b\"u'c'r'\\d'"), "abc\\d");
        let value = parse("['a'\n  'b', 'c']").unwrap();
        assert_eq!(value, PyValue::List(vec![s("ab"), s("c")]));
        // Outside brackets a line break ends the expression.
        assert_eq!(error_of("'a'\n'b'").column, 5);
        // Bytes and text literals do not mix, as in Python.
        assert_eq!(str_of("b'a' B'b'"), "ab");
        let error = error_of("['a' b'b']");
        assert_eq!(error.column, 6);
        assert!(error.message.contains("cannot concatenate bytes and text"), "{error}");
    }

    #[test]
    fn non_ascii_text_passes_through_and_columns_count_characters() {
        assert_eq!(str_of("'Café – 東京'"), "Café – 東京");
        let error = error_of("['é', 'ü', x]");
        assert_eq!(error.column, 12);
        assert!(error.message.contains("name 'x'"), "{error}");
    }

    #[test]
    fn tuples_parse_as_lists_and_parentheses_group() {
        assert_eq!(parse("()").unwrap(), PyValue::List(vec![]));
        assert_eq!(parse("(1,)").unwrap(), PyValue::List(vec![PyValue::Int(1)]));
        assert_eq!(parse("( 1 , 'a' , )").unwrap(), PyValue::List(vec![PyValue::Int(1), s("a")]));
        assert_eq!(parse("(1, (2, 3), [4])").unwrap().as_list().map(<[PyValue]>::len), Some(3));
        assert_eq!(parse("(1)").unwrap(), PyValue::Int(1));
        assert_eq!(parse("(('a' 'b'))").unwrap(), s("ab"));
        assert_eq!(parse("{(1, 2): 'pair'}").unwrap().as_dict().map(<[(PyValue, PyValue)]>::len), Some(1));
        assert_eq!(error_of("(1 2)").column, 4);
        assert_eq!(error_of("(,)").column, 2);
    }

    #[test]
    fn containers_allow_trailing_commas_and_whitespace() {
        assert_eq!(
            parse(" \t{ 'a' : [ 1 , 2 , ] , } \r").unwrap().get("a").and_then(PyValue::as_list).map(<[PyValue]>::len),
            Some(2)
        );
        assert_eq!(parse("{\n'a':\n1\n}\r\n").unwrap().get("a"), Some(&PyValue::Int(1)));
        assert_eq!(parse("{}").unwrap(), PyValue::Dict(vec![]));
        assert_eq!(parse("[]").unwrap(), PyValue::List(vec![]));
    }

    #[test]
    fn duplicate_keys_keep_file_order_and_the_last_one_wins() {
        let value = parse("{'a': 1, 'b': 2, 'a': 3}").unwrap();
        assert_eq!(value.as_dict().map(<[(PyValue, PyValue)]>::len), Some(3));
        assert_eq!(value.get("a"), Some(&PyValue::Int(3)));
    }

    #[test]
    fn numbers_in_all_repr_forms() {
        assert_eq!(parse("0").unwrap(), PyValue::Int(0));
        assert_eq!(parse("00").unwrap(), PyValue::Int(0));
        assert_eq!(parse("-42").unwrap(), PyValue::Int(-42));
        assert_eq!(parse("+7").unwrap(), PyValue::Int(7));
        assert_eq!(parse("9223372036854775807").unwrap(), PyValue::Int(i64::MAX));
        assert_eq!(parse("-9223372036854775808").unwrap(), PyValue::Int(i64::MIN));
        assert_eq!(parse("1.5").unwrap(), PyValue::Float(1.5));
        assert_eq!(parse("-2e3").unwrap(), PyValue::Float(-2000.0));
        assert_eq!(parse("1E-2").unwrap(), PyValue::Float(0.01));
        assert_eq!(parse(".5").unwrap(), PyValue::Float(0.5));
        assert_eq!(parse("-.5").unwrap(), PyValue::Float(-0.5));
        assert_eq!(parse("5.").unwrap(), PyValue::Float(5.0));
        assert_eq!(parse("5.e1").unwrap(), PyValue::Float(50.0));
        assert_eq!(parse("1e999").unwrap(), PyValue::Float(f64::INFINITY));
        assert!(error_of("9223372036854775808").message.contains("does not fit"));
        assert!(error_of("007").message.contains("leading zeros"));
        for bad in ["1e", "1e+", "5L", "1j", "0x1F", "1_000", "1.2.3", ".", "-", "+.", "--1", "- 1"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn a_line_cut_inside_a_string_is_an_unterminated_string() {
        let line = "{'asin': '0132793040', 'title': \"Kelby's";
        let error = error_of(line);
        assert_eq!(error.column, line.chars().count() + 1);
        assert_eq!(error.message, "unterminated string starting at column 33");
        assert_eq!(error.to_string(), format!("column {}: unterminated string starting at column 33", line.len() + 1));
        // A line break also ends a single-quoted string.
        assert_eq!(
            error_of("['abc\n']"),
            PyLiteralError { column: 6, message: "unterminated string starting at column 2".into() }
        );
        // A backslash at the very end.
        assert_eq!(error_of("'abc\\").column, 6);
    }

    #[test]
    fn a_line_cut_inside_a_dict_reports_the_unclosed_brace() {
        let error = error_of("{'asin': '0132793040', 'related': {'also_bought': ['B0001']");
        assert_eq!(error.column, 60);
        assert!(error.message.contains("'{' opened at column 35 was never closed"), "{error}");
        let error = error_of("{'asin': ");
        assert_eq!(error.column, 10);
        assert!(error.message.contains("'{' opened at column 1 was never closed"), "{error}");
        assert_eq!(error_of("{'asin'").column, 8);
        assert_eq!(error_of("[1, 2").column, 6);
        assert_eq!(error_of("(1,").column, 4);
    }

    #[test]
    fn json_true_is_rejected_with_a_hint() {
        let error = error_of("{'flag': true}");
        assert_eq!(error.column, 10);
        assert!(error.message.contains("Python writes True"), "{error}");
        assert_eq!(error_of("null").column, 1);
    }

    #[test]
    fn a_doubled_comma_is_an_error_at_the_second_comma() {
        let error = error_of("{'a': 1,,}");
        assert_eq!(error.column, 9);
        assert_eq!(error.message, "expected a Python literal, found ','");
        assert_eq!(error_of("[1,,]").column, 4);
        assert_eq!(error_of("{,}").column, 2);
    }

    #[test]
    fn garbage_after_the_literal_is_an_error() {
        let error = error_of("{'a': 1} x");
        assert_eq!(error.column, 10);
        assert_eq!(error.message, "unexpected 'x' after the end of the literal");
        assert_eq!(error_of("{'a': 1}}").column, 9);
        assert_eq!(error_of("1 2").column, 3);
        assert_eq!(error_of("[1]\n[2]").column, 5);
    }

    #[test]
    fn names_such_as_nan_are_not_literals() {
        let error = error_of("{'price': nan}");
        assert_eq!(error.column, 11);
        assert_eq!(error.message, "name 'nan' is not a literal; only True, False and None are");
        assert_eq!(error_of("[inf]").column, 2);
        let error = error_of("-inf");
        assert_eq!(error.column, 1);
        assert!(error.message.contains("expected a number after '-'"), "{error}");
        let error = error_of("{'a': set([1])}");
        assert_eq!(error.column, 7);
        assert!(error.message.contains("calls are not evaluated"), "{error}");
        assert_eq!(error_of("__import__('os')").column, 1);
    }

    #[test]
    fn other_malformed_inputs_are_errors_with_columns() {
        let error = error_of("[1, 2}");
        assert_eq!(error.column, 6);
        assert!(error.message.contains("expected ',' or ']'"), "{error}");
        let error = error_of("'abc\\xZZ'");
        assert_eq!(error.column, 5);
        assert!(error.message.contains("\\x escape"), "{error}");
        assert_eq!(error_of("'\\x4'").column, 2);
        let error = error_of("['ok', '\\ud800']");
        assert_eq!(error.column, 9);
        assert!(error.message.contains("lone surrogate U+D800"), "{error}");
        assert_eq!(error_of("'\\ude00'").column, 2);
        assert_eq!(error_of("'\\ud83d\\u0041'").column, 2);
        assert_eq!(error_of("'\\U00110000'").column, 2);
        assert_eq!(error_of("'\\U0000D800'").column, 2);
        assert_eq!(error_of("'\\N{BULLET}'").column, 2);
        assert_eq!(error_of("'\\u12'").column, 2);
        assert_eq!(error_of("['''x''']").message, "triple-quoted strings are not supported");
        assert_eq!(error_of("[u\"\"\"x\"\"\"]").column, 2);
        assert_eq!(parse("['', \"\"]").unwrap(), PyValue::List(vec![s(""), s("")]));
        assert!(error_of("{1, 2}").message.contains("sets are not supported"));
        assert!(error_of("{[1]: 2}").message.contains("unhashable"));
        assert_eq!(error_of("").column, 1);
        assert_eq!(error_of(" \r\n").column, 4);
        assert_eq!(error_of("@").message, "expected a Python literal, found '@'");
        assert_eq!(error_of("]").column, 1);
        assert_eq!(error_of("{'a' 1}").column, 6);
        assert_eq!(error_of("{'a': 1 'b': 2}").column, 9);
    }

    #[test]
    fn nesting_is_capped_at_64_levels() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let error = error_of(&too_deep);
        assert_eq!(error.column, MAX_DEPTH + 1);
        assert_eq!(error.message, "nesting deeper than 64 levels");
        // Mixed brackets count too, and a huge depth fails fast instead of overflowing the stack.
        let mixed = "{'a': (".repeat(40) + &"[".repeat(100_000);
        assert!(error_of(&mixed).message.contains("nesting"));
    }

    /// A tiny xorshift64 generator, so the fuzz cases are the same on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn every_prefix_of_the_example_line_returns_without_panicking() {
        let mut ends: Vec<usize> = EXAMPLE.char_indices().map(|(i, _)| i).collect();
        ends.push(EXAMPLE.len());
        for end in ends {
            let prefix = &EXAMPLE[..end];
            let result = parse(prefix);
            if end == EXAMPLE.len() {
                assert!(result.is_ok());
            } else if let Err(e) = result {
                assert!(e.column >= 1 && e.column <= prefix.chars().count() + 1, "{prefix:?}: {e}");
            }
        }
    }

    #[test]
    fn seeded_random_mutations_of_the_example_line_never_panic() {
        const SPICE: &[u8] = b"{}[]()'\",:\\ \n\rxuU0189-+.eE_rbTNF\xc3\xa9\xff\x00";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut ok, mut err) = (0usize, 0usize);
        for _ in 0..20_000 {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(5) {
                    0 => bytes.truncate(at),
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at, SPICE[rng.below(SPICE.len())]),
                    3 if at < bytes.len() => bytes[at] = SPICE[rng.below(SPICE.len())],
                    _ => bytes.insert(at, rng.next() as u8),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            match parse(&text) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{text:?}: {e}");
                    err += 1;
                }
            }
        }
        assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
        // Pure noise too.
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
