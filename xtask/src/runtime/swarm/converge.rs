//! Reading a color's service and waiting for it: its spec, its rolling update's state, its
//! tasks as [`Replica`]s, and convergence to N healthy replicas of one version.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::cmd;

use super::{tasks, Swarm, PER_REPLICA};
use crate::{
    domain::Color,
    runtime::{
        compose::{CONTAINER_GRPC_PORT, CONTAINER_PORT},
        Part, Replica, Runtime,
    },
};

impl Swarm {
    /// What the service's failed tasks said, newest first, for error messages.
    pub(super) fn task_errors(&self, part: Part) -> String {
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
            // Tasks without an error end with the separator.
            .filter(|l| !l.trim_end().ends_with(':'))
            .take(5)
            .collect();
        if errors.is_empty() {
            "no task reported an error".to_owned()
        } else {
            errors.join("\n")
        }
    }

    /// The service's spec values: replicas, `MODEL_VERSION`; `None` when it does not exist.
    pub(super) fn service_spec(&self, color: Color) -> Result<Option<(u32, String)>> {
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
            // An engine in no swarm yet has nothing deployed (`up` makes the swarm).
            if err.contains("no such service")
                || err.contains("not found")
                || err.contains("not a swarm manager")
            {
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
    pub(super) fn update_status(&self, color: Color) -> (String, String) {
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
    pub(super) fn wait_converged(&self, color: Color, version: &str, replicas: u32) -> Result<()> {
        let timeout = self.config.timeouts.healthy + PER_REPLICA * replicas;
        let start = Instant::now();
        let mut last_report = Duration::ZERO;
        let mut said_rollback = false;
        loop {
            let (update, message) = self.update_status(color);
            if update.starts_with("rollback") || update == "paused" {
                if update == "rollback_started" {
                    if !said_rollback {
                        crate::say!("  swarm is rolling {color}'s update back: {message}");
                        said_rollback = true;
                    }
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

    /// The tasks of `color` the swarm wants running, as replicas this machine reaches.
    pub(super) fn list_replicas(&self, color: Color) -> Result<Vec<Replica>> {
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
            if err.contains("no such service")
                || err.contains("not found")
                || err.contains("not a swarm manager")
            {
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
}
