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

/// A thread that could not be started: a limit on processes and threads (`ulimit -u`), or memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a thread for {what}: {source} (the limit on processes and threads, `ulimit -u`, or memory)")]
pub struct NoThread {
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The most bytes of a file that a person writes and micn reads whole (a configuration, a sweep
/// file, `dataset.json`): far more than any is, little enough to read at once.
pub const MAX_TEXT_FILE: u64 = 16 << 20;

/// The text of a file read whole: at most [`MAX_TEXT_FILE`] bytes (a larger one, `/dev/zero`
/// given by mistake, is refused before it fills memory) of UTF-8 (else the first line that is not
/// is named).
pub fn read_text_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_TEXT_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(invalid(format!("larger than {} MiB, more than any such file holds", MAX_TEXT_FILE >> 20)));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        invalid(format!("line {} is not UTF-8 text", 1 + valid.iter().filter(|&&b| b == b'\n').count()))
    })
}

/// Writes `path` through a temporary sibling renamed over it (`write` fills the temporary file):
/// a failure (a full disk) leaves the previous file, if any, whole, and no partial file behind.
/// Missing parent directories are made. A symbolic link is followed: its target is replaced and
/// the link stays. A device or a pipe (`/dev/stdout`, `/dev/full`, a FIFO) cannot be replaced:
/// what `write` writes is copied into it, so its own failures (a full device) are reported.
/// Another process replacing the same file at the same time is refused (exit status 1: the
/// command can be run again), not mixed with this one's bytes: the temporary file is locked.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), PathIo> {
    let special = |p: &Path| std::fs::metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if special(path) {
        return write_into_special(path, write);
    }
    if path.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory; name a file to write");
        return Err(PathIo { path: path.to_path_buf(), source });
    }
    // A link to a file that does not exist yet: made where the link points.
    let target = followed(path)?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dirs(dir)?;
    }
    let tmp = target.with_file_name(hidden_name(target.file_name().unwrap_or_default(), "partial", 0));
    let _held = lock_partial(&tmp).with_path(path)?;
    write(&tmp).and_then(|()| std::fs::rename(&tmp, &target)).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PathIo { path: path.to_path_buf(), source }
    })
}

/// The temporary file `tmp` of [`replace_file`], made if missing (one a killed process left is
/// taken over) and locked (`flock`, released when the process ends, however it ends) while it is
/// filled and renamed. Held by another process: refused (`WouldBlock`), rather than both writing
/// into one file, each renaming the other's bytes into place. Where the file system cannot lock,
/// the file is used unlocked.
fn lock_partial(tmp: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::io::AsRawFd as _;
    loop {
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(tmp)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            // A file system that cannot lock (ENOLCK, ENOSYS, EOPNOTSUPP: some NFS, Lustre and
            // FUSE mounts) writes as it did before there was a lock.
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                return Ok(file);
            }
            let name = tmp.file_name().unwrap_or_default().to_string_lossy();
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("another process is writing this file now (its {name} is locked): wait for it to end, or write elsewhere"),
            ));
        }
        // The holder may have renamed the file into place between the open and the lock: then
        // the name is free for a file of this process's own.
        let (held, named) = (file.metadata()?, std::fs::metadata(tmp));
        if named.is_ok_and(|n| (n.dev(), n.ino()) == (held.dev(), held.ino())) {
            return Ok(file);
        }
    }
}

/// The hidden name `.NAME.KIND` (`.out.csv.partial`) of what stands for an output named `name`
/// while it is built or replaced, leaving `room` bytes (at most 200) for what the caller appends.
/// Where that would pass the 255 bytes a file name may hold (a legal `NAME` of up to 255), `NAME`
/// is cut short (not inside a character) and its hash appended to what is kept, so that two such
/// outputs in one directory still stand apart.
pub fn hidden_name(name: &std::ffi::OsStr, kind: &str, room: usize) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    const NAME_MAX: usize = 255;
    debug_assert!(room <= 200 && kind.len() <= 16, "room {room}, kind {kind}");
    let bytes = name.as_bytes();
    let mut hidden = vec![b'.'];
    if 1 + bytes.len() + 1 + kind.len() + room <= NAME_MAX {
        hidden.extend_from_slice(bytes);
    } else {
        let hash = format!("~{:016x}", xxhash_rust::xxh3::xxh3_64(bytes));
        let mut keep = NAME_MAX.saturating_sub(room + 1 + hash.len() + 1 + kind.len()).min(bytes.len());
        if let Ok(text) = std::str::from_utf8(bytes) {
            while !text.is_char_boundary(keep) {
                keep -= 1;
            }
        }
        hidden.extend_from_slice(&bytes[..keep]);
        hidden.extend_from_slice(hash.as_bytes());
    }
    hidden.push(b'.');
    hidden.extend_from_slice(kind.as_bytes());
    std::ffi::OsString::from_vec(hidden)
}

/// Swap what `a` and `b` name, in one step (Linux's `renameat2` with `RENAME_EXCHANGE`): no
/// moment passes with either name missing. `Ok(false)` where that cannot be done (an old kernel,
/// NFS and some other file systems, a sandbox's filter): nothing was done.
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    #[cfg(test)]
    if NO_EXCHANGE.get() {
        return Ok(false);
    }
    let path = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (path(a)?, path(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let done =
        unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if done == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
thread_local! {
    /// Makes [`exchange`] answer as on a file system without it, in this thread: for tests of the
    /// paths taken there.
    pub static NO_EXCHANGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `path`, or what it names when it is a symbolic link, through any chain of links (a link to
/// nothing yet names where its file is to be made): what micn writes goes there, and the links
/// stay (an output on scratch space through a link in the working directory, say). A trailing
/// slash (`link/`) changes nothing; a loop is an error.
pub fn followed(path: &Path) -> Result<PathBuf, PathIo> {
    let mut at: PathBuf = path.components().collect();
    for _ in 0..40 {
        if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok(at);
        }
        let to = std::fs::read_link(&at).with_path(&at)?;
        at = at.parent().map_or(to.clone(), |dir| dir.join(&to)).components().collect();
    }
    Err(PathIo { path: path.to_path_buf(), source: std::io::Error::from_raw_os_error(libc::ELOOP) })
}

/// `path` made absolute with every link resolved as far as it exists (the rest, not made yet,
/// appended as given): where writing it lands, for comparing with other paths.
pub fn resolved(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    loop {
        if let Ok(real) = std::fs::canonicalize(&at) {
            return rest.into_iter().rev().fold(real, |dir, name| dir.join(name));
        }
        match (at.file_name().map(ToOwned::to_owned), at.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                at = parent.to_path_buf();
            }
            _ => return std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        }
    }
}

/// [`replace_file`] with `bytes`, synced before the rename: whole or not at all, and on disk.
pub fn replace_file_synced(path: &Path, bytes: &[u8]) -> Result<(), PathIo> {
    use std::io::Write as _;
    replace_file(path, |tmp| {
        std::fs::File::create(tmp).and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
    })
}

/// [`replace_file`] for a device or a pipe: `write` fills a temporary file in `TMPDIR` (and may
/// sync it, which such a file refuses), whose bytes are then copied in. A failure to fill it is
/// named as the temporary file's, with what it was for; the pipe is then opened and closed, so
/// that a reader waiting on a named pipe sees its end rather than waiting for ever.
fn write_into_special(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), PathIo> {
    use std::os::unix::fs::OpenOptionsExt as _;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!(".micn-output-{}-{n}", std::process::id()));
    let result = match write(&tmp) {
        Err(e) => {
            // Without blocking: a named pipe without a reader refuses (ENXIO), which is fine.
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path);
            let why =
                format!("{e} (the temporary file that collects the output for {}: TMPDIR says where)", path.display());
            Err(PathIo { path: tmp.clone(), source: std::io::Error::new(e.kind(), why) })
        }
        Ok(()) => (|| {
            // Unlinked before the pipe is opened, which waits for a reader: a process stopped
            // while it waits leaves no copy of its output behind.
            let mut from = std::fs::File::open(&tmp)?;
            let _ = std::fs::remove_file(&tmp);
            let mut to = std::fs::OpenOptions::new().write(true).open(path)?;
            std::io::copy(&mut from, &mut to).map(drop)
        })()
        .with_path(path),
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

/// An I/O error that the same command would meet again: a missing file, a file it may not read,
/// bytes that are not what they should be, a read-only file system, a name too long for one, a
/// loop of symbolic links, a rename onto another file system or over a mount point. Others (EIO,
/// a full disk, too many open files) may pass.
pub fn is_lasting(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound
            | PermissionDenied
            | InvalidData
            | InvalidInput
            | AlreadyExists
            | IsADirectory
            | NotADirectory
            | ReadOnlyFilesystem
            | InvalidFilename
            | FileTooLarge
            | CrossesDevices
            | ResourceBusy
    ) || e.kind() == std::io::Error::from_raw_os_error(libc::ELOOP).kind()
}

/// `create_dir_all` whose error names the culprit: where a part of the path is a file, that
/// file (`out: is a file, not a directory, so out/report cannot be made`), not the whole path
/// with "File exists".
pub fn create_dirs(dir: &Path) -> Result<(), PathIo> {
    std::fs::create_dir_all(dir)
        .map_err(|source| file_in_the_way(dir).unwrap_or(PathIo { path: dir.to_path_buf(), source }))
}

/// The part of `dir` (itself or a directory above it) that is a file, as [`create_dirs`] names
/// it; none when nothing in the way is a file. Makes nothing.
pub fn file_in_the_way(dir: &Path) -> Option<PathIo> {
    let file = dir.ancestors().find(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir()))?;
    let why = match file == dir {
        true => "is a file, not a directory".to_string(),
        false => format!("is a file, not a directory, so {} cannot be made", dir.display()),
    };
    Some(PathIo { path: file.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::NotADirectory, why) })
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt as _;

    use super::*;

    #[test]
    fn a_file_another_process_is_replacing_is_refused_not_mixed_and_free_again_after() {
        use std::os::unix::io::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("scores.csv");
        replace_file_synced(&out, b"first\n").unwrap();
        // Another writer holds the temporary file (an open file description of its own, as
        // another process has).
        let other = std::fs::File::create(dir.path().join(".scores.csv.partial")).unwrap();
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        let e = replace_file_synced(&out, b"second\n").unwrap_err();
        assert!(!e.is_lasting(), "running the command again can work: {e}");
        let e = e.to_string();
        assert!(e.starts_with(&format!("{}: another process is writing this file now", out.display())), "{e}");
        assert_eq!(std::fs::read(&out).unwrap(), b"first\n", "the earlier output is whole");
        drop(other);
        replace_file_synced(&out, b"third\n").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"third\n");
        assert!(!dir.path().join(".scores.csv.partial").exists());
    }

    #[test]
    fn a_file_in_the_way_is_named_with_what_it_keeps_from_being_made() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        let e = file_in_the_way(&file).unwrap().to_string();
        assert_eq!(e, format!("{}: is a file, not a directory", file.display()));
        let e = create_dirs(&file.join("sub/deeper")).unwrap_err().to_string();
        let said =
            format!("{}: is a file, not a directory, so {}/sub/deeper cannot be made", file.display(), file.display());
        assert_eq!(e, said);
        assert!(file_in_the_way(dir.path()).is_none());
    }

    fn write_text(text: &'static str) -> impl FnOnce(&Path) -> std::io::Result<()> {
        move |p: &Path| std::fs::write(p, text)
    }

    #[test]
    fn a_text_file_read_whole_is_bounded_and_its_first_line_not_utf8_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, b"a = 1\nb = \"\xff\"\n").unwrap();
        assert_eq!(read_text_file(&path).unwrap_err().to_string(), "line 2 is not UTF-8 text");
        let e = read_text_file(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.to_string(), "larger than 16 MiB, more than any such file holds");
        std::fs::write(&path, "a = 1\n").unwrap();
        assert_eq!(read_text_file(&path).unwrap(), "a = 1\n");
    }

    #[test]
    fn errors_that_running_again_would_meet_again_are_lasting() {
        let os = |code| std::io::Error::from_raw_os_error(code);
        let lasting = [libc::ENOENT, libc::EACCES, libc::EROFS, libc::ENAMETOOLONG, libc::EISDIR, libc::EFBIG];
        for code in lasting.into_iter().chain([libc::ELOOP, libc::EXDEV, libc::EBUSY]) {
            assert!(is_lasting(&os(code)), "{}", os(code));
        }
        for code in [libc::ENOSPC, libc::EIO, libc::EMFILE, libc::EPIPE] {
            assert!(!is_lasting(&os(code)), "{}", os(code));
        }
    }

    #[test]
    fn a_directory_that_cannot_be_made_because_of_a_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "mine").unwrap();
        let e = create_dirs(&file.join("sub/deeper")).unwrap_err();
        assert_eq!(e.path, file);
        assert!(e.to_string().contains("is a file, not a directory, so ") && e.is_lasting(), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
        create_dirs(&dir.path().join("a/b")).unwrap();
        // A file to write whose name is a directory's: said so, the directory untouched.
        let e = replace_file(&dir.path().join("a"), write_text("x")).unwrap_err();
        assert!(e.to_string().ends_with("a: is a directory; name a file to write"), "{e}");
        // One whose parent is a file: the file named.
        let e = replace_file(&file.join("out.csv"), write_text("x")).unwrap_err();
        assert_eq!(e.path, file, "{e}");
        assert!(dir.path().join("a/b").is_dir());
    }

    #[test]
    fn a_file_is_replaced_whole_or_not_at_all_in_directories_made_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/deeper/out.csv");
        replace_file(&path, write_text("one")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one");
        let e = replace_file(&path, |p: &Path| {
            std::fs::write(p, "half")?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .unwrap_err();
        assert!(e.to_string().contains("out.csv") && e.to_string().contains("No space"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no partial file left");
    }

    #[test]
    fn an_output_of_the_longest_name_a_file_may_have_is_built_under_a_name_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        // 255 bytes, 2 of them per `é`: `.NAME.partial` would be 264.
        let long = format!("{}{}.csv", "é".repeat(100), "x".repeat(51));
        assert_eq!(long.len(), 255);
        replace_file(&dir.path().join(&long), write_text("whole")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(&long)).unwrap(), "whole");
        let hidden = |name: &str, room| hidden_name(name.as_ref(), "partial", room).into_string().unwrap();
        let (a, b) = (hidden(&long, 11), hidden(&format!("{long}!"), 11));
        assert!(a.len() + 11 <= 255 && a.starts_with(".éé") && a.ends_with(".partial") && a != b, "{a} {b}");
        assert_eq!(hidden("out.csv", 11), ".out.csv.partial", "a short name is kept whole");
        // Cut where a 3-byte character would be split: kept whole or left out, never halved
        // (`hidden` reads the name back as UTF-8).
        let euros = "€".repeat(85);
        for room in 0..=200 {
            let cut = hidden(&euros, room);
            assert!(cut.len() + room <= 255 && cut.starts_with(".€€€") && cut.ends_with(".partial"), "{room}: {cut}");
        }
    }

    #[test]
    fn a_link_is_followed_and_a_device_or_pipe_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // A link: the target is replaced, the link stays (also one to a file not made yet).
        let (target, link) = (dir.path().join("target.csv"), dir.path().join("link.csv"));
        std::fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        replace_file(&link, write_text("new")).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let dangling = dir.path().join("dangling.csv");
        std::os::unix::fs::symlink("made.csv", &dangling).unwrap();
        replace_file(&dangling, write_text("made")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("made.csv")).unwrap(), "made");
        // A device stays a device: /dev/null takes the bytes (synced first, as outputs are),
        // /dev/full reports a full disk.
        let synced = |p: &Path| std::fs::write(p, "gone").and_then(|()| std::fs::File::open(p)?.sync_all());
        replace_file(Path::new("/dev/null"), synced).unwrap();
        let e = replace_file(Path::new("/dev/full"), write_text("full")).unwrap_err();
        assert!(e.to_string().starts_with("/dev/full: ") && e.to_string().contains("No space"), "{e}");
        for device in ["/dev/null", "/dev/full"] {
            assert!(!std::fs::metadata(device).unwrap().is_file(), "{device} was replaced by a file");
        }
        // A FIFO: the reader gets the bytes, the FIFO stays.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        replace_file(&fifo, write_text("through")).unwrap();
        assert_eq!(reader.join().unwrap(), "through");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
