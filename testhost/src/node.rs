//! One node of a [`Cluster`](crate::Cluster): its engine (reached over its own unix socket,
//! never over SSH), the images it holds, stopping and starting its engine, and its part in
//! the swarm (`init`, `join`, its node ID).

use std::{
    net::Ipv4Addr,
    process::{Child, Command},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{
    bounded, copy_image, make_private_dir, output, poll_every, Engine, Names, COMMAND_TIMEOUT,
};

/// How long a node's swarm component gets to be `active` again after its engine started.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A node of a cluster: a network namespace with its own Docker engine, a swarm member.
pub struct Node {
    index: usize,
    names: Names,
    addr: Ipv4Addr,
    engine: Engine,
    /// Its swarm node ID, known once it is in the swarm (it keeps it across engine restarts:
    /// it lives in the data root).
    node_id: OnceLock<String>,
}

impl Node {
    pub(crate) fn new(names: Names, index: usize, addr: Ipv4Addr) -> Node {
        Node {
            engine: Engine::new(&names, Some(names.name.clone())),
            index,
            names,
            addr,
            node_id: OnceLock::new(),
        }
    }

    /// Its index in [`Cluster::nodes`](crate::Cluster::nodes), also its `mldeploy.node` label.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Its address on the cluster's network, the swarm's address of the node, where its
    /// `mode=host` published ports listen.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its engine's host name, `mldeploy-c<pid>n<i>`: the node's `Hostname` in
    /// `docker node ls`, `{{.Node.Hostname}}` in `docker service ps`.
    pub fn hostname(&self) -> &str {
        &self.names.name
    }

    /// `unix://D/docker.sock`, the `DOCKER_HOST` of its engine.
    pub fn docker_host(&self) -> String {
        self.names.engine_socket()
    }

    /// A `docker` command against its engine (`DOCKER_HOST` set, any `DOCKER_CONTEXT`
    /// removed), killed after a minute.
    pub fn docker_command(&self, args: &[&str]) -> Command {
        self.docker_command_within(COMMAND_TIMEOUT, args)
    }

    fn docker_command_within(&self, limit: Duration, args: &[&str]) -> Command {
        let mut cmd = bounded("docker", limit);
        cmd.env("DOCKER_HOST", self.docker_host())
            .env_remove("DOCKER_CONTEXT")
            .args(args);
        cmd
    }

    /// `docker <args>` against its engine; its stdout. Panics unless it succeeded.
    pub fn docker(&self, args: &[&str]) -> String {
        crate::docker_stdout(self.docker_command(args), &self.docker_host(), args)
    }

    /// `docker <args>` against its engine: its stdout if it succeeded.
    pub fn try_docker(&self, args: &[&str]) -> Option<String> {
        let out = output(&mut self.docker_command(args));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Copies `image` from this machine's engine to the node's (`docker save | docker
    /// load`); the time it took.
    pub fn load_image(&self, image: &str) -> Duration {
        let took = copy_image(
            image,
            &mut self.docker_command_within(Duration::from_secs(300), &["load", "--quiet"]),
            &self.docker_host(),
        );
        println!(
            "[{}] loaded {image} in {:.2} s",
            self.names.name,
            took.as_secs_f64()
        );
        took
    }

    /// Stops its engine as a host's shutdown would: SIGTERM to dockerd, which stops its
    /// containers and leaves; returns once dockerd exited, with the time it took. containerd
    /// keeps running. Its swarm membership stays (the manager sees it `down` after missing
    /// heartbeats: [`Cluster::wait_node_status`](crate::Cluster::wait_node_status)).
    pub fn stop_engine(&self) -> Duration {
        let took = self.engine.stop_dockerd();
        println!(
            "[{}] dockerd stopped in {:.2} s",
            self.names.name,
            took.as_secs_f64()
        );
        took
    }

    /// Starts its engine again, on the same data root: it answers, and its swarm component
    /// is `active` again (the node rejoins on its own; the manager's view follows with the
    /// next heartbeat). Returns the time it took.
    pub fn start_engine(&self) -> Duration {
        let started = Instant::now();
        self.engine.start();
        let mut state = String::new();
        let active = poll_docker(REJOIN_TIMEOUT, || {
            state = self
                .try_docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
                .unwrap_or_default();
            state.trim() == "active"
        });
        assert!(
            active,
            "{}: the swarm state is {:?}, not active, {} s after its dockerd started",
            self.names.name,
            state.trim(),
            REJOIN_TIMEOUT.as_secs()
        );
        let took = started.elapsed();
        println!(
            "[{}] dockerd started, swarm active, in {:.2} s",
            self.names.name,
            took.as_secs_f64()
        );
        took
    }

    /// Its swarm node ID (`docker info`'s `.Swarm.NodeID`, read once).
    pub fn node_id(&self) -> String {
        self.node_id
            .get_or_init(|| {
                let id = self.docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
                let id = id.trim().to_owned();
                assert!(!id.is_empty(), "{} is in no swarm", self.names.name);
                id
            })
            .clone()
    }

    /// `D`, the engine's files, and the engine started.
    pub(crate) fn start_first(&self) {
        make_private_dir(&self.names.dir);
        self.engine.make_files();
        self.engine.start();
    }

    /// `docker swarm init` on the node's address (the control plane's, gossip's and VXLAN's),
    /// with `heartbeat` as the dispatcher's heartbeat period; the worker join token.
    pub(crate) fn swarm_init(&self, heartbeat: Duration) -> String {
        let heartbeat = format!("{}s", heartbeat.as_secs().max(1));
        let mut args = vec!["swarm", "init", "--dispatcher-heartbeat", &heartbeat];
        let own = self.own_address_flags();
        args.extend(own.iter().map(String::as_str));
        self.docker(&args);
        self.docker(&["swarm", "join-token", "--quiet", "worker"])
            .trim()
            .to_owned()
    }

    /// The swarm's control plane and VXLAN on the node's own address (it has no other).
    fn own_address_flags(&self) -> Vec<String> {
        let addr = self.addr.to_string();
        vec![
            "--advertise-addr".into(),
            addr.clone(),
            "--listen-addr".into(),
            format!("{addr}:2377"),
            "--data-path-addr".into(),
            addr,
        ]
    }

    /// `docker swarm join` as a worker, over `manager:2377`, on the node's address.
    pub(crate) fn swarm_join(&self, token: &str, manager: Ipv4Addr) {
        let manager = format!("{manager}:2377");
        let mut args = vec!["swarm", "join", "--token", token];
        let own = self.own_address_flags();
        args.extend(own.iter().map(String::as_str));
        args.push(&manager);
        self.docker(&args);
        self.node_id();
    }

    /// Waits until the node's engine has joined the swarm's `ingress` network (its
    /// `ingress-sbox` endpoint is there): the last of what a new swarm member sets up on its
    /// own; a dockerd stopped in the middle of it waits 5 s for it on its way out.
    pub(crate) fn wait_ingress(&self, timeout: Duration) {
        let mut last = String::new();
        let joined = poll_docker(timeout, || {
            last = self
                .try_docker(&[
                    "network",
                    "inspect",
                    "ingress",
                    "--format",
                    "{{range $k, $v := .Containers}}{{$k}} {{end}}",
                ])
                .unwrap_or_default();
            last.split_whitespace().any(|k| k == "ingress-sbox")
        });
        assert!(
            joined,
            "{}: no ingress-sbox on the ingress network within {} s ({:?})",
            self.names.name,
            timeout.as_secs(),
            last.trim()
        );
    }

    /// This process's handles of its engine's processes, for the teardown.
    pub(crate) fn take_children(&self) -> Vec<Child> {
        self.engine.take_children()
    }
}

/// Polls `f`, which runs a `docker` command, every 200 ms until it holds or `timeout`
/// passes; whether it held.
pub(crate) fn poll_docker(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll_every(Duration::from_millis(200), timeout, f)
}
