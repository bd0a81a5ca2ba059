//! The gRPC load generator of the tests: a few long-lived channels (one HTTP/2 connection
//! each), many concurrent `Predict` streams on each, until stopped.
//!
//! What it guarantees:
//! - every call is made exactly once; nothing retries (tonic does not retry, and each channel
//!   is one connection made at the start: a call on a broken connection fails and counts);
//! - every call counts, as succeeded (status OK, class `setosa`, a model version in the
//!   message equal to the `x-model-version` metadata) or as failed with its reason;
//! - per channel, the version of its latest answer is kept, so a test can wait until every
//!   long-lived channel sees the new version after a switch.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ml_proto::prediction::{prediction_service_client::PredictionServiceClient, PredictRequest};
use tonic::transport::{Channel, Endpoint};

/// What the balancer tells a client whose call died with its color (`xtask/src/nginx.rs`).
pub const CRASH_MESSAGE: &str =
    "balancer: the color serving this call failed before it answered; Predict is idempotent, retry it";

/// How many failure reasons a tally keeps in order.
const KEPT_ERRORS: usize = 20;
/// A row every model version answers with class 0 (setosa).
const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

/// What the load saw.
#[derive(Debug, Default)]
pub struct GrpcTally {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub reasons: BTreeMap<String, usize>,
    /// `x-model-version` of the successful answers, with how often.
    pub versions: BTreeMap<String, usize>,
    /// `x-served-by` of the successful answers, with how often.
    pub served_by: BTreeMap<String, usize>,
    /// The versions each channel saw, with how often.
    pub per_channel: Vec<BTreeMap<String, usize>>,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl GrpcTally {
    pub fn percentile(&self, percent: usize) -> Duration {
        super::percentile(&self.latencies, percent)
    }

    /// After a color crashed with calls in flight: panics unless every failure is the
    /// balancer's UNAVAILABLE for a call that died with its color, and there were at most
    /// `bound` of them (the calls in flight, plus one per kept-alive upstream connection).
    pub fn assert_only_crash_failures(&self, phase: &str, bound: usize) {
        let expected = format!("Unavailable: {CRASH_MESSAGE}");
        assert!(
            self.reasons.keys().all(|reason| *reason == expected),
            "{phase}: failures other than the crash's: {:?}",
            self.reasons
        );
        assert!(
            self.failed <= bound,
            "{phase}: {} calls failed, more than the {bound} that could have been in flight",
            self.failed
        );
        assert!(self.ok > 0, "{phase}: the load made no call at all");
    }

    /// Panics unless no call failed and some succeeded.
    pub fn assert_no_failures(&self, phase: &str) {
        assert_eq!(
            self.failed, 0,
            "{phase}: {} failed calls: {:?}; first: {:?}",
            self.failed, self.reasons, self.errors
        );
        assert!(self.ok > 0, "{phase}: the load made no call at all");
    }
}

impl fmt::Display for GrpcTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "grpc load: {} ok, {} failed in {secs:.1} s ({:.0} calls/s) over {} channels, p99 {:.1} ms, versions {:?}, served by {:?}",
            self.ok,
            self.failed,
            self.ok as f64 / secs,
            self.per_channel.len(),
            self.percentile(99).as_secs_f64() * 1000.0,
            self.versions,
            self.served_by
        )?;
        if self.failed > 0 {
            write!(f, ", failures {:?}", self.reasons)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Shared {
    tally: GrpcTally,
    /// The version of each channel's latest answer.
    latest: Vec<String>,
}

/// Continuous `Predict` load on long-lived channels.
pub struct GrpcLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
}

impl GrpcLoad {
    /// Connects `channels` channels to `url` (`http://host:port`) and runs `streams` calls at a
    /// time on each.
    pub fn start(url: &str, channels: usize, streams: usize) -> GrpcLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Mutex::new(Shared {
            tally: GrpcTally {
                per_channel: vec![BTreeMap::new(); channels],
                ..GrpcTally::default()
            },
            latest: vec![String::new(); channels],
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let endpoint = Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let connected: Vec<Channel> = runtime.block_on(async {
            let mut all = Vec::new();
            for _ in 0..channels {
                all.push(endpoint.connect().await.expect("connect a gRPC channel"));
            }
            all
        });
        let thread = {
            let (stop, ok, failed, shared) =
                (stop.clone(), ok.clone(), failed.clone(), shared.clone());
            thread::spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = Vec::new();
                    for (index, channel) in connected.into_iter().enumerate() {
                        for _ in 0..streams {
                            let client = PredictionServiceClient::new(channel.clone());
                            let (stop, ok, failed, shared) =
                                (stop.clone(), ok.clone(), failed.clone(), shared.clone());
                            tasks.push(tokio::spawn(caller(
                                index, client, stop, ok, failed, shared,
                            )));
                        }
                    }
                    for task in tasks {
                        task.await.expect("a gRPC load task panicked");
                    }
                });
            })
        };
        GrpcLoad {
            stop,
            ok,
            failed,
            shared,
            thread: Some(thread),
            started: Instant::now(),
        }
    }

    pub fn succeeded(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more calls have succeeded, or one more fails.
    pub fn wait_for_more(&self, n: usize) {
        let (target, failed) = (self.succeeded() + n, self.failed());
        super::wait_until(&format!("{n} more successful gRPC calls"), || {
            self.succeeded() >= target || self.failed() > failed
        });
    }

    /// Waits until `n` more calls have succeeded, whatever fails meanwhile.
    pub fn wait_for_successes(&self, n: usize) {
        let target = self.succeeded() + n;
        super::wait_until(&format!("{n} more successful gRPC calls"), || {
            self.succeeded() >= target
        });
    }

    /// Waits until the latest answer on every channel came from `version`, or a call fails.
    pub fn wait_every_channel_sees(&self, version: &str) {
        let failed = self.failed();
        super::wait_until(&format!("every gRPC channel answered by {version}"), || {
            self.failed() > failed || self.all_latest(version)
        });
    }

    /// Waits until the latest answer on every channel came from `version`, whatever fails on
    /// the way (a color crashing with calls in flight).
    pub fn wait_every_channel_answered_by(&self, version: &str) {
        super::wait_until(&format!("every gRPC channel answered by {version}"), || {
            self.all_latest(version)
        });
    }

    fn all_latest(&self, version: &str) -> bool {
        self.shared
            .lock()
            .unwrap()
            .latest
            .iter()
            .all(|v| v == version)
    }

    /// The versions each channel has seen so far.
    pub fn per_channel(&self) -> Vec<BTreeMap<String, usize>> {
        self.shared.lock().unwrap().tally.per_channel.clone()
    }

    /// Stops the calls, prints and returns what they saw.
    pub fn finish(mut self) -> GrpcTally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the gRPC load thread panicked");
        }
        let mut shared = self.shared.lock().unwrap();
        let mut tally = std::mem::take(&mut shared.tally);
        tally.elapsed = self.started.elapsed();
        println!("{tally}");
        tally
    }
}

impl Drop for GrpcLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `f` with gRPC load on `url`; returns what `f` returned and what the load saw.
pub fn under_grpc_load<R>(
    url: &str,
    channels: usize,
    streams: usize,
    f: impl FnOnce(&GrpcLoad) -> R,
) -> (R, GrpcTally) {
    let load = GrpcLoad::start(url, channels, streams);
    load.wait_for_more(100);
    let result = f(&load);
    (result, load.finish())
}

async fn caller(
    index: usize,
    mut client: PredictionServiceClient<Channel>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    shared: Arc<Mutex<Shared>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let request = PredictRequest {
            features: ROW.to_vec(),
        };
        let outcome = match client.predict(request).await {
            Ok(reply) => {
                let meta = |key: &str| {
                    reply
                        .metadata()
                        .get(key)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let (version, served_by) = (meta("x-model-version"), meta("x-served-by"));
                let message = reply.into_inner();
                if message.prediction != 0 || message.label != "setosa" {
                    Err(format!(
                        "wrong answer: class {} ({})",
                        message.prediction, message.label
                    ))
                } else if version.is_empty() || message.model_version != version {
                    Err(format!(
                        "version {:?} in the message, {version:?} in the metadata",
                        message.model_version
                    ))
                } else {
                    Ok((version, served_by))
                }
            }
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        };
        let elapsed = started.elapsed();
        let mut shared = shared.lock().unwrap();
        shared.tally.latencies.push(elapsed);
        match outcome {
            Ok((version, served_by)) => {
                ok.fetch_add(1, Ordering::Relaxed);
                shared.tally.ok += 1;
                *shared.tally.versions.entry(version.clone()).or_insert(0) += 1;
                *shared.tally.served_by.entry(served_by).or_insert(0) += 1;
                *shared.tally.per_channel[index]
                    .entry(version.clone())
                    .or_insert(0) += 1;
                shared.latest[index] = version;
            }
            Err(why) => {
                failed.fetch_add(1, Ordering::Relaxed);
                let tally = &mut shared.tally;
                tally.failed += 1;
                if tally.errors.len() < KEPT_ERRORS {
                    tally.errors.push(why.clone());
                }
                *tally.reasons.entry(why).or_insert(0) += 1;
            }
        }
    }
}
