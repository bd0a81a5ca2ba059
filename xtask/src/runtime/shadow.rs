//! Shadow generations over [`HostDir`]: which prediction requests nginx mirrors, and to which
//! color.
//!
//! - `shadow-on/` holds one empty file `<color>-<bucket>` per mirrored bucket; `shadow-off/` is
//!   empty;
//! - `shadow` is a symlink to one of them; nginx tests `<shadow_dir>/<color>-$bucket` per
//!   prediction request, so swapping the link starts or stops the mirror with no reload. A
//!   missing link mirrors nothing.
//!
//! Route generations are untouched: a shadow never moves a client's request.

use anyhow::{Context, Result};

use super::{HostDir, Link};
use crate::domain::{route_buckets, Color, Split};

/// The link nginx follows, relative to the host state directory.
pub const LINK: &str = "shadow";
const ON: &str = "shadow-on";
const OFF: &str = "shadow-off";

/// What the shadow link says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    Off,
    /// Mirroring `buckets` of the balancer's buckets to `to`.
    On {
        to: Color,
        buckets: usize,
    },
}

/// The shadow generations of one host state directory.
pub struct Shadow<'a> {
    dir: &'a dyn HostDir,
}

impl<'a> Shadow<'a> {
    pub fn new(dir: &'a dyn HostDir) -> Shadow<'a> {
        Shadow { dir }
    }

    /// Starts mirroring `percent` % of the prediction requests to `to` (of `buckets` buckets).
    pub fn start(&self, to: Color, percent: u8, buckets: u16) -> Result<()> {
        let files: Vec<String> = route_buckets(Split::with(Color::Green, percent), buckets)
            .into_iter()
            .map(|bucket| format!("{to}-{bucket}"))
            .collect();
        self.dir
            .install_dir(ON, &files)
            .context("install the shadow generation")?;
        self.dir
            .swap_link(LINK, ON)
            .context("start the mirror (swap the shadow link)")
    }

    /// Stops mirroring: the link points at an empty generation.
    pub fn stop(&self) -> Result<()> {
        self.dir
            .install_dir(OFF, &[])
            .context("install the empty shadow generation")?;
        self.dir
            .swap_link(LINK, OFF)
            .context("stop the mirror (swap the shadow link)")?;
        self.dir
            .remove_dirs(&[ON.to_owned()])
            .context("remove the shadow generation")
    }

    /// What nginx mirrors now.
    pub fn reading(&self) -> Result<Mirror> {
        let target = match self.dir.read_link(LINK)? {
            Link::Missing | Link::Broken(_) => return Ok(Mirror::Off),
            Link::To(target) => target,
        };
        let names = self
            .dir
            .list(target.trim_end_matches('/'))?
            .unwrap_or_default();
        Ok(parse(&names))
    }
}

/// The mirror a generation's file names stand for.
fn parse(names: &[String]) -> Mirror {
    let mut counts = [0usize; 2];
    for name in names {
        for (i, color) in Color::ALL.iter().enumerate() {
            if name
                .strip_prefix(color.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|bucket| bucket.parse::<u16>().is_ok())
            {
                counts[i] += 1;
            }
        }
    }
    match counts {
        [0, 0] => Mirror::Off,
        [blue, green] if blue >= green => Mirror::On {
            to: Color::Blue,
            buckets: blue,
        },
        [_, green] => Mirror::On {
            to: Color::Green,
            buckets: green,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeHost;

    #[test]
    fn start_and_stop_swap_the_link_and_leave_routes_alone() {
        let host = FakeHost::default();
        let shadow = Shadow::new(&host);
        assert_eq!(shadow.reading().unwrap(), Mirror::Off);
        shadow.start(Color::Green, 10, 100).unwrap();
        shadow.stop().unwrap();
        assert!(host.read("routes/current").unwrap().is_none());
    }

    #[test]
    fn file_names_say_which_color_and_how_many_buckets() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse(&names(&[])), Mirror::Off);
        assert_eq!(
            parse(&names(&["green-0", "green-1", "junk"])),
            Mirror::On {
                to: Color::Green,
                buckets: 2
            }
        );
        assert_eq!(
            parse(&names(&["blue-7"])),
            Mirror::On {
                to: Color::Blue,
                buckets: 1
            }
        );
    }
}
