//! What a shadow run concludes: pass or fail against a required agreement ([`verdict`]), the
//! one-line summary for the operation log, and the number formats every rendering shares.

use super::*;
pub use crate::domain::text::thousands;

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
