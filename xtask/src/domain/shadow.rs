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

/// The two colors compared and the versions they serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sides {
    pub active: Color,
    pub active_version: String,
    pub candidate: Color,
    pub candidate_version: String,
}

/// Everything a shadow run measured. Fractions are 0..1, probabilities 0..1, latencies in ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// The color taking all traffic, whose requests were mirrored.
    pub active: Color,
    pub active_version: String,
    /// The standby that answered the copies.
    pub candidate: Color,
    pub candidate_version: String,
    /// Percent of prediction requests mirrored; filled by the caller (0: not said).
    pub percent: u8,
    /// How long the mirror ran, in seconds; filled by the caller (0: not said).
    pub observed_secs: f64,
    /// Requests both colors journaled exactly once.
    pub requests_paired: u64,
    /// Paired requests both colors answered with 2xx and the same number of rows.
    pub requests_compared: u64,
    /// Rows of the compared requests (a batch request has several).
    pub rows_compared: u64,
    /// `None` when no row was compared.
    pub agreement: Option<Agreement>,
    pub confusion: Confusion,
    /// The per-row difference is the largest |p_active − p_candidate| over the classes.
    /// `None` when no row was compared.
    pub probability_diff: Option<Diff>,
    /// Rows by per-row difference, in the buckets of [`BUCKET_EDGES`].
    pub histogram: Vec<Bucket>,
    /// Rows whose classes differ first, then the largest probability differences; rows that
    /// match exactly are never listed.
    pub top_disagreements: Vec<Disagreement>,
    /// Over all paired requests; `None` when none were paired.
    pub latency_ms: Option<Latency>,
    pub errors: Errors,
    /// Paired 2xx requests not compared because the two answers differ in shape: row counts
    /// differ, or a row is malformed (probability vectors of different lengths, a value that is
    /// not finite, a class index of [`MAX_CLASSES`] or more).
    pub shape_mismatch: u64,
    pub unpaired: Unpaired,
    /// Records the active's journal evicted during the run (before they could be fetched);
    /// filled by the caller from the pages. They could not be paired, so a large number means
    /// the journals are too small for the traffic.
    pub evicted_active: u64,
    /// The same for the candidate's journal.
    pub evicted_candidate: u64,
    /// Filled by the caller from [`noise_floor`]; `None` when no replay was made.
    pub floor: Option<Floor>,
}

/// Class agreement over the compared rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Rows whose classes match.
    pub rows_agreeing: u64,
    /// `rows_agreeing / rows_compared`.
    pub fraction: f64,
    /// The 95 % Wilson score interval: unlike the normal approximation it stays inside 0..1 and
    /// is honest near 100 %, where a good candidate lives.
    pub ci95_low: f64,
    pub ci95_high: f64,
}

/// Rows by the active's class (outer) and the candidate's class (inner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Class names by index (`class 3` beyond the iris names); at least the three iris classes.
    pub labels: Vec<String>,
    /// `counts[active_class][candidate_class]`.
    pub counts: Vec<Vec<u64>>,
}

/// Probability differences over rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Diff {
    pub mean: f64,
    pub max: f64,
}

/// One histogram bucket, `from <= d < to` (the last includes `to`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub from: f64,
    pub to: f64,
    pub rows: u64,
}

/// One row the colors answered differently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    pub id: String,
    /// The row's index within its request.
    pub row: usize,
    /// The row's input (empty when neither journal kept it).
    pub input: Vec<f64>,
    pub active_class: u32,
    pub candidate_class: u32,
    pub active_probabilities: Vec<f64>,
    pub candidate_probabilities: Vec<f64>,
    /// The largest |p_active − p_candidate| in this row.
    pub diff: f64,
    /// How many compared rows had this same input and these same classes (live traffic
    /// repeats itself; each distinct disagreement is listed once).
    pub occurrences: u64,
}

/// Latency percentiles of each color over the paired requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub active: Percentiles,
    pub candidate: Percentiles,
}

/// Nearest-rank percentiles, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// Paired requests where a color answered other than 2xx; such pairs are not compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Pairs with an error on either side.
    pub pairs: u64,
    /// Pairs where the active answered other than 2xx.
    pub active: u64,
    /// Pairs where the candidate answered other than 2xx.
    pub candidate: u64,
}

/// The noise floor: how much the active color disagrees with itself when the same requests are
/// sent again. Exactly zero for a deterministic model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Floor {
    pub requests_compared: u64,
    pub rows_compared: u64,
    /// Fraction of rows whose class changed on replay.
    pub class_disagreement: f64,
    /// Per-row probability differences between original and replay (zero when no rows).
    pub mean_diff: f64,
    pub max_diff: f64,
}

/// Whether the candidate differs from the active by more than the active from itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AboveFloor {
    /// The candidate's class disagreement exceeds the floor's.
    pub classes: bool,
    /// The candidate's mean per-row probability difference exceeds the floor's.
    pub probabilities: bool,
}

impl Analysis {
    /// "green v1.1.0": the candidate as the report names it.
    pub fn candidate_name(&self) -> String {
        format!("{} {}", self.candidate, self.candidate_version)
    }

    /// "blue v1.0.0": the active as the report names it.
    pub fn active_name(&self) -> String {
        format!("{} {}", self.active, self.active_version)
    }

    /// The fraction of compared rows whose classes differ, computed from counts so that full
    /// agreement gives exactly 0.
    pub fn class_disagreement(&self) -> Option<f64> {
        let agreement = self.agreement?;
        Some((self.rows_compared - agreement.rows_agreeing) as f64 / self.rows_compared as f64)
    }

    /// `None` when there is no floor, or either side compared no rows.
    pub fn above_floor(&self) -> Option<AboveFloor> {
        let floor = self.floor.filter(|floor| floor.rows_compared > 0)?;
        Some(AboveFloor {
            classes: self.class_disagreement()? > floor.class_disagreement,
            probabilities: self.probability_diff?.mean > floor.mean_diff,
        })
    }
}

/// Compares the pairs of `joined` between the two `sides`, listing at most `top_n`
/// disagreements. What only the caller knows starts empty for it to fill: `percent`,
/// `observed_secs`, `evicted_active`, `evicted_candidate` and `floor`.
pub fn analyse(joined: &Joined<'_>, sides: &Sides, top_n: usize) -> Analysis {
    let compared = compare_all(&joined.pairs);
    let rows = &compared.rows;
    let rows_compared = rows.len() as u64;

    let size = rows
        .iter()
        .map(|row| row.active_class.max(row.candidate_class) as usize + 1)
        .fold(LABELS.len(), usize::max);
    let mut counts = vec![vec![0u64; size]; size];
    for row in rows {
        counts[row.active_class as usize][row.candidate_class as usize] += 1;
    }
    let labels = (0..size)
        .map(|class| {
            LABELS
                .get(class)
                .map_or_else(|| format!("class {class}"), |l| (*l).to_owned())
        })
        .collect();

    let agreement = (rows_compared > 0).then(|| {
        let rows_agreeing = rows.iter().filter(|row| row.agrees()).count() as u64;
        let (ci95_low, ci95_high) = wilson(rows_agreeing, rows_compared);
        Agreement {
            rows_agreeing,
            fraction: rows_agreeing as f64 / rows_compared as f64,
            ci95_low,
            ci95_high,
        }
    });

    let mut histogram: Vec<Bucket> = BUCKET_EDGES
        .windows(2)
        .map(|edges| Bucket {
            from: edges[0],
            to: edges[1],
            rows: 0,
        })
        .collect();
    for row in rows {
        histogram[bucket_of(row.diff)].rows += 1;
    }

    let mut ranked: Vec<&RowCmp<'_>> = rows
        .iter()
        .filter(|row| !row.agrees() || row.diff > 0.0)
        .collect();
    ranked.sort_by(|a, b| {
        a.agrees()
            .cmp(&b.agrees())
            .then(b.diff.total_cmp(&a.diff))
            .then(a.pair.active.id.cmp(&b.pair.active.id))
            .then(a.row.cmp(&b.row))
    });
    let input_of = |row: &RowCmp<'_>| {
        let (a, c) = (row.pair.active, row.pair.candidate);
        a.inputs
            .get(row.row)
            .or_else(|| c.inputs.get(row.row))
            .cloned()
            .unwrap_or_default()
    };
    // One entry per distinct (input, classes), in rank order, counting its repeats.
    let mut distinct: Vec<(&RowCmp<'_>, u64)> = Vec::new();
    for row in ranked {
        let key = |r: &RowCmp<'_>| {
            let bits: Vec<u64> = input_of(r).iter().map(|x| x.to_bits()).collect();
            (bits, r.active_class, r.candidate_class)
        };
        let full = distinct.len() >= top_n;
        match distinct.iter_mut().find(|(seen, _)| key(seen) == key(row)) {
            Some((_, n)) => *n += 1,
            None if !full => distinct.push((row, 1)),
            None => {}
        }
    }
    let top_disagreements = distinct
        .into_iter()
        .map(|(row, occurrences)| {
            let (a, c) = (row.pair.active, row.pair.candidate);
            Disagreement {
                occurrences,
                id: a.id.clone(),
                row: row.row,
                input: a
                    .inputs
                    .get(row.row)
                    .or_else(|| c.inputs.get(row.row))
                    .cloned()
                    .unwrap_or_default(),
                active_class: row.active_class,
                candidate_class: row.candidate_class,
                active_probabilities: a.probabilities[row.row].clone(),
                candidate_probabilities: c.probabilities[row.row].clone(),
                diff: row.diff,
            }
        })
        .collect();

    let latency_ms = (!joined.pairs.is_empty()).then(|| {
        let side = |pick: for<'p> fn(&'p Pair<'_>) -> &'p Record| {
            let mut ms: Vec<f64> = joined
                .pairs
                .iter()
                .map(|pair| pick(pair).latency_us as f64 / 1000.0)
                .collect();
            ms.sort_by(f64::total_cmp);
            Percentiles {
                p50: nearest_rank(&ms, 0.50),
                p99: nearest_rank(&ms, 0.99),
            }
        };
        Latency {
            active: side(|pair| pair.active),
            candidate: side(|pair| pair.candidate),
        }
    });

    Analysis {
        active: sides.active,
        active_version: sides.active_version.clone(),
        candidate: sides.candidate,
        candidate_version: sides.candidate_version.clone(),
        percent: 0,
        observed_secs: 0.0,
        requests_paired: joined.pairs.len() as u64,
        requests_compared: compared.requests,
        rows_compared,
        agreement,
        confusion: Confusion { labels, counts },
        probability_diff: diff_of(rows),
        histogram,
        top_disagreements,
        latency_ms,
        errors: compared.errors,
        shape_mismatch: compared.shape_mismatch,
        unpaired: joined.unpaired,
        evicted_active: 0,
        evicted_candidate: 0,
        floor: None,
    }
}

/// The noise floor from the active's `originals` and `replays` of the same requests to the
/// active (sent again with the same ids). Only pairs both answered with 2xx in the same shape
/// count; with no such rows every number is 0 and `rows_compared` says so.
pub fn noise_floor(originals: &[Record], replays: &[Record]) -> Floor {
    let joined = join(originals, replays);
    let compared = compare_all(&joined.pairs);
    let rows = compared.rows.len() as u64;
    let disagreeing = compared.rows.iter().filter(|row| !row.agrees()).count() as u64;
    let diff = diff_of(&compared.rows).unwrap_or(Diff {
        mean: 0.0,
        max: 0.0,
    });
    Floor {
        requests_compared: compared.requests,
        rows_compared: rows,
        class_disagreement: if rows == 0 {
            0.0
        } else {
            disagreeing as f64 / rows as f64
        },
        mean_diff: diff.mean,
        max_diff: diff.max,
    }
}

/// Passes when at least one row was compared and the class agreement is at least
/// `min_agreement` (a fraction, 0..1). The point estimate is compared, not the interval: the
/// interval is reported so a reader can judge how much the number means, but a gate on its
/// lower bound would fail every short run of a perfect candidate.
pub fn verdict(analysis: &Analysis, min_agreement: Option<f64>) -> Result<(), String> {
    if let Some(min) = min_agreement {
        if !(0.0..=1.0).contains(&min) {
            return Err(format!(
                "the required agreement must be a fraction between 0 and 1 (0.95 for 95 %), got {min}"
            ));
        }
    }
    let Some(agreement) = analysis.agreement else {
        return Err(format!(
            "no rows compared: {} requests paired, {} with an error, {} with different shapes; \
             {} unanswered by the candidate, {} missing on the active, {} with duplicate ids",
            analysis.requests_paired,
            analysis.errors.pairs,
            analysis.shape_mismatch,
            analysis.unpaired.unanswered_by_candidate,
            analysis.unpaired.missing_on_active,
            analysis.unpaired.duplicate_ids,
        ));
    };
    match min_agreement {
        Some(min) if agreement.fraction < min => Err(format!(
            "class agreement {} % (95 % CI {}–{} %) over {} rows is below the required {} %",
            percent(agreement.fraction),
            percent(agreement.ci95_low),
            percent(agreement.ci95_high),
            thousands(analysis.rows_compared),
            percent(min)
        )),
        _ => Ok(()),
    }
}

/// One line for the operation log: agreement, probability difference, floor, and what was not
/// compared.
pub fn summary(a: &Analysis) -> String {
    let mut line = match (a.agreement, a.probability_diff) {
        (Some(agreement), Some(diff)) => format!(
            "{} vs {}: class agreement {} % over {} rows (95 % CI {}–{} %), mean max |Δp| {}",
            a.candidate_name(),
            a.active_name(),
            percent(agreement.fraction),
            thousands(a.rows_compared),
            percent(agreement.ci95_low),
            percent(agreement.ci95_high),
            prob(diff.mean)
        ),
        _ => format!(
            "{} vs {}: no rows compared",
            a.candidate_name(),
            a.active_name()
        ),
    };
    if let Some(floor) = a.floor.filter(|floor| floor.rows_compared > 0) {
        line += &format!(
            " (noise floor {} % / {})",
            percent(floor.class_disagreement),
            prob(floor.mean_diff)
        );
    }
    let unpaired = a.unpaired.unanswered_by_candidate
        + a.unpaired.missing_on_active
        + a.unpaired.duplicate_ids;
    for (count, what) in [
        (a.errors.pairs, "with errors"),
        (a.shape_mismatch, "of different shapes"),
        (unpaired, "unpaired"),
        (a.evicted_active + a.evicted_candidate, "evicted"),
    ] {
        if count > 0 {
            line += &format!(", {} {what}", thousands(count));
        }
    }
    line
}

/// The 95 % Wilson score interval of `successes` out of `n` (`(0, 1)` when `n` is 0).
pub fn wilson(successes: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// `fraction` as a percentage without the sign, to one decimal, with more decimals when one
/// would round a value that is not exactly 0 or 1 to "0.0" or "100.0" (99.97 % is not 100 %).
pub fn percent(fraction: f64) -> String {
    let value = fraction * 100.0;
    for decimals in 1..4 {
        let text = format!("{value:.decimals$}");
        let shown: f64 = text.parse().unwrap_or(value);
        let hides_edge = (shown >= 100.0 && fraction < 1.0) || (shown <= 0.0 && fraction > 0.0);
        if !hides_edge {
            return text;
        }
    }
    format!("{value:.4}")
}

/// A probability or difference: exact zero as `0`, tiny values in scientific notation (a
/// difference of 1e-7 is not "0.0000"), the rest to four decimals.
pub fn prob(p: f64) -> String {
    if p == 0.0 {
        "0".to_owned()
    } else if p.abs() < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// `n` with its thousands separated by spaces ("1 234"), as the reports print counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

/// The index into [`BUCKET_EDGES`] of a per-row difference.
fn bucket_of(diff: f64) -> usize {
    let last = BUCKET_EDGES.len() - 2;
    (0..last)
        .find(|&i| diff < BUCKET_EDGES[i + 1])
        .unwrap_or(last)
}

/// The nearest-rank percentile `p` of sorted `values` (not empty).
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One compared row.
struct RowCmp<'a> {
    pair: Pair<'a>,
    row: usize,
    active_class: u32,
    candidate_class: u32,
    diff: f64,
}

impl RowCmp<'_> {
    fn agrees(&self) -> bool {
        self.active_class == self.candidate_class
    }
}

/// What comparing every pair gave.
struct Compared<'a> {
    requests: u64,
    rows: Vec<RowCmp<'a>>,
    errors: Errors,
    shape_mismatch: u64,
}

fn compare_all<'a>(pairs: &[Pair<'a>]) -> Compared<'a> {
    let mut compared = Compared {
        requests: 0,
        rows: Vec::new(),
        errors: Errors::default(),
        shape_mismatch: 0,
    };
    for &pair in pairs {
        let (a, c) = (pair.active, pair.candidate);
        if !a.succeeded() || !c.succeeded() {
            compared.errors.pairs += 1;
            compared.errors.active += u64::from(!a.succeeded());
            compared.errors.candidate += u64::from(!c.succeeded());
            continue;
        }
        if !same_shape(a, c) {
            compared.shape_mismatch += 1;
            continue;
        }
        compared.requests += 1;
        compared.rows.extend((0..a.classes.len()).map(|row| RowCmp {
            pair,
            row,
            active_class: a.classes[row],
            candidate_class: c.classes[row],
            diff: row_diff(&a.probabilities[row], &c.probabilities[row]),
        }));
    }
    compared
}

/// Both answers have the same rows, each with a class in range and probability vectors of the
/// same length holding finite numbers.
fn same_shape(a: &Record, c: &Record) -> bool {
    let rows = a.classes.len();
    let well_formed = |r: &Record| {
        r.classes.len() == rows
            && r.probabilities.len() == rows
            && r.classes.iter().all(|&class| class < MAX_CLASSES)
            && r.probabilities.iter().flatten().all(|p| p.is_finite())
    };
    well_formed(a)
        && well_formed(c)
        && a.probabilities
            .iter()
            .zip(&c.probabilities)
            .all(|(pa, pc)| pa.len() == pc.len())
}

/// The largest |p_a − p_c| over the classes; exactly 0 for equal vectors.
fn row_diff(pa: &[f64], pc: &[f64]) -> f64 {
    pa.iter()
        .zip(pc)
        .map(|(a, c)| (a - c).abs())
        .fold(0.0, f64::max)
}

fn diff_of(rows: &[RowCmp<'_>]) -> Option<Diff> {
    (!rows.is_empty()).then(|| Diff {
        mean: rows.iter().map(|row| row.diff).sum::<f64>() / rows.len() as f64,
        max: rows.iter().map(|row| row.diff).fold(0.0, f64::max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, classes: &[u32], probabilities: &[[f64; 3]]) -> Record {
        Record {
            seq: 0,
            id: id.to_owned(),
            route: "/predict".to_owned(),
            status: 200,
            latency_us: 1000,
            inputs: classes.iter().map(|&c| vec![c as f64, 1.0]).collect(),
            classes: classes.to_vec(),
            probabilities: probabilities.iter().map(|p| p.to_vec()).collect(),
        }
    }

    const SETOSA: [f64; 3] = [0.9, 0.05, 0.05];
    const VERSICOLOR: [f64; 3] = [0.1, 0.8, 0.1];

    fn sides() -> Sides {
        Sides {
            active: Color::Blue,
            active_version: "v1.0.0".to_owned(),
            candidate: Color::Green,
            candidate_version: "v1.1.0".to_owned(),
        }
    }

    fn analysed(active: &[Record], candidate: &[Record]) -> Analysis {
        analyse(&join(active, candidate), &sides(), 5)
    }

    #[test]
    fn page_deserialises() {
        let page: Page = serde_json::from_str(
            r#"{"version":"v1.0.0","next":123,"last":123,"oldest":45,"dropped":44,"records":[
              {"seq":101,"id":"4f1c","route":"/predict","status":200,"latency_us":312,
               "inputs":[[5.1,3.5,1.4,0.2]],"classes":[0],"probabilities":[[0.97,0.02,0.01]]},
              {"seq":102,"id":"4f1d","route":"/predict","status":422,"latency_us":40}]}"#,
        )
        .unwrap();
        assert_eq!(page.version, "v1.0.0");
        assert_eq!(page.dropped, 44);
        assert_eq!(page.records[0].classes, [0]);
        assert_eq!(page.records[0].probabilities, [[0.97, 0.02, 0.01]]);
        assert!(!page.records[1].succeeded());
        assert!(page.records[1].classes.is_empty());
    }

    #[test]
    fn join_pairs_by_id_whatever_the_order() {
        let active = [
            record("a", &[0], &[SETOSA]),
            record("b", &[1], &[VERSICOLOR]),
        ];
        let candidate = [
            record("b", &[1], &[VERSICOLOR]),
            record("a", &[0], &[SETOSA]),
        ];
        let joined = join(&active, &candidate);
        assert_eq!(joined.pairs.len(), 2);
        for pair in &joined.pairs {
            assert_eq!(pair.active.id, pair.candidate.id);
        }
        assert_eq!(joined.pairs[0].active.id, "a");
        assert_eq!(joined.unpaired, Unpaired::default());
    }

    #[test]
    fn join_never_pairs_duplicate_ids() {
        let active = [
            record("dup", &[0], &[SETOSA]),
            record("dup", &[1], &[VERSICOLOR]),
            record("ok", &[0], &[SETOSA]),
            record("twice-on-candidate", &[0], &[SETOSA]),
        ];
        let candidate = [
            record("dup", &[1], &[VERSICOLOR]),
            record("ok", &[0], &[SETOSA]),
            record("twice-on-candidate", &[0], &[SETOSA]),
            record("twice-on-candidate", &[2], &[SETOSA]),
        ];
        let joined = join(&active, &candidate);
        let ids: Vec<&str> = joined.pairs.iter().map(|p| p.active.id.as_str()).collect();
        assert_eq!(ids, ["ok"]);
        assert_eq!(joined.unpaired.duplicate_ids, 2);
        assert_eq!(joined.unpaired.unanswered_by_candidate, 0);
        assert_eq!(joined.unpaired.missing_on_active, 0);
    }

    #[test]
    fn join_counts_unpaired_reasons() {
        let active = [
            record("both", &[0], &[SETOSA]),
            record("timed-out", &[0], &[SETOSA]),
            record("hung", &[0], &[SETOSA]),
        ];
        let candidate = [
            record("both", &[0], &[SETOSA]),
            record("evicted-on-active", &[0], &[SETOSA]),
        ];
        let joined = join(&active, &candidate);
        assert_eq!(joined.pairs.len(), 1);
        assert_eq!(
            joined.unpaired,
            Unpaired {
                unanswered_by_candidate: 2,
                missing_on_active: 1,
                duplicate_ids: 0
            }
        );
    }

    #[test]
    fn a_batch_pair_compares_per_row() {
        let active = [record(
            "batch",
            &[0, 1, 2],
            &[SETOSA, VERSICOLOR, VERSICOLOR],
        )];
        let candidate = [record(
            "batch",
            &[0, 1, 1],
            &[SETOSA, VERSICOLOR, VERSICOLOR],
        )];
        let analysis = analysed(&active, &candidate);
        assert_eq!(analysis.requests_compared, 1);
        assert_eq!(analysis.rows_compared, 3);
        let agreement = analysis.agreement.unwrap();
        assert_eq!(agreement.rows_agreeing, 2);
        assert_eq!(analysis.confusion.counts[2][1], 1);
        // The row whose class differs is listed, with its own input and probabilities.
        assert_eq!(analysis.top_disagreements.len(), 1);
        let top = &analysis.top_disagreements[0];
        assert_eq!((top.id.as_str(), top.row), ("batch", 2));
        assert_eq!(top.input, [2.0, 1.0]);
        assert_eq!((top.active_class, top.candidate_class), (2, 1));
    }

    #[test]
    fn shape_mismatches_and_errors_are_not_compared() {
        let mut failed = record("failed", &[], &[]);
        failed.status = 503;
        let mut both_failed = record("both-failed", &[], &[]);
        both_failed.status = 500;
        let active = [
            record("rows", &[0, 0], &[SETOSA, SETOSA]),
            record("failed", &[0], &[SETOSA]),
            both_failed.clone(),
            record("ok", &[0], &[SETOSA]),
        ];
        let candidate = [
            record("rows", &[0], &[SETOSA]),
            failed,
            both_failed,
            record("ok", &[0], &[SETOSA]),
        ];
        let analysis = analysed(&active, &candidate);
        assert_eq!(analysis.requests_paired, 4);
        assert_eq!(analysis.requests_compared, 1);
        assert_eq!(analysis.rows_compared, 1);
        assert_eq!(analysis.shape_mismatch, 1);
        assert_eq!(
            analysis.errors,
            Errors {
                pairs: 2,
                active: 1,
                candidate: 2
            }
        );
    }

    #[test]
    fn malformed_rows_are_shape_mismatches() {
        let mut nan = record("nan", &[0], &[SETOSA]);
        nan.probabilities[0][1] = f64::NAN;
        let huge = record("huge", &[1_000_000], &[SETOSA]);
        let mut four = record("four", &[0], &[SETOSA]);
        four.probabilities[0].push(0.0);
        let active = [
            record("nan", &[0], &[SETOSA]),
            record("huge", &[0], &[SETOSA]),
            record("four", &[0], &[SETOSA]),
        ];
        let analysis = analysed(&active, &[nan, huge, four]);
        assert_eq!(analysis.shape_mismatch, 3);
        assert_eq!(analysis.rows_compared, 0);
        assert_eq!(analysis.confusion.counts.len(), 3);
    }

    #[test]
    fn agreement_has_a_wilson_interval() {
        let (low, high) = wilson(90, 100);
        assert!((low - 0.8256).abs() < 5e-4, "{low}");
        assert!((high - 0.9448).abs() < 5e-4, "{high}");
        let (low, high) = wilson(100, 100);
        assert!(
            high <= 1.0 && (high - 1.0).abs() < 1e-12 && low > 0.96,
            "{low} {high}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));

        let mut active = Vec::new();
        let mut candidate = Vec::new();
        for i in 0..100 {
            let id = format!("r{i}");
            active.push(record(&id, &[0], &[SETOSA]));
            let class = if i < 90 { 0 } else { 1 };
            candidate.push(record(&id, &[class], &[SETOSA]));
        }
        let agreement = analysed(&active, &candidate).agreement.unwrap();
        assert_eq!(agreement.fraction, 0.9);
        assert_eq!((agreement.ci95_low, agreement.ci95_high), wilson(90, 100));
    }

    #[test]
    fn confusion_matrix_counts_active_against_candidate() {
        let active = [
            record("a", &[0, 1], &[SETOSA, VERSICOLOR]),
            record("b", &[2], &[SETOSA]),
            record("c", &[1], &[SETOSA]),
        ];
        let candidate = [
            record("a", &[0, 2], &[SETOSA, VERSICOLOR]),
            record("b", &[2], &[SETOSA]),
            record("c", &[4], &[SETOSA]),
        ];
        let confusion = analysed(&active, &candidate).confusion;
        assert_eq!(
            confusion.labels,
            ["setosa", "versicolor", "virginica", "class 3", "class 4"]
        );
        assert_eq!(confusion.counts[0], [1, 0, 0, 0, 0]);
        assert_eq!(confusion.counts[1], [0, 0, 1, 0, 1]);
        assert_eq!(confusion.counts[2], [0, 0, 1, 0, 0]);
        assert_eq!(confusion.counts.iter().flatten().sum::<u64>(), 4);
    }

    #[test]
    fn probability_differences_and_histogram() {
        let active = [
            record("same", &[0], &[SETOSA]),
            record("near", &[0], &[SETOSA]),
            record("far", &[0], &[SETOSA]),
        ];
        let candidate = [
            record("same", &[0], &[SETOSA]),
            record("near", &[0], &[[0.895, 0.055, 0.05]]),
            record("far", &[1], &[VERSICOLOR]),
        ];
        let analysis = analysed(&active, &candidate);
        let diff = analysis.probability_diff.unwrap();
        assert!((diff.max - 0.8).abs() < 1e-12);
        assert!((diff.mean - (0.005 + 0.8) / 3.0).abs() < 1e-9);
        let rows: Vec<u64> = analysis.histogram.iter().map(|b| b.rows).collect();
        assert_eq!(rows, [1, 1, 0, 0, 0, 0, 1]);
        assert_eq!(analysis.histogram.last().unwrap().to, 1.0);
        // The class change first, then the larger difference; the exact match is not listed.
        let top: Vec<&str> = analysis
            .top_disagreements
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(top, ["far", "near"]);
    }

    #[test]
    fn top_n_limits_the_list() {
        let active: Vec<Record> = (0..10)
            .map(|i| record(&format!("r{i}"), &[0], &[SETOSA]))
            .collect();
        let candidate: Vec<Record> = (0..10)
            .map(|i| record(&format!("r{i}"), &[1], &[VERSICOLOR]))
            .collect();
        let analysis = analyse(&join(&active, &candidate), &sides(), 3);
        // The same input and classes ten times: listed once, with its count.
        let listed: Vec<(&str, u64)> = analysis
            .top_disagreements
            .iter()
            .map(|d| (d.id.as_str(), d.occurrences))
            .collect();
        assert_eq!(listed, [("r0", 10)]);
        let distinct = |mut records: Vec<Record>| {
            for (i, r) in records.iter_mut().enumerate() {
                r.inputs = vec![vec![i as f64, 1.0]];
            }
            records
        };
        let (active, candidate) = (distinct(active), distinct(candidate));
        let analysis = analyse(&join(&active, &candidate), &sides(), 3);
        let ids: Vec<&str> = analysis
            .top_disagreements
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(ids, ["r0", "r1", "r2"]);
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut active = Vec::new();
        let mut candidate = Vec::new();
        for i in 1..=100u64 {
            let id = format!("r{i}");
            let mut a = record(&id, &[0], &[SETOSA]);
            a.latency_us = i * 1000;
            let mut c = a.clone();
            c.latency_us = i * 2000;
            active.push(a);
            candidate.push(c);
        }
        let latency = analysed(&active, &candidate).latency_ms.unwrap();
        assert_eq!(
            latency.active,
            Percentiles {
                p50: 50.0,
                p99: 99.0
            }
        );
        assert_eq!(
            latency.candidate,
            Percentiles {
                p50: 100.0,
                p99: 198.0
            }
        );
        assert_eq!(analysed(&[], &[]).latency_ms, None);
    }

    #[test]
    fn the_floor_is_exactly_zero_for_identical_records() {
        let originals = [
            record("a", &[0, 1], &[[0.1, 0.2, 0.7], [1.0 / 3.0, 0.3, 0.1]]),
            record("b", &[2], &[[0.123_456_789, 0.2, 0.676_543_211]]),
        ];
        let floor = noise_floor(&originals, &originals.clone());
        assert_eq!(floor.rows_compared, 3);
        assert_eq!(floor.class_disagreement.to_bits(), 0.0f64.to_bits());
        assert_eq!(floor.mean_diff.to_bits(), 0.0f64.to_bits());
        assert_eq!(floor.max_diff.to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn above_floor_compares_the_candidate_with_the_floor() {
        let active = [record("a", &[0], &[SETOSA]), record("b", &[0], &[SETOSA])];
        let candidate = [
            record("a", &[0], &[SETOSA]),
            record("b", &[1], &[VERSICOLOR]),
        ];
        let mut analysis = analysed(&active, &candidate);
        assert_eq!(analysis.above_floor(), None);
        analysis.floor = Some(noise_floor(&active, &active));
        assert_eq!(
            analysis.above_floor(),
            Some(AboveFloor {
                classes: true,
                probabilities: true
            })
        );
        let mut same = analysed(&active, &active);
        same.floor = Some(noise_floor(&active, &active));
        assert_eq!(same.class_disagreement(), Some(0.0));
        assert_eq!(
            same.above_floor(),
            Some(AboveFloor {
                classes: false,
                probabilities: false
            })
        );
    }

    #[test]
    fn verdict_says_what_was_measured_and_required() {
        let mut active = Vec::new();
        let mut candidate = Vec::new();
        for i in 0..512 {
            let id = format!("r{i}");
            active.push(record(&id, &[0], &[SETOSA]));
            let class = if i < 317 { 0 } else { 1 };
            candidate.push(record(&id, &[class], &[SETOSA]));
        }
        let analysis = analysed(&active, &candidate);
        assert_eq!(verdict(&analysis, None), Ok(()));
        assert_eq!(verdict(&analysis, Some(0.6)), Ok(()));
        assert_eq!(
            verdict(&analysis, Some(0.95)).unwrap_err(),
            "class agreement 61.9 % (95 % CI 57.6–66.0 %) over 512 rows is below the required 95.0 %"
        );
        let err = verdict(&analysis, Some(95.0)).unwrap_err();
        assert!(err.contains("between 0 and 1"), "{err}");

        let mut failed = record("x", &[], &[]);
        failed.status = 500;
        let empty = analysed(std::slice::from_ref(&failed), &[failed.clone()]);
        let err = verdict(&empty, None).unwrap_err();
        assert!(
            err.starts_with("no rows compared: 1 requests paired, 1 with an error"),
            "{err}"
        );
    }

    #[test]
    fn paired_active_skips_errors_and_unpaired() {
        let mut failed = record("failed", &[], &[]);
        failed.status = 500;
        let active = [
            record("failed", &[0], &[SETOSA]),
            record("alone", &[0], &[SETOSA]),
            record("a", &[0], &[SETOSA]),
            record("b", &[0], &[SETOSA]),
        ];
        let candidate = [
            failed,
            record("a", &[0], &[SETOSA]),
            record("b", &[0], &[SETOSA]),
        ];
        let joined = join(&active, &candidate);
        let ids: Vec<String> = joined.paired_active(1).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(joined.paired_active(10).len(), 2);
    }

    #[test]
    fn summary_is_one_line_with_the_numbers() {
        let active = [record("a", &[0], &[SETOSA]), record("b", &[0], &[SETOSA])];
        let candidate = [record("a", &[1], &[VERSICOLOR])];
        let mut analysis = analysed(&active, &candidate);
        analysis.floor = Some(noise_floor(&active, &active));
        analysis.evicted_candidate = 4;
        let line = summary(&analysis);
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("green v1.1.0 vs blue v1.0.0: class agreement 0.0 % over 1 rows"),
            "{line}"
        );
        assert!(line.contains("(noise floor 0.0 % / 0)"), "{line}");
        assert!(line.ends_with(", 1 unpaired, 4 evicted"), "{line}");
    }

    #[test]
    fn percent_never_rounds_to_an_edge_it_did_not_reach() {
        assert_eq!(percent(0.973), "97.3");
        assert_eq!(percent(1.0), "100.0");
        assert_eq!(percent(0.0), "0.0");
        assert_eq!(percent(0.9997), "99.97");
        assert_eq!(percent(0.0001), "0.01");
    }

    #[test]
    fn prob_shows_exact_zero_and_tiny_differences() {
        assert_eq!(prob(0.0), "0");
        assert_eq!(prob(1.5e-7), "1.5e-7");
        assert_eq!(prob(0.88), "0.8800");
    }

    #[test]
    fn thousands_are_spaced() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1 234");
        assert_eq!(thousands(1_234_567), "1 234 567");
    }

    #[test]
    fn analysis_serialises_numbers_as_numbers() {
        let active = [record("a", &[0], &[SETOSA])];
        let json = serde_json::to_value(analysed(&active, &active)).unwrap();
        assert_eq!(json["active"], "blue");
        assert_eq!(json["candidate_version"], "v1.1.0");
        assert_eq!(json["rows_compared"], 1);
        assert_eq!(json["agreement"]["fraction"], 1.0);
        assert_eq!(json["confusion"]["counts"][0][0], 1);
        assert_eq!(json["histogram"][0]["rows"], 1);
        assert_eq!(json["unpaired"]["unanswered_by_candidate"], 0);
        assert_eq!(json["evicted_active"], 0);
        assert!(json["floor"].is_null());
    }
}
