//! `deploy --version vX.Y.Z`: put a model version on the standby color, then switch.
//!
//! Steps (kamal-proxy's order: create the new target, wait healthy, swap, keep the old around;
//! the caller holds the lock):
//! 1. read the live state; refuse during a canary split;
//! 2. recreate only the standby color with the new version (the active one keeps serving, and
//!    it still backs the standby up in nginx) and wait until `/health` reports it;
//! 3. gate it (health, golden predictions, bad input);
//! 4. record the standby's new version; with `no_switch` stop here;
//! 5. with a shadow stage: mirror live prediction requests to it and compare its answers with
//!    the active color's ([`super::shadow`]); below the required agreement, refuse;
//! 6. switch to it through the operation engine (verify, swap back on failure);
//! 7. on any failure traffic stays where it was and the standby gets its old version back.

use anyhow::{bail, Context, Result};

use super::{
    engine::execute,
    live::{read_live, record_state},
    record::{Recorder, StopWith, Stopped},
    repair, wait_healthy, Deployment,
};
use crate::{
    domain::{Color, DeployState, Outcome, Request, Split},
    runtime::Part,
};

/// A shadow stage before the switch: what to mirror, and the class agreement required (a
/// fraction, 0..=1).
#[derive(Debug, Clone, Copy)]
pub struct ShadowStage {
    pub options: super::shadow::Options,
    pub min_agreement: Option<f64>,
}

/// What follows the gates: nothing (`no_switch`), or the shadow stage if any, then the switch.
struct Then {
    no_switch: bool,
    shadow: Option<ShadowStage>,
}

/// Deploys `version` to the standby color and, unless `no_switch`, switches to it (after the
/// shadow stage, when there is one).
pub fn deploy(
    ctx: &Deployment,
    version: &str,
    no_switch: bool,
    shadow: Option<ShadowStage>,
) -> Result<()> {
    let live = repair(ctx, read_live(ctx)?)?;
    let mut state = live.state(&ctx.config);
    let Some(active) = live.split.active() else {
        bail!(
            "a canary split is in progress ({}): complete it (`cargo xtask canary --percent 100`) or cancel it (`--percent 0`) first",
            live.split
        );
    };
    let standby = active.other();
    let old = state.version(standby).map(str::to_owned);
    let mut rec = Recorder::new(ctx, "deploy", &live, &state.versions);

    // The live version again is a redeploy (a new build of the service, say): the standby's
    // current version stops being the rollback target. Say so, since it is easy to miss.
    if state.version(active) == Some(version) {
        if let Some(old) = old.as_deref().filter(|old| *old != version) {
            crate::say!(
                "note: {version} is already live on {active}; redeploying it replaces {old} on {standby}, so a rollback will return to {active}'s current build of {version}"
            );
        }
    }
    crate::say!("deploying {version} to {standby} (standby; {active} keeps serving)…");
    let result = run(
        ctx,
        &mut state,
        &mut rec,
        standby,
        version,
        old.as_deref(),
        Then { no_switch, shadow },
    );
    let elapsed = rec.elapsed();
    rec.finish(result)?;
    crate::say!(
        "deploy: {version} on {standby}{} in {elapsed:.2} s",
        if no_switch {
            " (not switched: run `cargo xtask switch`)"
        } else {
            ", taking all traffic"
        },
    );
    Ok(())
}

fn run(
    ctx: &Deployment,
    state: &mut DeployState,
    rec: &mut Recorder,
    standby: Color,
    version: &str,
    old: Option<&str>,
    then: Then,
) -> Result<(), Stopped> {
    let Then { no_switch, shadow } = then;
    let active = standby.other();
    if let Err(err) = prepare(ctx, standby, version) {
        restore(ctx, standby, old);
        return Err(err.context(format!(
            "deploy of {version} refused: traffic stays on {active}"
        )))
        .stop_with(Outcome::Refused);
    }
    state.versions.insert(standby, version.to_owned());
    record_state(ctx, state).stop_with(Outcome::Failed)?;
    crate::say!("deployed {version} to {standby} in {:.2} s", rec.elapsed());
    rec.versions(&state.versions);
    if no_switch {
        return Ok(());
    }
    if let Some(stage) = shadow {
        let refused = match super::shadow::observe(ctx, &stage.options) {
            Ok(analysis) => {
                crate::say_raw!("{}", crate::domain::shadow_render::text(&analysis));
                crate::domain::shadow::verdict(&analysis, stage.min_agreement)
                    .err()
                    .map(|why| (anyhow::anyhow!("shadow stage: {why}"), Outcome::Refused))
            }
            Err(stopped) => Some((stopped.error.context("shadow stage"), stopped.outcome)),
        };
        if let Some((err, outcome)) = refused {
            put_back(ctx, state, rec, standby, old)?;
            return Err(err.context(format!(
                "deploy of {version} refused: traffic stays on {active}"
            )))
            .stop_with(outcome);
        }
    }
    match execute(ctx, Request::Switch { to: Some(standby) }) {
        Ok(switched) => {
            rec.aim(Split::all(standby));
            rec.moved(Split::all(standby), switched.generation);
            Ok(())
        }
        Err(err) => {
            put_back(ctx, state, rec, standby, old)?;
            Err(err.context(format!(
                "deploy of {version}: the switch failed; traffic stays on {active}"
            )))
            .stop_with(Outcome::Failed)
        }
    }
}

/// Puts the standby's previous version back and records it, after a refused or failed switch.
fn put_back(
    ctx: &Deployment,
    state: &mut DeployState,
    rec: &mut Recorder,
    standby: Color,
    old: Option<&str>,
) -> Result<(), Stopped> {
    restore(ctx, standby, old);
    if let Some(old) = old {
        state.versions.insert(standby, old.to_owned());
        let mut recorded = read_live(ctx)
            .stop_with(Outcome::Failed)?
            .state(&ctx.config);
        recorded.versions = state.versions.clone();
        record_state(ctx, &recorded).stop_with(Outcome::Failed)?;
        rec.versions(&state.versions);
    }
    Ok(())
}

/// Starts `color` with `version`, waits until healthy, and gates it.
fn prepare(ctx: &Deployment, color: Color, version: &str) -> Result<()> {
    ctx.rt
        .start_color(color, version)
        .with_context(|| format!("start {color} with {version}"))?;
    wait_healthy(ctx, color, version, ctx.config.timeouts.healthy)?;
    ctx.gate_color(color, version)
}

/// Puts the standby's previous version back, best effort (the error is printed, not returned:
/// the caller is already failing with the reason that matters).
fn restore(ctx: &Deployment, color: Color, old: Option<&str>) {
    let Some(old) = old else { return };
    let url = ctx.rt.url(Part::Color(color));
    if super::gates::healthy_version(&ctx.client, &url)
        .ok()
        .as_deref()
        == Some(old)
    {
        crate::say!("{color} still serves {old}");
        return;
    }
    crate::say!("restoring {color} to {old}…");
    let restored = ctx
        .rt
        .start_color(color, old)
        .and_then(|()| wait_healthy(ctx, color, old, ctx.config.timeouts.healthy));
    match restored {
        Ok(()) => crate::say!("restored {color} to {old}"),
        Err(err) => crate::say!("warning: could not restore {color} to {old}: {err:#}"),
    }
}
