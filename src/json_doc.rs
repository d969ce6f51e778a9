//! The JSON documents micn prints (`--json`): indented like `serde_json`'s pretty form, fields in
//! their order, but the plain values (numbers, strings, booleans, nulls) of an array on one line.
//!
//! Besides reading better, this keeps the lines of a document long enough to pass through
//! `mpirun --tag-output` (which `micn-launch` uses) whole: Open MPI 4.1 copies each chunk it reads
//! from a rank (up to 4,096 bytes) into an 8,192-byte buffer with a tag (`[1,0]<stdout>:`, 14
//! bytes) before every line, and drops what does not fit, so a run of lines shorter than the tag
//! (one number each, as `serde_json` writes an array) loses text.
use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// `value` as an indented JSON document (no final newline).
pub fn to_string(value: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, Document::default()))?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// A [`Formatter`] that lays arrays of plain values out on one line, and puts an array's objects
/// and arrays (and whatever follows the first of them) each on a line of its own.
#[derive(Default)]
struct Document {
    /// The arrays and objects open, innermost last.
    open: Vec<Open>,
}

enum Open {
    /// `next`: the element about to be written is the first (`Some(true)`) or a later one.
    Array {
        next: Option<bool>,
        broken: bool,
    },
    Object {
        members: bool,
    },
}

impl Document {
    fn indent(&self, w: &mut (impl Write + ?Sized)) -> io::Result<()> {
        (0..self.open.len()).try_for_each(|_| w.write_all(b"  "))
    }

    /// What goes before a value: in an array, the separator, and a new line for an object or an
    /// array (and every element after it). Nothing in an object (its keys' strings included).
    fn value(&mut self, w: &mut (impl Write + ?Sized), nested: bool) -> io::Result<()> {
        let Some(Open::Array { next, broken }) = self.open.last_mut() else { return Ok(()) };
        let Some(first) = next.take() else { return Ok(()) };
        *broken |= nested;
        if *broken {
            w.write_all(if first { b"\n" } else { b",\n" })?;
            self.indent(w)
        } else {
            w.write_all(if first { b"" } else { b", " })
        }
    }

    fn close(&mut self, w: &mut (impl Write + ?Sized), on_its_own_line: bool, bracket: &[u8]) -> io::Result<()> {
        if on_its_own_line {
            w.write_all(b"\n")?;
            self.indent(w)?;
        }
        w.write_all(bracket)
    }
}

/// The plain values: the separator first, then the value as `serde_json` writes it.
macro_rules! plain {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $name<W: ?Sized + Write>(&mut self, w: &mut W $(, $arg: $ty)*) -> io::Result<()> {
            self.value(w, false)?;
            CompactFormatter.$name(w $(, $arg)*)
        }
    )*};
}

impl Formatter for Document {
    plain! {
        write_null();
        write_bool(value: bool);
        write_i8(value: i8);
        write_i16(value: i16);
        write_i32(value: i32);
        write_i64(value: i64);
        write_i128(value: i128);
        write_u8(value: u8);
        write_u16(value: u16);
        write_u32(value: u32);
        write_u64(value: u64);
        write_u128(value: u128);
        write_f32(value: f32);
        write_f64(value: f64);
        write_number_str(value: &str);
        begin_string();
        write_raw_fragment(fragment: &str);
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.value(w, true)?;
        self.open.push(Open::Array { next: None, broken: false });
        w.write_all(b"[")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, _: &mut W, first: bool) -> io::Result<()> {
        if let Some(Open::Array { next, .. }) = self.open.last_mut() {
            *next = Some(first);
        }
        Ok(())
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        let broken = matches!(self.open.pop(), Some(Open::Array { broken: true, .. }));
        self.close(w, broken, b"]")
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.value(w, true)?;
        self.open.push(Open::Object { members: false });
        w.write_all(b"{")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if let Some(Open::Object { members }) = self.open.last_mut() {
            *members = true;
        }
        w.write_all(if first { b"\n" } else { b",\n" })?;
        self.indent(w)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        let members = matches!(self.open.pop(), Some(Open::Object { members: true }));
        self.close(w, members, b"}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Report {
        zeta: f64,
        timings: Vec<f64>,
        names: Vec<&'static str>,
        empty: Vec<u8>,
        nothing: std::collections::BTreeMap<String, u8>,
        rows: Vec<serde_json::Value>,
        mixed: serde_json::Value,
        alpha: Option<f32>,
    }

    #[test]
    fn plain_arrays_take_one_line_fields_keep_their_order_and_the_document_reads_back_the_same() {
        let report = Report {
            zeta: f64::NAN,
            timings: vec![709.0, 748.0, 1.5e-7],
            names: vec!["a", "b\n\"c\""],
            empty: vec![],
            nothing: Default::default(),
            rows: vec![serde_json::json!({"n": 1, "ok": true}), serde_json::json!([null, 2])],
            mixed: serde_json::json!([1, {"k": "v"}, 2]),
            alpha: Some(0.5),
        };
        let text = to_string(&report).unwrap();
        let expected = r#"{
  "zeta": null,
  "timings": [709.0, 748.0, 1.5e-7],
  "names": ["a", "b\n\"c\""],
  "empty": [],
  "nothing": {},
  "rows": [
    {
      "n": 1,
      "ok": true
    },
    [null, 2]
  ],
  "mixed": [1,
    {
      "k": "v"
    },
    2
  ],
  "alpha": 0.5
}"#;
        assert_eq!(text, expected);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&report).unwrap()).unwrap()
        );
        assert_eq!(to_string(&[[1, 2], [3, 4]]).unwrap(), "[\n  [1, 2],\n  [3, 4]\n]");
        assert_eq!(to_string(&"x").unwrap(), "\"x\"");
    }
}
