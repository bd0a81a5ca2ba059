//! Removing a deploy host or a cluster, whatever state it is in: [`teardown`] and
//! [`teardown_cluster`] (when one is dropped, and before one starts), [`leftovers`] and
//! [`cluster_leftovers`] (what is still there) and [`sweep_stale`] (the hosts and clusters of
//! killed runs), with the process, mount and cgroup look-ups only they use.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use super::{
    bounded, output, poll_until,
    ssh::{edit_ssh_config, read_ssh_config, remove_block},
    ClusterNames, Names, COMMAND_TIMEOUT,
};

/// What is left of the host `names` describes: processes with `D/` in their command line,
/// mounts under `D`, its cgroups, the namespace, the veth, the `~/.ssh/config` block, `D`.
pub fn leftovers(names: &Names) -> Vec<String> {
    let mut left: Vec<String> = processes_of(names)
        .into_iter()
        .map(|(pid, cmdline)| format!("process {pid}: {cmdline}"))
        .collect();
    left.extend(
        mounts_under(&names.dir)
            .into_iter()
            .map(|m| format!("mount {m}")),
    );
    left.extend(
        cgroups_of(names)
            .into_iter()
            .map(|c| format!("cgroup {}", c.display())),
    );
    if netns_names().contains(&names.name) {
        left.push(format!("network namespace {}", names.name));
    }
    if let Some(veth) = names
        .veth_host
        .as_ref()
        .filter(|v| link_names().contains(v))
    {
        left.push(format!("link {veth}"));
    }
    if read_ssh_config().contains(&names.marker_begin()) {
        left.push(format!("~/.ssh/config block {}", names.name));
    }
    if names.dir.exists() {
        left.push(format!("directory {}", names.dir.display()));
    }
    left
}

/// Removes everything of the host `names` describes, whatever state it is in; `children` are
/// this process's own handles of its processes, reaped here. Returns what is still left.
pub(super) fn teardown(names: &Names, children: &mut [Child]) -> Vec<String> {
    remove_engine(names, children, "TERM")
}

/// [`teardown`], with `dockerd_signal` for dockerd once its containers are gone: `TERM` lets
/// it shut down as on a host's shutdown; `KILL` (a cluster node's) spares the waits of a
/// stopping swarm member: for its gossip peers to hear it leave, for the ingress network
/// to go, up to 5 s each, in vain when the whole cluster stops at once.
fn remove_engine(names: &Names, children: &mut [Child], dockerd_signal: &str) -> Vec<String> {
    // sshd first: no new sessions.
    signal_processes(names, "TERM", |cmdline| cmdline.contains("sshd"));
    // The containers, quickly, while the engine answers (dockerd would stop them one by one,
    // each with its stop timeout).
    if names.path("docker.sock").exists() {
        let socket = names.engine_socket();
        let ids = output(
            bounded("docker", Duration::from_secs(10))
                .args(["-H", &socket, "ps", "--all", "--quiet"]),
        );
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = output(
                bounded("docker", Duration::from_secs(30))
                    .args(["-H", &socket, "rm", "--force", "--volumes"])
                    .args(&ids),
            );
        }
    }
    // dockerd, then containerd and the shims: SIGTERM, then SIGKILL what did not stop.
    signal_processes(names, dockerd_signal, |cmdline| cmdline.contains("dockerd"));
    wait_gone(names, Duration::from_secs(15), children, |cmdline| {
        cmdline.contains("dockerd") || cmdline.contains("sshd")
    });
    signal_processes(names, "TERM", |_| true);
    wait_gone(names, Duration::from_secs(5), children, |_| true);
    signal_processes(names, "KILL", |_| true);
    kill_cgroup_processes(names);
    wait_gone(names, Duration::from_secs(5), children, |_| true);
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Mounts under D (dockerd's bind of its data root, overlays, network namespaces), the
    // deepest first.
    for _ in 0..3 {
        let mut mounts = mounts_under(&names.dir);
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = output(bounded("umount", COMMAND_TIMEOUT).args(["-l", &mount]));
        }
    }
    remove_cgroups(names);
    if netns_names().contains(&names.name) {
        let _ = output(bounded("ip", COMMAND_TIMEOUT).args(["netns", "delete", &names.name]));
    }
    if let Some(veth) = names
        .veth_host
        .as_ref()
        .filter(|v| link_names().contains(v))
    {
        let _ = output(bounded("ip", COMMAND_TIMEOUT).args(["link", "delete", veth]));
    }
    if read_ssh_config().contains(&names.marker_begin()) {
        edit_ssh_config(|text| Some(remove_block(text, names)));
    }
    if names.dir.exists() && mounts_under(&names.dir).is_empty() {
        let _ = fs::remove_dir_all(&names.dir);
    }
    leftovers(names)
}

/// Removes the hosts and clusters of test processes that no longer run (a killed run's);
/// their pids.
pub fn sweep_stale() -> Vec<u32> {
    let own = std::process::id();
    let mut hosts = BTreeSet::new();
    let mut clusters = BTreeSet::new();
    let parse =
        |name: &str, prefix: &str| -> Option<u32> { name.strip_prefix(prefix)?.parse().ok() };
    // `mldeploy-c<pid>` (the switch namespace, the dir) and `mldeploy-c<pid>n<i>` (a node's).
    let cluster_pid = |name: &str| -> Option<u32> {
        let rest = name.strip_prefix("mldeploy-c")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let tail = &rest[digits.len()..];
        (tail.is_empty() || tail.starts_with('n'))
            .then(|| digits.parse().ok())
            .flatten()
    };
    for name in netns_names() {
        hosts.extend(parse(&name, "mldeploy-h"));
        clusters.extend(cluster_pid(&name));
    }
    for name in link_names() {
        hosts.extend(parse(&name, "mdh"));
        clusters.extend(parse(&name, "mdc"));
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            hosts.extend(parse(&name, "mldeploy-h"));
            clusters.extend(parse(&name, "mldeploy-c"));
        }
    }
    for line in read_ssh_config().lines() {
        if let Some(rest) = line.strip_prefix("# >>> mldeploy-h") {
            hosts.extend(rest.split(':').next().and_then(|p| p.parse::<u32>().ok()));
        }
    }
    let temp = std::env::temp_dir().display().to_string();
    for (_, cmdline) in all_processes() {
        for (kind, pids) in [("h", &mut hosts), ("c", &mut clusters)] {
            for piece in cmdline.split(&format!("{temp}/mldeploy-{kind}")).skip(1) {
                let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
                if piece[digits.len()..].starts_with('/') {
                    pids.extend(digits.parse::<u32>().ok());
                }
            }
        }
    }
    let dead = |pid: &u32| *pid != own && !Path::new(&format!("/proc/{pid}")).exists();
    let mut stale = BTreeSet::new();
    for pid in hosts.into_iter().filter(dead) {
        teardown(&Names::of(pid), &mut []);
        stale.insert(pid);
    }
    for pid in clusters.into_iter().filter(dead) {
        teardown_cluster(&ClusterNames::of(pid), BTreeMap::new());
        stale.insert(pid);
    }
    stale.into_iter().collect()
}

/// What is left of the cluster `c` describes: what [`leftovers`] finds of each node whose
/// index anything still names, the switch namespace, this machine's veth, the directory.
pub fn cluster_leftovers(c: &ClusterNames) -> Vec<String> {
    let mut left: Vec<String> = node_indexes(c)
        .into_iter()
        .flat_map(|i| leftovers(&c.node(i)))
        .collect();
    left.extend(
        mounts_under(&c.dir)
            .into_iter()
            .map(|m| format!("mount {m}")),
    );
    if netns_names().contains(&c.name) {
        left.push(format!("network namespace {}", c.name));
    }
    if link_names().contains(&c.veth_host) {
        left.push(format!("link {}", c.veth_host));
    }
    if c.dir.exists() {
        left.push(format!("directory {}", c.dir.display()));
    }
    left.sort();
    left.dedup();
    left
}

/// Removes everything of the cluster `c` describes: each node's engine and namespace, the
/// nodes in parallel (as [`teardown`] removes a host, but dockerd SIGKILLed once its
/// containers are gone: [`remove_engine`]; `children` are this process's handles of each
/// node's processes; deleting a node's namespace takes its veth pair along), then this
/// machine's veth and the switch namespace with the bridge, and the directory. Returns what
/// is still left.
pub(crate) fn teardown_cluster(
    c: &ClusterNames,
    children: BTreeMap<usize, Vec<Child>>,
) -> Vec<String> {
    let mut work: BTreeMap<usize, Vec<Child>> = node_indexes(c)
        .into_iter()
        .map(|i| (i, Vec::new()))
        .collect();
    for (i, kids) in children {
        work.entry(i).or_default().extend(kids);
    }
    std::thread::scope(|scope| {
        for (i, mut kids) in work {
            scope.spawn(move || remove_engine(&c.node(i), &mut kids, "KILL"));
        }
    });
    // This machine's veth first: deleting it is synchronous (and takes its peer along),
    // while a deleted namespace's devices go in the background.
    if link_names().contains(&c.veth_host) {
        let _ = output(bounded("ip", COMMAND_TIMEOUT).args(["link", "delete", &c.veth_host]));
    }
    if netns_names().contains(&c.name) {
        let _ = output(bounded("ip", COMMAND_TIMEOUT).args(["netns", "delete", &c.name]));
    }
    if c.dir.exists() && mounts_under(&c.dir).is_empty() {
        let _ = fs::remove_dir_all(&c.dir);
    }
    cluster_leftovers(c)
}

/// The indexes of the nodes of cluster `c` that something is still named after: a network
/// namespace, a directory, a cgroup, a process's command line.
fn node_indexes(c: &ClusterNames) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let node_prefix = format!("{}n", c.name);
    let index = |rest: &str| -> Option<usize> { rest.parse().ok() };
    for name in netns_names() {
        found.extend(name.strip_prefix(&node_prefix).and_then(index));
    }
    if let Ok(entries) = fs::read_dir(&c.dir) {
        for entry in entries.flatten() {
            found.extend(
                entry
                    .file_name()
                    .to_string_lossy()
                    .strip_prefix('n')
                    .and_then(index),
            );
        }
    }
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs::read_dir(root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    for dir in std::iter::once(root.to_path_buf()).chain(hierarchies) {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                found.extend(name.strip_prefix(&node_prefix).and_then(index));
            }
        }
    }
    let marker = format!("{}/n", c.dir.display());
    for (_, cmdline) in all_processes() {
        for piece in cmdline.split(&marker).skip(1) {
            let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
            if piece[digits.len()..].starts_with('/') {
                found.extend(index(&digits));
            }
        }
    }
    found
}

fn netns_names() -> Vec<String> {
    dir_names("/run/netns")
}

fn link_names() -> Vec<String> {
    dir_names("/sys/class/net")
}

/// The names in folder `path`; none when it cannot be read.
fn dir_names(path: &str) -> Vec<String> {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process but this one: pid and command line (arguments joined by spaces).
fn all_processes() -> Vec<(u32, String)> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some((pid, cmdline.trim().to_owned()))
        })
        .collect()
}

/// Whether process `pid` is a zombie (dead, waiting to be reaped).
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The live processes of the host: those with `D/` in their command line, and those in its
/// network namespace (sshd's per-session children rename themselves `sshd: root@notty`, and
/// their commands, `docker system dial-stdio` say, do not name `D`).
fn processes_of(names: &Names) -> Vec<(u32, String)> {
    let prefix = names.dir_prefix();
    let netns = fs::metadata(names.netns_path())
        .ok()
        .map(|m| format!("net:[{}]", m.ino()));
    all_processes()
        .into_iter()
        .filter(|(pid, cmdline)| {
            cmdline.contains(&prefix)
                || netns.as_deref().is_some_and(|ns| {
                    fs::read_link(format!("/proc/{pid}/ns/net"))
                        .is_ok_and(|link| link.as_os_str() == ns)
                })
        })
        .filter(|(pid, _)| !is_zombie(*pid))
        .collect()
}

fn signal_processes(names: &Names, signal: &str, which: impl Fn(&str) -> bool) {
    let pids: Vec<String> = processes_of(names)
        .into_iter()
        .filter(|(_, cmdline)| which(cmdline))
        .map(|(pid, _)| pid.to_string())
        .collect();
    if !pids.is_empty() {
        let _ = output(
            bounded("kill", COMMAND_TIMEOUT)
                .arg(format!("-{signal}"))
                .args(&pids)
                .stderr(Stdio::null()),
        );
    }
}

/// Waits until no process `which` selects is left, reaping this process's own children.
fn wait_gone(names: &Names, limit: Duration, children: &mut [Child], which: impl Fn(&str) -> bool) {
    poll_until(limit, || {
        for child in children.iter_mut() {
            let _ = child.try_wait();
        }
        !processes_of(names)
            .iter()
            .any(|(_, cmdline)| which(cmdline))
    });
}

/// Mount points at or under `dir` in this process's mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let below = format!("{dir}/");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|point| *point == dir || point.starts_with(&below))
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space…).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup parents, `<hierarchy>/mldeploy-h<pid>`, in every mounted hierarchy
/// (cgroup v1: one per controller; v2: the unified one).
fn cgroups_of(names: &Names) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    let direct = root.join(&names.name);
    if direct.is_dir() {
        found.push(direct);
    }
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            let candidate = entry.path().join(&names.name);
            if candidate.is_dir() {
                found.push(candidate);
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Every cgroup at or below `dir`, the deepest first.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.extend(cgroup_tree(&entry.path()));
            }
        }
    }
    all.push(dir.to_path_buf());
    all
}

/// SIGKILLs what still runs in the host's cgroups (the containers' processes, should their
/// shims have died first).
fn kill_cgroup_processes(names: &Names) {
    let mut pids = BTreeSet::new();
    for parent in cgroups_of(names) {
        for group in cgroup_tree(&parent) {
            let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.split_whitespace().map(str::to_owned));
        }
    }
    if !pids.is_empty() {
        let _ = output(
            bounded("kill", COMMAND_TIMEOUT)
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null()),
        );
    }
}

fn remove_cgroups(names: &Names) {
    for parent in cgroups_of(names) {
        poll_until(Duration::from_secs(5), || {
            for group in cgroup_tree(&parent) {
                let _ = fs::remove_dir(&group);
            }
            !parent.exists()
        });
    }
}
