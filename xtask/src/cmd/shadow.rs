//! `cargo xtask shadow --percent P --duration D`: mirror live prediction requests to the
//! standby and report how its answers compare ([`crate::ops::shadow`] has the steps); the
//! report goes to stdout as text, JSON or Markdown, its chart to an SVG file.

use std::fs;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    domain::{shadow, shadow_render},
    flags, ops,
    util::project_root,
};

impl flags::Shadow {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        if !self.stop {
            self.options().check()?;
            check_min_agreement(self.min_agreement)?;
        }
        let ctx = ops::Deployment::open(sh, global)?;
        let _lock = ctx.lock("shadow")?;
        if self.stop {
            let before = ops::shadow::stop(&ctx)?;
            match ops::shadow::describe(&before, ctx.config.balancer.buckets) {
                Some((color, percent)) => {
                    crate::say!("shadow: stopped mirroring {percent} % to {color}")
                }
                None => crate::say!("shadow: no mirror was running; nothing to stop"),
            }
            return Ok(());
        }
        let analysis = ops::shadow::run(&ctx, &self.options())?;
        let svg = project_root().join(&self.svg);
        if let Some(dir) = svg.parent() {
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        fs::write(&svg, shadow_render::svg(&analysis))
            .with_context(|| format!("write the chart {}", svg.display()))?;
        let report = match self.format {
            flags::Format::Text => shadow_render::text(&analysis),
            flags::Format::Markdown => shadow_render::markdown(&analysis),
            flags::Format::Json => {
                serde_json::to_string_pretty(&analysis).context("encode the report")?
            }
        };
        crate::say_raw!("{report}");
        if !matches!(self.format, flags::Format::Json) {
            crate::say!("chart: {}", svg.display());
        }
        if let Err(why) = shadow::verdict(&analysis, self.min_agreement.map(|p| p / 100.0)) {
            bail!("shadow: {why}");
        }
        Ok(())
    }
}

/// `--min-agreement` is a percentage.
pub fn check_min_agreement(min: Option<f64>) -> Result<()> {
    if let Some(min) = min {
        if !(0.0..=100.0).contains(&min) {
            bail!("--min-agreement {min}: give a percentage between 0 and 100");
        }
    }
    Ok(())
}
