//! The one load generator of the tests: keep-alive clients posting predictions through the
//! balancer until stopped.
//!
//! What it guarantees:
//! - every request is sent exactly once, on a plain HTTP/1.1 connection over `TcpStream`
//!   ([`super::http`]); there is no pool and no retry, so nothing is resent behind the test's
//!   back;
//! - every request counts, either as succeeded (status 200 and the expected prediction) or as
//!   failed, with its reason: a connection refused or reset, a write or read error or timeout,
//!   a status other than 200, a malformed response or a wrong answer;
//! - a request written on a kept-alive connection that the balancer closed (as nginx does with
//!   idle connections when it reloads or its worker exits) and that got no response is a
//!   failure. The next request goes out on a new connection;
//! - a connection is given up without a failure only after a complete response that announced
//!   it (`Connection: close`), which every client honours: the close is counted in
//!   [`Tally::polite_closes`].

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::http::{self, Balancer};

/// A prediction every model version answers `setosa`.
const PREDICT_BODY: &str = r#"{"features":[5.1,3.5,1.4,0.2]}"#;
const EXPECTED_CLASS: &str = "\"setosa\"";

/// One request of a [`Workload`]: its body, a text its answer must contain, and extra header
/// lines (`Name: value\r\n`).
#[derive(Debug, Clone)]
pub struct Planned {
    pub body: String,
    pub expect: String,
    pub headers: String,
}

/// What the clients send: each client cycles through the requests, starting at its own offset.
#[derive(Debug, Clone)]
pub struct Workload(pub Vec<Planned>);

impl Default for Workload {
    /// The golden setosa row, which every model version answers alike.
    fn default() -> Workload {
        Workload(vec![Planned {
            body: PREDICT_BODY.into(),
            expect: EXPECTED_CLASS.into(),
            headers: String::new(),
        }])
    }
}
/// How many failure reasons a tally keeps in order (all are counted in `reasons`).
const KEPT_ERRORS: usize = 20;

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    /// The first failures, in the order they happened (per connection thread).
    pub errors: Vec<String>,
    /// Every failure reason, with how often.
    pub reasons: BTreeMap<String, usize>,
    /// `X-Model-Version` of the successful responses, with how often.
    pub versions: BTreeMap<String, usize>,
    /// `X-Served-By` of the successful responses, with how often.
    pub served_by: BTreeMap<String, usize>,
    /// Connections opened.
    pub connections: usize,
    /// Connections given up after a response that announced `Connection: close`.
    pub polite_closes: usize,
    pub elapsed: Duration,
    /// How long each request took, succeeded or failed.
    pub latencies: Vec<Duration>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(why.clone());
        }
        *self.reasons.entry(why).or_insert(0) += 1;
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.connections += other.connections;
        self.polite_closes += other.polite_closes;
        self.errors.extend(other.errors);
        self.errors.truncate(KEPT_ERRORS);
        self.latencies.extend(other.latencies);
        for (into, from) in [
            (&mut self.reasons, other.reasons),
            (&mut self.versions, other.versions),
            (&mut self.served_by, other.served_by),
        ] {
            for (key, n) in from {
                *into.entry(key).or_insert(0) += n;
            }
        }
    }

    /// The slowest request.
    pub fn max_latency(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    /// The latency below which `percent` % of the requests took.
    pub fn percentile(&self, percent: usize) -> Duration {
        super::percentile(&self.latencies, percent)
    }

    /// Panics unless no request failed and some succeeded.
    pub fn assert_no_failures(&self, phase: &str) {
        assert_eq!(
            self.failed, 0,
            "{phase}: {} failed requests: {:?}; first: {:?}",
            self.failed, self.reasons, self.errors
        );
        assert!(self.ok > 0, "{phase}: the load made no request at all");
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "load: {} ok, {} failed in {secs:.1} s ({:.0} req/s) over {} connections \
             ({} closed politely by the balancer), p99 {:.1} ms, max {:.1} ms, versions {:?}, served by {:?}",
            self.ok,
            self.failed,
            self.ok as f64 / secs,
            self.connections,
            self.polite_closes,
            self.percentile(99).as_secs_f64() * 1000.0,
            self.max_latency().as_secs_f64() * 1000.0,
            self.versions,
            self.served_by
        )?;
        if self.failed > 0 {
            write!(f, ", failures {:?}", self.reasons)?;
        }
        Ok(())
    }
}

/// Continuous keep-alive `POST /predict` load through a balancer.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Tally>>,
    started: Instant,
}

impl Load {
    /// Starts `connections` clients, each on its own keep-alive connection.
    pub fn start(balancer: &Balancer, connections: usize) -> Load {
        Load::start_with(balancer, connections, Workload::default())
    }

    /// [`Load::start`] sending `workload`.
    pub fn start_with(balancer: &Balancer, connections: usize, workload: Workload) -> Load {
        let workload = Arc::new(workload);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..connections)
            .map(|n| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (addr, workload) = (balancer.addr.clone(), workload.clone());
                thread::spawn(move || client(&addr, &workload, n, &stop, &ok, &failed))
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
            started: Instant::now(),
        }
    }

    /// Requests succeeded so far.
    pub fn succeeded(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Requests failed so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have succeeded (so load really ran across an event), or
    /// until one fails.
    pub fn wait_for_more(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        super::wait_until(&format!("{n} more successful requests"), || {
            self.ok.load(Ordering::Relaxed) >= target || self.failed() > 0
        });
    }

    /// Stops the clients, prints and returns what they saw.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for thread in self.threads.drain(..) {
            total.add(thread.join().expect("a load thread panicked"));
        }
        total.elapsed = self.started.elapsed();
        println!("{total}");
        total
    }
}

impl Drop for Load {
    /// A test that panics with load running stops it too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts `connections` clients through `balancer`, waits for 200 successful requests, runs
/// `during` (which may wait for more), then stops the load: what `during` returned and the tally.
pub fn under_load<T>(
    balancer: &Balancer,
    connections: usize,
    during: impl FnOnce(&Load) -> T,
) -> (T, Tally) {
    let load = Load::start(balancer, connections);
    load.wait_for_more(200);
    let result = during(&load);
    (result, load.finish())
}

/// [`under_load`] sending `workload`.
pub fn under_load_with<T>(
    balancer: &Balancer,
    connections: usize,
    workload: Workload,
    during: impl FnOnce(&Load) -> T,
) -> (T, Tally) {
    let load = Load::start_with(balancer, connections, workload);
    load.wait_for_more(200);
    let result = during(&load);
    (result, load.finish())
}

/// One client: a request at a time on its connection, a new connection only after a failure or
/// an announced close.
fn client(
    addr: &str,
    workload: &Workload,
    offset: usize,
    stop: &AtomicBool,
    ok: &AtomicUsize,
    failed: &AtomicUsize,
) -> Tally {
    let mut tally = Tally::default();
    let mut next = offset;
    let mut conn = None;
    // Requests sent on the current connection (so a failure tells whether it was reused).
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let stream = match &mut conn {
            Some(stream) => stream,
            None => match http::connect(addr) {
                Ok(stream) => {
                    tally.connections += 1;
                    sent = 0;
                    conn.insert(stream)
                }
                Err(e) => {
                    tally.fail(e);
                    failed.fetch_add(1, Ordering::Relaxed);
                    // Counted; do not spin on a balancer that is down.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        sent += 1;
        let planned = &workload.0[next % workload.0.len()];
        next += 1;
        let began = Instant::now();
        let exchanged = http::exchange_with(
            stream,
            addr,
            "POST",
            "/predict",
            Some(&planned.body),
            false,
            &planned.headers,
        );
        tally.latencies.push(began.elapsed());
        let outcome = match exchanged {
            Err(e) => {
                // Whatever state the connection is in, the next request gets a new one.
                conn = None;
                Err(if sent > 1 {
                    format!("{e} (on a kept-alive connection)")
                } else {
                    format!("{e} (first request on a new connection)")
                })
            }
            Ok(response) => {
                if response.closes {
                    tally.polite_closes += 1;
                    conn = None;
                }
                let text = response.text();
                if response.status != 200 {
                    Err(format!("status {}: {}", response.status, cut(text.trim())))
                } else if !text.contains(&planned.expect) {
                    Err(format!("wrong answer: {}", cut(text.trim())))
                } else {
                    Ok(response)
                }
            }
        };
        match outcome {
            Ok(response) => {
                tally.ok += 1;
                ok.fetch_add(1, Ordering::Relaxed);
                for (into, name) in [
                    (&mut tally.versions, "x-model-version"),
                    (&mut tally.served_by, "x-served-by"),
                ] {
                    *into.entry(response.header(name).to_owned()).or_insert(0) += 1;
                }
            }
            Err(why) => {
                tally.fail(why);
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}

/// At most 200 characters of a response body, for a failure reason.
fn cut(text: &str) -> &str {
    text.char_indices()
        .nth(200)
        .map_or(text, |(i, _)| &text[..i])
}
