//! The docker compose runtime: nginx, blue and green as containers of one compose project.
//!
//! Layout:
//! - the project runs `docker-compose.yml` (nginx, the network, the `state` volume) together
//!   with `docker-compose.blue.yml` and `docker-compose.green.yml`; each color is started,
//!   replaced and stopped on its own (`up -d --no-deps <color>`), never touching nginx;
//! - every part has a static address on the project network (derived from `compose.subnet`:
//!   `.10` nginx, `.11` blue, `.12` green), so recreating a color keeps the address nginx
//!   resolved when it loaded its config;
//! - the host state directory is the named volume mounted at [`STATE_DIR`] in the nginx
//!   container. It is read and changed only through the Docker API (`docker exec`, `docker cp`),
//!   never through a bind mount, so a remote engine (`DOCKER_HOST=ssh://…`) works unchanged and
//!   the live state is always read back from the host.
//!
//! Operations on the state directory:
//! - atomic writes: `tee <file>.tmp-<pid>` then `mv -f` (rename(2)); appends: `tee -a`;
//! - a route generation: a locally prepared `gen-<n>/` copied in with `docker cp`;
//! - activation: `ln -sfn gen-<n> current.tmp` then `mv -Tf current.tmp current` (rename(2));
//! - the lock: `lock.d`, holding an `owner` file, removed when the guard drops;
//! - while an operation holds the lock, all of these go through one session with the host's
//!   agent (`agent.rs`): one `docker exec` per operation; without the agent, one per step;
//! - nginx's static config: written to a temporary path, `nginx -t -c` on it, then installed and
//!   nginx reloaded (SIGHUP to the container). Never part of a switch.
//!
//! The colors' image is `<compose.image>:<MLDEPLOY_IMAGE_TAG or latest>`; missing images are
//! built (`images.rs`) when a part starts.
//!
//! Reaching the parts: the published ports on 127.0.0.1 for a local engine; with
//! `DOCKER_HOST=ssh://…`, one `ssh` connection per command that forwards the host's balancer
//! and direct ports (the direct ports listen on the host's loopback only) and its Docker socket
//! (`tunnel.rs`); `MLDEPLOY_PUBLIC_HOST` overrides the ports' host.
//!
//! Files: this one starts and stops things ([`Runtime`]); `agent.rs` talks to the host's agent;
//! `docker.rs` is the Docker plumbing
//! (container ids, `exec`, `cp`); `volume.rs` is the state volume ([`HostDir`] and the lock);
//! `tunnel.rs` reaches a remote host's ports; `names.rs` derives names and addresses;
//! `tar.rs` is the codec `docker cp` speaks.

mod agent;
mod docker;
mod names;
mod tar;
mod tunnel;
mod volume;

use std::{cell::RefCell, time::Duration};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

pub(crate) use agent::agent_path;
pub use names::{
    compose_env, compose_files, project_name, service_image_ref, state_path, Addresses,
};
pub use tar::TarKind;
pub use tunnel::remote_docker_host;

use self::tunnel::{port_index, published_host, remote_ports, Tunnel};
use super::{HostDir, Part, Runtime};
use crate::{
    config::DeployConfig,
    docker::{self as engine, ComposeCli},
    domain::Color,
    http, images,
    nginx::NginxParams,
    util,
};

/// Where the state volume is mounted in the nginx container.
pub const STATE_DIR: &str = "/var/lib/mldeploy";
/// The port every container listens on inside the project network.
pub const CONTAINER_PORT: u16 = 8080;
/// Each color's gRPC port inside the project network.
pub const CONTAINER_GRPC_PORT: u16 = 50051;
/// The balancer's gRPC port inside its container.
pub const BALANCER_GRPC_PORT: u16 = 50050;
/// The compose files, relative to the project root, in the order they are merged.
pub const COMPOSE_FILES: [&str; 3] = [
    "docker-compose.yml",
    "docker-compose.blue.yml",
    "docker-compose.green.yml",
];
/// How long a stopping container may drain before it is killed.
const STOP_TIMEOUT_SECS: &str = "10";
/// How long a freshly started nginx container gets to prove it stays up.
const BALANCER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether any container of the configured compose project exists on the engine.
pub fn project_exists(sh: &Shell, config: &DeployConfig) -> bool {
    let label = format!(
        "label=com.docker.compose.project={}",
        config.compose.project
    );
    cmd!(sh, "docker ps --all --quiet --filter {label}")
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok_and(|ids| !ids.trim().is_empty())
}

/// Containers through `docker compose` / `docker-compose`.
pub struct Compose {
    sh: Shell,
    /// The compose tool; `None` when a swarm runs the balancer ([`Compose::for_swarm`]).
    cli: Option<ComposeCli>,
    /// The compose project, or the swarm stack, for names and messages.
    project: String,
    /// With a swarm: the balancer's service, whose running task holds the state volume.
    swarm_service: Option<String>,
    config: DeployConfig,
    addresses: Addresses,
    /// The nginx container's id, looked up once.
    nginx_id: RefCell<Option<String>>,
    /// Whether the nginx container was seen running during this command (checked once: a
    /// container stopping mid-operation makes the next `docker exec` fail anyway).
    nginx_running: std::cell::Cell<bool>,
    /// With `DOCKER_HOST=ssh://…`: local forwards to the host's balancer and direct ports (the
    /// direct ports are bound to the host's loopback, so the gates reach them only this way).
    tunnel: Option<Tunnel>,
    /// The session with the host's agent while this process holds the lock ([`agent`]).
    agent: agent::Shared,
}

impl Compose {
    /// The URL of the published port at `index` in [`remote_ports`], through the SSH tunnel
    /// when there is one.
    fn published_url(&self, index: usize) -> String {
        if let Some(tunnel) = &self.tunnel {
            return format!("http://127.0.0.1:{}", tunnel.local[index]);
        }
        format!(
            "http://{}:{}",
            published_host(),
            remote_ports(&self.config)[index]
        )
    }

    /// Opens the compose runtime; fails when it cannot be used here (no compose command, no
    /// engine), which makes `--runtime auto` choose the local runtime.
    pub fn new(sh: &Shell, config: &DeployConfig) -> Result<Compose> {
        Compose::open(sh, config, None)
    }

    /// The state volume and the host's agent of a swarm stack's balancer: the task container
    /// of `service` on the engine this tool talks to (the swarm runtime places it there). Its
    /// [`HostDir`] is the compose runtime's, unchanged; its lifecycle is the swarm runtime's.
    pub fn for_swarm(sh: &Shell, config: &DeployConfig, service: &str) -> Result<Compose> {
        Compose::open(sh, config, Some(service.to_owned()))
    }

    fn open(sh: &Shell, config: &DeployConfig, swarm_service: Option<String>) -> Result<Compose> {
        // Over SSH, one connection for the whole command: the tunnel also forwards the host's
        // Docker socket, which every later `docker` and compose call then uses.
        let tunnel = Tunnel::open_for_docker_host(config)?;
        if let Some(socket) = tunnel.as_ref().and_then(|t| t.engine.as_ref()) {
            let remote = tunnel::remote_docker_host().unwrap_or_default();
            let forwarded = format!("unix://{}", socket.display());
            std::env::set_var(tunnel::REMOTE_DOCKER_HOST, &remote);
            std::env::set_var("DOCKER_HOST", &forwarded);
            sh.set_var("DOCKER_HOST", &forwarded);
            if !engine::engine_answers(sh) {
                bail!("the Docker engine at {remote} does not answer through the SSH tunnel: check that it runs and that `docker info` works on the host");
            }
        }
        engine::ensure_engine(sh)?;
        let root = util::project_root();
        let project = project_name(&config.compose.project)?;
        let cli = match swarm_service {
            Some(_) => None,
            None => Some(ComposeCli::detect(sh, &project, compose_files())?),
        };
        let addresses = Addresses::in_subnet(&config.compose.subnet).context("`compose.subnet`")?;
        let sh = sh.clone();
        sh.change_dir(&root);
        for (key, value) in compose_env(config, &addresses) {
            sh.set_var(key, value);
        }
        Ok(Compose {
            sh,
            cli,
            project,
            swarm_service,
            config: config.clone(),
            addresses,
            nginx_id: RefCell::new(None),
            nginx_running: std::cell::Cell::new(false),
            tunnel,
            agent: Default::default(),
        })
    }

    /// The service image the colors run, `name:tag`.
    pub fn service_image(&self) -> String {
        service_image_ref(&self.config)
    }

    /// Ends the session with the host's agent, releasing the lock: before the volume that
    /// holds both is removed.
    pub(crate) fn end_agent_session(&self) {
        if let Some(mut session) = self.agent.borrow_mut().take() {
            let _ = session.call(&serde_json::json!({ "op": "unlock" }));
            session.close();
        }
    }

    /// Forgets the balancer container found earlier in this command (a swarm replaced it).
    pub(crate) fn forget_balancer(&self) {
        *self.nginx_id.borrow_mut() = None;
        self.nginx_running.set(false);
    }

    fn service(part: Part) -> &'static str {
        match part {
            Part::Balancer => "nginx",
            Part::Color(color) => color.as_str(),
        }
    }
}

impl Runtime for Compose {
    fn name(&self) -> &'static str {
        "compose"
    }

    fn url(&self, part: Part) -> String {
        self.published_url(port_index(part, false))
    }

    fn grpc_url(&self, part: Part) -> String {
        self.published_url(port_index(part, true))
    }

    fn nginx_params(&self) -> NginxParams {
        let mut params = NginxParams::container_default();
        params.listen = CONTAINER_PORT.to_string();
        params.blue = format!("{}:{CONTAINER_PORT}", self.addresses.blue);
        params.green = format!("{}:{CONTAINER_PORT}", self.addresses.green);
        params.blue_grpc = format!("{}:{CONTAINER_GRPC_PORT}", self.addresses.blue);
        params.green_grpc = format!("{}:{CONTAINER_GRPC_PORT}", self.addresses.green);
        params.route_dir = format!("{STATE_DIR}/routes");
        params.shadow_dir = format!("{STATE_DIR}/shadow");
        params.shadow_timeout_ms = self.config.shadow.timeout_ms;
        params.buckets = self.config.balancer.buckets;
        params.read_timeout_secs = self.config.balancer.read_timeout.as_secs();
        params.testers = self
            .config
            .testers
            .enabled
            .then(|| self.config.testers.clone());
        // /tmp exists in every nginx image; nginx creates its temp folders directly under it.
        params.temp_dir = "/tmp".to_owned();
        params
    }

    fn start_balancer(&self, nginx_conf: &str) -> Result<()> {
        let offline = images::offline_from_env();
        let image =
            images::resolve_nginx_image(&self.sh, &self.config.compose.nginx_image, offline)?;
        self.sh.set_var("MLDEPLOY_NGINX_IMAGE", &image);
        *self.nginx_id.borrow_mut() = None;
        self.nginx_running.set(false);
        if let Some(id) = self.container_id(Part::Balancer)? {
            if self.container_running(&id)? {
                if self.current_config()?.as_deref() == Some(nginx_conf) {
                    return Ok(());
                }
                return self.apply_config(nginx_conf);
            }
        } else {
            // `create`, not `up --no-start`: compose v1 over `ssh://` attaches to the log of
            // each container it creates, and a container that never starts leaves that SSH
            // connection open for good. (No service depends on nginx, so nothing else is made.)
            self.compose("create the balancer container", &["create", "nginx"])?;
            *self.nginx_id.borrow_mut() = None;
        }
        // The container exists but is stopped: seed the volume through `docker cp` (which works
        // on stopped containers), then start it.
        let id = self.nginx()?;
        let seed = [
            ("nginx".to_owned(), TarKind::Dir, ""),
            ("nginx/nginx.conf".to_owned(), TarKind::File, nginx_conf),
            ("routes".to_owned(), TarKind::Dir, ""),
        ];
        self.copy_in(&seed, STATE_DIR)
            .context("install nginx's config into the state volume")?;
        cmd!(self.sh, "docker start {id}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("start the balancer container")?;
        // nginx exits at once on a bad config: wait until it answers its own health path.
        let url = self.url(Part::Balancer);
        let client = http::client()?;
        util::poll(
            "wait for the balancer to answer",
            BALANCER_START_TIMEOUT,
            || {
                if !self.container_running(&id)? {
                    bail!(
                        "the balancer container is {}",
                        self.describe(Part::Balancer)?
                    );
                }
                http::balancer_responds(&client, &url)
            },
        )
        .with_context(|| {
            format!(
                "nginx did not start; its log:\n{}",
                self.logs(Part::Balancer, 20).unwrap_or_default()
            )
        })?;
        // The host's agent, so that the first operation does not wait for it; a host where it
        // cannot run works without it (each step a `docker exec`), as the lock will say.
        if !agent::disabled() {
            if let Err(err) = self.ensure_agent() {
                eprintln!("note: the host's agent is not installed: {err:#}");
            }
        }
        Ok(())
    }

    fn start_color(&self, color: Color, version: &str) -> Result<()> {
        let image = self.service_image();
        images::ensure_service_image(&self.sh, &self.config.compose.image, &image)?;
        let prefix = color.as_str().to_uppercase();
        let service = color.as_str();
        let _version = self
            .sh
            .push_env(format!("MLDEPLOY_{prefix}_VERSION"), version);
        self.compose(
            &format!("start {color} with {version}"),
            &["up", "--detach", "--no-deps", service],
        )
    }

    fn stop_color(&self, color: Color) -> Result<()> {
        self.compose(
            &format!("stop {color}"),
            &["stop", "--timeout", STOP_TIMEOUT_SECS, color.as_str()],
        )
    }

    fn is_running(&self, part: Part) -> Result<bool> {
        match self.container_id(part)? {
            Some(id) => self.container_running(&id),
            None => Ok(false),
        }
    }

    fn logs(&self, part: Part, lines: usize) -> Result<String> {
        let Some(id) = self.container_id(part)? else {
            return Ok(format!("(no {part} container)"));
        };
        let tail = lines.to_string();
        let output = cmd!(self.sh, "docker logs --tail {tail} {id}")
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| format!("read the {part} container's log"))?;
        // The services log to stderr and stdout; show both, in that order of importance.
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(util::last_lines(&text, lines))
    }

    fn down(&self) -> Result<()> {
        self.end_agent_session();
        self.compose(
            "remove the containers, network and volume",
            &[
                "down",
                "--volumes",
                "--remove-orphans",
                "--timeout",
                STOP_TIMEOUT_SECS,
            ],
        )?;
        *self.nginx_id.borrow_mut() = None;
        self.nginx_running.set(false);
        Ok(())
    }

    fn apply_config(&self, nginx_conf: &str) -> Result<()> {
        if !self.is_running(Part::Balancer)? {
            return self.start_balancer(nginx_conf);
        }
        let candidate = format!("{STATE_DIR}/nginx/nginx.conf.new");
        let installed = format!("{STATE_DIR}/nginx/nginx.conf");
        self.exec_ok(
            "write the new nginx config",
            &["tee", &candidate],
            Some(nginx_conf),
        )?;
        let test = self.exec(&["nginx", "-t", "-q", "-c", &candidate], None)?;
        if !test.ok {
            let _ = self.exec(&["rm", "-f", &candidate], None);
            bail!(
                "nginx rejects the new config (the running one stays): {}",
                test.stderr
            );
        }
        self.exec_ok(
            "install the new nginx config",
            &["mv", "-f", &candidate, &installed],
            None,
        )?;
        let id = self.nginx()?;
        cmd!(self.sh, "docker kill --signal HUP {id}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("reload nginx (SIGHUP)")?;
        Ok(())
    }

    fn current_config(&self) -> Result<Option<String>> {
        if self.container_id(Part::Balancer)?.is_none() {
            return Ok(None);
        }
        self.read("nginx/nginx.conf")
    }

    fn host(&self) -> &dyn HostDir {
        self
    }
}
