//! The whole deployment on a second host reached over SSH, as an operator would run it from a
//! laptop: `DOCKER_HOST=ssh://root@<host>`, no state here, no registry.
//!
//! The host is a [`DeployHost`] (the `testhost` crate): a network namespace of this machine with
//! its own `dockerd` and `sshd`. Steps of [`a_deployment_on_a_second_host_over_ssh`]:
//! 1. `up` from nothing: the images reach the host over the same connection (copied from this
//!    machine's engine, or built against the host's), then `smoke`;
//! 2. under HTTP load sent to the host's own address: `status`, `switch`, `rollback`, a 30 %
//!    `canary`, `switch`, and a `deploy` that recreates the standby: 0 failed requests;
//! 3. two operators at once (two processes, as a laptop and a CI runner): they serialise on the
//!    host's lock, both succeed, and agree on the state;
//! 4. the SSH connection killed in the middle of a `switch`, at several points: the host stays
//!    consistent (the route and the recorded state agree, no lock left), and the next operation
//!    proceeds at once;
//! 5. `history`, then `down`: nothing of the project is left on the host.

mod common;

use std::{
    ffi::OsString,
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    compose::engine_available,
    http::Balancer,
    load::under_load,
    remote::{deploy_host_available, DeployHost},
    wait_until,
    xtask::{stderr, stdout, Xtask},
};
use serde_json::Value;

const PROJECT: &str = "mldeploy-remote";
const BLUE: &str = "v1.0.0";
const GREEN: &str = "v1.1.0";
/// The host's ports: its namespace has nothing else listening.
const PORTS: [u16; 6] = [18080, 18081, 18082, 18050, 18051, 18052];

/// A deployment on `host`, driven by this project's xtask with `DOCKER_HOST` pointing there.
struct Remote {
    dir: PathBuf,
    xtask: Xtask,
    balancer: Balancer,
}

impl Remote {
    fn new(host: &DeployHost) -> Remote {
        let dir = std::env::temp_dir().join(format!("{PROJECT}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let [balancer, blue, green, balancer_grpc, blue_grpc, green_grpc] = PORTS;
        let config = format!(
            "[balancer]\nport = {balancer}\ngrpc_port = {balancer_grpc}\nbuckets = 100\n\
             [blue]\nversion = \"{BLUE}\"\nport = {blue}\ngrpc_port = {blue_grpc}\n\
             [green]\nversion = \"{GREEN}\"\nport = {green}\ngrpc_port = {green_grpc}\n\
             [local]\nstate_dir = \"{}\"\n\
             [compose]\nproject = \"{PROJECT}\"\nsubnet = \"10.241.7.0/24\"\n\
             [timeouts]\nhealthy_secs = 60\nlock_secs = 60\n",
            dir.join("local").display()
        );
        fs::write(dir.join("deploy.toml"), config).unwrap();
        let mut env: Vec<(&'static str, OsString)> = host.env();
        // The tool reaches the host's ports through its own SSH tunnel.
        env.push(("MLDEPLOY_PUBLIC_HOST", OsString::new()));
        Remote {
            xtask: Xtask {
                runtime: "compose",
                config: dir.join("deploy.toml"),
                env,
                echo: true,
            },
            balancer: Balancer {
                addr: format!("{}:{balancer}", host.addr()),
            },
            dir,
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout(&self.xtask.ok(args).0)
    }

    fn status(&self) -> Value {
        let text = self.ok(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn served(&self) -> String {
        self.balancer.served_version(5)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.xtask.run(&["down"]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The processes whose parent chain leads to `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
    };
    let all: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    all.into_iter()
        .filter(|&p| {
            let mut at = p;
            for _ in 0..32 {
                match parent_of(at) {
                    Some(parent) if parent == pid => return true,
                    Some(parent) if parent > 1 => at = parent,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Kills the `ssh` processes `pid` started (its connections to the host).
fn kill_ssh_of(pid: u32) -> usize {
    let mut killed = 0;
    for child in descendants(pid) {
        let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
        if comm.trim() == "ssh" {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .status();
            killed += 1;
        }
    }
    killed
}

/// Starts `switch`, waits until it says it is switching, waits `delay`, then kills its SSH
/// connections; returns once it has ended, with whether it still succeeded.
fn switch_cut_after(remote: &Remote, delay: Duration) -> bool {
    let mut child: Child = remote
        .xtask
        .command(&["switch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if line.starts_with("switching") {
                let _ = tx.send(());
            }
        }
    });
    let _ = rx.recv_timeout(Duration::from_secs(60));
    thread::sleep(delay);
    let killed = kill_ssh_of(child.id());
    let status = child.wait().unwrap();
    println!(
        "switch cut {:?} after it started: {killed} ssh processes killed, the switch {}",
        delay,
        if status.success() {
            "finished anyway"
        } else {
            "failed"
        }
    );
    status.success()
}

/// The route, the recorded state and the served version agree, and no lock is held (an
/// operation starts at once).
fn assert_consistent(remote: &Remote, what: &str) {
    let status = remote.status();
    let problems = status["problems"].as_array().unwrap();
    assert!(problems.is_empty(), "{what}: {status:#}");
    let active = status["active"].as_str().unwrap_or_default().to_owned();
    let colors = status["colors"].as_array().unwrap();
    let expected = colors
        .iter()
        .find(|c| c["color"] == active.as_str())
        .and_then(|c| c["version"].as_str())
        .unwrap_or_else(|| panic!("{what}: no active color: {status:#}"));
    assert_eq!(remote.served(), expected, "{what}: {status:#}");
}

#[test]
#[ignore = "needs root: a network namespace with its own dockerd and sshd, and edits ~/.ssh/config; CI runs it"]
fn a_deployment_on_a_second_host_over_ssh() {
    if !engine_available() || !deploy_host_available() {
        return;
    }
    let host = DeployHost::start();
    let remote = Remote::new(&host);

    // 1. Up from nothing, then smoke.
    let started = Instant::now();
    remote.ok(&["up"]);
    println!("up on the host: {:.1} s", started.elapsed().as_secs_f64());
    remote.ok(&["smoke"]);
    assert_eq!(remote.served(), BLUE);

    // 2. Every operation under load sent to the host's own address.
    let timings = under_load(&remote.balancer, 4, |load| {
        let mut timings = Vec::new();
        let mut timed = |args: &[&str]| {
            let t = Instant::now();
            remote.ok(args);
            timings.push((args.join(" "), t.elapsed()));
            load.wait_for_more(50);
        };
        timed(&["status"]);
        timed(&["switch"]);
        assert_eq!(remote.served(), GREEN);
        timed(&["rollback"]);
        assert_eq!(remote.served(), BLUE);
        timed(&["canary", "--percent", "30"]);
        timed(&["switch"]);
        assert_eq!(remote.served(), GREEN);
        timed(&["deploy", "--version", GREEN]);
        timings
    });
    let (timings, tally) = timings;
    tally.assert_no_failures("operations on the remote host");
    for (op, took) in &timings {
        println!("over ssh: `{op}` took {:.2} s", took.as_secs_f64());
    }
    assert_consistent(&remote, "after the operations");

    // 3. Two operators at once: both succeed, one after the other; two flips leave the
    // active color where it was.
    let before = remote.served();
    let operators: Vec<Child> = (0..2)
        .map(|_| {
            remote
                .xtask
                .command(&["switch"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for operator in operators {
        let out = operator.wait_with_output().unwrap();
        assert!(out.status.success(), "an operator failed: {}", stderr(&out));
    }
    assert_eq!(remote.served(), before, "two switches flip twice");
    let history = remote.ok(&["history", "--json"]);
    let last: Vec<Value> = history
        .lines()
        .rev()
        .take(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        last.iter()
            .all(|op| op["operation"] == "switch" && op["result"] == "ok"),
        "{history}"
    );
    assert_consistent(&remote, "after two operators");

    // 4. The connection cut in the middle of a switch, at several points.
    for delay_ms in [0, 20, 30, 40, 60] {
        switch_cut_after(&remote, Duration::from_millis(delay_ms));
        let t = Instant::now();
        wait_until("the host to be consistent after a cut", || {
            remote.status()["problems"]
                .as_array()
                .is_some_and(|p| p.is_empty())
        });
        assert_consistent(&remote, &format!("after a cut at {delay_ms} ms"));
        // The lock is free: the next operation does not wait for it.
        let next = Instant::now();
        let (out, _) = remote.xtask.ok(&["switch"]);
        assert!(
            next.elapsed() < Duration::from_secs(30),
            "the next switch waited {:?}: {}",
            next.elapsed(),
            stderr(&out)
        );
        println!(
            "after the cut at {delay_ms} ms: consistent in {:.1} s; next switch: {}",
            t.elapsed().as_secs_f64(),
            stderr(&out)
                .lines()
                .find(|l| l.contains("interrupted"))
                .unwrap_or("no warning")
        );
        assert_consistent(
            &remote,
            &format!("after the switch that followed the cut at {delay_ms} ms"),
        );
    }

    // 5. History, then down: nothing of the project is left on the host.
    let history = remote.ok(&["history"]);
    assert!(history.contains("deploy"), "{history}");
    remote.ok(&["down"]);
    let label = format!("label=com.docker.compose.project={PROJECT}");
    for kind in [
        &["ps", "--all", "--quiet", "--filter", &label][..],
        &["volume", "ls", "--quiet", "--filter", &label],
        &["network", "ls", "--quiet", "--filter", &label],
    ] {
        let left = host.docker(kind);
        assert!(left.trim().is_empty(), "{kind:?} after down: {left}");
    }
}
