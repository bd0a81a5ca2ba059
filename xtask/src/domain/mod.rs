//! The deploy domain: colors and splits here; routes, state and plans in the submodules.
//!
//! Everything in `domain/` is pure data and pure decisions: it imports nothing from the layers
//! above it (`ops/`, `runtime/`, `cmd/`), and its tests need no process, file or socket.

pub mod canary;
mod plan;
mod routes;
pub mod shadow;
pub mod shadow_render;
mod state;
pub mod text;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use plan::{plan_switch, Current, Decision, Plan, Request};
pub use routes::{
    generation_name, live_split, parse_buckets, parse_generation_name, route_buckets, split_of,
    RouteReading,
};
pub use state::{check_version, DeployState, Operation, Outcome};

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
}
