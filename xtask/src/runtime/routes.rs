//! Route generations, written once for every runtime, over [`HostDir`].
//!
//! - `routes/gen-<n>/` holds one empty file per bucket that goes to green;
//! - `routes/current` is a symlink to the active `gen-<n>`; nginx tests
//!   `<route_dir>/current/$bucket` per request, so swapping the link moves traffic with no
//!   reload;
//! - a new generation always gets a number above every one present (a crash may leave an
//!   unrecorded one behind), and old ones are pruned after a successful operation, never the
//!   active one.

use anyhow::{bail, Context, Result};

use super::{HostDir, Link};
use crate::domain::{generation_name, parse_buckets, parse_generation_name, RouteReading};

/// The routes folder, relative to the host state directory.
pub const ROUTES: &str = "routes";
/// The link nginx follows, relative to the host state directory.
pub const CURRENT: &str = "routes/current";

/// The route generations of one host state directory.
pub struct Routes<'a> {
    dir: &'a dyn HostDir,
}

impl<'a> Routes<'a> {
    pub fn new(dir: &'a dyn HostDir) -> Routes<'a> {
        Routes { dir }
    }

    /// What `routes/current` routes now: a generation and its green buckets, nothing, or why
    /// it cannot be read (by us or by nginx's workers).
    pub fn reading(&self) -> Result<RouteReading> {
        let target = match self.dir.read_link(CURRENT)? {
            Link::Missing => return Ok(RouteReading::Missing),
            Link::Broken(why) => return Ok(RouteReading::Unreadable(why)),
            Link::To(target) => target,
        };
        let target = target.trim_end_matches('/');
        let Some(generation) = parse_generation_name(target) else {
            return Ok(RouteReading::Unreadable(format!(
                "{CURRENT} points at {target:?}, not a gen-<n> folder"
            )));
        };
        let folder = format!("{ROUTES}/{target}");
        if let Some(why) = self.dir.balancer_cannot_read(&folder) {
            return Ok(RouteReading::Unreadable(why));
        }
        let names = match self.dir.list(&folder) {
            Ok(Some(names)) => names,
            Ok(None) => {
                return Ok(RouteReading::Unreadable(format!(
                    "{CURRENT} points at a missing {target}"
                )))
            }
            Err(err) => {
                return Ok(RouteReading::Unreadable(format!(
                    "{CURRENT} points at {target}: {err:#}"
                )))
            }
        };
        match parse_buckets(&names) {
            Ok(green_buckets) => Ok(RouteReading::Active {
                generation,
                green_buckets,
            }),
            Err(err) => Ok(RouteReading::Unreadable(format!("{target}: {err:#}"))),
        }
    }

    /// The generation numbers present under `routes/`.
    pub fn generations(&self) -> Result<Vec<u64>> {
        let names = self
            .dir
            .list(ROUTES)
            .context("list the route generations")?
            .unwrap_or_default();
        Ok(names
            .iter()
            .filter_map(|name| parse_generation_name(name))
            .collect())
    }

    /// The highest generation number present (0 when none), so a new one never reuses a number.
    pub fn max_generation(&self) -> Result<u64> {
        Ok(self.generations()?.into_iter().max().unwrap_or(0))
    }

    /// Installs generation `generation` sending `green_buckets` to green (not yet active).
    pub fn install(&self, generation: u64, green_buckets: &[u16]) -> Result<()> {
        let names: Vec<String> = green_buckets.iter().map(u16::to_string).collect();
        self.dir
            .install_dir(&format!("{ROUTES}/{}", generation_name(generation)), &names)
            .with_context(|| format!("install route generation {generation}"))
    }

    /// Points `routes/current` at generation `generation`, atomically.
    pub fn activate(&self, generation: u64) -> Result<()> {
        self.dir
            .swap_link(CURRENT, &generation_name(generation))
            .with_context(|| format!("activate route generation {generation}"))
    }

    /// Activates generation `generation` only if it is still installed (a restore).
    pub fn reactivate(&self, generation: u64) -> Result<()> {
        let folder = format!("{ROUTES}/{}", generation_name(generation));
        if self.dir.list(&folder)?.is_none() {
            bail!("route generation {generation} is not installed any more");
        }
        self.activate(generation)
    }

    /// Removes every generation not in `keep`, which must hold the active one (the caller holds
    /// the lock and has just activated it, so this costs no extra reading of the link).
    pub fn prune(&self, keep: &[u64]) -> Result<()> {
        let doomed: Vec<String> = self
            .generations()?
            .into_iter()
            .filter(|n| !keep.contains(n))
            .map(|n| format!("{ROUTES}/{}", generation_name(n)))
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        self.dir
            .remove_dirs(&doomed)
            .context("prune old route generations")
    }
}
