//! The swarm runtime: blue and green as Docker Swarm services with several replicas each,
//! nginx as a one-task service on the manager this tool talks to.
//!
//! Layout (names from [`spec::Names`]; every object labelled with the stack's name):
//! - `<stack>_blue` and `<stack>_green`: the colors, `[swarm] replicas` tasks each (`up
//!   --replicas`, `scale`), each on its own overlay network (`swarm.blue_subnet`,
//!   `swarm.green_subnet`) under the alias `blue` / `green`, endpoint mode `dnsrr` (or `vip`);
//! - `<stack>_nginx`: the balancer, pinned to this manager node, on both networks, its ports
//!   published on the node (`mode=host`), the state volume `<stack>_state` mounted as in the
//!   compose runtime. The host state directory, the lock and the host's agent are the compose
//!   runtime's own code ([`Compose::for_swarm`]), reaching the volume through that task's
//!   container;
//! - routing: nginx resolves `blue` / `green` per request through Docker's DNS
//!   ([`NginxParams::resolver`]): every replica gets traffic, a replica replaced with a new
//!   address gets it within a second, and no reload ever happens; a switch is the same route
//!   generation swap as everywhere else;
//! - reaching one replica (gates, `status`): [`forward`] relays a local port through the
//!   balancer's container to the replica's address;
//! - `start_color` on a running color is a rolling update, one replica at a time, each new
//!   task started and healthy before its old one stops; swarm rolls a failed update back;
//! - `up` on an engine in no swarm creates a one-node swarm and marks the node, so that `down`
//!   leaves that swarm again; a swarm that was there before is left alone.
//!
//! Files: this one is the [`Runtime`]; `spec.rs` the services' definitions (pure); `stack.rs`
//! the swarm, networks and volume and their removal; `converge.rs` a color's service, tasks and
//! rolling updates; `tasks.rs` parses tasks (pure); `forward.rs` the relay to replicas.

mod converge;
mod forward;
pub mod spec;
mod stack;
pub mod tasks;

use std::{cell::RefCell, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use self::{
    forward::{Forwards, Mux},
    spec::Names,
};
use super::{
    compose::{project_name, Compose, BALANCER_GRPC_PORT, CONTAINER_GRPC_PORT, CONTAINER_PORT},
    HostDir, Part, Replica, Runtime,
};
use crate::{config::DeployConfig, domain::Color, http, images, nginx::NginxParams, util};

/// Docker's embedded DNS server, in every container on a user-defined network.
pub const DOCKER_DNS: &str = "127.0.0.11";
/// How long the balancer's task may take to start and answer.
const BALANCER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long removing the stack's objects may take (tasks drain for 10 s).
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Per replica, on top of `timeouts.healthy`: a rolling update starts, checks and watches
/// (5 s) each replica in turn.
const PER_REPLICA: Duration = Duration::from_secs(15);

/// Whether the engine is a swarm manager (so `--runtime auto` picks this runtime).
pub fn is_manager(sh: &Shell) -> bool {
    let format = "{{.Swarm.ControlAvailable}}";
    cmd!(sh, "docker info --format {format}")
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok_and(|out| out.trim() == "true")
}

/// Makes the engine a one-node swarm manager (advertising loopback) unless it is one already;
/// whether it did, so the caller leaves that swarm when done. An engine that is a swarm
/// worker is an error: nothing can be deployed from it.
pub fn one_node_swarm(sh: &Shell) -> Result<bool> {
    let format = "{{.Swarm.LocalNodeState}}";
    let state = cmd!(sh, "docker info --format {format}").quiet().read()?;
    match state.trim() {
        "inactive" => {
            cmd!(sh, "docker swarm init --advertise-addr 127.0.0.1")
                .quiet()
                .ignore_stdout()
                .run()
                .context("docker swarm init")?;
            Ok(true)
        }
        _ if is_manager(sh) => Ok(false),
        other => bail!(
            "the engine is in a swarm ({other}) but not a manager: point DOCKER_HOST at a manager"
        ),
    }
}

/// Leaves the swarm this machine's tools made ([`one_node_swarm`], or `up`), and removes the
/// `docker_gwbridge` network the engine made with it (no container uses it any more).
pub fn leave_swarm(sh: &Shell) -> Result<()> {
    cmd!(sh, "docker swarm leave --force")
        .quiet()
        .ignore_stdout()
        .run()
        .context("leave the swarm")?;
    let _ = cmd!(sh, "docker network rm docker_gwbridge")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    Ok(())
}

/// A Docker Swarm stack.
pub struct Swarm {
    sh: Shell,
    config: DeployConfig,
    names: Names,
    /// The host state directory in the balancer task's volume, and the host's agent.
    state: Compose,
    /// `up --replicas`: set on running colors too.
    asked_replicas: Option<u32>,
    /// Local relays by target address, opened once per command, all through one agent session.
    forwards: RefCell<Forwards>,
}

impl Swarm {
    /// Opens the stack `compose.project` names on the engine `DOCKER_HOST` names. `explicit`:
    /// `--runtime swarm` was asked for (an engine in no swarm is then fine: `up` creates one).
    pub fn new(sh: &Shell, config: &DeployConfig, explicit: bool) -> Result<Swarm> {
        let names = Names {
            stack: project_name(&config.compose.project)?,
        };
        let state = Compose::for_swarm(sh, config, &names.service(Part::Balancer))?;
        let sh = sh.clone();
        sh.change_dir(util::project_root());
        let format = "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}";
        let info = cmd!(sh, "docker info --format {format}")
            .quiet()
            .read()
            .context("ask the engine about its swarm")?;
        match info.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["active", "true"] => {}
            ["active", _] => bail!(
                "this engine is a swarm worker: point DOCKER_HOST at a manager node (`docker node ls` there lists the nodes)"
            ),
            _ if explicit => {}
            _ => bail!("this engine is in no swarm"),
        }
        Ok(Swarm {
            sh,
            config: config.clone(),
            names,
            state,
            asked_replicas: None,
            forwards: RefCell::default(),
        })
    }

    pub(super) fn docker(&self, what: &str, args: &[String]) -> Result<String> {
        let output = cmd!(self.sh, "docker {args...}")
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| format!("{what}: run docker"))?;
        if !output.status.success() {
            bail!(
                "{what}: `docker {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub(super) fn exists(&self, kind: &str, name: &str) -> bool {
        cmd!(self.sh, "docker {kind} inspect --format . {name}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
    }

    /// This engine's swarm node ID.
    pub(super) fn node_id(&self) -> Result<String> {
        let format = "{{.Swarm.NodeID}}";
        Ok(cmd!(self.sh, "docker info --format {format}")
            .quiet()
            .read()?
            .trim()
            .to_owned())
    }

    /// The balancer's running task container, if any.
    fn balancer_container(&self) -> Result<Option<String>> {
        self.state.forget_balancer();
        let id = self.state.container_id(Part::Balancer)?;
        match id {
            Some(id) if self.state.is_running(Part::Balancer)? => Ok(Some(id)),
            _ => Ok(None),
        }
    }

    /// Starts the balancer with the rendered config unless its task runs: the colors' gates
    /// reach their replicas through it.
    fn ensure_balancer(&self) -> Result<()> {
        if self.balancer_container()?.is_some() {
            return Ok(());
        }
        self.start_balancer(&crate::nginx::render(&self.nginx_params()))
    }

    /// A local URL that reaches `target` (`host:port` on the colors' networks); all of the
    /// command's such ports relay through one agent session in the balancer's container.
    fn forward(&self, target: &str) -> String {
        let service = format!(
            "label=com.docker.swarm.service.name={}",
            self.names.service(Part::Balancer)
        );
        let docker_host = std::env::var("DOCKER_HOST").ok();
        let locate: forward::Locate = Arc::new(move || {
            let mut command = std::process::Command::new("docker");
            if let Some(host) = &docker_host {
                command.env("DOCKER_HOST", host);
            }
            let out = command
                .args([
                    "ps",
                    "--quiet",
                    "--no-trunc",
                    "--filter",
                    &service,
                    "--filter",
                    "status=running",
                ])
                .output()
                .context("find the balancer's container")?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
                .context("the balancer's task is not running")
        });
        let mux = || {
            // An agent from an older version of this tool has no `mux`: replace it first (one
            // `--version` exec when it is current). A balancer that is down fails later, at
            // the first connection, which is what the caller reports.
            let _ = self.state.ensure_agent();
            Mux::docker_exec(locate, super::compose::agent_path())
        };
        match self.forwards.borrow_mut().port(target, mux) {
            Ok(port) => format!("http://127.0.0.1:{port}"),
            // No local port: a URL that refuses, so the caller's check says it cannot connect.
            Err(_) => "http://127.0.0.1:9".to_owned(),
        }
    }
}

impl Runtime for Swarm {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn url(&self, part: Part) -> String {
        match part {
            Part::Balancer => self.state.url(part),
            Part::Color(color) => self.forward(&format!("{color}:{CONTAINER_PORT}")),
        }
    }

    fn address_for_people(&self, part: Part) -> String {
        match part {
            Part::Balancer => self.url(part),
            Part::Color(color) => {
                format!("{color}:{CONTAINER_PORT} on {}", self.names.network(color))
            }
        }
    }

    fn grpc_url(&self, part: Part) -> String {
        match part {
            Part::Balancer => self.state.grpc_url(part),
            Part::Color(color) => self.forward(&format!("{color}:{CONTAINER_GRPC_PORT}")),
        }
    }

    fn nginx_params(&self) -> NginxParams {
        let mut params = self.state.nginx_params();
        params.blue = format!("blue:{CONTAINER_PORT}");
        params.green = format!("green:{CONTAINER_PORT}");
        params.blue_grpc = format!("blue:{CONTAINER_GRPC_PORT}");
        params.green_grpc = format!("green:{CONTAINER_GRPC_PORT}");
        params.grpc_listen = BALANCER_GRPC_PORT.to_string();
        params.resolver = Some(DOCKER_DNS.to_owned());
        params.color_prefixes = [
            (Color::Blue, &self.config.swarm.blue_subnet),
            (Color::Green, &self.config.swarm.green_subnet),
        ]
        .into_iter()
        .filter_map(|(color, subnet)| Some((color, crate::config::subnet_prefix(subnet)?)))
        .collect();
        params
    }

    fn host(&self) -> &dyn HostDir {
        &self.state
    }

    fn start_balancer(&self, nginx_conf: &str) -> Result<()> {
        self.ensure_swarm()?;
        self.ensure_networks()?;
        if self.balancer_container()?.is_some() {
            if self.state.current_config()?.as_deref() != Some(nginx_conf) {
                self.state.apply_config(nginx_conf)?;
            }
            return self.state.ensure_agent();
        }
        let image = images::resolve_nginx_image(
            &self.sh,
            &self.config.compose.nginx_image,
            images::offline_from_env(),
        )?;
        self.seed_volume(&image, nginx_conf)?;
        let service = self.names.service(Part::Balancer);
        if self.exists("service", &service) {
            // It exists but runs no task (a crash loop, say): restart it with the new config.
            self.docker(
                "restart the balancer service",
                &[
                    "service".into(),
                    "update".into(),
                    "--detach".into(),
                    "--quiet".into(),
                    "--force".into(),
                    service.clone(),
                ],
            )?;
        } else {
            let node = self.node_id()?;
            let args = spec::balancer_create_args(&self.names, &self.config, &node, &image);
            self.docker("create the balancer service", &args)?;
        }
        let client = http::client()?;
        let url = self.url(Part::Balancer);
        util::poll(
            "wait for the balancer to answer",
            BALANCER_START_TIMEOUT,
            || {
                if self.balancer_container()?.is_none() {
                    bail!("its task is not running yet");
                }
                http::balancer_responds(&client, &url)
            },
        )
        .with_context(|| {
            format!(
                "nginx did not start; its tasks:\n{}\nits log:\n{}",
                self.task_errors(Part::Balancer),
                self.logs(Part::Balancer, 20).unwrap_or_default()
            )
        })?;
        self.state
            .ensure_agent()
            .context("install the host's agent, through which the gates reach each replica")
    }

    fn start_color(&self, color: Color, version: &str) -> Result<()> {
        self.ensure_balancer()?;
        let image = self.state.service_image();
        images::ensure_service_image(&self.sh, &self.config.compose.image, &image)?;
        let replicas = match self.service_spec(color)? {
            None => {
                let replicas = self.asked_replicas.unwrap_or(self.config.swarm.replicas);
                crate::say!(
                    "creating the {color} service: {replicas} replicas; {}",
                    spec::endpoint_note(self.config.swarm.endpoint_mode)
                );
                let args = spec::color_create_args(
                    &self.names,
                    &self.config,
                    color,
                    version,
                    replicas,
                    &image,
                );
                self.docker(&format!("create the {color} service"), &args)?;
                replicas
            }
            Some((current, _)) => {
                let replicas = match (self.asked_replicas, current) {
                    (Some(asked), _) => Some(asked),
                    (None, 0) => Some(self.config.swarm.replicas),
                    (None, _) => None,
                };
                let args = spec::color_update_args(&self.names, color, version, &image, replicas);
                self.docker(&format!("update {color} to {version}"), &args)?;
                replicas.unwrap_or(current)
            }
        };
        self.wait_converged(color, version, replicas)
    }

    fn stop_color(&self, color: Color) -> Result<()> {
        let service = self.names.service(Part::Color(color));
        if !self.exists("service", &service) {
            return Ok(());
        }
        self.docker(
            &format!("stop {color}"),
            &[
                "service".into(),
                "update".into(),
                "--detach".into(),
                "--quiet".into(),
                "--replicas".into(),
                "0".into(),
                service,
            ],
        )?;
        util::poll(
            &format!("wait for {color}'s tasks to stop"),
            DOWN_TIMEOUT,
            || {
                if self.replicas(color)?.is_empty() {
                    Ok(())
                } else {
                    bail!("tasks still run")
                }
            },
        )
    }

    fn is_running(&self, part: Part) -> Result<bool> {
        match part {
            Part::Balancer => Ok(self.balancer_container()?.is_some()),
            Part::Color(color) => Ok(self.service_spec(color)?.is_some_and(|(n, _)| n > 0)),
        }
    }

    fn logs(&self, part: Part, lines: usize) -> Result<String> {
        let service = self.names.service(part);
        if !self.exists("service", &service) {
            return Ok(format!("(no {part} service)"));
        }
        let tail = lines.to_string();
        let output = cmd!(
            self.sh,
            "docker service logs --no-trunc --tail {tail} {service}"
        )
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("read the {part} service's log"))?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(util::last_lines(&text, lines))
    }

    fn down(&self) -> Result<()> {
        self.remove_stack()
    }

    fn apply_config(&self, nginx_conf: &str) -> Result<()> {
        if self.balancer_container()?.is_none() {
            return self.start_balancer(nginx_conf);
        }
        self.state.apply_config(nginx_conf)
    }

    fn current_config(&self) -> Result<Option<String>> {
        self.state.current_config()
    }

    fn ask_replicas(&mut self, replicas: u32) -> Result<()> {
        self.asked_replicas = Some(replicas);
        Ok(())
    }

    fn desired_replicas(&self, color: Color) -> Result<Option<u32>> {
        Ok(Some(self.service_spec(color)?.map_or(0, |(n, _)| n)))
    }

    fn replicas(&self, color: Color) -> Result<Vec<Replica>> {
        self.list_replicas(color)
    }

    fn scale(&self, color: Color, replicas: u32) -> Result<()> {
        let Some((current, version)) = self.service_spec(color)? else {
            bail!("{color} does not run on this swarm: run `cargo xtask up` first");
        };
        if current != replicas {
            let service = self.names.service(Part::Color(color));
            let n = replicas.to_string();
            self.docker(
                &format!("scale {color} to {replicas}"),
                &[
                    "service".into(),
                    "update".into(),
                    "--detach".into(),
                    "--quiet".into(),
                    "--replicas".into(),
                    n,
                    service,
                ],
            )?;
        }
        if replicas == 0 {
            return self.stop_color(color);
        }
        self.wait_converged(color, &version, replicas)
    }
}
