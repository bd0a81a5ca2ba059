//! `cargo xtask up` and `cargo xtask down`.
//!
//! `up` steps (idempotent: what already runs as asked is left alone):
//! 1. take the host lock; read the live state;
//! 2. for each color: already healthy with the wanted version → keep it; otherwise start it
//!    with that version (`--blue`/`--green`, else the recorded one, else `deploy.toml`) and wait
//!    until `/health` reports it;
//! 3. make sure a route generation is active (a fresh deployment starts all blue);
//! 4. start nginx with the rendered static config (or `--nginx-conf`); a running nginx with a
//!    different config gets it only after `nginx -t` passes, else the old config stays;
//! 5. record the state and one operation log line; print where each part answers.
//!
//! `down` stops both colors and nginx and removes the state this runtime created.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    domain::{self, Color, DeployState, Operation, Outcome},
    flags, gate, nginx,
    runtime::{Part, RouteReading},
    switch::{self, Ctx},
};

impl flags::Up {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let start = Instant::now();
        let ctx = Ctx::open(sh, global)?;
        let _lock = ctx.lock("up")?;
        let live = switch::read_live(&ctx)?;
        let mut state = live.state(&ctx.config);
        let wanted = |color: Color, flag: &Option<String>| {
            flag.clone()
                .or_else(|| {
                    live.recorded
                        .as_ref()
                        .and_then(|s| s.version(color).map(str::to_owned))
                })
                .unwrap_or_else(|| ctx.config.color(color).version.clone())
        };
        let versions = [
            (Color::Blue, wanted(Color::Blue, &self.blue)),
            (Color::Green, wanted(Color::Green, &self.green)),
        ];

        for (color, version) in &versions {
            let url = ctx.rt.url(Part::Color(*color));
            let running = ctx.rt.is_running(Part::Color(*color))?;
            if running
                && gate::healthy_version(&ctx.client, &url).ok().as_deref()
                    == Some(version.as_str())
            {
                crate::say!("{color} already serves {version} at {url}");
            } else {
                crate::say!("starting {color} ({version})…");
                let t = Instant::now();
                ctx.rt
                    .start_color(*color, version)
                    .with_context(|| format!("start {color}"))?;
                switch::wait_healthy(&ctx, *color, version, ctx.config.timeouts.healthy)?;
                crate::say!(
                    "started {color} ({version}) in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
            }
            state.versions.insert(*color, version.clone());
        }

        if live.reading == RouteReading::Missing {
            let generation = switch::route(&ctx, &live, live.split)
                .context("create the first route generation")?;
            state.generation = generation;
            crate::say!("routing {} (route generation {generation})", live.split);
        }

        let conf = match &self.nginx_conf {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?
            }
            None => nginx::render(&ctx.rt.nginx_params()),
        };
        let balancer = ctx.rt.url(Part::Balancer);
        crate::say!("starting the balancer…");
        ctx.rt.start_balancer(&conf).context("start the balancer")?;
        crate::util::poll(
            "the balancer to answer",
            ctx.config.timeouts.healthy,
            || {
                let response = ctx
                    .client
                    .get(format!("{balancer}{}", nginx::HEALTH_PATH))
                    .send()?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "answered {}",
                    response.status()
                );
                Ok(())
            },
        )?;
        crate::say!("the balancer answers at {balancer}");

        if live.recorded.is_none() {
            state.since = domain::now_rfc3339();
        }
        let changed = live.recorded.as_ref() != Some(&state);
        if changed {
            switch::record_state(&ctx, &state)?;
        }
        ctx.log_operation(&Operation {
            time: domain::now_rfc3339(),
            operation: "up".into(),
            runtime: ctx.rt.name().into(),
            from: live.split,
            to: state.split,
            split: state.split,
            versions: state.versions.clone(),
            result: if changed { Outcome::Ok } else { Outcome::Noop },
            duration_secs: start.elapsed().as_secs_f64(),
            generation: state.generation,
            reason: None,
        })?;
        print_where(&ctx, &state);
        if let RouteReading::Unreadable(why) = ctx.rt.active_generation()? {
            bail!(
                "nginx cannot read the route directory ({why}): every request goes to blue and no switch can work; \
                 let nginx's workers through (`chmod o+x` on that folder) or set `local.state_dir` in the deploy \
                 configuration to a folder they can reach"
            );
        }
        Ok(())
    }
}

fn print_where(ctx: &Ctx, state: &DeployState) {
    crate::say!(
        "up: balancer {} → {} · blue {} at {} · green {} at {}",
        ctx.rt.url(Part::Balancer),
        state.split,
        state.version(Color::Blue).unwrap_or("?"),
        ctx.rt.url(Part::Color(Color::Blue)),
        state.version(Color::Green).unwrap_or("?"),
        ctx.rt.url(Part::Color(Color::Green)),
    );
}

impl flags::Down {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Ctx::open(sh, global)?;
        let lock = ctx.lock("down")?;
        crate::say!("stopping blue, green and the balancer…");
        ctx.rt.down().context("stop the deployment")?;
        drop(lock);
        crate::say!(
            "down: stopped everything the {} runtime started",
            ctx.rt.name()
        );
        Ok(())
    }
}
