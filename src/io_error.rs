//! The one I/O error every module reports: what failed and at which path (candle's `with_path`
//! style), so that an error message always names the file.
use std::path::{Path, PathBuf};

/// An I/O error at a path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIo {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathIo {
    /// Whether the same command would meet this error again ([`is_lasting`]).
    pub fn is_lasting(&self) -> bool {
        is_lasting(&self.source)
    }
}

/// Writes `path` through a temporary sibling renamed over it (`write` fills the temporary file):
/// a failure (a full disk) leaves the previous file, if any, whole, and no partial file behind.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), PathIo> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    write(&tmp).and_then(|()| std::fs::rename(&tmp, path)).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PathIo { path: path.to_path_buf(), source }
    })
}

/// An I/O error that the same command would meet again: a missing file, a file it may not read,
/// bytes that are not what they should be. Others (EIO, a full disk, too many open files) may pass.
pub fn is_lasting(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound | PermissionDenied | InvalidData | InvalidInput | AlreadyExists | IsADirectory | NotADirectory
    )
}

/// Attaches the path to an I/O result's error.
pub trait WithPath<T> {
    fn with_path(self, path: &Path) -> Result<T, PathIo>;
}

impl<T> WithPath<T> for std::io::Result<T> {
    fn with_path(self, path: &Path) -> Result<T, PathIo> {
        self.map_err(|source| PathIo { path: path.to_path_buf(), source })
    }
}
