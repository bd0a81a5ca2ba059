//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

impl flags::Switch {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Switch` is not implemented yet")
    }
}

impl flags::Rollback {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Rollback` is not implemented yet")
    }
}

impl flags::Canary {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Canary` is not implemented yet")
    }
}
