//! A Docker engine in a network namespace of this machine, a deploy host's or a cluster
//! node's ([`Engine`]): `containerd` and `dockerd` started in the namespace with their config
//! files in `D`, dockerd stopped and started again; the deploy host's namespace and veth;
//! `ip`, a free /24, and copying an image from this machine's engine into another.

use std::{
    fs,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    bounded, describe, ok, output, poll_until, tail, DeployHost, Names, COMMAND_TIMEOUT,
    START_TIMEOUT, SUBNET_PREFIX,
};

/// How long dockerd gets to stop after SIGTERM (it stops its containers first, each within
/// its stop timeout, 10 s by default, and gives up on them after its shutdown timeout).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The Docker engine of one namespace: `containerd` and `dockerd` as this process's children,
/// behind a lock so that the engines of a cluster start in parallel and a node's engine is
/// stopped and started through `&self`.
pub(crate) struct Engine {
    names: Names,
    /// The host name dockerd runs with, in a UTS namespace of its own (a cluster node's, so
    /// that swarm's node list tells the nodes apart); `None`: this machine's.
    hostname: Option<String>,
    children: Mutex<Children>,
}

#[derive(Default)]
struct Children {
    containerd: Option<Child>,
    dockerd: Option<Child>,
}

impl Engine {
    pub(crate) fn new(names: &Names, hostname: Option<String>) -> Engine {
        Engine {
            names: names.clone(),
            hostname,
            children: Mutex::default(),
        }
    }

    fn children(&self) -> MutexGuard<'_, Children> {
        // A panic while the lock was held (a failed start) leaves the handles usable.
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine's directories and config files in `D`: containerd's config and a
    /// `daemon.json` (whatever `/etc/docker/daemon.json` says is this machine's).
    pub(crate) fn make_files(&self) {
        let n = &self.names;
        for dir in ["data", "exec"] {
            fs::create_dir_all(n.path(dir)).unwrap();
        }
        let d = n.dir.display();
        fs::write(
            n.path("containerd.toml"),
            format!(
                "version = 2\n\
                 root = \"{d}/data/containerd\"\n\
                 state = \"{d}/exec/containerd\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/exec/containerd.sock\"\n"
            ),
        )
        .unwrap();
        // dockerd before 23.0 takes its engine ID (`docker info`'s ID) from a trust key,
        // `/etc/docker/key.json` unless told otherwise: every engine would share this
        // machine's. Later ones keep it in the data root and reject the setting.
        let daemon_json = if dockerd_major_version().is_some_and(|major| major < 23) {
            format!("{{\"deprecated-key-path\": \"{d}/key.json\"}}\n")
        } else {
            "{}\n".to_owned()
        };
        fs::write(n.path("daemon.json"), daemon_json).unwrap();
    }

    /// A command run in the namespace (and this machine's mount namespace: `ip netns exec`
    /// would remount /sys without the cgroup hierarchies), appending to `D/<log>`.
    pub(crate) fn spawn_in_namespace(&self, program: &str, args: &[String], log: &str) -> Child {
        self.spawn_in_namespace_with(program, args, log, &[])
    }

    fn spawn_in_namespace_with(
        &self,
        program: &str,
        args: &[String],
        log: &str,
        env: &[(&str, &str)],
    ) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.names.path(log))
            .unwrap();
        Command::new("nsenter")
            .arg(format!("--net={}", self.names.netns_path()))
            .arg("--")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} in {}: {e}", self.names.name))
    }

    /// Starts containerd (unless it runs) and dockerd, and waits until dockerd answers;
    /// panics with the log of the one that exited or did not answer.
    pub(crate) fn start(&self) {
        let n = &self.names;
        let d = n.dir.display().to_string();
        let mut guard = self.children();
        let children = &mut *guard;
        if let Some(dockerd) = children.dockerd.as_mut() {
            assert!(
                !matches!(dockerd.try_wait(), Ok(None)),
                "the dockerd of {} runs already",
                n.name
            );
        }
        let containerd_runs = children
            .containerd
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        if !containerd_runs {
            if let Some(mut old) = children.containerd.take() {
                let _ = old.wait();
            }
            children.containerd = Some(self.spawn_in_namespace(
                "containerd",
                &["--config".to_owned(), format!("{d}/containerd.toml")],
                "containerd.log",
            ));
        }
        let mut args: Vec<String> = [
            "--config-file",
            &format!("{d}/daemon.json"),
            "--data-root",
            &format!("{d}/data"),
            "--exec-root",
            &format!("{d}/exec"),
            "--pidfile",
            &format!("{d}/docker.pid"),
            "--host",
            &n.engine_socket(),
            "--containerd",
            &format!("{d}/exec/containerd.sock"),
            "--cgroup-parent",
            &format!("/{}", n.name),
        ]
        .map(String::from)
        .to_vec();
        // A swarm task's engine tries to pull its image first, from a registry that cannot
        // be reached from a namespace (it only logs the failure); this makes it use the
        // image it holds, as a test loads them.
        let env = [("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")];
        let dockerd = match &self.hostname {
            // A UTS namespace of its own, named: `unshare` and `sh` exec, so the child is
            // dockerd itself.
            Some(hostname) => {
                let mut wrapped: Vec<String> = [
                    "--uts",
                    "--",
                    "sh",
                    "-c",
                    "hostname \"$0\" && exec dockerd \"$@\"",
                    hostname,
                ]
                .map(String::from)
                .to_vec();
                wrapped.append(&mut args);
                self.spawn_in_namespace_with("unshare", &wrapped, "dockerd.log", &env)
            }
            None => self.spawn_in_namespace_with("dockerd", &args, "dockerd.log", &env),
        };
        if let Some(mut old) = children.dockerd.replace(dockerd) {
            let _ = old.wait();
        }
        let socket = n.engine_socket();
        let answered = poll_until(START_TIMEOUT, || {
            for (what, child) in [
                ("containerd", &mut children.containerd),
                ("dockerd", &mut children.dockerd),
            ] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!(
                        "{what} of {} exited ({status}); its log:\n{}",
                        n.name,
                        tail(&n.path(&format!("{what}.log")), 20)
                    );
                }
            }
            bounded("docker", Duration::from_secs(5))
                .args(["-H", &socket, "version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            answered,
            "the dockerd of {} did not answer within {} s; its log:\n{}",
            n.name,
            START_TIMEOUT.as_secs(),
            tail(&n.path("dockerd.log"), 20)
        );
    }

    /// Stops dockerd the way a host's shutdown does: SIGTERM, then waits until it exited
    /// (after stopping its containers). containerd keeps running. Returns how long it took;
    /// panics when dockerd does not run or outlives [`STOP_TIMEOUT`].
    pub(crate) fn stop_dockerd(&self) -> Duration {
        let started = Instant::now();
        let mut children = self.children();
        let dockerd = children
            .dockerd
            .as_mut()
            .unwrap_or_else(|| panic!("the dockerd of {} was not started", self.names.name));
        assert!(
            matches!(dockerd.try_wait(), Ok(None)),
            "the dockerd of {} does not run",
            self.names.name
        );
        ok(
            bounded("kill", COMMAND_TIMEOUT).args(["-TERM", &dockerd.id().to_string()]),
            "kill -TERM dockerd",
        );
        let exited = poll_until(STOP_TIMEOUT, || matches!(dockerd.try_wait(), Ok(Some(_))));
        assert!(
            exited,
            "the dockerd of {} did not exit within {} s of SIGTERM; its log:\n{}",
            self.names.name,
            STOP_TIMEOUT.as_secs(),
            tail(&self.names.path("dockerd.log"), 20)
        );
        started.elapsed()
    }

    /// This process's handles of the engine's processes, for the teardown to reap.
    pub(crate) fn take_children(&self) -> Vec<Child> {
        let mut children = self.children();
        [children.dockerd.take(), children.containerd.take()]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The major version of the installed `dockerd` (`Docker version 20.10.24+dfsg1, build …`).
fn dockerd_major_version() -> Option<u32> {
    let out = output(bounded("dockerd", COMMAND_TIMEOUT).arg("--version"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = text.split_whitespace().nth(2)?;
    version.split('.').next()?.parse().ok()
}

impl DeployHost {
    pub(super) fn make_namespace(&self, octet: u8) {
        let n = &self.names;
        let veth_host = n.veth_host.as_deref().expect("a deploy host's veth");
        let local = format!("{}.{}.{octet}.1/24", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        let remote = format!("{}/24", self.addr);
        ip(&["netns", "add", &n.name]);
        ip(&[
            "link", "add", veth_host, "type", "veth", "peer", "name", &n.veth_ns,
        ]);
        ip(&["link", "set", &n.veth_ns, "netns", &n.name]);
        ip(&["addr", "add", &local, "dev", veth_host]);
        ip(&["link", "set", veth_host, "up"]);
        ip(&["-n", &n.name, "addr", "add", &remote, "dev", &n.veth_ns]);
        ip(&["-n", &n.name, "link", "set", &n.veth_ns, "up"]);
        ip(&["-n", &n.name, "link", "set", "lo", "up"]);
    }
}

/// `ip <args>`; panics with its output unless it succeeded.
pub(crate) fn ip(args: &[&str]) {
    ok(
        bounded("ip", COMMAND_TIMEOUT).args(args),
        &format!("ip {}", args.join(" ")),
    );
}

/// A /24 under 10.231.0.0/16 that no address or route of this machine's namespace uses,
/// starting at one derived from `seed` (a pid).
pub(crate) fn free_octet(seed: u32) -> u8 {
    let addrs = output(bounded("ip", COMMAND_TIMEOUT).args(["-o", "-4", "addr"]));
    let routes = output(bounded("ip", COMMAND_TIMEOUT).args(["-4", "route"]));
    let used = format!(
        "{}\n{}",
        String::from_utf8_lossy(&addrs.stdout),
        String::from_utf8_lossy(&routes.stdout)
    );
    let start = seed % 254;
    (0..254)
        .map(|i| ((start + i) % 254 + 1) as u8)
        .find(|octet| {
            let prefix = format!("{}.{}.{octet}.", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
            !used.contains(&prefix)
        })
        .expect("every 10.231.x.0/24 is in use")
}

/// Copies `image` from this machine's engine into the one `load` (a `docker load` command)
/// targets, `target` in messages: `docker save | docker load`, no registry can be reached
/// here. Returns the time it took; panics unless both succeeded.
pub(crate) fn copy_image(image: &str, load: &mut Command, target: &str) -> Duration {
    let started = Instant::now();
    let mut save = bounded("docker", Duration::from_secs(300))
        .env_remove("DOCKER_HOST")
        .args(["save", image])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker save");
    let load = load
        .stdin(save.stdout.take().unwrap())
        .output()
        .expect("run docker load");
    let save = save.wait_with_output().expect("wait for docker save");
    assert!(
        save.status.success(),
        "docker save {image}:\n{}",
        describe(&save)
    );
    assert!(
        load.status.success(),
        "docker load ({image}) into {target}:\n{}",
        describe(&load)
    );
    started.elapsed()
}
