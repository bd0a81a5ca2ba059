//! The deploy domain: colors, splits, the deploy state and the operation log's records.
//!
//! Everything here is pure data and pure decisions; effects live in the runtimes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One of the two environments that take turns serving traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
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

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
