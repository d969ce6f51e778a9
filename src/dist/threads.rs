//! Several ranks as threads of one process, exchanging through shared memory. Tests use it to
//! check multi-rank behaviour without `mpirun`; it follows MPI's rules (every rank calls every
//! collective, in the same order) and gives every rank bit-identical results.
//!
//! When a rank's handle is dropped (its thread returned or panicked), ranks still waiting in a
//! collective get [`CommError::PeerGone`] instead of hanging.
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{CommError, Communicator, Gathered, Result};

/// One rank of an in-process world; see [`ThreadRanks::run`].
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    state: Mutex<Exchange>,
    wake: Condvar,
}

/// One round of "everyone deposits a buffer, everyone reads all buffers".
#[derive(Default)]
struct Exchange {
    deposits: Vec<Option<Vec<u8>>>,
    arrived: usize,
    /// Completed rounds; a waiting rank is released when this moves past its own round.
    round: u64,
    /// All deposits of the last completed round, in rank order.
    published: Arc<Vec<Vec<u8>>>,
    /// Set when any rank left the world.
    gone: bool,
}

impl ThreadRanks {
    /// Run `f` on `size` ranks, one thread each, and return their results in rank order.
    /// A panic on any rank is re-raised here after all threads have stopped.
    pub fn run<R: Send>(size: usize, f: impl Fn(ThreadRanks) -> R + Sync) -> Vec<R> {
        assert!(size > 0, "a world needs at least one rank");
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(Exchange { deposits: vec![None; size], ..Default::default() }),
            wake: Condvar::new(),
        });
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..size)
                .map(|rank| {
                    let comm = ThreadRanks { rank, shared: Arc::clone(&shared) };
                    let f = &f;
                    std::thread::Builder::new()
                        .name(format!("rank-{rank}"))
                        .spawn_scoped(scope, move || f(comm))
                        .expect("spawning a rank thread")
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Exchange> {
        // A rank that panicked while holding the lock left consistent state behind (deposits are
        // whole buffers), and `gone` tells the others; keep going instead of cascading panics.
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deposit `mine`; once every rank has, return all deposits in rank order.
    fn exchange(&self, mine: Vec<u8>) -> Result<Arc<Vec<Vec<u8>>>> {
        let mut state = self.lock();
        if state.gone {
            return Err(CommError::PeerGone { rank: self.rank });
        }
        let my_round = state.round;
        state.deposits[self.rank] = Some(mine);
        state.arrived += 1;
        if state.arrived == self.shared.size {
            let all = state.deposits.iter_mut().map(|d| d.take().expect("every rank deposited")).collect();
            state.published = Arc::new(all);
            state.arrived = 0;
            state.round += 1;
            self.shared.wake.notify_all();
        } else {
            while state.round == my_round && !state.gone {
                state = self.shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.round == my_round {
                return Err(CommError::PeerGone { rank: self.rank });
            }
        }
        Ok(Arc::clone(&state.published))
    }
}

impl Drop for ThreadRanks {
    fn drop(&mut self) {
        self.lock().gone = true;
        self.shared.wake.notify_all();
    }
}

impl Communicator for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn backend(&self) -> &'static str {
        "threads"
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(bytemuck::cast_slice(buf).to_vec())?;
        buf.fill(0.0);
        // Summed in rank order on every rank, so all ranks hold identical bits.
        for part in all.iter() {
            let part: Vec<f32> = bytemuck::pod_collect_to_vec(part);
            for (acc, x) in buf.iter_mut().zip(part) {
                *acc += x;
            }
        }
        Ok(())
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Gathered<u8>> {
        let all = self.exchange(local.to_vec())?;
        Ok(Gathered { data: all.concat(), counts: all.iter().map(Vec::len).collect() })
    }

    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> Result<()> {
        if root >= self.size() {
            return Err(CommError::BadRoot { rank: self.rank, root, size: self.size() });
        }
        let mine = if self.rank == root { buf.to_vec() } else { Vec::new() };
        let all = self.exchange(mine)?;
        let theirs = &all[root];
        if theirs.len() != buf.len() {
            return Err(CommError::LengthMismatch { rank: self.rank, got: theirs.len(), expected: buf.len() });
        }
        buf.copy_from_slice(theirs);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Vec::new()).map(drop)
    }
}
