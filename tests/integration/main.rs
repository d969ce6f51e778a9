//! Integration tests, one binary so libtorch is linked once. Each module owns one area.
mod arguments;
mod attributes;
mod checkpoint;
mod cluster_files;
mod comm;
mod dataset_files;
mod device_path;
mod dist;
mod doctor;
mod experiment;
mod features;
mod hosts;
mod inputs;
mod interactions;
mod launch;
mod predict;
mod prepare;
mod runs;
mod sequences;
mod tensorboard;
mod train;
mod twin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `micn` binary cargo built for these tests.
pub fn micn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_micn"))
}

/// A Python that set-up installed: the variable `env` when set, else the `venv` under set-up's
/// cache (`MICN_CACHE`, else `~/.cache/micn`); `what` says what it holds.
pub fn cached_python(env: &str, venv: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("MICN_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/micn"));
        cache.join(venv).join("bin/python")
    });
    assert!(path.exists(), "{} not found: run `bash cluster/setup-node.sh` (installs {what})", path.display());
    path
}

/// `mpirun -np N` with the flags these 2-core, root-run machines need; fails the test with a
/// clear message when OpenMPI is not installed (`cluster/setup-node.sh` installs it).
pub fn mpirun(np: usize) -> Command {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "mpirun not found: run `bash cluster/setup-node.sh` (installs OpenMPI)");
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", &np.to_string(), "--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMP_NUM_THREADS", "1");
    cmd
}

/// Run and require success, showing everything the command printed when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A copy of the directory `from` at `to`, its subdirectories included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &to.join(entry.file_name())),
            false => drop(std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap()),
        }
    }
}

/// DIEN + MICN on the small shared synthetic dataset, one thread, writing to `run`; `extra` are
/// further `--set` overrides (applied last).
pub fn small_config(run: &Path, extra: &[&str]) -> micn::config::Config {
    let mut sets = vec![
        format!("data.dir={:?}", train::dataset_dir().display().to_string()),
        format!("run.dir={:?}", run.display().to_string()),
        "device=cpu".into(),
        "data.max_hist_len=10".into(),
        "model.kind=dien".into(),
        "micn.num_negatives=8".into(),
        "train.global_batch_size=48".into(),
        "train.lr=0.001".into(),
        "train.threads=1".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let overrides: Vec<micn::config::Override> =
        sets.iter().map(|s| micn::config::Override::parse(s).unwrap()).collect();
    micn::config::Config::load(None, &overrides).unwrap()
}

/// A DIN trained for 2 steps into `run` (by [`small_config`]): a model to score, export or damage.
pub fn tiny_din_run(run: &Path) {
    let cfg = small_config(run, &["model.kind=din", "train.max_steps=2", "train.epochs=1"]);
    micn::train::train_from(&cfg, &micn::dist::SingleProcess, &micn::train::Resume::Fresh).unwrap();
}

/// The lock of the run in `run` held as a training run holds it (`flock`, for at most 30 s), with
/// `holder` written where the run writes who it is; returned once it is held, for the caller to
/// kill.
pub fn hold_run_lock(run: &Path, holder: &str) -> std::process::Child {
    let lock = run.join(".lock");
    std::fs::write(&lock, holder).unwrap();
    let child = Command::new("flock").arg(&lock).args(["sleep", "30"]).spawn().unwrap();
    let held = || !Command::new("flock").arg("-n").arg(&lock).arg("true").status().unwrap().success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !held() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// A small tmpfs, unmounted when dropped.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mount a tmpfs of `bytes` at `dir`; `Err(why)` where that is not possible (not root, or a
    /// container without the capability), for the caller to skip with the reason printed.
    pub fn mount(dir: &Path, bytes: u64) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
