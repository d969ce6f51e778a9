//! A rank's watchdog: no collective and no training step may wait longer than a set time.
//!
//! A rank blocked in a collective cannot be stopped from inside (MPI has no cancellable
//! collectives, and a signal handler cannot leave one), so a lost peer — a killed host, a cut
//! link, a hung process — would hold every other rank for good. [`Watched`] wraps a
//! communicator: every collective and every step ([`Watched::step`]) is recorded with its start,
//! and a thread of its own checks them every second. Past the limit it says which collective
//! (its kind, sequence number and size), during which step, and which peers it was waiting for
//! (the root of a broadcast; for the other collectives every other rank, with its host), writes
//! that to standard error and the rank's log, and ends the process with [`EXIT_WATCHDOG`]; the
//! MPI launcher then ends the whole job, and `micn-launch` restarts it when asked to.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Communicator, Gathered, Result};

/// The exit status of a rank its watchdog ended.
pub const EXIT_WATCHDOG: i32 = 4;

/// What a rank is waiting in.
#[derive(Debug, Clone, PartialEq)]
struct Activity {
    /// `all_reduce of 1024 f32`, ...
    what: String,
    /// Collectives so far on this rank, this one included.
    seq: u64,
    /// The one rank this collective waits for (a broadcast's root), if any.
    waits_for: Option<usize>,
    since: Instant,
}

/// A watchdog that fired: what was waited for, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Expiry {
    pub message: String,
}

#[derive(Default)]
struct State {
    collective: Option<Activity>,
    /// The step in progress and when it started.
    step: Option<(u64, Instant)>,
}

impl State {
    /// Leave `frozen` (time the process did not run, up to `now`) out of what the collective and
    /// the step in progress have waited.
    fn thaw(&mut self, frozen: Duration, now: Instant) {
        let later = |since: Instant| since.checked_add(frozen).map_or(now, |t| t.min(now));
        if let Some(c) = &mut self.collective {
            c.since = later(c.since);
        }
        if let Some((_, since)) = &mut self.step {
            *since = later(*since);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    wake: Condvar,
}

/// A communicator whose collectives and steps are watched (see the module documentation).
pub struct Watched<'a> {
    inner: &'a dyn Communicator,
    shared: Arc<Shared>,
    seq: AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<'a> Watched<'a> {
    /// Watch `inner` with `limit` per collective and per step; `on_expiry` is what happens when
    /// one is exceeded (in `micn train`: [`abort_rank`]). Learns every rank's host first (one
    /// all-gather), to name the peers.
    pub fn new(
        inner: &'a dyn Communicator,
        limit: Duration,
        on_expiry: impl Fn(Expiry) + Send + 'static,
    ) -> Result<Self> {
        let host = super::hostname();
        let gathered = inner.all_gather_bytes(host.as_bytes())?;
        let hosts: Vec<String> = gathered.parts().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
        });
        let rank = inner.rank();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("micn-watchdog".into())
                .spawn(move || watch(&shared, limit, rank, &hosts, on_expiry))
                .map_err(|e| super::CommError::Mpi(format!("starting the watchdog thread: {e}")))?
        };
        Ok(Self { inner, shared, seq: AtomicU64::new(0), thread: Some(thread) })
    }

    /// Mark a training step as running until the returned guard is dropped.
    pub fn step(&self, step: u64) -> StepGuard<'_> {
        self.shared.state.lock().expect("watchdog state").step = Some((step, Instant::now()));
        StepGuard { shared: &self.shared }
    }

    fn watched<T>(&self, what: String, waits_for: Option<usize>, run: impl FnOnce() -> T) -> T {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let activity = Activity { what, seq, waits_for, since: Instant::now() };
        self.shared.state.lock().expect("watchdog state").collective = Some(activity);
        let out = run();
        self.shared.state.lock().expect("watchdog state").collective = None;
        out
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ends the step [`Watched::step`] started.
pub struct StepGuard<'a> {
    shared: &'a Shared,
}

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.shared.state.lock().expect("watchdog state").step = None;
    }
}

impl Communicator for Watched<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn local_rank(&self) -> usize {
        self.inner.local_rank()
    }
    fn local_size(&self) -> usize {
        self.inner.local_size()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.watched(format!("all_reduce of {} f32", buf.len()), None, || self.inner.all_reduce_sum_f32(buf))
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Gathered<u8>> {
        self.watched(format!("all_gather of {} bytes", local.len()), None, || self.inner.all_gather_bytes(local))
    }
    fn all_gather_bytes_sized(&self, local: &[u8], counts: &[usize]) -> Result<Gathered<u8>> {
        let what = format!("all_gather of {} bytes", counts.iter().sum::<usize>());
        self.watched(what, None, || self.inner.all_gather_bytes_sized(local, counts))
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> Result<()> {
        let waits_for = (root != self.rank()).then_some(root);
        let what = format!("broadcast of {} bytes from rank {root}", buf.len());
        self.watched(what, waits_for, || self.inner.broadcast_bytes(root, buf))
    }
    fn barrier(&self) -> Result<()> {
        self.watched("barrier".into(), None, || self.inner.barrier())
    }
    fn abort(&self, code: i32) {
        self.inner.abort(code)
    }
}

/// A wake-up this much later than its tick means the process did not run in between.
const FROZEN_AFTER: Duration = Duration::from_secs(2);

/// The watchdog thread: checks once a second (and when told to stop) until stopped or fired.
/// Time this process itself did not run (stopped by SIGSTOP or Ctrl-Z, until SIGCONT) is nobody's
/// wait: it is not counted against the limit (see [`State::thaw`]).
fn watch(shared: &Shared, limit: Duration, rank: usize, hosts: &[String], on_expiry: impl Fn(Expiry)) {
    let tick = limit.min(Duration::from_secs(1));
    let mut state = shared.state.lock().expect("watchdog state");
    let mut last = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        state = shared.wake.wait_timeout(state, tick).expect("watchdog state").0;
        let now = Instant::now();
        let late = now.duration_since(last).saturating_sub(tick);
        last = now;
        if late > FROZEN_AFTER {
            state.thaw(late, now);
            tracing::warn!(
                seconds = late.as_secs_f64().round(),
                "this process did not run for a while (stopped and continued?): the watchdog does not count that time"
            );
        }
        if let Some(message) = overdue(&state, limit, rank, hosts, now) {
            drop(state);
            on_expiry(Expiry { message });
            return;
        }
    }
}

/// What has waited past `limit` at `now` (the tick's time, from which any time the process did
/// not run is already left out), said in full; nothing when all is well. A step that runs past
/// the limit while a collective is under way (it started first, so its clock runs out first) is
/// blamed on that collective's peers, as the collective itself would be a moment later.
fn overdue(state: &State, limit: Duration, rank: usize, hosts: &[String], now: Instant) -> Option<String> {
    let name = |r: usize| format!("rank {r} ({})", hosts.get(r).map_or("?", String::as_str));
    let seconds = |d: Duration| format!("{:.0} s", d.as_secs_f64());
    let limit_said = format!("(limit {}, train.watchdog_seconds)", seconds(limit));
    let collective = state.collective.as_ref().map(|c| {
        let peers = match c.waits_for {
            Some(root) => name(root),
            None => {
                let others: Vec<String> = (0..hosts.len()).filter(|&r| r != rank).map(name).collect();
                format!("{} (one or more of them has not joined)", others.join(", "))
            }
        };
        let what = format!("collective #{} ({})", c.seq, c.what);
        (
            now.saturating_duration_since(c.since),
            what,
            format!("waiting for {peers}: a peer is lost, hung or unreachable"),
        )
    });
    let step = state.step.map(|(step, since)| (step + 1, now.saturating_duration_since(since)));
    match (collective, step) {
        (Some((waited, what, peers)), step) if waited > limit => {
            let during = step.map(|(step, _)| format!(" during step {step}")).unwrap_or_default();
            Some(format!(
                "watchdog: {} waited {} {limit_said} in {what}{during}, {peers}; aborting the job",
                name(rank),
                seconds(waited)
            ))
        }
        (collective, Some((step, spent))) if spent > limit => {
            let last = collective
                .map(|(waited, what, peers)| format!(", the last {} of it in {what}, {peers}", seconds(waited)))
                .unwrap_or_default();
            Some(format!(
                "watchdog: {} spent {} {limit_said} in step {step} without finishing it{last}; aborting the job",
                name(rank),
                seconds(spent)
            ))
        }
        _ => None,
    }
}

/// What `micn train` does when its watchdog fires: the message on standard error and in the
/// rank's log, then the process ends at once with [`EXIT_WATCHDOG`] (no unwinding, no MPI
/// finalisation: the main thread is stuck in the library). The MPI launcher sees a rank gone and
/// ends the job.
pub fn abort_rank(expiry: Expiry) {
    tracing::error!("{}", expiry.message);
    crate::logging::append_to_file(&format!("error: {}\n", expiry.message));
    // SAFETY: _exit ends the process without running anything else; nothing is left half-written
    // that matters (run files and checkpoints are replaced whole, never written in place).
    unsafe { libc::_exit(EXIT_WATCHDOG) }
}

/// Environment variable: the seconds MPI's start (`MPI_Init` and finding the ranks that share a
/// host) may take, `0` for no limit; [`DEFAULT_START_SECONDS`] when unset.
pub const START_TIMEOUT_ENV: &str = "MICN_MPI_START_TIMEOUT";
pub const DEFAULT_START_SECONDS: u64 = 300;

/// The limit [`START_TIMEOUT_ENV`] sets (`value`: the variable's value, if set); `None`: no limit.
pub fn start_limit(value: Option<&str>) -> std::result::Result<Option<Duration>, String> {
    let seconds = match value.map(str::trim) {
        None => DEFAULT_START_SECONDS,
        Some(text) => text.parse::<u64>().map_err(|_| {
            format!("{START_TIMEOUT_ENV}={text}: not a whole number of seconds (0: no limit, unset: {DEFAULT_START_SECONDS})")
        })?,
    };
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

/// Run `start` (MPI's start), ending the process with [`EXIT_WATCHDOG`] if it has not returned
/// within `limit`, with a message saying what it waited in. A host lost or a link cut while the
/// job starts leaves a rank inside `MPI_Init` for good, before there is any collective for
/// [`Watched`] to watch; the MPI launcher ends the job when the rank is gone. Logging is not set up
/// yet (it needs the rank), so the message goes straight to standard error.
pub fn start_within<T>(limit: Option<Duration>, what: &'static str, start: impl FnOnce() -> T) -> T {
    let Some(limit) = limit else { return start() };
    let (done, wait) = std::sync::mpsc::channel::<()>();
    // Without a thread to spare (`ulimit -u`), the start goes unguarded: the limit is a safety
    // net, and a rank that cannot start a thread fails soon enough on its own.
    let guard = std::thread::Builder::new().spawn(move || {
        if wait.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!(
                "error: {what} did not finish within {} s on host {}: a host lost, a link cut or a rank that never \
                 started? ({START_TIMEOUT_ENV} sets the limit in seconds)",
                limit.as_secs(),
                super::hostname()
            );
            // SAFETY: as in `abort_rank`: the main thread is stuck in the library, nothing of the
            // run is written yet.
            unsafe { libc::_exit(EXIT_WATCHDOG) }
        }
    });
    let started = start();
    drop(done);
    if let Ok(guard) = guard {
        let _ = guard.join();
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::ThreadRanks;

    #[test]
    fn the_start_limit_is_read_from_the_environment_with_a_default_and_an_off_switch() {
        assert_eq!(start_limit(None), Ok(Some(Duration::from_secs(DEFAULT_START_SECONDS))));
        assert_eq!(start_limit(Some(" 20 ")), Ok(Some(Duration::from_secs(20))));
        assert_eq!(start_limit(Some("0")), Ok(None));
        let e = start_limit(Some("5m")).unwrap_err();
        assert!(e.starts_with("MICN_MPI_START_TIMEOUT=5m: not a whole number of seconds"), "{e}");
        // A start within the limit returns what it made, and no guard is left to fire later.
        // (A guard left behind would end this test binary once the 10 s are over.)
        assert_eq!(start_within(Some(Duration::from_secs(10)), "a test", || 7), 7);
    }

    #[test]
    fn a_peer_that_never_joins_a_collective_is_named_within_the_limit() {
        let (tx, rx) = std::sync::mpsc::channel::<Expiry>();
        let tx = Mutex::new(tx);
        // Rank 1 stays away from the collective until rank 0's watchdog has fired.
        let fired = Arc::new((Mutex::new(false), Condvar::new()));
        let results = ThreadRanks::run(2, |comm| {
            let (tx, signal) = (tx.lock().unwrap().clone(), Arc::clone(&fired));
            let on_expiry = move |e: Expiry| {
                tx.send(e).unwrap();
                *signal.0.lock().unwrap() = true;
                signal.1.notify_all();
            };
            // Rank 1's limit is long: it never waits, but a loaded machine may pause its thread.
            let limit = Duration::from_millis([300, 60_000][comm.rank()]);
            let watched = Watched::new(&comm, limit, on_expiry).unwrap();
            if comm.rank() == 1 {
                let (lock, cv) = &*fired;
                drop(cv.wait_while(lock.lock().unwrap(), |fired| !*fired).unwrap());
            }
            let _step = watched.step(6);
            let mut buf = [1.0f32; 3];
            watched.all_reduce_sum_f32(&mut buf).unwrap();
            buf[0]
        });
        assert_eq!(results, [2.0, 2.0]);
        let m = rx.try_recv().expect("rank 0's watchdog fired").message;
        assert!(m.starts_with("watchdog: rank 0 ("), "{m}");
        // Named through the collective or through the step it runs in, whichever clock ran out first.
        assert!(m.contains("collective #1 (all_reduce of 3 f32)") && m.contains("step 7"), "{m}");
        assert!(m.contains("waiting for rank 1 ("), "{m}");
        assert!(rx.try_recv().is_err(), "rank 1 never waited: its watchdog stays quiet");
    }

    #[test]
    fn a_broadcast_waits_for_its_root_and_an_overdue_step_names_the_collective_it_is_in() {
        let hosts = ["a".to_string(), "b".to_string(), "c".to_string()];
        let long_ago = Instant::now() - Duration::from_secs(10);
        let limit = Duration::from_secs(5);
        let collective =
            Activity { what: "broadcast of 8 bytes from rank 2".into(), seq: 9, waits_for: Some(2), since: long_ago };
        let state = State { collective: Some(collective), step: None };
        let m = overdue(&state, limit, 0, &hosts, Instant::now()).unwrap();
        assert!(
            m.contains("rank 0 (a) waited 10 s (limit 5 s")
                && m.ends_with("waiting for rank 2 (c): a peer is lost, hung or unreachable; aborting the job"),
            "{m}"
        );
        let state = State { collective: None, step: Some((41, long_ago)) };
        let m = overdue(&state, limit, 1, &hosts, Instant::now()).unwrap();
        assert!(m.contains("rank 1 (b) spent 10 s") && m.contains("in step 42 without finishing it"), "{m}");
        let state = State { collective: None, step: Some((41, Instant::now())) };
        assert_eq!(overdue(&state, limit, 1, &hosts, Instant::now()), None);
        // The step began before its collective, so its clock runs out first: the peers the
        // collective waits for are still named.
        let all_reduce = Activity {
            what: "all_reduce of 3 f32".into(),
            seq: 4,
            waits_for: None,
            since: Instant::now() - Duration::from_millis(4_900),
        };
        let state = State { collective: Some(all_reduce), step: Some((41, long_ago)) };
        let m = overdue(&state, limit, 0, &hosts, Instant::now()).unwrap();
        assert!(
            m.contains(
                "rank 0 (a) spent 10 s (limit 5 s, train.watchdog_seconds) in step 42 without finishing it, \
                 the last 5 s of it in collective #4 (all_reduce of 3 f32), waiting for rank 1 (b), rank 2 (c) \
                 (one or more of them has not joined): a peer is lost"
            ),
            "{m}"
        );
    }

    #[test]
    fn time_the_process_did_not_run_is_not_counted_as_waiting() {
        let hosts = ["a".to_string()];
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(10);
        let collective = Activity { what: "barrier".into(), seq: 1, waits_for: None, since: long_ago };
        let mut state = State { collective: Some(collective), step: Some((3, long_ago)) };
        assert!(overdue(&state, Duration::from_secs(5), 0, &hosts, now).is_some());
        // Stopped for 8 of those 10 s: 2 s waited, within the limit.
        state.thaw(Duration::from_secs(8), now);
        assert_eq!(overdue(&state, Duration::from_secs(5), 0, &hosts, now), None);
        assert!(overdue(&state, Duration::from_secs(1), 0, &hosts, now).is_some(), "the 2 s still count");
        // A freeze longer than the wait (it began before the collective did) leaves nothing waited.
        state.thaw(Duration::from_secs(60), now);
        assert_eq!(state.collective.as_ref().map(|c| c.since), Some(now));
        assert_eq!(state.step.map(|s| s.1), Some(now));
    }
}
