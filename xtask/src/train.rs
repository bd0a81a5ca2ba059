//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

impl flags::Train {
    pub(crate) fn run(self, _sh: &Shell) -> Result<()> {
        bail!("`Train` is not implemented yet")
    }
}

impl flags::TrainV1_1 {
    pub(crate) fn run(self, _sh: &Shell) -> Result<()> {
        bail!("`TrainV1_1` is not implemented yet")
    }
}
