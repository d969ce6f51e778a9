//! Running out of memory, reported as one error line with exit status 1 wherever it happens:
//! in libtorch (whose failed allocation `tch` turns into a panic or an error that quotes
//! libtorch's message, C++ backtrace and all: [`libtorch_sentence`] finds the sentence that
//! matters), and in micn's own Rust code, where the standard library would abort the process
//! (SIGABRT, exit status 134) after "memory allocation of N bytes failed": the `micn` binary's
//! global allocator, [`Reporting`], ends it with `error: out of memory: …` instead (it ends the
//! process as a killed one would, which nothing written depends on: every file micn writes
//! becomes visible whole or not at all), except within [`fallible`], where a failed allocation
//! is the caller's error to report (reading a whole file: the error names it). Exit status 1
//! says that the same command may work with more memory (`micn-launch` retries it).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What to do about it, at the end of every out-of-memory error.
pub const REMEDY: &str = "make the model, the batch or the input smaller, or use a machine with more memory";

thread_local! {
    /// Whether this thread runs [`fallible`] code (const-initialised, without destructor: read
    /// from the allocator without allocating).
    static FALLIBLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, in which an allocation that fails is returned as null to its caller, as the system
/// allocator does, rather than ending the process: for fallible allocations that report their
/// own error (`std::fs::read` returns one of kind `OutOfMemory` naming nothing; the caller adds
/// the path). An infallible allocation failing there aborts, as without [`Reporting`].
pub fn fallible<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the flag however `f` ends (a panic caught further up too).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FALLIBLE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FALLIBLE.with(|c| c.replace(true)));
    f()
}

/// libtorch's own sentence when `text` (a `tch` error or panic message) says that an allocation
/// failed, on the host or on a GPU, without the C++ backtrace that follows it.
pub fn libtorch_sentence(text: &str) -> Option<String> {
    // C++'s own failure to allocate (libtorch's containers), and an error whose description
    // could not be made, which only running out of memory does.
    if text.contains("std::bad_alloc") {
        return Some("libtorch could not allocate memory (std::bad_alloc)".into());
    }
    if text.contains("<Error computing Error::what()>") {
        return Some("libtorch failed and could not allocate the description of its error".into());
    }
    // The host allocator's, the caching GPU allocator's, and the CUDA runtime's and cuBLAS's own
    // (a pinned host buffer, a cuBLAS handle's workspace), which the caching allocator never saw.
    const STARTS: [&str; 4] =
        ["DefaultCPUAllocator", "CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED"];
    if !text.contains("can't allocate memory") && !STARTS[1..].iter().any(|s| text.contains(s)) {
        return None;
    }
    let start = STARTS.iter().find_map(|s| text.find(s)).unwrap_or(0);
    let sentence = &text[start..];
    // Lines of the backtrace come escaped as `\n` in some messages, as line breaks in others.
    let end = [sentence.find("\\n"), sentence.find('\n')].into_iter().flatten().min().unwrap_or(sentence.len());
    Some(sentence[..end].trim().to_string())
}

/// The system allocator, except that an allocation it cannot make ends the process with an
/// error line on standard error (`error: [rank N: ]out of memory: …`, a JSON line under
/// `--log-format json`) and exit status 1, made without allocating.
pub struct Reporting;

/// The rank to name in the line (`usize::MAX`: none, a process alone).
static RANK: AtomicUsize = AtomicUsize::new(usize::MAX);
static JSON: AtomicBool = AtomicBool::new(false);

/// How [`Reporting`]'s line names this process: its rank in a job of several (`None`: alone),
/// and whether errors are JSON lines.
pub fn describe_process(rank: Option<usize>, json: bool) {
    RANK.store(rank.unwrap_or(usize::MAX), Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only a null result (a failed allocation)
// is acted on, by ending the process.
unsafe impl GlobalAlloc for Reporting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        checked(unsafe { System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        checked(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        checked(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn checked(ptr: *mut u8, bytes: usize) -> *mut u8 {
    if ptr.is_null() && !FALLIBLE.with(Cell::get) {
        end_out_of_memory(bytes);
    }
    ptr
}

/// Writes the error line for a failed allocation of `bytes` and ends the process at once
/// (`_exit`: no destructor, no buffered output, nothing that could allocate).
fn end_out_of_memory(bytes: usize) -> ! {
    let mut line = Line::default();
    let rank = RANK.load(Ordering::Relaxed);
    let json = JSON.load(Ordering::Relaxed);
    if json {
        line.push(b"{\"level\":\"ERROR\",\"target\":\"micn\",\"rank\":");
        line.number(if rank == usize::MAX { 0 } else { rank });
        line.push(b",\"message\":\"");
    }
    line.push(b"error: ");
    if rank != usize::MAX {
        line.push(b"rank ");
        line.number(rank);
        line.push(b": ");
    }
    line.push(b"out of memory: an allocation of ");
    line.number(bytes);
    line.push(b" bytes failed; ");
    line.push(REMEDY.as_bytes());
    line.push(if json { b"\"}\n" } else { b"\n" });
    // SAFETY: writing a buffer we own to standard error, then ending the process.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(1)
    }
}

/// A line built on the stack.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self { bytes: [0; 256], len: 0 }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: usize) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_s_sentence_is_found_without_its_backtrace() {
        let text = "r/model.safetensors: tensor `embeddings.item`: Internal torch error: [enforce fail at \
                    alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate \
                    122871808 bytes. Error code 12 (Cannot allocate memory)\nframe #0: c10::ThrowEnforceNotMet";
        assert_eq!(
            libtorch_sentence(text).unwrap(),
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 122871808 bytes. Error code 12 \
             (Cannot allocate memory)"
        );
        assert_eq!(
            libtorch_sentence("CUDA out of memory. Tried to allocate 2 GiB\\nframe").unwrap(),
            "CUDA out of memory. Tried to allocate 2 GiB"
        );
        // The CUDA runtime's and cuBLAS's own, as libtorch words them.
        assert_eq!(
            libtorch_sentence("Torch(\"CUDA error: out of memory\nCUDA kernel errors might be asynchronously").unwrap(),
            "CUDA error: out of memory"
        );
        let cublas = "Torch(\"CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`\nException";
        assert_eq!(
            libtorch_sentence(cublas).unwrap(),
            "CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
        );
        assert_eq!(libtorch_sentence("shape mismatch"), None);
        assert_eq!(
            libtorch_sentence("called `Result::unwrap()` on an `Err` value: Torch(\"std::bad_alloc\")").unwrap(),
            "libtorch could not allocate memory (std::bad_alloc)"
        );
    }

    /// What a process that fails to allocate `bytes`, as `rank` (with JSON lines or not), writes
    /// to standard error, and its exit status: run in a forked child, which does only what the
    /// allocator does (no allocation, `_exit`).
    fn failed_allocation(bytes: usize, rank: Option<usize>, json: bool) -> (String, i32) {
        describe_process(rank, json);
        let mut fds = [0; 2];
        // SAFETY: a pipe and a fork; the child only redirects standard error, writes and exits
        // (async-signal-safe calls), the parent reads the pipe to its end and reaps the child.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::dup2(fds[1], libc::STDERR_FILENO);
                checked(std::ptr::null_mut(), bytes);
                libc::_exit(99);
            }
            libc::close(fds[1]);
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n as usize]);
            }
            libc::close(fds[0]);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status));
            (String::from_utf8(out).unwrap(), libc::WEXITSTATUS(status))
        }
    }

    #[test]
    fn a_failed_allocation_ends_the_process_with_an_error_line_and_status_1() {
        let (line, status) = failed_allocation(978_104_824, None, false);
        assert_eq!(status, 1);
        assert_eq!(line, format!("error: out of memory: an allocation of 978104824 bytes failed; {REMEDY}\n"));
        let (line, _) = failed_allocation(64, Some(3), false);
        assert!(line.starts_with("error: rank 3: out of memory: an allocation of 64 bytes failed;"), "{line}");
        let (line, status) = failed_allocation(64, Some(1), true);
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!((json["level"].as_str(), json["rank"].as_u64(), status), (Some("ERROR"), Some(1), 1));
        assert!(json["message"].as_str().unwrap().starts_with("error: rank 1: out of memory"), "{line}");
        describe_process(None, false);
    }

    #[test]
    fn numbers_are_written_without_allocating() {
        let mut line = Line::default();
        for n in [0, 7, 1_234_567, usize::MAX] {
            line.number(n);
            line.push(b" ");
        }
        assert_eq!(&line.bytes[..line.len], format!("0 7 1234567 {} ", usize::MAX).as_bytes());
    }
}
