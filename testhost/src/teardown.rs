//! Removing a deploy host, whatever state it is in: [`teardown`] (when a host is dropped,
//! and before one starts), [`leftovers`] (what is still there) and [`sweep_stale`] (the hosts
//! of killed runs), with the process, mount and cgroup look-ups only they use.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use super::{
    bounded, output, poll_until,
    ssh::{edit_ssh_config, read_ssh_config, remove_block},
    Names, COMMAND_TIMEOUT,
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
    if link_names().contains(&names.veth_host) {
        left.push(format!("link {}", names.veth_host));
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
    signal_processes(names, "TERM", |cmdline| cmdline.contains("dockerd"));
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
    if link_names().contains(&names.veth_host) {
        let _ = output(bounded("ip", COMMAND_TIMEOUT).args(["link", "delete", &names.veth_host]));
    }
    if read_ssh_config().contains(&names.marker_begin()) {
        edit_ssh_config(|text| Some(remove_block(text, names)));
    }
    if names.dir.exists() && mounts_under(&names.dir).is_empty() {
        let _ = fs::remove_dir_all(&names.dir);
    }
    leftovers(names)
}

/// Removes the hosts of test processes that no longer run (a killed run's); their pids.
pub fn sweep_stale() -> Vec<u32> {
    let own = std::process::id();
    let mut pids = BTreeSet::new();
    let parse =
        |name: &str, prefix: &str| -> Option<u32> { name.strip_prefix(prefix)?.parse().ok() };
    pids.extend(netns_names().iter().filter_map(|n| parse(n, "mldeploy-h")));
    pids.extend(link_names().iter().filter_map(|n| parse(n, "mdh")));
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        pids.extend(
            entries
                .flatten()
                .filter_map(|e| parse(&e.file_name().to_string_lossy(), "mldeploy-h")),
        );
    }
    for line in read_ssh_config().lines() {
        if let Some(rest) = line.strip_prefix("# >>> mldeploy-h") {
            pids.extend(rest.split(':').next().and_then(|p| p.parse::<u32>().ok()));
        }
    }
    let marker = format!("{}/mldeploy-h", std::env::temp_dir().display());
    for (_, cmdline) in all_processes() {
        for piece in cmdline.split(&marker).skip(1) {
            let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
            if piece[digits.len()..].starts_with('/') {
                pids.extend(digits.parse::<u32>().ok());
            }
        }
    }
    let stale: Vec<u32> = pids
        .into_iter()
        .filter(|&pid| pid != own && !Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    for &pid in &stale {
        teardown(&Names::of(pid), &mut []);
    }
    stale
}

fn netns_names() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn link_names() -> Vec<String> {
    fs::read_dir("/sys/class/net")
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
