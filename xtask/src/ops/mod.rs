//! The operation engine: everything that changes or reads a live deployment, over a
//! [`Runtime`] it does not look inside.
//!
//! Every operation follows the same path ([`engine::execute`]): take the host lock → read the
//! **live** state ([`live`]) → plan (pure, in `domain`) → gates ([`gates`]) → install and swap
//! the next route generation ([`crate::runtime::routes`]) → verify through the balancer →
//! record; a failed verification swaps the previous generation back. One [`record::Recorder`]
//! writes the operation log on every exit path. `deploy`, stepped canaries, `smoke` and
//! `status` build on the same pieces.

mod canary;
mod deploy;
mod engine;
pub mod gates;
mod health;
mod live;
mod record;
mod replicas;
mod scale;
pub mod shadow;
pub mod smoke;
pub mod status;
#[cfg(test)]
mod tests;
pub mod up;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;
use xshell::Shell;

pub use canary::rollout;
pub use deploy::{deploy, ShadowStage};
pub use engine::{execute, repair, route};
pub use health::{wait_balancer, wait_healthy};
pub use live::{read_live, record_state, Live};
pub use record::Recorder;
pub use scale::scale;

use crate::{
    config::{self, DeployConfig},
    domain::{Color, Operation},
    flags,
    runtime::{self, HostLock, Runtime},
};

/// The operation log, relative to the host state directory.
pub const OPERATIONS_FILE: &str = "operations.jsonl";
pub use crate::runtime::STATE_FILE;

/// A deployment to operate on: its configuration, its runtime, and how to reach its parts.
pub struct Deployment {
    pub config: DeployConfig,
    pub rt: Box<dyn Runtime>,
    /// For what only a real HTTP client does (health polling, metrics, smoke samples).
    pub client: Client,
    /// Gates and verification, through [`gates::Checks`] so tests can fake them.
    pub checks: Box<dyn gates::Checks>,
    /// How long verification through the balancer may take to see the new split answer: longer
    /// than nginx's `fail_timeout` (2 s), so a color nginx briefly holds as failed after a
    /// restart does not fail a good switch.
    pub verify_window: Duration,
}

/// The default [`Deployment::verify_window`].
pub const VERIFY_WINDOW: Duration = Duration::from_secs(5);

impl Deployment {
    /// Opens the deployment the flags name: the configuration file and the runtime.
    pub fn open(sh: &Shell, global: &flags::Global) -> Result<Deployment> {
        let config = config::load(&global.config_path())?;
        let rt = runtime::open(sh, global, &config)?;
        let client = gates::client()?;
        Ok(Deployment {
            config,
            rt,
            checks: Box::new(gates::Http(client.clone())),
            client,
            verify_window: VERIFY_WINDOW,
        })
    }

    /// Runs every gate on `color`, which must serve `version`, at its HTTP and gRPC addresses:
    /// on each of its replicas where it has several, all of which must run (a switch never
    /// lands on a color with one bad or missing replica).
    pub fn gate_color(&self, color: Color, version: &str) -> Result<()> {
        let Some(desired) = self.rt.desired_replicas(color)? else {
            let part = runtime::Part::Color(color);
            let (url, grpc_url) = (self.rt.url(part), self.rt.grpc_url(part));
            let target = gates::Target {
                url: &url,
                grpc_url: &grpc_url,
                version,
            };
            return self.checks.gate(&format!("{color} ({version})"), &target);
        };
        let replicas = self.rt.replicas(color)?;
        let running = replicas.iter().filter(|r| r.running()).count();
        if desired == 0 || running < desired as usize {
            let states: Vec<String> = replicas
                .iter()
                .map(|r| format!("{} on {}: {}", r.name, r.node, r.state))
                .collect();
            bail!(
                "gate `replicas` failed for {color} ({version}): {running} of {desired} replicas run ({}); traffic stays where it is. Wait for swarm to replace them (`cargo xtask status`), or `cargo xtask scale`",
                if states.is_empty() { "none".to_owned() } else { states.join("; ") }
            );
        }
        for replica in replicas.iter().filter(|r| r.running()) {
            let target = gates::Target {
                url: &replica.url,
                grpc_url: &replica.grpc_url,
                version,
            };
            self.checks.gate(
                &format!(
                    "{color} ({version}) replica {} at {} on {}",
                    replica.name, replica.address, replica.node
                ),
                &target,
            )?;
        }
        Ok(())
    }

    /// Takes the host lock for the operation `holder` describes, and says so when the last
    /// operation was interrupted (its connection to the host ended mid-way).
    pub fn lock(&self, holder: &str) -> Result<HostLock> {
        let lock = self
            .rt
            .host()
            .lock(self.config.timeouts.lock, &format!("cargo xtask {holder}"))?;
        let last = self.rt.host().last_line(OPERATIONS_FILE).ok().flatten();
        if let Some(op) = last.and_then(|line| serde_json::from_str::<Operation>(&line).ok()) {
            if op.result == crate::domain::Outcome::Interrupted {
                eprintln!(
                    "warning: the last operation, `{}` at {}, was interrupted: {}",
                    op.operation,
                    op.time,
                    op.reason.as_deref().unwrap_or("no reason recorded")
                );
            }
        }
        Ok(lock)
    }

    /// Appends one line to the operation log.
    pub fn log_operation(&self, op: &Operation) -> Result<()> {
        let line = serde_json::to_string(op).context("encode the operation record")?;
        self.rt
            .host()
            .append(OPERATIONS_FILE, &line)
            .context("append to the operation log")
    }

    /// Reads the operation log (oldest first); unreadable lines are skipped.
    pub fn operations(&self) -> Result<Vec<Operation>> {
        let text = self.rt.host().read(OPERATIONS_FILE)?.unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}
