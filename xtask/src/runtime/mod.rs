//! Runtimes: how the colors and nginx are started, and where the deployment's truth lives.
//!
//! The operation engine (`ops/`) talks only to [`Runtime`]; it does not know whether the colors
//! are containers or child processes. A runtime implements two things and nothing else:
//! - **lifecycle** ([`Runtime`]): start and stop the colors and the balancer, test and install
//!   nginx's static config, read logs;
//! - **the host state directory** ([`HostDir`]): a few atomic file operations on the
//!   deployment host (read, write, append, list, install a folder, swap a link, lock).
//!
//! Route generations are written once, in [`routes`], over [`HostDir`]; the state file and the
//! operation log are written by `ops/` over the same trait. Implementations:
//! - [`local`]: the service binaries and a host nginx as child processes, state under
//!   `.deploy/local/` (the deploy configuration's `local.state_dir`);
//! - [`compose`]: containers through `docker compose` / `docker-compose`, state in a named volume
//!   mounted into the nginx container, changed only through the Docker API;
//! - `fake` (tests only): an in-memory host directory with injectable failures.
//!
//! - [`swarm`]: a Docker Swarm stack, each color a service with several replicas; its host state
//!   directory is the compose runtime's, in the balancer task's volume.
//!
//! [`open`] picks one: `--runtime local|compose|swarm`, or `auto` = a recorded local deployment,
//! else swarm when the engine is a swarm manager (and no compose deployment of the project runs
//! there), else compose when `docker info` answers, else local.
//!
//! The **host state directory** holds, relative to its root:
//! - `routes/gen-<n>/<bucket>`: one empty file per bucket that goes to green (generation `n`);
//! - `routes/current`: a symlink to the active `gen-<n>`, replaced atomically by `rename(2)`;
//!   nginx tests `<route_dir>/current/$bucket` per request, where `route_dir` is
//!   [`NginxParams::route_dir`] (the host state directory's `routes` as nginx sees it);
//! - `state.json`: the recorded deploy state ([`crate::domain::DeployState`]);
//! - `operations.jsonl`: the operation log, one [`crate::domain::Operation`] per line;
//! - the lock that serialises operations (its form is the runtime's business).

pub mod compose;
#[cfg(test)]
pub mod fake;
pub mod local;
pub mod routes;
pub mod shadow;
pub mod swarm;

use std::time::Duration;

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{config::DeployConfig, domain::Color, flags, nginx::NginxParams, util::project_root};

/// A part of the deployment the runtime starts and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Balancer,
    Color(Color),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Balancer => f.write_str("balancer"),
            Part::Color(color) => write!(f, "{color}"),
        }
    }
}

/// Held while an operation runs; dropping it releases the lock.
pub type HostLock = Box<dyn std::any::Any>;

/// What a link in the host state directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Nothing at that path.
    Missing,
    /// A symlink to this (relative) target.
    To(String),
    /// Something else is there, or it cannot be read; the text says what.
    Broken(String),
}

/// The deployment host's state directory. Paths are relative to its root and `/`-separated;
/// every change is atomic for readers (nginx's workers, another operation).
pub trait HostDir {
    /// The contents of `rel`, `None` when it does not exist.
    fn read(&self, rel: &str) -> Result<Option<String>>;
    /// Replaces `rel` via a temporary file and `rename(2)`: readers see the old or the new
    /// contents, never a mix.
    fn write(&self, rel: &str, contents: &str) -> Result<()>;
    /// Appends `line` and a newline in one write (the operation log).
    fn append(&self, rel: &str, line: &str) -> Result<()>;
    /// The names in folder `rel`, `None` when it does not exist; an error when it cannot be read.
    fn list(&self, rel: &str) -> Result<Option<Vec<String>>>;
    /// Creates folder `rel` holding one empty file per name in `empty_files`, replacing a
    /// leftover of the same name; readable by nginx's workers.
    fn install_dir(&self, rel: &str, empty_files: &[String]) -> Result<()>;
    /// Atomically points the symlink `link` at `target` (a new link renamed over the old).
    fn swap_link(&self, link: &str, target: &str) -> Result<()>;
    /// Where the symlink `link` points.
    fn read_link(&self, link: &str) -> Result<Link>;
    /// Removes the folders `rels` and everything in them; absent ones are not an error.
    fn remove_dirs(&self, rels: &[String]) -> Result<()>;
    /// Why nginx's workers could not read folder `rel` although this process can (file modes
    /// on the way to it), if so. Runtimes where both read alike keep the default.
    fn balancer_cannot_read(&self, _rel: &str) -> Option<String> {
        None
    }
    /// Takes the host-wide operation lock, waiting at most `timeout`; the error on timeout says
    /// who holds it (when known) and what to do. `holder` describes this operation for others.
    fn lock(&self, timeout: Duration, holder: &str) -> Result<HostLock>;
    /// The last line of file `rel`, `None` when it is missing or empty (the operation log's
    /// newest record, without reading the whole log over a slow connection).
    fn last_line(&self, rel: &str) -> Result<Option<String>> {
        Ok(self.read(rel)?.as_deref().and_then(last_line_of))
    }
    /// While the lock is held: what the host appends to `log`, marked interrupted, if this
    /// process's connection to it ends before the lock is released: `found`, an operation-log
    /// record of the host as the operation found it, or `moved`, the record once traffic moved,
    /// when the host keeps the new route (its state was recorded). Runtimes whose host is this
    /// machine keep the default: a crash here leaves the lock to its time-out, as before.
    fn on_interrupt(&self, _log: &str, _found: &str, _moved: Option<&str>) -> Result<()> {
        Ok(())
    }
}

/// The last non-empty line of `text`.
pub fn last_line_of(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(str::to_owned)
}

/// The recorded deploy state, relative to the host state directory: writing it commits an
/// operation (an agent that loses its client undoes a route swap made after the last write).
pub const STATE_FILE: &str = "state.json";

/// One replica of a color: where it runs and how this machine reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// `blue.2` on a swarm; the color's name where a color is one process.
    pub name: String,
    /// The node it runs on (empty where there is one host).
    pub node: String,
    /// Its address on the color's network (empty when not known).
    pub address: String,
    /// The orchestrator's word for it: `running`, `starting`, `failed: …`.
    pub state: String,
    /// The model version it was started with, when known.
    pub version: Option<String>,
    /// Its HTTP base URL, as this machine reaches it.
    pub url: String,
    /// Its gRPC address (`http://host:port`).
    pub grpc_url: String,
}

impl Replica {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// Starting and stopping the parts of a deployment.
pub trait Runtime {
    /// "local", "compose" or "swarm", for messages and the operation log.
    fn name(&self) -> &'static str;

    /// The base URL (`http://host:port`, no trailing slash) at which the machine running the
    /// xtask reaches `part`: the balancer's public port, or a color's direct port. Gates call
    /// colors there; verification and smoke go through the balancer.
    fn url(&self, part: Part) -> String;

    /// Where `part` is, for people (`status`): its URL, unless that is only this command's
    /// relay (swarm colors, reached through the balancer's container).
    fn address_for_people(&self, part: Part) -> String {
        self.url(part)
    }

    /// The `http://host:port` at which the machine running the xtask reaches `part`'s gRPC
    /// port (HTTP/2 cleartext): the balancer's public gRPC port, or a color's direct one.
    fn grpc_url(&self, part: Part) -> String;

    /// The values this runtime's nginx config is rendered with ([`crate::nginx::render`]).
    fn nginx_params(&self) -> NginxParams;

    /// The host state directory, where routes, state and the operation log live.
    fn host(&self) -> &dyn HostDir;

    /// Starts the balancer with `nginx_conf` as its static config, creating the host state
    /// directory if needed. Idempotent: a running balancer with the same config is left alone; a
    /// running one with another config gets it through [`Runtime::apply_config`].
    fn start_balancer(&self, nginx_conf: &str) -> Result<()>;
    /// Starts (or recreates) `color` serving model `version`. Returns once the process or
    /// container has started; health is the caller's business (it polls the color's URL).
    fn start_color(&self, color: Color, version: &str) -> Result<()>;
    /// Stops `color` gracefully (SIGTERM, bounded wait). Stopping a stopped color is not an error.
    fn stop_color(&self, color: Color) -> Result<()>;
    /// Whether the part's process or container is running (not whether it is healthy).
    fn is_running(&self, part: Part) -> Result<bool>;
    /// The last `lines` lines of the part's log, for error messages.
    fn logs(&self, part: Part, lines: usize) -> Result<String>;
    /// Stops everything this runtime started and removes what it created (networks, volumes,
    /// state directories).
    fn down(&self) -> Result<()>;

    /// Tests `nginx_conf` with `nginx -t`; if it passes, installs it and reloads nginx. If it
    /// fails, the running config stays and the error carries nginx's own message. Changed
    /// rarely, never during a switch.
    fn apply_config(&self, nginx_conf: &str) -> Result<()>;
    /// The static config nginx runs with now, if one is installed.
    fn current_config(&self) -> Result<Option<String>>;

    /// How many replicas `color` should have, where a color can have several (`None`: one
    /// process or container per color).
    fn desired_replicas(&self, _color: Color) -> Result<Option<u32>> {
        Ok(None)
    }
    /// Every replica of `color` the orchestrator wants running, each with its own address, so
    /// that gates and `status` see them one by one. One, at the color's address, by default.
    fn replicas(&self, color: Color) -> Result<Vec<Replica>> {
        let part = Part::Color(color);
        let running = self.is_running(part)?;
        Ok(vec![Replica {
            name: color.to_string(),
            node: String::new(),
            address: String::new(),
            state: if running { "running" } else { "stopped" }.to_owned(),
            version: None,
            url: self.url(part),
            grpc_url: self.grpc_url(part),
        }])
    }
    /// `up --replicas N`: the replica count for the colors `up` starts.
    fn ask_replicas(&mut self, _replicas: u32) -> Result<()> {
        anyhow::bail!(
            "the {} runtime runs one process per color: `--replicas` needs the swarm runtime (`--runtime swarm`)",
            self.name()
        )
    }
    /// Sets `color`'s replica count and waits until that many run healthy.
    fn scale(&self, _color: Color, _replicas: u32) -> Result<()> {
        anyhow::bail!(
            "the {} runtime runs one process per color: `scale` needs the swarm runtime (`--runtime swarm`)",
            self.name()
        )
    }
}

/// Opens the runtime `--runtime` names (`auto`: compose when a Docker engine answers and the
/// compose runtime is usable here, local otherwise).
pub fn open(sh: &Shell, global: &flags::Global, config: &DeployConfig) -> Result<Box<dyn Runtime>> {
    match global.runtime {
        flags::RuntimeKind::Local => Ok(Box::new(local::Local::new(sh, config)?)),
        flags::RuntimeKind::Compose => Ok(Box::new(
            compose::Compose::new(sh, config).context("open the compose runtime")?,
        )),
        flags::RuntimeKind::Swarm => Ok(Box::new(
            swarm::Swarm::new(sh, config, true).context("open the swarm runtime")?,
        )),
        flags::RuntimeKind::Auto => {
            // A running local deployment wins: starting Docker later must not make the next
            // command operate on a different (empty) deployment.
            if config
                .local_state_dir(&project_root())
                .join("state.json")
                .is_file()
            {
                return Ok(Box::new(local::Local::new(sh, config)?));
            }
            if crate::docker::engine_answers(sh) {
                // A swarm manager runs the swarm runtime, unless a compose deployment of the
                // project already runs on it.
                if swarm::is_manager(sh) && !compose::project_exists(sh, config) {
                    if let Ok(swarm) = swarm::Swarm::new(sh, config, false) {
                        return Ok(Box::new(swarm));
                    }
                }
                if let Ok(compose) = compose::Compose::new(sh, config) {
                    return Ok(Box::new(compose));
                }
            }
            Ok(Box::new(local::Local::new(sh, config)?))
        }
    }
}
