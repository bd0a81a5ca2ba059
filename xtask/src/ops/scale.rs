//! `scale`: set a color's replica count (swarm runtime), then check every replica.
//!
//! Scaling the active color adds or removes capacity under live traffic: new replicas join
//! the color's DNS answer once healthy, and removed ones drain before they stop. The new
//! replicas are then gated like a switch target, so a scale-up that brought a bad replica is
//! seen at once (traffic already reaches it: the error says so and what to do).

use anyhow::{Context, Result};

use super::{read_live, record::StopWith, Deployment, Recorder};
use crate::domain::{Color, Outcome};

/// Scales `color` to `replicas` and gates its replicas (the caller holds the lock).
pub fn scale(ctx: &Deployment, color: Color, replicas: u32) -> Result<()> {
    let live = read_live(ctx)?;
    let state = live.state(&ctx.config);
    let mut rec = Recorder::new(ctx, &format!("scale {color}"), &live, &state.versions);
    let before = ctx.rt.desired_replicas(color)?;
    let result = (|| {
        if before == Some(replicas) {
            rec.noop(&format!("{color} already has {replicas} replicas"));
        }
        ctx.rt
            .scale(color, replicas)
            .with_context(|| format!("scale {color} to {replicas} replicas"))?;
        if replicas > 0 {
            if let Some(version) = state.version(color) {
                ctx.gate_color(color, version).with_context(|| {
                    format!("{color} runs {replicas} replicas, but not all pass the gates; if it takes traffic, `cargo xtask scale --color {color} --replicas <fewer>` or `cargo xtask switch`")
                })?;
            }
        }
        Ok(())
    })();
    rec.aim(state.split);
    rec.versions(&state.versions);
    let ok = result.is_ok();
    rec.finish(result.stop_with(Outcome::Failed))?;
    if ok {
        crate::say!(
            "scale: {color} runs {replicas} replica{} (was {})",
            if replicas == 1 { "" } else { "s" },
            before.map_or("?".to_owned(), |n| n.to_string())
        );
    }
    Ok(())
}
