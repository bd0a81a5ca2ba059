//! `cargo xtask bench service`: the model service on loopback under `wrk`, alone and behind
//! nginx against nginx's own ceiling.
//!
//! Steps:
//! 1. make sure `wrk` and `nginx` are installed; note the machine and its load;
//! 2. build `ml-service` in release mode;
//! 3. start it on a free loopback port and time start-to-healthy (`/health` answering 200);
//! 4. warm up for 2 s, then drive single-row `POST /predict` with `wrk` (2 threads, the given
//!    connections, keep-alive, a Lua script for the body) for the given duration;
//! 5. read the service's CPU time and peak RSS (`VmHWM`) from `/proc/<pid>`;
//! 6. start a private nginx (`target/bench/service`, `service_nginx.rs`) with two identical proxy
//!    servers: one to the service, one to a fixed answer served by nginx itself (the service's
//!    own answer, captured); warm both up, then alternate wrk runs on the two, twice, keeping
//!    each one's best: the ratio says how close the service comes to nginx's ceiling;
//! 7. stop nginx and the service (SIGTERM), print the numbers and write them under "Model
//!    service" in `docs/benchmarks.md`.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use super::{
    report,
    service_nginx::{BenchNginx, NginxPorts},
    wrk::{self, Wrk, BODY, THREADS},
};
use crate::{
    flags, host,
    util::{self, poll, project_root},
};

/// The model version the benchmark serves.
pub(super) const VERSION: &str = "v1.0.0";
/// Load before the measured run, so the measurement starts warm.
const WARMUP_SECS: u64 = 2;
/// Alternating runs of the ceiling and the service behind nginx; each one's best is kept.
const ROUNDS: usize = 3;
/// What the service behind nginx should reach, as a share of nginx's ceiling.
const GOAL: f64 = 0.9;
const PARENT: &str = "## Model service";
const SECTION: &str = "### Measured by `cargo xtask bench service`";
/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measured {
    pub start_to_healthy: Duration,
    /// The service alone.
    pub wrk: Wrk,
    pub cpu_percent: f64,
    /// The service's CPU time per request when alone, in µs.
    pub cpu_us: f64,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
    /// The rounds through nginx, in order.
    pub rounds: Vec<Round>,
}

/// One round through nginx: the ceiling, then the service, one right after the other.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Round {
    /// nginx proxying to a fixed answer it serves itself.
    pub ceiling: Proxied,
    /// nginx proxying to the service.
    pub service: Proxied,
}

/// One wrk run through nginx, and the CPU time each process spent per request.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Proxied {
    pub wrk: Wrk,
    /// nginx's workers, in µs per request.
    pub nginx_us: f64,
    /// The service, in µs per request (about 0 for the fixed answer).
    pub service_us: f64,
}

impl Measured {
    /// The best ceiling run (the most requests/s).
    fn ceiling(&self) -> Proxied {
        best(self.rounds.iter().map(|r| &r.ceiling))
    }

    /// The best run through nginx to the service.
    fn behind_nginx(&self) -> Proxied {
        best(self.rounds.iter().map(|r| &r.service))
    }

    /// The service behind nginx as a share of nginx's ceiling, best against best.
    fn ratio(&self) -> f64 {
        self.behind_nginx().wrk.req_per_sec / self.ceiling().wrk.req_per_sec.max(1.0)
    }

    fn failed(&self) -> u64 {
        self.wrk.failed()
            + self
                .rounds
                .iter()
                .map(|r| r.ceiling.wrk.failed() + r.service.wrk.failed())
                .sum::<u64>()
    }
}

/// The run with the most requests/s (an empty one for none).
fn best<'a>(runs: impl Iterator<Item = &'a Proxied>) -> Proxied {
    runs.max_by(|a, b| a.wrk.req_per_sec.total_cmp(&b.wrk.req_per_sec))
        .cloned()
        .unwrap_or_default()
}

/// Where the run happened, for the report.
struct Setting {
    date: String,
    machine: String,
    load_before: String,
    nginx: String,
    connections: u32,
    secs: u64,
}

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    host::ensure_commands(sh, &[host::WRK, host::NGINX]).context("install wrk and nginx")?;
    let setting = Setting {
        date: util::now_rfc3339()[..10].to_owned(),
        machine: report::cpu(),
        load_before: report::load_average(),
        nginx: report::nginx_version(sh),
        connections: bench.connections,
        secs: bench.duration,
    };
    cmd!(
        sh,
        "cargo build --quiet --release --package service --bin ml-service"
    )
    .run()
    .context("build ml-service (release)")?;
    let binary = sh.current_dir().join("target/release/ml-service");
    let dir = project_root().join("target/bench/service");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).context("create the benchmark folder")?;
    let script = dir.join("predict.lua");
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
        .env("GRPC_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let result = measure(sh, &mut child, addr, start, &dir, &script, bench);
    stop(sh, &mut child);
    let measured = result?;
    let report = render_report(&setting, &measured);
    crate::say!("{report}");
    report::write_doc(Some(PARENT), SECTION, &report)?;
    crate::say!("bench service: wrote its subsection of \"Model service\" in docs/benchmarks.md");
    if measured.failed() > 0 {
        bail!(
            "{} failed requests under load (socket errors and non-2xx answers)",
            measured.failed()
        );
    }
    Ok(())
}

fn measure(
    sh: &Shell,
    child: &mut Child,
    addr: SocketAddr,
    start: Instant,
    dir: &Path,
    script: &Path,
    bench: &flags::Bench,
) -> Result<Measured> {
    let start_to_healthy =
        wait_healthy(child, addr, start).context("wait for ml-service to be healthy")?;
    let pid = child.id();
    let idle_rss_kib = proc_status_kib(pid, "VmRSS")?;
    let url = format!("http://{addr}/predict");
    crate::say!("the service alone…");
    wrk::run(sh, script, &url, WARMUP_SECS, bench.connections).context("warm up with wrk")?;
    let ticks_before = cpu_ticks(pid)?;
    let wall = Instant::now();
    let alone = wrk::run(sh, script, &url, bench.duration, bench.connections)?;
    let wall = wall.elapsed();
    let ticks = cpu_ticks(pid)? - ticks_before;
    let clk_tck: f64 = cmd!(sh, "getconf CLK_TCK")
        .quiet()
        .read()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    let cpu_percent = cpu_percent(ticks, clk_tck, wall);
    let cpu_us = per_request_us(ticks, clk_tck, alone.requests);
    let rounds = measure_behind_nginx(sh, pid, addr, dir, script, bench, clk_tck)?;
    Ok(Measured {
        start_to_healthy,
        wrk: alone,
        cpu_percent,
        cpu_us,
        idle_rss_kib,
        peak_rss_kib: proc_status_kib(pid, "VmHWM")?,
        rounds,
    })
}

/// Starts the private nginx, warms both paths up, then runs [`ROUNDS`] rounds: the ceiling,
/// then the service behind nginx, each time with the CPU time nginx and the service spent.
fn measure_behind_nginx(
    sh: &Shell,
    service_pid: u32,
    service: SocketAddr,
    dir: &Path,
    script: &Path,
    bench: &flags::Bench,
    clk_tck: f64,
) -> Result<Vec<Round>> {
    let answer = post_predict(service).context("capture the service's answer")?;
    let ports = NginxPorts {
        service: service.port(),
        proxy_service: wrk::free_port()?,
        proxy_fixed: wrk::free_port()?,
        fixed: wrk::free_port()?,
    };
    let nginx = BenchNginx::start(sh, dir.join("nginx"), &ports, &answer)?;
    let result = (|| {
        let workers = nginx.workers()?;
        let via = |port: u16| format!("http://127.0.0.1:{port}/predict");
        let (to_service, to_fixed) = (via(ports.proxy_service), via(ports.proxy_fixed));
        let run = |url: &str| -> Result<Proxied> {
            let nginx_before = cpu_ticks_of(&workers)?;
            let service_before = cpu_ticks(service_pid)?;
            let wrk = wrk::run(sh, script, url, bench.duration, bench.connections)?;
            let nginx_ticks = cpu_ticks_of(&workers)? - nginx_before;
            let service_ticks = cpu_ticks(service_pid)? - service_before;
            Ok(Proxied {
                nginx_us: per_request_us(nginx_ticks, clk_tck, wrk.requests),
                service_us: per_request_us(service_ticks, clk_tck, wrk.requests),
                wrk,
            })
        };
        crate::say!("nginx -> fixed answer, nginx -> service: warming up…");
        for url in [&to_fixed, &to_service] {
            wrk::run(sh, script, url, WARMUP_SECS, bench.connections)
                .context("warm up through nginx")?;
        }
        (1..=ROUNDS)
            .map(|round| {
                crate::say!(
                    "round {round}/{ROUNDS}: nginx -> fixed answer, then nginx -> service…"
                );
                Ok(Round {
                    ceiling: run(&to_fixed)?,
                    service: run(&to_service)?,
                })
            })
            .collect()
    })();
    nginx.stop(sh);
    result
}

/// The service's answer to the benchmark's request: the body of `POST /predict` with [`BODY`].
fn post_predict(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the answer")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "POST /predict answered {head}"
    );
    Ok(body.trim().to_owned())
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

/// user + system CPU ticks of all of `pids` so far.
fn cpu_ticks_of(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&pid| cpu_ticks(pid)).sum()
}

/// CPU time per request in µs.
fn per_request_us(ticks: u64, clk_tck: f64, requests: u64) -> f64 {
    ticks as f64 / clk_tck * 1e6 / requests.max(1) as f64
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

fn render_report(s: &Setting, m: &Measured) -> String {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let row = |what: &str, w: &Wrk, cpu: String| {
        format!(
            "| {what} | {:.0} | {} | {} | {} | {} of {} | {cpu} |\n",
            w.req_per_sec,
            ms(w.p50_us),
            ms(w.p99_us),
            ms(w.max_us),
            w.failed(),
            w.requests
        )
    };
    let (ceiling, behind) = (m.ceiling(), m.behind_nginx());
    let verdict = if m.ratio() >= GOAL {
        "goal met"
    } else {
        "goal not met"
    };
    let mut out = format!(
        "Measured on {} by `cargo xtask bench service` (release `ml-service` {VERSION}, info-level request \
         logs written by its log thread to `/dev/null`; wrk {THREADS} threads, {} keep-alive connections, \
         single-row `POST /predict`, {} s per run after a {WARMUP_SECS} s warm-up). Machine: {}, shared by \
         wrk, nginx and the service (load average before the run {}); {}.\n\n",
        s.date, s.connections, s.secs, s.machine, s.load_before, s.nginx
    );
    out += "| path | requests/s | p50 | p99 | max | failed | CPU per request |\n";
    out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    out += &row(
        "`ml-service` alone",
        &m.wrk,
        format!("service {:.0} µs", m.cpu_us),
    );
    out += &row(
        &format!("nginx → fixed answer (nginx's ceiling, best of {ROUNDS})"),
        &ceiling.wrk,
        format!("nginx {:.0} µs", ceiling.nginx_us),
    );
    out += &row(
        &format!("nginx → `ml-service` (best of {ROUNDS})"),
        &behind.wrk,
        format!(
            "nginx {:.0} µs + service {:.0} µs",
            behind.nginx_us, behind.service_us
        ),
    );
    let rounds: Vec<String> = m
        .rounds
        .iter()
        .map(|r| {
            let (c, b) = (r.ceiling.wrk.req_per_sec, r.service.wrk.req_per_sec);
            format!("{c:.0} / {b:.0} ({:.0} %)", 100.0 * b / c.max(1.0))
        })
        .collect();
    out += &format!(
        "\n**Through nginx the service reaches {:.0} % of nginx's own ceiling** ({:.0} vs {:.0} \
         requests/s, best against best; goal ≥ {:.0} %: {verdict}). Round by round (ceiling / service): {}.\n\n\
         The ceiling is the same nginx with the same proxy settings, its upstream replaced by a `server` of its \
         own that returns the service's answer (`xtask/src/bench/service-nginx.conf`). CPU per request is the \
         user + system time of the service and of nginx's workers during the run, over the requests wrk \
         counted; the two cores are the limit, so the ratio is about what the service costs beside nginx's \
         fixed answer. Failed requests are wrk's socket errors plus non-2xx answers.\n\n",
        m.ratio() * 100.0,
        behind.wrk.req_per_sec,
        ceiling.wrk.req_per_sec,
        GOAL * 100.0,
        rounds.join(", ")
    );
    out += "| the service | value |\n| --- | ---: |\n";
    out += &format!(
        "| CPU while alone under load (100 % = one core) | {:.0} % |\n",
        m.cpu_percent
    );
    out += &format!("| RSS idle after start | {} |\n", mib(m.idle_rss_kib));
    out += &format!(
        "| peak RSS (`VmHWM`) after load | {} |\n",
        mib(m.peak_rss_kib)
    );
    out += &format!(
        "| start → healthy | {:.1} ms |\n",
        m.start_to_healthy.as_secs_f64() * 1000.0
    );
    out
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

    #[test]
    fn the_report_gives_both_numbers_and_the_ratio() {
        let wrk = |rps: f64| Wrk {
            requests: (rps * 5.0) as u64,
            req_per_sec: rps,
            p50_us: 1_000,
            p99_us: 5_000,
            max_us: 20_000,
            ..Wrk::default()
        };
        let setting = Setting {
            date: "2026-11-30".into(),
            machine: "CPU, 2 cores".into(),
            load_before: "0.50 0.40 0.30".into(),
            nginx: "nginx/1.22.1".into(),
            connections: 64,
            secs: 5,
        };
        let proxied = |rps: f64, nginx_us: f64, service_us: f64| Proxied {
            wrk: wrk(rps),
            nginx_us,
            service_us,
        };
        let measured = Measured {
            start_to_healthy: Duration::from_millis(5),
            wrk: wrk(30_000.0),
            cpu_percent: 60.0,
            cpu_us: 40.0,
            idle_rss_kib: 4_608,
            peak_rss_kib: 7_168,
            rounds: vec![
                Round {
                    ceiling: proxied(20_000.0, 55.0, 0.0),
                    service: proxied(18_000.0, 50.0, 41.0),
                },
                Round {
                    ceiling: proxied(19_000.0, 56.0, 0.0),
                    service: proxied(18_600.0, 49.0, 40.0),
                },
            ],
        };
        let report = render_report(&setting, &measured);
        assert!(report.starts_with("Measured on 2026-11-30 "), "{report}");
        for line in [
            "| nginx → fixed answer (nginx's ceiling, best of 3) | 20000 | 1.00 ms | 5.00 ms | 20.00 ms | 0 of 100000 | nginx 55 µs |",
            "| nginx → `ml-service` (best of 3) | 18600 | 1.00 ms | 5.00 ms | 20.00 ms | 0 of 93000 | nginx 49 µs + service 40 µs |",
        ] {
            assert!(report.contains(line), "{line} missing:\n{report}");
        }
        assert!(
            report.contains("reaches 93 % of nginx's own ceiling** (18600 vs 20000"),
            "{report}"
        );
        assert!(
            report.contains("20000 / 18000 (90 %), 19000 / 18600 (98 %)"),
            "{report}"
        );
        assert!(report.contains("goal met"), "{report}");
        assert!(
            report.contains("| peak RSS (`VmHWM`) after load | 7.0 MiB |"),
            "{report}"
        );
    }
}
