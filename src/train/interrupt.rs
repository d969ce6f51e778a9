//! Stopping a run as a value ([`Interrupter`], as burn's learner has one): whoever holds a clone
//! can ask the run to stop after its current step (which then writes a checkpoint); the stop
//! signals set the one [`Interrupter::on_signals`] returns.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// A shared request to stop after the current step.
#[derive(Debug, Clone, Default)]
pub struct Interrupter(Arc<AtomicBool>);

/// The interrupter the signal handler sets.
static ON_SIGNALS: OnceLock<Interrupter> = OnceLock::new();

extern "C" fn on_signal(_signal: libc::c_int) {
    // Async-signal-safe: an atomic load (the `OnceLock`), then an atomic store.
    if let Some(interrupter) = ON_SIGNALS.get() {
        interrupter.stop();
    }
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
            // SAFETY: the handler only makes atomic loads and stores, which are async-signal-safe.
            unsafe {
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
                    libc::signal(signal, on_signal as *const () as libc::sighandler_t);
                }
            }
        });
        interrupter
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
