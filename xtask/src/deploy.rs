//! `cargo xtask deploy --version vX.Y.Z`: put a model version on the standby color, then switch.
//!
//! Steps (kamal-proxy's order: create the new target, wait healthy, swap, keep the old around):
//! 1. take the host lock; read the live state; refuse during a canary split;
//! 2. recreate only the standby color with the new version (the active one keeps serving, and
//!    it still backs the standby up in nginx) and wait until `/health` reports it;
//! 3. gate it (health, golden predictions, bad input);
//! 4. record the standby's new version; with `--no-switch` stop here;
//! 5. switch to it through the shared operation engine (verify, swap back on failure);
//! 6. on any failure traffic stays where it was and the standby gets its old version back.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    domain::{self, Color, Operation, Outcome, Request},
    flags, gate,
    runtime::Part,
    switch::{self, Ctx},
};

impl flags::Deploy {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let start = Instant::now();
        if let Err(why) = domain::check_version(&self.version) {
            bail!("--version {:?}: {why}", self.version);
        }
        let ctx = Ctx::open(sh, global)?;
        let _lock = ctx.lock(&format!("deploy --version {}", self.version))?;
        let live = switch::read_live(&ctx)?;
        let mut state = live.state(&ctx.config);
        let Some(active) = live.split.active() else {
            bail!(
                "a canary split is in progress ({}): complete it (`cargo xtask canary --percent 100`) or cancel it (`--percent 0`) first",
                live.split
            );
        };
        let standby = active.other();
        let old = state.version(standby).map(str::to_owned);
        let mut op = Operation {
            time: domain::now_rfc3339(),
            operation: "deploy".into(),
            runtime: ctx.rt.name().into(),
            from: live.split,
            to: live.split,
            split: live.split,
            versions: state.versions.clone(),
            result: Outcome::Ok,
            duration_secs: 0.0,
            generation: live.generation(),
            reason: None,
        };

        // The live version again is a redeploy (a new build of the service, say): the standby's
        // current version stops being the rollback target. Say so, since it is easy to miss.
        if state.version(active) == Some(self.version.as_str()) {
            if let Some(old) = old.as_deref().filter(|old| *old != self.version) {
                crate::say!(
                    "note: {} is already live on {active}; redeploying it replaces {old} on {standby}, so a rollback will return to {active}'s current build of {}",
                    self.version, self.version
                );
            }
        }
        crate::say!(
            "deploying {} to {standby} (standby; {active} keeps serving)…",
            self.version
        );
        let prepared = prepare(&ctx, standby, &self.version);
        if let Err(err) = prepared {
            restore(&ctx, standby, old.as_deref());
            op.result = Outcome::Refused;
            op.reason = Some(format!("{err:#}"));
            op.duration_secs = start.elapsed().as_secs_f64();
            ctx.log_operation(&op)?;
            return Err(err.context(format!(
                "deploy of {} refused: traffic stays on {active}",
                self.version
            )));
        }
        state.versions.insert(standby, self.version.clone());
        switch::record_state(&ctx, &state)?;
        crate::say!(
            "deployed {} to {standby} in {:.2} s",
            self.version,
            start.elapsed().as_secs_f64()
        );

        if !self.no_switch {
            match switch::execute(&ctx, Request::Switch { to: Some(standby) }) {
                Ok(switched) => op.generation = switched.generation,
                Err(err) => {
                    restore(&ctx, standby, old.as_deref());
                    if let Some(old) = &old {
                        state.versions.insert(standby, old.clone());
                        let mut recorded = switch::read_live(&ctx)?.state(&ctx.config);
                        recorded.versions = state.versions.clone();
                        switch::record_state(&ctx, &recorded)?;
                    }
                    op.result = Outcome::Failed;
                    op.reason = Some(format!("{err:#}"));
                    op.duration_secs = start.elapsed().as_secs_f64();
                    ctx.log_operation(&op)?;
                    return Err(err.context(format!(
                        "deploy of {}: the switch failed; traffic stays on {active}",
                        self.version
                    )));
                }
            }
            op.to = domain::Split::all(standby);
            op.split = op.to;
        }
        op.versions = state.versions.clone();
        op.duration_secs = start.elapsed().as_secs_f64();
        ctx.log_operation(&op)?;
        crate::say!(
            "deploy: {} on {standby}{} in {:.2} s",
            self.version,
            if self.no_switch {
                " (not switched: run `cargo xtask switch`)"
            } else {
                ", taking all traffic"
            },
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Starts `color` with `version`, waits until healthy, and gates it.
fn prepare(ctx: &Ctx, color: Color, version: &str) -> Result<()> {
    ctx.rt
        .start_color(color, version)
        .with_context(|| format!("start {color} with {version}"))?;
    switch::wait_healthy(ctx, color, version, ctx.config.timeouts.healthy)?;
    let who = format!("{color} ({version})");
    gate::check_color(&ctx.client, &who, &ctx.rt.url(Part::Color(color)), version)
}

/// Puts the standby's previous version back, best effort (the error is printed, not returned:
/// the caller is already failing with the reason that matters).
fn restore(ctx: &Ctx, color: Color, old: Option<&str>) {
    let Some(old) = old else { return };
    let url = ctx.rt.url(Part::Color(color));
    if gate::healthy_version(&ctx.client, &url).ok().as_deref() == Some(old) {
        crate::say!("{color} still serves {old}");
        return;
    }
    crate::say!("restoring {color} to {old}…");
    let restored = ctx
        .rt
        .start_color(color, old)
        .and_then(|()| switch::wait_healthy(ctx, color, old, ctx.config.timeouts.healthy));
    match restored {
        Ok(()) => crate::say!("restored {color} to {old}"),
        Err(err) => crate::say!("warning: could not restore {color} to {old}: {err:#}"),
    }
}
