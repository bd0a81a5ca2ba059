//! The compose runtime against a second deploy host reached over SSH, as an operator deploys
//! to a remote machine: `DOCKER_HOST=ssh://root@<addr>`.
//!
//! The host is a [`DeployHost`] (the `testhost` crate): a network namespace of this machine
//! with its own `dockerd` and `sshd`, a key and a host key made for the run, and a block in
//! root's `~/.ssh/config`. It needs root, a Docker engine here (its images are copied over)
//! and the Debian packages `iproute2`, `openssh-server`, `openssh-client` and
//! `python3-paramiko`; without them the tests skip, or fail when CI requires Docker
//! (`MLDEPLOY_REQUIRE_DOCKER=1`). They are ignored by a plain `cargo test` (they create a
//! network namespace and edit `~/.ssh/config`); CI runs them with `--include-ignored`.
//!
//! [`the_deploy_host_is_a_separate_engine_reached_over_ssh`] proves the fixture itself:
//! 1. the host starts (each step's time printed) and `docker -H ssh://…` reaches its engine,
//!    not this machine's (another root dir, none of this machine's containers);
//! 2. an image made here is copied to it (`load_image`: `docker save | docker load` over SSH);
//! 3. docker compose (v1 `docker-compose`, and the v2 plugin where installed) starts a service
//!    there with `DOCKER_HOST` set, and sees it with `-H ssh://…` and, for v1, through
//!    paramiko (`COMPOSE_PARAMIKO_SSH=1`) too; this machine's engine has none of it;
//! 4. dropping the host leaves nothing: no process, mount, cgroup, namespace, veth,
//!    `~/.ssh/config` block or directory, nor the image made here; this machine's engine is
//!    untouched.

mod common;

use std::{
    fs,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{
    compose::{docker, docker_quiet, docker_required, engine_available},
    describe,
    remote::{deploy_host_available, leftovers, DeployHost},
};

/// `timeout 120 <tool…> <args>` against the host, with `env` on top of the host's.
fn compose(
    host: &DeployHost,
    tool: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", "120"])
        .args(tool)
        .args(args)
        .envs(host.env())
        .envs(env.iter().copied())
        .output()
        .expect("run the compose tool");
    let took = started.elapsed();
    println!(
        "$ {}{} {} ({:.2} s)",
        env.iter()
            .map(|(k, v)| format!("{k}={v} "))
            .collect::<String>(),
        tool.join(" "),
        args.join(" "),
        took.as_secs_f64()
    );
    (out, took)
}

fn ok(out: (Output, Duration), what: &str) -> String {
    assert!(out.0.status.success(), "{what}:\n{}", describe(&out.0));
    String::from_utf8_lossy(&out.0.stdout).into_owned()
}

/// The compose tools installed here: `docker compose` (v2) and `docker-compose` (v1).
fn compose_tools() -> Vec<&'static [&'static str]> {
    let tools: [&'static [&'static str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    tools
        .into_iter()
        .filter(|tool| {
            Command::new(tool[0])
                .args(&tool[1..])
                .arg("version")
                .env_remove("DOCKER_HOST")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}

#[test]
#[ignore = "needs root: a network namespace with its own dockerd and sshd, and edits ~/.ssh/config; CI runs it"]
fn the_deploy_host_is_a_separate_engine_reached_over_ssh() {
    if !engine_available() || !deploy_host_available() {
        return;
    }
    let local_info = docker(&["info", "--format", "{{.ID}} {{.DockerRootDir}}"]);
    let local_containers = docker(&["ps", "--all", "--quiet", "--no-trunc"]);

    // 1. The host, and the engine `docker -H ssh://…` reaches.
    let started = Instant::now();
    let mut host = DeployHost::start();
    let start_time = started.elapsed();
    let names = host.names.clone();
    // (dockerd 20.10 takes its ID from /etc/docker/key.json, shared: the root dirs differ.)
    let remote_root = host.docker(&["info", "--format", "{{.DockerRootDir}}"]);
    assert_eq!(remote_root.trim(), names.path("data").display().to_string());
    assert!(
        !local_info.trim().ends_with(remote_root.trim()),
        "the host's engine is this machine's: {local_info}"
    );
    let remote_containers = host.docker(&["ps", "--all", "--quiet", "--no-trunc"]);
    assert!(
        remote_containers.trim().is_empty(),
        "a fresh host has no containers, but lists:\n{remote_containers}"
    );
    for id in local_containers.split_whitespace() {
        assert!(!remote_containers.contains(id));
    }

    // 2. An image made here, copied over SSH.
    let image = host.probe_image();
    let load_time = host.load_image(&image);
    let loaded = host.docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
    let made = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
    assert_eq!(
        loaded.trim(),
        made.trim(),
        "the loaded image is the one made here"
    );

    // 3. docker compose there: DOCKER_HOST, -H, and docker-compose v1's paramiko mode.
    let tools = compose_tools();
    if tools.is_empty() {
        assert!(
            !docker_required(),
            "MLDEPLOY_REQUIRE_DOCKER=1 but neither `docker compose` nor `docker-compose` is installed"
        );
        eprintln!("no compose tool installed: skipping the compose part");
    }
    let file = names.path("probe-compose.yml");
    fs::write(
        &file,
        format!("services:\n  probe:\n    image: {image}\n    stop_signal: SIGKILL\n"),
    )
    .unwrap();
    let file = file.display().to_string();
    let project = names.name.clone();
    let label = format!("label=com.docker.compose.project={project}");
    let mut compose_times = Vec::new();
    for tool in &tools {
        let base = ["--project-name", &project, "--file", &file];
        let up = compose(&host, tool, &[], &[&base[..], &["up", "--detach"]].concat());
        compose_times.push((format!("{} up", tool.join(" ")), up.1));
        ok(up, "compose up over DOCKER_HOST=ssh://…");
        let running = host.docker(&["ps", "--quiet", "--no-trunc", "--filter", &label]);
        assert_eq!(
            running.lines().count(),
            1,
            "the probe runs on the host:\n{running}"
        );
        assert!(
            docker(&["ps", "--all", "--quiet", "--filter", &label])
                .trim()
                .is_empty(),
            "the probe runs on this machine's engine too"
        );
        // `docker-compose --host …`; the v2 plugin takes the docker CLI's `--host` before
        // `compose`.
        let docker_host = host.docker_host();
        let (flagged_tool, mut with_flag): (&[&str], Vec<&str>) = if tool[0] == "docker" {
            (&["docker"], vec!["--host", &docker_host, "compose"])
        } else {
            (tool, vec!["--host", &docker_host])
        };
        with_flag.extend(base);
        with_flag.extend(["ps", "--quiet"]);
        let mut variants = vec![("-H ssh://…", compose(&host, flagged_tool, &[], &with_flag))];
        if tool[0] == "docker-compose" {
            variants.push((
                "paramiko",
                compose(
                    &host,
                    tool,
                    &[("COMPOSE_PARAMIKO_SSH", "1")],
                    &[&base[..], &["ps", "--quiet"]].concat(),
                ),
            ));
        }
        for (how, out) in variants {
            compose_times.push((format!("{} ps ({how})", tool.join(" ")), out.1));
            let listed = ok(out, &format!("compose ps ({how})"));
            assert_eq!(
                listed.trim(),
                running.trim(),
                "compose ({how}) lists the host's probe"
            );
        }
        let down = compose(
            &host,
            tool,
            &[],
            &[&base[..], &["down", "--timeout", "1"]].concat(),
        );
        compose_times.push((format!("{} down", tool.join(" ")), down.1));
        ok(down, "compose down");
    }
    // A container left running: dropping the host must remove it too.
    host.docker(&[
        "run",
        "--detach",
        "--name",
        &format!("{project}-probe"),
        &image,
    ]);

    // 4. Nothing is left.
    let dropped = Instant::now();
    drop(host);
    let drop_time = dropped.elapsed();
    let left = leftovers(&names);
    assert!(left.is_empty(), "the deploy host left: {left:#?}");
    assert!(
        docker_quiet(&["image", "ls", "--quiet", &image])
            .trim()
            .is_empty(),
        "the probe image stays in this machine's engine"
    );
    assert_eq!(
        docker(&["info", "--format", "{{.ID}} {{.DockerRootDir}}"]),
        local_info,
        "this machine's engine changed"
    );
    println!("deploy host start: {:.2} s", start_time.as_secs_f64());
    println!("image load (over ssh): {:.2} s", load_time.as_secs_f64());
    for (what, took) in compose_times {
        println!("{what}: {:.2} s", took.as_secs_f64());
    }
    println!("deploy host removal: {:.2} s", drop_time.as_secs_f64());
}
