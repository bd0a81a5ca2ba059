//! `cargo xtask up` ([`crate::ops::up`] has the steps) and `cargo xtask down` (stops both
//! colors and nginx and removes the state the runtime created).

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{
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
        let ctx = ops::Deployment::open(sh, global)?;
        let _lock = ctx.lock("up")?;
        ops::up::up(
            &ctx,
            &UpRequest {
                blue: self.blue,
                green: self.green,
                nginx_conf,
            },
        )
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
