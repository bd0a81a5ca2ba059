//! `cargo xtask canary`: send part of the traffic to the standby color, in one step
//! (`--percent N`, one gated operation like a switch) or stepped (`--steps 10,25,50,100`, each
//! step judged from the canary's metrics: [`crate::ops::rollout`]). The lock is taken once.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::{
    domain::{canary::check_steps, Request},
    flags, ops,
};

impl flags::Canary {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = ops::Deployment::open(sh, global)?;
        if let Some(percent) = self.percent {
            let _lock = ctx.lock(&format!("canary --percent {percent}"))?;
            return ops::execute(&ctx, Request::Canary { percent }).map(drop);
        }
        let steps = self.steps.clone().unwrap_or_default();
        check_steps(&steps)?;
        let steps_text: Vec<String> = steps.iter().map(u8::to_string).collect();
        let _lock = ctx.lock(&format!("canary --steps {}", steps_text.join(",")))?;
        ops::rollout(&ctx, &steps, Duration::from_secs(self.hold), &self.limits())
    }
}
