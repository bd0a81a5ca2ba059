//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

impl flags::Status {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Status` is not implemented yet")
    }
}

impl flags::History {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`History` is not implemented yet")
    }
}
