//! The hosts of a job, for elastic restarts: the hostfile read (`host slots=N` per line), each
//! host probed through the remote shell mpirun itself uses (`--mca plm_rsh_agent`, else ssh),
//! and the hostfile of the hosts that answer written for the next attempt.
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// One line of a hostfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Ranks it may run (`slots=N`; 1 when absent).
    pub slots: usize,
    /// The line as written (other options such as `max_slots` kept).
    line: String,
}

/// The words OpenMPI's hostfile parser takes after a host name, each as `word=value` (spaces
/// around `=` allowed): the slot count, its maximum, and the options mpirun passes on.
const SLOT_WORDS: &[&str] = &["slots", "cpu", "count"];
const MAX_WORDS: &[&str] = &[
    "slots-max",
    "slots_max",
    "max-slots",
    "max_slots",
    "cpu-max",
    "cpu_max",
    "max-cpu",
    "max_cpu",
    "count-max",
    "count_max",
    "max-count",
    "max_count",
];
/// A further number mpirun takes (`boards`, `sockets`, `cores`, `cpu_set` and their `_per_`
/// forms, which its lexer knows, mpirun 4.1 refuses as a parse error).
const NUMBER_WORDS: &[&str] = &["port"];
const TEXT_WORDS: &[&str] = &["username", "user-name", "user_name"];

/// The most bytes of a hostfile: some hundred thousand hosts.
const MAX_HOSTFILE: u64 = 16 << 20;

/// A hostfile's text, refused when larger than [`MAX_HOSTFILE`] (`/dev/zero` given by mistake)
/// before it fills memory. (micn's own `io_error::read_text_file` does the same for its files;
/// the launcher does not link micn, which links libtorch.)
fn read_bounded(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_HOSTFILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_HOSTFILE {
        bail!("larger than {} MiB, more than any hostfile holds", MAX_HOSTFILE >> 20);
    }
    Ok(text)
}

/// The hosts of an OpenMPI hostfile, in order; comments (`#`, `//`) and blank lines skipped.
/// What mpirun would refuse at every attempt (an unknown word, a bad number, a maximum below the
/// slot count, a slot count for a host an earlier line named) is refused here, naming the line,
/// so no restart is spent on it.
pub fn read_hostfile(path: &Path) -> anyhow::Result<Vec<Host>> {
    let text = read_bounded(path).with_context(|| format!("hostfile {}", path.display()))?;
    let mut hosts: Vec<Host> = Vec::new();
    // Per host name: the first line naming it.
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for (i, raw) in text.split('\n').enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        if raw.ends_with('\r') {
            bail!("{at}: ends with a carriage return (a file saved with Windows line endings), which mpirun refuses");
        }
        let line = raw.split('#').next().unwrap_or("");
        let line = line.split("//").next().unwrap_or("").trim();
        if line.contains("/*") {
            bail!("{at}: block comments (/* */) are not read here; start a comment with #");
        }
        let spaced = line.replace('=', " = ");
        let mut words = spaced.split_whitespace();
        let Some(name) = words.next() else { continue };
        if name == "=" || name.starts_with('+') {
            bail!("{at}: expected a host name first, got `{name}`");
        }
        // mpirun's node-name parser takes ASCII letters, digits, dots and hyphens (after an
        // optional `user@`), and ends every job on another character.
        let host = name.rsplit_once('@').map_or(name, |(_, host)| host);
        if let Some(c) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))) {
            bail!(
                "{at}: host name `{name}` holds {c:?}, which mpirun refuses in a node name (ASCII letters, \
                 digits, dots and hyphens only)"
            );
        }
        let (mut slots, mut max) = (None, None);
        while let Some(word) = words.next() {
            let (Some("="), Some(value)) = (words.next(), words.next()) else {
                bail!("{at}: expected `{word}=VALUE` after the host name (as in `{name} slots=4`)");
            };
            // Digits only: `usize::parse` also takes `+2`, which mpirun refuses.
            let number = || {
                let digits = value.bytes().all(|b| b.is_ascii_digit());
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|_| digits)
                    .with_context(|| format!("{at}: bad {word}= value `{value}`"))
            };
            if SLOT_WORDS.contains(&word) {
                if slots.replace(number()?).is_some() {
                    bail!("{at}: the slot count is given twice");
                }
            } else if MAX_WORDS.contains(&word) {
                max = Some(number()?);
            } else if NUMBER_WORDS.contains(&word) {
                number()?;
            } else if !TEXT_WORDS.contains(&word) {
                bail!("{at}: `{word}` is not a hostfile option (slots=N, max_slots=N, ...)");
            }
        }
        if let (Some(slots), Some(max)) = (slots, max) {
            if max < slots {
                bail!("{at}: max_slots={max} is less than slots={slots}, which mpirun refuses");
            }
        }
        let first = *seen.entry(name.to_string()).or_insert(i + 1);
        if first != i + 1 && slots.is_some() {
            bail!(
                "{at}: gives {name} a slot count after line {first} named it, which mpirun refuses; give {name} \
                 one line with slots=N"
            );
        }
        hosts.push(Host { name: name.to_string(), slots: slots.unwrap_or(1), line: line.to_string() });
    }
    if hosts.is_empty() {
        bail!("hostfile {} lists no hosts", path.display());
    }
    Ok(hosts)
}

pub fn total_slots(hosts: &[Host]) -> usize {
    hosts.iter().map(|h| h.slots).sum()
}

/// Write a hostfile of `hosts` (replacing `path` whole).
pub fn write_hostfile(path: &Path, hosts: &[Host]) -> anyhow::Result<()> {
    let text: String = hosts.iter().map(|h| format!("{}\n", h.line)).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Asks hosts whether they answer, the way mpirun reaches them.
#[derive(Debug, Clone)]
pub struct Prober {
    /// The remote shell and its arguments; the host and `true` follow.
    agent: Vec<String>,
    timeout: Duration,
}

impl Prober {
    /// The remote shell mpirun is told to use (`--mca plm_rsh_agent X` among its arguments, or
    /// `OMPI_MCA_plm_rsh_agent`), else ssh without prompts.
    pub fn new(mpirun_args: &[String], timeout: Duration) -> Self {
        let given = mpirun_args
            .windows(3)
            .find(|w| w[0] == "--mca" && w[1] == "plm_rsh_agent")
            .map(|w| w[2].clone())
            .or_else(|| std::env::var("OMPI_MCA_plm_rsh_agent").ok());
        // OpenMPI takes `a : b` as "a, else b"; the first is the one it uses when present.
        let agent = match given.as_deref().and_then(|a| a.split(':').next()).map(str::trim) {
            Some(a) if !a.is_empty() => a.split_whitespace().map(String::from).collect(),
            _ => {
                let connect = format!("ConnectTimeout={}", timeout.as_secs().max(1));
                ["ssh", "-o", "BatchMode=yes", "-o", &connect].map(String::from).to_vec()
            }
        };
        Self { agent, timeout }
    }

    /// Whether `host` runs `true` within the timeout. This host is always there.
    pub async fn answers(&self, host: &str) -> bool {
        if is_this_host(host) {
            return true;
        }
        let mut cmd = Command::new(&self.agent[0]);
        cmd.args(&self.agent[1..])
            .args([host, "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let Ok(mut child) = cmd.spawn() else { return false };
        matches!(tokio::time::timeout(self.timeout, child.wait()).await, Ok(Ok(status)) if status.success())
    }

    /// Which of `hosts` answer, probed at once.
    pub async fn answering(&self, hosts: &[Host]) -> Vec<bool> {
        let probes = hosts.iter().map(|h| {
            let (prober, name) = (self.clone(), h.name.clone());
            tokio::spawn(async move { prober.answers(&name).await })
        });
        let mut out = Vec::with_capacity(hosts.len());
        for probe in probes.collect::<Vec<_>>() {
            out.push(probe.await.unwrap_or(false));
        }
        out
    }
}

/// `localhost`, a loopback address, an address of one of this machine's interfaces, or this
/// machine's own name: where mpirun itself runs, so it needs no probe.
fn is_this_host(host: &str) -> bool {
    if host == "localhost" || host.starts_with("127.") || host == "::1" {
        return true;
    }
    if let Ok(address) = host.parse::<std::net::IpAddr>() {
        return local_addresses().contains(&address);
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    ok && host == String::from_utf8_lossy(&buf[..end])
}

/// The addresses of this machine's network interfaces (in this network namespace).
fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list that is read here and freed once below.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut at = list;
        while let Some(entry) = at.as_ref() {
            if let Some(sa) = entry.ifa_addr.as_ref() {
                match sa.sa_family as i32 {
                    libc::AF_INET => {
                        let v4 = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        found.push(std::net::IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        found.push(std::net::IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            at = entry.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_lines_keep_their_options_and_slots_default_to_one() {
        let dir = std::env::temp_dir().join(format!("micn-hosts-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "# cluster\nnode1 slots=4 max_slots=8\n\nnode2 slots=2 # two GPUs\nnode3\n").unwrap();
        let hosts = read_hostfile(&path).unwrap();
        assert_eq!(
            hosts.iter().map(|h| (h.name.as_str(), h.slots)).collect::<Vec<_>>(),
            [("node1", 4), ("node2", 2), ("node3", 1)]
        );
        assert_eq!(total_slots(&hosts), 7);
        let kept = dir.join("kept");
        write_hostfile(&kept, &[hosts[0].clone(), hosts[2].clone()]).unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "node1 slots=4 max_slots=8\nnode3\n");
        // Spaces around `=`, OpenMPI's other spellings and comments, as mpirun reads them.
        std::fs::write(
            &path,
            "node1 slots = 3 // three\nnode2 cpu=2 user_name=me port=22\nnode3\nnode3\nme@node2.local max_slots=4\n",
        )
        .unwrap();
        let hosts = read_hostfile(&path).unwrap();
        assert_eq!(hosts.iter().map(|h| h.slots).collect::<Vec<_>>(), [3, 2, 1, 1, 1]);
        // What mpirun would refuse at every attempt, named with its line.
        for (text, expected) in [
            ("node1 slots=x\n", ":1: bad slots= value `x`"),
            ("node1\n\nbogus line here =\n", ":3: expected `line=VALUE` after the host name"),
            ("node1 slot=2\n", ":1: `slot` is not a hostfile option"),
            ("node1 slots=1\nnode1 slots=1\n", ":2: gives node1 a slot count after line 1 named it"),
            ("node1\nnode1 slots=2\n", ":2: gives node1 a slot count after line 1"),
            ("node1 slots=+2\n", ":1: bad slots= value `+2`"),
            ("node1 slots=2 max_slots=1\n", ":1: max_slots=1 is less than slots=2"),
            ("node1 slots=2 slots=3\n", ":1: the slot count is given twice"),
            ("node1 boards=1\n", ":1: `boards` is not a hostfile option"),
            ("node1 cores=8\n", ":1: `cores` is not a hostfile option"),
            ("node_01 slots=1\n", ":1: host name `node_01` holds '_', which mpirun refuses"),
            ("localhost:2\n", ":1: host name `localhost:2` holds ':'"),
            ("node1 slots=2\r\n", ":1: ends with a carriage return"),
            ("node1 slots\n", ":1: expected `slots=VALUE`"),
            ("/* old */\nnode1\n", ":1: block comments"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", read_hostfile(&path).unwrap_err());
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(format!("{:#}", read_hostfile(&path).unwrap_err()).contains("lists no hosts"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hosts_are_probed_through_mpiruns_own_remote_shell() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = Prober::new(&args(&["--mca", "plm_rsh_agent", "/opt/agent.sh -q : ssh"]), Duration::from_secs(3));
        assert_eq!(p.agent, ["/opt/agent.sh", "-q"]);
        let p = Prober::new(&args(&["--mca", "btl", "tcp,self"]), Duration::from_secs(3));
        if std::env::var_os("OMPI_MCA_plm_rsh_agent").is_none() {
            assert_eq!(p.agent, ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3"]);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // `false` as the agent: no host answers, except this one.
        let p = Prober { agent: vec!["false".into()], timeout: Duration::from_secs(3) };
        let hosts = |names: &[&str]| {
            names.iter().map(|n| Host { name: n.to_string(), slots: 1, line: n.to_string() }).collect::<Vec<_>>()
        };
        assert_eq!(rt.block_on(p.answering(&hosts(&["node9", "localhost"]))), [false, true]);
        assert!(local_addresses().contains(&"127.0.0.1".parse().unwrap()));
        assert!(is_this_host("127.0.0.1") && !is_this_host("192.0.2.7"), "192.0.2.0/24 is for documentation");
        // An agent that hangs is given up on after the timeout.
        let agent = ["sh", "-c", "sleep 30", "--"].map(String::from).to_vec();
        let p = Prober { agent, timeout: Duration::from_millis(300) };
        let started = std::time::Instant::now();
        assert!(!rt.block_on(p.answers("node9")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
