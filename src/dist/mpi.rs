//! Ranks started by `mpirun` (OpenMPI or any MPI), through rsmpi.
//!
//! The communicator owns the MPI `Universe`: dropping it finalises MPI, so it must outlive every
//! collective (it lives in `main` for the whole run).
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::Communicator as _;
use mpi::traits::*;
use mpi::Count;

use super::{CommError, Communicator, Gathered, Result};

/// MPI_COMM_WORLD.
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    local_rank: usize,
    local_size: usize,
    // Declared last: fields drop in order, and finalisation must come after the communicators.
    _universe: Universe,
}

impl MpiCommunicator {
    /// Initialise MPI (as a singleton of world size 1 when not started by `mpirun`).
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| CommError::Mpi("MPI was already initialised".into()))?;
        let world = universe.world();
        // Ranks that share memory form one host; our rank among them picks the GPU.
        let here = world.split_shared(0);
        let (local_rank, local_size) = (here.rank() as usize, here.size() as usize);
        Ok(Self { world, local_rank, local_size, _universe: universe })
    }

    /// The MPI library's own version string (e.g. "Open MPI v4.1.4, ...").
    pub fn library_version() -> String {
        // OpenMPI counts its string's terminating NUL in the length rsmpi takes.
        let version = mpi::environment::library_version().unwrap_or_else(|_| "unknown".into());
        version.trim_end_matches(['\0', '\n', ' ']).to_string()
    }

    /// The MPI standard version the library implements, as (major, minor).
    pub fn standard_version() -> (i32, i32) {
        mpi::environment::version()
    }

    /// Name of this host as MPI reports it.
    pub fn processor_name() -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }

    /// All-gather of byte buffers whose lengths (`counts`, in rank order) every rank knows.
    fn gather_counted(&self, local: &[u8], counts: Vec<Count>) -> Result<Gathered<u8>> {
        let displs: Vec<Count> = counts
            .iter()
            .scan(0 as Count, |acc, &n| {
                let start = *acc;
                *acc += n;
                Some(start)
            })
            .collect();
        let total: usize = counts.iter().map(|&n| n as usize).sum();
        let mut data = vec![0u8; total];
        // Every rank knows the counts: a gather of nothing at all, which OpenMPI refuses
        // (MPI_ERR_ARG), is skipped by all alike.
        if total > 0 {
            let mut partition = PartitionMut::new(&mut data[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(local, &mut partition);
        }
        Ok(Gathered { data, counts: counts.iter().map(|&n| n as usize).collect() })
    }
}

fn count(n: usize) -> Result<Count> {
    Count::try_from(n).map_err(|_| CommError::Mpi(format!("a buffer of {n} elements exceeds MPI's count limit")))
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_size(&self) -> usize {
        self.local_size
    }
    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        // rsmpi has no MPI_IN_PLACE, so reduce from a copy.
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Gathered<u8>> {
        let mine = count(local.len())?;
        let mut counts: Vec<Count> = vec![0; self.size()];
        self.world.all_gather_into(&mine, &mut counts[..]);
        self.gather_counted(local, counts)
    }

    fn all_gather_bytes_sized(&self, local: &[u8], counts: &[usize]) -> Result<Gathered<u8>> {
        // Checked before the collective, which would otherwise misread the buffers; the rank
        // returns the error and the trainer aborts the job, so no peer is left waiting.
        if counts.len() != self.size() || counts[self.rank()] != local.len() {
            let mut sent = counts.to_vec();
            if let Some(mine) = sent.get_mut(self.rank()) {
                *mine = local.len();
            }
            return Err(CommError::CountMismatch { rank: self.rank(), announced: counts.to_vec(), sent });
        }
        let counts = counts.iter().map(|&n| count(n)).collect::<Result<Vec<Count>>>()?;
        self.gather_counted(local, counts)
    }

    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> Result<()> {
        if root >= self.size() {
            return Err(CommError::BadRoot { rank: self.rank(), root, size: self.size() });
        }
        // Every rank passes the same length; OpenMPI refuses a broadcast of nothing.
        if !buf.is_empty() {
            self.world.process_at_rank(root as mpi::Rank).broadcast_into(buf);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) {
        if self.size() > 1 {
            self.world.abort(code);
        }
    }
}
