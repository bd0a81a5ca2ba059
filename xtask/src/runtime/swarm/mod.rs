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

mod forward;
pub mod spec;
pub mod tasks;

use std::{
    cell::RefCell,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use self::{
    forward::{Forwards, Mux},
    spec::{Names, CREATED_SWARM_LABEL, STACK_LABEL},
};
use super::{
    compose::{
        project_name, Compose, TarKind, BALANCER_GRPC_PORT, CONTAINER_GRPC_PORT, CONTAINER_PORT,
        STATE_DIR,
    },
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

    fn docker(&self, what: &str, args: &[String]) -> Result<String> {
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

    fn exists(&self, kind: &str, name: &str) -> bool {
        cmd!(self.sh, "docker {kind} inspect --format . {name}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
    }

    /// This engine's swarm node ID.
    fn node_id(&self) -> Result<String> {
        let format = "{{.Swarm.NodeID}}";
        Ok(cmd!(self.sh, "docker info --format {format}")
            .quiet()
            .read()?
            .trim()
            .to_owned())
    }

    /// Makes this engine a one-node swarm if it is in none, marking the node so that `down`
    /// leaves the swarm it made.
    fn ensure_swarm(&self) -> Result<()> {
        if is_manager(&self.sh) {
            return Ok(());
        }
        crate::say!(
            "this engine is in no swarm: creating a one-node swarm (`down` leaves it again)…"
        );
        let first = cmd!(self.sh, "docker swarm init")
            .quiet()
            .ignore_status()
            .output()?;
        if !first.status.success() {
            let err = String::from_utf8_lossy(&first.stderr);
            if !err.contains("advertise") {
                bail!("docker swarm init failed: {}", err.trim());
            }
            // Several addresses and none chosen: a one-node swarm advertises loopback.
            cmd!(self.sh, "docker swarm init --advertise-addr 127.0.0.1")
                .quiet()
                .ignore_stdout()
                .run()
                .context("docker swarm init --advertise-addr 127.0.0.1")?;
        }
        let label = format!("{CREATED_SWARM_LABEL}={}", self.names.stack);
        let node = self.node_id()?;
        cmd!(self.sh, "docker node update --label-add {label} {node}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("mark the node as made by this tool")?;
        Ok(())
    }

    fn ensure_networks(&self) -> Result<()> {
        for color in Color::ALL {
            let name = self.names.network(color);
            if !self.exists("network", &name) {
                let args = spec::network_args(&self.names, &self.config, color);
                self.docker(&format!("create the {color} network"), &args)?;
            }
        }
        Ok(())
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

    /// Writes nginx's config (and the empty route folder) into the state volume before the
    /// balancer's first task starts, through a stopped helper container.
    fn seed_volume(&self, image: &str, nginx_conf: &str) -> Result<()> {
        let (volume, seed) = (self.names.volume(), self.names.seed());
        if !self.exists("volume", &volume) {
            let label = format!("{STACK_LABEL}={}", self.names.stack);
            cmd!(self.sh, "docker volume create --label {label} {volume}")
                .quiet()
                .ignore_stdout()
                .run()
                .context("create the state volume")?;
        }
        let _ = cmd!(self.sh, "docker rm --force {seed}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        let mount = format!("type=volume,source={volume},target={STATE_DIR}");
        let id = cmd!(
            self.sh,
            "docker create --name {seed} --mount {mount} --entrypoint true {image}"
        )
        .quiet()
        .read()
        .context("create the helper container that seeds the state volume")?;
        let entries = [
            ("nginx".to_owned(), TarKind::Dir, ""),
            ("nginx/nginx.conf".to_owned(), TarKind::File, nginx_conf),
            ("routes".to_owned(), TarKind::Dir, ""),
        ];
        let copied = self.state.copy_into(id.trim(), &entries, STATE_DIR);
        let _ = cmd!(self.sh, "docker rm --force {seed}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        copied.context("install nginx's config into the state volume")
    }

    /// What the service's failed tasks said, newest first, for error messages.
    fn task_errors(&self, part: Part) -> String {
        let service = self.names.service(part);
        let format = "{{.Name}} on {{.Node}}: {{.CurrentState}}: {{.Error}}";
        let out = cmd!(
            self.sh,
            "docker service ps --no-trunc --format {format} {service}"
        )
        .quiet()
        .ignore_status()
        .read()
        .unwrap_or_default();
        let errors: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim_end().ends_with(": "))
            .take(5)
            .collect();
        if errors.is_empty() {
            "no task reported an error".to_owned()
        } else {
            errors.join("\n")
        }
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

    /// The service's spec values: replicas, `MODEL_VERSION`; `None` when it does not exist.
    fn service_spec(&self, color: Color) -> Result<Option<(u32, String)>> {
        let service = self.names.service(Part::Color(color));
        let format = "{{.Spec.Mode.Replicated.Replicas}} {{range .Spec.TaskTemplate.ContainerSpec.Env}}{{.}} {{end}}";
        // One call: a missing service is the inspect's own error.
        let output = cmd!(
            self.sh,
            "docker service inspect --format {format} {service}"
        )
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("inspect the {color} service"))?;
        let out = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let err = String::from_utf8_lossy(&output.stderr);
            if err.contains("no such service") || err.contains("not found") {
                return Ok(None);
            }
            bail!("inspect the {color} service: {}", err.trim());
        }
        let mut words = out.split_whitespace();
        let replicas = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let version = words
            .find_map(|w| w.strip_prefix("MODEL_VERSION="))
            .unwrap_or_default()
            .to_owned();
        Ok(Some((replicas, version)))
    }

    /// The service's rolling update state (`updating`, `completed`, `rollback_completed`…) and
    /// message; empty when it was never updated.
    fn update_status(&self, color: Color) -> (String, String) {
        let service = self.names.service(Part::Color(color));
        let format = "{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.Message}}{{end}}";
        let out = cmd!(
            self.sh,
            "docker service inspect --format {format} {service}"
        )
        .quiet()
        .ignore_status()
        .read()
        .unwrap_or_default();
        let (state, message) = out.trim().split_once('|').unwrap_or(("", ""));
        (state.to_owned(), message.to_owned())
    }

    /// Waits until `color` runs `replicas` tasks, all running `version`, and its rolling update
    /// (if any) completed; fails when swarm paused or rolled the update back, or at the deadline,
    /// with the tasks' errors and the end of the log.
    fn wait_converged(&self, color: Color, version: &str, replicas: u32) -> Result<()> {
        let timeout = self.config.timeouts.healthy + PER_REPLICA * replicas;
        let start = Instant::now();
        let mut last_report = Duration::ZERO;
        loop {
            let (update, message) = self.update_status(color);
            if update.starts_with("rollback") || update == "paused" {
                if update == "rollback_started" {
                    crate::say!("  swarm is rolling {color}'s update back: {message}");
                } else {
                    bail!(
                        "swarm stopped {color}'s update to {version} ({update}: {message}); the replicas before it keep serving. Its tasks:\n{}\nThe end of its log:\n{}",
                        self.task_errors(Part::Color(color)),
                        self.logs(Part::Color(color), 10).unwrap_or_default()
                    );
                }
            }
            let all = self.replicas(color)?;
            let ready = all
                .iter()
                .filter(|r| r.running() && r.version.as_deref() == Some(version))
                .count();
            let updating = update == "updating" || update == "rollback_started";
            if ready == replicas as usize && all.len() == replicas as usize && !updating {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{color} did not reach {replicas} healthy replicas of {version} within {:.0} s ({ready} are); its tasks:\n{}\nThe end of its log:\n{}",
                    timeout.as_secs_f64(),
                    self.task_errors(Part::Color(color)),
                    self.logs(Part::Color(color), 10).unwrap_or_default()
                );
            }
            if start.elapsed() - last_report >= Duration::from_secs(5) {
                last_report = start.elapsed();
                crate::say!(
                    "  {color}: {ready} of {replicas} replicas run {version}{}; {:.0} s",
                    if updating { " (rolling update)" } else { "" },
                    start.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
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
        self.state.end_agent_session();
        let label = format!("label={STACK_LABEL}={}", self.names.stack);
        let services = if is_manager(&self.sh) {
            cmd!(self.sh, "docker service ls --quiet --filter {label}")
                .quiet()
                .read()
                .context("list the stack's services")?
        } else {
            String::new()
        };
        let services: Vec<&str> = services.split_whitespace().collect();
        if !services.is_empty() {
            cmd!(self.sh, "docker service rm {services...}")
                .quiet()
                .ignore_stdout()
                .run()
                .context("remove the stack's services")?;
        }
        // Tasks drain (10 s at most) before their containers, networks and volume can go.
        util::poll(
            "remove the stack's containers, networks and volume",
            DOWN_TIMEOUT,
            || {
                let containers = cmd!(self.sh, "docker ps --all --quiet --filter {label}")
                    .quiet()
                    .read()?;
                let containers: Vec<&str> = containers.split_whitespace().collect();
                if !containers.is_empty() {
                    let _ = cmd!(self.sh, "docker rm --force {containers...}")
                        .quiet()
                        .ignore_stdout()
                        .ignore_stderr()
                        .run();
                }
                let networks = cmd!(self.sh, "docker network ls --quiet --filter {label}")
                    .quiet()
                    .read()?;
                for network in networks.split_whitespace() {
                    let _ = cmd!(self.sh, "docker network rm {network}")
                        .quiet()
                        .ignore_stdout()
                        .ignore_stderr()
                        .run();
                }
                let seed = self.names.seed();
                let _ = cmd!(self.sh, "docker rm --force {seed}")
                    .quiet()
                    .ignore_stdout()
                    .ignore_stderr()
                    .run();
                let volume = self.names.volume();
                if self.exists("volume", &volume) {
                    let _ = cmd!(self.sh, "docker volume rm {volume}")
                        .quiet()
                        .ignore_stdout()
                        .ignore_stderr()
                        .run();
                }
                let left_networks = cmd!(self.sh, "docker network ls --quiet --filter {label}")
                    .quiet()
                    .read()?;
                if left_networks.trim().is_empty() && !self.exists("volume", &volume) {
                    Ok(())
                } else {
                    bail!("the networks or the volume are still in use")
                }
            },
        )?;
        self.state.forget_balancer();
        // The swarm goes only if `up` made it.
        if is_manager(&self.sh) {
            let node = self.node_id()?;
            let format = format!("{{{{index .Spec.Labels \"{CREATED_SWARM_LABEL}\"}}}}");
            let made_by = cmd!(self.sh, "docker node inspect --format {format} {node}")
                .quiet()
                .read()
                .unwrap_or_default();
            if made_by.trim() == self.names.stack {
                cmd!(self.sh, "docker swarm leave --force")
                    .quiet()
                    .ignore_stdout()
                    .run()
                    .context("leave the swarm `up` created")?;
                crate::say!("left the one-node swarm `up` created");
            }
        }
        Ok(())
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
        let service = self.names.service(Part::Color(color));
        let listed = cmd!(
            self.sh,
            "docker service ps --quiet --no-trunc --filter desired-state=running {service}"
        )
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("list {color}'s tasks"))?;
        if !listed.status.success() {
            let err = String::from_utf8_lossy(&listed.stderr);
            if err.contains("no such service") || err.contains("not found") {
                return Ok(Vec::new());
            }
            bail!("list {color}'s tasks: {}", err.trim());
        }
        let ids = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let json = cmd!(self.sh, "docker inspect {ids...}")
            .quiet()
            .read()
            .with_context(|| format!("inspect {color}'s tasks"))?;
        let tasks = tasks::parse_tasks(&json, &self.names.network(color))?;
        let format = "{{.ID}} {{.Hostname}}";
        let nodes = tasks::node_names(
            &cmd!(self.sh, "docker node ls --format {format}")
                .quiet()
                .read()
                .unwrap_or_default(),
        );
        Ok(tasks
            .into_iter()
            .map(|task| {
                let (url, grpc_url) = if task.address.is_empty() {
                    (String::new(), String::new())
                } else {
                    (
                        self.forward(&format!("{}:{CONTAINER_PORT}", task.address)),
                        self.forward(&format!("{}:{CONTAINER_GRPC_PORT}", task.address)),
                    )
                };
                let state = if task.error.is_empty() || task.state == "running" {
                    task.state.clone()
                } else {
                    format!("{}: {}", task.state, task.error)
                };
                Replica {
                    name: format!("{color}.{}", task.slot),
                    node: nodes
                        .get(&task.node_id)
                        .cloned()
                        .unwrap_or(task.node_id.clone()),
                    address: task.address,
                    state,
                    version: Some(task.version),
                    url,
                    grpc_url,
                }
            })
            .collect())
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
