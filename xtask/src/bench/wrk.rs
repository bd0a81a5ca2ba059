//! What every benchmark shares about `wrk`: the request it sends, a port to serve on, running it
//! in the background, and reading its `--latency` summary.
//!
//! Steps of a loaded measurement:
//! 1. [`free_port`] for whatever wrk will hit;
//! 2. [`write_script`]: the Lua script for a keep-alive `POST /predict` with a JSON body;
//! 3. [`WrkRun::start`] (2 threads, `--latency`) while the caller does its operations;
//! 4. [`WrkRun::finish`] waits for the end, or [`WrkRun::stop`] ends it early (SIGINT: wrk still
//!    prints its summary), and [`parse`] turns the summary into a [`Wrk`].

use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::host;

/// The request body: one Iris row.
pub const BODY: &str = r#"{"features":[5.1,3.5,1.4,0.2]}"#;
/// wrk's threads in every benchmark.
pub const THREADS: u32 = 2;

/// One wrk run's numbers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Wrk {
    pub requests: u64,
    pub req_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Connect, read, write and timeout errors together.
    pub socket_errors: u64,
    /// Answers that were neither 2xx nor 3xx.
    pub non_2xx: u64,
}

impl Wrk {
    /// Requests that did not get a good answer: socket errors plus non-2xx/3xx answers.
    pub fn failed(&self) -> u64 {
        self.socket_errors + self.non_2xx
    }
}

/// Milliseconds with two decimals, as wrk prints them: `15.10ms`.
pub fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

/// The wrk script: every request a `POST` with `body` as JSON.
pub fn lua_script(body: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    )
}

/// Writes the `POST /predict` script to `path`.
pub fn write_script(path: &Path) -> Result<()> {
    fs::write(path, lua_script(BODY)).with_context(|| format!("write {}", path.display()))
}

/// A port nothing listens on, on loopback or on any address (a container's published port is
/// public), below Linux's ephemeral range so that none of wrk's outgoing connections can hold
/// it when a restarted server binds it again.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % 5_000;
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (offset + n * 7) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port between 20000 and 32000")
}

/// Runs wrk in the foreground and returns its numbers.
pub fn run(sh: &Shell, lua: &Path, url: &str, secs: u64, connections: u32) -> Result<Wrk> {
    let (threads, connections, duration) = (
        THREADS.to_string(),
        connections.to_string(),
        format!("{secs}s"),
    );
    let text = cmd!(
        sh,
        "wrk -t{threads} -c{connections} -d{duration} --latency -s {lua} {url}"
    )
    .quiet()
    .read()
    .context("run wrk")?;
    parse(&text)
}

/// wrk running in the background while this thread does something else.
pub struct WrkRun {
    child: Child,
}

impl WrkRun {
    /// Starts `wrk -t2 -c<connections> -d<secs>s --latency -s <lua> <url>`.
    pub fn start(lua: &Path, url: &str, secs: u64, connections: u32) -> Result<WrkRun> {
        let wrk = host::find_command("wrk").context("find wrk")?;
        // A child that runs while this thread works (and may be signalled): `Command`, not `cmd!`.
        let child = Command::new(wrk)
            .args([
                &format!("-t{THREADS}"),
                &format!("-c{connections}"),
                &format!("-d{secs}s"),
                "--latency",
                "-s",
            ])
            .arg(lua)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start wrk")?;
        Ok(WrkRun { child })
    }

    /// Ends the run now: wrk stops on SIGINT and still prints its summary.
    pub fn stop(self, sh: &Shell) -> Result<Wrk> {
        let pid = self.child.id().to_string();
        cmd!(sh, "kill -INT {pid}")
            .quiet()
            .run()
            .context("stop wrk")?;
        self.finish()
    }

    /// Waits for the run to end and reads its summary.
    pub fn finish(self) -> Result<Wrk> {
        let out = self.child.wait_with_output().context("wait for wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        parse(&text)
    }
}

/// Reads wrk's `--latency` summary: requests, req/s, p50, p99 and max latency, socket errors
/// and non-2xx answers.
pub fn parse(text: &str) -> Result<Wrk> {
    let mut wrk = Wrk::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            wrk.req_per_sec = rest.trim().parse().context("parse Requests/sec")?;
        } else if line.contains(" requests in ") {
            wrk.requests = line
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse()
                .context("parse the request count")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            wrk.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.non_2xx = rest.trim().parse().context("parse Non-2xx")?;
        } else if let Some(rest) = line.strip_prefix("50%") {
            wrk.p50_us = duration_us(rest.trim()).context("parse the p50 latency")?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            wrk.p99_us = duration_us(rest.trim()).context("parse the p99 latency")?;
        } else if let Some(rest) = line
            .strip_prefix("Latency ")
            .filter(|rest| !rest.starts_with("Distribution"))
        {
            // Thread Stats: avg, stdev, max, +/- stdev.
            let max = rest.split_whitespace().nth(2).unwrap_or_default();
            wrk.max_us = duration_us(max).context("parse the max latency")?;
        }
    }
    if wrk.requests == 0 {
        bail!("wrk reported no requests:\n{text}");
    }
    Ok(wrk)
}

/// One of wrk's durations (`900.00us`, `1.78ms`, `1.02s`, `2.00m`) in microseconds.
fn duration_us(text: &str) -> Result<u64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok((value * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "Running 10s test @ http://127.0.0.1:1/predict\n  2 threads and 64 connections\n\
        \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
        \x20   Latency     1.78ms    2.10ms  39.80ms   89.12%\n\
        \x20   Req/Sec    15.81k     1.20k   18.00k    70.00%\n\
        \x20 Latency Distribution\n     50%  900.00us\n     75%    1.50ms\n     90%    3.00ms\n     99%    5.12ms\n\
        \x20 123456 requests in 10.00s, 20.00MB read\n  Socket errors: connect 0, read 7, write 1, timeout 0\n\
        \x20 Non-2xx or 3xx responses: 2\nRequests/sec:  12345.60\nTransfer/sec:      2.00MB\n";

    #[test]
    fn wrk_summary_is_parsed() {
        assert_eq!(
            parse(SUMMARY).unwrap(),
            Wrk {
                requests: 123_456,
                req_per_sec: 12_345.6,
                p50_us: 900,
                p99_us: 5_120,
                max_us: 39_800,
                socket_errors: 8,
                non_2xx: 2,
            }
        );
        assert_eq!(parse(SUMMARY).unwrap().failed(), 10);
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn durations_are_read_in_microseconds() {
        assert_eq!(duration_us("1.02s").unwrap(), 1_020_000);
        assert_eq!(duration_us("2.00m").unwrap(), 120_000_000);
        assert!(duration_us("12").is_err());
        assert_eq!(ms(15_100), "15.10ms");
    }

    #[test]
    fn the_script_posts_json() {
        let script = lua_script(BODY);
        assert!(script.contains("wrk.method = \"POST\""));
        assert!(script.contains(BODY));
        assert!(script.contains("application/json"));
    }
}
