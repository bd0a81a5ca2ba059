//! Runtimes: how the colors and nginx are started, and where the deployment's truth lives.
//!
//! The switch logic (`switch.rs`) talks only to [`Runtime`]; it does not know whether the colors
//! are containers or child processes. Two implementations:
//! - [`local`]: the service binaries and a host nginx as child processes, state under
//!   `.deploy/local/`;
//! - [`compose`]: containers through `docker compose` / `docker-compose`, state in a named volume
//!   mounted into the nginx container, changed only through the Docker API.
//!
//! The **host state directory** holds, relative to its root:
//! - `routes/gen-<n>/<bucket>`: one empty file per bucket that goes to green (generation `n`);
//! - `routes/current`: a symlink to the active `gen-<n>`, replaced atomically by `rename(2)`;
//! - `state.json`: the recorded deploy state; `operations.jsonl`: the operation log;
//! - `lock`: serialises operations.

pub mod compose;
pub mod local;

use std::time::Duration;

use anyhow::Result;

use crate::domain::Color;

/// A part of the deployment the runtime starts and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Balancer,
    Color(Color),
}

/// What the route symlink says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteReading {
    /// `routes/current` points at generation `generation`, which sends `green_buckets` to green.
    Active { generation: u64, green_buckets: Vec<u16> },
    /// There is no `routes/current`: nginx sends every request to its default (blue).
    Missing,
    /// `routes/current` exists but cannot be read; the text says why.
    Unreadable(String),
}

/// Held while an operation runs; dropping it releases the lock.
pub type HostLock = Box<dyn std::any::Any>;

pub trait Runtime {
    /// "local" or "compose", for messages and the operation log.
    fn name(&self) -> &'static str;

    // Lifecycle.

    /// Starts the balancer with `nginx_conf` as its static config, creating the host state
    /// directory if needed. Idempotent: a running balancer with the same config is left alone.
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

    // The host state directory (paths relative to its root, `/`-separated).

    fn read_file(&self, rel: &str) -> Result<Option<String>>;
    /// Writes via a temporary file and `rename(2)`, so readers see the old or the new contents.
    fn write_file_atomic(&self, rel: &str, contents: &str) -> Result<()>;
    fn append_line(&self, rel: &str, line: &str) -> Result<()>;

    // Routing.

    /// Creates `routes/gen-<generation>/` holding one empty file per bucket in `green_buckets`.
    fn install_generation(&self, generation: u64, green_buckets: &[u16]) -> Result<()>;
    /// Atomically points `routes/current` at `gen-<generation>` (new symlink renamed over the old).
    fn activate_generation(&self, generation: u64) -> Result<()>;
    fn active_generation(&self) -> Result<RouteReading>;
    /// Removes every generation directory not in `keep`.
    fn prune_generations(&self, keep: &[u64]) -> Result<()>;

    /// Takes the host-wide operation lock, waiting at most `timeout`; the error on timeout says
    /// who holds it (when known) and what to do.
    fn lock(&self, timeout: Duration) -> Result<HostLock>;
}
