//! TODO: owned by the module's implementer.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::flags;

pub(crate) fn run(_sh: &Shell, _global: &flags::Global, _bench: &flags::Bench) -> Result<()> {
    bail!("this benchmark is not implemented yet")
}
