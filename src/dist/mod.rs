//! Collective communication between ranks.
//!
//! [`Communicator`] is the one interface the trainer talks to. Three implementations:
//! [`SingleProcess`] (world size 1, always built), [`ThreadRanks`] (several ranks as threads of
//! one process, for tests) and, with the `mpi` feature, [`MpiCommunicator`] (ranks started by
//! `mpirun`). Every collective must be called by every rank in the same order.
//!
//! The trait has four primitives (sum of f32, all-gather of bytes, broadcast of bytes, barrier)
//! and one shortcut (an all-gather whose lengths every rank already knows, which MPI does in one
//! collective instead of two); typed all-gathers and broadcasts are built on them, so all three
//! back-ends share one definition of what each operation returns.

pub mod check;
mod single;
mod threads;
pub mod watchdog;

#[cfg(feature = "mpi")]
mod mpi;

pub use self::single::SingleProcess;
pub use self::threads::ThreadRanks;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiCommunicator;

use bytemuck::Pod;

/// A failed collective.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// Another rank stopped (panicked or returned) while this one waited in a collective.
    #[error("rank {rank}: a peer rank stopped during a collective operation")]
    PeerGone { rank: usize },
    /// A broadcast whose receive buffer does not match the root's length.
    #[error("rank {rank}: broadcast of {got} elements into a buffer of {expected}")]
    LengthMismatch { rank: usize, got: usize, expected: usize },
    /// An all-gather whose announced lengths disagree with what the ranks sent.
    #[error("rank {rank}: all-gather with announced lengths {announced:?}, but the ranks sent {sent:?}")]
    CountMismatch { rank: usize, announced: Vec<usize>, sent: Vec<usize> },
    /// A root outside the world.
    #[error("rank {rank}: broadcast from rank {root} in a world of size {size}")]
    BadRoot { rank: usize, root: usize, size: usize },
    /// Asked for a back-end that this build does not contain.
    #[error("MPI was requested but this micn was built without the `mpi` feature; rebuild with `cargo build --release --features mpi`")]
    MpiNotBuilt,
    /// The MPI library reported a failure.
    #[error("MPI: {0}")]
    Mpi(String),
}

pub type Result<T> = std::result::Result<T, CommError>;

/// What an all-gather returns: every rank's buffer, concatenated in rank order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gathered<T> {
    /// All contributions, rank 0's first.
    pub data: Vec<T>,
    /// Number of elements each rank contributed.
    pub counts: Vec<usize>,
}

impl<T> Gathered<T> {
    /// The contribution of each rank, in rank order.
    pub fn parts(&self) -> impl Iterator<Item = &[T]> {
        let mut rest = self.data.as_slice();
        self.counts.iter().map(move |&n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        })
    }
}

/// Collective operations over a fixed group of ranks.
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Rank among the ranks on this host (selects the GPU).
    fn local_rank(&self) -> usize;
    /// Processes of this job on this host, which share its cores (thread ranks share one
    /// process, and count as one).
    fn local_size(&self) -> usize {
        1
    }
    /// Short name of the back-end, for logs and `micn doctor`.
    fn backend(&self) -> &'static str;

    /// Element-wise sum over ranks, in place; every rank receives the same values.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Every rank's byte buffer (lengths may differ), concatenated in rank order.
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Gathered<u8>>;
    /// [`all_gather_bytes`](Self::all_gather_bytes) when every rank already knows every rank's
    /// length (`counts`, in rank order, the same on every rank): back-ends may skip exchanging
    /// the lengths. A wrong `counts` is an error, never a silent misread.
    fn all_gather_bytes_sized(&self, local: &[u8], counts: &[usize]) -> Result<Gathered<u8>> {
        let gathered = self.all_gather_bytes(local)?;
        if gathered.counts != counts {
            return Err(CommError::CountMismatch {
                rank: self.rank(),
                announced: counts.to_vec(),
                sent: gathered.counts,
            });
        }
        Ok(gathered)
    }
    /// Replace `buf` on every rank with `root`'s `buf` (lengths must agree).
    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> Result<()>;
    /// Return once every rank has entered.
    fn barrier(&self) -> Result<()>;

    /// Stop the whole job after an error on this rank, so that peers waiting in a collective do
    /// not hang. MPI aborts every rank; the other back-ends return and let the error propagate.
    fn abort(&self, _code: i32) {}
}

/// The first failure among the ranks of a job, once each has reached the same point with its
/// own outcome ([`first_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstFailure {
    /// The lowest rank that failed, and the exit status it gave its failure.
    pub rank: usize,
    pub status: u8,
    /// Whether a rank below this one failed with this rank's very words: every rank checks what
    /// they share alike, so a cause is said once, by the lowest rank that found it.
    pub said_below: bool,
}

/// Every rank's outcome of the same step (`None`: it passed; else its failure's exit status, not
/// 0, and its message), gathered: the first failure, if any rank failed.
pub fn first_failure(comm: &dyn Communicator, own: Option<(u8, String)>) -> Result<Option<FirstFailure>> {
    // A failure's status byte, then its message; a lone 0 for success.
    let own = match own {
        None => vec![0],
        Some((status, message)) => [&[status.max(1)][..], message.as_bytes()].concat(),
    };
    let gathered = comm.all_gather_bytes(&own)?;
    let all: Vec<&[u8]> = gathered.parts().collect();
    let failed = all.iter().position(|m| m.first() != Some(&0));
    Ok(failed.map(|rank| FirstFailure {
        rank,
        status: all[rank].first().copied().unwrap_or(1),
        said_below: own[0] != 0 && all[..comm.rank()].contains(&own.as_slice()),
    }))
}

/// This host's name, as the kernel knows it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "?".into()
    }
}

/// Whether this build can give what was asked: MPI wanted but not built is an error at start-up.
pub fn check_mpi_built(wants_mpi: bool, built_with_mpi: bool) -> Result<()> {
    if wants_mpi && !built_with_mpi {
        return Err(CommError::MpiNotBuilt);
    }
    Ok(())
}

/// Typed collectives over any communicator (u32, i64, f32, u8, ... — any plain-old-data type).
pub trait CommunicatorExt: Communicator {
    /// All-gather of variable-length typed buffers.
    fn all_gather<T: Pod>(&self, local: &[T]) -> Result<Gathered<T>> {
        let bytes = self.all_gather_bytes(bytemuck::cast_slice(local))?;
        let size = std::mem::size_of::<T>();
        Ok(Gathered {
            data: bytemuck::pod_collect_to_vec(&bytes.data),
            counts: bytes.counts.iter().map(|n| n / size).collect(),
        })
    }

    /// Broadcast of a typed buffer from `root`.
    fn broadcast<T: Pod>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        self.broadcast_bytes(root, bytemuck::cast_slice_mut(buf))
    }

    /// Broadcast of a buffer whose length only `root` knows; returns root's buffer everywhere.
    fn broadcast_vec(&self, root: usize, buf: &[u8]) -> Result<Vec<u8>> {
        let mut len = [buf.len() as u64];
        self.broadcast(root, &mut len)?;
        let mut out = if self.rank() == root { buf.to_vec() } else { vec![0; len[0] as usize] };
        self.broadcast_bytes(root, &mut out)?;
        Ok(out)
    }
}

impl<C: Communicator + ?Sized> CommunicatorExt for C {}

/// Which back-end to start, from `--comm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// MPI when started by `mpirun` (its environment variables are set), else single process.
    Auto,
    /// World size 1, no MPI initialisation.
    Single,
    /// MPI; an error in a build without the `mpi` feature.
    Mpi,
}

/// True when the environment says this process was started by an MPI launcher.
pub fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"].iter().any(|k| std::env::var_os(k).is_some())
}

impl Backend {
    /// Whether this choice means initialising MPI, given the environment.
    pub fn wants_mpi(self) -> bool {
        match self {
            Backend::Auto => launched_by_mpirun(),
            Backend::Single => false,
            Backend::Mpi => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_mpi_from_a_build_without_it_is_a_clear_error() {
        let e = check_mpi_built(true, false).unwrap_err().to_string();
        assert!(e.contains("without the `mpi` feature") && e.contains("--features mpi"), "{e}");
        assert!(check_mpi_built(true, true).is_ok());
        assert!(check_mpi_built(false, false).is_ok());
    }

    #[test]
    fn the_first_failure_is_the_lowest_rank_s_and_a_cause_is_said_below_only_in_the_same_words() {
        // Ranks 1 and 3 fail alike (an input error), rank 2 otherwise, rank 0 passes.
        let outcomes = [None, Some((3, "bad key")), Some((1, "disk full")), Some((3, "bad key"))];
        let seen = ThreadRanks::run(4, |comm| {
            first_failure(&comm, outcomes[comm.rank()].map(|(status, said)| (status, said.to_string()))).unwrap()
        });
        for (rank, first) in seen.iter().enumerate() {
            let first = first.expect("rank 1 failed");
            assert_eq!((first.rank, first.status), (1, 3), "rank {rank}");
            assert_eq!(first.said_below, rank == 3, "rank {rank}: only rank 3's words were said below it");
        }
        let passed = ThreadRanks::run(3, |comm| first_failure(&comm, None).unwrap());
        assert_eq!(passed, [None; 3]);
    }
}
