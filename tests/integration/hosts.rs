//! Two hosts for real: two network namespaces joined by a veth pair, each with its own address,
//! and real OpenMPI over TCP between them (`mpirun` in the first, its daemon and rank 1 in the
//! second, reached through a remote-shell agent that stands in for ssh). The tests create the
//! namespaces and always remove them; they are skipped, saying so, where that is not possible
//! (not root, no `ip netns`).
//!
//! A 2-host job equals 2 local ranks bit for bit; a link cut for good makes the job abort
//! (rank 0's watchdog names rank 1), the launcher kill what is left and resume on the surviving
//! host from the newest checkpoint, leaving no process behind; a link that comes back makes the
//! launcher stop the shrunken job with a checkpoint and resume on both hosts.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::launch::{finish, launcher, processes_mentioning};

/// Two namespaces `<name>a` and `<name>b` on the subnet `10.251.<n>.0/24`, linked by a veth pair.
struct TwoHosts {
    ns: [String; 2],
    dev: [String; 2],
    addr: [String; 2],
    subnet: String,
    /// The remote-shell agent and the hostfile listing both hosts.
    agent: PathBuf,
    hostfile: PathBuf,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl TwoHosts {
    /// The namespaces, or why they cannot be made here (the test is then skipped).
    fn new(dir: &Path, n: u8) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need root".into());
        }
        let tag = format!("micn{}x{n}", std::process::id() % 100_000);
        let hosts = TwoHosts {
            ns: [format!("{tag}a"), format!("{tag}b")],
            dev: [format!("{tag}va"), format!("{tag}vb")],
            addr: [format!("10.251.{n}.1"), format!("10.251.{n}.2")],
            subnet: format!("10.251.{n}.0/24"),
            agent: dir.join("agent.sh"),
            hostfile: dir.join("hosts"),
        };
        // From here on, Drop removes whatever was made.
        for ns in &hosts.ns {
            ip(&["netns", "add", ns])?;
        }
        let [a, b] = &hosts.ns;
        let [va, vb] = &hosts.dev;
        ip(&["link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b])?;
        for i in 0..2 {
            let ns = &hosts.ns[i];
            ip(&["-n", ns, "addr", "add", &format!("{}/24", hosts.addr[i]), "dev", &hosts.dev[i]])?;
            ip(&["-n", ns, "link", "set", &hosts.dev[i], "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Like ssh: runs the command on the host, or fails (status 255) when the host's end of
        // the link is down and it cannot be reached.
        let agent = format!(
            "#!/bin/sh\nhost=$1; shift\ncase $host in\n  {a1}) ns={a}; dev={va};;\n  {a2}) ns={b}; dev={vb};;\n  *) echo \"agent: unknown host $host\" >&2; exit 255;;\nesac\n\
             ip -n $ns -o link show $dev | grep -q 'state UP' || {{ echo \"agent: $host: no route to host\" >&2; exit 255; }}\n\
             exec ip netns exec $ns /bin/sh -c \"$*\"\n",
            a1 = hosts.addr[0],
            a2 = hosts.addr[1],
        );
        std::fs::write(&hosts.agent, agent).map_err(|e| e.to_string())?;
        Command::new("chmod").arg("+x").arg(&hosts.agent).status().map_err(|e| e.to_string())?;
        std::fs::write(&hosts.hostfile, format!("{} slots=1\n{} slots=1\n", hosts.addr[0], hosts.addr[1]))
            .map_err(|e| e.to_string())?;
        Ok(hosts)
    }

    /// `micn-launch` started in the first namespace over both hosts, with `args` after the
    /// placement and MPI transport arguments.
    fn launch(&self, args: &[&str]) -> Command {
        let template = launcher();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns[0]]).arg(template.get_program());
        for (k, v) in template.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let agent = self.agent.display().to_string();
        cmd.args(["--np", "2", "--hostfile"]).arg(&self.hostfile);
        for arg in [
            "--mca plm_rsh_agent",
            &agent,
            "--mca btl tcp,self",
            &format!("--mca btl_tcp_if_include {}", self.subnet),
            &format!("--mca oob_tcp_if_include {}", self.subnet),
        ] {
            cmd.arg(format!("--mpirun-arg={arg}"));
        }
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Take the second host's end of the link down (`false`) or up again (`true`).
    fn link(&self, up: bool) {
        ip(&["-n", &self.ns[1], "link", "set", &self.dev[1], if up { "up" } else { "down" }]).unwrap();
    }

    /// Bytes sent and received on the second host's end of the link.
    fn link_bytes(&self) -> u64 {
        let mut out = Command::new("ip");
        out.args(["netns", "exec", &self.ns[1], "cat"]).args([
            format!("/sys/class/net/{}/statistics/tx_bytes", self.dev[1]),
            format!("/sys/class/net/{}/statistics/rx_bytes", self.dev[1]),
        ]);
        let text = String::from_utf8(out.output().unwrap().stdout).unwrap();
        text.split_whitespace().map(|n| n.parse::<u64>().unwrap()).sum()
    }

    /// The processes left in the second host's namespace.
    fn pids_in_second(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.ns[1]]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in &self.ns {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The hosts, or `None` after saying why the test is skipped.
fn two_hosts(dir: &Path, n: u8) -> Option<TwoHosts> {
    match TwoHosts::new(dir, n) {
        Ok(hosts) => Some(hosts),
        Err(why) => {
            eprintln!("skipped: two hosts in network namespaces cannot be made here: {why}");
            None
        }
    }
}

/// A training configuration in `dir` (run directory `dir/run`), its path.
fn config(dir: &Path, sets: &[&str]) -> PathBuf {
    let path = dir.join("train.toml");
    std::fs::write(&path, crate::small_config(&dir.join("run"), sets).to_toml()).unwrap();
    path
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap()).unwrap()
}

#[test]
fn a_two_host_job_equals_two_local_ranks_and_its_link_carries_what_the_summary_says() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(hosts) = two_hosts(tmp.path(), 1) else { return };
    let sets = ["train.max_steps=30", "train.epochs=1"];
    let (remote, local) = (tmp.path().join("remote"), tmp.path().join("local"));
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::create_dir_all(&local).unwrap();
    let before = hosts.link_bytes();
    let mut there = hosts.launch(&["--config"]);
    there.arg(config(&remote, &sets));
    let (code, stderr) = finish(there.spawn().unwrap(), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    let on_link = hosts.link_bytes() - before;
    let mut here = launcher();
    here.args(["--np", "2", "--config"]).arg(config(&local, &sets));
    let (code, stderr) = finish(here.spawn().unwrap(), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    let model = |dir: &Path| std::fs::read(dir.join("run/model.safetensors")).unwrap();
    assert!(model(&remote) == model(&local), "the 2-host model differs from the 2-local-rank model");
    // A link that goes down for 2 s, well within the watchdog's limit: TCP carries on, the
    // job finishes as if nothing had happened.
    let blip = tmp.path().join("blip");
    std::fs::create_dir_all(&blip).unwrap();
    let longer = ["train.max_steps=120", "train.epochs=1", "train.log_every_steps=5", "train.watchdog_seconds=30"];
    let mut cmd = hosts.launch(&["--config"]);
    let child = cmd.arg(config(&blip, &longer)).spawn().unwrap();
    crate::launch::wait_for_training_past(&blip.join("run"), 10);
    hosts.link(false);
    std::thread::sleep(Duration::from_secs(2));
    hosts.link(true);
    let (code, stderr) = finish(child, Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    let mut uncut = launcher();
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    uncut.args(["--np", "2", "--config"]).arg(config(&plain, &longer));
    let (code, stderr) = finish(uncut.spawn().unwrap(), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(model(&blip) == model(&plain), "a run through a 2 s link cut differs from one without");
    let s = summary(&remote);
    assert_eq!(s["world_size"], 2);
    // Rank 1's gradient messages go out and the sums come back: twice what one rank sends per
    // step, plus TCP/IP headers, MPI's own framing, start-up and evaluation traffic.
    let steps = s["steps"].as_f64().unwrap();
    let per_step = on_link as f64 / steps;
    let sent = s["bytes_sent_per_step"].as_f64().unwrap();
    eprintln!(
        "veth link: {per_step:.0} bytes per step (both directions, all traffic); summary: {sent:.0} sent per rank"
    );
    assert!(per_step >= 2.0 * sent, "{per_step} bytes per step on the link, {sent} sent by each rank");
    assert!(per_step <= 4.0 * sent + 20_000.0, "{per_step} bytes per step on the link, {sent} sent by each rank");
}

/// Train `max_steps` on both hosts, cutting the link after step 20; the launcher restarts on
/// what answers.
fn cut_for_good(
    tmp: &Path,
    hosts: &TwoHosts,
    max_steps: u64,
    extra: &[&str],
) -> (std::process::Child, PathBuf, Instant) {
    let max_steps = format!("train.max_steps={max_steps}");
    let sets = [
        &max_steps,
        "train.epochs=1000",
        "train.log_every_steps=5",
        "checkpoint.every_steps=10",
        "train.watchdog_seconds=6",
    ];
    let config = config(tmp, &sets);
    let mut args = vec!["--max-restarts", "2", "--restart-backoff", "0", "--min-np", "1", "--probe-timeout", "2"];
    args.extend_from_slice(&["--exit-grace", "5"]);
    args.extend_from_slice(extra);
    args.push("--config");
    let child = hosts.launch(&args).arg(&config).spawn().unwrap();
    crate::launch::wait_for_training_past(&tmp.join("run"), 20);
    hosts.link(false);
    (child, config, Instant::now())
}

#[test]
fn a_link_cut_for_good_shrinks_the_job_onto_the_surviving_host_with_no_process_left() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(hosts) = two_hosts(tmp.path(), 2) else { return };
    let (child, config, cut_at) = cut_for_good(tmp.path(), &hosts, 400, &["--regrow-interval", "0"]);
    // When rank 0's log says it aborted, and when the job resumed on one host.
    let log = tmp.path().join("run/logs/rank-0.log");
    let seen = |what: &str| std::fs::read_to_string(&log).unwrap_or_default().contains(what);
    let mut marks = [("ERROR watchdog", None), ("world_size=1 ", None)];
    while marks.iter().any(|m| m.1.is_none()) && cut_at.elapsed() < Duration::from_secs(120) {
        for (what, at) in &mut marks {
            if at.is_none() && seen(what) {
                *at = Some(cut_at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, stderr) = finish(child, Duration::from_secs(180));
    let took = cut_at.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    let [aborted, resumed] = marks.map(|(_, at)| at.map_or(f64::NAN, |d| d.as_secs_f64()));
    eprintln!(
        "a link cut for good (watchdog 6 s, exit grace 5 s, probe timeout 2 s): rank 0 aborted {aborted:.1} s after \
         the cut, the job resumed on the surviving host after {resumed:.1} s and finished after {:.1} s",
        took.as_secs_f64()
    );
    assert!(stderr.contains("watchdog: rank 0 (") && stderr.contains("waiting for rank 1 ("), "{stderr}");
    assert!(stderr.contains(&format!("host(s) {} do not answer: resuming on 1 rank(s)", hosts.addr[1])), "{stderr}");
    let s = summary(tmp.path());
    assert_eq!((s["world_size"].as_u64(), s["steps"].as_u64()), (Some(1), Some(400)), "{s}");
    assert_eq!(processes_mentioning(config.to_str().unwrap()), Vec::<i32>::new(), "processes of the job were left");
    assert_eq!(hosts.pids_in_second(), Vec::<String>::new(), "processes were left on the lost host");
}

#[test]
fn a_lost_host_that_answers_again_is_taken_back_from_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(hosts) = two_hosts(tmp.path(), 3) else { return };
    let (child, _, _) = cut_for_good(tmp.path(), &hosts, 1_000_000, &["--regrow-interval", "2"]);
    let log = tmp.path().join("run/logs/rank-0.log");
    // How many attempts have started on `n` ranks (the training line of each).
    let started_on =
        |n: usize| std::fs::read_to_string(&log).unwrap_or_default().matches(&format!("world_size={n} ")).count();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(120), "{what} did not happen");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("a restart on the surviving host", &|| started_on(1) >= 1);
    hosts.link(true);
    wait_for("a restart on both hosts again", &|| started_on(2) >= 2);
    crate::launch::wait_for_training_past(&tmp.path().join("run"), 60);
    // SAFETY: a graceful stop of the launcher this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, stderr) = finish(child, Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("answer again: stopping the job with a checkpoint"), "{stderr}");
    let s = summary(tmp.path());
    assert_eq!((s["world_size"].as_u64(), s["stopped_by_signal"].as_bool()), (Some(2), Some(true)), "{s}");
}
