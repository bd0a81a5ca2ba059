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
//! 7. a timeline through the routing nginx ([`timeline`]: 16 keep-alive clients that note
//!    which color answered each request): about 12 s of load with a `switch` at 3 s, a switch
//!    back at 6 s and a `rollback` at 9 s, charted in `docs/switch-timeline.svg`;
//! 8. the same load through a stepped canary (`canary --steps 10,25,50,100`, a 4 s hold judged
//!    from at least 100 of the canary's requests), charted in `docs/canary-timeline.svg`;
//! 9. print a table and write it into `docs/benchmarks.md` under "Switching" (only that
//!    section; `report::replace_section` is pure and tested), with the timelines' numbers and
//!    links to their charts; stop everything. A request that failed in a timeline fails the
//!    benchmark, after its chart and the section are written (they show what failed).

use std::{
    fs,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{
    report,
    timeline::{self, Op, Timeline},
    timeline_svg,
    wrk::{self, free_port, Wrk, WrkRun},
};
use crate::{
    config::DeployConfig,
    domain::Color,
    flags, host, nginx,
    util::{self, project_root},
};

const SWITCHES_IDLE: usize = 20;
const SWITCHES_LOADED: usize = 50;
const RELOADS: usize = 50;
const RESTARTS: usize = 10;
const SECTION: &str = "## Switching";
/// The canary's steps and hold (seconds) in the timeline: four steps in about 15 s of load.
const CANARY_STEPS: &str = "10,25,50,100";
const CANARY_HOLD: &str = "4";
/// Fewest canary requests per step for the canary to be judged: the load gives several hundred.
const CANARY_MIN_REQUESTS: &str = "100";
/// Where the charts go, from the project root (the section links them relative to `docs/`).
const SWITCH_SVG: &str = "docs/switch-timeline.svg";
const CANARY_SVG: &str = "docs/canary-timeline.svg";

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    host::ensure_commands(sh, &[host::NGINX, host::WRK])?;
    let dir = project_root().join("target/bench/switch");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).context("create the benchmark folder")?;
    let mut ports = [0; 8];
    for port in &mut ports {
        *port = free_port()?;
    }
    let config_path = dir.join("deploy.toml");
    fs::write(
        &config_path,
        format!(
            "[balancer]\nport = {}\ngrpc_port = {}\n[blue]\nport = {}\ngrpc_port = {}\n\
             [green]\nport = {}\ngrpc_port = {}\n[local]\nstate_dir = \"{}\"\n",
            ports[0],
            ports[4],
            ports[1],
            ports[5],
            ports[2],
            ports[6],
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
        classic_grpc_port: ports[7],
    };
    let result = bench_env.measure(sh, &global, bench);
    let _ = bench_env.classic_stop();
    let _ = (flags::Down {}).run(sh, &global);
    let (report, problems) = result?;
    crate::say!("{report}");
    report::write_doc(None, SECTION, &report)?;
    crate::say!("bench switch: wrote the \"Switching\" section of docs/benchmarks.md");
    if !problems.is_empty() {
        bail!(
            "bench switch: {} (see {SWITCH_SVG} and {CANARY_SVG}; the deployment's logs are \
             kept under {})",
            problems.join("; "),
            dir.display()
        );
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

struct Bench<'a> {
    sh: &'a Shell,
    dir: PathBuf,
    config_path: PathBuf,
    config: DeployConfig,
    classic_port: u16,
    classic_grpc_port: u16,
}

impl Bench<'_> {
    /// The report, and what went wrong in the timelines (failed requests or operations).
    fn measure(
        &self,
        sh: &Shell,
        global: &flags::Global,
        bench: &flags::Bench,
    ) -> Result<(String, Vec<String>)> {
        let machine = report::machine(sh, "wrk, nginx and both colors");
        super::up(sh, global)?;
        self.classic_start(Color::Blue)?;
        let lua = self.dir.join("predict.lua");
        wrk::write_script(&lua)?;
        let balancer = format!("http://127.0.0.1:{}", self.config.balancer.port);
        let classic = format!("http://127.0.0.1:{}", self.classic_port);
        let secs = bench.duration.max(5);
        let wrk =
            |url: &str| WrkRun::start(&lua, &format!("{url}/predict"), secs, bench.connections);

        // Alternate the two, twice, and keep each one's best run: the machine is shared, so a
        // single run of each mostly measures what else was running at the time.
        let (mut plain, mut routed) = (Wrk::default(), Wrk::default());
        for round in 1..=2 {
            crate::say!("throughput round {round}/2: plain proxy, then routing…");
            let p = wrk(&classic)?.finish()?;
            let r = wrk(&balancer)?.finish()?;
            if p.req_per_sec > plain.req_per_sec {
                plain = p;
            }
            if r.req_per_sec > routed.req_per_sec {
                routed = r;
            }
        }

        crate::say!("timing {SWITCHES_IDLE} switches without load…");
        let idle: Vec<f64> = (0..SWITCHES_IDLE)
            .map(|_| self.switch())
            .collect::<Result<_>>()?;

        let spread = Duration::from_secs_f64((secs as f64 - 2.0) / SWITCHES_LOADED as f64);
        crate::say!("{SWITCHES_LOADED} switches under load…");
        let load = wrk(&balancer)?;
        thread::sleep(Duration::from_secs(1));
        let mut loaded = Vec::new();
        for _ in 0..SWITCHES_LOADED {
            let t = Instant::now();
            loaded.push(self.switch()?);
            thread::sleep(spread.saturating_sub(t.elapsed()));
        }
        let switching = load.finish()?;

        crate::say!("{RELOADS} config edits + nginx -s reload under load…");
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

        crate::say!("{RESTARTS} nginx restarts under load…");
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

        let timelines = self.timelines()?;
        let problems = timelines.iter().flat_map(Timeline::problems).collect();

        let report = render_report(&Numbers {
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
            timelines,
        });
        Ok((report, problems))
    }

    /// Steps 7 and 8: the two timelines, each charted as soon as it is recorded.
    fn timelines(&self) -> Result<[Timeline; 2]> {
        let addr = format!("127.0.0.1:{}", self.config.balancer.port);
        crate::say!("timeline: switch, switch back and rollback under load…");
        let switching = self.timeline(
            &addr,
            "switch, switch back, rollback under load",
            &[
                Op::new(3.0, &["switch"]),
                Op::new(6.0, &["switch"]),
                Op::new(9.0, &["rollback"]),
            ],
            12,
            SWITCH_SVG,
        )?;
        crate::say!("timeline: canary --steps {CANARY_STEPS} under load…");
        let canary = [
            "canary",
            "--steps",
            CANARY_STEPS,
            "--hold",
            CANARY_HOLD,
            "--min-requests",
            CANARY_MIN_REQUESTS,
        ];
        let canary = self.timeline(
            &addr,
            &format!("canary {CANARY_STEPS} (hold {CANARY_HOLD} s) under load"),
            &[Op::new(3.0, &canary)],
            0,
            CANARY_SVG,
        )?;
        Ok([switching, canary])
    }

    /// Records `ops` under load through the balancer for at least `secs` seconds (and 3 s past
    /// the last one), and writes the chart to `svg` (from the project root) whatever happened.
    fn timeline(
        &self,
        addr: &str,
        title: &str,
        ops: &[Op],
        secs: u64,
        svg: &str,
    ) -> Result<Timeline> {
        let t = timeline::record(
            &self.dir.join("xtask"),
            &self.config_path,
            addr,
            title,
            ops,
            Duration::from_secs(secs),
            Duration::from_secs(3),
        )?;
        let path = project_root().join(svg);
        fs::write(&path, timeline_svg::svg(&t))
            .with_context(|| format!("write {}", path.display()))?;
        crate::say!(
            "  {} requests, failed: {} (blue {}, green {}); wrote {svg}",
            t.totals.requests,
            t.totals.failed,
            t.totals.blue,
            t.totals.green
        );
        Ok(t)
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
            grpc_listen: format!("127.0.0.1:{}", self.classic_grpc_port),
            blue_grpc: format!("127.0.0.1:{}", self.config.blue.grpc_port),
            green_grpc: format!("127.0.0.1:{}", self.config.green.grpc_port),
            route_dir: s("routes"),
            shadow_dir: s("shadow"),
            shadow_timeout_ms: self.config.shadow.timeout_ms,
            buckets: self.config.balancer.buckets,
            pid_path: s("nginx.pid"),
            error_log: s("logs/error.log"),
            access_log: s("logs/access.log"),
            temp_dir: s("temp"),
            read_timeout_secs: self.config.balancer.read_timeout.as_secs(),
            testers: None,
            resolver: None,
            color_prefixes: Vec::new(),
        };
        let routed = nginx::render(&params);
        let classic = strip_routing(&routed, color)?;
        let tmp = p.join("nginx.conf.tmp");
        fs::write(&tmp, classic)?;
        fs::rename(&tmp, p.join("nginx.conf")).context("write the classic config")
    }

    /// `nginx <args> -p <prefix> -c <conf> -e <error log>` for the classic nginx.
    fn classic_nginx(&self, args: &[&str]) -> Result<()> {
        let (sh, p) = (self.sh, self.classic_prefix());
        let nginx = host::find_command("nginx").context("find nginx")?;
        let (prefix, conf, err) = (
            format!("{}/", p.display()),
            p.join("nginx.conf"),
            p.join("logs/error.log"),
        );
        cmd!(sh, "{nginx} {args...} -p {prefix} -c {conf} -e {err}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .with_context(|| format!("nginx {}", args.join(" ")))
    }

    fn classic_start(&self, color: Color) -> Result<()> {
        self.classic_write(color)?;
        self.classic_nginx(&[]).context("start the classic nginx")?;
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
        self.classic_nginx(&["-s", signal])
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
    /// Switch/switch back/rollback, then the stepped canary.
    timelines: [Timeline; 2],
}

fn render_report(n: &Numbers) -> String {
    let (idle_p50, idle_max) = report::p50_max(&n.idle);
    let (load_p50, load_max) = report::p50_max(&n.loaded);
    let cost = 100.0 * (1.0 - n.routed.req_per_sec / n.plain.req_per_sec.max(1.0));
    let row = |method: &str, ops: String, w: &Wrk| {
        format!(
            "| {method} | {ops} | {:.0} | {} | {} | {} |\n",
            w.req_per_sec,
            w.requests,
            w.failed(),
            wrk::ms(w.p99_us)
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
    s += &timeline_section(&n.timelines);
    s
}

/// The timelines' numbers and their charts (linked relative to `docs/benchmarks.md`).
fn timeline_section(timelines: &[Timeline]) -> String {
    let mut s = format!(
        "\n**Timelines** (the charts below): {} keep-alive clients of the benchmark's own posting \
         predictions through the balancer without retries (a request unanswered in {} s, an I/O \
         error or a non-2xx answer counts as failed); each answer counted by the color in its \
         `X-Served-By`, per {} ms. The first run switches at 3 s, switches back at 6 s and rolls \
         back at 9 s; the second steps a canary through {CANARY_STEPS} % holding {CANARY_HOLD} s \
         per step, each step judged from the canary's own metrics (at least {CANARY_MIN_REQUESTS} \
         requests).\n\n",
        timeline::CLIENTS,
        timeline::CLIENT_TIMEOUT.as_secs(),
        timeline::BUCKET.as_millis()
    );
    s += "| run | requests | failed | answered by blue | answered by green |\n";
    s += "| --- | ---: | ---: | ---: | ---: |\n";
    for t in timelines {
        let n = &t.totals;
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            t.title, n.requests, n.failed, n.blue, n.green
        );
    }
    for (svg, alt) in [
        (
            SWITCH_SVG,
            "requests per second by color through a switch, a switch back and a rollback",
        ),
        (
            CANARY_SVG,
            "requests per second by color through a stepped canary",
        ),
    ] {
        s += &format!("\n![{alt}]({})\n", svg.trim_start_matches("docs/"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_config_has_no_routing() {
        let rendered = nginx::render(&nginx::NginxParams::container_default());
        let classic = strip_routing(&rendered, Color::Green).unwrap();
        assert!(classic.contains("proxy_pass http://green;"));
        assert!(!classic.contains("if (-f"));
        assert!(!classic.contains("$color;\n            }"));
    }

    #[test]
    fn timeline_section_counts_and_links_the_charts() {
        let mut run = Timeline {
            title: "switch under load".into(),
            ..Timeline::default()
        };
        run.totals.requests = 1200;
        run.totals.blue = 700;
        run.totals.green = 500;
        let section = timeline_section(&[run]);
        assert!(section.contains("| switch under load | 1200 | 0 | 700 | 500 |"));
        assert!(
            section.contains("](switch-timeline.svg)\n")
                && section.contains("](canary-timeline.svg)\n")
        );
    }
}
