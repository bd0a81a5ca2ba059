//! Runtimes: how the colors and nginx are started, and where the deployment's truth lives.
//!
//! The switch logic (`switch.rs`) talks only to [`Runtime`]; it does not know whether the colors
//! are containers or child processes. Two implementations:
//! - [`local`]: the service binaries and a host nginx as child processes, state under
//!   `.deploy/local/` (the deploy configuration's `local.state_dir`);
//! - [`compose`]: containers through `docker compose` / `docker-compose`, state in a named volume
//!   mounted into the nginx container, changed only through the Docker API.
//!
//! [`open`] picks one: `--runtime local|compose`, or `auto` = compose when `docker info` answers
//! and [`compose::Compose::new`] succeeds, local otherwise.
//!
//! The **host state directory** holds, relative to its root:
//! - `routes/gen-<n>/<bucket>`: one empty file per bucket that goes to green (generation `n`);
//! - `routes/current`: a symlink to the active `gen-<n>` (relative target `gen-<n>`), replaced
//!   atomically by `rename(2)`; nginx tests `<route_dir>/current/$bucket` per request, where
//!   `route_dir` is [`NginxParams::route_dir`] (the host state directory's `routes` as nginx sees
//!   it);
//! - `state.json`: the recorded deploy state ([`crate::domain::DeployState`]);
//! - `operations.jsonl`: the operation log, one [`crate::domain::Operation`] per line;
//! - `lock`: serialises operations.
//!
//! The callers render nginx's config with [`crate::nginx::render`]`(&runtime.nginx_params())`,
//! so both runtimes serve the same routing logic.

pub mod compose;
pub mod local;

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

/// What the route symlink says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteReading {
    /// `routes/current` points at generation `generation`, which sends `green_buckets` to green.
    Active {
        generation: u64,
        green_buckets: Vec<u16>,
    },
    /// There is no `routes/current`: nginx sends every request to its default (blue).
    Missing,
    /// `routes/current` exists but cannot be read (by us or by nginx's workers); the text says
    /// why. nginx's `if -f` is then false, so every request goes to blue.
    Unreadable(String),
}

/// Held while an operation runs; dropping it releases the lock.
pub type HostLock = Box<dyn std::any::Any>;

pub trait Runtime {
    /// "local" or "compose", for messages and the operation log.
    fn name(&self) -> &'static str;

    /// The base URL (`http://host:port`, no trailing slash) at which the machine running the
    /// xtask reaches `part`: the balancer's public port, or a color's direct port. Gates call
    /// colors there; verification and smoke go through the balancer.
    fn url(&self, part: Part) -> String;

    /// The values this runtime's nginx config is rendered with ([`crate::nginx::render`]).
    fn nginx_params(&self) -> NginxParams;

    // Lifecycle.

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

    // Static nginx config: changed rarely, never during a switch.

    /// Tests `nginx_conf` with `nginx -t`; if it passes, installs it and reloads nginx. If it
    /// fails, the running config stays and the error carries nginx's own message.
    fn apply_config(&self, nginx_conf: &str) -> Result<()>;
    /// The static config nginx runs with now, if one is installed.
    fn current_config(&self) -> Result<Option<String>>;

    // The host state directory (paths relative to its root, `/`-separated).

    fn read_file(&self, rel: &str) -> Result<Option<String>>;
    /// Writes via a temporary file and `rename(2)`, so readers see the old or the new contents.
    fn write_file_atomic(&self, rel: &str, contents: &str) -> Result<()>;
    /// Appends `line` and a newline (the operation log).
    fn append_line(&self, rel: &str, line: &str) -> Result<()>;

    // Routing.

    /// Creates `routes/gen-<generation>/` holding one empty file per bucket in `green_buckets`
    /// (replacing a leftover directory of that name), readable by nginx's workers.
    fn install_generation(&self, generation: u64, green_buckets: &[u16]) -> Result<()>;
    /// Atomically points `routes/current` at `gen-<generation>` (new symlink renamed over the old).
    fn activate_generation(&self, generation: u64) -> Result<()>;
    /// Reads `routes/current` and the bucket files of the generation it points at.
    fn active_generation(&self) -> Result<RouteReading>;
    /// The highest generation number present under `routes/` (0 when none), so a new one never
    /// reuses a number, even after a crash left an unrecorded generation behind.
    fn max_generation(&self) -> Result<u64>;
    /// Removes every generation directory not in `keep`.
    fn prune_generations(&self, keep: &[u64]) -> Result<()>;

    /// Takes the host-wide operation lock, waiting at most `timeout`; the error on timeout says
    /// who holds it (when known) and what to do. `holder` describes this operation for others.
    fn lock(&self, timeout: Duration, holder: &str) -> Result<HostLock>;
}

/// Opens the runtime `--runtime` names (`auto`: compose when a Docker engine answers and the
/// compose runtime is usable here, local otherwise).
pub fn open(sh: &Shell, global: &flags::Global, config: &DeployConfig) -> Result<Box<dyn Runtime>> {
    match global.runtime {
        flags::RuntimeKind::Local => Ok(Box::new(local::Local::new(sh, config)?)),
        flags::RuntimeKind::Compose => Ok(Box::new(
            compose::Compose::new(sh, config).context("open the compose runtime")?,
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
            if crate::engine::engine_answers(sh) {
                if let Ok(compose) = compose::Compose::new(sh, config) {
                    return Ok(Box::new(compose));
                }
            }
            Ok(Box::new(local::Local::new(sh, config)?))
        }
    }
}
