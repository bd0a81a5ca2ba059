//! The live state of a deployment: what the route directory routes (the truth for traffic) and
//! what `state.json` records (versions, the stable color, the state before the last operation).

use anyhow::{Context, Result};

use super::{gates, Deployment, STATE_FILE};
use crate::{
    config::DeployConfig,
    domain::{self, Color, Current, DeployState, RouteReading, Split},
    runtime::{routes::Routes, Part},
    util::now_rfc3339,
};

/// The live deployment: the route directory's reading, and what `state.json` records.
#[derive(Debug, Clone)]
pub struct Live {
    pub reading: RouteReading,
    /// The split nginx applies now (blue when the route directory is missing or unreadable).
    pub split: Split,
    /// A problem with the route directory, if any.
    pub problem: Option<String>,
    pub recorded: Option<DeployState>,
    /// Why `state.json` could not be used and how it was recovered, if it could not.
    pub recovered: Option<String>,
}

impl Live {
    /// The active route generation (0 when none is).
    pub fn generation(&self) -> u64 {
        self.reading.generation()
    }

    /// The recorded state brought in line with the live split: what the next state advances
    /// from. Without a readable route generation the recorded state is the intent, and stays.
    pub fn state(&self, config: &DeployConfig) -> DeployState {
        let mut state = self.recorded.clone().unwrap_or_else(|| DeployState {
            generation: 0,
            split: self.split,
            stable: Color::Blue,
            versions: Color::ALL
                .into_iter()
                .map(|c| (c, config.color(c).version.clone()))
                .collect(),
            since: now_rfc3339(),
            previous: None,
        });
        let routed = matches!(self.reading, RouteReading::Active { .. });
        if (routed || self.recorded.is_none())
            && (state.split != self.split || state.generation != self.generation())
        {
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

/// Reads the live state through the runtime. A `state.json` that cannot be parsed does not
/// stop anything: the state is rebuilt from the live route and the versions the colors report
/// (the configured ones where a color does not answer), with a warning in `recovered`.
pub fn read_live(ctx: &Deployment) -> Result<Live> {
    let reading = Routes::new(ctx.rt.host())
        .reading()
        .context("read the route directory")?;
    let (split, problem) = domain::live_split(&reading, ctx.config.balancer.buckets);
    let mut live = Live {
        reading,
        split,
        problem,
        recorded: None,
        recovered: None,
    };
    if let Some(text) = ctx.rt.host().read(STATE_FILE)? {
        match serde_json::from_str::<DeployState>(&text) {
            Ok(state) => live.recorded = Some(state),
            Err(err) => {
                live.recorded = Some(recover(ctx, &live));
                live.recovered = Some(format!(
                    "the recorded state ({STATE_FILE}) cannot be read ({err}): rebuilt from the live route and the \
                     versions the colors report; the next operation rewrites it (the rollback target is lost)"
                ));
            }
        }
    }
    Ok(live)
}

/// A state for a deployment whose `state.json` is unreadable: the live split, and each color's
/// version as it reports it (the configured one when it does not answer).
fn recover(ctx: &Deployment, live: &Live) -> DeployState {
    let versions = Color::ALL
        .into_iter()
        .map(|color| {
            let url = ctx.rt.url(Part::Color(color));
            let version = gates::healthy_version(&ctx.client, &url)
                .unwrap_or_else(|_| ctx.config.color(color).version.clone());
            (color, version)
        })
        .collect();
    DeployState {
        generation: live.generation(),
        split: live.split,
        stable: live.split.active().unwrap_or(Color::Blue),
        versions,
        since: now_rfc3339(),
        previous: None,
    }
}

/// Writes the recorded state.
pub fn record_state(ctx: &Deployment, state: &DeployState) -> Result<()> {
    let text = serde_json::to_string_pretty(state).context("encode the deploy state")? + "\n";
    ctx.rt
        .host()
        .write(STATE_FILE, &text)
        .context("record the deploy state")
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
            recovered: None,
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
