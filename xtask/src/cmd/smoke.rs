//! `cargo xtask smoke`: check the deployment through the balancer, as a client sees it (the
//! checks are [`crate::ops::smoke`]'s).

use anyhow::Result;
use xshell::Shell;

use crate::{flags, ops::Deployment, runtime::Part};

impl flags::Smoke {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Deployment::open(sh, global)?;
        let url = self.url.unwrap_or_else(|| ctx.rt.url(Part::Balancer));
        crate::ops::smoke::smoke(&ctx, &url, self.color)
    }
}
