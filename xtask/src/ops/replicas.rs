//! Each replica of a color, for `status` and `smoke`: where the orchestrator runs it, its
//! state, and whether it answers `/health` with the version it was started with.
//!
//! Only runtimes with several replicas per color list them ([`crate::runtime::Runtime::desired_replicas`]);
//! elsewhere the color's own line says it all.

use serde::Serialize;

use super::{gates, Deployment};
use crate::domain::Color;

/// One replica as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub name: String,
    pub node: String,
    pub address: String,
    /// The orchestrator's state (`running`, `starting`, `failed: …`).
    pub state: String,
    /// What its `/health` reports, when it answers.
    pub version: Option<String>,
    pub healthy: bool,
}

/// A color's replicas: how many it should have (`None`: one process per color, nothing to
/// list), each replica's report, and the problems seen.
pub fn gather(
    ctx: &Deployment,
    color: Color,
    probe: &reqwest::blocking::Client,
) -> (Option<u32>, Vec<ReplicaReport>, Vec<String>) {
    let desired = match ctx.rt.desired_replicas(color) {
        Ok(Some(n)) => n,
        Ok(None) => return (None, Vec::new(), Vec::new()),
        Err(err) => {
            return (
                None,
                Vec::new(),
                vec![format!("{color}'s replicas: {err:#}")],
            )
        }
    };
    let replicas = match ctx.rt.replicas(color) {
        Ok(replicas) => replicas,
        Err(err) => {
            return (
                Some(desired),
                Vec::new(),
                vec![format!("{color}'s replicas: {err:#}")],
            )
        }
    };
    let mut problems = Vec::new();
    let reports: Vec<ReplicaReport> = replicas
        .into_iter()
        .map(|r| {
            let version = (r.running() && !r.url.is_empty())
                .then(|| gates::healthy_version(probe, &r.url).ok())
                .flatten();
            let healthy = version.is_some() && version == r.version;
            if !healthy {
                problems.push(format!(
                    "{} on {} is {}{}",
                    r.name,
                    r.node,
                    r.state,
                    if r.running() {
                        ", but does not answer /health with its version"
                    } else {
                        ""
                    }
                ));
            }
            ReplicaReport {
                name: r.name,
                node: r.node,
                address: r.address,
                state: r.state,
                version,
                healthy,
            }
        })
        .collect();
    let running = reports.iter().filter(|r| r.healthy).count();
    if running < desired as usize {
        problems.insert(
            0,
            format!("{color} has {running} of {desired} replicas healthy"),
        );
    }
    (Some(desired), reports, problems)
}

/// The replica lines under a color in `status`'s text.
pub fn render_text(replicas: &[ReplicaReport]) -> String {
    replicas
        .iter()
        .map(|r| {
            format!(
                "  {:<9} {:<16} {:<15} {:<10} {:<8} {}\n",
                r.name,
                r.node,
                r.address,
                r.state,
                r.version.as_deref().unwrap_or("?"),
                if r.healthy { "healthy" } else { "not healthy" }
            )
        })
        .collect()
}
