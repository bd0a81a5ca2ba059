//! The deploy domain: colors, splits, the deploy state and the operation log's records.
//!
//! Everything here is pure data and pure decisions; effects live in the runtimes.

use std::{
    collections::BTreeMap,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::runtime::RouteReading;

/// One of the two environments that take turns serving traffic.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The opposite color: the standby when `self` is active.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl std::str::FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Color, String> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            _ => Err(format!("unknown color {s:?}: use blue or green")),
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How traffic is split between the colors, in percent; the two always add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub blue: u8,
    pub green: u8,
}

impl Split {
    /// Every request to `color`.
    pub fn all(color: Color) -> Split {
        Split::with(color.other(), 0)
    }

    /// `percent` of requests to `color`, the rest to the other color.
    pub fn with(color: Color, percent: u8) -> Split {
        let percent = percent.min(100);
        match color {
            Color::Blue => Split {
                blue: percent,
                green: 100 - percent,
            },
            Color::Green => Split {
                blue: 100 - percent,
                green: percent,
            },
        }
    }

    pub fn share(self, color: Color) -> u8 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    /// The color taking every request, or `None` during a canary split.
    pub fn active(self) -> Option<Color> {
        Color::ALL.into_iter().find(|&c| self.share(c) == 100)
    }

    /// The colors taking any requests.
    pub fn serving(self) -> Vec<Color> {
        Color::ALL
            .into_iter()
            .filter(|&c| self.share(c) > 0)
            .collect()
    }
}

impl fmt::Display for Split {
    /// `blue` / `green` for a whole switch, `blue 90 / green 10` for a split.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.active() {
            Some(color) => write!(f, "{color}"),
            None => write!(f, "blue {} / green {}", self.blue, self.green),
        }
    }
}

/// The buckets that go to green for `split` over `buckets` buckets: the first
/// `round(green% × buckets)`, so growing a canary only ever adds buckets.
pub fn route_buckets(split: Split, buckets: u16) -> Vec<u16> {
    let n = u32::from(buckets);
    let green = (u32::from(split.green) * n + 50) / 100;
    (0..green as u16).collect()
}

/// The split a set of green buckets stands for (the inverse of [`route_buckets`], rounded).
pub fn split_of(green_buckets: usize, buckets: u16) -> Split {
    let n = usize::from(buckets.max(1));
    let green = ((green_buckets.min(n) * 100 + n / 2) / n) as u8;
    Split::with(Color::Green, green)
}

/// What the live route directory means for traffic, and any problem with it. A missing or
/// unreadable route directory sends everything to blue (nginx's `if -f` is false).
pub fn live_split(reading: &RouteReading, buckets: u16) -> (Split, Option<String>) {
    match reading {
        RouteReading::Active { green_buckets, .. } => {
            let stray: Vec<u16> = green_buckets.iter().copied().filter(|&b| b >= buckets).collect();
            let problem = (!stray.is_empty()).then(|| {
                format!("the route generation names buckets {stray:?} beyond the {buckets} configured; they are ignored")
            });
            let valid = green_buckets.len() - stray.len();
            (split_of(valid, buckets), problem)
        }
        RouteReading::Missing => {
            (Split::all(Color::Blue), Some("the route directory has no `current` generation: nginx sends every request to blue".into()))
        }
        RouteReading::Unreadable(why) => {
            (Split::all(Color::Blue), Some(format!("the route directory is unreadable ({why}): nginx sends every request to blue")))
        }
    }
}

/// The recorded deploy state (`state.json` on the deployment host). The route directory is the
/// truth for the split; this records what the route directory cannot: versions, the color a
/// canary started from, and the state before the last operation (for rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployState {
    /// The route generation this state was recorded with.
    pub generation: u64,
    pub split: Split,
    /// The color that had all traffic before the current canary (the active color otherwise).
    pub stable: Color,
    /// The model version each color serves.
    pub versions: BTreeMap<Color, String>,
    /// When this state began (RFC 3339, UTC).
    pub since: String,
    /// The state before the last operation, without its own `previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<DeployState>>,
}

impl DeployState {
    /// The state after an operation moved traffic to `split`; `self` becomes `previous`.
    pub fn advance(&self, generation: u64, split: Split, stable: Color, now: &str) -> DeployState {
        let mut previous = self.clone();
        previous.previous = None;
        DeployState {
            generation,
            split,
            stable,
            versions: self.versions.clone(),
            since: now.to_owned(),
            previous: Some(Box::new(previous)),
        }
    }

    pub fn version(&self, color: Color) -> Option<&str> {
        self.versions.get(&color).map(String::as_str)
    }
}

/// The result of an operation, as the operation log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Traffic moved as asked.
    Ok,
    /// Nothing to do: the live state already was the target.
    Noop,
    /// A gate failed before traffic moved; nothing changed.
    Refused,
    /// Something failed after traffic moved; the previous generation was swapped back.
    RolledBack,
    /// Failed, and traffic may not be where it was: the reason says what to do.
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Noop => "noop",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "failed",
        })
    }
}

/// One line of the operation log (`operations.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// RFC 3339, UTC.
    pub time: String,
    /// `up`, `switch`, `rollback`, `canary`, `deploy`, `down`.
    pub operation: String,
    pub runtime: String,
    pub from: Split,
    pub to: Split,
    /// The split serving traffic when the operation ended.
    pub split: Split,
    pub versions: BTreeMap<Color, String>,
    pub result: Outcome,
    pub duration_secs: f64,
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

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

/// Checks that a model version is a plain folder name (`v1.0.0`), so it cannot escape `models/`.
pub fn check_version(version: &str) -> std::result::Result<(), String> {
    let ok = !version.is_empty()
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(())
    } else {
        Err("a version is a folder name under `models/` such as `v1.0.0`".into())
    }
}

/// `now` as RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the Unix epoch as RFC 3339 in UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_is_an_involution() {
        for color in Color::ALL {
            assert_ne!(color.other(), color);
            assert_eq!(color.other().other(), color);
        }
    }

    #[test]
    fn route_buckets_follow_the_split() {
        assert_eq!(
            route_buckets(Split::all(Color::Blue), 100),
            Vec::<u16>::new()
        );
        assert_eq!(
            route_buckets(Split::all(Color::Green), 100),
            (0..100).collect::<Vec<_>>()
        );
        assert_eq!(
            route_buckets(Split::with(Color::Green, 10), 100),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(route_buckets(Split::with(Color::Green, 10), 20), vec![0, 1]);
        assert_eq!(route_buckets(Split::with(Color::Green, 50), 3), vec![0, 1]);
        for buckets in [1, 3, 20, 100, 1000] {
            for green in 0..=100 {
                let split = Split::with(Color::Green, green);
                let routed = route_buckets(split, buckets);
                assert!(routed.iter().all(|&b| b < buckets));
                if buckets == 100 {
                    assert_eq!(split_of(routed.len(), buckets), split);
                }
            }
        }
    }

    #[test]
    fn missing_or_unreadable_routes_mean_blue_with_a_problem() {
        let (split, problem) = live_split(&RouteReading::Missing, 100);
        assert_eq!(split, Split::all(Color::Blue));
        assert!(problem.unwrap().contains("no `current`"));
        let (split, problem) =
            live_split(&RouteReading::Unreadable("permission denied".into()), 100);
        assert_eq!(split, Split::all(Color::Blue));
        assert!(problem.unwrap().contains("permission denied"));
        let reading = RouteReading::Active {
            generation: 3,
            green_buckets: (0..10).collect(),
        };
        assert_eq!(
            live_split(&reading, 100),
            (Split::with(Color::Green, 10), None)
        );
    }

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
    fn state_advance_keeps_one_previous() {
        let first = DeployState {
            generation: 1,
            split: Split::all(Color::Blue),
            stable: Color::Blue,
            versions: [
                (Color::Blue, "v1.0.0".to_owned()),
                (Color::Green, "v1.1.0".to_owned()),
            ]
            .into(),
            since: rfc3339(0),
            previous: None,
        };
        let second = first.advance(2, Split::all(Color::Green), Color::Green, "t2");
        let third = second.advance(3, Split::all(Color::Blue), Color::Blue, "t3");
        assert_eq!(third.previous.as_ref().unwrap().generation, 2);
        assert!(third.previous.as_ref().unwrap().previous.is_none());
        let json = serde_json::to_string(&third).unwrap();
        assert_eq!(serde_json::from_str::<DeployState>(&json).unwrap(), third);
        assert!(
            json.contains(r#""versions":{"blue":"v1.0.0","green":"v1.1.0"}"#),
            "{json}"
        );
    }

    #[test]
    fn state_json_matches_golden_file() {
        let state = DeployState {
            generation: 7,
            split: Split::with(Color::Green, 10),
            stable: Color::Blue,
            versions: [
                (Color::Blue, "v1.0.0".to_owned()),
                (Color::Green, "v1.1.0".to_owned()),
            ]
            .into(),
            since: rfc3339(1_700_000_000),
            previous: Some(Box::new(DeployState {
                generation: 6,
                split: Split::all(Color::Blue),
                stable: Color::Blue,
                versions: [
                    (Color::Blue, "v1.0.0".to_owned()),
                    (Color::Green, "v1.1.0".to_owned()),
                ]
                .into(),
                since: rfc3339(1_600_000_000),
                previous: None,
            })),
        };
        let actual = serde_json::to_string_pretty(&state).unwrap() + "\n";
        let path = crate::util::project_root().join("xtask/test_data/state.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &actual).unwrap();
        }
        assert_eq!(std::fs::read_to_string(path).unwrap_or_default(), actual);
    }

    /// A whole session of operations, planned and recorded one after another; the golden file
    /// shows every decision (target split, stable color, gated colors) and the recorded state.
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
            versions: [
                (Color::Blue, "v1.0.0".to_owned()),
                (Color::Green, "v1.1.0".to_owned()),
            ]
            .into(),
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
        let path = crate::util::project_root().join("xtask/test_data/transitions.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &out).unwrap();
        }
        assert_eq!(std::fs::read_to_string(path).unwrap_or_default(), out);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn versions_are_folder_names() {
        assert!(check_version("v1.0.0").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "v 1"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
