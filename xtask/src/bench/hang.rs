//! `cargo xtask bench hang`: what clients see while the active color hangs (SIGSTOP: the socket
//! still accepts, nothing answers, as in a deadlock or a long pause), before and after the
//! latency budget.
//!
//! Steps (a private local deployment under `target/bench/hang`, release service binary):
//! 1. for each balancer config — "before": nginx's default 60 s read timeout, no shared upstream
//!    state (the seed config); "after": the rendered config with `read_timeout_secs = 3` and a
//!    shared `zone` — and each hang (5 s, 90 s):
//!    - `up`; keep-alive `POST /predict` clients (no retries, a request that gets no answer in
//!      120 s counts as failed) run for the hang plus 10 s;
//!    - 3 s in, SIGSTOP the active color; a sequential probe measures the time from the stop to
//!      the first answer served by the standby; after the hang, SIGCONT;
//!    - failed requests (non-2xx, errors), p99 and max latency;
//! 2. print a table and write it into `docs/benchmarks.md` under "A hung color".

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::report;
use crate::{flags, host, util};

const SECTION: &str = "## A hung color";
/// Keep-alive clients.
const CLIENTS: usize = 32;
/// When the hang starts, after the load has begun.
const WARM_UP: Duration = Duration::from_secs(3);
/// Load keeps running this long after the hang ends.
const COOL_DOWN: Duration = Duration::from_secs(7);
/// A request without an answer after this counts as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const BODY: &str = r#"{"features":[5.1,3.5,1.4,0.2]}"#;

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    host::ensure_commands(sh, &[host::NGINX])?;
    let hangs = if bench.duration >= 90 {
        vec![5, 90]
    } else {
        vec![5, bench.duration.max(5)]
    };
    let mut rows = Vec::new();
    for &hang in &hangs {
        for (name, budget) in [("before (60 s default)", 60), ("after (3 s budget)", 3)] {
            crate::say!("hang of {hang} s, {name}…");
            let result = measure(sh, budget, Duration::from_secs(hang))?;
            crate::say!("  {result:?}");
            rows.push((hang, name, result));
        }
    }
    let mut out = format!(
        "Measured {} with `cargo xtask bench hang` (local runtime, {CLIENTS} keep-alive clients \
         posting predictions without retries; a request unanswered after {} s counts as failed). \
         Machine: {}.\n\n",
        util::now_rfc3339(),
        CLIENT_TIMEOUT.as_secs(),
        report::cpu()
    );
    out += "| hang | balancer | requests | failed | p99 | max | stop → standby answers |\n";
    out += "| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n";
    for (hang, name, r) in &rows {
        out += &format!(
            "| {hang} s | {name} | {} | {} | {:.0} ms | {:.0} ms | {} |\n",
            r.requests,
            r.failed,
            r.p99.as_secs_f64() * 1000.0,
            r.max.as_secs_f64() * 1000.0,
            r.to_standby
                .map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
    }
    out +=
        "\nBefore, every request in flight when the color stops waits as long as the hang lasts \
            (past 60 s: a 504 from nginx); after, a request waits at most the latency budget, \
            then the standby answers it, and the hung color is avoided by every worker.\n";
    crate::say!("{out}");
    report::write_doc(None, SECTION, &out)?;
    crate::say!("bench hang: wrote the \"A hung color\" section of docs/benchmarks.md");
    Ok(())
}

#[derive(Debug, Default)]
struct Measured {
    requests: usize,
    failed: usize,
    p99: Duration,
    max: Duration,
    to_standby: Option<Duration>,
}

/// One deployment with `budget` seconds of read timeout, one hang of `hang`.
fn measure(sh: &Shell, budget: u64, hang: Duration) -> Result<Measured> {
    let private = super::Private::new("hang", &format!("read_timeout_secs = {budget}\n"))?;
    let (dir, global) = (private.dir.clone(), private.global.clone());
    let conf = if budget >= 60 {
        // The seed config: no read timeout (nginx's 60 s default) and no shared upstream state.
        let up = flags::Up {
            blue: None,
            green: None,
            nginx_conf: None,
            replicas: None,
        };
        up.run(sh, &global)?;
        let rendered = fs::read_to_string(dir.join("state/nginx/nginx.conf"))?;
        let seed: String = rendered
            .lines()
            .filter(|l| {
                !l.contains("proxy_read_timeout")
                    && !l.contains("proxy_send_timeout")
                    && !l.contains(" zone ")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let path = dir.join("seed.conf");
        fs::write(&path, seed)?;
        Some(path)
    } else {
        None
    };
    let up = flags::Up {
        blue: None,
        green: None,
        nginx_conf: conf,
        replicas: None,
    };
    let result = up
        .run(sh, &global)
        .and_then(|()| hang_under_load(&dir, private.balancer_port, hang));
    let _ = Command::new("kill")
        .args(["-CONT", &read_pid(&dir).unwrap_or_default()])
        .status();
    let _ = (flags::Down {}).run(sh, &global);
    result
}

fn read_pid(dir: &std::path::Path) -> Result<String> {
    Ok(fs::read_to_string(dir.join("state/blue.pid"))?
        .trim()
        .to_owned())
}

fn hang_under_load(dir: &std::path::Path, port: u16, hang: Duration) -> Result<Measured> {
    let addr = format!("127.0.0.1:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            thread::spawn(move || client(&addr, &stop))
        })
        .collect();
    thread::sleep(WARM_UP);
    let pid = read_pid(dir)?;
    let stopped_at = Instant::now();
    Command::new("kill").args(["-STOP", &pid]).status()?;
    let probe = {
        let addr = addr.clone();
        thread::spawn(move || probe_standby(&addr, stopped_at, hang))
    };
    thread::sleep(hang.saturating_sub(stopped_at.elapsed()));
    Command::new("kill").args(["-CONT", &pid]).status()?;
    let to_standby = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe panicked"))?;
    thread::sleep(COOL_DOWN);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for thread in clients {
        let (l, f) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))?;
        latencies.extend(l);
        failed += f;
    }
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100).max(1);
    Ok(Measured {
        requests: latencies.len(),
        failed,
        p99: latencies.get(rank - 1).copied().unwrap_or_default(),
        max: latencies.last().copied().unwrap_or_default(),
        to_standby,
    })
}

/// Requests one after another until one is served by green; how long after the stop that was.
fn probe_standby(addr: &str, since: Instant, within: Duration) -> Option<Duration> {
    while since.elapsed() < within {
        let Ok(mut conn) = connect(addr) else {
            continue;
        };
        if let Ok((200, headers)) = exchange(&mut conn) {
            if headers.contains("x-served-by: green") {
                return Some(since.elapsed());
            }
        }
    }
    None
}

/// One keep-alive client until `stop`: each request's latency, and how many failed.
fn client(addr: &str, stop: &AtomicBool) -> (Vec<Duration>, usize) {
    let (mut latencies, mut failed) = (Vec::new(), 0);
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let stream = match &mut conn {
            Some(stream) => stream,
            None => match connect(addr) {
                Ok(stream) => conn.insert(stream),
                Err(_) => {
                    failed += 1;
                    latencies.push(began.elapsed());
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match exchange(stream) {
            Ok((status, headers)) => {
                if status != 200 {
                    failed += 1;
                }
                // nginx closes a keep-alive connection after so many requests, and says so.
                if headers.contains("connection: close") {
                    conn = None;
                }
            }
            Err(_) => {
                failed += 1;
                conn = None;
            }
        }
        latencies.push(began.elapsed());
    }
    (latencies, failed)
}

fn connect(addr: &str) -> Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// One `POST /predict`: the status and the lowercased headers.
fn exchange(conn: &mut BufReader<TcpStream>) -> Result<(u16, String)> {
    let request = format!(
        "POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    conn.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let mut headers = String::new();
    let mut length = 0;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            bail!("the connection closed inside the headers");
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        headers += &lower;
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok((status, headers))
}
