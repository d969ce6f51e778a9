//! `micn-launch` as a user runs it: the printed command, and clear errors for a missing
//! hostfile or a missing `mpirun` (exit status 3, as for any input error: nothing started).
use std::process::Command;

fn launch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_micn-launch")).args(args).output().expect("micn-launch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dry_run_prints_the_mpirun_command() {
    let (code, stdout, _) =
        launch(&["--np", "3", "--micn", "/opt/micn", "--dry-run", "--config", "c.toml", "--set", "micn.phi=0.5"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("mpirun -np 3 --tag-output"), "{stdout}");
    assert!(stdout.trim_end().ends_with("/opt/micn train --config c.toml --set micn.phi=0.5"), "{stdout}");
}

#[test]
fn a_missing_hostfile_is_named() {
    let (code, _, stderr) = launch(&["--np", "2", "--hostfile", "/no/such/hosts", "--", "doctor"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("/no/such/hosts"), "{stderr}");
}

#[test]
fn a_missing_mpirun_is_a_clear_error() {
    let (code, _, stderr) = launch(&["--np", "2", "--mpirun", "/no/such/mpirun", "--", "doctor"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("cannot start `/no/such/mpirun`") && stderr.contains("OpenMPI"), "{stderr}");
}

#[test]
fn without_config_or_arguments_it_says_what_to_give() {
    let (code, _, stderr) = launch(&["--np", "2"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("--config"), "{stderr}");
}

/// An `mpirun` stand-in: a shell script at `dir/mpirun` running `body`.
fn fake_mpirun(dir: &std::path::Path, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("mpirun");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_job_killed_from_outside_is_said_to_be_so_and_points_at_the_rank_logs() {
    let tmp = tempfile::tempdir().unwrap();
    // mpirun killed by SIGKILL (as the kernel's out-of-memory killer does) before any rank spoke.
    let mpirun = fake_mpirun(tmp.path(), "kill -9 $$");
    let args = ["--np", "1", "--mpirun", &mpirun, "--micn", "/bin/true", "--max-restarts", "0", "--", "doctor"];
    let (code, stdout, stderr) = launch(&args);
    let said = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("was killed (signal: 9 (SIGKILL)) from outside"), "{said}");
    assert!(said.contains("no rank reported an error; each rank's full log is in run.dir/logs/"), "{said}");
    assert!(!said.contains("see the error messages above"), "{said}");
    // A rank that reported its error is pointed at instead.
    let mpirun = fake_mpirun(tmp.path(), "echo '[1,0]<stderr>:error: rank 0: the disk is full' >&2; exit 1");
    let args = ["--np", "1", "--mpirun", &mpirun, "--micn", "/bin/true", "--max-restarts", "0", "--", "doctor"];
    let (code, stdout, stderr) = launch(&args);
    let said = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("job failed (exit status: 1)") && said.contains("see the error messages above"), "{said}");
}

#[test]
fn mpirun_waiting_after_its_own_internal_error_is_killed_after_the_exit_grace() {
    let tmp = tempfile::tempdir().unwrap();
    // OpenMPI 4.1 under `ulimit -n 32`: its daemon out of pipes logs this, then waits for good.
    let said = "[vm:1] [[4321,0],0] ORTE_ERROR_LOG: The system limit on number of pipes a process can open \
                was reached in file ../../../../../orte/mca/iof/base/iof_base_setup.c at line 128";
    let limit_line = said;
    let mpirun = fake_mpirun(tmp.path(), &format!("echo '{limit_line}' >&2; exec sleep 300"));
    let args = ["--np", "1", "--mpirun", &mpirun, "--micn", "/bin/true", "--max-restarts", "0", "--exit-grace", "1"];
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = launch(&[&args[..], &["--", "doctor"]].concat());
    let said = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{said}");
    assert!(started.elapsed().as_secs() < 60, "{said}");
    assert!(said.contains("mpirun has not ended the job 1 s after the error above (--exit-grace)"), "{said}");
    assert!(said.contains("mpirun met a limit of this host: raise it for the job (`ulimit -n`"), "{said}");
    assert!(said.contains("job was killed (mpirun did not end it after the error)"), "{said}");
    assert!(said.contains("see the error messages above"), "{said}");
    // mpirun may crash there instead (a help file it cannot open, out of files too): the limit is
    // named all the same, at the restart (which meets it again) and at the end.
    let mpirun = fake_mpirun(tmp.path(), &format!("echo '{limit_line}' >&2; exit 139"));
    let args =
        ["--np", "1", "--mpirun", &mpirun, "--micn", "/bin/true", "--max-restarts", "1", "--restart-backoff", "0"];
    let (code, stdout, stderr) = launch(&[&args[..], &["--", "doctor"]].concat());
    let said = format!("{stdout}{stderr}");
    assert_eq!(code, 139, "{said}");
    let hint = "mpirun met a limit of this host: raise it for the job (`ulimit -n`, `ulimit -u`); ";
    assert!(said.contains(&format!("job failed (exit status: 139); {hint}restarting in 0 s")), "{said}");
    assert!(said.contains(&format!("{hint}see the error messages above")), "{said}");
    // A job that goes on printing after such a line is left to run.
    let mpirun = fake_mpirun(
        tmp.path(),
        "echo '[vm:1] [[4321,0],0] ORTE_ERROR_LOG: Not found in file base/x.c at line 9' >&2\n\
         for i in $(seq 10); do echo \"[1,0]<stdout>:step $i\"; sleep 0.5; done",
    );
    // A grace well above the gaps between its lines, on a loaded machine too, and well below the
    // 5 s the job prints for after the line.
    let args = ["--np", "1", "--mpirun", &mpirun, "--micn", "/bin/true", "--max-restarts", "0", "--exit-grace", "3"];
    let (code, stdout, stderr) = launch(&[&args[..], &["--", "doctor"]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("step 10"), "{stdout}{stderr}");
}

/// A stop asked twice while the job starts, before mpirun passes signals on (a SIGTERM then would
/// reach the ranks late, as a graceful stop, or be lost): the firmer stop is held as the first
/// was and sent once the ranks take stop signals, so the job stops at once then.
#[test]
fn a_stop_asked_twice_while_the_job_starts_ends_it_at_once_once_the_ranks_have_started() {
    let tmp = tempfile::tempdir().unwrap();
    // This mpirun ignores both signals for its first second, then passes them on to its rank.
    let mpirun = fake_mpirun(
        tmp.path(),
        "trap '' TERM USR1\nsleep 1\n\
         trap 'echo \"[1,0]<stdout>:got TERM\"; exit 143' TERM\n\
         trap 'echo \"[1,0]<stdout>:got USR1\"; exit 0' USR1\n\
         echo '[1,0]<stderr>:micn: this rank now takes stop signals (micn-launch)' >&2\n\
         while :; do sleep 0.1; done",
    );
    let args = ["--np", "1", "--mpirun", &mpirun, "--micn", "/bin/true", "--max-restarts", "0", "--", "doctor"];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_micn-launch"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for wait in [300, 200] {
        std::thread::sleep(std::time::Duration::from_millis(wait));
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() > 30 {
            child.kill().unwrap();
            panic!("the job went on after the stop asked twice");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("the job stops at once, without a checkpoint, once its ranks have started"), "{said}");
    assert!(said.contains("got TERM") && !said.contains("got USR1"), "{said}");
    assert!(said.contains("stopped at once, as the stop asked again says"), "{said}");
}
