//! Stopping a run as a value ([`Interrupter`], as burn's learner has one): whoever holds a clone
//! can ask the run to stop after its current step (which then writes a checkpoint); the stop
//! signals set the one [`Interrupter::on_signals`] returns. While `micn train` starts
//! ([`mark_starting`]) the same stop signal a second time ends the process at once: nothing is
//! trained yet, and a start-up read that blocks (a FIFO nobody writes into, a hung network file
//! system) would otherwise never come back to see the first.
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// A shared request to stop after the current step.
#[derive(Debug, Clone, Default)]
pub struct Interrupter(Arc<AtomicBool>);

/// The interrupter the signal handler sets.
static ON_SIGNALS: OnceLock<Interrupter> = OnceLock::new();

/// Whether the process is starting a run (see [`mark_starting`]).
static STARTING: AtomicBool = AtomicBool::new(false);

/// The first stop signal received (0: none yet).
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe: atomic loads and stores, `write` and `_exit`.
    let Some(interrupter) = ON_SIGNALS.get() else { return };
    let first = FIRST_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).unwrap_or_else(|f| f);
    // One request can come as several signals, each another one (a terminal's Ctrl-C and a sweep's
    // SIGTERM; a scheduler's SIGTERM and `micn-launch`'s SIGUSR1), and a closed terminal may send
    // SIGHUP more than once: only the same signal again, not a hang-up, is a second request.
    if STARTING.load(Ordering::SeqCst) && first == signal && signal != libc::SIGHUP {
        let said = b"micn: the same stop signal again while the run starts: stopping now, nothing trained\n";
        // SAFETY: `write` and `_exit` are async-signal-safe; the buffer outlives the call.
        unsafe {
            libc::write(libc::STDERR_FILENO, said.as_ptr().cast(), said.len());
            libc::_exit(128 + signal);
        }
    }
    interrupter.stop();
}

/// Marks the process as starting a run (configuration, data, model and checkpoint read; nothing
/// trained): the first stop signal received, sent again, then ends it at once, status 128 + the
/// signal (SIGHUP excepted). `micn train` calls it before anything else.
pub fn mark_starting() {
    STARTING.store(true, Ordering::SeqCst);
}

/// Marks the run as training: from here every stop signal asks for a graceful stop after the
/// current step, however many come.
pub fn mark_training() {
    STARTING.store(false, Ordering::SeqCst);
}

impl Interrupter {
    /// One nobody has asked to stop yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the run to stop after its current step.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The interrupter of the stop signals (the same one at every call): SIGTERM (schedulers),
    /// SIGINT (Ctrl-C), SIGHUP (the terminal closed) and SIGUSR1, which is what `micn-launch`
    /// sends (mpirun passes SIGUSR1 on to every rank, but kills the job a second after forwarding
    /// a SIGTERM, too soon for a checkpoint). The handlers are installed at the first call.
    pub fn on_signals() -> Self {
        static INSTALL: Once = Once::new();
        let interrupter = ON_SIGNALS.get_or_init(Interrupter::new).clone();
        INSTALL.call_once(|| {
            // SAFETY: the handler makes atomic loads and stores and calls `write` and `_exit`, all
            // async-signal-safe.
            unsafe {
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
                    libc::signal(signal, on_signal as *const () as libc::sighandler_t);
                }
            }
        });
        interrupter
    }
}

/// Give the stop signals their default action back (the process ends at once), for work after
/// which nothing is left to save: [`Interrupter::on_signals`]' handlers would only set a flag
/// nobody reads any more.
pub fn default_stop_signals() {
    // SAFETY: restoring the default disposition of signals; no handler runs code of ours after.
    unsafe {
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_a_stop() {
        let interrupter = Interrupter::new();
        let held = interrupter.clone();
        assert!(!held.is_stopped());
        std::thread::spawn(move || interrupter.stop()).join().unwrap();
        assert!(held.is_stopped());
        assert!(!Interrupter::new().is_stopped(), "a new one is independent");
    }
}
