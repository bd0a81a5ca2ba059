//! The swarm runtime on a manager reached over SSH, as an operator drives a cluster from a
//! laptop: `DOCKER_HOST=ssh://root@<manager> cargo xtask --runtime swarm …`, no state here, no
//! registry.
//!
//! The manager is a [`DeployHost`] (the `testhost` crate: a network namespace of this machine
//! with its own `dockerd` and `sshd`) made a one-node swarm. Steps of
//! [`a_swarm_manager_over_ssh`]:
//! 1. `up` with 2 replicas per color: the images reach the host over the same connection;
//!    `status` lists the replicas, each reached through the relay over that connection;
//! 2. `smoke`, then a switch and a rollback under load sent to the host's own address: 0 failed
//!    requests;
//! 3. `down`: no service, network or volume of the stack is left on the host, and its swarm
//!    (which `up` did not make) stays.
//!
//! It needs root, a Docker engine here and the deploy-host packages; without them it says why
//! and returns (with `MLDEPLOY_REQUIRE_DOCKER=1`, CI, it fails instead).

mod common;

use std::{ffi::OsString, fs, time::Instant};

use common::{
    compose::engine_available,
    http::Balancer,
    load::under_load,
    remote::{deploy_host_available, DeployHost},
    xtask::{stdout, Xtask},
};
use serde_json::Value;

const STACK: &str = "mldeploy-swr";
const BLUE: &str = "v1.0.0";
const GREEN: &str = "v1.1.0";
/// The host's ports: its namespace has nothing else listening.
const PORTS: [u16; 6] = [19080, 19081, 19082, 19050, 19051, 19052];

#[test]
#[ignore = "needs root: a network namespace with its own dockerd and sshd, and edits ~/.ssh/config; CI runs it"]
fn a_swarm_manager_over_ssh() {
    if !engine_available() || !deploy_host_available() {
        return;
    }
    let t = Instant::now();
    let step = |what: &str| println!("=== {what} (at {:.0} s)", t.elapsed().as_secs_f64());
    step("a deploy host, made a one-node swarm");
    let host = DeployHost::start();
    host.docker(&[
        "swarm",
        "init",
        "--advertise-addr",
        &host.addr().to_string(),
    ]);
    let dir = std::env::temp_dir().join(format!("{STACK}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let [balancer, blue, green, balancer_grpc, blue_grpc, green_grpc] = PORTS;
    fs::write(
        dir.join("deploy.toml"),
        format!(
            "[balancer]\nport = {balancer}\ngrpc_port = {balancer_grpc}\n\
             [blue]\nversion = \"{BLUE}\"\nport = {blue}\ngrpc_port = {blue_grpc}\n\
             [green]\nversion = \"{GREEN}\"\nport = {green}\ngrpc_port = {green_grpc}\n\
             [local]\nstate_dir = \"{}\"\n\
             [compose]\nproject = \"{STACK}\"\n\
             [swarm]\nreplicas = 2\n\
             [timeouts]\nhealthy_secs = 90\nlock_secs = 60\n",
            dir.join("local").display()
        ),
    )
    .unwrap();
    let mut env: Vec<(&'static str, OsString)> = host.env();
    // The tool reaches the host's ports through its own SSH tunnel.
    env.push(("MLDEPLOY_PUBLIC_HOST", OsString::new()));
    let xtask = Xtask {
        runtime: "swarm",
        config: dir.join("deploy.toml"),
        env,
        echo: true,
    };
    let load_target = Balancer {
        addr: format!("{}:{balancer}", host.addr()),
    };

    // 1. Up over SSH, replicas listed through the relay.
    step("up over ssh with 2 replicas per color");
    xtask.ok(&["up"]);
    let status: Value = serde_json::from_str(&stdout(&xtask.ok(&["status", "--json"]).0)).unwrap();
    assert_eq!(status["runtime"], "swarm");
    for color in status["colors"].as_array().unwrap() {
        let healthy = color["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["healthy"] == true)
            .count();
        assert_eq!(healthy, 2, "{color:#}");
    }

    // 2. Smoke, a switch and a rollback under load.
    step("smoke, switch and rollback under load");
    xtask.ok(&["smoke"]);
    let ((), tally) = under_load(&load_target, 4, |load| {
        xtask.ok(&["switch"]);
        assert_eq!(load_target.served_version(5), GREEN);
        load.wait_for_more(50);
        xtask.ok(&["rollback"]);
        assert_eq!(load_target.served_version(5), BLUE);
        load.wait_for_more(50);
    });
    tally.assert_no_failures("a switch and a rollback on a swarm over ssh");

    // 3. Down leaves nothing of the stack, and the host's own swarm.
    step("down");
    xtask.ok(&["down"]);
    let label = format!("label=com.docker.stack.namespace={STACK}");
    for kind in ["service", "network", "volume"] {
        let left = host.docker(&[kind, "ls", "--quiet", "--filter", &label]);
        assert!(left.trim().is_empty(), "down left a {kind}: {left}");
    }
    let state = host.docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(state.trim(), "active", "down left a swarm it did not make");
    let _ = fs::remove_dir_all(&dir);
    step("done");
}
