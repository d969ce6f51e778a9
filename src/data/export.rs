//! `micn data export`: a prepared dataset's samples as NumPy arrays, collated exactly as micn's
//! loader collates them (the same ids, the same histories cut to `max_hist_len`, left-aligned and
//! zero-padded; DIEN's no-click items drawn by the same sampler), so that another trainer
//! (DeepCTR-Torch, say) learns from the very samples micn learns from.
//!
//! Layout: `OUT/{train,valid,test}/NAME.npy` (NumPy format 1.0, little-endian, C order) with
//! `sample` (`[n]` i64: each sample's index in its archive, the number `micn predict` writes),
//! `users`, `items`, `cats` (`[n]` i64), `labels` (`[n]` f32), `hist_items`, `hist_cats`
//! (`[n, T]` i64), `hist_len` (`[n]` i64) and, for the training split, `noclick_items`,
//! `noclick_cats` (`[n, T]` i64); `OUT/export.json` gives the vocabulary sizes (id 0 included)
//! and digest (as a run records it with its model), `max_hist_len`, every split's width `T` (its
//! longest kept history) and sample count. `valid/` exists when a validation share is held out
//! (the split `micn train` holds out with the same `data.valid_share`).
use std::path::Path;

use super::batch::{Batch, NoClickSampler};
use super::prepare::Staging;
use super::samples::ArchivedSamples;
use super::{shard, DataError, Dataset};
use crate::io_error::replace_file_synced;

/// The file that describes an export (and marks a directory as one).
pub const EXPORT_FILE: &str = "export.json";

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub max_hist_len: usize,
    /// The share of the training archive held out as `valid/` (`data.valid_share`).
    pub valid_share: f64,
    /// Seed of the no-click draws in `train/`.
    pub seed: u64,
}

/// Sample counts of what was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exported {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

/// Writes `dataset`'s splits under `out`, whole or not at all: built beside it, then moved into
/// place, replacing an earlier export there (a directory with `export.json`, or an empty one);
/// anything else at `out` is refused.
pub fn export(dataset: &Dataset, out: &Path, opts: &ExportOptions) -> Result<Exported, DataError> {
    if opts.max_hist_len == 0 {
        return Err(DataError::Invalid {
            path: out.to_path_buf(),
            message: "--max-hist-len must be at least 1".into(),
        });
    }
    if opts.max_hist_len > dataset.meta.max_hist_len {
        return Err(DataError::Invalid {
            path: dataset.dir.clone(),
            message: format!(
                "--max-hist-len {}: the dataset keeps histories of at most {} items (prepare it again with \
                 --max-hist-len {} to export longer ones)",
                opts.max_hist_len, dataset.meta.max_hist_len, opts.max_hist_len
            ),
        });
    }
    let staging = Staging::replacing(out, &[EXPORT_FILE, "train", "valid", "test"])?;
    let exported = write_export(dataset, &staging.tmp, opts)?;
    staging.commit()?;
    Ok(exported)
}

fn write_export(dataset: &Dataset, out: &Path, opts: &ExportOptions) -> Result<Exported, DataError> {
    let train = dataset.train.samples();
    let by_user = dataset.meta.protocol == "dien";
    let key = |i: usize| train.user_keys[i].to_native();
    let split = shard::validation_split(train.len(), key, by_user, opts.valid_share, dataset.meta.seed);
    let noclick = NoClickSampler::for_dataset(dataset, opts.seed).map(|(sampler, _)| sampler);
    let test_ids: Vec<u32> = (0..dataset.test.samples().len() as u32).collect();
    let mut widths = serde_json::Map::new();
    let width = write_split(&out.join("train"), train, &split.train, opts.max_hist_len, noclick.as_ref())?;
    widths.insert("train".into(), width.into());
    if !split.valid.is_empty() {
        let width = write_split(&out.join("valid"), train, &split.valid, opts.max_hist_len, None)?;
        widths.insert("valid".into(), width.into());
    }
    let width = write_split(&out.join("test"), dataset.test.samples(), &test_ids, opts.max_hist_len, None)?;
    widths.insert("test".into(), width.into());
    let exported = Exported { train: split.train.len(), valid: split.valid.len(), test: test_ids.len() };
    let summary = serde_json::json!({
        "users": dataset.vocab.users.len(),
        "items": dataset.vocab.items.len(),
        "cats": dataset.vocab.cats.len(),
        "vocabularies": dataset.vocab.digest(),
        "max_hist_len": opts.max_hist_len,
        "valid_share": opts.valid_share,
        "hist_width": widths,
        "protocol": dataset.meta.protocol,
        "samples": exported,
    });
    let text = serde_json::to_string_pretty(&summary).expect("plain values serialise");
    write_file(&out.join(EXPORT_FILE), text.as_bytes())?;
    Ok(exported)
}

/// One split, collated as one batch in archive order; returns its width `T` (the longest kept
/// history, at most `max_hist_len`).
fn write_split(
    dir: &Path,
    samples: &ArchivedSamples,
    ids: &[u32],
    max_hist_len: usize,
    noclick: Option<&NoClickSampler>,
) -> Result<usize, DataError> {
    crate::io_error::create_dirs(dir)?;
    // One draw per sample, keyed by its position in the split (see `Batch::collate`).
    let batch = Batch::collate(samples, ids, max_hist_len, (0, 0, 0), noclick);
    let (n, t) = (batch.len(), batch.hist_len);
    let hist_len: Vec<i64> =
        batch.hist_mask.chunks(t.max(1)).map(|row| row.iter().filter(|&&m| m > 0.0).count() as i64).collect();
    let hist_len = if t == 0 { vec![0; n] } else { hist_len };
    let sample: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let longs: [(&str, &[i64], &[usize]); 7] = [
        ("sample", &sample, &[n]),
        ("users", &batch.users, &[n]),
        ("items", &batch.items, &[n]),
        ("cats", &batch.cats, &[n]),
        ("hist_items", &batch.hist_items, &[n, t]),
        ("hist_cats", &batch.hist_cats, &[n, t]),
        ("hist_len", &hist_len, &[n]),
    ];
    for (name, values, shape) in longs {
        write_npy(&dir.join(format!("{name}.npy")), Npy::I64(values), shape)?;
    }
    write_npy(&dir.join("labels.npy"), Npy::F32(&batch.labels), &[n])?;
    if let Some((items, cats)) = &batch.noclick {
        write_npy(&dir.join("noclick_items.npy"), Npy::I64(items), &[n, t])?;
        write_npy(&dir.join("noclick_cats.npy"), Npy::I64(cats), &[n, t])?;
    }
    Ok(t)
}

/// The values of one array.
pub enum Npy<'a> {
    I64(&'a [i64]),
    F32(&'a [f32]),
}

/// The bytes of a NumPy `.npy` file (format 1.0): the magic, a header dict padded with spaces
/// to a multiple of 64 bytes and ending in a newline, then the little-endian values.
pub fn npy_bytes(values: Npy<'_>, shape: &[usize]) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_npy_into(&mut bytes, values, shape).expect("writing into memory");
    bytes
}

/// [`npy_bytes`] written into `w` as they are made: an array of gigabytes is not copied first.
fn write_npy_into(w: &mut impl std::io::Write, values: Npy<'_>, shape: &[usize]) -> std::io::Result<()> {
    let descr = match values {
        Npy::I64(_) => "<i8",
        Npy::F32(_) => "<f4",
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    match values {
        Npy::I64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        Npy::F32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
    }
}

/// One `.npy` file, synced, whole or not at all ([`crate::io_error::replace_file`]).
pub(crate) fn write_npy(path: &Path, values: Npy<'_>, shape: &[usize]) -> Result<(), DataError> {
    crate::io_error::replace_file(path, |tmp| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        write_npy_into(&mut w, values, shape)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    })?;
    Ok(())
}

/// Writes `bytes` to `path`, synced, whole or not at all ([`replace_file_synced`]).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    Ok(replace_file_synced(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_what_numpy_writes() {
        // numpy.save of np.array([1, -2], dtype='<i8'): magic, version 1.0, header length 118,
        // the dict, spaces to a 128-byte preamble, a newline, then the values.
        let bytes = npy_bytes(Npy::I64(&[1, -2]), &[2]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 118);
        let header = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert!(header.starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }"));
        assert!(header.ends_with(" \n"));
        assert_eq!(&bytes[128..], [1i64.to_le_bytes(), (-2i64).to_le_bytes()].concat());
        let matrix = npy_bytes(Npy::F32(&[0.5; 6]), &[2, 3]);
        assert_eq!(matrix.len(), 128 + 24);
        assert!(std::str::from_utf8(&matrix[10..128])
            .unwrap()
            .contains("'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
    }
}
