//! Comparing the pairs row by row ([`analyse`]) and the active color against a replay of
//! itself ([`noise_floor`]): the numbers a shadow report is made of.

use super::*;

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
    /// The paired requests by the protocol they came in.
    pub paired_by_protocol: Protocols,
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

/// Requests by protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Protocols {
    /// `/predict` and the Open Inference Protocol's REST `infer`.
    pub http: u64,
    /// `Predict`, `PredictBatch` and the Open Inference Protocol's `ModelInfer`.
    pub grpc: u64,
}

impl Protocols {
    /// Counts `route`: a gRPC method's path starts with its package-qualified service
    /// (`/prediction.PredictionService/Predict`), an HTTP route never has a dot there.
    fn count(&mut self, route: &str) {
        let first = route
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if first.contains('.') {
            self.grpc += 1;
        } else {
            self.http += 1;
        }
    }
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

    let mut paired_by_protocol = Protocols::default();
    for pair in &joined.pairs {
        paired_by_protocol.count(&pair.active.route);
    }

    Analysis {
        active: sides.active,
        active_version: sides.active_version.clone(),
        candidate: sides.candidate,
        candidate_version: sides.candidate_version.clone(),
        percent: 0,
        observed_secs: 0.0,
        requests_paired: joined.pairs.len() as u64,
        paired_by_protocol,
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
