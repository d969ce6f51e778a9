//! The bytes of a checkpoint: the manifest's checksums and the header of a `.safetensors` file.
//!
//! The header is read here, by this crate, rather than by tch: tch trusts it (a tensor whose
//! shape promises more bytes than the file holds is read out of bounds, and a tensor relabelled
//! to another dtype silently changes the dtype of the variable it is loaded into, which then
//! panics inside libtorch at the next forward pass). Nothing in this file touches libtorch.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `manifest.json`: (file name, size in bytes, xxh3-64 as 16 hex digits) of each file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) files: Vec<(String, u64, String)>,
}

/// The checksum recorded in the manifest.
pub(crate) fn digest(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// [`digest`] of the file at `path`, read a piece at a time (a model file is not held in memory
/// twice).
pub(crate) fn file_digest(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let (mut file, mut hasher) = (std::fs::File::open(path)?, xxhash_rust::xxh3::Xxh3::new());
    let mut piece = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut piece) {
            Ok(0) => return Ok(format!("{:016x}", hasher.digest())),
            Ok(n) => hasher.update(&piece[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Largest header accepted (the safetensors reference implementation's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor as a safetensors header describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TensorHeader {
    /// The safetensors dtype name (`F32`, `I64`, …).
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range within the data that follows the header.
    pub data_offsets: [u64; 2],
}

/// A safetensors file's layout: 8 bytes of little-endian header length, a JSON object from
/// tensor name to [`TensorHeader`] (plus an optional `__metadata__` entry), then the data.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsLayout {
    pub tensors: BTreeMap<String, TensorHeader>,
    /// Offset of the data within the file (8 + header length).
    pub data_start: usize,
}

impl SafetensorsLayout {
    /// Read and check the header of the file `bytes`: every tensor's dtype is known, its byte
    /// range lies within the file and holds exactly `elements × dtype size` bytes. Returns why
    /// not, naming the tensor.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let Some(length) = bytes.get(..8) else {
            return Err(format!("{} bytes, too short for a safetensors header", bytes.len()));
        };
        let header_len = u64::from_le_bytes(length.try_into().expect("8 bytes"));
        let available = bytes.len() as u64 - 8;
        if header_len > available || header_len > MAX_HEADER_BYTES {
            return Err(format!("header length {header_len} does not fit the file's {available} bytes after it"));
        }
        let data_start = 8 + header_len as usize;
        let text = std::str::from_utf8(&bytes[8..data_start]).map_err(|e| format!("header is not UTF-8: {e}"))?;
        let mut raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("header is not a JSON object: {e}"))?;
        raw.remove("__metadata__");
        let data_len = (bytes.len() - data_start) as u64;
        let mut tensors = BTreeMap::new();
        for (name, value) in raw {
            let header: TensorHeader =
                serde_json::from_value(value).map_err(|e| format!("tensor `{name}`: header entry: {e}"))?;
            let element = dtype_size(&header.dtype)
                .ok_or_else(|| format!("tensor `{name}`: unknown dtype {:?}", header.dtype))?;
            let bytes_needed = header
                .shape
                .iter()
                .try_fold(element, |n, &d| n.checked_mul(d))
                .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", header.shape))?;
            let [begin, end] = header.data_offsets;
            if begin > end || end > data_len {
                return Err(format!(
                    "tensor `{name}`: bytes {begin}..{end} lie outside the file's {data_len} bytes of data"
                ));
            }
            if end - begin != bytes_needed {
                return Err(format!(
                    "tensor `{name}`: {} {:?} needs {bytes_needed} bytes, the header gives it {}",
                    header.dtype,
                    header.shape,
                    end - begin
                ));
            }
            tensors.insert(name, header);
        }
        check_tiling(&tensors, data_len)?;
        Ok(Self { tensors, data_start })
    }

    /// The bytes of `tensor` within `bytes` (the file [`parse`](Self::parse) read).
    pub fn data<'a>(&self, bytes: &'a [u8], tensor: &TensorHeader) -> &'a [u8] {
        let [begin, end] = tensor.data_offsets;
        &bytes[self.data_start + begin as usize..self.data_start + end as usize]
    }
}

/// The tensors' byte ranges cover the data exactly, one after another, as the format requires:
/// no two share a byte (an edited offset would read another tensor's values, shifted), and none
/// is left to no tensor.
fn check_tiling(tensors: &BTreeMap<String, TensorHeader>, data_len: u64) -> Result<(), String> {
    let mut ranges: Vec<(&String, [u64; 2])> = tensors.iter().map(|(name, t)| (name, t.data_offsets)).collect();
    ranges.sort_by_key(|&(_, [begin, end])| (begin, end));
    let mut covered: Option<(&String, u64)> = None;
    for (name, [begin, end]) in ranges {
        match covered {
            Some((before, to)) if begin < to => {
                return Err(format!(
                    "tensor `{name}`: bytes {begin}..{end} overlap tensor `{before}`'s, which end at {to}"
                ))
            }
            Some((_, to)) if begin > to => {
                return Err(format!("bytes {to}..{begin}, before tensor `{name}`, are no tensor's"))
            }
            None if begin > 0 => return Err(format!("bytes 0..{begin}, before tensor `{name}`, are no tensor's")),
            _ => {}
        }
        covered = Some((name, end));
    }
    let end = covered.map_or(0, |(_, to)| to);
    match end < data_len {
        true => Err(format!("bytes {end}..{data_len}, after the last tensor, are no tensor's")),
        false => Ok(()),
    }
}

/// Bytes per element of a safetensors dtype; `None` for a name the format does not define.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A safetensors file built by hand: `(name, dtype, shape, data)` in order.
    pub(crate) fn file(tensors: &[(&str, &str, &[u64], &[u8])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let text = serde_json::to_vec(&header).unwrap();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text);
        out.extend(data);
        out
    }

    #[test]
    fn a_well_formed_header_is_read_with_every_tensor() {
        let bytes = file(&[("a", "F32", &[2], &[0; 8]), ("b", "I64", &[1, 1], &[7, 0, 0, 0, 0, 0, 0, 0])]);
        let layout = SafetensorsLayout::parse(&bytes).unwrap();
        assert_eq!(layout.tensors.len(), 2);
        let b = &layout.tensors["b"];
        assert_eq!((b.dtype.as_str(), b.shape.as_slice()), ("I64", &[1u64, 1][..]));
        assert_eq!(layout.data(&bytes, b), &[7, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_shape_that_promises_more_bytes_than_given_is_refused() {
        // tch would copy 4 × 4 bytes from a range of 8: a read past the tensor's data.
        let bytes = file(&[("w", "F32", &[4], &[0; 8])]);
        let e = SafetensorsLayout::parse(&bytes).unwrap_err();
        assert!(e.contains("tensor `w`") && e.contains("needs 16 bytes"), "{e}");
    }

    #[test]
    fn offsets_past_the_end_and_bad_lengths_are_refused() {
        let mut bytes = file(&[("w", "F32", &[2], &[0; 8])]);
        bytes.truncate(bytes.len() - 4);
        let e = SafetensorsLayout::parse(&bytes).unwrap_err();
        assert!(e.contains("tensor `w`") && e.contains("outside"), "{e}");
        assert!(SafetensorsLayout::parse(&[1, 2, 3]).unwrap_err().contains("too short"));
        let huge = u64::MAX.to_le_bytes();
        assert!(SafetensorsLayout::parse(&huge).unwrap_err().contains("does not fit"));
        let e = SafetensorsLayout::parse(&file(&[("w", "F33", &[1], &[0; 4])])).unwrap_err();
        assert!(e.contains("unknown dtype \"F33\""), "{e}");
    }

    /// `bytes` (a file of [`file`]) with tensor `name`'s offsets moved by `by` bytes.
    fn shifted(bytes: &[u8], name: &str, by: i64) -> Vec<u8> {
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        for end in 0..2 {
            let at = header[name]["data_offsets"][end].as_i64().unwrap();
            header[name]["data_offsets"][end] = (at + by).into();
        }
        let text = serde_json::to_vec(&header).unwrap();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text);
        out.extend(&bytes[8 + len..]);
        out
    }

    #[test]
    fn ranges_that_overlap_or_leave_bytes_to_no_tensor_are_refused() {
        let bytes = file(&[("a", "F32", &[2], &[0; 8]), ("b", "F32", &[2], &[1; 8])]);
        // `b` moved one float down reads `a`'s last value and its own first: shifted values.
        let e = SafetensorsLayout::parse(&shifted(&bytes, "b", -4)).unwrap_err();
        assert!(e.contains("tensor `b`: bytes 4..12 overlap tensor `a`'s, which end at 8"), "{e}");
        // Data past the last tensor, and a gap between two.
        let mut longer = bytes.clone();
        longer.extend([0; 4]);
        let e = SafetensorsLayout::parse(&longer).unwrap_err();
        assert!(e.contains("bytes 16..20, after the last tensor, are no tensor's"), "{e}");
        let mut gap = shifted(&bytes, "b", 4);
        gap.extend([0; 4]);
        let e = SafetensorsLayout::parse(&gap).unwrap_err();
        assert!(e.contains("bytes 8..12, before tensor `b`, are no tensor's"), "{e}");
        let e = SafetensorsLayout::parse(&shifted(&gap, "a", 4)).unwrap_err();
        assert!(e.contains("bytes 0..4, before tensor `a`"), "{e}");
    }
}
