//! A second, real deploy host for the compose tests and benchmarks: a [`DeployHost`] is a network namespace
//! of this machine with its own Docker engine and its own `sshd`, reached the way a user
//! reaches a remote engine, with `DOCKER_HOST=ssh://root@<addr>`.
//!
//! What one host is, per test process (`<pid>` is the test process's id, so two runs never
//! share anything):
//! - the network namespace `mldeploy-h<pid>`, joined to this machine's by the veth pair
//!   `mdh<pid>` (here, `10.231.<n>.1/24`) / `mdn<pid>` (in the namespace, `10.231.<n>.2/24`,
//!   the host's address), `<n>` derived from the pid and unused here; loopback up. Traffic
//!   only goes between this machine and the namespace: no forwarding, no NAT;
//! - the directory `D` = `$TMPDIR/mldeploy-h<pid>` (mode 0700) holding everything else;
//! - `containerd` and `dockerd` started in the namespace (`nsenter --net`, which keeps this
//!   machine's mounts and `/sys/fs/cgroup`; `ip netns exec` would remount `/sys` without the
//!   cgroup hierarchies and dockerd could not start containers). dockerd's data root is
//!   `D/data`, its exec root `D/exec`, its API `unix://D/docker.sock`, its own `containerd`
//!   at `D/exec/containerd.sock` (never a system containerd at `/run/containerd`), its
//!   containers' cgroups under `/mldeploy-h<pid>`, its iptables rules the namespace's own,
//!   its engine ID (`docker info`'s) its own: dockerd before 23.0 reads it from a trust key,
//!   by default this machine's `/etc/docker/key.json`, so `daemon.json` points it at
//!   `D/key.json` (later versions keep the ID in the data root); and
//!   `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` in its environment: a swarm task starts from
//!   the image the engine holds, without first trying a registry that cannot be reached;
//! - `sshd` in the namespace on `<addr>:22`, with a host key and one authorized key made by
//!   `ssh-keygen` here, root login by key only, and `SetEnv DOCKER_HOST=unix://D/docker.sock`:
//!   the namespace shares the file system with this machine, so without it the
//!   `docker system dial-stdio` of an SSH session would reach this machine's own engine;
//! - a marked block prepended to root's `~/.ssh/config` (the file is created when missing,
//!   everything else in it kept): `Host <addr>` with the generated key (`IdentitiesOnly`), the
//!   generated `known_hosts` (`StrictHostKeyChecking yes`), `BatchMode yes`, no connection
//!   sharing, closed by `Host *` so that the file's own leading global lines stay global.
//!   Every SSH client the project drives reads it: the `docker` CLI and `docker-compose` v1
//!   (both run the system `ssh`: docker-py shells out unless `COMPOSE_PARAMIKO_SSH=1`),
//!   xtask's `ssh -N -L` tunnel, and docker-py's paramiko mode (`COMPOSE_PARAMIKO_SSH=1`),
//!   which takes `IdentityFile` from `~/.ssh/config` but host keys only from
//!   `~/.ssh/known_hosts`, accepting an unknown one with a warning (`WarningPolicy`).
//!
//! Dropping the host (also when a test panics) removes all of it: sshd, the containers,
//! dockerd, containerd and their shims, every mount under `D`, the cgroups, the namespace and
//! the veth, the `~/.ssh/config` block, `D`. Starting a host first sweeps what runs that were
//! killed left behind (names whose pid is no longer alive).
//!
//! It needs root and, besides the Docker engine's packages, `iproute2`, `openssh-server`,
//! `openssh-client` and, for `docker-compose` v1 with `ssh://`, `python3-paramiko`
//! ([`missing_packages`]).
//!
//! A [`Cluster`] is a Docker Swarm of such engines without sshd, one per node namespace,
//! on a network of their own (see the `cluster` module's docs); a test process may hold one
//! `DeployHost` and one `Cluster` at a time, together: their names differ (`mldeploy-h…`,
//! `mldeploy-c…`).
//!
//! The parts: `engine` starts and stops an engine in a namespace (and makes the deploy
//! host's), `ssh` the keys, sshd and the `~/.ssh/config` block, `cluster` and `node` the
//! swarm, `teardown` removes a host or a cluster (this process's or a stale one).

use std::{
    ffi::OsString,
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// Whether CI requires Docker (`MLDEPLOY_REQUIRE_DOCKER=1`): a host that cannot be made is
/// then a failure, not a skip.
pub fn docker_required() -> bool {
    std::env::var("MLDEPLOY_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// A command's exit status and output, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn poll_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll_every(Duration::from_millis(10), timeout, f)
}

/// Polls `f` every `period` until it holds or `timeout` passes; whether it held. For checks
/// that run a `docker` command (each costs this machine tens of ms of CPU, so
/// [`poll_until`]'s 10 ms would keep a core busy), a period of a few hundred ms.
pub fn poll_every(period: Duration, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(period);
    }
}

mod cluster;
mod engine;
mod node;
mod ssh;
mod teardown;

pub use cluster::{cluster_available, Cluster, ClusterNames, SWARM_HEARTBEAT};
pub use node::Node;
pub use teardown::{cluster_leftovers, leftovers, sweep_stale};

use engine::{copy_image, free_octet, Engine};
use teardown::teardown;

/// The first two octets of the hosts' addresses: `10.231.<n>.0/24`.
const SUBNET_PREFIX: [u8; 2] = [10, 231];
/// How long dockerd and sshd get to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound of every quick command the fixture runs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One deploy host at a time per test process (its names are the process's).
static LIVE: AtomicBool = AtomicBool::new(false);

/// Everything of the host of test process `pid` is named after it (and so is every node of
/// its cluster, [`ClusterNames::node`]).
#[derive(Clone, Debug)]
pub struct Names {
    pub pid: u32,
    /// `mldeploy-h<pid>`: the network namespace, the cgroup parent, the `~/.ssh/config` marker.
    pub name: String,
    /// `$TMPDIR/mldeploy-h<pid>`.
    pub dir: PathBuf,
    /// The veth end in this machine's namespace, `mdh<pid>` (a cluster node's veth ends in
    /// the cluster's switch namespace instead: `None`).
    pub veth_host: Option<String>,
    /// The veth end in the host's namespace, `mdn<pid>`.
    pub veth_ns: String,
}

impl Names {
    pub fn of(pid: u32) -> Names {
        let name = format!("mldeploy-h{pid}");
        Names {
            pid,
            dir: std::env::temp_dir().join(&name),
            name,
            veth_host: Some(format!("mdh{pid}")),
            veth_ns: format!("mdn{pid}"),
        }
    }

    /// `D/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// What every command line and mount of this host contains: `D/`.
    fn dir_prefix(&self) -> String {
        format!("{}/", self.dir.display())
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn engine_socket(&self) -> String {
        format!("unix://{}", self.path("docker.sock").display())
    }

    fn marker_begin(&self) -> String {
        format!("# >>> {}:", self.name)
    }

    fn marker_end(&self) -> String {
        format!("# <<< {}", self.name)
    }
}

/// The Debian packages the deploy host needs that are not installed here (empty when all
/// are), each with the command it provides.
pub fn missing_packages() -> Vec<(&'static str, &'static str)> {
    let mut missing = missing_commands(&[
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("docker", "docker.io"),
        ("dockerd", "docker.io"),
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("timeout", "coreutils"),
    ]);
    // docker-compose v1 imports paramiko for every ssh:// engine, even when it then runs the
    // system `ssh`; check it with the interpreter docker-compose runs under.
    if let Some(compose) = find_command("docker-compose") {
        let script = fs::read(&compose).unwrap_or_default();
        if let Some(python) = script
            .strip_prefix(b"#!")
            .and_then(|rest| rest.split(|&b| b == b'\n').next())
            .map(|line| String::from_utf8_lossy(line).trim().to_owned())
            .filter(|line| line.contains("python"))
        {
            let mut words = python.split_whitespace();
            let program = words.next().unwrap_or("python3");
            let imports = Command::new(program)
                .args(words)
                .args(["-c", "import paramiko"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !imports {
                missing.push(("paramiko (docker-compose ssh://)", "python3-paramiko"));
            }
        }
    }
    missing
}

/// The `(command, Debian package)` pairs of `checks` whose command is not installed here.
fn missing_commands(checks: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    checks
        .iter()
        .copied()
        .filter(|(command, _)| find_command(command).is_none())
        .collect()
}

/// Whether a deploy host can be made here: root and every package. Panics when CI requires
/// Docker (`MLDEPLOY_REQUIRE_DOCKER=1`) and something is missing; else says what and skips.
pub fn deploy_host_available() -> bool {
    available(
        "the deploy-host tests",
        "it creates a network namespace and runs dockerd and sshd",
        missing_packages(),
    )
}

/// Whether root and the `missing` packages are there for `who` (`why` root); the same
/// panic or skip message as [`deploy_host_available`].
fn available(who: &str, why: &str, missing: Vec<(&str, &str)>) -> bool {
    let mut problems = Vec::new();
    if !is_root() {
        problems.push(format!("root ({why})"));
    }
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        packages.sort_unstable();
        packages.dedup();
        problems.push(format!(
            "{} (apt-get install -y {})",
            missing
                .iter()
                .map(|(command, package)| format!("{command}: Debian package {package}"))
                .collect::<Vec<_>>()
                .join(", "),
            packages.join(" ")
        ));
    }
    if problems.is_empty() {
        return true;
    }
    let message = format!("{who} need {}", problems.join("; and "));
    if docker_required() {
        panic!("MLDEPLOY_REQUIRE_DOCKER=1 but {message}");
    }
    eprintln!("skipping: {message}");
    false
}

/// Runs `command` (`docker <args>` against the engine at `docker_host`); its stdout. Panics,
/// naming the engine and the arguments, unless it succeeded.
pub(crate) fn docker_stdout(mut command: Command, docker_host: &str, args: &[&str]) -> String {
    let out = output(&mut command);
    assert!(
        out.status.success(),
        "docker -H {docker_host} {}:\n{}",
        args.join(" "),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deploy host: its own network namespace, Docker engine and sshd. Removed when dropped.
pub struct DeployHost {
    pub names: Names,
    /// The host's address, in the namespace.
    addr: Ipv4Addr,
    engine: Engine,
    sshd: Option<Child>,
    /// The images [`DeployHost::probe_image`] made in this machine's engine (removed on drop).
    local_images: Vec<String>,
    started: Instant,
}

impl DeployHost {
    /// Makes the host of this test process, printing each step's time; panics (after removing
    /// what it made) when a step fails.
    pub fn start() -> DeployHost {
        let started = Instant::now();
        let names = Names::of(std::process::id());
        let mut step = Steps::new(&names.name);
        // Before the teardown below, which would remove this process's live host.
        assert!(
            !LIVE.load(Ordering::SeqCst),
            "one DeployHost at a time per test process"
        );
        let swept = sweep_stale();
        step.done(&format!("swept stale hosts and clusters {swept:?}"));
        // Whatever a previous use of this very pid left (a pid is reused eventually).
        teardown(&names, &mut []);
        let octet = free_octet(names.pid);
        assert!(
            !LIVE.swap(true, Ordering::SeqCst),
            "one DeployHost at a time per test process"
        );
        let mut host = DeployHost {
            addr: Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], octet, 2),
            engine: Engine::new(&names, None),
            names,
            sshd: None,
            local_images: Vec::new(),
            started,
        };
        // From here a panic drops `host`, which removes what was made so far.
        host.make_namespace(octet);
        step.done(&format!(
            "network namespace, {} on {}",
            host.addr,
            host.names.veth_host.as_deref().unwrap_or_default()
        ));
        host.make_files();
        step.done("keys and configs (ssh-keygen)");
        host.engine.start();
        step.done("containerd + dockerd answer");
        host.start_sshd();
        step.done("sshd answers");
        host.add_ssh_config();
        host.check_over_ssh();
        step.done("docker over ssh:// reaches the host's engine");
        println!(
            "[{}] deploy host {} ready in {:.2} s",
            host.names.name,
            host.docker_host(),
            host.started.elapsed().as_secs_f64()
        );
        host
    }

    /// The host's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `ssh://root@<addr>`, the `DOCKER_HOST` of the host.
    pub fn docker_host(&self) -> String {
        format!("ssh://root@{}", self.addr)
    }

    /// What a command needs in its environment to target the host: `DOCKER_HOST` only (the
    /// key and host key come from the `~/.ssh/config` block). A command that must reach the
    /// host's ports through xtask's SSH tunnel must not inherit `MLDEPLOY_PUBLIC_HOST`.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("DOCKER_HOST", self.docker_host().into())]
    }

    /// The host's engine over its own socket, bypassing SSH (for inspection and cleanup).
    pub fn engine_socket(&self) -> String {
        self.names.engine_socket()
    }

    /// A `docker` command against the host, over SSH, killed after a minute.
    pub fn docker_command(&self, args: &[&str]) -> Command {
        self.docker_command_within(COMMAND_TIMEOUT, args)
    }

    fn docker_command_within(&self, limit: Duration, args: &[&str]) -> Command {
        let mut cmd = bounded("docker", limit);
        cmd.envs(self.env()).args(args);
        cmd
    }

    /// `docker <args>` against the host (over SSH); its stdout. Panics unless it succeeded.
    pub fn docker(&self, args: &[&str]) -> String {
        docker_stdout(self.docker_command(args), &self.docker_host(), args)
    }

    /// Copies `image` from this machine's engine to the host's (`docker save | docker load`
    /// over SSH: no registry can be reached here); returns the time it took.
    pub fn load_image(&self, image: &str) -> Duration {
        let took = copy_image(
            image,
            &mut self.docker_command_within(Duration::from_secs(300), &["load", "--quiet"]),
            &self.docker_host(),
        );
        println!(
            "[{}] loaded {image} into the host in {:.2} s",
            self.names.name,
            took.as_secs_f64()
        );
        took
    }

    /// A tiny image made here, `mldeploy-h<pid>/probe:latest`, whose container sleeps until
    /// stopped: `/bin/sleep` and the libraries it links, imported from a tar stream (nothing
    /// to download). Removed from this machine's engine when the host is dropped.
    pub fn probe_image(&mut self) -> String {
        let image = format!("{}/probe:latest", self.names.name);
        let root = self.names.path("probe-rootfs");
        let mut files = vec![PathBuf::from("/bin/sleep")];
        let ldd = output(bounded("ldd", COMMAND_TIMEOUT).arg("/bin/sleep"));
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') {
                files.push(PathBuf::from(word));
            }
        }
        for file in &files {
            let real = fs::canonicalize(file).unwrap();
            let dest = root.join(file.strip_prefix("/").unwrap());
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(&real, &dest).unwrap();
        }
        let mut tar = bounded("tar", COMMAND_TIMEOUT)
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let import = bounded("docker", COMMAND_TIMEOUT)
            .env_remove("DOCKER_HOST")
            .args([
                "import",
                "--change",
                r#"CMD ["/bin/sleep", "infinity"]"#,
                "-",
                &image,
            ])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("run docker import");
        let tarred = tar.wait().expect("wait for tar");
        assert!(tarred.success(), "tar of the probe image's files: {tarred}");
        assert!(
            import.status.success(),
            "docker import:\n{}",
            describe(&import)
        );
        let _ = fs::remove_dir_all(&root);
        self.local_images.push(image.clone());
        image
    }

    /// `D` (mode 0700), then the files the host's daemons read.
    fn make_files(&self) {
        make_private_dir(&self.names.dir);
        self.make_ssh_files();
        self.engine.make_files();
    }
}

impl Drop for DeployHost {
    fn drop(&mut self) {
        let started = Instant::now();
        for image in &self.local_images {
            let _ = bounded("docker", COMMAND_TIMEOUT)
                .env_remove("DOCKER_HOST")
                .args(["rmi", "--force", image])
                .output();
        }
        let mut children: Vec<Child> = self.sshd.take().into_iter().collect();
        children.extend(self.engine.take_children());
        let left = teardown(&self.names, &mut children);
        LIVE.store(false, Ordering::SeqCst);
        println!(
            "[{}] removed the deploy host in {:.2} s{}",
            self.names.name,
            started.elapsed().as_secs_f64(),
            if left.is_empty() {
                String::new()
            } else {
                format!("; left behind: {left:?}")
            }
        );
    }
}

/// Prints each step's time since the previous one.
struct Steps {
    name: String,
    last: Instant,
}

impl Steps {
    fn new(name: &str) -> Steps {
        Steps {
            name: name.to_owned(),
            last: Instant::now(),
        }
    }

    fn done(&mut self, what: &str) {
        println!(
            "[{}] {what}: {:.2} s",
            self.name,
            self.last.elapsed().as_secs_f64()
        );
        self.last = Instant::now();
    }
}

/// `timeout -k 5 <limit> <program>`: no command of the fixture can hang a test.
fn bounded(program: &str, limit: Duration) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &format!("{}", limit.as_secs().max(1)), program]);
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command, what: &str) -> Output {
    let out = output(cmd);
    assert!(out.status.success(), "{what}:\n{}", describe(&out));
    out
}

/// `dir` and its parents, `dir` with mode 0700.
fn make_private_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
