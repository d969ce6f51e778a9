//! The prepared dataset directory and its archives.
//!
//! ```text
//! DIR/dataset.json     what was prepared from what: protocol, seed, counts, source hashes,
//!                      where categories came from, and the size and xxh3 of every other file
//! DIR/train.rkyv       training samples (rkyv, see `samples::Samples`)
//! DIR/test.rkyv        test samples
//! DIR/users.tsv items.tsv cats.tsv   vocabularies (items.tsv holds item → category)
//! DIR/oracle.f32       optional: the generator's score per test sample (little-endian f32)
//! DIR/attributes.tsv item_attributes.u32   optional: the item-attribute table (`attributes`)
//! ```
//!
//! Every file is checked against its size and checksum at open, so that a file copied over
//! another (`users.tsv` as `cats.tsv`: both parse) is refused, naming it. Archives are then
//! memory-mapped and validated once (rkyv structure, then every id against the vocabularies),
//! after which samples are read in place without copying.
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::attributes::ItemAttributes;
use super::samples::{ArchivedSamples, Samples};
use super::vocab::Vocabularies;
use super::DataError;
use crate::io_error::WithPath;

/// Version 2 added the vocabularies' sizes and checksums and [`CategorySource`]; version 1
/// directories are refused with a request to prepare again (their vocabularies cannot be checked).
pub const FORMAT_VERSION: u32 = 2;

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

    /// Whether `bytes` are the file this entry describes; the error says how they differ.
    pub fn check(&self, path: &Path, bytes: &[u8]) -> Result<(), DataError> {
        let invalid = |message: String| DataError::Invalid { path: path.to_path_buf(), message };
        if bytes.len() as u64 != self.bytes {
            return Err(invalid(format!(
                "{} bytes, dataset.json says {}: the file is truncated or was replaced",
                bytes.len(),
                self.bytes
            )));
        }
        let actual = Self::of(bytes);
        if actual.xxh3 != self.xxh3 {
            return Err(invalid(format!(
                "checksum {} does not match dataset.json ({}): the file is corrupted or was replaced",
                actual.xxh3, self.xxh3
            )));
        }
        Ok(())
    }
}

/// Sizes and checksums of the three vocabulary files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabFiles {
    pub users: FileEntry,
    pub items: FileEntry,
    pub cats: FileEntry,
}

/// Where the items' categories came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategorySource {
    /// The item metadata file given with `--meta`.
    Meta,
    /// Prepared without `--meta` (sequences: without `--category-attribute`): every item is in
    /// `default_cat`.
    #[serde(rename = "none")]
    WithoutMeta,
    /// The category columns of DIEN's sample files (corrected by `item-info` where present).
    DienFiles,
    /// One attribute of each item from a sequences file's attributes (`--category-attribute`).
    Attributes,
}

impl std::fmt::Display for CategorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CategorySource::Meta => "from the meta file",
            CategorySource::WithoutMeta => {
                "none (no --meta; sequences: no --category-attribute): every item is in `default_cat`"
            }
            CategorySource::DienFiles => "from DIEN's sample files",
            CategorySource::Attributes => "one attribute of each item (--category-attribute)",
        })
    }
}

/// The item-attribute table's files (see [`super::attributes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeFiles {
    /// The table's columns, in order.
    pub fields: Vec<String>,
    /// `attributes.tsv`.
    pub values: FileEntry,
    /// `item_attributes.u32`.
    pub table: FileEntry,
}

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub format_version: u32,
    /// `amazon2014`, `amazon2018`, `amazon2023`, `sequences`, `interactions` or `dien_files`.
    pub source: String,
    /// `dien` or `din` (the DIEN files come pre-built with DIEN's protocol).
    pub protocol: String,
    pub seed: u64,
    pub max_hist_len: usize,
    pub counts: Counts,
    pub categories: CategorySource,
    /// Every input file: name, size, xxh3, lines and skipped lines by kind.
    pub sources: Vec<serde_json::Value>,
    pub train: FileEntry,
    pub test: FileEntry,
    pub vocabularies: VocabFiles,
    pub oracle: Option<FileEntry>,
    /// The item-attribute table, when the input had attributes (absent from older directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<AttributeFiles>,
    /// [`INTERACTIONS_FILE`]: every interaction read per item, when the data came from reviews or
    /// interactions (absent from older directories and from DIEN's files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_interactions: Option<FileEntry>,
    /// AUC of the generator's oracle scores on the test set (synthetic data only).
    pub oracle_auc: Option<f64>,
    /// Anything else the preparation wants to record (protocol summary, items without meta).
    pub notes: serde_json::Value,
}

impl DatasetMeta {
    /// Every file of the directory besides `dataset.json`, by name, with its entry.
    pub fn files(&self) -> Vec<(&'static str, &FileEntry)> {
        let mut files = vec![
            ("train.rkyv", &self.train),
            ("test.rkyv", &self.test),
            ("users.tsv", &self.vocabularies.users),
            ("items.tsv", &self.vocabularies.items),
            ("cats.tsv", &self.vocabularies.cats),
        ];
        files.extend(self.oracle.as_ref().map(|o| ("oracle.f32", o)));
        files.extend(self.item_interactions.as_ref().map(|e| (INTERACTIONS_FILE, e)));
        if let Some(a) = &self.attributes {
            files.extend([("attributes.tsv", &a.values), ("item_attributes.u32", &a.table)]);
        }
        files
    }

    /// The dataset's identity, wherever its directory lies: its seed (which draws the validation
    /// split) and the size and checksum of every file that training reads, hashed (xxh3-64, hex).
    /// A dataset prepared again differently, or another one, has another; one prepared again the
    /// same way has the same, whichever release of micn kept [`INTERACTIONS_FILE`] beside it.
    pub fn fingerprint(&self) -> String {
        let mut text = format!("seed {}", self.seed);
        for (name, entry) in self.files().into_iter().filter(|(name, _)| *name != INTERACTIONS_FILE) {
            text.push_str(&format!("\n{name} {} {}", entry.bytes, entry.xxh3));
        }
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }

    /// Read and check `DIR/dataset.json`: the format version first, so that a directory of an
    /// older format is refused with what to do rather than with a missing field.
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join("dataset.json");
        let invalid = |message: String| DataError::Invalid { path: path.clone(), message };
        // `micn prepare` writes a file; a pipe or a device there would be waited on, or read forever.
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            return Err(invalid(
                "not a regular file (a directory, a pipe or a device): `micn prepare` writes this file".into(),
            ));
        }
        let text = crate::io_error::read_text_file(&path).with_path(&path)?;
        // A byte-order mark (a Windows editor saved it) is not part of the document.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version = serde_json::from_str::<Version>(text)
            .map_err(|e| invalid(format!("not a dataset description: {e}")))?
            .format_version;
        if version != FORMAT_VERSION {
            let written_by = if version < FORMAT_VERSION {
                "an older micn, which did not record the vocabularies' checksums"
            } else {
                "a newer micn"
            };
            return Err(invalid(format!(
                "format version {version}, written by {written_by}; this micn reads version {FORMAT_VERSION}: prepare the dataset again with `micn prepare`"
            )));
        }
        let meta: Self = serde_json::from_str(text).map_err(|e| invalid(format!("not a dataset description: {e}")))?;
        // The one file no checksum covers: what training reads from it is checked here, and its
        // history length against the archives' when they are opened.
        if !["dien", "din"].contains(&meta.protocol.as_str()) {
            return Err(invalid(format!("protocol {:?}: not `dien` or `din`, which micn prepares", meta.protocol)));
        }
        if meta.max_hist_len == 0 {
            return Err(invalid("max_hist_len 0: a history keeps at least 1 behaviour".into()));
        }
        Ok(meta)
    }
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
        let file = std::fs::File::open(path).with_path(path)?;
        if !file.metadata().with_path(path)?.is_file() {
            return Err(invalid("not a file (a sample archive is a file); prepare the dataset again".into()));
        }
        // SAFETY: the dataset directory is written once and never modified in place; a file
        // changed underneath us is caught below only if it changed before this check.
        let map = unsafe { Mmap::map(&file) }.with_path(path)?;
        entry.check(path, &map)?;
        // `BoxedError`, not `rancor::Error`: in a release build the latter keeps no message
        // ("failed without error information").
        let samples = rkyv::access::<ArchivedSamples, rkyv::rancor::BoxedError>(&map).map_err(|e| {
            invalid(format!("not a valid sample archive (rkyv's structure check: {e}); prepare the dataset again"))
        })?;
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

/// The most bytes one archive holds: its offsets are 32-bit and signed.
pub const MAX_ARCHIVE_BYTES: u64 = i32::MAX as u64;

/// An upper bound of the archive bytes of `n` samples with `history` entries in all: the columns'
/// own bytes (labels 1 byte, four id columns 4 each, offsets 8, two history columns 4 each per
/// entry) and a page for the headers and alignment.
fn archive_bytes_at_most(n: u64, history: u64) -> u64 {
    n * (1 + 4 * 4) + 8 * (n + 1) + 8 * history + 4096
}

/// Serialise samples to archive bytes; samples too many for one archive ([`MAX_ARCHIVE_BYTES`])
/// are an error saying how large they are and what makes them smaller, found before anything is
/// serialised.
pub fn to_bytes(samples: &Samples) -> Result<rkyv::util::AlignedVec, String> {
    let (n, history) = (samples.len() as u64, samples.hist_items.len() as u64);
    let size = archive_bytes_at_most(n, history);
    if size > MAX_ARCHIVE_BYTES {
        return Err(refusal(n, history, size));
    }
    rkyv::to_bytes::<rkyv::rancor::Error>(samples).map_err(|e| format!("cannot be archived: {e}"))
}

/// Why `n` samples with `history` entries (`size` bytes) make no archive.
fn refusal(n: u64, history: u64, size: u64) -> String {
    format!(
        "its {} samples with {} history entries take {:.2} GB, more than the {:.2} GB one archive \
         holds; prepare them with a shorter --max-hist-len (every entry takes 8 bytes) or from \
         fewer reviews",
        crate::progress::thousands(n),
        crate::progress::thousands(history),
        size as f64 / 1e9,
        MAX_ARCHIVE_BYTES as f64 / 1e9
    )
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
    /// The item-attribute table, when the dataset has one.
    pub attributes: Option<ItemAttributes>,
    /// Every interaction the preparation read, per item id ([`INTERACTIONS_FILE`]), when kept.
    pub item_interactions: Option<Vec<u64>>,
}

/// Every interaction (review, click) the preparation read, per item id of the vocabulary (0 for
/// the reserved id), as little-endian u64: what ComiRec's MostPopular baseline ranks items by.
pub const INTERACTIONS_FILE: &str = "item_interactions.u64";

impl Dataset {
    /// Open `dir`, checking every file against `dataset.json` (an error names the file).
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let meta = DatasetMeta::read(dir)?;
        let read_checked = |name: &str, entry: &FileEntry| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).with_path(&path)?;
            entry.check(&path, &bytes)?;
            Ok::<_, DataError>(bytes)
        };
        let [users, items, cats] = [
            ("users.tsv", &meta.vocabularies.users),
            ("items.tsv", &meta.vocabularies.items),
            ("cats.tsv", &meta.vocabularies.cats),
        ]
        .map(|(name, entry)| read_checked(name, entry));
        let vocab = Vocabularies::parse(dir, [users?, items?, cats?])?;
        let train = Archive::open(&dir.join("train.rkyv"), &meta.train, &vocab)?;
        let test = Archive::open(&dir.join("test.rkyv"), &meta.test, &vocab)?;
        for archive in [&train, &test] {
            let longest = archive.samples().hist_offsets.windows(2).map(|w| w[1].to_native() - w[0].to_native()).max();
            if let Some(longest) = longest.filter(|&n| n > meta.max_hist_len as u64) {
                let message = format!(
                    "max_hist_len {}, but {} holds a history of {longest} behaviours: edited or damaged; prepare the \
                     dataset again",
                    meta.max_hist_len,
                    archive.path.display()
                );
                return Err(DataError::Invalid { path: dir.join("dataset.json"), message });
            }
        }
        let attributes = match &meta.attributes {
            None => None,
            Some(files) => {
                let (tsv, table) = (
                    read_checked("attributes.tsv", &files.values)?,
                    read_checked("item_attributes.u32", &files.table)?,
                );
                Some(ItemAttributes::parse(dir, &files.fields, &tsv, &table, vocab.items.len())?)
            }
        };
        // A file of one little-endian value of `width` bytes per `(count, of)`: another number of
        // them belongs to another dataset.
        let read_values = |name: &str, entry: &FileEntry, width: usize, (count, of): (usize, &str), what: &str| {
            let bytes = read_checked(name, entry)?;
            if bytes.len() != width * count {
                let message = format!("{} {what} for {count} {of}: it belongs to another dataset", bytes.len() / width);
                return Err(DataError::Invalid { path: dir.join(name), message });
            }
            Ok(bytes)
        };
        let test_samples = (test.samples().len(), "test samples");
        let oracle = (meta.oracle.as_ref())
            .map(|entry| read_values("oracle.f32", entry, 4, test_samples, "scores"))
            .transpose()?
            .map(|bytes| bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect());
        let items = (vocab.items.len(), "items");
        let item_interactions = (meta.item_interactions.as_ref())
            .map(|entry| read_values(INTERACTIONS_FILE, entry, 8, items, "counts"))
            .transpose()?
            .map(|bytes| bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect());
        Ok(Self { dir: dir.to_path_buf(), meta, vocab, train, test, oracle, attributes, item_interactions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_another_size_or_content_is_refused_naming_it() {
        let path = Path::new("/data/cats.tsv");
        let entry = FileEntry::of(b"default_cat\t3\nBooks\t9\n");
        entry.check(path, b"default_cat\t3\nBooks\t9\n").unwrap();
        let e = entry.check(path, b"unknown_user\t0\n").unwrap_err().to_string();
        assert!(e.starts_with("/data/cats.tsv: 15 bytes, dataset.json says 22"), "{e}");
        let e = entry.check(path, b"default_cat\t3\nBooks\t8\n").unwrap_err().to_string();
        assert!(e.starts_with("/data/cats.tsv: checksum") && e.contains("corrupted or was replaced"), "{e}");
    }

    #[test]
    fn an_older_or_newer_format_version_is_refused_with_a_request_to_prepare_again() {
        let dir = tempfile::tempdir().unwrap();
        // What version 1 wrote: no `vocabularies`, no `categories`.
        let v1 = r#"{"format_version": 1, "source": "amazon2014", "protocol": "din", "seed": 1, "max_hist_len": 20}"#;
        std::fs::write(dir.path().join("dataset.json"), v1).unwrap();
        let e = DatasetMeta::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("dataset.json: format version 1, written by an older micn"), "{e}");
        assert!(e.contains("prepare the dataset again with `micn prepare`"), "{e}");
        std::fs::write(dir.path().join("dataset.json"), r#"{"format_version": 3}"#).unwrap();
        let e = DatasetMeta::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format version 3, written by a newer micn"), "{e}");
        // The current version with a field missing names the field.
        std::fs::write(dir.path().join("dataset.json"), format!(r#"{{"format_version": {FORMAT_VERSION}}}"#)).unwrap();
        let e = DatasetMeta::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("dataset.json: not a dataset description: missing field"), "{e}");
    }

    #[test]
    fn a_dataset_description_that_is_a_pipe_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dataset.json");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Opening a FIFO with no writer would block this test for ever.
        let e = DatasetMeta::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("dataset.json: not a regular file") && e.contains("`micn prepare` writes"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = DatasetMeta::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("dataset.json: not a regular file"), "{e}");
    }

    #[test]
    fn samples_too_many_for_one_archive_are_refused_with_their_size_and_the_fix() {
        // 2³¹ bytes of history entries, 8 bytes each, are one too many for 32-bit offsets.
        assert!(archive_bytes_at_most(40_000, (1 << 28) - 1000) > MAX_ARCHIVE_BYTES);
        assert!(archive_bytes_at_most(40_000, (1 << 28) - 200_000) <= MAX_ARCHIVE_BYTES);
        // (Sample sets that large are not built here; the refusal's words are checked.)
        let e = refusal(40_236, 280_000_000, archive_bytes_at_most(40_236, 280_000_000));
        assert!(e.starts_with("its 40,236 samples with 280,000,000 history entries take 2.24 GB"), "{e}");
        assert!(e.contains("more than the 2.15 GB one archive holds") && e.contains("--max-hist-len"), "{e}");
    }

    proptest::proptest! {
        /// Any samples come back from their archive bytes as they were, and pass the checks of
        /// an opened archive within vocabularies that hold their ids.
        #[test]
        fn samples_round_trip_through_their_archive_bytes(
            rows in proptest::collection::vec(
                (0u8..2, 0u32..50, 0u32..60, 0u32..9, proptest::collection::vec((0u32..60, 0u32..9), 0..6)),
                0..40,
            ),
        ) {
            let mut samples = crate::data::samples::Samples::default();
            for (label, user, item, cat, history) in &rows {
                let (hist_items, hist_cats): (Vec<u32>, Vec<u32>) = history.iter().copied().unzip();
                samples.push(crate::data::samples::Row {
                    label: *label,
                    user: *user,
                    user_key: *user,
                    item: *item,
                    cat: *cat,
                    hist_items: &hist_items,
                    hist_cats: &hist_cats,
                });
            }
            let aligned = to_bytes(&samples).unwrap();
            let bound = archive_bytes_at_most(samples.len() as u64, samples.hist_items.len() as u64);
            proptest::prop_assert!(aligned.len() as u64 <= bound, "{} bytes, bound {bound}", aligned.len());
            let archived = rkyv::access::<ArchivedSamples, rkyv::rancor::BoxedError>(&aligned).unwrap();
            let back = rkyv::deserialize::<crate::data::samples::Samples, rkyv::rancor::BoxedError>(archived).unwrap();
            proptest::prop_assert_eq!(&back, &samples);
            for (i, (_, _, _, _, history)) in rows.iter().enumerate() {
                proptest::prop_assert_eq!(archived.history_range(i).len(), history.len());
            }
            let vocab = |n: usize| crate::data::vocab::Vocab { names: vec![String::new(); n], counts: vec![0; n] };
            let vocabularies = Vocabularies { users: vocab(50), items: vocab(60), cats: vocab(9), item_cat: vec![0; 60] };
            proptest::prop_assert!(validate(archived, &vocabularies).is_ok());
            let smaller = Vocabularies { items: vocab(59), ..vocabularies };
            let uses_59 = rows.iter().any(|r| r.2 == 59 || r.4.iter().any(|h| h.0 == 59));
            proptest::prop_assert_eq!(validate(archived, &smaller).is_err(), uses_59, "an id outside its vocabulary is refused");
        }
    }
}
