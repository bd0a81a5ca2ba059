//! The [`Cluster`] fixture end to end: a three-node Docker Swarm of engines in network
//! namespaces, a `dnsrr` service spread over the nodes on a VXLAN overlay network, TCP
//! between containers of different nodes over it, `mode=host` published ports reached from
//! this machine, a node's engine stopped and its task moved to the others, the engine
//! started again and the node back (without its replaced task), and nothing left once the
//! cluster is dropped; and the cluster of a killed test process removed by
//! [`sweep_stale`]. The tests take turns (each cluster wants the machine's cores).
//!
//! Needs root and the engine's packages ([`cluster_available`]: skips, printing why,
//! unless `MLDEPLOY_REQUIRE_DOCKER=1`), and the images `ml-service:latest` (a static HTTP
//! server on 8080 with `/health`) and `mldeploy-nginx:bookworm` (Debian: `bash`, `getent`)
//! in this machine's engine.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use testhost::{
    cluster_available, cluster_leftovers, docker_required, poll_every, sweep_stale, Cluster,
    ClusterNames,
};

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// Set for the child process of [`killed_run_is_swept`].
const CHILD_ENV: &str = "MLDEPLOY_CLUSTER_TEST_CHILD";

const SERVICE_IMAGE: &str = "ml-service:latest";
const CLIENT_IMAGE: &str = "mldeploy-nginx:bookworm";
const NETWORK: &str = "mlnet";
const SERVICE: &str = "web";
/// The `mode=host` published port of the global service `edge`.
const EDGE_PORT: u16 = 18080;
const DEADLINE: Duration = Duration::from_secs(60);

/// Prints each step's time since the previous one and since the start.
struct Clock {
    start: Instant,
    last: Instant,
}

impl Clock {
    fn step(&mut self, what: &str) {
        println!(
            "[cluster test] {what}: {:.2} s (at {:.2} s)",
            self.last.elapsed().as_secs_f64(),
            self.start.elapsed().as_secs_f64()
        );
        self.last = Instant::now();
    }
}

/// Whether this machine's engine holds `image`.
fn have_image(image: &str) -> bool {
    Command::new("docker")
        .env_remove("DOCKER_HOST")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn poll(f: impl FnMut() -> bool) -> bool {
    poll_every(Duration::from_millis(250), DEADLINE, f)
}

/// The running tasks of `service` as the manager sees them: `(node host name, state)`.
fn running_tasks(cluster: &Cluster, service: &str) -> Vec<(String, String)> {
    cluster
        .manager()
        .try_docker(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}|{{.CurrentState}}",
        ])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('|'))
        .filter(|(_, state)| state.starts_with("Running"))
        .map(|(node, state)| (node.to_owned(), state.to_owned()))
        .collect()
}

/// The overlay addresses of the `service` containers running on node `i`.
fn task_addrs(cluster: &Cluster, i: usize, service: &str) -> Vec<Ipv4Addr> {
    let node = &cluster.nodes()[i];
    let ids = node.docker(&[
        "ps",
        "--quiet",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]);
    ids.split_whitespace()
        .map(|id| {
            let format =
                format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}");
            node.docker(&["inspect", "--format", &format, id])
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("the address of {id} on node {i}: {e}"))
        })
        .collect()
}

/// `GET /health` over HTTP/1.0 from this machine; the whole response.
fn http_health(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn three_node_swarm_overlay_and_failover() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available() {
        return;
    }
    for image in [SERVICE_IMAGE, CLIENT_IMAGE] {
        if !have_image(image) {
            let message =
                format!("the cluster test needs the image {image} in this machine's engine");
            assert!(
                !docker_required(),
                "MLDEPLOY_REQUIRE_DOCKER=1 but {message}"
            );
            eprintln!("skipping: {message}");
            return;
        }
    }
    let mut clock = Clock {
        start: Instant::now(),
        last: Instant::now(),
    };
    let cluster = Cluster::start(3);
    let names = cluster.names().clone();
    let nodes = cluster.nodes();
    let manager = cluster.manager();
    clock.step("Cluster::start(3)");

    let hostnames: BTreeSet<String> = nodes.iter().map(|n| n.hostname().to_owned()).collect();
    let listed = cluster.node_list();
    assert_eq!(listed.len(), 3, "docker node ls: {listed:?}");
    for node in nodes {
        assert!(
            listed.contains(&format!("{} Ready Active", node.hostname())),
            "{} Ready in {listed:?}",
            node.hostname()
        );
        let label = manager.docker(&[
            "node",
            "inspect",
            "--format",
            "{{index .Spec.Labels \"mldeploy.node\"}}",
            &node.node_id(),
        ]);
        assert_eq!(
            label.trim(),
            node.index().to_string(),
            "the mldeploy.node label"
        );
    }
    let engine_ids: BTreeSet<String> = nodes
        .iter()
        .map(|n| n.docker(&["info", "--format", "{{.ID}}"]).trim().to_owned())
        .collect();
    assert_eq!(engine_ids.len(), 3, "distinct engine IDs: {engine_ids:?}");

    std::thread::scope(|scope| {
        scope.spawn(|| nodes[0].load_image(CLIENT_IMAGE));
        cluster.load_image_everywhere(SERVICE_IMAGE);
    });
    clock.step(&format!(
        "{SERVICE_IMAGE} loaded on every node, {CLIENT_IMAGE} on node 0"
    ));

    manager.docker(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "--subnet",
        "10.78.0.0/24",
        NETWORK,
    ]);
    manager.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        SERVICE,
        "--replicas",
        "3",
        "--endpoint-mode",
        "dnsrr",
        "--no-resolve-image",
        "--network",
        NETWORK,
        "--placement-pref",
        "spread=node.id",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "2s",
        SERVICE_IMAGE,
    ]);
    let mut tasks = Vec::new();
    let spread = poll(|| {
        tasks = running_tasks(&cluster, SERVICE);
        let on: BTreeSet<&String> = tasks.iter().map(|(node, _)| node).collect();
        tasks.len() == 3 && on.len() == 3
    });
    assert!(spread, "3 running tasks on 3 nodes: {tasks:?}");
    let on: BTreeSet<String> = tasks.into_iter().map(|(node, _)| node).collect();
    assert_eq!(on, hostnames, "the tasks' nodes");
    clock.step("service web: 3 tasks running, one per node");

    // Cross-node TCP over the overlay: from a container on node 0 to the tasks on nodes 1
    // and 2 (VXLAN between the namespaces), and swarm's DNS answering `tasks.web`.
    for target in [1, 2] {
        let addrs = task_addrs(&cluster, target, SERVICE);
        assert_eq!(addrs.len(), 1, "the task on node {target}: {addrs:?}");
        let script = format!(
            "exec 3<>/dev/tcp/{}/8080; printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
            addrs[0]
        );
        let response = nodes[0].docker(&[
            "run",
            "--rm",
            "--network",
            NETWORK,
            CLIENT_IMAGE,
            "bash",
            "-c",
            &script,
        ]);
        assert!(
            response.starts_with("HTTP/1.") && response.lines().next().unwrap().contains(" 200"),
            "GET /health from node 0 to the task on node {target} ({}): {response:?}",
            addrs[0]
        );
    }
    let dns = nodes[0].docker(&[
        "run",
        "--rm",
        "--network",
        NETWORK,
        CLIENT_IMAGE,
        "getent",
        "ahostsv4",
        &format!("tasks.{SERVICE}"),
    ]);
    let resolved: BTreeSet<&str> = dns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        resolved.len(),
        3,
        "tasks.{SERVICE} resolves to the 3 tasks: {dns}"
    );
    clock.step("node 0 -> tasks on nodes 1 and 2 over the overlay: GET /health 200; DNS 3 tasks");

    // This machine to `mode=host` published ports on every node's address.
    manager.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "edge",
        "--mode",
        "global",
        "--endpoint-mode",
        "dnsrr",
        "--no-resolve-image",
        "--publish",
        &format!("mode=host,target=8080,published={EDGE_PORT}"),
        "--stop-grace-period",
        "1s",
        SERVICE_IMAGE,
    ]);
    for node in nodes {
        let address = SocketAddr::from((node.addr(), EDGE_PORT));
        let mut last = String::new();
        let answered = poll(|| {
            last = match http_health(address) {
                Ok(response) => response,
                Err(e) => e.to_string(),
            };
            last.lines().next().is_some_and(|l| l.contains(" 200"))
        });
        assert!(
            answered,
            "GET http://{address}/health from this machine: {last:?}"
        );
    }
    clock.step("this machine -> every node's mode=host port: GET /health 200");

    let stopped = nodes[2].stop_engine();
    clock.step(&format!(
        "node 2's dockerd stopped ({:.2} s)",
        stopped.as_secs_f64()
    ));
    let down = cluster.wait_node_status(2, "down", DEADLINE);
    clock.step(&format!(
        "the manager sees node 2 down ({:.2} s)",
        down.as_secs_f64()
    ));
    let survivors: BTreeSet<String> = nodes[..2].iter().map(|n| n.hostname().to_owned()).collect();
    let mut tasks = Vec::new();
    let moved = poll(|| {
        tasks = running_tasks(&cluster, SERVICE);
        let on: BTreeSet<String> = tasks.iter().map(|(node, _)| node.clone()).collect();
        tasks.len() == 3 && on == survivors
    });
    assert!(
        moved,
        "3 running tasks on nodes 0 and 1 after node 2 went down: {tasks:?}"
    );
    // The containers themselves, not just the manager's view.
    let containers: usize = (0..2).map(|i| task_addrs(&cluster, i, SERVICE).len()).sum();
    assert_eq!(containers, 3, "web containers on nodes 0 and 1");
    clock.step("node 2's task rescheduled: 3 running tasks on nodes 0 and 1");

    // Back: the engine starts on its data root, the node rejoins, and its old task, which
    // the manager replaced, does not run again.
    let restarted = nodes[2].start_engine();
    let ready = cluster.wait_node_status(2, "ready", DEADLINE);
    clock.step(&format!(
        "node 2's dockerd started ({:.2} s), the manager sees it ready ({:.2} s)",
        restarted.as_secs_f64(),
        ready.as_secs_f64()
    ));
    let mut stale = Vec::new();
    let cleared = poll(|| {
        stale = task_addrs(&cluster, 2, SERVICE);
        stale.is_empty()
    });
    assert!(
        cleared,
        "node 2 runs its replaced web task again: {stale:?}"
    );
    let tasks = running_tasks(&cluster, SERVICE);
    assert_eq!(tasks.len(), 3, "still 3 running web tasks: {tasks:?}");
    clock.step("node 2 runs no web task; still 3 running");

    drop(cluster);
    clock.step("cluster dropped");
    let left = cluster_leftovers(&names);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The child of [`killed_run_is_swept`] (ignored otherwise): starts a two-node cluster, says
/// so, and waits to be killed.
#[test]
#[ignore = "run by killed_run_is_swept"]
fn killed_run_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let cluster = Cluster::start(2);
    println!("CLUSTER READY {}", cluster.names().pid);
    std::thread::sleep(Duration::from_secs(120));
}

/// A test process killed (SIGKILL) while its cluster runs leaves all of it behind;
/// [`sweep_stale`] removes it.
#[test]
fn killed_run_is_swept() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available() {
        return;
    }
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["killed_run_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the child test");
    let pid = child.id();
    let mut ready = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("  child: {line}");
        if line.starts_with("CLUSTER READY") {
            ready = true;
            break;
        }
    }
    if !ready {
        let _ = child.kill();
    }
    assert!(
        ready,
        "the child's cluster did not start: {:?}",
        child.wait()
    );
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    println!(
        "[sweep test] child {pid} with a 2-node cluster killed ({status}) at {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let names = ClusterNames::of(pid);
    let left = cluster_leftovers(&names);
    assert!(
        left.iter().any(|l| l.starts_with("process"))
            && left.iter().any(|l| l.contains("namespace")),
        "a killed run leaves its engines and namespaces: {left:?}"
    );
    let swept_at = Instant::now();
    let swept = sweep_stale();
    println!(
        "[sweep test] sweep_stale() -> {swept:?} in {:.2} s ({} leftovers before)",
        swept_at.elapsed().as_secs_f64(),
        left.len()
    );
    if !swept.contains(&pid) {
        // Another test process's start swept it in between (they all sweep).
        println!("[sweep test] {pid} was swept by another process");
    }
    let left = cluster_leftovers(&names);
    assert!(left.is_empty(), "left behind after the sweep: {left:?}");
}
