//! `micn doctor`: what this build and this machine offer — libtorch, CUDA (each GPU's name and
//! memory, the versions of the CUDA driver, runtime, cuDNN and NCCL), MPI, the rank layout and
//! thread settings. Under `mpirun` every rank contributes its own facts and rank 0 prints one
//! report for the whole job.
//!
//! tch exposes neither the GPUs' names nor the libraries' versions, so [`cuda`] asks the
//! libraries themselves, through their stable C entry points, in the copies libtorch loaded.
use serde::{Deserialize, Serialize};

use crate::dist::{Communicator, CommunicatorExt};

/// Facts about the whole job, printed by rank 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub micn_version: String,
    /// The version of the libtorch this binary links (read from torch's `version.py` at build).
    pub libtorch_version: String,
    /// Whether this binary links `libtorch_cuda` (a CUDA build of libtorch): then the CUDA
    /// runtime, cuDNN and NCCL are loaded with it, GPU or not.
    pub libtorch_cuda: bool,
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
    /// The GPUs the CUDA driver lists (empty without a driver or a device).
    pub gpus: Vec<cuda::Gpu>,
    /// Versions of the CUDA libraries in this process (none where a library is not loaded).
    pub cuda_libraries: cuda::Libraries,
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
            gpus: cuda::gpus(),
            cuda_libraries: cuda::Libraries::loaded(),
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
        micn_version: env!("MICN_CODE_VERSION").into(),
        libtorch_version: env!("MICN_LIBTORCH_VERSION").into(),
        libtorch_cuda: env!("MICN_LIBTORCH_CUDA") == "1",
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
        writeln!(
            f,
            "libtorch      {} ({})",
            self.libtorch_version,
            if self.libtorch_cuda { "with CUDA" } else { "CPU only" }
        )?;
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
            if self.libtorch_cuda {
                writeln!(f, "  {}", r.cuda_libraries)?;
            }
            for gpu in &r.gpus {
                writeln!(f, "  {gpu}")?;
            }
        }
        Ok(())
    }
}

/// GPUs and CUDA library versions, asked of the libraries themselves.
///
/// The CUDA runtime, cuDNN and NCCL are dependencies of `libtorch_cuda`, loaded with the
/// program, so their symbols are looked up in the process's global scope: the answer is about
/// the very copies libtorch uses, and nothing new is loaded. The driver (`libcuda.so.1`) is
/// opened by the runtime only on first use, privately, so it is opened here by name; a machine
/// without an NVIDIA driver has none and reports no GPU.
pub mod cuda {
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    use std::sync::OnceLock;

    use serde::{Deserialize, Serialize};

    /// One GPU as the CUDA driver describes it.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct Gpu {
        /// The CUDA device index (what `Device::Cuda(i)` means; `CUDA_VISIBLE_DEVICES` applies).
        pub index: usize,
        pub name: String,
        pub memory_bytes: u64,
        /// e.g. "9.0".
        pub compute_capability: String,
    }

    impl std::fmt::Display for Gpu {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "GPU {}: {}, {:.1} GiB, compute capability {}",
                self.index,
                self.name,
                self.memory_bytes as f64 / (1u64 << 30) as f64,
                self.compute_capability
            )
        }
    }

    /// Versions of the CUDA libraries in this process, e.g. driver "13.0", runtime "13.0",
    /// cuDNN "9.19.0", NCCL "2.28.9".
    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    pub struct Libraries {
        /// The newest CUDA version the installed driver supports.
        pub driver: Option<String>,
        pub runtime: Option<String>,
        pub cudnn: Option<String>,
        pub nccl: Option<String>,
    }

    impl std::fmt::Display for Libraries {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "not loaded".into());
            write!(
                f,
                "CUDA driver {}  runtime {}  cuDNN {}  NCCL {}",
                self.driver.clone().unwrap_or_else(|| "none (no libcuda.so.1)".into()),
                show(&self.runtime),
                show(&self.cudnn),
                show(&self.nccl)
            )
        }
    }

    impl Libraries {
        /// What this process has loaded.
        pub fn loaded() -> Self {
            type GetInt = unsafe extern "C" fn(*mut c_int) -> c_int;
            type GetSize = unsafe extern "C" fn() -> usize;
            let int_of = |get: Option<GetInt>| {
                let get = get?;
                let mut v: c_int = 0;
                // SAFETY: each of these writes one int and returns a status (0: success).
                (unsafe { get(&mut v) } == 0).then_some(v)
            };
            Self {
                driver: int_of(driver_symbol(c"cuDriverGetVersion")).map(cuda_version),
                runtime: int_of(global_symbol(c"cudaRuntimeGetVersion")).map(cuda_version),
                // SAFETY: `size_t cudnnGetVersion(void)` has no preconditions.
                cudnn: global_symbol::<GetSize>(c"cudnnGetVersion").map(|get| cudnn_version(unsafe { get() })),
                nccl: int_of(global_symbol(c"ncclGetVersion")).map(nccl_version),
            }
        }
    }

    /// The GPUs the driver lists, in CUDA device order; empty without a driver or a device.
    pub fn gpus() -> Vec<Gpu> {
        (0..device_count()).filter_map(gpu).collect()
    }

    /// GPU `index`, when the driver knows it.
    pub fn gpu(index: usize) -> Option<Gpu> {
        type GetDevice = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
        type GetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
        type GetMemory = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
        type GetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR and _MINOR in cuda.h.
        const CC_MAJOR: c_int = 75;
        const CC_MINOR: c_int = 76;
        if !init_driver() {
            return None;
        }
        let get_device: GetDevice = driver_symbol(c"cuDeviceGet")?;
        let get_name: GetName = driver_symbol(c"cuDeviceGetName")?;
        let get_memory: GetMemory = driver_symbol(c"cuDeviceTotalMem_v2")?;
        let get_attribute: GetAttribute = driver_symbol(c"cuDeviceGetAttribute")?;
        let mut device: c_int = 0;
        let mut name = [0 as c_char; 256];
        let (mut memory, mut major, mut minor) = (0usize, 0 as c_int, 0 as c_int);
        // SAFETY: the driver's documented signatures; every out-pointer is valid for the call and
        // the name buffer's length is passed.
        unsafe {
            if get_device(&mut device, c_int::try_from(index).ok()?) != 0
                || get_name(name.as_mut_ptr(), name.len() as c_int - 1, device) != 0
                || get_memory(&mut memory, device) != 0
                || get_attribute(&mut major, CC_MAJOR, device) != 0
                || get_attribute(&mut minor, CC_MINOR, device) != 0
            {
                return None;
            }
        }
        // SAFETY: the driver wrote a NUL-terminated string into the zeroed buffer (the last byte
        // is never written).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        Some(Gpu { index, name, memory_bytes: memory as u64, compute_capability: format!("{major}.{minor}") })
    }

    fn device_count() -> usize {
        type GetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
        let Some(get): Option<GetCount> = init_driver().then(|| driver_symbol(c"cuDeviceGetCount")).flatten() else {
            return 0;
        };
        let mut n: c_int = 0;
        // SAFETY: writes one int.
        if unsafe { get(&mut n) } == 0 {
            n.max(0) as usize
        } else {
            0
        }
    }

    /// `cuInit(0)` once; false without a driver or when it fails (e.g. no device).
    fn init_driver() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            type Init = unsafe extern "C" fn(c_uint) -> c_int;
            // SAFETY: `cuInit(0)` may be called any number of times, before or after libtorch's.
            driver_symbol::<Init>(c"cuInit").is_some_and(|init| unsafe { init(0) } == 0)
        })
    }

    /// A symbol of the CUDA driver, opened once and never closed.
    fn driver_symbol<T: Copy>(name: &CStr) -> Option<T> {
        static HANDLE: OnceLock<usize> = OnceLock::new();
        let handle = *HANDLE.get_or_init(|| {
            // SAFETY: opening a library by name; its constructors are the driver's own.
            unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) as usize }
        });
        if handle == 0 {
            return None;
        }
        symbol(handle as *mut c_void, name)
    }

    /// A symbol of a library already loaded into the process's global scope (libtorch and what
    /// it loads). `T` must be the `extern "C" fn` type of the symbol `name`.
    pub(crate) fn global_symbol<T: Copy>(name: &CStr) -> Option<T> {
        symbol(libc::RTLD_DEFAULT, name)
    }

    /// `T` must be the `extern "C" fn` type of the symbol `name`.
    fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> Option<T> {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>(), "a function pointer type");
        // SAFETY: dlsym only looks the name up.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        // SAFETY: `T` is a function pointer type of the same size (asserted above), and the
        // caller names the symbol's C signature.
        (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
    }

    /// A CUDA version number (`cudaRuntimeGetVersion`, `cuDriverGetVersion`): 1000 × major +
    /// 10 × minor, as the CUDA runtime API documents it.
    pub fn cuda_version(v: c_int) -> String {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    }

    /// `cudnnGetVersion()`: major × 10000 + minor × 100 + patch from cuDNN 9 on
    /// (`cudnn_version.h`), major × 1000 + minor × 100 + patch before.
    pub fn cudnn_version(v: usize) -> String {
        let major_unit = if v >= 90_000 { 10_000 } else { 1_000 };
        format!("{}.{}.{}", v / major_unit, (v % major_unit) / 100, v % 100)
    }

    /// `ncclGetVersion`: `NCCL_VERSION(X, Y, Z)` in `nccl.h` is X × 10000 + Y × 100 + Z from 2.9
    /// on, X × 1000 + Y × 100 + Z before.
    pub fn nccl_version(v: c_int) -> String {
        let major_unit = if v >= 20_900 { 10_000 } else { 1_000 };
        format!("{}.{}.{}", v / major_unit, (v % major_unit) / 100, v % 100)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn version_numbers_decode_as_the_headers_define_them() {
            // torch 2.11.0+cu130 here: torch.version.cuda "13.0", torch.backends.cudnn.version()
            // 91900, torch.cuda.nccl.version() (2, 28, 9).
            assert_eq!(cuda_version(13000), "13.0");
            assert_eq!(cuda_version(12040), "12.4");
            assert_eq!(cudnn_version(91900), "9.19.0");
            assert_eq!(cudnn_version(8907), "8.9.7");
            assert_eq!(nccl_version(22809), "2.28.9");
            // NCCL 2.8.4 predates the five-digit scheme: 2 × 1000 + 8 × 100 + 4.
            assert_eq!(nccl_version(2804), "2.8.4");
        }
    }
}
