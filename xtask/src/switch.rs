//! `switch`, `rollback`, `canary`, and the operation engine they share (also used by `deploy`).
//!
//! Steps of every operation ([`execute`]):
//! 1. take the host lock (waits up to `timeouts.lock_secs`, then names the holder);
//! 2. read the **live** state: the route symlink decides the split, `state.json` adds versions
//!    and the previous state ([`read_live`]);
//! 3. plan (pure: [`crate::domain::plan_switch`]); already there → say so, exit 0;
//! 4. gate every color whose share grows ([`crate::gate::check_color`]); a failed gate changes
//!    nothing;
//! 5. install the next route generation and swap the symlink (no nginx reload);
//! 6. verify through the balancer that the target answers (`X-Served-By`, `X-Model-Version`);
//!    if not, swap the previous generation back and fail;
//! 7. record the new state (the old one becomes `previous`) and append one line to the
//!    operation log; print paired lines and a one-line summary.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;
use xshell::Shell;

use crate::{
    config::{self, DeployConfig},
    domain::{
        self, Color, Current, Decision, DeployState, Operation, Outcome, Plan, Request, Split,
    },
    flags, gate,
    runtime::{self, HostLock, Part, RouteReading, Runtime},
};

/// Requests sent through the balancer to verify a switch.
const VERIFY_REQUESTS: usize = 5;
/// Requests sent through the balancer to verify a split.
const VERIFY_SPLIT_REQUESTS: usize = 20;

impl flags::Switch {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Ctx::open(sh, global)?;
        let holder = match self.to {
            Some(color) => format!("switch --to {color}"),
            None => "switch".to_owned(),
        };
        let _lock = ctx.lock(&holder)?;
        execute(&ctx, Request::Switch { to: self.to }).map(drop)
    }
}

impl flags::Rollback {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Ctx::open(sh, global)?;
        let _lock = ctx.lock("rollback")?;
        execute(&ctx, Request::Rollback).map(drop)
    }
}

/// What every deployment command needs: the configuration, the runtime, an HTTP client.
pub(crate) struct Ctx {
    pub config: DeployConfig,
    pub rt: Box<dyn Runtime>,
    pub client: Client,
}

impl Ctx {
    pub fn open(sh: &Shell, global: &flags::Global) -> Result<Ctx> {
        let config = config::load(&global.config)?;
        let rt = runtime::open(sh, global, &config)?;
        Ok(Ctx {
            config,
            rt,
            client: gate::client()?,
        })
    }

    /// Takes the host lock for the operation `holder` describes.
    pub fn lock(&self, holder: &str) -> Result<HostLock> {
        self.rt
            .lock(self.config.timeouts.lock, &format!("cargo xtask {holder}"))
    }

    /// Appends one line to the operation log.
    pub fn log_operation(&self, op: &Operation) -> Result<()> {
        let line = serde_json::to_string(op).context("encode the operation record")?;
        self.rt
            .append_line("operations.jsonl", &line)
            .context("append to the operation log")
    }

    /// Reads the operation log (oldest first); unreadable lines are skipped.
    pub fn operations(&self) -> Result<Vec<Operation>> {
        let text = self.rt.read_file("operations.jsonl")?.unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

/// The live deployment: the route directory's reading, and what `state.json` records.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub reading: RouteReading,
    /// The split nginx applies now (blue when the route directory is missing or unreadable).
    pub split: Split,
    /// A problem with the route directory, if any.
    pub problem: Option<String>,
    pub recorded: Option<DeployState>,
}

impl Live {
    pub fn generation(&self) -> u64 {
        match self.reading {
            RouteReading::Active { generation, .. } => generation,
            _ => 0,
        }
    }

    /// The recorded state brought in line with the live split: what the next state advances from.
    pub fn state(&self, config: &DeployConfig) -> DeployState {
        let mut state = self.recorded.clone().unwrap_or_else(|| DeployState {
            generation: 0,
            split: self.split,
            stable: Color::Blue,
            versions: Color::ALL
                .into_iter()
                .map(|c| (c, config.color(c).version.clone()))
                .collect(),
            since: domain::now_rfc3339(),
            previous: None,
        });
        if state.split != self.split || state.generation != self.generation() {
            state.stable = self.split.active().unwrap_or(if state.split == self.split {
                state.stable
            } else if self.split.green > self.split.blue {
                Color::Green
            } else {
                Color::Blue
            });
            state.split = self.split;
            state.generation = self.generation();
        }
        state
    }

    pub fn current(&self, config: &DeployConfig) -> Current {
        let state = self.state(config);
        Current {
            split: state.split,
            stable: state.stable,
            previous: state.previous.as_ref().map(|p| (p.split, p.stable)),
        }
    }
}

/// Reads the live state through the runtime.
pub(crate) fn read_live(ctx: &Ctx) -> Result<Live> {
    let reading = ctx
        .rt
        .active_generation()
        .context("read the route directory")?;
    let (split, problem) = domain::live_split(&reading, ctx.config.balancer.buckets);
    let recorded = match ctx.rt.read_file("state.json")? {
        Some(text) => Some(serde_json::from_str(&text).context("parse the recorded state.json")?),
        None => None,
    };
    Ok(Live {
        reading,
        split,
        problem,
        recorded,
    })
}

/// Writes the recorded state.
pub(crate) fn record_state(ctx: &Ctx, state: &DeployState) -> Result<()> {
    let text = serde_json::to_string_pretty(state).context("encode the deploy state")? + "\n";
    ctx.rt
        .write_file_atomic("state.json", &text)
        .context("record the deploy state")
}

/// The next unused generation number.
pub(crate) fn next_generation(ctx: &Ctx, live: &Live) -> Result<u64> {
    let recorded = live.recorded.as_ref().map_or(0, |s| s.generation);
    Ok(ctx
        .rt
        .max_generation()?
        .max(live.generation())
        .max(recorded)
        + 1)
}

/// Installs and activates a generation routing `split`; returns its number.
pub(crate) fn route(ctx: &Ctx, live: &Live, split: Split) -> Result<u64> {
    let generation = next_generation(ctx, live)?;
    let buckets = domain::route_buckets(split, ctx.config.balancer.buckets);
    ctx.rt
        .install_generation(generation, &buckets)
        .context("install the next route generation")?;
    ctx.rt
        .activate_generation(generation)
        .context("swap the route generation in")?;
    Ok(generation)
}

/// Runs one operation with the lock held. Returns the state recorded afterwards.
pub(crate) fn execute(ctx: &Ctx, request: Request) -> Result<DeployState> {
    let start = Instant::now();
    let live = read_live(ctx)?;
    let name = request.name();
    // Nothing recorded, no route and no balancer: there is no deployment to operate on, and
    // starting parts of one here would only hide the missing `up`.
    if live.recorded.is_none()
        && live.reading == RouteReading::Missing
        && !ctx.rt.is_running(Part::Balancer).unwrap_or(true)
    {
        bail!(
            "{name}: nothing is deployed on the {} runtime: run `cargo xtask up` first",
            ctx.rt.name()
        );
    }
    if let Some(problem) = &live.problem {
        crate::say!("warning: {problem}");
    }
    let base = live.state(&ctx.config);
    let mut op = Operation {
        time: domain::now_rfc3339(),
        operation: name.to_owned(),
        runtime: ctx.rt.name().to_owned(),
        from: live.split,
        to: live.split,
        split: live.split,
        versions: base.versions.clone(),
        result: Outcome::Ok,
        duration_secs: 0.0,
        generation: live.generation(),
        reason: None,
    };
    let plan = match domain::plan_switch(&live.current(&ctx.config), request) {
        Ok(Decision::Go(plan)) => plan,
        Ok(Decision::Noop(what)) => {
            crate::say!("{name}: {what}, nothing to do");
            op.result = Outcome::Noop;
            op.reason = Some(what);
            ctx.log_operation(&op)?;
            summary(&base, 0.0);
            return Ok(base);
        }
        Err(err) => {
            op.result = Outcome::Refused;
            op.reason = Some(format!("{err:#}"));
            ctx.log_operation(&op)?;
            return Err(err);
        }
    };
    op.to = plan.to;
    crate::say!("{}…", describe(name, &plan, &base, true));

    // Gates: nothing changes when one fails.
    for &color in &plan.gate {
        let version = base.version(color).unwrap_or("unknown").to_owned();
        let who = format!("{color} ({version})");
        if let Err(err) =
            gate::check_color(&ctx.client, &who, &ctx.rt.url(Part::Color(color)), &version)
        {
            let hint = match ctx.rt.is_running(Part::Color(color)) {
                Ok(false) => format!(" ({color} is not running: `cargo xtask up` starts it again)"),
                _ => String::new(),
            };
            let err = err.context(format!("{name} refused: traffic stays {}{hint}", plan.from));
            op.result = Outcome::Refused;
            op.reason = Some(format!("{err:#}"));
            op.duration_secs = start.elapsed().as_secs_f64();
            ctx.log_operation(&op)?;
            return Err(err);
        }
    }

    // Swap, verify, and swap back on failure.
    let generation = match route(ctx, &live, plan.to) {
        Ok(generation) => generation,
        Err(err) => {
            op.result = Outcome::Failed;
            op.reason = Some(format!("{err:#}"));
            op.duration_secs = start.elapsed().as_secs_f64();
            ctx.log_operation(&op)?;
            return Err(err.context(format!(
                "{name} failed before traffic moved; run `cargo xtask status`"
            )));
        }
    };
    if let Err(err) = verify(ctx, plan.to, &base) {
        let restored = restore(ctx, &live);
        op.result = if restored.is_ok() {
            Outcome::RolledBack
        } else {
            Outcome::Failed
        };
        op.reason = Some(format!("{err:#}"));
        op.duration_secs = start.elapsed().as_secs_f64();
        ctx.log_operation(&op)?;
        return match restored {
            Ok(()) => Err(err.context(format!("{name} failed verification; traffic is back to {}", plan.from))),
            Err(again) => Err(err.context(format!(
                "{name} failed verification and swapping the previous generation back failed too ({again:#}): run `cargo xtask status`"
            ))),
        };
    }

    let state = base.advance(generation, plan.to, plan.stable, &domain::now_rfc3339());
    record_state(ctx, &state)?;
    let elapsed = start.elapsed().as_secs_f64();
    op.split = plan.to;
    op.generation = generation;
    op.duration_secs = elapsed;
    ctx.log_operation(&op)?;
    let keep = [generation, live.generation()];
    if let Err(err) = ctx.rt.prune_generations(&keep) {
        crate::say!("warning: could not remove old route generations: {err:#}");
    }
    crate::say!("{} in {elapsed:.2} s", describe(name, &plan, &base, false));
    summary(&state, elapsed);
    Ok(state)
}

/// Swaps back what was live before the operation.
fn restore(ctx: &Ctx, live: &Live) -> Result<()> {
    match live.reading {
        RouteReading::Active { generation, .. } => ctx
            .rt
            .activate_generation(generation)
            .context("swap the previous route generation back"),
        _ => route(ctx, live, live.split).map(drop),
    }
}

/// Checks through the balancer that `split` is what answers.
pub(crate) fn verify(ctx: &Ctx, split: Split, state: &DeployState) -> Result<()> {
    let url = ctx.rt.url(Part::Balancer);
    let requests = if split.active().is_some() {
        VERIFY_REQUESTS
    } else {
        VERIFY_SPLIT_REQUESTS
    };
    for _ in 0..requests {
        let response = ctx
            .client
            .get(format!("{url}/health"))
            .send()
            .with_context(|| format!("verify through the balancer: no answer from {url}"))?;
        let status = response.status().as_u16();
        if status != 200 {
            bail!("verify through the balancer: /health answered {status}");
        }
        let (served, version) = gate::served_by(&response);
        gate::check_served(&served, &version, split, state)
            .context("verify through the balancer")?;
    }
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

/// Waits until the color reports `version` on `/health`, failing early when its process has
/// exited; the error carries the tail of its log.
pub(crate) fn wait_healthy(
    ctx: &Ctx,
    color: Color,
    version: &str,
    timeout: Duration,
) -> Result<()> {
    let url = ctx.rt.url(Part::Color(color));
    let start = Instant::now();
    const PROGRESS_EVERY: Duration = Duration::from_secs(2);
    let mut next_report = PROGRESS_EVERY;
    let last = loop {
        let err = match gate::health(&ctx.client, &url) {
            Ok((status, body)) => match gate::check_health(status, &body, Some(version)) {
                Ok(_) => return Ok(()),
                Err(err) => err,
            },
            Err(err) => err,
        };
        if !ctx.rt.is_running(Part::Color(color)).unwrap_or(true) {
            break err.context(format!("{color} exited"));
        }
        // Progress for a person watching: which color, what it answers, how long so far.
        if start.elapsed() >= next_report {
            let why = format!("{err:#}");
            let why = why.lines().next().unwrap_or_default();
            crate::say!(
                "  waiting for {color} ({version}) on {url}: running, not healthy yet ({why}); {:.0} s of {:.0} s",
                start.elapsed().as_secs_f64(),
                timeout.as_secs_f64()
            );
            next_report += PROGRESS_EVERY;
        }
        if start.elapsed() > timeout {
            break err.context(format!(
                "still not healthy after {:.0} s",
                start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let tail = ctx.rt.logs(Part::Color(color), 10).unwrap_or_default();
    Err(last.context(format!(
        "{color} did not become healthy with {version}; the end of its log:\n{tail}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(split: Split, stable: Color, generation: u64) -> DeployState {
        DeployState {
            generation,
            split,
            stable,
            versions: [
                (Color::Blue, "v1.0.0".into()),
                (Color::Green, "v1.1.0".into()),
            ]
            .into(),
            since: "t".into(),
            previous: Some(Box::new(DeployState {
                generation: generation - 1,
                split: Split::all(Color::Blue),
                stable: Color::Blue,
                versions: Default::default(),
                since: "t0".into(),
                previous: None,
            })),
        }
    }

    fn live(reading: RouteReading, recorded: Option<DeployState>) -> Live {
        let (split, problem) = domain::live_split(&reading, 100);
        Live {
            reading,
            split,
            problem,
            recorded,
        }
    }

    #[test]
    fn the_route_directory_wins_over_the_recorded_state() {
        // A crash after the swap and before the record: nginx routes green, state says blue.
        let l = live(
            RouteReading::Active {
                generation: 5,
                green_buckets: (0..100).collect(),
            },
            Some(recorded(Split::all(Color::Blue), Color::Blue, 4)),
        );
        let state = l.state(&DeployConfig::default());
        assert_eq!(
            (state.split, state.stable, state.generation),
            (Split::all(Color::Green), Color::Green, 5)
        );
        assert_eq!(state.version(Color::Green), Some("v1.1.0"));
        let current = l.current(&DeployConfig::default());
        assert_eq!(
            current.previous,
            Some((Split::all(Color::Blue), Color::Blue))
        );
    }

    #[test]
    fn a_recorded_canary_keeps_its_stable_color() {
        let split = Split::with(Color::Blue, 20);
        let l = live(
            RouteReading::Active {
                generation: 3,
                green_buckets: (0..80).collect(),
            },
            Some(recorded(split, Color::Green, 3)),
        );
        assert_eq!(l.state(&DeployConfig::default()).stable, Color::Green);
    }

    #[test]
    fn without_any_state_the_defaults_and_blue_apply() {
        let l = live(RouteReading::Missing, None);
        let state = l.state(&DeployConfig::default());
        assert_eq!(
            (state.split, state.stable, state.generation),
            (Split::all(Color::Blue), Color::Blue, 0)
        );
        assert_eq!(state.version(Color::Blue), Some("v1.0.0"));
        assert!(l.problem.is_some());
    }
}
