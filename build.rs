//! Link fixes for libtorch, read from `torch-sys` (`DEP_TCH_LIBTORCH_LIB`):
//!
//! - an rpath to the libtorch directory, so `micn` runs without `LD_LIBRARY_PATH`;
//! - `libtorch_cuda` linked with `--no-as-needed` when present: nothing references it by symbol,
//!   so the linker would drop it and CUDA would be silently unavailable on GPU machines;
//! - the libtorch version (from `torch/version.py`) embedded for `micn doctor`.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=MICN_LIBTORCH_VERSION=unknown");
        return;
    };
    let lib = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    let version = lib
        .parent()
        .map(|torch| torch.join("version.py"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MICN_LIBTORCH_VERSION={version}");
}
