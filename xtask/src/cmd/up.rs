//! `cargo xtask up` ([`crate::ops::up`] has the steps), `cargo xtask scale` (a color's replica
//! count, swarm runtime) and `cargo xtask down` (stops both colors and nginx and removes the
//! state the runtime created).

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{
    domain::Color,
    flags,
    ops::{self, up::UpRequest},
};

impl flags::Up {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let nginx_conf = match &self.nginx_conf {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?,
            ),
            None => None,
        };
        let mut ctx = ops::Deployment::open(sh, global)?;
        if let Some(replicas) = self.replicas {
            ctx.rt.ask_replicas(replicas)?;
        }
        let _lock = ctx.lock("up")?;
        ops::up::up(
            &ctx,
            &UpRequest {
                blue: self.blue,
                green: self.green,
                nginx_conf,
            },
        )?;
        // Colors that already ran as asked were left alone: give them the asked count too.
        if let Some(replicas) = self.replicas {
            for color in Color::ALL {
                if ctx.rt.desired_replicas(color)? != Some(replicas) {
                    ops::scale(&ctx, color, replicas)?;
                }
            }
        }
        Ok(())
    }
}

impl flags::Scale {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = ops::Deployment::open(sh, global)?;
        let _lock = ctx.lock(&format!(
            "scale --color {} --replicas {}",
            self.color, self.replicas
        ))?;
        ops::scale(&ctx, self.color, self.replicas)
    }
}

impl flags::Down {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = ops::Deployment::open(sh, global)?;
        let lock = ctx.lock("down")?;
        crate::say!("stopping blue, green and the balancer…");
        ctx.rt.down().context("stop the deployment")?;
        drop(lock);
        crate::say!(
            "down: stopped everything the {} runtime started",
            ctx.rt.name()
        );
        Ok(())
    }
}
