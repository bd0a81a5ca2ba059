//! `cargo xtask bench remote`: the compose runtime on this machine's engine and on a second
//! host over `ssh://`, in one run, before and after the two things that make an operation cheap
//! there.
//!
//! Steps (root only: the host is a network namespace of this machine with its own `dockerd`
//! and `sshd`, from the workspace's `testhost` crate, which the remote tests use too):
//! 1. on this machine's engine (free ports, a free subnet): `up`, then [`SWITCHES`] `switch`
//!    runs with the host's agent and as many with `MLDEPLOY_AGENT=off`, then `down`;
//! 2. start the host; a private deploy configuration (project `mldeploy-bench-remote`); this
//!    binary runs with `DOCKER_HOST=ssh://root@<host>`;
//! 3. `up` from nothing (images copied from this machine's engine), timed;
//! 4. for each way, [`SWITCHES`] `switch` runs and [`STATUSES`] `status` runs, each a whole
//!    process run as a person would: *after* (the defaults: one SSH connection per command
//!    that also forwards the host's Docker socket, one `docker exec` of the host's agent per
//!    operation), *agent only* (`MLDEPLOY_ENGINE_TUNNEL=off`: every `docker` call its own SSH
//!    connection), and *before* (`MLDEPLOY_ENGINE_TUNNEL=off MLDEPLOY_AGENT=off`: also one
//!    `docker exec` per step, as before both);
//! 5. `down`, remove the host, print the section and write it under "A remote host over SSH"
//!    in `docs/benchmarks.md`.

use std::{ffi::OsString, fs, path::PathBuf};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::report;
use crate::{flags, host};

const SECTION: &str = "## A remote host over SSH";
const PROJECT: &str = "mldeploy-bench-remote";
/// `switch` runs per way.
const SWITCHES: usize = 6;
/// `status` runs per way.
const STATUSES: usize = 3;

/// One way of running the commands: its name and its environment.
struct Way {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const WAYS: [Way; 3] = [
    Way {
        name: "after: one SSH connection per command, the host's agent",
        env: &[],
    },
    Way {
        name: "the agent, but an SSH connection per `docker` call (`MLDEPLOY_ENGINE_TUNNEL=off`)",
        env: &[("MLDEPLOY_ENGINE_TUNNEL", "off")],
    },
    Way {
        name: "before: an SSH connection per `docker` call, a `docker exec` per step",
        env: &[("MLDEPLOY_ENGINE_TUNNEL", "off"), ("MLDEPLOY_AGENT", "off")],
    },
];

pub(crate) fn run(sh: &Shell, _global: &flags::Global, _bench: &flags::Bench) -> Result<()> {
    if !host::is_root() {
        bail!(
            "bench remote makes a network namespace with its own dockerd and sshd: run it as root"
        );
    }
    host::ensure_commands(sh, &host::DEPLOY_HOST_TESTS)?;
    crate::docker::ensure_engine(sh)?;
    let machine = report::machine(sh, "this tool, sshd, both engines and the containers");
    let dir = crate::util::project_root().join("target/bench/remote");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).context("create the benchmark folder")?;
    // A private copy of this binary: a rebuild during the run must not pull it away.
    let exe = dir.join("xtask");
    fs::copy("/proc/self/exe", &exe).context("copy the xtask binary")?;
    let local = measure_local(sh, &dir, &exe)?;
    let config = dir.join("deploy.toml");
    fs::write(
        &config,
        format!(
            "[balancer]\nport = 18080\ngrpc_port = 18050\n[blue]\nport = 18081\ngrpc_port = 18051\n\
             [green]\nport = 18082\ngrpc_port = 18052\n[compose]\nproject = \"{PROJECT}\"\n\
             subnet = \"10.242.7.0/24\"\n[timeouts]\nhealthy_secs = 60\nlock_secs = 60\n"
        ),
    )?;
    let testhost = testhost::DeployHost::start();
    let xtask = Xtask {
        exe,
        config,
        env: testhost.env(),
    };
    let result = measure(&xtask);
    if let Err(err) = xtask.run(&["down"], &[]) {
        eprintln!("bench remote: down: {err:#}");
    }
    drop(testhost);
    let _ = fs::remove_dir_all(&dir);
    let (up, ways) = result?;
    let report = render(&machine, &local, up, &ways);
    crate::say!("{report}");
    report::write_doc(None, SECTION, &report)?;
    crate::say!("bench remote: wrote the \"A remote host over SSH\" section of docs/benchmarks.md");
    Ok(())
}

/// This binary against the host.
struct Xtask {
    exe: PathBuf,
    config: PathBuf,
    env: Vec<(&'static str, OsString)>,
}

impl Xtask {
    /// Runs `args` with `env` on top of the host's; its wall time in seconds.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Result<f64> {
        super::run_compose_xtask(&self.exe, &self.config, args, &self.env, env)
    }
}

/// One way's wall times.
struct Measured {
    name: &'static str,
    switches: Vec<f64>,
    statuses: Vec<f64>,
}

/// Switch wall times on this machine's engine: with the host's agent, and without.
struct Local {
    agent: Vec<f64>,
    no_agent: Vec<f64>,
}

fn measure_local(sh: &Shell, dir: &std::path::Path, exe: &std::path::Path) -> Result<Local> {
    let mut ports = [0u16; 6];
    for port in &mut ports {
        *port = super::wrk::free_port()?;
    }
    let subnet = super::compose::free_subnet(&super::compose::used_subnets(sh)?)
        .context("no free 172.30.x.0/24 subnet on this machine's engine")?;
    let config = dir.join("local.toml");
    fs::write(
        &config,
        format!(
            "[balancer]\nport = {}\ngrpc_port = {}\n[blue]\nport = {}\ngrpc_port = {}\n\
             [green]\nport = {}\ngrpc_port = {}\n[compose]\nproject = \"{PROJECT}-local\"\n\
             subnet = \"{subnet}\"\n[timeouts]\nhealthy_secs = 60\nlock_secs = 60\n",
            ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
        ),
    )?;
    let xtask = Xtask {
        exe: exe.to_owned(),
        config,
        env: Vec::new(),
    };
    crate::say!(
        "this machine's engine: up, {SWITCHES} switches with the agent and {SWITCHES} without…"
    );
    let result = (|| -> Result<Local> {
        xtask.run(&["up"], &[])?;
        let agent = (0..SWITCHES)
            .map(|_| xtask.run(&["switch"], &[]))
            .collect::<Result<Vec<_>>>()?;
        let no_agent = (0..SWITCHES)
            .map(|_| xtask.run(&["switch"], &[("MLDEPLOY_AGENT", "off")]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Local { agent, no_agent })
    })();
    if let Err(err) = xtask.run(&["down"], &[]) {
        eprintln!("bench remote: down on this machine's engine: {err:#}");
    }
    result
}

fn measure(xtask: &Xtask) -> Result<(f64, Vec<Measured>)> {
    crate::say!("up on the host…");
    let up = xtask.run(&["up"], &[])?;
    crate::say!("up in {up:.1} s");
    let mut ways = Vec::new();
    for way in &WAYS {
        crate::say!("{}…", way.name);
        let switches = (0..SWITCHES)
            .map(|_| xtask.run(&["switch"], way.env))
            .collect::<Result<Vec<_>>>()?;
        let statuses = (0..STATUSES)
            .map(|_| xtask.run(&["status"], way.env))
            .collect::<Result<Vec<_>>>()?;
        ways.push(Measured {
            name: way.name,
            switches,
            statuses,
        });
    }
    Ok((up, ways))
}

fn render(machine: &str, local: &Local, up: f64, ways: &[Measured]) -> String {
    let (agent_p50, agent_max) = report::p50_max(&local.agent);
    let (off_p50, off_max) = report::p50_max(&local.no_agent);
    let mut s = format!(
        "Measured by `cargo xtask bench remote`, in one run; each command is a whole run of this tool \
         with `--runtime compose`. {machine}\n\n\
         **This machine's engine**: `switch` p50 {agent_p50:.2} s (max {agent_max:.2} s) with the host's \
         agent; p50 {off_p50:.2} s (max {off_max:.2} s) with `MLDEPLOY_AGENT=off`, a `docker exec` per \
         step as before it. {SWITCHES} switches each.\n\n\
         **A second host over SSH** (a network namespace of this machine with its own Docker engine and \
         sshd, the remote tests' host; `DOCKER_HOST=ssh://root@<host>`): `up` from nothing, both images \
         copied from this machine's engine, {up:.1} s.\n\n\
         | way | `switch` p50 | `switch` max | `status` p50 |\n| --- | ---: | ---: | ---: |\n"
    );
    for way in ways {
        let (switch_p50, switch_max) = report::p50_max(&way.switches);
        let (status_p50, _) = report::p50_max(&way.statuses);
        s += &format!(
            "| {} | {switch_p50:.2} s | {switch_max:.2} s | {status_p50:.2} s |\n",
            way.name
        );
    }
    s += &format!(
        "\n{SWITCHES} switches and {STATUSES} status runs per way. Docker calls per `switch` (counted on a \
         local engine by the compose end-to-end test): 5, one of them a `docker exec`, with the host's \
         agent; 21, 16 of them execs, without it.\n"
    );
    s
}
