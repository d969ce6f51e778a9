//! `micn doctor`: what this build and this machine offer — libtorch, CUDA, MPI, the rank layout
//! and thread settings. Under `mpirun` every rank contributes its own facts and rank 0 prints
//! one report for the whole job.
use serde::{Deserialize, Serialize};

use crate::dist::{Communicator, CommunicatorExt};

/// Facts about the whole job, printed by rank 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub micn_version: String,
    /// The version of the libtorch this binary links (read from torch's `version.py` at build).
    pub libtorch_version: String,
    pub mpi_feature: bool,
    /// The MPI library's version string, when running over MPI.
    pub mpi_library: Option<String>,
    /// MPI standard version, e.g. "3.1".
    pub mpi_standard: Option<String>,
    pub backend: String,
    pub world_size: usize,
    pub ranks: Vec<RankReport>,
}

/// Facts one rank sees.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RankReport {
    pub rank: usize,
    pub local_rank: usize,
    pub host: String,
    pub pid: u32,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    /// libtorch intra-op threads.
    pub torch_threads: i32,
    /// libtorch inter-op threads.
    pub torch_interop_threads: i32,
    /// `OMP_NUM_THREADS` as set in the environment.
    pub omp_num_threads: Option<String>,
    pub cpus: usize,
}

impl RankReport {
    /// What this process sees.
    pub fn here(comm: &dyn Communicator) -> Self {
        Self {
            rank: comm.rank(),
            local_rank: comm.local_rank(),
            host: hostname(),
            pid: std::process::id(),
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            torch_threads: tch::get_num_threads(),
            torch_interop_threads: tch::get_num_interop_threads(),
            omp_num_threads: std::env::var("OMP_NUM_THREADS").ok(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// The MPI library in use, when running over MPI.
#[derive(Debug, Clone)]
pub struct MpiInfo {
    /// The library's own version string (e.g. "Open MPI v4.1.4, ...").
    pub library: String,
    /// The MPI standard it implements, e.g. "3.1".
    pub standard: String,
}

/// Collect every rank's facts; returns the whole report on every rank.
pub fn collect(comm: &dyn Communicator, mpi: Option<MpiInfo>) -> crate::dist::Result<Report> {
    let mine = serde_json::to_vec(&RankReport::here(comm)).expect("a rank report serialises");
    let gathered = comm.all_gather::<u8>(&mine)?;
    let ranks = gathered
        .parts()
        .map(|part| serde_json::from_slice(part).expect("rank reports come from this same binary"))
        .collect();
    let (mpi_library, mpi_standard) = mpi.map(|m| (m.library, m.standard)).unzip();
    Ok(Report {
        micn_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: env!("MICN_LIBTORCH_VERSION").into(),
        mpi_feature: cfg!(feature = "mpi"),
        mpi_library,
        mpi_standard,
        backend: comm.backend().into(),
        world_size: comm.size(),
        ranks,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "micn {}", self.micn_version)?;
        writeln!(f, "libtorch      {}", self.libtorch_version)?;
        let mpi = match (&self.mpi_library, self.mpi_feature) {
            (Some(lib), _) => format!(
                "{} (MPI {})",
                lib.lines().next().unwrap_or(lib).trim(),
                self.mpi_standard.as_deref().unwrap_or("?")
            ),
            (None, true) => "built in, not initialised (not started by mpirun; use --comm mpi to force)".into(),
            (None, false) => "not built (feature `mpi` off)".into(),
        };
        writeln!(f, "mpi           {mpi}")?;
        writeln!(f, "communicator  {} (world size {})", self.backend, self.world_size)?;
        for r in &self.ranks {
            let cuda = if r.cuda_available {
                format!(
                    "CUDA yes, {} device(s), cuDNN {}",
                    r.cuda_devices,
                    if r.cudnn_available { "yes" } else { "no" }
                )
            } else {
                "CUDA no".to_string()
            };
            writeln!(
                f,
                "rank {} of {}  local rank {}  host {}  pid {}  {}  threads intra {} inter {}  OMP_NUM_THREADS {}  cpus {}",
                r.rank,
                self.world_size,
                r.local_rank,
                r.host,
                r.pid,
                cuda,
                r.torch_threads,
                r.torch_interop_threads,
                r.omp_num_threads.as_deref().unwrap_or("unset"),
                r.cpus
            )?;
        }
        Ok(())
    }
}
