//! Route generations as data: which buckets go to green for a split, what a reading of the
//! live route directory means for traffic, and how generation folders are named.

use anyhow::{Context, Result};

use super::{Color, Split};

/// What the route symlink says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteReading {
    /// `routes/current` points at generation `generation`, which sends `green_buckets` to green.
    Active {
        generation: u64,
        green_buckets: Vec<u16>,
    },
    /// There is no `routes/current`: nginx sends every request to its default (blue).
    Missing,
    /// `routes/current` exists but cannot be read (by us or by nginx's workers); the text says
    /// why. nginx's `if -f` is then false, so every request goes to blue.
    Unreadable(String),
}

impl RouteReading {
    /// The active generation number (0 when none is active).
    pub fn generation(&self) -> u64 {
        match self {
            RouteReading::Active { generation, .. } => *generation,
            _ => 0,
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

/// The folder name of generation `generation` under `routes/`.
pub fn generation_name(generation: u64) -> String {
    format!("gen-{generation}")
}

/// `gen-<n>` → n.
pub fn parse_generation_name(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// The bucket numbers among the names in a generation folder, sorted.
pub fn parse_buckets<S: AsRef<str>>(names: &[S]) -> Result<Vec<u16>> {
    let mut buckets = names
        .iter()
        .map(|name| name.as_ref().trim())
        .filter(|name| !name.is_empty())
        .map(|name| {
            name.parse::<u16>()
                .with_context(|| format!("{name:?} is not a bucket number"))
        })
        .collect::<Result<Vec<u16>>>()?;
    buckets.sort_unstable();
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn generation_names_and_bucket_listings_parse() {
        assert_eq!(parse_generation_name(&generation_name(12)), Some(12));
        assert_eq!(parse_generation_name("current"), None);
        assert_eq!(parse_buckets(&["3", "1", "2", ""]).unwrap(), vec![1, 2, 3]);
        assert!(parse_buckets(&["x"]).is_err());
    }
}
