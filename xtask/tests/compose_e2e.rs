//! End-to-end tests of the docker compose runtime against a real Docker engine.
//!
//! They drive the real `cargo xtask` binary (`--runtime compose`) with their own deploy
//! configuration (project `mldeploy-e2e-<pid>`, free ports, an unused subnet, their own image
//! name), so they never touch a developer's deployment or another run.
//!
//! Steps of [`compose_runtime_end_to_end`], on one stack:
//! 1. `build` the images (offline when no registry answers), `up`, `smoke`; a `shadow` run under
//!    HTTP and gRPC load (every prediction of both protocols compared, 0 failed requests or
//!    calls); a broken nginx config refused by `nginx -t` in the container while the old one
//!    keeps serving;
//! 2. under continuous keep-alive load through the balancer, HTTP and gRPC at once: 10
//!    switches, 3 rollbacks and 4 deploys (each recreating the standby container) with 0 failed
//!    requests and 0 failed calls, the served version checked after each, every gRPC channel
//!    following each move;
//! 3. the standby container stopped → `switch` refused naming it, traffic unchanged;
//! 4. the active container killed under HTTP and gRPC load → every request succeeds (the
//!    standby), and every gRPC call but those in flight on the dead color, which get
//!    UNAVAILABLE (see docs/DEPLOYMENT.md, gRPC);
//! 5. a green built with a corrupted model → `deploy` refuses, traffic stays on blue;
//! 6. `down` leaves no container, network or volume of the project.
//!
//! Without a Docker engine they print why and return; with `MLDEPLOY_REQUIRE_DOCKER=1` (CI) they
//! fail instead.
//!
//! The harness (the [`Stack`], docker helpers, the balancer probe, and the load generator
//! shared with the local runtime's tests, which never resends a request) is in `common/`.

mod common;

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    compose::{
        build_corrupt_image, docker, docker_required, engine_available, Retag, BLUE_VERSION,
        GREEN_VERSION,
    },
    grpc_load::{under_grpc_load, GrpcLoad},
    http,
    load::under_load,
    poll_until, project_root, run_ok, runs_ok, wait_until,
    xtask::stderr,
    Stack,
};

/// gRPC load of the end-to-end test: channels and calls in flight on each.
const GRPC_CHANNELS: usize = 2;
const GRPC_STREAMS: usize = 8;

/// Asserts the balancer serves `version` over HTTP and every gRPC channel follows.
fn assert_serves(stack: &Stack, grpc: &GrpcLoad, version: &str, what: &str) {
    assert_eq!(stack.served_version(5), version, "{what}");
    grpc.wait_every_channel_sees(version);
}

/// The compose project of `compose_files_validate` (nothing is created under it).
const PROJECT: &str = "mldeploy-e2e";
const SUBNET: &str = "172.30.178.0/24";

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn flip(version: &str) -> &'static str {
    if version == BLUE_VERSION {
        GREEN_VERSION
    } else {
        BLUE_VERSION
    }
}

#[test]
fn compose_runtime_end_to_end() {
    if !engine_available() {
        return;
    }
    let stack = Stack::new();

    // 1. Images, up, smoke.
    stack.ok(&["build"]);
    stack.ok(&["up"]);
    stack.ok(&["smoke"]);
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    // Testers reach the standby through the balancer while everyone else stays on blue.
    stack.ok(&["smoke", "--color", "green"]);
    // A shadow run: every prediction, HTTP and gRPC, mirrored to green, both colors' answers
    // compared; the journals are read on the colors' published ports.
    let ((shadow, grpc), tally) = under_load(&stack.balancer, 4, |_| {
        under_grpc_load(&stack.grpc_balancer, 1, 4, |_| {
            stack.stdout(&[
                "shadow",
                "--percent",
                "100",
                "--requests",
                "200",
                "--duration",
                "60",
                "--format",
                "json",
            ])
        })
    });
    tally.assert_no_failures("a shadow run");
    grpc.assert_no_failures("a shadow run");
    let report: serde_json::Value = serde_json::from_str(&shadow).unwrap();
    assert!(
        report["rows_compared"].as_u64().unwrap() >= 200,
        "{report:#}"
    );
    assert!(
        report["paired_by_protocol"]["grpc"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(
        report["agreement"]["fraction"].as_f64(),
        Some(1.0),
        "{report:#}"
    );
    assert_eq!(
        report["floor"]["max_diff"].as_f64(),
        Some(0.0),
        "{report:#}"
    );
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    // `up` again changes nothing.
    stack.ok(&["up"]);
    // A broken static config is refused by `nginx -t` inside the container; the old one stays.
    let broken = stack.dir.join("broken-nginx.conf");
    fs::write(
        &broken,
        "events {}\nhttp { server { listen 8080; bogus_directive on; } }\n",
    )
    .unwrap();
    let err = stack.fails(&["up", "--nginx-conf", broken.to_str().unwrap()]);
    assert!(
        err.contains("bogus_directive"),
        "the refusal does not quote nginx: {err}"
    );
    stack.ok(&["smoke"]);

    // 2. Switches and rollbacks under HTTP and gRPC load.
    let ((switch_times, grpc_tally), tally) = under_load(&stack.balancer, 4, |_| {
        under_grpc_load(&stack.grpc_balancer, GRPC_CHANNELS, GRPC_STREAMS, |grpc| {
            let mut expected = BLUE_VERSION;
            let mut switch_times = Vec::new();
            for i in 1..=10 {
                switch_times.push(stack.ok(&["switch"]));
                expected = flip(expected);
                assert_serves(&stack, grpc, expected, &format!("after switch {i}"));
                if [3, 6, 9].contains(&i) {
                    stack.ok(&["rollback"]);
                    expected = flip(expected);
                    assert_serves(
                        &stack,
                        grpc,
                        expected,
                        &format!("after the rollback following switch {i}"),
                    );
                }
            }
            // 10 switches + 3 rollbacks from blue: green is active now. Deploys recreate the standby
            // container under the same load: v1.1.0 onto blue, v1.0.0 onto green, and back again.
            assert_eq!(expected, GREEN_VERSION);
            for (version, color) in [
                (GREEN_VERSION, "blue"),
                (BLUE_VERSION, "green"),
                (BLUE_VERSION, "blue"),
                (GREEN_VERSION, "green"),
            ] {
                let before = stack.container(color);
                stack.ok(&["deploy", "--version", version]);
                assert_ne!(
                    stack.container(color),
                    before,
                    "deploy did not recreate {color}"
                );
                assert_serves(
                    &stack,
                    grpc,
                    version,
                    &format!("after deploying {version} to {color}"),
                );
            }
            switch_times
        })
    });
    tally.assert_no_failures("switches, rollbacks and deploys");
    grpc_tally.assert_no_failures("switches, rollbacks and deploys (gRPC)");
    for version in [BLUE_VERSION, GREEN_VERSION] {
        assert!(
            tally.versions.contains_key(version),
            "the load never saw {version}: {:?}",
            tally.versions
        );
    }
    println!(
        "compose switch wall time: median {:.2} s over {} switches (max {:.2} s)",
        median(switch_times.clone()).as_secs_f64(),
        switch_times.len(),
        switch_times.iter().max().unwrap().as_secs_f64()
    );
    // Green (v1.1.0) is active again, blue has v1.0.0: back to blue.
    stack.ok(&["switch", "--to", "blue"]);
    assert_eq!(stack.served_version(5), BLUE_VERSION);

    // Round trips to the host: a switch through the host's agent is one `docker exec` (every
    // file operation and the lock on its pipe); without the agent, one exec per step.
    let execs = |calls: &[String]| calls.iter().filter(|c| c.starts_with("exec")).count();
    let with_agent = stack.docker_calls(&["switch"], &[]);
    let without = stack.docker_calls(&["switch"], &[("MLDEPLOY_AGENT", "off")]);
    println!(
        "docker calls per switch: {} with the host's agent ({} exec), {} without ({} execs)",
        with_agent.len(),
        execs(&with_agent),
        without.len(),
        execs(&without)
    );
    assert_eq!(execs(&with_agent), 1, "{with_agent:#?}");
    assert!(with_agent.len() <= 6, "{with_agent:#?}");
    assert!(execs(&without) >= 8, "{without:#?}");
    assert_eq!(stack.served_version(5), BLUE_VERSION);

    // The deploy tool killed mid-operation (a stepped canary, between its steps): the agent
    // sees its pipe end, logs the operation as interrupted and releases the lock, so the next
    // operation starts at once, says what happened, and the recorded state matches the route.
    let last_logged = || {
        let history = stack.stdout(&["history", "--json"]);
        history.lines().last().unwrap_or_default().to_owned()
    };
    let mut canary = stack
        .xtask
        .command(&[
            "canary",
            "--steps",
            "10,50",
            "--hold",
            "30",
            "--min-requests",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the canary's first step is recorded", || {
        last_logged().contains("\"operation\":\"canary\"")
    });
    canary.kill().unwrap();
    canary.wait().unwrap();
    let (out, took) = stack.xtask.ok(&["switch", "--to", "blue"]);
    assert!(
        took < Duration::from_secs(10),
        "the next operation waited {took:?} for the lock"
    );
    assert!(
        stderr(&out).contains("was interrupted"),
        "the next operation does not say so: {}",
        stderr(&out)
    );
    let history = stack.stdout(&["history", "--json"]);
    assert!(history.contains("\"interrupted\""), "{history}");
    assert_eq!(stack.served_version(5), BLUE_VERSION);

    // 3. A stopped standby: the switch is refused, naming it; traffic stays.
    docker(&["stop", &stack.container("green")]);
    let err = stack.fails(&["switch"]);
    assert!(
        err.contains("green"),
        "the refusal does not name green: {err}"
    );
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    stack.ok(&["up"]);

    // 4. The active container killed under load: the standby answers.
    let ((served_by_green, grpc_tally), tally) = under_load(&stack.balancer, 4, |load| {
        under_grpc_load(&stack.grpc_balancer, GRPC_CHANNELS, GRPC_STREAMS, |grpc| {
            assert_eq!(stack.served_version(20), BLUE_VERSION);
            docker(&["kill", &stack.container("blue")]);
            let served_by_green = poll_until(Duration::from_secs(30), || {
                let response = http::get(&stack.balancer.addr, "/health").expect("GET /health");
                (200..300).contains(&response.status)
                    && response.header("x-model-version") == GREEN_VERSION
            });
            // Keep the load running a while green answers alone.
            load.wait_for_more(200);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                stack.balancer.health();
            }
            // gRPC calls in flight on blue when it died fail (nginx cannot resend a gRPC call
            // it has begun to stream); once nginx has noticed, none does.
            grpc.wait_every_channel_answered_by(GREEN_VERSION);
            grpc.wait_for_successes(500);
            let failed = grpc.failed();
            grpc.wait_for_more(500);
            assert_eq!(
                grpc.failed(),
                failed,
                "gRPC calls failed after the failover"
            );
            served_by_green
        })
    });
    grpc_tally.assert_only_crash_failures(
        "active container killed (gRPC)",
        2 * GRPC_CHANNELS * GRPC_STREAMS,
    );
    assert!(
        served_by_green,
        "after killing blue, green never answered through the balancer"
    );
    tally.assert_no_failures("active container killed");
    stack.ok(&["up"]);
    // nginx keeps a failed server out for its `fail_timeout`; then blue takes traffic again.
    stack.wait_served(BLUE_VERSION);

    // 5. A green whose model is corrupted never becomes healthy: deploy refuses, blue keeps serving.
    let restore = Retag {
        image: stack.latest_image_id(),
        tag: format!("{}:latest", stack.image),
    };
    let corrupt = build_corrupt_image(&stack.dir, &stack.image, BLUE_VERSION);
    docker(&["tag", &corrupt, &restore.tag]);
    let err = stack.fails(&["deploy", "--version", BLUE_VERSION]);
    drop(restore);
    assert!(
        err.contains("green"),
        "the refusal does not name green: {err}"
    );
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    stack.ok(&["smoke"]);

    // 6. Down leaves nothing of the project behind.
    stack.down();
    let label = stack.label();
    for (left, list) in [
        ("containers left", &["ps", "--all"][..]),
        ("networks left", &["network", "ls"]),
        ("volumes left", &["volume", "ls"]),
    ] {
        let ids = docker(&[list, &["--quiet", "--filter", &label]].concat());
        assert_eq!(ids.trim(), "", "{left}");
    }
}

/// The compose files validate with every compose tool installed here.
#[test]
fn compose_files_validate() {
    let root = project_root();
    let files = [
        "docker-compose.yml",
        "docker-compose.blue.yml",
        "docker-compose.green.yml",
    ];
    let tools: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let mut validated = 0;
    for tool in tools {
        if !runs_ok(Command::new(tool[0]).args(&tool[1..]).arg("version")) {
            continue;
        }
        let mut cmd = Command::new(tool[0]);
        cmd.args(&tool[1..])
            .args(["--project-name", PROJECT])
            .current_dir(&root);
        for file in files {
            cmd.args(["--file", file]);
        }
        // With the defaults, and with values like the tests' own.
        for env in [
            vec![],
            vec![
                ("MLDEPLOY_SUBNET", SUBNET),
                ("MLDEPLOY_BLUE_ADDR", "172.30.178.11"),
            ],
        ] {
            run_ok(
                Command::new(cmd.get_program())
                    .args(cmd.get_args())
                    .args(["config", "--quiet"])
                    .envs(env)
                    .current_dir(&root),
                &format!("{} config rejects the files", tool.join(" ")),
            );
        }
        validated += 1;
    }
    if validated == 0 {
        if docker_required() {
            panic!("MLDEPLOY_REQUIRE_DOCKER=1 but neither `docker compose` nor `docker-compose` is installed");
        }
        eprintln!("skipping: no compose tool installed");
    }
}
