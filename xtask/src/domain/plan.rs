//! Planning an operation: from the live split and what the operator asked, the target split,
//! the stable color after it, and the colors that must pass the gates first.

use anyhow::{bail, Result};

use super::{Color, Split};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// All traffic to `to`, or to the standby color.
    Switch { to: Option<Color> },
    /// `percent` of traffic to the canary color: the other of the stable one.
    Canary { percent: u8 },
    /// Back to the recorded previous state.
    Rollback,
}

impl Request {
    pub fn name(self) -> &'static str {
        match self {
            Request::Switch { .. } => "switch",
            Request::Canary { .. } => "canary",
            Request::Rollback => "rollback",
        }
    }
}

/// What the live system looks like, as far as planning needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub split: Split,
    pub stable: Color,
    /// The previous split and stable color, when one is recorded.
    pub previous: Option<(Split, Color)>,
}

/// A decided operation: move traffic from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from: Split,
    pub to: Split,
    /// The stable color after the operation.
    pub stable: Color,
    /// The colors whose share grows: they must pass the gates first.
    pub gate: Vec<Color>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already there; the text says so.
    Noop(String),
    Go(Plan),
}

/// Decides what an operation does, from the live state alone.
pub fn plan_switch(current: &Current, request: Request) -> Result<Decision> {
    let from = current.split;
    let (to, stable) = match request {
        Request::Switch { to } => {
            let target = to.unwrap_or_else(|| match from.active() {
                Some(active) => active.other(),
                None => current.stable.other(),
            });
            (Split::all(target), target)
        }
        Request::Canary { percent } => {
            if percent > 100 {
                bail!("canary percent {percent} is over 100: use 0 (cancel) to 100 (complete)");
            }
            let stable = from.active().unwrap_or(current.stable);
            let canary = stable.other();
            (
                Split::with(canary, percent),
                if percent == 100 { canary } else { stable },
            )
        }
        Request::Rollback => match current.previous {
            Some((split, stable)) => (split, stable),
            None => bail!(
                "nothing to roll back to: no earlier state is recorded (run `cargo xtask status`)"
            ),
        },
    };
    if to == from {
        let what = match request {
            Request::Rollback => format!("already at the previous state ({to})"),
            _ if to.active().is_some() => format!("already on {to}"),
            _ => format!("already split {to}"),
        };
        return Ok(Decision::Noop(what));
    }
    let gate = Color::ALL
        .into_iter()
        .filter(|&c| to.share(c) > from.share(c))
        .collect();
    Ok(Decision::Go(Plan {
        from,
        to,
        stable,
        gate,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{route_buckets, DeployState},
        util::rfc3339,
    };

    fn current(split: Split, stable: Color, previous: Option<(Split, Color)>) -> Current {
        Current {
            split,
            stable,
            previous,
        }
    }

    fn go(decision: Decision) -> Plan {
        match decision {
            Decision::Go(plan) => plan,
            Decision::Noop(why) => panic!("expected a plan, got noop: {why}"),
        }
    }

    #[test]
    fn switch_goes_to_the_standby_or_the_named_color() {
        let blue = Split::all(Color::Blue);
        let green = Split::all(Color::Green);
        let plan = go(plan_switch(
            &current(blue, Color::Blue, None),
            Request::Switch { to: None },
        )
        .unwrap());
        assert_eq!(
            plan,
            Plan {
                from: blue,
                to: green,
                stable: Color::Green,
                gate: vec![Color::Green]
            }
        );
        let noop = plan_switch(
            &current(blue, Color::Blue, None),
            Request::Switch {
                to: Some(Color::Blue),
            },
        )
        .unwrap();
        assert_eq!(noop, Decision::Noop("already on blue".into()));
        // During a canary, a plain switch completes it.
        let canary = Split::with(Color::Green, 10);
        let plan = go(plan_switch(
            &current(canary, Color::Blue, None),
            Request::Switch { to: None },
        )
        .unwrap());
        assert_eq!((plan.to, plan.gate), (green, vec![Color::Green]));
    }

    #[test]
    fn canary_sends_a_share_to_the_other_of_the_stable_color() {
        let green = Split::all(Color::Green);
        let plan = go(plan_switch(
            &current(green, Color::Green, None),
            Request::Canary { percent: 10 },
        )
        .unwrap());
        assert_eq!(
            plan.to,
            Split {
                blue: 10,
                green: 90
            }
        );
        assert_eq!((plan.stable, plan.gate), (Color::Green, vec![Color::Blue]));
        let split = Split {
            blue: 10,
            green: 90,
        };
        let plan = go(plan_switch(
            &current(split, Color::Green, None),
            Request::Canary { percent: 0 },
        )
        .unwrap());
        assert_eq!((plan.to, plan.gate), (green, vec![Color::Green]));
        let plan = go(plan_switch(
            &current(split, Color::Green, None),
            Request::Canary { percent: 100 },
        )
        .unwrap());
        assert_eq!(
            (plan.to, plan.stable),
            (Split::all(Color::Blue), Color::Blue)
        );
        let noop = plan_switch(
            &current(split, Color::Green, None),
            Request::Canary { percent: 10 },
        )
        .unwrap();
        assert_eq!(
            noop,
            Decision::Noop("already split blue 10 / green 90".into())
        );
    }

    #[test]
    fn rollback_returns_to_the_previous_split_and_needs_one() {
        let canary = Split::with(Color::Green, 25);
        let blue = Split::all(Color::Blue);
        let plan = go(plan_switch(
            &current(canary, Color::Blue, Some((blue, Color::Blue))),
            Request::Rollback,
        )
        .unwrap());
        assert_eq!(
            (plan.to, plan.stable, plan.gate),
            (blue, Color::Blue, vec![Color::Blue])
        );
        let err = plan_switch(&current(blue, Color::Blue, None), Request::Rollback).unwrap_err();
        assert!(err.to_string().contains("nothing to roll back to"));
    }

    #[test]
    fn operation_sequence_matches_golden_file() {
        let requests = [
            Request::Rollback,
            Request::Switch { to: None },
            Request::Switch {
                to: Some(Color::Green),
            },
            Request::Canary { percent: 10 },
            Request::Canary { percent: 50 },
            Request::Rollback,
            Request::Rollback,
            Request::Canary { percent: 100 },
            Request::Canary { percent: 0 },
            Request::Switch { to: None },
            Request::Rollback,
        ];
        let mut state = DeployState {
            generation: 1,
            split: Split::all(Color::Blue),
            stable: Color::Blue,
            versions: super::super::state::tests::versions(),
            since: rfc3339(0),
            previous: None,
        };
        let mut out = String::new();
        for request in requests {
            let current = Current {
                split: state.split,
                stable: state.stable,
                previous: state.previous.as_ref().map(|p| (p.split, p.stable)),
            };
            let line = match plan_switch(&current, request) {
                Err(err) => format!("refused: {err}"),
                Ok(Decision::Noop(why)) => format!("noop: {why}"),
                Ok(Decision::Go(plan)) => {
                    state = state.advance(
                        state.generation + 1,
                        plan.to,
                        plan.stable,
                        &rfc3339(state.generation),
                    );
                    let gate: Vec<&str> = plan.gate.iter().map(|c| c.as_str()).collect();
                    format!(
                        "{} -> {} (stable {}, gate [{}], green buckets of 100: {})",
                        plan.from,
                        plan.to,
                        plan.stable,
                        gate.join(", "),
                        route_buckets(plan.to, 100).len()
                    )
                }
            };
            out += &format!("{:<28} {line}\n", format!("{request:?}"));
        }
        crate::util::ensure_file_contents("xtask/test_data/transitions.txt", &out);
    }
}
