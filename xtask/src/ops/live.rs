//! The live state of a deployment: what the route directory routes (the truth for traffic) and
//! what `state.json` records (versions, the stable color, the state before the last operation).

use anyhow::{Context, Result};

use super::{Deployment, STATE_FILE};
use crate::{
    config::DeployConfig,
    domain::{self, Color, Current, DeployState, RouteReading, Split},
    runtime::routes::Routes,
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
}

impl Live {
    /// The active route generation (0 when none is).
    pub fn generation(&self) -> u64 {
        self.reading.generation()
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
            since: now_rfc3339(),
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
pub fn read_live(ctx: &Deployment) -> Result<Live> {
    let reading = Routes::new(ctx.rt.host())
        .reading()
        .context("read the route directory")?;
    let (split, problem) = domain::live_split(&reading, ctx.config.balancer.buckets);
    let recorded = match ctx.rt.host().read(STATE_FILE)? {
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
