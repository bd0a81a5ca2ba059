//! The recorded deploy state and the operation log's records.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use super::{Color, Split};

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
    /// The deploy tool's connection to the host ended mid-operation; the host's agent
    /// finished it (the reason says how: the route put back, or kept with its state) and
    /// released the lock.
    Interrupted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Noop => "noop",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
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

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::util::rfc3339;

    /// The versions every test state records.
    pub fn versions() -> BTreeMap<Color, String> {
        [
            (Color::Blue, "v1.0.0".to_owned()),
            (Color::Green, "v1.1.0".to_owned()),
        ]
        .into()
    }

    #[test]
    fn state_advance_keeps_one_previous() {
        let first = DeployState {
            generation: 1,
            split: Split::all(Color::Blue),
            stable: Color::Blue,
            versions: versions(),
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
            versions: versions(),
            since: rfc3339(1_700_000_000),
            previous: Some(Box::new(DeployState {
                generation: 6,
                split: Split::all(Color::Blue),
                stable: Color::Blue,
                versions: versions(),
                since: rfc3339(1_600_000_000),
                previous: None,
            })),
        };
        let actual = serde_json::to_string_pretty(&state).unwrap() + "\n";
        crate::util::ensure_file_contents("xtask/test_data/state.json", &actual);
    }

    /// A whole session of operations, planned and recorded one after another; the golden file
    /// shows every decision (target split, stable color, gated colors) and the recorded state.

    #[test]
    fn versions_are_folder_names() {
        assert!(check_version("v1.0.0").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "v 1"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
