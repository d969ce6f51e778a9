//! Link fixes for libtorch, read from `torch-sys` (`DEP_TCH_LIBTORCH_LIB`):
//!
//! - an rpath to the libtorch directory, so `micn` runs without `LD_LIBRARY_PATH`. `MICN_RPATH`
//!   replaces it: empty for none (the bundle of `cluster/gpu-check.sh`, which finds the target
//!   machine's libtorch through `LD_LIBRARY_PATH`), or another directory list (`$ORIGIN/lib`);
//! - `libtorch_cuda` linked with `--no-as-needed` when present: nothing references it by symbol,
//!   so the linker would drop it and CUDA would be silently unavailable on GPU machines;
//! - the libtorch version (from `torch/version.py`) and whether it has CUDA, embedded for
//!   `micn doctor`;
//! - the code version (`MICN_CODE_VERSION`), which `micn --version`, `micn doctor` and every
//!   checkpoint's `state.json` carry: the package version, and in a git checkout the commit,
//!   marked `.modified` when the binary's sources differ from it (`0.1.0+96649e5d2c41.modified`).
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rustc-env=MICN_CODE_VERSION={}", code_version());
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

/// The files the binary is built from (`launcher/` is a package of its own).
const SOURCES: [&str; 4] = ["src", "build.rs", "Cargo.toml", "Cargo.lock"];

/// `0.1.0+<commit>[.modified]`, or the package version alone outside a git checkout (or without
/// git). Rerun when the commit, the index or the sources change.
fn code_version() -> String {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    for path in SOURCES {
        println!("cargo:rerun-if-changed={path}");
    }
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) else {
        return version;
    };
    for file in ["HEAD", "index", "packed-refs"] {
        println!("cargo:rerun-if-changed={git_dir}/{file}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={git_dir}/{branch}");
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return version;
    };
    let status = [&["status", "--porcelain", "--untracked-files=no", "--"][..], &SOURCES[..]].concat();
    let modified = git(&status).is_some_and(|s| !s.is_empty());
    format!("{version}+{commit}{}", if modified { ".modified" } else { "" })
}
