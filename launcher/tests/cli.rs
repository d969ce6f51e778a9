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
