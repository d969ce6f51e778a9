//! Link fixes for libtorch, read from `torch-sys` (`DEP_TCH_LIBTORCH_LIB`):
//!
//! - an rpath to the libtorch directory, so `micn` runs without `LD_LIBRARY_PATH`. `MICN_RPATH`
//!   replaces it: empty for none (the bundle of `cluster/gpu-check.sh`, which finds the target
//!   machine's libtorch through `LD_LIBRARY_PATH`), or another directory list (`$ORIGIN/lib`);
//! - `libtorch_cuda` linked with `--no-as-needed` when present: nothing references it by symbol,
//!   so the linker would drop it and CUDA would be silently unavailable on GPU machines;
//! - the libtorch version (from `torch/version.py`) and whether it has CUDA, embedded for
//!   `micn doctor`.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=MICN_RPATH");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=MICN_LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=MICN_LIBTORCH_CUDA=0");
        return;
    };
    let lib = Path::new(&lib_dir);
    let rpath = std::env::var("MICN_RPATH").unwrap_or_else(|_| lib_dir.clone());
    if !rpath.is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    }
    let with_cuda = lib.join("libtorch_cuda.so").exists();
    if with_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rustc-env=MICN_LIBTORCH_CUDA={}", u8::from(with_cuda));
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
