//! `cargo xtask bench switch`: switching traffic under keep-alive load, against the old ways.
//!
//! Steps (a private deployment on free ports under `target/bench/switch`, local runtime,
//! release service binary; wrk with 2 threads, keep-alive `POST /predict`, no retries):
//! 1. `up` blue and green behind the routing nginx, and a second "classic" nginx whose config
//!    names one upstream directly (the old scripts' config, no routing at all);
//! 2. throughput: wrk against the classic nginx, then against the routing one (the cost of
//!    `split_clients` + one `stat()` per request);
//! 3. 20 `cargo xtask switch` runs without load: wall time p50 / max (gates + swap + verify);
//! 4. 50 switches spread over a wrk run through the routing nginx: failed requests, req/s held;
//! 5. 50 "edit the config + `nginx -s reload`" on the classic nginx under the same load;
//! 6. 10 nginx restarts on the classic nginx under the same load;
//! 7. print a table and write it into `docs/benchmarks.md` under "Switching" (only that
//!    section; [`replace_section`] is pure and tested); stop everything.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    config::DeployConfig,
    domain::Color,
    flags, nginx, setup,
    util::{self, project_root},
};

const SWITCHES_IDLE: usize = 20;
const SWITCHES_LOADED: usize = 50;
const RELOADS: usize = 50;
const RESTARTS: usize = 10;
const SECTION: &str = "## Switching";

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    setup::ensure_commands(sh, &[setup::NGINX, setup::WRK])?;
    let dir = project_root().join("target/bench/switch");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).context("create the benchmark folder")?;
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let config_path = dir.join("deploy.toml");
    fs::write(
        &config_path,
        format!(
            "[balancer]\nport = {}\n[blue]\nport = {}\n[green]\nport = {}\n[local]\nstate_dir = \"{}\"\n",
            ports[0],
            ports[1],
            ports[2],
            dir.join("state").display()
        ),
    )?;
    // A private copy of this binary for the timed `switch` runs: a rebuild of `target/` during
    // the benchmark must not pull it away.
    fs::copy("/proc/self/exe", dir.join("xtask")).context("copy the xtask binary")?;
    let global = flags::Global {
        runtime: flags::RuntimeKind::Local,
        config: config_path.clone(),
    };
    let config = crate::config::load(&config_path)?;
    let bench_env = Bench {
        sh,
        dir: dir.clone(),
        config_path,
        config,
        classic_port: ports[3],
    };
    let result = bench_env.measure(sh, &global, bench);
    let _ = bench_env.classic_stop();
    let _ = (flags::Down {}).run(sh, &global);
    let report = result?;
    let _ = fs::remove_dir_all(&dir);
    println!("{report}");
    let path = project_root().join("docs/benchmarks.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    fs::write(&path, replace_section(&doc, SECTION, &report))
        .context("write docs/benchmarks.md")?;
    println!("bench switch: wrote the \"Switching\" section of docs/benchmarks.md");
    Ok(())
}

struct Bench<'a> {
    sh: &'a Shell,
    dir: PathBuf,
    config_path: PathBuf,
    config: DeployConfig,
    classic_port: u16,
}

/// One wrk run's numbers.
#[derive(Debug, Default, Clone, PartialEq)]
struct Wrk {
    requests: u64,
    req_per_sec: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    failed: u64,
    latency_p99: String,
}

impl Bench<'_> {
    fn measure(&self, sh: &Shell, global: &flags::Global, bench: &flags::Bench) -> Result<String> {
        let machine = machine(sh);
        (flags::Up {
            blue: None,
            green: None,
            nginx_conf: None,
        })
        .run(sh, global)?;
        self.classic_start(Color::Blue)?;
        let lua = self.dir.join("predict.lua");
        fs::write(
            &lua,
            "wrk.method = \"POST\"\nwrk.body = '{\"features\":[5.1,3.5,1.4,0.2]}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
        )?;
        let balancer = format!("http://127.0.0.1:{}", self.config.balancer.port);
        let classic = format!("http://127.0.0.1:{}", self.classic_port);
        let secs = bench.duration.max(5);
        let wrk = |url: &str| self.wrk_start(&lua, url, secs, bench.connections);

        // Alternate the two, twice, and keep each one's best run: the machine is shared, so a
        // single run of each mostly measures what else was running at the time.
        let (mut plain, mut routed) = (Wrk::default(), Wrk::default());
        for round in 1..=2 {
            println!("throughput round {round}/2: plain proxy, then routing…");
            let p = wrk(&classic)?.finish()?;
            let r = wrk(&balancer)?.finish()?;
            if p.req_per_sec > plain.req_per_sec {
                plain = p;
            }
            if r.req_per_sec > routed.req_per_sec {
                routed = r;
            }
        }

        println!("timing {SWITCHES_IDLE} switches without load…");
        let idle: Vec<f64> = (0..SWITCHES_IDLE)
            .map(|_| self.switch())
            .collect::<Result<_>>()?;

        let spread = Duration::from_secs_f64((secs as f64 - 2.0) / SWITCHES_LOADED as f64);
        println!("{SWITCHES_LOADED} switches under load…");
        let load = wrk(&balancer)?;
        thread::sleep(Duration::from_secs(1));
        let mut loaded = Vec::new();
        for _ in 0..SWITCHES_LOADED {
            let t = Instant::now();
            loaded.push(self.switch()?);
            thread::sleep(spread.saturating_sub(t.elapsed()));
        }
        let switching = load.finish()?;

        println!("{RELOADS} config edits + nginx -s reload under load…");
        let load = wrk(&classic)?;
        thread::sleep(Duration::from_secs(1));
        let mut color = Color::Blue;
        for _ in 0..RELOADS {
            let t = Instant::now();
            color = color.other();
            self.classic_write(color)?;
            self.classic_signal("reload")?;
            thread::sleep(spread.saturating_sub(t.elapsed()));
        }
        let reloading = load.finish()?;

        println!("{RESTARTS} nginx restarts under load…");
        let load = wrk(&classic)?;
        thread::sleep(Duration::from_secs(1));
        let spread_restart = Duration::from_secs_f64((secs as f64 - 2.0) / RESTARTS as f64);
        for _ in 0..RESTARTS {
            let t = Instant::now();
            self.classic_stop()?;
            self.classic_start(color)?;
            thread::sleep(spread_restart.saturating_sub(t.elapsed()));
        }
        let restarting = load.finish()?;

        Ok(render_report(&Numbers {
            machine,
            connections: bench.connections,
            secs,
            plain,
            routed,
            idle,
            loaded,
            switching,
            reloading,
            restarting,
        }))
    }

    /// Runs `cargo xtask switch` (this binary) and returns its wall time in seconds.
    fn switch(&self) -> Result<f64> {
        let t = Instant::now();
        let out = Command::new(self.dir.join("xtask"))
            .args(["--runtime", "local", "--config"])
            .arg(&self.config_path)
            .arg("switch")
            .output()
            .context("run xtask switch")?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "switch failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(secs)
    }

    fn classic_prefix(&self) -> PathBuf {
        self.dir.join("classic")
    }

    /// The old scripts' config: the rendered config with the routing taken out, proxying to
    /// one color named in the file.
    fn classic_write(&self, color: Color) -> Result<()> {
        let p = self.classic_prefix();
        for sub in ["logs", "temp"] {
            fs::create_dir_all(p.join(sub))?;
        }
        let s = |rel: &str| p.join(rel).display().to_string();
        let params = nginx::NginxParams {
            listen: format!("127.0.0.1:{}", self.classic_port),
            blue: format!("127.0.0.1:{}", self.config.blue.port),
            green: format!("127.0.0.1:{}", self.config.green.port),
            route_dir: s("routes"),
            buckets: self.config.balancer.buckets,
            pid_path: s("nginx.pid"),
            error_log: s("logs/error.log"),
            access_log: s("logs/access.log"),
            temp_dir: s("temp"),
        };
        let routed = nginx::render(&params);
        let classic = strip_routing(&routed, color)?;
        let tmp = p.join("nginx.conf.tmp");
        fs::write(&tmp, classic)?;
        fs::rename(&tmp, p.join("nginx.conf")).context("write the classic config")
    }

    fn classic_start(&self, color: Color) -> Result<()> {
        self.classic_write(color)?;
        let (sh, p) = (self.sh, self.classic_prefix());
        let nginx = setup::find_command("nginx").context("find nginx")?;
        let (prefix, conf, err) = (
            format!("{}/", p.display()),
            p.join("nginx.conf"),
            p.join("logs/error.log"),
        );
        cmd!(sh, "{nginx} -p {prefix} -c {conf} -e {err}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .context("start the classic nginx")?;
        let url = format!("127.0.0.1:{}", self.classic_port);
        util::poll(
            "the classic nginx to listen",
            Duration::from_secs(5),
            || {
                std::net::TcpStream::connect(&url)
                    .map(drop)
                    .context("not listening yet")
            },
        )
    }

    fn classic_signal(&self, signal: &str) -> Result<()> {
        let (sh, p) = (self.sh, self.classic_prefix());
        let nginx = setup::find_command("nginx").context("find nginx")?;
        let (prefix, conf, err) = (
            format!("{}/", p.display()),
            p.join("nginx.conf"),
            p.join("logs/error.log"),
        );
        cmd!(sh, "{nginx} -s {signal} -p {prefix} -c {conf} -e {err}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .with_context(|| format!("nginx -s {signal}"))
    }

    /// Stops the classic nginx (`-s quit`, graceful) and waits until its master has exited.
    fn classic_stop(&self) -> Result<()> {
        let pid_file = self.classic_prefix().join("nginx.pid");
        let Ok(pid) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let pid = pid.trim().to_owned();
        self.classic_signal("quit")?;
        util::poll("the classic nginx to stop", Duration::from_secs(10), || {
            let alive =
                fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
            anyhow::ensure!(!alive, "still running");
            Ok(())
        })
    }

    fn wrk_start(&self, lua: &Path, url: &str, secs: u64, connections: u32) -> Result<WrkRun> {
        let wrk = setup::find_command("wrk").context("find wrk")?;
        // wrk runs in the background while this thread switches, so `Command`, not `cmd!`.
        let child = Command::new(wrk)
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{secs}s"),
                "--latency",
                "-s",
            ])
            .arg(lua)
            .arg(format!("{url}/predict"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start wrk")?;
        Ok(WrkRun { child })
    }
}

struct WrkRun {
    child: std::process::Child,
}

impl WrkRun {
    fn finish(self) -> Result<Wrk> {
        let out = self.child.wait_with_output().context("wait for wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        parse_wrk(&text)
    }
}

/// Reads wrk's summary: requests, req/s, socket errors and non-2xx answers, p99 latency.
fn parse_wrk(text: &str) -> Result<Wrk> {
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
            wrk.failed += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.failed += rest.trim().parse::<u64>().context("parse Non-2xx")?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            wrk.latency_p99 = rest.trim().to_owned();
        }
    }
    if wrk.requests == 0 {
        bail!("wrk reported no requests:\n{text}");
    }
    Ok(wrk)
}

/// Takes the per-request routing out of a rendered config: proxy straight to `color`.
fn strip_routing(rendered: &str, color: Color) -> Result<String> {
    let mut out = String::new();
    let mut skipping = false;
    for line in rendered.lines() {
        let t = line.trim();
        if t.starts_with("if (-f ") {
            skipping = true;
            continue;
        }
        if skipping {
            skipping = t != "}";
            continue;
        }
        if t == "proxy_pass http://$color;" {
            out += &line.replace("$color", color.as_str());
        } else if t == "set $color blue;" {
            out += &line.replace("blue", color.as_str());
        } else {
            out += line;
        }
        out.push('\n');
    }
    if !out.contains(&format!("proxy_pass http://{color};")) || out.contains("if (-f") {
        bail!("the rendered config no longer has the expected routing lines");
    }
    Ok(out)
}

struct Numbers {
    machine: String,
    connections: u32,
    secs: u64,
    plain: Wrk,
    routed: Wrk,
    idle: Vec<f64>,
    loaded: Vec<f64>,
    switching: Wrk,
    reloading: Wrk,
    restarting: Wrk,
}

fn p50_max(times: &[f64]) -> (f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    (p50, sorted.last().copied().unwrap_or(0.0))
}

fn render_report(n: &Numbers) -> String {
    let (idle_p50, idle_max) = p50_max(&n.idle);
    let (load_p50, load_max) = p50_max(&n.loaded);
    let cost = 100.0 * (1.0 - n.routed.req_per_sec / n.plain.req_per_sec.max(1.0));
    let row = |method: &str, ops: String, w: &Wrk| {
        format!(
            "| {method} | {ops} | {:.0} | {} | {} | {} |\n",
            w.req_per_sec, w.requests, w.failed, w.latency_p99
        )
    };
    let mut s = String::new();
    s += &format!(
        "Measured by `cargo xtask bench switch` (local runtime, release `ml-service`, nginx as the balancer; \
         wrk 2 threads, {} keep-alive connections, `POST /predict`, {} s per run, no retries). {}\n\n",
        n.connections, n.secs, n.machine
    );
    s += &format!(
        "**`cargo xtask switch` wall time** (gates + swap + verify through the balancer, a whole process run): \
         p50 {:.3} s, max {:.3} s over {} switches without load; p50 {:.3} s, max {:.3} s over {} under load.\n\n",
        idle_p50,
        idle_max,
        n.idle.len(),
        load_p50,
        load_max,
        n.loaded.len()
    );
    s += "| method | operations during the run | req/s held | requests | failed requests | p99 latency |\n";
    s += "| --- | --- | ---: | ---: | ---: | ---: |\n";
    s += &row(
        "route swap (this tool)",
        format!("{} switches", n.loaded.len()),
        &n.switching,
    );
    s += &row(
        "edit config + `nginx -s reload`",
        format!("{RELOADS} reloads"),
        &n.reloading,
    );
    s += &row(
        "restart nginx",
        format!("{RESTARTS} restarts"),
        &n.restarting,
    );
    s += &row(
        "routing config, no operations (best of 2)",
        "none".into(),
        &n.routed,
    );
    s += &row(
        "plain proxy (no routing), no operations (best of 2)",
        "none".into(),
        &n.plain,
    );
    let verdict = if cost < 5.0 {
        format!("{cost:.1} %, within the run-to-run noise of this shared machine")
    } else {
        format!("{cost:.1} % of throughput")
    };
    s += &format!(
        "\nCost of the routing (`split_clients` + one `stat()` per request) against plain proxying: {verdict} \
         ({:.0} vs {:.0} req/s). Failed requests are wrk's socket errors plus non-2xx answers; the reload and \
         restart runs use the same nginx with the routing taken out and the upstream named in the file.\n",
        n.routed.req_per_sec, n.plain.req_per_sec
    );
    s
}

fn machine(sh: &Shell) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let nginx = cmd!(sh, "nginx -v")
        .quiet()
        .ignore_status()
        .output()
        .map_or(String::new(), |o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_owned()
        });
    let load = fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores (shared by wrk, nginx and both colors; load average before the run {load}); {nginx}."
    )
}

/// Replaces the body of the `heading` section of a Markdown document (up to the next heading of
/// the same or a higher level), or appends the section; other sections are left as they are.
pub fn replace_section(doc: &str, heading: &str, body: &str) -> String {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let is_boundary = |line: &str| {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        hashes > 0 && hashes <= level && line[hashes..].starts_with(' ')
    };
    let lines: Vec<&str> = doc.lines().collect();
    let section = format!("{heading}\n\n{}\n", body.trim_end());
    match lines.iter().position(|l| l.trim_end() == heading) {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|l| is_boundary(l))
                .map_or(lines.len(), |i| start + 1 + i);
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out += &section;
            if end < lines.len() {
                out += "\n";
                out += &lines[end..].join("\n");
                out.push('\n');
            }
            out
        }
        None => format!("{}\n\n{section}", doc.trim_end()),
    }
}

/// A port nothing listens on, below Linux's ephemeral range so that none of wrk's outgoing
/// connections can hold it when a restarted nginx binds it again.
fn free_port() -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let offset = std::process::id() % 5_000;
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (20_000 + (offset + n * 7) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between 20000 and 32000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_section_touches_only_its_section() {
        let doc = "# Benchmarks\n\n## Model service\n\nfast\n\n## Switching\n\nold\nnumbers\n\n## Later\n\nkeep\n";
        let out = replace_section(doc, "## Switching", "new");
        assert_eq!(
            out,
            "# Benchmarks\n\n## Model service\n\nfast\n\n## Switching\n\nnew\n\n## Later\n\nkeep\n"
        );
        let appended = replace_section(
            "# Benchmarks\n\n## Model service\n\nfast\n",
            "## Switching",
            "new",
        );
        assert_eq!(
            appended,
            "# Benchmarks\n\n## Model service\n\nfast\n\n## Switching\n\nnew\n"
        );
        let last = replace_section(
            "## Switching\n\nold\n### detail\nx\n",
            "## Switching",
            "new",
        );
        assert_eq!(last, "## Switching\n\nnew\n");
    }

    #[test]
    fn wrk_summary_is_parsed() {
        let text = "Running 10s test @ http://127.0.0.1:1\n  Latency Distribution\n     50%    1.00ms\n     99%    5.12ms\n\
                    \x20 123456 requests in 10.00s, 20.00MB read\n  Socket errors: connect 0, read 7, write 1, timeout 0\n\
                    \x20 Non-2xx or 3xx responses: 2\nRequests/sec:  12345.60\nTransfer/sec:      2.00MB\n";
        let wrk = parse_wrk(text).unwrap();
        assert_eq!(
            wrk,
            Wrk {
                requests: 123_456,
                req_per_sec: 12_345.6,
                failed: 10,
                latency_p99: "5.12ms".into()
            }
        );
    }

    #[test]
    fn classic_config_has_no_routing() {
        let rendered = nginx::render(&nginx::NginxParams::container_default());
        let classic = strip_routing(&rendered, Color::Green).unwrap();
        assert!(classic.contains("proxy_pass http://green;"));
        assert!(!classic.contains("if (-f"));
        assert!(!classic.contains("$color;\n            }"));
    }
}
