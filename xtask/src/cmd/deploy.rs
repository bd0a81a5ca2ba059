//! `cargo xtask deploy --version vX.Y.Z`: put a model version on the standby color, gate it,
//! then switch to it ([`crate::ops::deploy`] has the steps).

use anyhow::{bail, Result};
use xshell::Shell;

use crate::{domain, flags, ops};

impl flags::Deploy {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        if let Err(why) = domain::check_version(&self.version) {
            bail!("--version {:?}: {why}", self.version);
        }
        let ctx = ops::Deployment::open(sh, global)?;
        let _lock = ctx.lock(&format!("deploy --version {}", self.version))?;
        ops::deploy(&ctx, &self.version, self.no_switch)
    }
}
