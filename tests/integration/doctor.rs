//! `micn doctor`: single process and under `mpirun -np 2`.
use crate::{micn_bin, mpirun, run_ok};

#[test]
fn doctor_without_mpirun_is_a_world_of_one() {
    let out = run_ok(std::process::Command::new(micn_bin()).args(["doctor", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["world_size"], 1);
    assert_eq!(report["backend"], "single");
    assert!(report["libtorch_version"].as_str().unwrap().starts_with("2.11.0"), "{report}");
}

#[test]
fn slurm_tasks_that_mpi_does_not_join_are_refused_naming_srun_mpi_pmix() {
    // What `srun -n 2 micn ...` without `--mpi=pmix` gives each task: Slurm's step size, no MPI.
    let out = std::process::Command::new(micn_bin())
        .args(["doctor"])
        .env("SLURM_STEP_NUM_TASKS", "2")
        .env("SLURM_PROCID", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("Slurm started 2 tasks") && err.contains("srun --mpi=pmix"), "{err}");
    // One task, and a job step of two that MPI does join, are fine.
    let one = std::process::Command::new(micn_bin()).arg("doctor").env("SLURM_STEP_NUM_TASKS", "1").output().unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let joined = run_ok(mpirun(2).args(["-x", "SLURM_STEP_NUM_TASKS=2"]).arg(micn_bin()).arg("doctor"));
    assert!(String::from_utf8_lossy(&joined.stdout).contains("world size 2"));
    // mpirun inside an allocation of four nodes: the ranks on the three nodes beside mpirun's
    // inherit the step of its daemons (`srun --ntasks=3`), which is not theirs.
    let daemons = run_ok(mpirun(2).args(["-x", "SLURM_STEP_NUM_TASKS=3"]).arg(micn_bin()).arg("doctor"));
    assert!(String::from_utf8_lossy(&daemons.stdout).contains("world size 2"));
}

/// GPUs the NVIDIA driver's own tool lists (`nvidia-smi -L`: "GPU 0: NVIDIA H200 (UUID: ...)"),
/// or `None` where the tool is absent or fails.
fn nvidia_smi_gpus() -> Option<Vec<String>> {
    let out = std::process::Command::new("nvidia-smi").arg("-L").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let names = text
        .lines()
        .filter_map(|l| l.strip_prefix("GPU "))
        .filter_map(|l| Some(l.split_once(": ")?.1.split(" (UUID").next()?.to_string()))
        .collect();
    Some(names)
}

/// Holds on a machine with or without a GPU: the doctor's CUDA facts agree with one another,
/// with what this libtorch is (a CUDA build ships the CUDA runtime, cuDNN and NCCL), and with
/// the driver's own tool where there is one.
#[test]
fn doctor_reports_cuda_consistently_with_libtorch_and_the_driver() {
    let out = run_ok(std::process::Command::new(micn_bin()).args(["doctor", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rank = &report["ranks"][0];
    let available = rank["cuda_available"].as_bool().unwrap();
    let devices = rank["cuda_devices"].as_u64().unwrap() as usize;
    let gpus = rank["gpus"].as_array().unwrap();
    let libraries = &rank["cuda_libraries"];
    assert_eq!(available, devices > 0, "{rank}");
    if report["libtorch_cuda"] == true {
        // The libraries load with libtorch_cuda whether or not there is a GPU.
        assert!(libraries["runtime"].as_str().is_some_and(|v| v.starts_with("13.")), "{rank}");
        for lib in ["cudnn", "nccl"] {
            let version = libraries[lib].as_str().unwrap_or_else(|| panic!("no {lib} version: {rank}"));
            assert!(version.split('.').count() == 3 && !version.starts_with("0."), "{lib} {version}");
        }
    }
    if available {
        assert_eq!(gpus.len(), devices, "the driver lists what libtorch counts: {rank}");
        assert!(libraries["driver"].is_string(), "{rank}");
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(gpu["index"], i);
            assert!(!gpu["name"].as_str().unwrap().is_empty(), "{gpu}");
            assert!(gpu["memory_bytes"].as_u64().unwrap() > 0, "{gpu}");
        }
    }
    match nvidia_smi_gpus() {
        Some(names) => {
            assert!(available, "nvidia-smi lists {names:?} but libtorch sees no CUDA device");
            // nvidia-smi ignores CUDA_VISIBLE_DEVICES; CUDA (and so the doctor) applies it.
            if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() {
                let ours: Vec<&str> = gpus.iter().map(|g| g["name"].as_str().unwrap()).collect();
                assert_eq!(ours, names, "GPU names: doctor against nvidia-smi -L");
            }
        }
        None if !std::path::Path::new("/dev/nvidiactl").exists() => {
            assert!(!available && gpus.is_empty(), "no NVIDIA driver here, yet: {rank}");
        }
        None => {}
    }
    // The text report shows the same: a line per GPU.
    let text = String::from_utf8(run_ok(std::process::Command::new(micn_bin()).arg("doctor")).stdout).unwrap();
    assert_eq!(text.matches("  GPU ").count(), gpus.len(), "{text}");
    if report["libtorch_cuda"] == true {
        assert!(text.contains("CUDA driver ") && text.contains("NCCL "), "{text}");
    }
}

#[test]
fn doctor_under_mpirun_reports_both_ranks() {
    let out = run_ok(mpirun(2).arg(micn_bin()).arg("doctor"));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("communicator  mpi (world size 2)"), "{text}");
    assert!(text.contains("rank 0 of 2"), "{text}");
    assert!(text.contains("rank 1 of 2"), "{text}");
    assert!(text.contains("Open MPI"), "{text}");
    // Rank 0 prints the report once for the whole job; the MPI library's own string ends in a
    // NUL that is not printed.
    assert_eq!(text.matches("libtorch ").count(), 1, "{text}");
    assert!(!text.contains('\0'), "{text:?}");
}

/// Commands that work on files as one process are refused under mpirun (each rank would print
/// and write the same); an argument error, the same on every rank, is said once by the first
/// rank of its command line, also before the communicator is up.
#[test]
fn one_process_commands_are_refused_under_mpirun_and_argument_errors_are_said_once() {
    let out = mpirun(2).arg(micn_bin()).args(["data", "stats", "/nonexistent"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("micn data runs as one process, not under mpirun"), "{stderr}");
    let out = mpirun(2).arg(micn_bin()).args(["--log-format", "json", "doctor", "--bogus"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let mut ranks: Vec<u64> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "ERROR")
        .map(|v| v["rank"].as_u64().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, [0], "{stderr}");
    // `mpirun a : b`: each command line's error, from the first rank of each.
    let out = mpirun(1)
        .arg(micn_bin())
        .args(["doctor", "--bogus"])
        .args([":", "-np", "2"])
        .arg(micn_bin())
        .args(["train", "--odd"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.matches("unexpected argument '--bogus'").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("unexpected argument '--odd'").count(), 1, "{stderr}");
}

#[test]
fn doctor_json_under_mpirun_lists_ranks_0_and_1() {
    let out = run_ok(mpirun(2).arg(micn_bin()).args(["--log-format", "json", "doctor", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranks: Vec<u64> = report["ranks"].as_array().unwrap().iter().map(|r| r["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, vec![0, 1]);
    let locals: Vec<u64> =
        report["ranks"].as_array().unwrap().iter().map(|r| r["local_rank"].as_u64().unwrap()).collect();
    assert_eq!(locals, vec![0, 1], "both ranks share this host");
    let library = report["mpi_library"].as_str().unwrap();
    assert!(library.contains("Open MPI") && !library.contains('\0'), "{library:?}");
    // Every log line is a JSON object carrying its rank.
    let mut log_ranks: Vec<u64> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .map(|v| v["rank"].as_u64().expect("a rank field"))
        .collect();
    log_ranks.sort();
    log_ranks.dedup();
    assert_eq!(log_ranks, vec![0, 1]);
}

#[test]
fn text_log_lines_carry_the_rank() {
    let out = run_ok(mpirun(2).arg(micn_bin()).arg("doctor"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.lines().any(|l| l.starts_with("[rank 0] ")), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("[rank 1] ")), "{stderr}");
}

#[test]
fn every_rank_logs_the_device_it_computes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = crate::small_config(&tmp.path().join("run"), &["model.kind=wide_deep", "train.max_steps=1"]);
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let out = run_ok(mpirun(2).arg(micn_bin()).args(["--log-format", "json", "train", "--config"]).arg(&config));
    let mut ranks: Vec<u64> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "device" || v["message"] == "device")
        .inspect(|v| assert!(v.to_string().contains("\"cpu\""), "{v}"))
        .map(|v| v["rank"].as_u64().expect("a rank field"))
        .collect();
    ranks.sort();
    assert_eq!(ranks, vec![0, 1], "one device line per rank");
}
