//! `cargo xtask bench service`: the model service alone on loopback, under `wrk`.
//!
//! Steps:
//! 1. make sure `wrk` is installed;
//! 2. build `ml-service` in release mode;
//! 3. start it on a free loopback port and time start-to-healthy (`/health` answering 200);
//! 4. warm up for 2 s, then drive single-row `POST /predict` with `wrk` (2 threads, the given
//!    connections, keep-alive, a Lua script for the body) for the given duration;
//! 5. read the service's CPU time and peak RSS (`VmHWM`) from `/proc/<pid>`;
//! 6. stop it with SIGTERM and print the numbers as a markdown table.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::wrk::{self, Wrk, THREADS};
use crate::{flags, host, util::poll};

/// The model version the benchmark serves.
const VERSION: &str = "v1.0.0";
/// Load before the measured run, so the measurement starts warm.
const WARMUP_SECS: u64 = 2;

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measured {
    pub start_to_healthy: Duration,
    pub wrk: Wrk,
    pub cpu_percent: f64,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    host::ensure_commands(sh, &[host::WRK]).context("install wrk")?;
    cmd!(
        sh,
        "cargo build --quiet --release --package service --bin ml-service"
    )
    .run()
    .context("build ml-service (release)")?;
    let binary = sh.current_dir().join("target/release/ml-service");
    let script = sh.current_dir().join("target/bench-predict.lua");
    wrk::write_script(&script)?;

    crate::say!(
        "bench service: {VERSION}, {} s at {} connections, {THREADS} wrk threads",
        bench.duration,
        bench.connections
    );
    let port = wrk::free_port().context("find a free port")?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    // A child we must signal and inspect while it runs: std's Command, not xshell's.
    let mut child = Command::new(&binary)
        .env("MODEL_PATH", format!("models/{VERSION}"))
        .env("MODEL_VERSION", VERSION)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let result = measure(sh, &mut child, addr, start, &script, bench);
    stop(sh, &mut child);
    let measured = result?;
    crate::say!("{}", render_table(&measured, bench.connections));
    if measured.wrk.failed() > 0 {
        bail!(
            "{} socket errors and {} non-2xx answers under load",
            measured.wrk.socket_errors,
            measured.wrk.non_2xx
        );
    }
    Ok(())
}

fn measure(
    sh: &Shell,
    child: &mut Child,
    addr: SocketAddr,
    start: Instant,
    script: &Path,
    bench: &flags::Bench,
) -> Result<Measured> {
    let start_to_healthy =
        wait_healthy(child, addr, start).context("wait for ml-service to be healthy")?;
    let pid = child.id();
    let idle_rss_kib = proc_status_kib(pid, "VmRSS")?;
    let url = format!("http://{addr}/predict");
    wrk::run(sh, script, &url, WARMUP_SECS, bench.connections).context("warm up with wrk")?;
    let ticks_before = cpu_ticks(pid)?;
    let wall = Instant::now();
    let wrk = wrk::run(sh, script, &url, bench.duration, bench.connections)?;
    let wall = wall.elapsed();
    let ticks = cpu_ticks(pid)? - ticks_before;
    let clk_tck: f64 = cmd!(sh, "getconf CLK_TCK")
        .quiet()
        .read()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    Ok(Measured {
        start_to_healthy,
        wrk,
        cpu_percent: cpu_percent(ticks, clk_tck, wall),
        idle_rss_kib,
        peak_rss_kib: proc_status_kib(pid, "VmHWM")?,
    })
}

/// Polls `/health` as fast as is reasonable (every 0.2 ms), so the start time is measured to
/// well under a millisecond.
fn wait_healthy(child: &mut Child, addr: SocketAddr, start: Instant) -> Result<Duration> {
    let deadline = start + Duration::from_secs(10);
    loop {
        if health_ok(addr) {
            return Ok(start.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            bail!("ml-service exited with {status} before it was healthy");
        }
        if Instant::now() > deadline {
            bail!("ml-service not healthy on {addr} after 10 s");
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// Whether `GET /health` at `addr` answers 200 now.
pub(super) fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

fn stop(sh: &Shell, child: &mut Child) {
    let pid = child.id().to_string();
    if cmd!(sh, "kill -TERM {pid}").quiet().run().is_err() {
        let _ = child.kill();
    }
    let stopped = poll(
        "ml-service to exit",
        Duration::from_secs(15),
        || match child.try_wait()? {
            Some(_) => Ok(()),
            None => bail!("still running"),
        },
    );
    if stopped.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// user + system CPU ticks of `pid` so far.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/<pid>/stat")?;
    parse_cpu_ticks(&stat).context("parse /proc/<pid>/stat")
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line; the command name in
/// parentheses may hold spaces, so count from the closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use as a percentage of one core (200 % = both cores of this machine busy).
fn cpu_percent(ticks: u64, clk_tck: f64, wall: Duration) -> f64 {
    ticks as f64 / clk_tck / wall.as_secs_f64() * 100.0
}

fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("read /proc/<pid>/status")?;
    parse_status_kib(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The value in KiB of a `Key:   1234 kB` line of `/proc/<pid>/status`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn render_table(m: &Measured, connections: u32) -> String {
    let w = &m.wrk;
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    [
        "| metric | value |".to_owned(),
        "| --- | --- |".to_owned(),
        format!(
            "| requests/s (single-row POST /predict, {connections} connections) | {:.0} |",
            w.req_per_sec
        ),
        format!("| latency p50 | {} |", ms(w.p50_us)),
        format!("| latency p99 | {} |", ms(w.p99_us)),
        format!("| latency max | {} |", ms(w.max_us)),
        format!(
            "| requests / errors / non-2xx | {} / {} / {} |",
            w.requests, w.socket_errors, w.non_2xx
        ),
        format!(
            "| service CPU (100 % = one core) | {:.0} % |",
            m.cpu_percent
        ),
        format!("| RSS idle after start | {} |", mib(m.idle_rss_kib)),
        format!("| peak RSS (VmHWM) after load | {} |", mib(m.peak_rss_kib)),
        format!(
            "| start to healthy | {:.1} ms |",
            m.start_to_healthy.as_secs_f64() * 1000.0
        ),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let stat = "4242 (ml service) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(200));
        let status = "Name:\tml-service\nVmHWM:\t   12345 kB\nVmRSS:\t    8000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(8000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(cpu_percent(150, 100.0, Duration::from_secs(1)), 150.0);
    }
}
