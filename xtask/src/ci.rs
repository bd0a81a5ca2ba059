//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

impl flags::Ci {
    pub(crate) fn run(self, _sh: &Shell) -> Result<()> {
        bail!("`Ci` is not implemented yet")
    }
}
