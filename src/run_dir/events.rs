//! TensorBoard event files, written directly: `events.out.tfevents.<seconds>.<host>.micn` in the
//! run directory, one scalar per numeric field of every `metrics.jsonl` line (losses per task,
//! gradient norms, learning rate, samples/s, validation and test metrics), readable by
//! `tensorboard --logdir runs/`.
//!
//! The format (TensorFlow's `core/util/event.proto` and `core/lib/io/record_writer`): a file of
//! records, each `length: u64 LE`, `masked crc32c(length): u32 LE`, `data`, `masked crc32c(data):
//! u32 LE`, where each `data` is an `Event` protocol buffer; the first event holds the file
//! version `brain.Event:2`. The few messages needed are encoded here by hand (no protobuf
//! compiler, no dependency): `Event { wall_time: double = 1, step: int64 = 2, file_version: string
//! = 3, summary: Summary = 5 }`, `Summary { value: repeated Value = 1 }`, `Value { tag: string = 1,
//! simple_value: float = 2 }`.
//! A resumed run writes a new file (named to sort after the earlier ones) holding the figures of
//! the `metrics.jsonl` lines it keeps, in place of the earlier files: what an earlier attempt
//! logged past the checkpoint is gone from both, whichever reader TensorBoard uses.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::io_error::{PathIo, WithPath};

/// Appends events to one event file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` holding the figures of `earlier` (the `metrics.jsonl` lines a
    /// resumed run keeps), which replaces the directory's earlier event files: TensorBoard then
    /// shows what `metrics.jsonl` holds, whatever reader it uses and however that reader treats
    /// a restart. Written beside under a temporary name and renamed once the earlier files are
    /// gone, so a crash leaves either them or it. The replayed figures carry this time.
    pub fn create(dir: &Path, earlier: &[serde_json::Value]) -> Result<Self, PathIo> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let names = event_files(dir);
        // TensorBoard reads a directory's event files in the order of their names and never goes
        // back to one that sorts before the file it reads: a reader that follows the run while
        // it trains must find the new file after the one it has read, also within one second.
        let latest = names.iter().filter_map(|name| name.split('.').nth(3)?.parse::<u64>().ok()).max();
        let seconds = latest.map_or(now.as_secs(), |t| now.as_secs().max(t + 1));
        let path = dir.join(format!("events.out.tfevents.{seconds}.{}.micn", hostname()));
        let partial = dir.join(".events.partial");
        let file = std::fs::File::create(&partial).with_path(&partial)?;
        let mut writer = Self { file, path: partial.clone() };
        let mut version = event_header(now.as_secs_f64(), 0);
        field_bytes(&mut version, 3, b"brain.Event:2");
        writer.record(&version)?;
        for line in earlier {
            writer.scalars(line["step"].as_u64().unwrap_or(0), &scalars_of(line))?;
        }
        writer.file.sync_all().with_path(&partial)?;
        for name in names {
            let old = dir.join(name);
            std::fs::remove_file(&old).with_path(&old)?;
        }
        std::fs::rename(&partial, &path).with_path(&path)?;
        writer.path = path;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`, as one event.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), PathIo> {
        if values.is_empty() {
            return Ok(());
        }
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            field_bytes(&mut v, 1, tag.as_bytes());
            v.push(2 << 3 | 5); // simple_value: fixed32
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(wall.as_secs_f64(), step);
        field_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<(), PathIo> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        // One write per record, so a reader never sees half of one.
        self.file.write_all(&out).with_path(&self.path)
    }
}

/// How the names of TensorBoard's event files begin.
pub const EVENT_FILE_PREFIX: &str = "events.out.tfevents.";

/// The names of the event files in `dir`.
pub fn event_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(EVENT_FILE_PREFIX))
        .collect();
    names.sort();
    names
}

/// An event's `wall_time` and `step`.
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut e = vec![1 << 3 | 1]; // wall_time: fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint_field(&mut e, 2, step);
    e
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// A length-delimited field (a string, bytes or a message).
fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), as TFRecord uses.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// This host's name, reduced to the characters a file name may safely hold.
fn hostname() -> String {
    let name: String = crate::dist::hostname().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if name.is_empty() {
        "host".into()
    } else {
        name
    }
}

/// The scalars of a `metrics.jsonl` line: every numeric field but `step` and `epoch`, tagged
/// `train/…` (losses, gradient norms, learning rate, samples/s), `valid/…` or `test/…`.
pub fn scalars_of(line: &serde_json::Value) -> Vec<(String, f64)> {
    let Some(fields) = line.as_object() else { return Vec::new() };
    fields
        .iter()
        .filter(|(k, _)| *k != "step" && *k != "epoch")
        .filter_map(|(k, v)| {
            let tag = match (k.strip_prefix("valid_"), k.strip_prefix("test_")) {
                (Some(metric), _) => format!("valid/{metric}"),
                (_, Some(metric)) => format!("test/{metric}"),
                _ => format!("train/{k}"),
            };
            Some((tag, v.as_f64()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_their_published_values() {
        // The CRC-32C check value (RFC 3720, B.4: "123456789" → E3069283) and its iSCSI vector.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        // TFRecord's mask: rotate right by 15, add 0xa282ead8.
        assert_eq!(masked_crc32c(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn fields_become_tagged_scalars_and_protobuf_varints_are_little_endian_base_128() {
        let line =
            serde_json::json!({"step": 20, "epoch": 0, "loss_main": 0.5, "valid_auc": 0.75, "test_logloss": 0.6});
        let mut got = scalars_of(&line);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want = [("test/logloss", 0.6), ("train/loss_main", 0.5), ("valid/auc", 0.75)];
        assert_eq!(got, want.map(|(t, v)| (t.to_string(), v)));
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
    }
}
