//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

impl flags::Up {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Up` is not implemented yet")
    }
}

impl flags::Down {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Down` is not implemented yet")
    }
}
