//! Shadow traffic: mirror a share of live prediction requests to the standby, then compare what
//! both colors answered to the same requests. Nothing a client sees changes.
//!
//! Steps of [`observe`] (the caller holds the lock):
//! 1. check before changing anything: all traffic on one color (no canary), the standby
//!    healthy, both journals answering; take each journal's mark (its last record);
//! 2. start the mirror ([`Shadow::start`]: the shadow link, no reload) to the standby;
//! 3. wait until the duration has passed or enough copies were answered, printing progress;
//! 4. stop the mirror, on every exit path (a guard), then wait out the mirror's budget so the
//!    last copies are answered;
//! 5. fetch both colors' journals since their marks (every replica's, where a color has
//!    several: each keeps its own), join them by shadow id, and replay a sample of
//!    the active color's own inputs to it again (the noise floor: how much the active model
//!    disagrees with itself);
//! 6. analyse ([`crate::domain::shadow`]) and return the analysis; the caller renders it and
//!    records the operation.
//!
//! `run` is the `shadow` command's path: the above between a [`Recorder`] and its line in the
//! operation log.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::{
    gates, read_live,
    record::{Recorder, StopWith, Stopped},
    Deployment,
};
use crate::{
    domain::{
        shadow::{self as analysis, Analysis, Page, Record},
        split_of, Color, Outcome,
    },
    runtime::{
        shadow::{Mirror, Shadow},
        Part,
    },
};

/// Progress goes to stderr, so that `--format json` leaves stdout to the report.
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The journal path on each color's direct port.
const JOURNAL: &str = "/_shadow/records";
/// Records fetched per request (the service's maximum).
const PAGE: usize = 10_000;
/// Inputs replayed to the active color for the noise floor.
const FLOOR_SAMPLE: usize = 200;
/// Disagreements listed in the report.
const TOP: usize = 10;
/// How long the journals may take to answer at the end of a run.
const FETCH_PATIENCE: Duration = Duration::from_secs(15);
/// How often progress is printed while the mirror runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a shadow run mirrors and when it stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Percent of prediction requests mirrored (1..=100).
    pub percent: u8,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop earlier, once this many copies were answered by the standby.
    pub requests: Option<u64>,
}

impl Options {
    /// Checks the values before anything changes.
    pub fn check(&self) -> Result<()> {
        if !(1..=100).contains(&self.percent) {
            bail!(
                "--percent {}: mirror between 1 and 100 % of the prediction requests",
                self.percent
            );
        }
        if self.duration.is_zero() {
            bail!("--duration 0: give the shadow at least one second to see requests");
        }
        if self.requests == Some(0) {
            bail!("--requests 0: ask for at least one compared request");
        }
        Ok(())
    }
}

/// The `shadow` command: observe, record the operation, return the analysis.
pub fn run(ctx: &Deployment, options: &Options) -> Result<Analysis> {
    let live = read_live(ctx)?;
    let state = live.state(&ctx.config);
    let mut rec = Recorder::new(ctx, "shadow", &live, &state.versions);
    let result = observe(ctx, options);
    let (recorded, analysis) = match result {
        Ok(analysis) => {
            rec.reason(&analysis::summary(&analysis));
            (Ok(()), Some(analysis))
        }
        Err(stopped) => (Err(stopped), None),
    };
    rec.finish(recorded)?;
    analysis.context("the shadow run ended without an analysis")
}

/// Mirrors, waits, compares (see the module's steps). Errors say whether anything changed.
pub fn observe(ctx: &Deployment, options: &Options) -> Result<Analysis, Stopped> {
    options.check().stop_with(Outcome::Refused)?;
    let live = read_live(ctx).stop_with(Outcome::Failed)?;
    let state = live.state(&ctx.config);
    let Some(active) = live.split.active() else {
        return Err(anyhow::anyhow!(
            "a canary split is in progress ({}): a shadow compares the standby with the one color that takes all traffic; complete or cancel the canary first",
            live.split
        ))
        .stop_with(Outcome::Refused);
    };
    let candidate = active.other();
    let versions = (
        state.version(active).unwrap_or("?").to_owned(),
        state.version(candidate).unwrap_or("?").to_owned(),
    );
    // Each replica keeps its own journal: a side is every replica's, joined by shadow id.
    let (active_urls, candidate_urls) = (
        journals(ctx, active).stop_with(Outcome::Refused)?,
        journals(ctx, candidate).stop_with(Outcome::Refused)?,
    );
    for url in &candidate_urls {
        gates::healthy_version(&ctx.client, url)
            .with_context(|| {
                format!("the standby {candidate} is not healthy at {url}, so it cannot be shadowed (`cargo xtask up` starts it; `cargo xtask status` shows why)")
            })
            .stop_with(Outcome::Refused)?;
    }
    let marks = (
        journal_marks(&ctx.client, &active_urls).stop_with(Outcome::Refused)?,
        journal_marks(&ctx.client, &candidate_urls).stop_with(Outcome::Refused)?,
    );

    progress!(
        "shadow: mirroring {} % of prediction requests from {active} ({}) to {candidate} ({}) for up to {} s{}…",
        options.percent,
        versions.0,
        versions.1,
        options.duration.as_secs(),
        options
            .requests
            .map_or(String::new(), |n| format!(" or {n} compared requests"))
    );
    let shadow = Shadow::new(ctx.rt.host());
    let guard = MirrorGuard(&shadow);
    shadow
        .start(candidate, options.percent, ctx.config.balancer.buckets)
        .stop_with(Outcome::Failed)?;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    // Progress asks quickly: a standby that hangs must not hold the run past its duration.
    let quick =
        crate::http::client_with_timeout(Duration::from_millis(500)).stop_with(Outcome::Failed)?;
    loop {
        let answered: u64 = candidate_urls
            .iter()
            .zip(&marks.1)
            .map(|(url, &mark)| {
                journal_mark(&quick, url)
                    .map(|last| last.saturating_sub(mark))
                    .unwrap_or(0)
            })
            .sum();
        if started.elapsed() >= options.duration || options.requests.is_some_and(|n| answered >= n)
        {
            break;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            progress!(
                "shadow: {answered} copies answered by {candidate} after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
        thread::sleep(Duration::from_millis(250));
    }
    drop(guard);
    // Copies already on their way get the mirror's whole budget to be answered.
    thread::sleep(Duration::from_millis(ctx.config.shadow.timeout_ms + 100));
    let observed = started.elapsed();

    let mut active_records = Fetched {
        records: Vec::new(),
        evicted: 0,
    };
    for (url, &mark) in active_urls.iter().zip(&marks.0) {
        let fetched = fetch_patiently(&ctx.client, url, mark).stop_with(Outcome::Failed)?;
        active_records.add(fetched);
    }
    // A standby replica that hung or died during the run has answered nothing we can read: its
    // copies count as unanswered, and the report says so.
    let mut candidate_records = Fetched {
        records: Vec::new(),
        evicted: 0,
    };
    for (url, &mark) in candidate_urls.iter().zip(&marks.1) {
        match fetch_patiently(&ctx.client, url, mark) {
            Ok(fetched) => candidate_records.add(fetched),
            Err(err) => progress!(
                "shadow: {candidate}'s journal at {url} cannot be read ({err:#}); every copy sent there counts as unanswered"
            ),
        }
    }
    let joined = analysis::join(&active_records.records, &candidate_records.records);
    let replays = replay(
        &ctx.client,
        &active_urls[0],
        &joined.paired_active(FLOOR_SAMPLE),
    );
    let floor = analysis::noise_floor(&joined.paired_active(FLOOR_SAMPLE), &replays);
    let mut result = analysis::analyse(
        &joined,
        &analysis::Sides {
            active,
            active_version: versions.0,
            candidate,
            candidate_version: versions.1,
        },
        TOP,
    );
    result.floor = Some(floor);
    result.percent = options.percent;
    result.observed_secs = observed.as_secs_f64();
    result.evicted_active = active_records.evicted;
    result.evicted_candidate = candidate_records.evicted;
    Ok(result)
}

/// Stops the mirror when dropped, so no exit path leaves it on; says so when it cannot.
struct MirrorGuard<'a>(&'a Shadow<'a>);

impl Drop for MirrorGuard<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.0.stop() {
            progress!(
                "warning: could not stop the mirror: {err:#}; run `cargo xtask shadow --stop`"
            );
        }
    }
}

/// Stops a mirror left on (by an interrupted run, say).
pub fn stop(ctx: &Deployment) -> Result<Mirror> {
    let shadow = Shadow::new(ctx.rt.host());
    let before = shadow.reading()?;
    shadow.stop()?;
    Ok(before)
}

/// What nginx mirrors now, for `status`.
pub fn reading(ctx: &Deployment) -> Result<Mirror> {
    Shadow::new(ctx.rt.host()).reading()
}

/// The sequence number of the newest record in the journal at `url`.
/// Where `color`'s shadow journals are read: its own address, or each running replica's.
fn journals(ctx: &Deployment, color: Color) -> Result<Vec<String>> {
    if ctx.rt.desired_replicas(color)?.is_none() {
        return Ok(vec![ctx.rt.url(Part::Color(color))]);
    }
    let urls: Vec<String> = ctx
        .rt
        .replicas(color)?
        .into_iter()
        .filter(|r| r.running())
        .map(|r| r.url)
        .collect();
    if urls.is_empty() {
        bail!("{color} has no running replica");
    }
    Ok(urls)
}

/// Each journal's newest record number, in the order of `urls`.
fn journal_marks(client: &Client, urls: &[String]) -> Result<Vec<u64>> {
    urls.iter().map(|url| journal_mark(client, url)).collect()
}

fn journal_mark(client: &Client, url: &str) -> Result<u64> {
    Ok(page(client, url, 0, 0)?.last)
}

fn page(client: &Client, url: &str, after: u64, limit: usize) -> Result<Page> {
    let address = format!("{url}{JOURNAL}?after={after}&limit={limit}");
    let response = client
        .get(&address)
        .send()
        .with_context(|| format!("no answer from the shadow journal {address}"))?;
    let status = response.status();
    let body = response.text().unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the shadow journal {address} answered {status}: {} (does this color run a service version with shadow support? `cargo xtask build` and `cargo xtask up`)",
            body.trim()
        );
    }
    serde_json::from_str(&body).with_context(|| format!("read the shadow journal {address}"))
}

/// Every record after `mark`, and how many were evicted before they could be read.
struct Fetched {
    records: Vec<Record>,
    evicted: u64,
}

impl Fetched {
    /// Another replica's journal of the same side.
    fn add(&mut self, other: Fetched) {
        self.records.extend(other.records);
        self.evicted += other.evicted;
    }
}

/// [`fetch_since`], retried for a while: a color that was just slow or stopped may answer.
fn fetch_patiently(client: &Client, url: &str, mark: u64) -> Result<Fetched> {
    let deadline = Instant::now() + FETCH_PATIENCE;
    loop {
        match fetch_since(client, url, mark) {
            Ok(fetched) => return Ok(fetched),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn fetch_since(client: &Client, url: &str, mark: u64) -> Result<Fetched> {
    let mut records = Vec::new();
    let mut after = mark;
    let mut evicted = 0;
    loop {
        let page = page(client, url, after, PAGE)?;
        if after == mark && page.oldest > mark + 1 {
            evicted = page.oldest - mark - 1;
        }
        let n = page.records.len();
        records.extend(page.records);
        if n < PAGE || page.next <= after {
            break;
        }
        after = page.next;
    }
    Ok(Fetched { records, evicted })
}

/// Sends each record's inputs to the active color again (directly, not mirrored), as records
/// with the same ids, for the noise floor.
fn replay(client: &Client, url: &str, originals: &[Record]) -> Vec<Record> {
    originals
        .iter()
        .filter_map(|original| {
            let started = Instant::now();
            let response = client
                .post(format!("{url}/predict"))
                .json(&json!({ "instances": original.inputs }))
                .send()
                .ok()?;
            let status = response.status().as_u16();
            let body: Value = response.json().ok()?;
            let predictions = body["predictions"].as_array()?;
            let classes = predictions
                .iter()
                .map(|p| p["class"].as_u64().map(|c| c as u32))
                .collect::<Option<Vec<_>>>()?;
            let probabilities = predictions
                .iter()
                .map(|p| serde_json::from_value(p["probabilities"].clone()).ok())
                .collect::<Option<Vec<_>>>()?;
            Some(Record {
                seq: 0,
                id: original.id.clone(),
                route: "/predict".into(),
                status,
                latency_us: started.elapsed().as_micros() as u64,
                inputs: original.inputs.clone(),
                classes,
                probabilities,
            })
        })
        .collect()
}

/// The color a mirror reading names, for messages.
pub fn describe(mirror: &Mirror, buckets: u16) -> Option<(Color, u32)> {
    match mirror {
        Mirror::Off => None,
        Mirror::On { to, buckets: n } => {
            Some((*to, u32::from(split_of(*n, buckets).share(Color::Green))))
        }
    }
}
