//! The stack's objects on the swarm: the swarm itself when `up` makes one, the colors'
//! networks, the state volume seeded before the balancer's first task, and their removal.

use anyhow::{bail, Context, Result};
use xshell::cmd;

use super::{
    is_manager,
    spec::{self, CREATED_SWARM_LABEL, STACK_LABEL},
    Swarm, DOWN_TIMEOUT,
};
use crate::{
    domain::Color,
    runtime::compose::{TarKind, STATE_DIR},
    util,
};

impl Swarm {
    /// Makes this engine a one-node swarm if it is in none, marking the node so that `down`
    /// leaves the swarm it made.
    pub(super) fn ensure_swarm(&self) -> Result<()> {
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

    pub(super) fn ensure_networks(&self) -> Result<()> {
        for color in Color::ALL {
            let name = self.names.network(color);
            if !self.exists("network", &name) {
                let args = spec::network_args(&self.names, &self.config, color);
                self.docker(&format!("create the {color} network"), &args)?;
            }
        }
        Ok(())
    }

    /// Writes nginx's config (and the empty route folder) into the state volume before the
    /// balancer's first task starts, through a stopped helper container.
    pub(super) fn seed_volume(&self, image: &str, nginx_conf: &str) -> Result<()> {
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

    /// Removes every object labelled with the stack (services, their containers, networks,
    /// the volume, the seed container), then leaves the swarm if `up` made it.
    pub(super) fn remove_stack(&self) -> Result<()> {
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
                super::leave_swarm(&self.sh).context("leave the swarm `up` created")?;
                crate::say!("left the one-node swarm `up` created");
            }
        }
        Ok(())
    }
}
