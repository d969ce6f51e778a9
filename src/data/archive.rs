//! The prepared dataset directory and its archives.
//!
//! ```text
//! DIR/dataset.json     what was prepared from what: protocol, seed, counts, source hashes,
//!                      and the size and xxh3 of every archive
//! DIR/train.rkyv       training samples (rkyv, see `samples::Samples`)
//! DIR/test.rkyv        test samples
//! DIR/users.tsv items.tsv cats.tsv   vocabularies (items.tsv holds item → category)
//! DIR/oracle.f32       optional: the generator's score per test sample (little-endian f32)
//! ```
//!
//! Archives are memory-mapped and checked once at open (checksum, rkyv structure, then every id
//! against the vocabularies), after which samples are read in place without copying.
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::samples::{ArchivedSamples, Samples};
use super::vocab::Vocabularies;
use super::DataError;

pub const FORMAT_VERSION: u32 = 1;

/// Size and checksum of one file of the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub xxh3: String,
}

impl FileEntry {
    pub fn of(bytes: &[u8]) -> Self {
        Self { bytes: bytes.len() as u64, xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)) }
    }
}

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub format_version: u32,
    /// `amazon2014`, `amazon2018` or `dien_files`.
    pub source: String,
    /// `dien` or `din` (the DIEN files come pre-built with DIEN's protocol).
    pub protocol: String,
    pub seed: u64,
    pub max_hist_len: usize,
    pub counts: Counts,
    /// Every input file: name, size, xxh3, lines and skipped lines by kind.
    pub sources: Vec<serde_json::Value>,
    pub train: FileEntry,
    pub test: FileEntry,
    pub oracle: Option<FileEntry>,
    /// AUC of the generator's oracle scores on the test set (synthetic data only).
    pub oracle_auc: Option<f64>,
    /// Anything else the preparation wants to record (protocol summary, items without meta).
    pub notes: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub reviews: u64,
    pub train_samples: u64,
    pub test_samples: u64,
    pub users: u64,
    pub items: u64,
    pub cats: u64,
}

/// One memory-mapped, validated sample archive.
pub struct Archive {
    path: PathBuf,
    map: Mmap,
}

impl Archive {
    fn open(path: &Path, entry: &FileEntry, vocab: &Vocabularies) -> Result<Self, DataError> {
        let invalid = |message: String| DataError::Invalid { path: path.to_path_buf(), message };
        let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        // SAFETY: the dataset directory is written once and never modified in place; a file
        // changed underneath us is caught below only if it changed before this check.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        if map.len() as u64 != entry.bytes {
            return Err(invalid(format!(
                "{} bytes, dataset.json says {}: the archive is truncated or was replaced",
                map.len(),
                entry.bytes
            )));
        }
        let actual = FileEntry::of(&map);
        if actual.xxh3 != entry.xxh3 {
            return Err(invalid(format!(
                "checksum {} does not match dataset.json ({}): corrupted",
                actual.xxh3, entry.xxh3
            )));
        }
        let samples = rkyv::access::<ArchivedSamples, rkyv::rancor::Error>(&map)
            .map_err(|e| invalid(format!("not a valid sample archive: {e}")))?;
        validate(samples, vocab).map_err(invalid)?;
        Ok(Self { path: path.to_path_buf(), map })
    }

    /// The samples, read in place.
    pub fn samples(&self) -> &ArchivedSamples {
        // SAFETY: validated in `open`; the map is immutable for our lifetime.
        unsafe { rkyv::access_unchecked::<ArchivedSamples>(&self.map) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Lengths, offsets, labels and every id within its vocabulary.
fn validate(s: &ArchivedSamples, vocab: &Vocabularies) -> Result<(), String> {
    let n = s.labels.len();
    for (name, len) in
        [("users", s.users.len()), ("user_keys", s.user_keys.len()), ("items", s.items.len()), ("cats", s.cats.len())]
    {
        if len != n {
            return Err(format!("column {name} has {len} rows, labels {n}"));
        }
    }
    if s.hist_offsets.len() != n + 1 || s.hist_offsets[0].to_native() != 0 {
        return Err("history offsets do not start at 0 with one entry per sample".into());
    }
    if s.hist_items.len() != s.hist_cats.len() {
        return Err("history items and categories differ in length".into());
    }
    if s.hist_offsets.windows(2).any(|w| w[1].to_native() < w[0].to_native())
        || s.hist_offsets[n].to_native() != s.hist_items.len() as u64
    {
        return Err("history offsets are not increasing up to the pool size".into());
    }
    if let Some(i) = s.labels.iter().position(|&l| l > 1) {
        return Err(format!("sample {i}: label {} is not 0 or 1", s.labels[i]));
    }
    let check = |name: &str, ids: &[rkyv::rend::u32_le], limit: usize| -> Result<(), String> {
        match ids.iter().position(|id| id.to_native() as usize >= limit) {
            Some(i) => Err(format!("{name}[{i}] = {} is outside its vocabulary of {limit}", ids[i].to_native())),
            None => Ok(()),
        }
    };
    check("users", &s.users, vocab.users.len())?;
    check("items", &s.items, vocab.items.len())?;
    check("hist_items", &s.hist_items, vocab.items.len())?;
    check("cats", &s.cats, vocab.cats.len())?;
    check("hist_cats", &s.hist_cats, vocab.cats.len())
}

/// Serialise samples to archive bytes.
pub fn to_bytes(samples: &Samples) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(samples).expect("serialising plain vectors cannot fail").to_vec()
}

/// An opened dataset directory.
pub struct Dataset {
    pub dir: PathBuf,
    pub meta: DatasetMeta,
    pub vocab: Vocabularies,
    pub train: Archive,
    pub test: Archive,
    /// The generator's score per test sample, when the data is synthetic.
    pub oracle: Option<Vec<f32>>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let meta_path = dir.join("dataset.json");
        let text =
            std::fs::read_to_string(&meta_path).map_err(|source| DataError::Io { path: meta_path.clone(), source })?;
        let meta: DatasetMeta = serde_json::from_str(&text).map_err(|e| DataError::Invalid {
            path: meta_path.clone(),
            message: format!("not a dataset description: {e}"),
        })?;
        if meta.format_version != FORMAT_VERSION {
            return Err(DataError::Invalid {
                path: meta_path,
                message: format!(
                    "format version {} (this micn reads {FORMAT_VERSION}); prepare again",
                    meta.format_version
                ),
            });
        }
        let vocab = Vocabularies::read(dir)?;
        let train = Archive::open(&dir.join("train.rkyv"), &meta.train, &vocab)?;
        let test = Archive::open(&dir.join("test.rkyv"), &meta.test, &vocab)?;
        let oracle = match &meta.oracle {
            None => None,
            Some(entry) => {
                let path = dir.join("oracle.f32");
                let bytes = std::fs::read(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
                if FileEntry::of(&bytes) != *entry || bytes.len() != 4 * test.samples().len() {
                    return Err(DataError::Invalid {
                        path,
                        message: "size or checksum does not match dataset.json".into(),
                    });
                }
                Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
        };
        Ok(Self { dir: dir.to_path_buf(), meta, vocab, train, test, oracle })
    }
}
