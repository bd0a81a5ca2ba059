//! A run under load seen request by request: which color answered each request and when, and
//! when each operation ran, binned for a chart ([`super::timeline_svg`]).
//!
//! wrk only reports totals at the end; a picture of a switch needs every answer's time and the
//! color that served it (`X-Served-By`, set by the balancer), so this has its own small client
//! (the same keep-alive HTTP/1.1 exchange as `bench hang`'s).
//!
//! Steps of [`record`]:
//! 1. [`CLIENTS`] threads, one keep-alive connection each, post predictions in a loop without
//!    retries; each answer is kept as a [`Sample`]: its time since the start, its color, and
//!    whether it failed (non-2xx, I/O error, no answer within [`CLIENT_TIMEOUT`]);
//! 2. meanwhile each [`Op`] runs at its offset (the private xtask binary); its progress lines on
//!    stdout are time-stamped as they arrive and become the chart's [`Mark`]s ([`marks`]);
//! 3. the clients stop `tail` after the last operation ends (and not before `until`);
//! 4. [`bin`] counts the answers in [`BUCKET`]-wide buckets, per color, failed apart.
//!
//! A failed operation does not end the recording: the run is still charted, and the failure is
//! kept in [`Timeline::errors`] for the caller to report after writing the chart.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::wrk::BODY;
use crate::domain::Color;

/// Keep-alive clients: enough to keep both cores busy, few enough that each one's requests are
/// still a steady stream.
pub const CLIENTS: usize = 16;
/// The chart's resolution: short enough to show a switch's edge, long enough that each bucket
/// holds hundreds of answers.
pub const BUCKET: Duration = Duration::from_millis(250);
/// A request without an answer after this counts as failed (a switch takes milliseconds).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer (or failure), as a client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds from the start of the load to the end of the exchange.
    pub at: f64,
    /// The color in `X-Served-By`, if any.
    pub color: Option<Color>,
    pub failed: bool,
}

/// The answers that ended within one bucket. `secs` is the bucket's width: the last one is
/// usually cut short by the end of the load, and rates divide by what it really covered.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: f64,
    pub secs: f64,
    /// Good answers served by blue.
    pub blue: u64,
    /// Good answers served by green.
    pub green: u64,
    /// Good answers without a color (not through the routing balancer).
    pub other: u64,
    pub failed: u64,
}

impl Bucket {
    /// Good answers of every color.
    pub fn good(&self) -> u64 {
        self.blue + self.green + self.other
    }
}

/// An operation on the chart: a dashed line at `at` with `label`; it was done by `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub at: f64,
    pub until: f64,
    pub label: String,
}

/// Counts over the whole run.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub failed: u64,
    pub blue: u64,
    pub green: u64,
    pub other: u64,
}

/// Everything a chart and the report need about one recorded run.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// What ran, e.g. `switch, switch back, rollback under load`.
    pub title: String,
    /// How the load was made, for the chart's second line.
    pub note: String,
    pub buckets: Vec<Bucket>,
    pub marks: Vec<Mark>,
    pub totals: Totals,
    /// Operations that failed, with what they printed.
    pub errors: Vec<String>,
}

impl Timeline {
    /// What went wrong, one sentence each: failed requests, then failed operations.
    pub fn problems(&self) -> Vec<String> {
        let failed = (self.totals.failed > 0).then(|| {
            format!(
                "{} of {} requests failed during \"{}\"",
                self.totals.failed, self.totals.requests, self.title
            )
        });
        failed
            .into_iter()
            .chain(self.errors.iter().cloned())
            .collect()
    }
}

/// An operation: xtask with `args` (after the global flags), started `at` after the load.
pub struct Op {
    pub at: Duration,
    pub args: Vec<String>,
}

impl Op {
    pub fn new(at_secs: f64, args: &[&str]) -> Op {
        Op {
            at: Duration::from_secs_f64(at_secs),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }
}

/// Load against `addr` (`host:port`) while `ops` run through `xtask --config <config>`.
pub fn record(
    xtask: &Path,
    config: &Path,
    addr: &str,
    title: &str,
    ops: &[Op],
    until: Duration,
    tail: Duration,
) -> Result<Timeline> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, stop) = (addr.to_owned(), stop.clone());
            thread::spawn(move || client(&addr, &stop, start))
        })
        .collect();
    let (mut marks, mut errors) = (Vec::new(), Vec::new());
    let mut end = until;
    for op in ops {
        thread::sleep(op.at.saturating_sub(start.elapsed()));
        match run_op(xtask, config, &op.args, start) {
            Ok((op_marks, error)) => {
                marks.extend(op_marks);
                errors.extend(error);
            }
            Err(err) => errors.push(format!("{}: {err:#}", op.args.join(" "))),
        }
        end = end.max(start.elapsed() + tail);
    }
    thread::sleep(end.saturating_sub(start.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for thread in clients {
        samples.extend(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a timeline client panicked"))?,
        );
    }
    let span = start.elapsed().as_secs_f64();
    Ok(Timeline {
        title: title.to_owned(),
        note: format!(
            "{CLIENTS} keep-alive clients posting predictions through the balancer, no retries; \
             answers per {} ms by X-Served-By",
            BUCKET.as_millis()
        ),
        buckets: bin(&samples, BUCKET.as_secs_f64(), span),
        marks,
        totals: totals(&samples),
        errors,
    })
}

/// Runs one operation, time-stamping each line it prints; its marks, and what went wrong if it
/// failed.
fn run_op(
    xtask: &Path,
    config: &Path,
    args: &[String],
    since: Instant,
) -> Result<(Vec<Mark>, Option<String>)> {
    let began = since.elapsed().as_secs_f64();
    let mut child = Command::new(xtask)
        .args(["--runtime", "local", "--config"])
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start xtask {}", args.join(" ")))?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // xtask's stdout is line-buffered: each progress line arrives when it is printed.
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().context("no stdout pipe")?).lines() {
        lines.push((since.elapsed().as_secs_f64(), line?));
    }
    let status = child.wait().context("wait for xtask")?;
    let ended = since.elapsed().as_secs_f64();
    let stderr = errors.join().unwrap_or_default();
    let error = (!status.success()).then(|| {
        let out: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        format!(
            "`xtask {}` failed ({status}): {}\n{stderr}",
            args.join(" "),
            out.join("\n")
        )
    });
    Ok((marks(args, began, ended, &lines), error))
}

/// The marks of one operation from its time-stamped output: one per canary step (`step 1/4:
/// 10 % to green`, done at the following `split traffic` line), else one for the whole command,
/// named after the color it moved to (`switched to green …`, `rolled back to green …`).
pub fn marks(args: &[String], began: f64, ended: f64, lines: &[(f64, String)]) -> Vec<Mark> {
    let name = args.first().map_or("xtask", String::as_str);
    let mut steps = Vec::new();
    for (i, (at, line)) in lines.iter().enumerate() {
        let Some((_, step)) = line.strip_prefix("step ").and_then(|l| l.split_once(": ")) else {
            continue;
        };
        let until = lines[i + 1..]
            .iter()
            .take_while(|(_, l)| !l.starts_with("step "))
            .find(|(_, l)| l.starts_with("split traffic") || l.starts_with("switched to"))
            .map_or(*at, |(t, _)| *t);
        steps.push(Mark {
            at: *at,
            until,
            label: format!("{name} {}", step.replace(" to ", " → ")),
        });
    }
    if !steps.is_empty() {
        return steps;
    }
    let moved_to = lines.iter().find_map(|(_, l)| {
        let rest = l
            .strip_prefix("switched to ")
            .or_else(|| l.strip_prefix("rolled back to "))?;
        rest.split_whitespace().next()
    });
    vec![Mark {
        at: began,
        until: ended,
        label: moved_to.map_or(name.to_owned(), |color| format!("{name} → {color}")),
    }]
}

/// Counts `samples` in buckets of `width` seconds covering `span` seconds. A remainder shorter
/// than half a bucket joins the last full one (a few milliseconds' worth of answers would make a
/// meaningless spike or dip); answers after the span go in the last bucket.
pub fn bin(samples: &[Sample], width: f64, span: f64) -> Vec<Bucket> {
    if width <= 0.0 || span <= 0.0 {
        return Vec::new();
    }
    let full = (span / width).floor() as usize;
    let rest = span - full as f64 * width;
    let count = if full == 0 || rest >= width / 2.0 {
        full + 1
    } else {
        full
    };
    let mut buckets: Vec<Bucket> = (0..count)
        .map(|i| {
            let start = i as f64 * width;
            Bucket {
                start,
                secs: if i + 1 == count { span - start } else { width },
                ..Bucket::default()
            }
        })
        .collect();
    for s in samples {
        let i = ((s.at.max(0.0) / width) as usize).min(count - 1);
        let b = &mut buckets[i];
        match (s.failed, s.color) {
            (true, _) => b.failed += 1,
            (false, Some(Color::Blue)) => b.blue += 1,
            (false, Some(Color::Green)) => b.green += 1,
            (false, None) => b.other += 1,
        }
    }
    buckets
}

pub fn totals(samples: &[Sample]) -> Totals {
    let mut t = Totals {
        requests: samples.len() as u64,
        ..Totals::default()
    };
    for s in samples {
        match (s.failed, s.color) {
            (true, _) => t.failed += 1,
            (false, Some(Color::Blue)) => t.blue += 1,
            (false, Some(Color::Green)) => t.green += 1,
            (false, None) => t.other += 1,
        }
    }
    t
}

/// One keep-alive client until `stop`: every exchange's sample. A failed request is not
/// retried; the next one opens a fresh connection.
fn client(addr: &str, stop: &AtomicBool, start: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn = None;
    let request = format!(
        "POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    while !stop.load(Ordering::Relaxed) {
        let answer = match &mut conn {
            Some(stream) => exchange(stream, &request),
            None => connect(addr).and_then(|stream| exchange(conn.insert(stream), &request)),
        };
        let sample = |color, failed| Sample {
            at: start.elapsed().as_secs_f64(),
            color,
            failed,
        };
        match answer {
            Ok(answer) => {
                samples.push(sample(answer.color, !(200..300).contains(&answer.status)));
                if answer.close {
                    conn = None;
                }
            }
            Err(_) => {
                samples.push(sample(None, true));
                conn = None;
                // A refused connection fails at once: do not spin on it.
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    samples
}

fn connect(addr: &str) -> Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> Result<Answer> {
    conn.get_mut().write_all(request.as_bytes())?;
    read_answer(conn)
}

/// What the chart needs of one HTTP response.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    color: Option<Color>,
    /// The server closes the connection after this answer.
    close: bool,
}

/// Reads one HTTP/1.1 response, body included (by `Content-Length` or chunked), so the next
/// one can follow on the same connection.
fn read_answer(conn: &mut impl BufRead) -> Result<Answer> {
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line: {line:?}"))?;
    let (mut color, mut close, mut chunked, mut length) = (None, false, false, 0);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            bail!("the connection closed inside the headers");
        }
        if line == "\r\n" {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.to_ascii_lowercase().as_str() {
            "x-served-by" => color = value.parse().ok(),
            "connection" => close = value == "close",
            "transfer-encoding" => chunked = value.contains("chunked"),
            "content-length" => length = value.parse().context("bad Content-Length")?,
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            // The chunk and its CRLF; the last (empty) chunk ends with the empty trailer line.
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        conn.read_exact(&mut body)?;
    }
    Ok(Answer {
        status,
        color,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: f64, color: Option<Color>, failed: bool) -> Sample {
        Sample { at, color, failed }
    }

    #[test]
    fn timeline_bins_by_color_with_failures_apart() {
        let samples = [
            s(0.1, Some(Color::Blue), false),
            s(0.2, Some(Color::Blue), false),
            s(0.3, Some(Color::Green), false),
            s(0.4, Some(Color::Green), true),
            s(0.6, None, false),
            s(0.7, None, true),
            s(9.0, Some(Color::Green), false),
        ];
        let buckets = bin(&samples, 0.25, 0.9);
        assert_eq!(buckets.len(), 4);
        assert_eq!((buckets[0].blue, buckets[0].green), (2, 0));
        assert_eq!((buckets[1].green, buckets[1].failed), (1, 1));
        // The last bucket is only as wide as what was left of the run, and takes stragglers.
        assert!((buckets[3].secs - 0.15).abs() < 1e-9);
        assert_eq!((buckets[2].other, buckets[2].failed), (1, 1));
        assert_eq!(buckets[3].green, 1);
        // A sliver of a bucket at the end widens the one before instead.
        let merged = bin(&samples, 0.25, 0.8);
        assert_eq!(merged.len(), 3);
        assert!((merged[2].secs - 0.3).abs() < 1e-9);
        assert_eq!(buckets.iter().map(|b| b.good() + b.failed).sum::<u64>(), 7);
        assert_eq!(
            totals(&samples),
            Totals {
                requests: 7,
                failed: 2,
                blue: 2,
                green: 2,
                other: 1
            }
        );
        assert!(bin(&[], 0.25, 0.0).is_empty());
        assert_eq!(bin(&[], 0.25, 1.0).len(), 4);
    }

    fn lines(text: &[(f64, &str)]) -> Vec<(f64, String)> {
        text.iter().map(|&(t, l)| (t, l.to_owned())).collect()
    }

    #[test]
    fn timeline_marks_name_the_color_a_switch_moved_to() {
        let args = vec!["switch".to_owned()];
        let out = lines(&[
            (3.01, "switching to green (v1.1.0)…"),
            (3.04, "switched to green (v1.1.0) in 0.03 s"),
        ]);
        assert_eq!(
            marks(&args, 3.0, 3.05, &out),
            vec![Mark {
                at: 3.0,
                until: 3.05,
                label: "switch → green".into()
            }]
        );
        let back = lines(&[(9.0, "rolled back to blue (v1.0.0) in 0.02 s")]);
        assert_eq!(
            marks(&["rollback".into()], 8.9, 9.1, &back)[0].label,
            "rollback → blue"
        );
        assert_eq!(
            marks(&["rollback".into()], 1.0, 2.0, &[])[0].label,
            "rollback"
        );
    }

    #[test]
    fn timeline_marks_each_canary_step() {
        let args: Vec<String> = ["canary", "--steps", "10,100"].map(String::from).into();
        let out = lines(&[
            (
                3.0,
                "canary rollout of green (v1.1.0) over blue (v1.0.0): 10 % → 100 %",
            ),
            (3.1, "step 1/2: 10 % to green"),
            (3.2, "splitting traffic: 10 % green / 90 % blue…"),
            (3.3, "split traffic: 10 % green / 90 % blue in 0.02 s"),
            (6.3, "  held 3 s: 500 requests, 0 5xx"),
            (6.4, "step 2/2: 100 % to green"),
            (6.5, "split traffic: green (v1.1.0) in 0.02 s"),
            (6.6, "canary rollout done"),
        ]);
        let m = marks(&args, 2.9, 6.7, &out);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            Mark {
                at: 3.1,
                until: 3.3,
                label: "canary 10 % → green".into()
            }
        );
        assert_eq!((m[1].at, m[1].until), (6.4, 6.5));
        assert_eq!(m[1].label, "canary 100 % → green");
    }

    #[test]
    fn timeline_client_reads_answers_back_to_back() {
        let wire = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Served-By: green\r\n\r\nhello\
                    HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                    3\r\nabc\r\n0\r\n\r\n\
                    HTTP/1.1 200 OK\r\nx-served-by: blue\r\ncontent-length: 0\r\n\r\n";
        let mut conn = std::io::Cursor::new(wire.as_bytes());
        let want = |status, color, close| Answer {
            status,
            color,
            close,
        };
        assert_eq!(
            read_answer(&mut conn).unwrap(),
            want(200, Some(Color::Green), false)
        );
        assert_eq!(read_answer(&mut conn).unwrap(), want(502, None, true));
        assert_eq!(
            read_answer(&mut conn).unwrap(),
            want(200, Some(Color::Blue), false)
        );
        assert!(read_answer(&mut conn).is_err());
    }
}
