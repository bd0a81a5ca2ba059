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
        let shadow = match self.shadow_options() {
            Some(options) => {
                options.check()?;
                super::shadow::check_min_agreement(self.min_agreement)?;
                if self.no_switch {
                    bail!("--shadow runs before the switch: it cannot be combined with --no-switch (run `cargo xtask shadow` after a `deploy --no-switch`)");
                }
                Some(ops::ShadowStage {
                    options,
                    min_agreement: self.min_agreement.map(|p| p / 100.0),
                })
            }
            None => None,
        };
        let ctx = ops::Deployment::open(sh, global)?;
        let _lock = ctx.lock(&format!("deploy --version {}", self.version))?;
        ops::deploy(&ctx, &self.version, self.no_switch, shadow)
    }
}
