//! `cargo xtask bench`: measurements under real load, written up in `docs/benchmarks.md`.
//!
//! - `bench service`: the model service on loopback (req/s, latency, CPU, RSS, start time),
//!   alone and behind nginx against nginx's own ceiling (a fixed answer);
//! - `bench switch`: switches under keep-alive load through nginx, against the reload-based
//!   methods the old scripts used;
//! - `bench compose`: the docker compose runtime on a private project (image size, `up`, a
//!   container's start, switch wall time, throughput and failed requests while switching).
//!
//! - `bench hang`: the active color hanging under load, before and after the latency budget;
//! - `bench grpc`: gRPC unary `Predict` direct and through nginx against HTTP/JSON in the same
//!   run, and failed RPCs while switching;
//! - `bench shadow`: client req/s and latency through the balancer with the mirror off, at
//!   10 % and 100 %, and at 100 % with the standby hung;
//! - `bench remote`: the compose runtime on a second host over `ssh://`, with and without the
//!   host's agent and the forwarded Docker socket;
//! - `bench swarm`: the swarm runtime on a one-node swarm: req/s and p99 with 1, 2 and 3
//!   replicas per color, switch wall time, failed requests while switching and while a
//!   replica is killed.
//!
//! `wrk` runs the load for the first three and `shadow` (`hang` has its own client, which
//! waits for answers; `grpc` its own tonic client for the gRPC side, wrk for the HTTP side);
//! `report` writes their sections of the document.

mod compose;
mod grpc;
mod hang;
mod remote;
mod report;
mod service;
mod service_nginx;
mod shadow;
mod swarm;
mod switch;
mod timeline;
mod timeline_svg;
mod wrk;

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::flags::{self, BenchTarget};

impl flags::Bench {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        match self.target {
            BenchTarget::Service => service::run(sh, global, &self),
            BenchTarget::Switch => switch::run(sh, global, &self),
            BenchTarget::Compose => compose::run(sh, global, &self),
            BenchTarget::Hang => hang::run(sh, global, &self),
            BenchTarget::Grpc => grpc::run(sh, global, &self),
            BenchTarget::Shadow => shadow::run(sh, global, &self),
            BenchTarget::Remote => remote::run(sh, global, &self),
            BenchTarget::Swarm => swarm::run(sh, global, &self),
        }
    }
}

/// Runs `exe` (a benchmark's private copy of this binary) as `--runtime compose --config
/// <config> <args>`, with `env` and then `extra` on top of this process's environment; returns
/// its wall time in seconds, or fails with what it printed.
pub(crate) fn run_compose_xtask(
    exe: &Path,
    config: &Path,
    args: &[&str],
    env: &[(&str, OsString)],
    extra: &[(&str, &str)],
) -> Result<f64> {
    run_xtask(exe, "compose", config, args, env, extra)
}

/// [`run_compose_xtask`] with another `--runtime`.
pub(crate) fn run_xtask(
    exe: &Path,
    runtime: &str,
    config: &Path,
    args: &[&str],
    env: &[(&str, OsString)],
    extra: &[(&str, &str)],
) -> Result<f64> {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(exe)
        .args(["--runtime", runtime, "--config"])
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().copied())
        .output()
        .with_context(|| format!("run xtask {}", args.join(" ")))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        anyhow::bail!(
            "`cargo xtask {}` failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

/// `up` with the deploy configuration's versions and the rendered nginx config.
pub(crate) fn up(sh: &Shell, global: &flags::Global) -> Result<()> {
    flags::Up {
        blue: None,
        green: None,
        nginx_conf: None,
        replicas: None,
    }
    .run(sh, global)
}

/// A benchmark's own local deployment: a folder under `target/bench/<name>`, free ports, a deploy
/// configuration naming them, and the flags that open it. Nothing is started yet.
pub(crate) struct Private {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub state: PathBuf,
    pub global: flags::Global,
    /// The balancer's HTTP port.
    pub balancer_port: u16,
}

impl Private {
    /// A fresh folder for benchmark `name`, with `balancer_extra` (TOML lines) added to the
    /// `[balancer]` table of its configuration.
    pub fn new(name: &str, balancer_extra: &str) -> Result<Private> {
        let dir = crate::util::project_root().join("target/bench").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .with_context(|| format!("create the benchmark folder {}", dir.display()))?;
        let mut ports = [0; 6];
        for port in &mut ports {
            *port = wrk::free_port()?;
        }
        let [balancer, balancer_grpc, blue, blue_grpc, green, green_grpc] = ports;
        let (config_path, state) = (dir.join("deploy.toml"), dir.join("state"));
        let toml = format!(
            "[balancer]\nport = {balancer}\ngrpc_port = {balancer_grpc}\n{balancer_extra}\
             [blue]\nport = {blue}\ngrpc_port = {blue_grpc}\n\
             [green]\nport = {green}\ngrpc_port = {green_grpc}\n\
             [local]\nstate_dir = \"{}\"\n",
            state.display()
        );
        fs::write(&config_path, toml).context("write the benchmark's deploy.toml")?;
        let global = flags::Global {
            runtime: flags::RuntimeKind::Local,
            config: config_path.clone(),
        };
        Ok(Private {
            dir,
            config_path,
            state,
            global,
            balancer_port: balancer,
        })
    }

    /// Stops the deployment and removes the folder (best effort: the benchmark's own result
    /// is what the caller reports).
    pub fn remove(&self, sh: &Shell) {
        let _ = (flags::Down {}).run(sh, &self.global);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
