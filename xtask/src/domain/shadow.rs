//! Judging a shadow run, purely: nginx mirrors live prediction requests from the active color to
//! the candidate, each color journals what it answered, and this module
//! 1. reads a journal page ([`Page`], [`Record`]);
//! 2. pairs the two journals by shadow id ([`join`]), counting what could not be paired and why;
//! 3. compares the pairs row by row ([`analyse`]): class agreement with a 95 % Wilson interval,
//!    the confusion matrix, probability differences and their histogram, the largest
//!    disagreements, latency percentiles, errors;
//! 4. measures the noise floor, the active color against a replay of itself ([`noise_floor`]),
//!    so a candidate's differences can be told apart from the model's own nondeterminism;
//! 5. decides whether the candidate passes ([`verdict`]).
//!
//! `shadow_render` turns an [`Analysis`] into text, Markdown and SVG; it serialises as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Color;

/// The class names of the iris model, by class index.
pub const LABELS: [&str; 3] = ["setosa", "versicolor", "virginica"];

/// A class index at or above this is malformed: the confusion matrix is sized from the data,
/// and a hostile or corrupt journal must not make it huge.
pub const MAX_CLASSES: u32 = 64;

/// The edges of the histogram of per-row probability differences. Roughly logarithmic, because
/// a healthy candidate's differences crowd near zero and a broken one's spread up to 1; the last
/// bucket includes 1.
pub const BUCKET_EDGES: [f64; 8] = [0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The z score of a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// What one color answered to one mirrored request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The journal's sequence number (rises per color; it does not pair records).
    #[serde(default)]
    pub seq: u64,
    /// The shadow id: both copies of a mirrored request carry the same one.
    pub id: String,
    #[serde(default)]
    pub route: String,
    pub status: u16,
    #[serde(default)]
    pub latency_us: u64,
    /// One entry per row; may be empty when the status is an error.
    #[serde(default)]
    pub inputs: Vec<Vec<f64>>,
    #[serde(default)]
    pub classes: Vec<u32>,
    #[serde(default)]
    pub probabilities: Vec<Vec<f64>>,
}

impl Record {
    /// 2xx: the color answered with predictions.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One page of a color's journal, as its journal endpoint serves it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Page {
    /// The model version that color serves.
    pub version: String,
    /// The sequence number to ask for next.
    pub next: u64,
    /// The newest sequence number written.
    pub last: u64,
    /// The oldest sequence number still kept.
    pub oldest: u64,
    /// How many records the journal has evicted since it started (it is a bounded ring).
    pub dropped: u64,
    pub records: Vec<Record>,
}

/// Both colors' records for one shadow id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair<'a> {
    pub active: &'a Record,
    pub candidate: &'a Record,
}

/// The journals paired by id, and what could not be paired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined<'a> {
    /// In the order of the active journal.
    pub pairs: Vec<Pair<'a>>,
    pub unpaired: Unpaired,
}

impl Joined<'_> {
    /// The active's records of the first `n` pairs both colors answered with 2xx: the requests
    /// to replay to the active for the [`noise_floor`] (replaying errors would measure nothing).
    pub fn paired_active(&self, n: usize) -> Vec<Record> {
        self.pairs
            .iter()
            .filter(|pair| pair.active.succeeded() && pair.candidate.succeeded())
            .take(n)
            .map(|pair| pair.active.clone())
            .collect()
    }
}

/// Requests that could not be paired, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Unpaired {
    /// Only the active color journaled it: the mirror timed out, the candidate was down or hung,
    /// or the candidate's record was evicted before it was fetched.
    pub unanswered_by_candidate: u64,
    /// Only the candidate journaled it: the active's record was evicted, or the request reached
    /// the candidate some other way.
    pub missing_on_active: u64,
    /// Ids that occur more than once in either journal. Ids come over the network, so such
    /// records are left out entirely rather than risk comparing two different requests.
    pub duplicate_ids: u64,
}

/// Pairs `active` and `candidate` records by shadow id; see [`Unpaired`] for what is left out.
pub fn join<'a>(active: &'a [Record], candidate: &'a [Record]) -> Joined<'a> {
    let by_id = |records: &'a [Record]| {
        let mut map: BTreeMap<&'a str, Vec<&'a Record>> = BTreeMap::new();
        for record in records {
            map.entry(record.id.as_str()).or_default().push(record);
        }
        map
    };
    let active_ids = by_id(active);
    let candidate_ids = by_id(candidate);
    let single = |map: &BTreeMap<&str, Vec<&'a Record>>, id: &str| match map.get(id) {
        Some(records) if records.len() == 1 => Some(records[0]),
        _ => None,
    };

    let mut unpaired = Unpaired::default();
    let duplicated = |id: &str| {
        active_ids.get(id).is_some_and(|r| r.len() > 1)
            || candidate_ids.get(id).is_some_and(|r| r.len() > 1)
    };
    let mut ids: Vec<&str> = active_ids
        .keys()
        .chain(candidate_ids.keys())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        if duplicated(id) {
            unpaired.duplicate_ids += 1;
        } else if !candidate_ids.contains_key(id) {
            unpaired.unanswered_by_candidate += 1;
        } else if !active_ids.contains_key(id) {
            unpaired.missing_on_active += 1;
        }
    }
    let pairs = active
        .iter()
        .filter_map(|record| {
            let id = record.id.as_str();
            Some(Pair {
                active: single(&active_ids, id)?,
                candidate: single(&candidate_ids, id)?,
            })
        })
        .collect();
    Joined { pairs, unpaired }
}

mod analysis;
mod judge;
#[cfg(test)]
mod tests;

pub use analysis::*;
pub use judge::*;
