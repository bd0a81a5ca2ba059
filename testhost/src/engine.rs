//! The host's network namespace (with its veth pair to this machine's) and its Docker
//! engine: `containerd` and `dockerd` started in the namespace, with their config files.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{
    bounded, ok, output, poll_until, tail, DeployHost, COMMAND_TIMEOUT, START_TIMEOUT,
    SUBNET_PREFIX,
};

impl DeployHost {
    pub(super) fn make_namespace(&self, octet: u8) {
        let n = &self.names;
        let local = format!("{}.{}.{octet}.1/24", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        let remote = format!("{}/24", self.addr);
        ip(&["netns", "add", &n.name]);
        ip(&[
            "link",
            "add",
            &n.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            &n.veth_ns,
        ]);
        ip(&["link", "set", &n.veth_ns, "netns", &n.name]);
        ip(&["addr", "add", &local, "dev", &n.veth_host]);
        ip(&["link", "set", &n.veth_host, "up"]);
        ip(&["-n", &n.name, "addr", "add", &remote, "dev", &n.veth_ns]);
        ip(&["-n", &n.name, "link", "set", &n.veth_ns, "up"]);
        ip(&["-n", &n.name, "link", "set", "lo", "up"]);
    }

    /// containerd's config and an empty `daemon.json` in `D`.
    pub(super) fn make_engine_files(&self) {
        let n = &self.names;
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
        // An empty daemon.json: whatever /etc/docker/daemon.json says is this machine's.
        fs::write(n.path("daemon.json"), "{}\n").unwrap();
    }

    /// A command run in the host's network namespace (and this machine's mount namespace:
    /// `ip netns exec` would remount /sys without the cgroup hierarchies), logging to `D/<log>`.
    pub(super) fn spawn_in_namespace(&self, program: &str, args: &[String], log: &str) -> Child {
        let log = fs::File::create(self.names.path(log)).unwrap();
        Command::new("nsenter")
            .arg(format!("--net={}", self.names.netns_path()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} in the namespace: {e}"))
    }

    pub(super) fn start_engine(&mut self) {
        let n = self.names.clone();
        let d = n.dir.display().to_string();
        self.containerd = Some(self.spawn_in_namespace(
            "containerd",
            &["--config".to_owned(), format!("{d}/containerd.toml")],
            "containerd.log",
        ));
        let args: Vec<String> = [
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
        self.dockerd = Some(self.spawn_in_namespace("dockerd", &args, "dockerd.log"));
        let socket = n.engine_socket();
        let answered = poll_until(START_TIMEOUT, || {
            for (what, child) in [
                ("containerd", &mut self.containerd),
                ("dockerd", &mut self.dockerd),
            ] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!(
                        "{what} of the deploy host exited ({status}); its log:\n{}",
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
            "the deploy host's dockerd did not answer within {} s; its log:\n{}",
            START_TIMEOUT.as_secs(),
            tail(&n.path("dockerd.log"), 20)
        );
    }
}

fn ip(args: &[&str]) {
    ok(
        bounded("ip", COMMAND_TIMEOUT).args(args),
        &format!("ip {}", args.join(" ")),
    );
}

/// A /24 under 10.231.0.0/16 that no address or route of this machine's namespace uses,
/// starting at one derived from `pid`.
pub(super) fn free_octet(pid: u32) -> u8 {
    let addrs = output(bounded("ip", COMMAND_TIMEOUT).args(["-o", "-4", "addr"]));
    let routes = output(bounded("ip", COMMAND_TIMEOUT).args(["-4", "route"]));
    let used = format!(
        "{}\n{}",
        String::from_utf8_lossy(&addrs.stdout),
        String::from_utf8_lossy(&routes.stdout)
    );
    let start = pid % 254;
    (0..254)
        .map(|i| ((start + i) % 254 + 1) as u8)
        .find(|octet| {
            let prefix = format!("{}.{}.{octet}.", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
            !used.contains(&prefix)
        })
        .expect("every 10.231.x.0/24 is in use")
}
