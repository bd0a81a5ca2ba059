//! A Docker Swarm of engines in network namespaces of this machine, for the tests of swarm
//! deployments: a [`Cluster`] of `n` [`Node`]s.
//!
//! What one cluster is, per test process (`<pid>` its id; the names differ from a
//! [`DeployHost`](crate::DeployHost)'s, so one of each may live in a process):
//! - the switch namespace `mldeploy-c<pid>` holding the bridge `br0`, which joins the veth
//!   ends `n<i>` of the nodes and `host`, whose peer `mdc<pid>` (at most 10 characters: the
//!   15 of an interface name allow 7-digit pids) is this machine's, with `10.231.<o>.1/24`,
//!   `<o>` a /24 unused here. Not a bridge in this machine's namespace: this machine's
//!   dockerd loads `br_netfilter` and sets the `FORWARD` policy to `DROP`, so the frames
//!   between two ports of such a bridge pass this machine's iptables and are dropped (a TCP
//!   connection between two namespaces on one times out until an `ACCEPT` rule for the
//!   bridge is added); the switch namespace's iptables are empty, and this machine's
//!   firewall stays untouched;
//! - per node `i` (0, 1, …) the network namespace `mldeploy-c<pid>n<i>` with the veth end
//!   `eth0` at `10.231.<o>.<i + 2>/24` (no default route: the nodes, and this machine, are
//!   all it reaches; no forwarding, no NAT), loopback up; the directory
//!   `D` = `$TMPDIR/mldeploy-c<pid>/n<i>`; and an engine as a deploy host's (see the crate's
//!   docs: own containerd, data root, exec root, socket `unix://D/docker.sock`, cgroup parent
//!   `/mldeploy-c<pid>n<i>`, engine ID) without sshd, its dockerd in a UTS namespace of its
//!   own with the host name `mldeploy-c<pid>n<i>`: swarm names a node after its engine's
//!   host name, and this machine's, shared by every namespace, would name them all alike
//!   (swarm itself tells them apart by node ID, kept in the data root; the engine IDs, too,
//!   could be shared without harm to it). dockerd runs with
//!   `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`: a node starts a task from the image it holds
//!   (loaded by the test) without first trying a registry it cannot reach;
//! - the swarm: node 0 its only manager (`docker swarm init`, listening, advertising and
//!   carrying VXLAN on its address, heartbeats every [`SWARM_HEARTBEAT`]), the others
//!   workers (`docker swarm join` over node 0's address, port 2377), each labelled
//!   `mldeploy.node=<i>`. [`Cluster::start`] returns once the manager lists every node
//!   `Ready` and every engine has joined the `ingress` network (the last thing a new member
//!   sets up by itself). The kernel has VXLAN, so overlay networks work across the nodes;
//!   without IPVS, the routing mesh and VIP endpoints do not: services use
//!   `--endpoint-mode dnsrr` and `mode=host` published ports (dockerd logs that it cannot
//!   read `net.ipv4.vs.*`, and, the kernel's bridges lacking VLAN filtering, that it cannot
//!   set an overlay bridge's `default_pvid`: both harmless).
//!
//! Dropping the cluster (also when a test panics) removes all of it: each node's containers,
//! dockerd (SIGKILLed once its containers are gone: a swarm member stopping gracefully
//! waits up to 5 s at a time for peers that stop too), containerd and shims, mounts,
//! cgroups and namespace (the nodes in parallel), then this machine's veth and the switch
//! namespace with the bridge, and the directory ([`cluster_leftovers`](crate::cluster_leftovers) says what is left).
//! Starting a cluster first sweeps what killed runs left behind ([`sweep_stale`]), clusters
//! included.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{
    available,
    engine::ip,
    free_octet, make_private_dir, missing_commands,
    node::{poll_docker, Node},
    sweep_stale,
    teardown::teardown_cluster,
    Names, Steps, SUBNET_PREFIX,
};

/// The swarm's dispatcher heartbeat period: the manager marks a node `down` after about
/// two to three periods without one (swarm's default is 5 s).
pub const SWARM_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long the nodes get to show `Ready`, and then to join the `ingress` network.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One cluster at a time per test process (its names are the process's).
static LIVE: AtomicBool = AtomicBool::new(false);

/// Everything of the cluster of test process `pid` is named after it.
#[derive(Clone, Debug)]
pub struct ClusterNames {
    pub pid: u32,
    /// `mldeploy-c<pid>`: the switch namespace, the prefix of the nodes' names.
    pub name: String,
    /// `$TMPDIR/mldeploy-c<pid>`, holding the nodes' directories `n<i>`.
    pub dir: PathBuf,
    /// This machine's veth end, `mdc<pid>`.
    pub veth_host: String,
}

impl ClusterNames {
    pub fn of(pid: u32) -> ClusterNames {
        let name = format!("mldeploy-c{pid}");
        ClusterNames {
            pid,
            dir: std::env::temp_dir().join(&name),
            name,
            veth_host: format!("mdc{pid}"),
        }
    }

    /// Node `i`'s: namespace, cgroup parent and host name `mldeploy-c<pid>n<i>`, `D` the
    /// cluster's `n<i>`, veth end `eth0` (its peer, `n<i>`, in the switch namespace).
    pub fn node(&self, i: usize) -> Names {
        Names {
            pid: self.pid,
            name: format!("{}n{i}", self.name),
            dir: self.dir.join(format!("n{i}")),
            veth_host: None,
            veth_ns: "eth0".to_owned(),
        }
    }
}

/// Whether a cluster can be made here: root and the engine's packages (no SSH). Panics when
/// CI requires Docker (`MLDEPLOY_REQUIRE_DOCKER=1`) and something is missing; else says what
/// and skips.
pub fn cluster_available() -> bool {
    available(
        "the cluster tests",
        "it creates network namespaces and runs dockerd",
        missing_commands(&[
            ("ip", "iproute2"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
            ("hostname", "hostname"),
            ("docker", "docker.io"),
            ("dockerd", "docker.io"),
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("timeout", "coreutils"),
        ]),
    )
}

/// A Docker Swarm of engines in network namespaces. Removed when dropped.
pub struct Cluster {
    names: ClusterNames,
    /// This machine's address on the cluster's network.
    local_addr: Ipv4Addr,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Makes the `n`-node cluster of this test process, printing each step's time; panics
    /// (after removing what it made) when a step fails. The caller checks
    /// [`cluster_available`] first.
    pub fn start(n: usize) -> Cluster {
        assert!(
            (1..=250).contains(&n),
            "a cluster of 1 to 250 nodes, not {n}"
        );
        let started = Instant::now();
        let names = ClusterNames::of(std::process::id());
        let mut step = Steps::new(&names.name);
        assert!(
            !LIVE.load(Ordering::SeqCst),
            "one Cluster at a time per test process"
        );
        let swept = sweep_stale();
        step.done(&format!("swept stale hosts and clusters {swept:?}"));
        // Whatever a previous use of this very pid left (a pid is reused eventually).
        teardown_cluster(&names, BTreeMap::new());
        // Away from the /24 a deploy host of this process starts its search at.
        let octet = free_octet(names.pid.wrapping_add(127));
        let addr = |last: u8| Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], octet, last);
        assert!(
            !LIVE.swap(true, Ordering::SeqCst),
            "one Cluster at a time per test process"
        );
        let cluster = Cluster {
            local_addr: addr(1),
            nodes: (0..n)
                .map(|i| Node::new(names.node(i), i, addr(i as u8 + 2)))
                .collect(),
            names,
        };
        // From here a panic drops `cluster`, which removes what was made so far.
        cluster.make_network();
        step.done(&format!(
            "network: {} on {}, nodes {}…{}",
            cluster.local_addr,
            cluster.names.veth_host,
            cluster.nodes[0].addr(),
            cluster.nodes[n - 1].addr()
        ));
        make_private_dir(&cluster.names.dir);
        on_every_node(&cluster.nodes, |node| node.start_first());
        step.done("containerd + dockerd answer on every node");
        let manager = &cluster.nodes[0];
        let token = manager.swarm_init(SWARM_HEARTBEAT);
        step.done("swarm init on node 0");
        on_every_node(&cluster.nodes[1..], |node| {
            node.swarm_join(&token, manager.addr())
        });
        step.done("the workers joined");
        cluster.wait_all_ready(JOIN_TIMEOUT);
        for node in &cluster.nodes {
            manager.docker(&[
                "node",
                "update",
                "--label-add",
                &format!("mldeploy.node={}", node.index()),
                &node.node_id(),
            ]);
        }
        step.done(&format!("{n} nodes Ready, labelled mldeploy.node=<i>"));
        on_every_node(&cluster.nodes, |node| node.wait_ingress(JOIN_TIMEOUT));
        step.done("every node on the ingress network");
        cluster.check_reachable();
        println!(
            "[{}] cluster of {n} ready in {:.2} s",
            cluster.names.name,
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    pub fn names(&self) -> &ClusterNames {
        &self.names
    }

    /// This machine's address on the cluster's network (the nodes reach it, too).
    pub fn local_addr(&self) -> Ipv4Addr {
        self.local_addr
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node 0, the swarm's only manager.
    pub fn manager(&self) -> &Node {
        &self.nodes[0]
    }

    /// Copies `image` from this machine's engine to every node (in parallel); the time it
    /// took.
    pub fn load_image_everywhere(&self, image: &str) -> Duration {
        let started = Instant::now();
        on_every_node(&self.nodes, |node| {
            node.load_image(image);
        });
        started.elapsed()
    }

    /// `docker node ls` on the manager, one `<hostname> <status> <availability>` line per
    /// node, sorted; empty when the manager does not answer.
    pub fn node_list(&self) -> Vec<String> {
        let out = self.manager().try_docker(&[
            "node",
            "ls",
            "--format",
            "{{.Hostname}} {{.Status}} {{.Availability}}",
        ]);
        let mut lines: Vec<String> = out.unwrap_or_default().lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    /// Waits until the manager sees node `i` in state `status` (`ready`, `down`, as
    /// `docker node inspect` says `.Status.State`); the time it took. Panics, with the node
    /// list, after `timeout`.
    pub fn wait_node_status(&self, i: usize, status: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let id = self.nodes[i].node_id();
        let mut last = String::new();
        let reached = poll_docker(timeout, || {
            last = self
                .manager()
                .try_docker(&["node", "inspect", "--format", "{{.Status.State}}", &id])
                .unwrap_or_default();
            last.trim().eq_ignore_ascii_case(status)
        });
        assert!(
            reached,
            "the manager did not see node {i} ({}) {status} within {} s (last: {:?}); nodes:\n{}",
            self.nodes[i].hostname(),
            timeout.as_secs(),
            last.trim(),
            self.node_list().join("\n")
        );
        started.elapsed()
    }

    fn wait_all_ready(&self, timeout: Duration) {
        let n = self.nodes.len();
        let mut last = Vec::new();
        let ready = poll_docker(timeout, || {
            last = self.node_list();
            last.iter().filter(|l| l.contains(" Ready ")).count() == n
        });
        assert!(
            ready,
            "not all {n} nodes Ready within {} s; docker node ls:\n{}",
            timeout.as_secs(),
            last.join("\n")
        );
    }

    /// The switch namespace with its bridge, this machine's veth to it, each node's namespace
    /// and veth to it.
    fn make_network(&self) {
        let c = &self.names;
        ip(&["netns", "add", &c.name]);
        ip(&["-n", &c.name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &c.name, "link", "set", "br0", "up"]);
        let peer = |name: &str, netns: &str, link: &str| {
            ip(&[
                "-n", &c.name, "link", "add", link, "type", "veth", "peer", "name", name, "netns",
                netns,
            ]);
            ip(&["-n", &c.name, "link", "set", link, "master", "br0", "up"]);
        };
        // This machine's end stays here, its peer goes onto the bridge.
        ip(&[
            "link",
            "add",
            &c.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &c.name,
        ]);
        ip(&["-n", &c.name, "link", "set", "host", "master", "br0", "up"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.local_addr),
            "dev",
            &c.veth_host,
        ]);
        ip(&["link", "set", &c.veth_host, "up"]);
        for node in &self.nodes {
            let n = node.names();
            ip(&["netns", "add", &n.name]);
            peer(&n.veth_ns, &n.name, &format!("n{}", node.index()));
            ip(&[
                "-n",
                &n.name,
                "addr",
                "add",
                &format!("{}/24", node.addr()),
                "dev",
                &n.veth_ns,
            ]);
            ip(&["-n", &n.name, "link", "set", &n.veth_ns, "up"]);
            ip(&["-n", &n.name, "link", "set", "lo", "up"]);
        }
    }

    /// This machine reaches every node: each one's swarm gossip port (7946) accepts.
    fn check_reachable(&self) {
        for node in &self.nodes {
            let address = SocketAddr::from((node.addr(), 7946));
            TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap_or_else(|e| {
                panic!(
                    "this machine cannot reach node {} at {address}: {e}",
                    node.index()
                )
            });
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let started = Instant::now();
        let children = self
            .nodes
            .iter()
            .map(|node| (node.index(), node.take_children()))
            .collect();
        let left = teardown_cluster(&self.names, children);
        LIVE.store(false, Ordering::SeqCst);
        println!(
            "[{}] removed the cluster in {:.2} s{}",
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

/// Runs `f` for every node, in parallel; a panic in one is raised here again (after all
/// finished), with its message.
fn on_every_node(nodes: &[Node], f: impl Fn(&Node) + Sync) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = nodes.iter().map(|node| scope.spawn(|| f(node))).collect();
        let mut first_panic = None;
        for handle in handles {
            if let Err(panic) = handle.join() {
                first_panic.get_or_insert(panic);
            }
        }
        if let Some(panic) = first_panic {
            std::panic::resume_unwind(panic);
        }
    });
}
