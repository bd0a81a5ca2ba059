//! Waiting for parts to become healthy, with progress for a person watching and the end of the
//! part's log when it does not.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{gates, Deployment};
use crate::{domain::Color, runtime::Part, util};

/// Waits until the balancer answers its own health path.
pub fn wait_balancer(ctx: &Deployment) -> Result<()> {
    let url = ctx.rt.url(Part::Balancer);
    util::poll(
        "the balancer to answer",
        ctx.config.timeouts.healthy,
        || gates::balancer_answers(&ctx.client, &url),
    )
}

/// Waits until the color reports `version` on `/health`, failing early when its process has
/// exited; the error carries the tail of its log.
pub fn wait_healthy(
    ctx: &Deployment,
    color: Color,
    version: &str,
    timeout: Duration,
) -> Result<()> {
    let url = ctx.rt.url(Part::Color(color));
    let start = Instant::now();
    const PROGRESS_EVERY: Duration = Duration::from_secs(2);
    let mut next_report = PROGRESS_EVERY;
    let last = loop {
        let err = match gates::health(&ctx.client, &url) {
            Ok((status, body)) => match gates::check_health(status, &body, Some(version)) {
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
