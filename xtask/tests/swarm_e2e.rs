//! End-to-end tests of the swarm runtime on a one-node Docker Swarm: the machine's own engine,
//! made a swarm manager by CI's set-up (`cargo xtask ci`) or, run alone, by this test, which then
//! leaves the swarm again.
//!
//! The stack is the test's own (`mldeploy-sw-<pid>`: services, networks on unused subnets, the
//! state volume, free ports, its own image name), driven by the real `cargo xtask` binary with
//! `--runtime swarm`. Steps of [`swarm_runtime_end_to_end`]:
//! 1. `build`, `up` with 3 replicas per color, `status` lists 3 healthy replicas per color on
//!    distinct addresses, `smoke`; a `shadow` run under load, every replica's journal read;
//! 2. under HTTP and gRPC keep-alive load through the balancer: switches, a rollback, a stepped
//!    canary and a `deploy` (a rolling update of the standby's 3 replicas): 0 failed requests
//!    and 0 failed calls;
//! 3. one replica of the active color killed under load: 0 failed requests; swarm replaces it
//!    with a new address, and nginx sends it traffic with no reload (the same worker processes);
//! 4. one replica of the standby frozen: `switch` is refused, naming that replica, and traffic
//!    stays where it was; a `deploy` of a version whose model is missing: swarm rolls the
//!    standby's update back, the deploy is refused, nothing switches;
//! 5. `scale` the standby to 1 and back to 3; `status` follows;
//! 6. `down` leaves no service, container, network or volume of the stack (and the swarm, which
//!    it did not create, in place).

mod common;

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    compose::{docker, docker_quiet, engine_available, free_subnets, BLUE_VERSION, GREEN_VERSION},
    free_ports,
    grpc_load::under_grpc_load,
    http::Balancer,
    load::under_load,
    poll_until,
    xtask::{stdout, Xtask},
    COMPOSE_PORTS,
};
use serde_json::Value;

/// The stack: its configuration, its image, and the swarm it runs on.
struct SwarmStack {
    dir: PathBuf,
    stack: String,
    image: String,
    xtask: Xtask,
    balancer: Balancer,
    grpc_balancer: String,
    /// Whether this test made the engine a swarm manager (it then leaves the swarm at the end).
    made_swarm: bool,
}

impl SwarmStack {
    fn new() -> SwarmStack {
        let made_swarm = ensure_swarm();
        let pid = std::process::id();
        let stack = format!("mldeploy-sw-{pid}");
        let dir = std::env::temp_dir().join(&stack);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let [balancer, blue, green, balancer_grpc, blue_grpc, green_grpc] =
            free_ports(COMPOSE_PORTS);
        let image = format!("{stack}/ml-service");
        let [blue_subnet, green_subnet]: [String; 2] =
            free_subnets("10.79", 100..=250, 2).try_into().unwrap();
        let config = format!(
            "[balancer]\nport = {balancer}\ngrpc_port = {balancer_grpc}\nbuckets = 100\n\
             [blue]\nversion = \"{BLUE_VERSION}\"\nport = {blue}\ngrpc_port = {blue_grpc}\n\
             [green]\nversion = \"{GREEN_VERSION}\"\nport = {green}\ngrpc_port = {green_grpc}\n\
             [local]\nstate_dir = \"{}\"\n\
             [compose]\nproject = \"{stack}\"\nimage = \"{image}\"\n\
             [swarm]\nreplicas = 3\nblue_subnet = \"{blue_subnet}\"\ngreen_subnet = \"{green_subnet}\"\n\
             [timeouts]\nhealthy_secs = 60\nlock_secs = 60\n",
            dir.join("local").display()
        );
        fs::write(dir.join("deploy.toml"), config).unwrap();
        SwarmStack {
            xtask: Xtask {
                runtime: "swarm",
                config: dir.join("deploy.toml"),
                env: Vec::new(),
                echo: true,
            },
            dir,
            stack,
            image,
            balancer: Balancer::on_port(balancer),
            grpc_balancer: format!("http://127.0.0.1:{balancer_grpc}"),
            made_swarm,
        }
    }

    fn ok(&self, args: &[&str]) -> Duration {
        self.xtask.ok(args).1
    }

    fn status(&self) -> Value {
        let text = stdout(&self.xtask.ok(&["status", "--json"]).0);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// The healthy replicas' addresses of `color`, from `status`.
    fn healthy_addresses(&self, color: &str) -> BTreeSet<String> {
        let status = self.status();
        let entry = status["colors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["color"] == color)
            .unwrap()
            .clone();
        entry["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["healthy"] == true)
            .map(|r| r["address"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The running task containers of `color` (this engine is the only node).
    fn containers(&self, color: &str) -> Vec<String> {
        docker(&[
            "ps",
            "--quiet",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}_{color}", self.stack),
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    }

    fn balancer_container(&self) -> String {
        docker(&[
            "ps",
            "--quiet",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}_nginx", self.stack),
        ])
        .split_whitespace()
        .next()
        .expect("the balancer's task runs")
        .to_owned()
    }

    /// nginx's worker processes: a reload replaces them all.
    fn nginx_workers(&self) -> BTreeSet<String> {
        docker(&["top", &self.balancer_container(), "-o", "pid,args"])
            .lines()
            .filter(|l| l.contains("worker process"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// The upstream addresses in nginx's access log since `since` (RFC 3339).
    fn upstreams_since(&self, since: &str) -> BTreeSet<String> {
        let out = Command::new("docker")
            .args(["logs", "--since", since, &self.balancer_container()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["upstream_addr"].as_str().map(str::to_owned))
            .flat_map(|a| {
                a.split([',', ' ', ':'])
                    .filter(|p| p.contains('.'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `what` (its output `out`) was refused saying `says`; blue still takes all traffic,
    /// serving v1.1.0, and green has 3 healthy replicas again within a minute.
    fn assert_refused_and_unchanged(&self, out: &std::process::Output, what: &str, says: &str) {
        assert!(!out.status.success(), "{what} succeeded");
        let err = common::xtask::stderr(out);
        assert!(
            err.contains(says),
            "{what}: the refusal does not say {says:?}: {err}"
        );
        assert_eq!(self.status()["active"], "blue");
        assert_eq!(self.balancer.served_version(5), GREEN_VERSION);
        assert!(
            poll_until(Duration::from_secs(60), || self
                .healthy_addresses("green")
                .len()
                == 3),
            "after {what}, green did not have 3 healthy replicas"
        );
    }

    /// Everything labelled with the stack's name: services, containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.stack.namespace={}", self.stack);
        let mut left = Vec::new();
        for (kind, args) in [
            (
                "service",
                vec!["service", "ls", "--quiet", "--filter", &label],
            ),
            (
                "container",
                vec!["ps", "--all", "--quiet", "--filter", &label],
            ),
            (
                "network",
                vec!["network", "ls", "--quiet", "--filter", &label],
            ),
            (
                "volume",
                vec!["volume", "ls", "--quiet", "--filter", &label],
            ),
        ] {
            for id in docker_quiet(&args).split_whitespace() {
                left.push(format!("{kind} {id}"));
            }
        }
        left
    }
}

impl Drop for SwarmStack {
    fn drop(&mut self) {
        let _ = self.xtask.run(&["down"]);
        let _ = fs::remove_dir_all(&self.dir);
        for tag in docker_quiet(&[
            "image",
            "ls",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &self.image,
        ])
        .lines()
        .filter(|t| !t.is_empty())
        {
            let _ = docker_quiet(&["rmi", tag]);
        }
        if self.made_swarm {
            let _ = docker_quiet(&["swarm", "leave", "--force"]);
            let _ = docker_quiet(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// Makes the engine a one-node swarm manager unless it is one; whether it did.
fn ensure_swarm() -> bool {
    let state = docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    match state.trim() {
        "active true" => false,
        "inactive false" => {
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            true
        }
        other => panic!(
            "the engine is in a swarm but not a manager ({other}): run this test against a manager"
        ),
    }
}

fn now_rfc3339() -> String {
    String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned()
}

#[test]
fn swarm_runtime_end_to_end() {
    if !engine_available() {
        return;
    }
    let t = Instant::now();
    let step = |what: &str| println!("=== {what} (at {:.0} s)", t.elapsed().as_secs_f64());
    let stack = SwarmStack::new();

    // 1. Up with 3 replicas per color.
    step("build, up with 3 replicas per color, status, smoke");
    stack.ok(&["build"]);
    stack.ok(&["up"]);
    for color in ["blue", "green"] {
        let addresses = stack.healthy_addresses(color);
        assert_eq!(addresses.len(), 3, "{color}: {addresses:?}");
    }
    stack.ok(&["smoke"]);
    assert_eq!(stack.balancer.served_version(5), BLUE_VERSION);
    // A shadow run: copies go to any of green's replicas, answers come from any of blue's;
    // every replica's journal is read and joined by shadow id.
    let (shadow, tally) = under_load(&stack.balancer, 4, |_| {
        stdout(
            &stack
                .xtask
                .ok(&[
                    "shadow",
                    "--percent",
                    "100",
                    "--requests",
                    "300",
                    "--duration",
                    "60",
                    "--format",
                    "json",
                ])
                .0,
        )
    });
    tally.assert_no_failures("a shadow run over 3 replicas per color");
    let report: Value = serde_json::from_str(&shadow).unwrap();
    assert!(
        report["rows_compared"].as_u64().unwrap() >= 300,
        "{report:#}"
    );
    assert_eq!(
        report["agreement"]["fraction"].as_f64(),
        Some(1.0),
        "{report:#}"
    );

    // 2. Switches, a rollback, a stepped canary and a deploy under load.
    step("switches, rollback, canary, deploy under HTTP and gRPC load");
    let (((), grpc), tally) = under_load(&stack.balancer, 4, |_| {
        under_grpc_load(&stack.grpc_balancer, 1, 4, |grpc| {
            stack.ok(&["switch"]);
            stack
                .balancer
                .wait_served(GREEN_VERSION, Duration::from_secs(10));
            grpc.wait_every_channel_sees(GREEN_VERSION);
            stack.ok(&["rollback"]);
            stack
                .balancer
                .wait_served(BLUE_VERSION, Duration::from_secs(10));
            stack.ok(&["canary", "--steps", "20,100", "--hold", "3"]);
            stack
                .balancer
                .wait_served(GREEN_VERSION, Duration::from_secs(10));
            // Green is active; blue (standby) gets v1.1.0 replica by replica, then traffic.
            stack.ok(&["deploy", "--version", GREEN_VERSION]);
            assert_eq!(stack.status()["active"], "blue");
            grpc.wait_every_channel_sees(GREEN_VERSION);
        })
    });
    tally.assert_no_failures("switches, a rollback, a canary and a deploy on 3 replicas");
    grpc.assert_no_failures("switches, a rollback, a canary and a deploy on 3 replicas (gRPC)");
    println!(
        "load: {} requests, {} gRPC calls, 0 failed",
        tally.ok, grpc.ok
    );

    // 3. A replica of the active color (blue) killed under load.
    step("one replica of the active color killed under load");
    let workers = stack.nginx_workers();
    assert!(!workers.is_empty(), "no nginx worker found");
    let before = stack.healthy_addresses("blue");
    let victim = stack.containers("blue")[0].clone();
    let since = now_rfc3339();
    let ((), tally) = under_load(&stack.balancer, 8, |load| {
        docker(&["kill", &victim]);
        load.wait_for_more(2000);
    });
    tally.assert_no_failures("one replica of the active color killed");
    // Swarm replaces it, on a new address; nginx finds it through DNS, with no reload.
    let mut replaced = BTreeSet::new();
    assert!(
        poll_until(Duration::from_secs(60), || {
            let now = stack.healthy_addresses("blue");
            replaced = now.difference(&before).cloned().collect();
            now.len() == 3 && !replaced.is_empty()
        }),
        "swarm did not replace the killed replica with a healthy one on a new address"
    );
    println!("replaced by a replica at {replaced:?}");
    let ((), tally) = under_load(&stack.balancer, 4, |_| {
        assert!(
            poll_until(Duration::from_secs(20), || {
                !stack.upstreams_since(&since).is_disjoint(&replaced)
            }),
            "nginx never sent traffic to the new replica at {replaced:?}"
        );
    });
    tally.assert_no_failures("after the replacement");
    assert_eq!(stack.nginx_workers(), workers, "nginx was reloaded");

    // 4. One frozen replica of the standby: no switch to it.
    step("a frozen standby replica refuses the switch");
    let frozen = stack.containers("green")[0].clone();
    docker(&["pause", &frozen]);
    let out = stack.xtask.run(&["switch"]);
    docker_quiet(&["unpause", &frozen]);
    // Swarm may replace the frozen task as unhealthy; either way green returns to 3.
    stack.assert_refused_and_unchanged(&out, "switch to a color with a frozen replica", "replica");

    // A version whose model is missing: its first new task exits, swarm rolls the standby's
    // update back, nothing switches.
    step("a broken version is rolled back by swarm, traffic stays");
    let out = stack.xtask.run(&["deploy", "--version", "v9.9.9"]);
    stack.assert_refused_and_unchanged(
        &out,
        "deploying a missing version",
        "swarm stopped green's update to v9.9.9",
    );

    // 5. Scale the standby down and up.
    step("scale green to 1 and back to 3");
    stack.ok(&["scale", "--color", "green", "--replicas", "1"]);
    assert_eq!(stack.healthy_addresses("green").len(), 1);
    stack.ok(&["scale", "--color", "green", "--replicas", "3"]);
    assert_eq!(stack.healthy_addresses("green").len(), 3);
    stack.ok(&["switch"]);
    assert_eq!(stack.status()["active"], "green");

    // 6. Down leaves nothing of the stack.
    step("down");
    stack.ok(&["down"]);
    let left = stack.leftovers();
    assert!(left.is_empty(), "down left: {left:?}");
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(
        state.trim(),
        "active",
        "down left a swarm it did not create"
    );
    step("done");
}
