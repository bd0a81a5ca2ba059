//! The swarm runtime on three nodes: dockerd instances in network namespaces of this machine
//! (the `testhost` crate's [`Cluster`]: node 0 the manager, nodes 1 and 2 workers, the control
//! plane and the overlay networks' VXLAN over the namespaces' own addresses), driven by the
//! real `cargo xtask` binary with `DOCKER_HOST` on the manager's socket, as an operator would
//! drive a cluster. Steps of [`swarm_runtime_on_three_nodes`]:
//! 1. `build` the image on this machine's engine and copy it (and the nginx image) to the nodes:
//!    no registry;
//! 2. `up` with 3 replicas per color: each color's replicas on 3 distinct nodes; `smoke`;
//! 3. a switch under load through the manager's published port: 0 failed requests;
//! 4. node 2's engine stopped under load (its replicas of both colors go with it): the failed
//!    requests are counted (target 0: nginx passes a request whose replica does not answer to
//!    another replica), the manager marks the node down and swarm reschedules its tasks onto
//!    nodes 0 and 1 (printed), after which a switch to the rescheduled color passes every gate;
//! 5. `down` leaves no service, network or volume of the stack on the manager.
//!
//! It needs root, a Docker engine on this machine and the deploy-host packages; without them it
//! says why and returns (with `MLDEPLOY_REQUIRE_DOCKER=1`, CI, it fails instead).

mod common;

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{
    compose::{docker_quiet, engine_available, BLUE_VERSION, GREEN_VERSION},
    http::Balancer,
    load::under_load,
    poll_until,
    remote::{cluster_available, Cluster},
    xtask::{stdout, Xtask},
};
use serde_json::Value;

/// The stack's ports on the manager node: its namespace has nothing else listening.
const PORTS: [u16; 6] = [28080, 28081, 28082, 28050, 28051, 28052];

struct ClusterStack {
    dir: PathBuf,
    xtask: Xtask,
    balancer: Balancer,
    image: String,
}

impl ClusterStack {
    fn status(&self) -> Value {
        let text = stdout(&self.xtask.ok(&["status", "--json"]).0);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// `color`'s healthy replicas as (node, address).
    fn replicas(&self, color: &str) -> Vec<(String, String)> {
        let status = self.status();
        status["colors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["color"] == color)
            .and_then(|c| c["replicas"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|r| r["healthy"] == true)
            .map(|r| {
                (
                    r["node"].as_str().unwrap_or_default().to_owned(),
                    r["address"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for ClusterStack {
    fn drop(&mut self) {
        let _ = self.xtask.run(&["down"]);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = docker_quiet(&["rmi", &format!("{}:latest", self.image)]);
    }
}

/// The nginx image on this machine's engine: the official one when it is there, else the
/// offline build (`cargo xtask build --offline` makes it when neither is).
fn nginx_image(xtask: &Xtask) -> String {
    for image in ["nginx:1.27", "mldeploy-nginx:bookworm"] {
        if !docker_quiet(&["image", "ls", "--quiet", image])
            .trim()
            .is_empty()
        {
            return image.to_owned();
        }
    }
    xtask.ok(&["build", "--offline"]);
    "mldeploy-nginx:bookworm".to_owned()
}

#[test]
fn swarm_runtime_on_three_nodes() {
    if !engine_available() || !cluster_available() {
        return;
    }
    let t = Instant::now();
    let step = |what: &str| println!("=== {what} (at {:.0} s)", t.elapsed().as_secs_f64());
    let pid = std::process::id();
    let stack_name = format!("mldeploy-swc-{pid}");
    let dir = std::env::temp_dir().join(&stack_name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let image = format!("{stack_name}/ml-service");
    let write_config = |nginx: &str| {
        let [balancer, blue, green, balancer_grpc, blue_grpc, green_grpc] = PORTS;
        fs::write(
            dir.join("deploy.toml"),
            format!(
                "[balancer]\nport = {balancer}\ngrpc_port = {balancer_grpc}\n\
                 [blue]\nversion = \"{BLUE_VERSION}\"\nport = {blue}\ngrpc_port = {blue_grpc}\n\
                 [green]\nversion = \"{GREEN_VERSION}\"\nport = {green}\ngrpc_port = {green_grpc}\n\
                 [local]\nstate_dir = \"{}\"\n\
                 [compose]\nproject = \"{stack_name}\"\nimage = \"{image}\"\nnginx_image = \"{nginx}\"\n\
                 [swarm]\nreplicas = 3\n\
                 [timeouts]\nhealthy_secs = 90\nlock_secs = 60\n",
                dir.join("local").display()
            ),
        )
        .unwrap();
    };

    // 1. Images on this machine's engine, then on the nodes.
    step("build the image here");
    write_config("nginx:1.27");
    let local = Xtask {
        runtime: "swarm",
        config: dir.join("deploy.toml"),
        env: Vec::new(),
        echo: true,
    };
    local.ok(&["build"]);
    let nginx = nginx_image(&local);
    write_config(&nginx);
    step("start a three-node swarm");
    let cluster = Cluster::start(3);
    let manager = cluster.manager();
    let service_image = format!("{image}:latest");
    let took = cluster.load_image_everywhere(&service_image);
    manager.load_image(&nginx);
    println!("images copied to the nodes in {:.1} s", took.as_secs_f64());
    let stack = ClusterStack {
        xtask: Xtask {
            runtime: "swarm",
            config: dir.join("deploy.toml"),
            env: vec![
                ("DOCKER_HOST", OsString::from(manager.docker_host())),
                (
                    "MLDEPLOY_PUBLIC_HOST",
                    OsString::from(manager.addr().to_string()),
                ),
            ],
            echo: true,
        },
        balancer: Balancer {
            addr: format!("{}:{}", manager.addr(), PORTS[0]),
        },
        dir: dir.clone(),
        image: image.clone(),
    };

    // 2. Up: each color's replicas spread over the three nodes.
    step("up with 3 replicas per color");
    stack.xtask.ok(&["up"]);
    for color in ["blue", "green"] {
        let replicas = stack.replicas(color);
        let nodes: BTreeSet<&String> = replicas.iter().map(|(node, _)| node).collect();
        assert_eq!(replicas.len(), 3, "{color}: {replicas:?}");
        assert_eq!(
            nodes.len(),
            3,
            "{color}'s replicas are not spread over 3 nodes: {replicas:?}"
        );
        println!("{color}: {replicas:?}");
    }
    stack.xtask.ok(&["smoke"]);

    // 3. A switch under load.
    step("a switch under load");
    let ((), tally) = under_load(&stack.balancer, 4, |_| {
        stack.xtask.ok(&["switch"]);
        stack
            .balancer
            .wait_served(GREEN_VERSION, Duration::from_secs(15));
    });
    tally.assert_no_failures("a switch on three nodes");

    // 4. Node 2's engine stopped under load.
    step("node 2's engine stopped under load");
    let lost = cluster.nodes()[2].hostname().to_owned();
    let ((), tally) = under_load(&stack.balancer, 4, |load| {
        let stopped = cluster.nodes()[2].stop_engine();
        println!("node 2's engine stopped in {:.1} s", stopped.as_secs_f64());
        let down = cluster.wait_node_status(2, "down", Duration::from_secs(60));
        println!(
            "the manager saw node 2 down after {:.1} s",
            down.as_secs_f64()
        );
        let rescheduled = Instant::now();
        assert!(
            poll_until(Duration::from_secs(90), || {
                ["blue", "green"].iter().all(|color| {
                    let replicas = stack.replicas(color);
                    replicas.len() == 3 && replicas.iter().all(|(node, _)| *node != lost)
                })
            }),
            "swarm did not reschedule node 2's replicas onto the other nodes"
        );
        println!(
            "swarm rescheduled node 2's replicas in {:.1} s: blue {:?}, green {:?}",
            rescheduled.elapsed().as_secs_f64(),
            stack.replicas("blue"),
            stack.replicas("green")
        );
        load.wait_for_more(500);
    });
    println!(
        "requests while node 2 was lost: {} ok, {} failed",
        tally.ok, tally.failed
    );
    tally.assert_no_failures("node 2's engine stopped");
    // The standby (blue) got its lost replica back elsewhere: a switch gates all three.
    let ((), tally) = under_load(&stack.balancer, 4, |_| {
        stack.xtask.ok(&["switch"]);
        stack
            .balancer
            .wait_served(BLUE_VERSION, Duration::from_secs(15));
    });
    tally.assert_no_failures("a switch after the failover");

    // 5. Down.
    step("down");
    stack.xtask.ok(&["down"]);
    let label = format!("label=com.docker.stack.namespace={stack_name}");
    for args in [
        vec!["service", "ls", "--quiet", "--filter", &label],
        vec!["network", "ls", "--quiet", "--filter", &label],
        vec!["volume", "ls", "--quiet", "--filter", &label],
    ] {
        let left = manager.docker(&args);
        assert!(left.trim().is_empty(), "down left {args:?}: {left}");
    }
    drop(stack);
    drop(cluster);
    step("done");
}
