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
use std::io::Write;
use std::path::{Path, PathBuf};

use super::batch::{Batch, NoClickSampler};
use super::prepare::Staging;
use super::samples::ArchivedSamples;
use super::{shard, DataError, Dataset};
use crate::io_error::{replace_file_synced, PathIo};

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
    // What an earlier export holds: `export.json`, and each split's arrays in its directory.
    let arrays = SPLITS.iter().flat_map(|split| SPLIT_ARRAYS.map(|array| format!("{split}/{array}.npy")));
    let written: Vec<String> = std::iter::once(EXPORT_FILE.to_string()).chain(arrays).collect();
    let staging = Staging::replacing(out, &written.iter().map(String::as_str).collect::<Vec<_>>())?;
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
    let [train_dir, valid_dir, test_dir] = SPLITS.map(|split| out.join(split));
    let width = write_split(&train_dir, train, &split.train, opts.max_hist_len, noclick.as_ref(), CHUNK)?;
    widths.insert(SPLITS[0].into(), width.into());
    if !split.valid.is_empty() {
        let width = write_split(&valid_dir, train, &split.valid, opts.max_hist_len, None, CHUNK)?;
        widths.insert(SPLITS[1].into(), width.into());
    }
    let width = write_split(&test_dir, dataset.test.samples(), &test_ids, opts.max_hist_len, None, CHUNK)?;
    widths.insert(SPLITS[2].into(), width.into());
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

/// The directories of an export, one per split.
const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// The arrays of a split, each `NAME.npy` (the no-click draws in DIEN's training split only).
const SPLIT_ARRAYS: [&str; 10] = [
    "sample",
    "users",
    "items",
    "cats",
    "hist_len",
    "hist_items",
    "hist_cats",
    "labels",
    "noclick_items",
    "noclick_cats",
];

/// Samples collated and written at a time: an export holds one chunk in memory, whatever the
/// size of its splits.
const CHUNK: usize = 65_536;

/// One split in archive order, collated `chunk` samples at a time exactly as one batch of it all
/// would be (as wide as its longest kept history, each sample's no-click draw keyed by its position in
/// the split: see `Batch::collate`); returns its width `T` (at most `max_hist_len`).
fn write_split(
    dir: &Path,
    samples: &ArchivedSamples,
    ids: &[u32],
    max_hist_len: usize,
    noclick: Option<&NoClickSampler>,
    chunk: usize,
) -> Result<usize, DataError> {
    crate::io_error::create_dirs(dir)?;
    let (n, t) = (ids.len(), Batch::width(samples, ids, max_hist_len));
    let file = |name: &str| dir.join(format!("{name}.npy"));
    let [sample, users, items, cats, hist_len, hist_items, hist_cats, labels, noclick_items, noclick_cats] =
        SPLIT_ARRAYS.map(file);
    let [mut sample, mut users, mut items, mut cats, mut lengths_out] =
        [sample, users, items, cats, hist_len].map(|path| NpyWriter::<i64>::create(&path, &[n]));
    let [mut hist_items, mut hist_cats] = [hist_items, hist_cats].map(|path| NpyWriter::<i64>::create(&path, &[n, t]));
    let mut labels = NpyWriter::<f32>::create(&labels, &[n]);
    let mut drawn = noclick.map(|_| [noclick_items, noclick_cats].map(|path| NpyWriter::create(&path, &[n, t])));
    for (c, piece) in ids.chunks(chunk).enumerate() {
        let batch = Batch::collate(samples, piece, max_hist_len, (0, 0, (c * chunk) as u64), noclick);
        let lengths: Vec<i64> =
            batch.hist_mask.chunks(batch.hist_len).map(|row| row.iter().filter(|&&m| m > 0.0).count() as i64).collect();
        sample.put(&piece.iter().map(|&i| i64::from(i)).collect::<Vec<_>>());
        users.put(&batch.users);
        items.put(&batch.items);
        cats.put(&batch.cats);
        lengths_out.put(&lengths);
        labels.put(&batch.labels);
        hist_items.put_rows(&batch.hist_items, batch.hist_len, t);
        hist_cats.put_rows(&batch.hist_cats, batch.hist_len, t);
        if let (Some([noclick_items, noclick_cats]), Some((drawn_items, drawn_cats))) = (drawn.as_mut(), &batch.noclick)
        {
            noclick_items.put_rows(drawn_items, batch.hist_len, t);
            noclick_cats.put_rows(drawn_cats, batch.hist_len, t);
        }
        // A write that failed (a full disk) ends the split here: `finish` says why.
        let longs = [&sample, &users, &items, &cats, &lengths_out, &hist_items, &hist_cats];
        if longs.into_iter().chain(drawn.iter().flatten()).any(NpyWriter::failed) || labels.failed() {
            break;
        }
    }
    // Every file finished; a failed write's error first (the others were cut short by it).
    let longs = [sample, users, items, cats, lengths_out, hist_items, hist_cats].into_iter();
    let mut finished: Vec<(bool, Result<(), PathIo>)> =
        longs.chain(drawn.into_iter().flatten()).map(|writer| (writer.failed(), writer.finish())).collect();
    finished.push((labels.failed(), labels.finish()));
    finished.sort_by_key(|(failed, _)| !failed);
    for (_, result) in finished {
        result?;
    }
    Ok(t)
}

/// A value type of NumPy arrays: its `descr` and its little-endian bytes.
pub trait NpyValue: Copy + Default {
    const DESCR: &'static str;
    fn put_le(self, out: &mut impl std::io::Write) -> std::io::Result<()>;
}

impl NpyValue for i64 {
    const DESCR: &'static str = "<i8";
    fn put_le(self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.to_le_bytes())
    }
}

impl NpyValue for f32 {
    const DESCR: &'static str = "<f4";
    fn put_le(self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.to_le_bytes())
    }
}

/// A NumPy `.npy` file (format 1.0, little-endian, C order) written as its values come: the
/// header with the whole shape first (the magic, a dict padded with spaces to a multiple of 64
/// bytes, ending in a newline), then the values, in as many pieces as the writer has them, so an
/// array of gigabytes is never held whole. The first error is kept and given by
/// [`finish`](Self::finish), which also checks that the values filled the shape, and syncs.
pub struct NpyWriter<T: NpyValue> {
    path: PathBuf,
    out: std::io::Result<std::io::BufWriter<std::fs::File>>,
    /// Values the shape holds, and values put so far.
    size: usize,
    put: usize,
    values: std::marker::PhantomData<T>,
}

impl<T: NpyValue> NpyWriter<T> {
    /// A new file at `path` (one that is there is truncated) for an array of `shape`.
    pub fn create(path: &Path, shape: &[usize]) -> Self {
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}", T::DESCR);
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        header.push('\n');
        let out = std::fs::File::create(path).map(std::io::BufWriter::new).and_then(|mut out| {
            out.write_all(b"\x93NUMPY\x01\x00")?;
            out.write_all(&(header.len() as u16).to_le_bytes())?;
            out.write_all(header.as_bytes())?;
            Ok(out)
        });
        NpyWriter {
            path: path.to_path_buf(),
            out,
            size: shape.iter().product(),
            put: 0,
            values: std::marker::PhantomData,
        }
    }

    /// The next values, in C order.
    pub fn put(&mut self, values: &[T]) {
        self.put += values.len();
        if let Ok(out) = &mut self.out {
            if let Err(e) = values.iter().try_for_each(|v| v.put_le(out)) {
                self.out = Err(e);
            }
        }
    }

    /// Whether a write failed (then [`finish`](Self::finish) says why).
    pub fn failed(&self) -> bool {
        self.out.is_err()
    }

    /// Rows `width` values wide (`values.len()` a multiple of it), each padded with zeros to
    /// `padded` values.
    pub fn put_rows(&mut self, values: &[T], width: usize, padded: usize) {
        let zeros = vec![T::default(); padded - width];
        for row in values.chunks(width) {
            self.put(row);
            self.put(&zeros);
        }
    }

    /// The file, synced, once every value of its shape was put.
    pub fn finish(self) -> Result<(), PathIo> {
        let at = |source| PathIo { path: self.path.clone(), source };
        // A failed write first: the values it cut short follow from it.
        let file = self.out.and_then(|out| out.into_inner().map_err(|e| e.into_error())).map_err(at)?;
        if self.put != self.size {
            let message = format!("{} values were written where the array's shape holds {}", self.put, self.size);
            return Err(at(std::io::Error::new(std::io::ErrorKind::InvalidData, message)));
        }
        file.sync_all().map_err(at)
    }
}

/// Writes `bytes` to `path`, synced, whole or not at all ([`replace_file_synced`]).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    Ok(replace_file_synced(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_bytes<T: NpyValue>(values: &[T], shape: &[usize]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let mut writer = NpyWriter::create(&path, shape);
        writer.put(values);
        writer.finish().unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn npy_headers_are_what_numpy_writes() {
        // numpy.save of np.array([1, -2], dtype='<i8'): magic, version 1.0, header length 118,
        // the dict, spaces to a 128-byte preamble, a newline, then the values.
        let bytes = npy_bytes(&[1i64, -2], &[2]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 118);
        let header = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert!(header.starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }"));
        assert!(header.ends_with(" \n"));
        assert_eq!(&bytes[128..], [1i64.to_le_bytes(), (-2i64).to_le_bytes()].concat());
        let matrix = npy_bytes(&[0.5f32; 6], &[2, 3]);
        assert_eq!(matrix.len(), 128 + 24);
        assert!(std::str::from_utf8(&matrix[10..128])
            .unwrap()
            .contains("'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
    }

    #[test]
    fn a_split_written_in_chunks_is_the_split_collated_as_one_batch() {
        use crate::data::synth::{Preset, SynthConfig};
        let tmp = tempfile::tempdir().unwrap();
        let synth = SynthConfig { users: 60, items: 80, ..Preset::Quickstart.config(3) };
        let data =
            crate::data::prepare::synthetic_dataset(&synth, crate::data::protocol::Protocol::Dien, 6, tmp.path())
                .unwrap();
        let dataset = Dataset::open(&data).unwrap();
        let noclick = NoClickSampler::for_dataset(&dataset, 5).map(|(sampler, _)| sampler).unwrap();
        let train = dataset.train.samples();
        // Every other sample, so that a chunk's archive indices are not its positions.
        let ids: Vec<u32> = (0..train.len() as u32).step_by(2).collect();
        let write = |name: &str, chunk: usize| {
            let dir = tmp.path().join(name);
            let width = write_split(&dir, train, &ids, 4, Some(&noclick), chunk).unwrap();
            (width, dir)
        };
        let (width, whole) = write("whole", ids.len());
        assert_eq!(width, Batch::width(train, &ids, 4));
        let one = Batch::collate(train, &ids, 4, (0, 0, 0), Some(&noclick));
        assert!(one.hist_mask.contains(&0.0), "some histories are shorter than the width");
        // Chunks of 7 samples: some narrower than the split, each padded to its width.
        let (chunked_width, chunked) = write("chunked", 7);
        assert_eq!(chunked_width, width);
        // Every array an export names (which tell an earlier export from a user's files), no other.
        let mut files: Vec<String> =
            std::fs::read_dir(&whole).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let mut named: Vec<String> = SPLIT_ARRAYS.iter().map(|name| format!("{name}.npy")).collect();
        named.sort();
        assert_eq!(files, named);
        for file in &files {
            let bytes = std::fs::read(whole.join(file)).unwrap();
            assert_eq!(bytes, std::fs::read(chunked.join(file)).unwrap(), "{file}");
        }
        let noclick_items = std::fs::read(whole.join("noclick_items.npy")).unwrap();
        let values: Vec<i64> =
            noclick_items[128..].chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, one.noclick.unwrap().0, "the draws of one batch of the whole split");
    }

    #[test]
    fn rows_put_in_pieces_are_padded_to_the_array_width_and_a_short_array_is_an_error() {
        // Two pieces of rows 1 and 2 wide, padded to 3: the array [[1, 0, 0], [2, 3, 0], [4, 5, 0]].
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.npy");
        let mut writer = NpyWriter::<i64>::create(&path, &[3, 3]);
        writer.put_rows(&[1], 1, 3);
        writer.put_rows(&[2, 3, 4, 5], 2, 3);
        writer.finish().unwrap();
        let values: Vec<i64> =
            std::fs::read(&path).unwrap()[128..].chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, [1, 0, 0, 2, 3, 0, 4, 5, 0]);
        let mut short = NpyWriter::<f32>::create(&path, &[3]);
        short.put(&[1.0, 2.0]);
        let e = short.finish().unwrap_err().to_string();
        assert!(e.contains("rows.npy") && e.contains("2 values were written where the array's shape holds 3"), "{e}");
        // A write that failed says so, though it also left the array short.
        let mut full = NpyWriter::<f32>::create(Path::new("/dev/full"), &[3]);
        full.put(&[1.0, 2.0]);
        let e = full.finish().unwrap_err().to_string();
        assert!(e.starts_with("/dev/full: No space left on device"), "{e}");
    }
}
