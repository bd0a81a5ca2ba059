//! `up`: bring every part of the deployment up (the caller holds the lock).
//!
//! Steps (idempotent: what already runs as asked is left alone):
//! 1. read the live state;
//! 2. for each color: already healthy with the wanted version → keep it; otherwise start it
//!    with that version (the asked one, else the recorded one, else `deploy.toml`'s) and wait
//!    until `/health` reports it;
//! 3. make sure a route generation is active (a fresh deployment starts all blue);
//! 4. start nginx with the static config given (or the rendered one); a running nginx with a
//!    different config gets it only after `nginx -t` passes, else the old config stays;
//! 5. record the state and one operation log line; print where each part answers.
//!
//! A failed `up` leaves nothing it started running (see [`up`]).

use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{
    gates, read_live, record_state, route, wait_balancer, wait_healthy, Deployment, Recorder,
};
use crate::{
    domain::{Color, DeployState, RouteReading},
    nginx,
    runtime::{routes::Routes, Part},
    util::now_rfc3339,
};

/// What `up` is asked for: versions per color (`None`: recorded, else configured) and the
/// balancer's static config (`None`: rendered for this runtime).
pub struct UpRequest {
    pub blue: Option<String>,
    pub green: Option<String>,
    pub nginx_conf: Option<String>,
}

/// Brings the deployment up as asked. A failed `up` leaves nothing it started: on a fresh
/// deployment it takes everything down again; on a running one it stops only the colors that
/// were not running before it.
pub fn up(ctx: &Deployment, request: &UpRequest) -> Result<()> {
    let live = read_live(ctx)?;
    let fresh = live.recorded.is_none() && live.reading == RouteReading::Missing;
    let mut started = Vec::new();
    let result = bring_up(ctx, request, &live, &mut started);
    if let Err(err) = result {
        return Err(clean_up(ctx, fresh, &started, err));
    }
    Ok(())
}

/// Undoes what a failed `up` started; returns the error with what was undone.
fn clean_up(ctx: &Deployment, fresh: bool, started: &[Color], err: anyhow::Error) -> anyhow::Error {
    if fresh {
        crate::say!("up failed: stopping everything it started…");
        return match ctx.rt.down() {
            Ok(()) => err.context("up failed; everything it started is stopped again"),
            Err(again) => err.context(format!(
                "up failed, and stopping what it started failed too ({again:#}): run `cargo xtask down`"
            )),
        };
    }
    let mut stopped = Vec::new();
    for &color in started {
        match ctx.rt.stop_color(color) {
            Ok(()) => stopped.push(color.to_string()),
            Err(again) => crate::say!("warning: could not stop {color}: {again:#}"),
        }
    }
    if stopped.is_empty() {
        err.context("up failed; what was running before it still runs")
    } else {
        err.context(format!(
            "up failed; stopped what it started ({}), what was running before it still runs",
            stopped.join(", ")
        ))
    }
}

fn bring_up(
    ctx: &Deployment,
    request: &UpRequest,
    live: &super::Live,
    started: &mut Vec<Color>,
) -> Result<()> {
    let mut state = live.state(&ctx.config);
    let mut rec = Recorder::new(ctx, "up", live, &state.versions);
    let wanted = |color: Color, asked: &Option<String>| {
        asked
            .clone()
            .or_else(|| {
                live.recorded
                    .as_ref()
                    .and_then(|s| s.version(color).map(str::to_owned))
            })
            .unwrap_or_else(|| ctx.config.color(color).version.clone())
    };
    for (color, version) in [
        (Color::Blue, wanted(Color::Blue, &request.blue)),
        (Color::Green, wanted(Color::Green, &request.green)),
    ] {
        let running = ctx.rt.is_running(Part::Color(color))?;
        if !running {
            started.push(color);
        }
        start_color(ctx, color, &version, running)?;
        state.versions.insert(color, version);
    }

    if !matches!(live.reading, RouteReading::Active { .. }) {
        // A fresh deployment starts all blue; a recorded one gets its recorded split back.
        let generation = route(ctx, live, state.split).context("create the route generation")?;
        state.generation = generation;
        crate::say!("routing {} (route generation {generation})", state.split);
    }

    let conf = match &request.nginx_conf {
        Some(conf) => conf.clone(),
        None => nginx::render(&ctx.rt.nginx_params()),
    };
    crate::say!("starting the balancer…");
    ctx.rt.start_balancer(&conf).context("start the balancer")?;
    wait_balancer(ctx)?;
    crate::say!("the balancer answers at {}", ctx.rt.url(Part::Balancer));

    if live.recorded.is_none() {
        state.since = now_rfc3339();
    }
    let changed = live.recorded.as_ref() != Some(&state);
    if changed {
        record_state(ctx, &state)?;
    } else {
        rec.noop("everything already ran as asked");
    }
    rec.aim(state.split);
    rec.moved(state.split, state.generation);
    rec.versions(&state.versions);
    rec.finish(Ok(()))?;
    print_where(ctx, &state);
    if let RouteReading::Unreadable(why) = Routes::new(ctx.rt.host()).reading()? {
        bail!(
            "nginx cannot read the route directory ({why}): every request goes to blue and no switch can work; \
             let nginx's workers through (`chmod o+x` on that folder) or set `local.state_dir` in the deploy \
             configuration to a folder they can reach"
        );
    }
    Ok(())
}

/// Leaves `color` alone when it is `running` and serves `version` healthily; starts it
/// otherwise.
fn start_color(ctx: &Deployment, color: Color, version: &str, running: bool) -> Result<()> {
    let url = ctx.rt.url(Part::Color(color));
    if running && gates::healthy_version(&ctx.client, &url).ok().as_deref() == Some(version) {
        crate::say!("{color} already serves {version} at {url}");
        return Ok(());
    }
    crate::say!("starting {color} ({version})…");
    let t = Instant::now();
    ctx.rt
        .start_color(color, version)
        .with_context(|| format!("start {color}"))?;
    wait_healthy(ctx, color, version, ctx.config.timeouts.healthy)?;
    crate::say!(
        "started {color} ({version}) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_where(ctx: &Deployment, state: &DeployState) {
    crate::say!(
        "up: balancer {} (gRPC {}) → {} · blue {} at {} · green {} at {}",
        ctx.rt.url(Part::Balancer),
        crate::grpc::address(&ctx.rt.grpc_url(Part::Balancer)),
        state.split,
        state.version(Color::Blue).unwrap_or("?"),
        ctx.rt.address_for_people(Part::Color(Color::Blue)),
        state.version(Color::Green).unwrap_or("?"),
        ctx.rt.address_for_people(Part::Color(Color::Green)),
    );
}
