//! `cargo xtask status` and `cargo xtask history`: the live state and the operation log.
//!
//! `status` prints [`crate::ops::status::gather`]'s report as text, JSON (`--json`) or a
//! Markdown table (`--format markdown`, for CI job summaries), and fails when traffic does not
//! follow the recorded split (no readable route generation); `history` prints the operation
//! log, newest last.

use anyhow::{bail, Result};
use xshell::Shell;

use crate::{
    flags::{self, Format},
    ops::{
        status::{gather, history_line, render_markdown, render_text},
        Deployment,
    },
};

impl flags::Status {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Deployment::open(sh, global)?;
        let report = gather(&ctx)?;
        let format = if self.json { Format::Json } else { self.format };
        match format {
            Format::Text => crate::say_raw!("{}", render_text(&report)),
            Format::Json => crate::say!("{}", serde_json::to_string_pretty(&report)?),
            Format::Markdown => crate::say_raw!("{}", render_markdown(&report)),
        }
        if let Some(why) = &report.unrouted {
            bail!(
                "traffic does not follow the recorded split: {why}; the next operation \
                 (`cargo xtask switch --to <color>`, `rollback`, `deploy`) restores the recorded split first"
            );
        }
        Ok(())
    }
}

impl flags::History {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Deployment::open(sh, global)?;
        let ops = ctx.operations()?;
        let recent = &ops[ops.len().saturating_sub(self.limit)..];
        if recent.is_empty() {
            crate::say!("history: no operations recorded");
        }
        for op in recent {
            if self.json {
                crate::say!("{}", serde_json::to_string(op)?);
            } else {
                crate::say!("{}", history_line(op));
            }
        }
        Ok(())
    }
}
