//! `train.deterministic`: libtorch's deterministic algorithms, for bit-identical runs and resumes
//! on a GPU. There some kernels add in whatever order the GPU's atomics take: the `index_add_`
//! that sums an embedding lookup's gradients into its rows, the row messages' sums; so two runs,
//! or a run and its resume, may differ in the last bits. On the CPU every kernel micn uses is
//! deterministic already; the switch then changes nothing but is still taken, so the tests run it.
//!
//! The switch is libtorch's own, what PyTorch's `torch.use_deterministic_algorithms(True,
//! warn_only=True)` and `torch.backends.cudnn.deterministic = True` set: a kernel without a
//! deterministic version warns instead of failing. tch does not wrap it, so it is reached through
//! the C++ symbols libtorch exports, looked up at run time (a libtorch without them is an error,
//! not a crash). cuBLAS gets the workspace setting its reproducibility needs
//! (`CUBLAS_WORKSPACE_CONFIG=:4096:8`) where the environment sets none.
use std::ffi::{c_void, CStr};

/// libtorch lacks a symbol this needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "train.deterministic: this libtorch does not export `{symbol}` (at::Context's deterministic switches), so \
     deterministic algorithms cannot be turned on; set train.deterministic = false"
)]
pub struct MissingSymbol {
    pub symbol: String,
}

/// cuBLAS's setting for reproducible results (NVIDIA's cuBLAS documentation, "Results
/// reproducibility"; PyTorch's reproducibility notes).
const CUBLAS_WORKSPACE: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

// The mangled names of `at::Context& at::globalContext()` and of `at::Context`'s members
// (Itanium C++ ABI, as `nm -D libtorch_cpu.so` lists them).
const GLOBAL_CONTEXT: &CStr = c"_ZN2at13globalContextEv";
const SET_ALGORITHMS: &CStr = c"_ZN2at7Context26setDeterministicAlgorithmsEbb";
const ALGORITHMS: &CStr = c"_ZNK2at7Context23deterministicAlgorithmsEv";
const SET_CUDNN: &CStr = c"_ZN2at7Context21setDeterministicCuDNNEb";
const CUDNN: &CStr = c"_ZNK2at7Context18deterministicCuDNNEv";

// A non-virtual member function takes the object as its first argument (Itanium C++ ABI), and
// a reference is returned as a pointer: these are the C signatures of the symbols above.
type GlobalContext = unsafe extern "C" fn() -> *mut c_void;
type SetAlgorithms = unsafe extern "C" fn(*mut c_void, bool, bool);
type SetFlag = unsafe extern "C" fn(*mut c_void, bool);
type GetFlag = unsafe extern "C" fn(*const c_void) -> bool;

/// Turn libtorch's deterministic algorithms (warning where a kernel has none) and cuDNN's
/// deterministic mode on for this process, and set cuBLAS's workspace where the environment
/// leaves it unset. Call before the first CUDA operation (cuBLAS reads its setting when it
/// starts).
pub fn turn_on() -> Result<(), MissingSymbol> {
    if std::env::var_os(CUBLAS_WORKSPACE.0).is_none() {
        std::env::set_var(CUBLAS_WORKSPACE.0, CUBLAS_WORKSPACE.1);
    }
    let context = global_context()?;
    let set_algorithms: SetAlgorithms = symbol(SET_ALGORITHMS)?;
    let set_cudnn: SetFlag = symbol(SET_CUDNN)?;
    // SAFETY: `context` is libtorch's global `at::Context`, which lives as long as the process;
    // the setters only store flags (libtorch may log a warning).
    unsafe {
        set_algorithms(context, true, true);
        set_cudnn(context, true);
    }
    Ok(())
}

/// libtorch's own answer: whether its deterministic algorithms and cuDNN's deterministic mode
/// are both on.
pub fn is_on() -> Result<bool, MissingSymbol> {
    let context = global_context()?;
    let algorithms: GetFlag = symbol(ALGORITHMS)?;
    let cudnn: GetFlag = symbol(CUDNN)?;
    // SAFETY: as in `turn_on`; the getters only read flags.
    Ok(unsafe { algorithms(context) && cudnn(context) })
}

fn global_context() -> Result<*mut c_void, MissingSymbol> {
    let get: GlobalContext = symbol(GLOBAL_CONTEXT)?;
    // SAFETY: `at::globalContext()` takes nothing and returns a reference to a static object.
    Ok(unsafe { get() })
}

/// `T` must be the `extern "C" fn` type that the symbol `name` has (see the types above).
fn symbol<T: Copy>(name: &CStr) -> Result<T, MissingSymbol> {
    crate::doctor::cuda::global_symbol(name)
        .ok_or_else(|| MissingSymbol { symbol: name.to_string_lossy().into_owned() })
}
