//! Data: from raw Amazon dumps (or DIEN's pre-processed files, or the synthetic generator) to a
//! prepared dataset directory, and from there to batches.
//!
//! - [`input`]: gzip/plain line reading on all cores, bad-line classification and counts;
//! - [`amazon`], [`pyliteral`], [`dien_files`], [`interactions`]: the raw formats (and ComiRec's
//!   held-out users);
//! - [`protocol`]: the `dien` and `din` sample-building protocols; [`vocab`]: frequency-ordered
//!   vocabularies; [`samples`]: the columnar sample set;
//! - [`archive`]: the dataset directory (every file checked against `dataset.json` at open, rkyv
//!   archives memory-mapped and validated once);
//! - [`attributes`]: the item-attribute table (brand, category levels, price bucket; or a
//!   sequences dataset's attribute lists);
//! - [`prepare`]: the `micn prepare` pipeline (atomic output directory, stale staging removed);
//! - [`synth`]: synthetic Amazon-like data with the generator's oracle;
//! - [`shard`], [`batch`], [`loader`]: epoch permutations, rank slices, collation, prefetching.
pub mod amazon;
pub mod archive;
pub mod attributes;
pub mod batch;
pub mod dien_files;
pub mod export;
pub mod input;
pub mod interactions;
pub mod loader;
pub mod pickle;
pub mod prepare;
pub mod protocol;
pub mod pyliteral;
pub mod samples;
pub mod shard;
pub mod stats;
pub mod synth;
pub mod vocab;

use crate::io_error::PathIo;
use std::path::PathBuf;

pub use self::archive::Dataset;

/// A data problem, always naming the file (and line, where there is one).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error("{path}:{line}: {}", input::describe(*.kind, .detail))]
    BadLine { path: PathBuf, line: u64, kind: input::BadKind, detail: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A gzip stream that breaks off before its end: the file was cut (an interrupted download);
    /// getting it again is the fix. Nothing from it is used.
    #[error(
        "{path}: the gzip stream ends early: all {} stored bytes were read and decompress to {} bytes \
         ({} complete lines) without reaching the end of the stream; the file is truncated (an \
         interrupted download?) and nothing was prepared from it",
        crate::progress::thousands(.read.stored),
        crate::progress::thousands(.read.raw),
        crate::progress::thousands(.read.lines)
    )]
    TruncatedGzip { path: PathBuf, read: input::ReadProgress },
    /// A stream that cannot be read on: corrupt gzip data (a bad checksum, an invalid block) or a
    /// failing read. Nothing from the file is used.
    #[error(
        "{path}: {} after {} stored bytes ({} bytes, {} complete lines read): {source}",
        if .read.gzip { "the gzip stream is broken" } else { "the file cannot be read" },
        match .stored_total {
            Some(total) => format!("{} of {}", crate::progress::thousands(.read.stored), crate::progress::thousands(*total)),
            None => crate::progress::thousands(.read.stored),
        },
        crate::progress::thousands(.read.raw),
        crate::progress::thousands(.read.lines)
    )]
    BrokenStream {
        path: PathBuf,
        read: input::ReadProgress,
        /// The file's size (`None`: a pipe).
        stored_total: Option<u64>,
        #[source]
        source: std::io::Error,
    },
    /// A regular file whose size changed while it was read: being written (a download not yet
    /// done) or cut. What was read is no version of the file; nothing from it is used.
    #[error(
        "{path}: changed while it was read ({} bytes when opened, {} after): it is being written or was cut; \
         read it again once it is whole",
        crate::progress::thousands(*.at_open),
        crate::progress::thousands(*.after)
    )]
    ChangedWhileRead { path: PathBuf, at_open: u64, after: u64 },
    /// An input replaced by another file while the preparation read the others.
    #[error(
        "{path}: replaced by another file while the other inputs were read (written again meanwhile, by `micn synth` \
         say): what was read mixes two versions; prepare again once it is done"
    )]
    ReplacedWhileRead { path: PathBuf },
    #[error("{path}: {source}")]
    Thread { path: PathBuf, source: crate::io_error::NoThread },
    #[error("{0}: already exists; choose another --out or remove it first")]
    OutputExists(PathBuf),
}

pub use crate::io_error::is_lasting;

impl DataError {
    /// Whether running the same command again would fail the same way (a missing or bad input),
    /// as opposed to a passing I/O failure.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::Io(e) => e.is_lasting(),
            Self::BrokenStream { read, source, .. } => read.gzip || is_lasting(source),
            Self::ChangedWhileRead { .. } | Self::ReplacedWhileRead { .. } | Self::Thread { .. } => false,
            _ => true,
        }
    }
}
