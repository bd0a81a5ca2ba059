//! `cargo xtask switch` and `cargo xtask rollback`: one gated, verified, recorded operation each
//! ([`crate::ops::execute`]).

use anyhow::Result;
use xshell::Shell;

use crate::{domain::Request, flags, ops};

impl flags::Switch {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = ops::Deployment::open(sh, global)?;
        let holder = match self.to {
            Some(color) => format!("switch --to {color}"),
            None => "switch".to_owned(),
        };
        let _lock = ctx.lock(&holder)?;
        ops::execute(&ctx, Request::Switch { to: self.to }).map(drop)
    }
}

impl flags::Rollback {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = ops::Deployment::open(sh, global)?;
        let _lock = ctx.lock("rollback")?;
        ops::execute(&ctx, Request::Rollback).map(drop)
    }
}
