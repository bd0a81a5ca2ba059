//! The operation engine: `switch`, `rollback` and `canary` (and the switch inside `deploy`).
//!
//! Steps of every operation ([`execute`]; the caller holds the host lock):
//! 1. read the **live** state: the route symlink decides the split, `state.json` adds versions
//!    and the previous state ([`super::read_live`]);
//! 2. plan (pure: [`crate::domain::plan_switch`]); already there → say so, exit 0;
//! 3. gate every color whose share grows ([`super::gates`]); a failed gate changes nothing;
//! 4. install the next route generation and swap the symlink (no nginx reload);
//! 5. verify through the balancer that the target answers (`X-Served-By`, `X-Model-Version`);
//!    if not, swap the previous generation back and fail;
//! 6. record the new state (the old one becomes `previous`); if that fails, swap the previous
//!    generation back too (all or nothing); the [`Recorder`] appends one line to the operation
//!    log whatever happened; print paired lines and a one-line summary.
//!
//! Before step 2, a missing or unreadable route generation is [`repair`]ed to the recorded
//! split (the intent), and recorded as a `repair` operation.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{
    gates,
    live::{read_live, record_state, Live},
    record::{Recorder, StopWith, Stopped},
    Deployment,
};
use crate::{
    domain::{self, Color, Decision, DeployState, Outcome, Plan, Request, RouteReading, Split},
    runtime::{routes::Routes, Part},
    util::now_rfc3339,
};

/// Requests sent through the balancer to verify a switch.
const VERIFY_REQUESTS: usize = 5;
/// Requests sent through the balancer to verify a split.
const VERIFY_SPLIT_REQUESTS: usize = 20;

/// Runs one operation with the lock held. Returns the state recorded afterwards.
pub fn execute(ctx: &Deployment, request: Request) -> Result<DeployState> {
    let name = request.name();
    let live = read_live(ctx)?;
    refuse_without_deployment(ctx, &live, name)?;
    let live = repair(ctx, live)?;
    for warning in live.problem.iter().chain(&live.recovered) {
        crate::say!("warning: {warning}");
    }
    let base = live.state(&ctx.config);
    let mut rec = Recorder::new(ctx, name, &live, &base.versions);
    let result = run(ctx, &live, &base, request, &mut rec);
    let elapsed = rec.elapsed();
    let state = rec.finish(result)?;
    summary(&state, if state == base { 0.0 } else { elapsed });
    Ok(state)
}

/// Nothing recorded, no route and no balancer: there is no deployment to operate on, and
/// starting parts of one here would only hide the missing `up`.
fn refuse_without_deployment(ctx: &Deployment, live: &Live, name: &str) -> Result<()> {
    if live.recorded.is_none()
        && live.reading == RouteReading::Missing
        && !ctx.rt.is_running(Part::Balancer).unwrap_or(true)
    {
        bail!(
            "{name}: nothing is deployed on the {} runtime: run `cargo xtask up` first",
            ctx.rt.name()
        );
    }
    Ok(())
}

/// Without a readable route generation nginx sends everything to blue, whatever was switched.
/// When a state is recorded, this puts its split (the intent) back first, records why as a
/// `repair` in the operation log, and returns the live state after it. Nothing recorded, or a
/// repair that does not take (a folder nginx cannot enter): the live state as it is.
pub fn repair(ctx: &Deployment, live: Live) -> Result<Live> {
    let (Some(problem), Some(intent)) = (&live.problem, &live.recorded) else {
        return Ok(live);
    };
    if matches!(live.reading, RouteReading::Active { .. }) {
        return Ok(live);
    }
    crate::say!(
        "repairing: {problem}; restoring the recorded split {}…",
        intent.split
    );
    let mut rec = Recorder::new(ctx, "repair", &live, &intent.versions);
    rec.aim(intent.split);
    rec.reason(problem);
    let result = (|| -> Result<u64> {
        let generation = route(ctx, &live, intent.split)?;
        rec.moved(intent.split, generation);
        let mut repaired = intent.clone();
        repaired.generation = generation;
        record_state(ctx, &repaired)?;
        Ok(generation)
    })();
    let generation = rec
        .finish(result.context(problem.clone()).stop_with(Outcome::Failed))
        .context("repair the route directory")?;
    crate::say!(
        "repaired: traffic follows the recorded split {} again (route generation {generation})",
        intent.split
    );
    read_live(ctx)
}

/// The steps after the live state is read; each failure says what it leaves behind.
fn run(
    ctx: &Deployment,
    live: &Live,
    base: &DeployState,
    request: Request,
    rec: &mut Recorder,
) -> Result<DeployState, Stopped> {
    let name = request.name();
    let plan = match domain::plan_switch(&live.current(&ctx.config), request) {
        Ok(Decision::Go(plan)) => plan,
        Ok(Decision::Noop(what)) => {
            crate::say!("{name}: {what}, nothing to do");
            rec.noop(&what);
            return Ok(base.clone());
        }
        Err(err) => return Err(err).stop_with(Outcome::Refused),
    };
    rec.aim(plan.to);
    crate::say!("{}…", describe(name, &plan, base, true));

    gate(ctx, name, &plan, base).stop_with(Outcome::Refused)?;

    let generation = route(ctx, live, plan.to)
        .context(format!(
            "{name} failed before traffic moved; run `cargo xtask status`"
        ))
        .stop_with(Outcome::Failed)?;
    rec.moved(plan.to, generation);

    if let Err(err) = verify(ctx, plan.to, base) {
        return Err(undo(ctx, live, rec, generation, err, "failed verification"));
    }

    let state = base.advance(generation, plan.to, plan.stable, &now_rfc3339());
    if let Err(err) = record_state(ctx, &state) {
        // All or nothing: traffic that moved without a record would surprise the next caller.
        return Err(undo(
            ctx,
            live,
            rec,
            generation,
            err,
            "could not record the new state",
        ));
    }
    if let Err(err) = Routes::new(ctx.rt.host()).prune(&[generation, live.generation()]) {
        crate::say!("warning: could not remove old route generations: {err:#}");
    }
    crate::say!(
        "{} in {:.2} s",
        describe(name, &plan, base, false),
        rec.elapsed()
    );
    Ok(state)
}

/// Swaps the generation that was live before back in after `err` (`what` went wrong once
/// traffic had moved to `generation`): `RolledBack` when that works, `Failed` when it does not.
fn undo(
    ctx: &Deployment,
    live: &Live,
    rec: &mut Recorder,
    generation: u64,
    err: anyhow::Error,
    what: &str,
) -> Stopped {
    let name = rec.operation().to_owned();
    match restore(ctx, live) {
        Ok(()) => {
            rec.moved(live.split, live.generation());
            Stopped {
                outcome: Outcome::RolledBack,
                error: err.context(format!("{name} {what}; traffic is back to {}", live.split)),
            }
        }
        Err(again) => Stopped {
            outcome: Outcome::Failed,
            error: err.context(format!(
                "{name} {what} and swapping the previous generation back failed too ({again:#}): traffic may follow route generation {generation}; run `cargo xtask status`"
            )),
        },
    }
}

/// Runs the gates on every color whose share grows; the error says traffic stays, names the
/// color and, when it is not running, how to start it.
fn gate(ctx: &Deployment, name: &str, plan: &Plan, base: &DeployState) -> Result<()> {
    for &color in &plan.gate {
        let version = base.version(color).unwrap_or("unknown");
        if let Err(err) = ctx.gate_color(color, version) {
            let hint = match ctx.rt.is_running(Part::Color(color)) {
                Ok(false) => format!(" ({color} is not running: `cargo xtask up` starts it again)"),
                _ => String::new(),
            };
            return Err(err.context(format!("{name} refused: traffic stays {}{hint}", plan.from)));
        }
    }
    Ok(())
}

/// Installs and activates a generation routing `split`; returns its number.
pub fn route(ctx: &Deployment, live: &Live, split: Split) -> Result<u64> {
    let routes = Routes::new(ctx.rt.host());
    let recorded = live.recorded.as_ref().map_or(0, |s| s.generation);
    let generation = routes
        .max_generation()?
        .max(live.generation())
        .max(recorded)
        + 1;
    let buckets = domain::route_buckets(split, ctx.config.balancer.buckets);
    routes
        .install(generation, &buckets)
        .context("install the next route generation")?;
    routes
        .activate(generation)
        .context("swap the route generation in")?;
    Ok(generation)
}

/// Swaps back what was live before the operation.
fn restore(ctx: &Deployment, live: &Live) -> Result<()> {
    match live.reading {
        RouteReading::Active { generation, .. } => Routes::new(ctx.rt.host())
            .reactivate(generation)
            .context("swap the previous route generation back"),
        _ => route(ctx, live, live.split).map(drop),
    }
}

/// Checks through the balancer that `split` is what answers: a run of right answers in a row
/// within [`Deployment::verify_window`]. A wrong answer resets the run, so a color that nginx
/// briefly holds as failed after a restart (its `fail_timeout`) does not fail a good switch,
/// while a target that keeps answering wrongly fails once the window has passed.
fn verify(ctx: &Deployment, split: Split, state: &DeployState) -> Result<()> {
    let url = ctx.rt.url(Part::Balancer);
    let needed = if split.active().is_some() {
        VERIFY_REQUESTS
    } else {
        VERIFY_SPLIT_REQUESTS
    };
    let deadline = Instant::now() + ctx.verify_window;
    let mut in_a_row = 0;
    loop {
        match check_one(ctx, &url, split, state) {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row >= needed {
                    return Ok(());
                }
            }
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!(
                    "verify through the balancer: still wrong after {:.1} s",
                    ctx.verify_window.as_secs_f64()
                )));
            }
            Err(_) => {
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One answer through the balancer, checked against the split and the recorded versions.
fn check_one(ctx: &Deployment, url: &str, split: Split, state: &DeployState) -> Result<()> {
    let served = ctx
        .checks
        .through_balancer(url)
        .with_context(|| format!("verify through the balancer: no answer from {url}"))?;
    if served.status != 200 {
        bail!(
            "verify through the balancer: /health answered {}",
            served.status
        );
    }
    gates::check_served(&served.color, &served.version, split, state)
        .context("verify through the balancer")?;
    Ok(())
}

/// "switching to green (v1.1.0)" / "switched to green (v1.1.0)".
fn describe(name: &str, plan: &Plan, state: &DeployState, before: bool) -> String {
    let with_version = |color: Color| format!("{color} ({})", state.version(color).unwrap_or("?"));
    let target = match plan.to.active() {
        Some(color) => with_version(color),
        None => {
            let canary = plan.stable.other();
            format!(
                "{} % {} / {} % {}",
                plan.to.share(canary),
                with_version(canary),
                plan.to.share(plan.stable),
                with_version(plan.stable)
            )
        }
    };
    match (name, before) {
        ("rollback", true) => format!("rolling back to {target}"),
        ("rollback", false) => format!("rolled back to {target}"),
        ("canary", true) => format!("splitting traffic: {target}"),
        ("canary", false) => format!("split traffic: {target}"),
        (_, true) => format!("switching to {target}"),
        (_, false) => format!("switched to {target}"),
    }
}

/// The one-line summary every operation ends with.
fn summary(state: &DeployState, secs: f64) {
    crate::say!(
        "summary: traffic {} · blue {} · green {} · generation {} · {secs:.2} s",
        state.split,
        state.version(Color::Blue).unwrap_or("?"),
        state.version(Color::Green).unwrap_or("?"),
        state.generation
    );
}
