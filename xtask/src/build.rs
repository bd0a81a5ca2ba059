//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

impl flags::Build {
    pub(crate) fn run(self, _sh: &Shell, _global: &flags::Global) -> Result<()> {
        bail!("`Build` is not implemented yet")
    }
}
