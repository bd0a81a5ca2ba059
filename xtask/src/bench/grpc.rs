//! `cargo xtask bench grpc`: gRPC unary `Predict` against HTTP/JSON `POST /predict`, direct
//! and through nginx, in one run; then failed RPCs while switching.
//!
//! Steps (a private local deployment on free ports under `target/bench/grpc`):
//! 1. `up` blue and green behind the balancer (h2c on `balancer.grpc_port`, `grpc_pass`);
//! 2. two alternating rounds, keeping each path's best (the machine is shared): gRPC direct to
//!    blue, gRPC through the balancer, wrk direct to blue, wrk through the balancer;
//! 3. [`SWITCHES`] switches (to green and back) spread over a gRPC run through the balancer;
//! 4. print the section, write it under "gRPC" in `docs/benchmarks.md`; `down` and remove the
//!    folder on every exit path.
//!
//! The gRPC load ([`GrpcRun`]; ghz is not installable here): [`CHANNELS`] channels, each one
//! HTTP/2 connection made at the start, `--connections` callers spread over them, one call at
//! a time each. Nothing retries: a call on a broken connection fails and counts, with its
//! reason. The [`WARMUP`] is not recorded; each caller keeps its own tally (no lock on the hot
//! path), merged when the run ends.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ml_proto::prediction::{prediction_service_client::PredictionServiceClient, PredictRequest};
use tonic::transport::{Channel, Endpoint};
use xshell::{cmd, Shell};

use super::{
    report,
    wrk::{self, Wrk, WrkRun},
};
use crate::{flags, host, util::project_root};

const SECTION: &str = "## gRPC";
/// Channels (HTTP/2 connections) the calls are spread over.
const CHANNELS: usize = 4;
/// The load's tokio worker threads: 2, as many as wrk's threads, so both protocols' clients get
/// the same budget. Against 1 worker on this 2-core machine the rates were within run-to-run
/// noise (direct 18.7k–20.6k against 18.8k–19.3k calls/s, through nginx 6.9k–7.0k against
/// 6.7k–7.2k), so 1 worker does not leave the server side measurably more room.
const WORKERS: usize = 2;
/// Calls at the start of a run that are not recorded (connections warm, buffers grown).
const WARMUP: Duration = Duration::from_secs(1);
/// A call that takes longer fails (`DeadlineExceeded`) instead of hanging the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Switches (to the standby, so alternately to green and back) under gRPC load.
const SWITCHES: usize = 20;
/// A row every model version answers with class 0 (setosa); the same as [`wrk::BODY`].
const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    host::ensure_commands(sh, &[host::NGINX, host::WRK])?;
    if cfg!(debug_assertions) {
        return rerun_optimised(sh, bench);
    }
    let private = super::Private::new("grpc", "")?;
    let (dir, config_path, global) = (&private.dir, &private.config_path, &private.global);
    // A private copy of this binary for the timed `switch` runs: a rebuild of `target/` during
    // the benchmark must not pull it away.
    fs::copy("/proc/self/exe", dir.join("xtask")).context("copy the xtask binary")?;
    let result = measure(sh, global, bench, dir, config_path);
    private.remove(sh);
    let report = result?;
    crate::say!("{report}");
    report::write_doc(None, SECTION, &report)?;
    crate::say!("bench grpc: wrote the \"gRPC\" section of docs/benchmarks.md");
    Ok(())
}

/// An unoptimised tonic client makes several times fewer calls than an optimised one and
/// measures mostly itself, so a debug build (`cargo xtask`) builds xtask in release and runs
/// the benchmark from there.
fn rerun_optimised(sh: &Shell, bench: &flags::Bench) -> Result<()> {
    crate::say!("bench grpc: building xtask (release) for an optimised gRPC load generator…");
    cmd!(sh, "cargo build --release -p xtask")
        .run()
        .context("build xtask in release (`cargo build --release -p xtask`)")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from);
    let bin = target.join("release/xtask");
    let (secs, connections) = (bench.duration.to_string(), bench.connections.to_string());
    cmd!(
        sh,
        "{bin} bench grpc --duration {secs} --connections {connections}"
    )
    .run()
    .context("bench grpc from the release build failed (its output is above)")
}

fn measure(
    sh: &Shell,
    global: &flags::Global,
    bench: &flags::Bench,
    dir: &Path,
    config_path: &Path,
) -> Result<String> {
    let config = crate::config::load(config_path)?;
    let machine = report::machine(sh, "the load generators, nginx and both colors");
    super::up(sh, global)?;
    let lua = dir.join("predict.lua");
    wrk::write_script(&lua)?;
    let secs = bench.duration.max(5);
    let streams = usize::try_from(bench.connections.max(1))?;
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let (grpc_direct, grpc_nginx) = (url(config.blue.grpc_port), url(config.balancer.grpc_port));
    let (http_direct, http_nginx) = (url(config.blue.port), url(config.balancer.port));
    let grpc = |target: &str| -> Result<Wrk> {
        let run = GrpcRun::start(target, streams)?;
        thread::sleep(Duration::from_secs(secs));
        Ok(run.stop()?.as_row())
    };
    let http = |target: &str| {
        WrkRun::start(&lua, &format!("{target}/predict"), secs, bench.connections)?.finish()
    };

    // Alternate the four, twice, and keep each one's best run: the machine is shared, so a
    // single run of each mostly measures what else was running at the time.
    let mut best: [Wrk; 4] = Default::default();
    for round in 1..=2 {
        crate::say!(
            "round {round}/2: gRPC direct, gRPC through nginx, HTTP direct, HTTP through nginx…"
        );
        let rows = [
            grpc(&grpc_direct)?,
            grpc(&grpc_nginx)?,
            http(&http_direct)?,
            http(&http_nginx)?,
        ];
        for (best, row) in best.iter_mut().zip(rows) {
            if row.req_per_sec > best.req_per_sec {
                *best = row;
            }
        }
    }

    crate::say!("{SWITCHES} switches under gRPC load through nginx…");
    let load = GrpcRun::start(&grpc_nginx, streams)?;
    thread::sleep(Duration::from_secs(1));
    let spread = Duration::from_secs_f64((secs as f64 - 2.0) / SWITCHES as f64);
    let mut walls = Vec::new();
    for _ in 0..SWITCHES {
        let t = Instant::now();
        walls.push(switch(sh, dir, config_path)?);
        thread::sleep(spread.saturating_sub(t.elapsed()));
    }
    thread::sleep(Duration::from_secs(1));
    let switching = load.stop()?;
    Ok(render_report(
        &machine, streams, secs, &best, &switching, &walls,
    ))
}

/// Runs `cargo xtask switch` (the private copy of this binary); returns its wall time in s.
fn switch(sh: &Shell, dir: &Path, config: &Path) -> Result<f64> {
    let (t, xtask) = (Instant::now(), dir.join("xtask"));
    cmd!(sh, "{xtask} --runtime local --config {config} switch")
        .quiet()
        .ignore_stdout()
        .run()
        .context("a switch under gRPC load failed (its error is above); run the benchmark again")?;
    Ok(t.elapsed().as_secs_f64())
}

/// What one gRPC load run saw after its warm-up.
#[derive(Debug, Default)]
struct Tally {
    /// Calls by outcome: the version that answered (with `x-served-by` when the balancer added
    /// it), or why the call failed (status code and message, or what was wrong with the answer).
    outcomes: BTreeMap<Result<String, String>, u64>,
    /// Every recorded call's latency in microseconds; sorted once the run ends.
    latencies_us: Vec<u32>,
    /// From the end of the warm-up to the end of the last call.
    elapsed: Duration,
}

impl Tally {
    fn record(&mut self, latency: Duration, outcome: Result<String, String>) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(us);
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (outcome, n) in other.outcomes {
            *self.outcomes.entry(outcome).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn count(&self, ok: bool) -> u64 {
        let calls = self.outcomes.iter().filter(|(k, _)| k.is_ok() == ok);
        calls.map(|(_, n)| n).sum()
    }

    fn failed(&self) -> u64 {
        self.count(false)
    }

    /// `version: calls, …` (`ok`) or `reason: calls, …`; `none` for none.
    fn list(&self, ok: bool) -> String {
        let items: Vec<String> = (self.outcomes.iter().filter(|(o, _)| o.is_ok() == ok))
            .map(|(Ok(k) | Err(k), n)| format!("{k}: {n}"))
            .collect();
        if items.is_empty() {
            "none".into()
        } else {
            items.join(", ")
        }
    }

    /// The latency (µs) below which `percent` % of the calls finished; needs sorted latencies.
    fn percentile_us(&self, percent: usize) -> u64 {
        let rank = (self.latencies_us.len() * percent).div_ceil(100).max(1);
        self.latencies_us.get(rank - 1).map_or(0, |&us| us.into())
    }

    fn req_per_sec(&self) -> f64 {
        self.count(true) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The run as one row of the table, in wrk's terms (a failed RPC counts as a socket error).
    fn as_row(&self) -> Wrk {
        Wrk {
            requests: self.outcomes.values().sum(),
            req_per_sec: self.req_per_sec(),
            p50_us: self.percentile_us(50),
            p99_us: self.percentile_us(99),
            max_us: self.latencies_us.last().map_or(0, |&us| us.into()),
            socket_errors: self.failed(),
            non_2xx: 0,
        }
    }
}

/// Unary `Predict` load running on its own multi-thread tokio runtime ([`WORKERS`] threads),
/// [`CHANNELS`] channels, `streams` callers; dropping it ends the calls.
struct GrpcRun {
    runtime: tokio::runtime::Runtime,
    callers: Vec<tokio::task::JoinHandle<Tally>>,
    stop: Arc<AtomicBool>,
    record_from: Instant,
}

impl GrpcRun {
    /// Connects the channels, starts the callers and returns once the warm-up is over: from
    /// then on every call is recorded, until [`GrpcRun::stop`].
    fn start(url: &str, streams: usize) -> Result<GrpcRun> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .enable_all()
            .build()
            .context("start the gRPC load's runtime")?;
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("{url:?} is not a gRPC address"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT);
        let mut channels = Vec::with_capacity(CHANNELS);
        for _ in 0..CHANNELS {
            channels.push(runtime.block_on(endpoint.connect()).with_context(|| {
                format!("no gRPC connection to {url}: is the service serving gRPC (GRPC_PORT)?")
            })?);
        }
        let (record_from, stop) = (Instant::now() + WARMUP, Arc::new(AtomicBool::new(false)));
        let callers = (0..streams)
            .map(|i| {
                let client = PredictionServiceClient::new(channels[i % CHANNELS].clone());
                runtime.spawn(caller(client, record_from, stop.clone()))
            })
            .collect();
        thread::sleep(record_from.saturating_duration_since(Instant::now()));
        Ok(GrpcRun {
            runtime,
            callers,
            stop,
            record_from,
        })
    }

    /// Ends the run (the calls in flight still count) and returns what it saw.
    fn stop(self) -> Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for caller in self.callers {
            let caller = self.runtime.block_on(caller);
            tally.merge(caller.context("a gRPC load caller panicked")?);
        }
        tally.elapsed = self.record_from.elapsed();
        tally.latencies_us.sort_unstable();
        if tally.outcomes.is_empty() {
            bail!("the gRPC load made no call at all: is the service overloaded or hung?");
        }
        Ok(tally)
    }
}

/// One caller: one call at a time until `stop`; records calls started after `record_from`.
async fn caller(
    mut client: PredictionServiceClient<Channel>,
    record_from: Instant,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = predict(&mut client).await;
        if started >= record_from {
            tally.record(started.elapsed(), outcome);
        }
    }
    tally
}

/// One `Predict`: the version that answered (with the color through the balancer), or why the
/// call failed.
async fn predict(client: &mut PredictionServiceClient<Channel>) -> Result<String, String> {
    let request = PredictRequest {
        features: ROW.to_vec(),
    };
    let reply = client
        .predict(request)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    let metadata = |key: &str| {
        reply
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let version = metadata(ml_proto::MODEL_VERSION_METADATA);
    let served_by = metadata(crate::grpc::SERVED_BY);
    let class = reply.into_inner().prediction;
    if class != 0 {
        return Err(format!("wrong answer: class {class}, expected 0"));
    }
    if version.is_empty() {
        return Err("no x-model-version metadata".into());
    }
    Ok(match served_by.as_str() {
        "" => version,
        color => format!("{version} by {color}"),
    })
}

/// The section's Markdown; `best`: gRPC direct, gRPC through nginx, HTTP/JSON direct, HTTP/JSON
/// through nginx.
fn render_report(
    machine: &str,
    streams: usize,
    secs: u64,
    best: &[Wrk; 4],
    sw: &Tally,
    walls: &[f64],
) -> String {
    let [gd, gn, hd, hn] = best;
    let pct = |a: &Wrk, b: &Wrk| 100.0 * a.req_per_sec / b.req_per_sec.max(1.0);
    let (wall_p50, wall_max) = report::p50_max(walls);
    let mut s = format!(
        "Measured by `cargo xtask bench grpc` (local runtime, release `ml-service`, both colors up, nginx as the \
         balancer; {streams} calls in flight, {secs} s per run, best of 2 alternating rounds, no retries). \
         {machine}\n\n\
         gRPC: unary `prediction.PredictionService/Predict` with the row {ROW:?} from the command's own tonic \
         client: {CHANNELS} channels (one HTTP/2 connection each), the {streams} callers spread over them, each making one \
         call at a time, on a tokio runtime with {WORKERS} worker threads; the first {} s of a run are not \
         counted. HTTP/JSON: `wrk -t{} -c{streams}`, keep-alive `POST /predict` with the same row as JSON. \
         Direct means blue's own ports; through nginx, the balancer's (`grpc_pass` for gRPC, h2c).\n\n",
        WARMUP.as_secs(),
        wrk::THREADS,
    );
    s += "| path | req/s | p50 | p99 | failed / calls |\n| --- | ---: | ---: | ---: | ---: |\n";
    for (name, row) in [
        ("gRPC direct", gd),
        ("gRPC through nginx", gn),
        ("HTTP/JSON direct", hd),
        ("HTTP/JSON through nginx", hn),
    ] {
        s += &format!(
            "| {name} | {:.0} | {} | {} | {} / {} |\n",
            row.req_per_sec,
            wrk::ms(row.p50_us),
            wrk::ms(row.p99_us),
            row.failed(),
            row.requests
        );
    }
    s += &format!(
        "\nThrough nginx against direct: gRPC {:.0} %, HTTP/JSON {:.0} % of the requests per second. \
         gRPC against HTTP/JSON: {:.0} % direct, {:.0} % through nginx.\n\n",
        pct(gn, gd),
        pct(hn, hd),
        pct(gd, hd),
        pct(gn, hn)
    );
    s += &format!(
        "**Switching under gRPC load**: {} switches (`cargo xtask switch`, to green and back, alternating) spread \
         over {:.1} s of gRPC load through nginx: **{} failed RPCs** of {} (reasons: {}), {:.0} req/s held, p99 {}; \
         answers: {}. Switch wall time (gates + swap + verify, a whole process run): p50 {wall_p50:.3} s, \
         max {wall_max:.3} s.\n\n",
        walls.len(),
        sw.elapsed.as_secs_f64(),
        sw.failed(),
        sw.outcomes.values().sum::<u64>(),
        sw.list(false),
        sw.req_per_sec(),
        wrk::ms(sw.percentile_us(99)),
        sw.list(true)
    );
    s += NOTES;
    s
}

/// What the numbers mean on this machine.
const NOTES: &str = "What the numbers mean: the 2 cores are shared by the load generator, nginx and the \
service, so each row is what the whole machine manages with all of them competing, not the service's ceiling \
(the load average above says how busy it was besides). Through nginx, a third busy process takes its share of \
the same cores and every call is proxied once more; nginx's gRPC proxy does not multiplex, it holds one \
kept-alive upstream connection per call in flight. gRPC against HTTP/JSON mixes client and server costs that \
this machine cannot separate: wrk is a small C event loop, the gRPC client a tonic/hyper HTTP/2 stack (framing, \
HPACK, protobuf, a task per caller) that takes more CPU per call from the same two cores. Read the ratios, \
measured in the same run, rather than the absolute rates; with the load generator on cores of its own every \
rate would be higher.\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_merges_and_reads_percentiles() {
        let mut a = Tally::default();
        for us in 1..=50 {
            a.record(Duration::from_micros(us), Ok("v1 by blue".into()));
        }
        let mut b = Tally::default();
        for us in 51..=100 {
            b.record(Duration::from_micros(us), Err("Unavailable: x".into()));
        }
        a.merge(b);
        a.latencies_us.sort_unstable();
        a.elapsed = Duration::from_secs(2);
        assert_eq!((a.count(true), a.failed()), (50, 50));
        assert_eq!((a.percentile_us(50), a.percentile_us(99)), (50, 99));
        assert_eq!(a.req_per_sec(), 25.0);
        assert_eq!(a.list(false), "Unavailable: x: 50");
        assert_eq!(Tally::default().percentile_us(99), 0);
    }
}
