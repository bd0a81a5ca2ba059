//! `cargo xtask bench shadow`: what mirroring prediction requests to the standby costs clients.
//!
//! Steps (a private local deployment on free ports under `target/bench/shadow`, release service
//! binary; wrk 2 threads, keep-alive `POST /predict` through the balancer, no retries):
//! 1. `up` blue and green behind the balancer; the active color is the one the balancer says it
//!    routed a request to (`X-Routed-To`), the standby the other;
//! 2. two alternating rounds of three phases, keeping each phase's best req/s (the machine is
//!    shared): shadow off, shadow 10 %, shadow 100 %. The mirror is started and stopped by
//!    swapping the shadow link over the runtime's host directory ([`Shadow`]), as
//!    `cargo xtask shadow` does; each phase reads both journals' last record before and after,
//!    and a mirrored phase in which no copy reached the standby fails the benchmark;
//! 3. once: shadow 100 % with the standby hung (SIGSTOP, SIGCONT on every exit path);
//! 4. stop the mirror, print the section, write it under "Shadow" in `docs/benchmarks.md`;
//!    `down` and remove the folder on every exit path.
//!
//! wrk is the load and the xtask only waits while it runs, so a debug build measures the same.

use std::{fs, path::Path, thread, time::Duration};

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;
use xshell::{cmd, Shell};

use super::{
    report,
    wrk::{self, Wrk, WrkRun},
};
use crate::{
    domain::{shadow::Page, Color},
    flags, host, http,
    runtime::{self, shadow::Shadow, Part},
    util,
};

const SECTION: &str = "## Shadow";
/// A journal page with no records: only its sequence numbers.
const JOURNAL_MARK: &str = "/_shadow/records?after=0&limit=0";
/// Rounds of the off / 10 % / 100 % phases; each phase keeps its best.
const ROUNDS: usize = 2;
/// How long a standby resumed after SIGCONT may take to answer its journal again.
const RESUME_PATIENCE: Duration = Duration::from_secs(15);

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    host::ensure_commands(sh, &[host::NGINX, host::WRK])?;
    let private = super::Private::new("shadow", "")?;
    let result = measure(sh, &private.global, bench, &private.dir, &private.state);
    private.remove(sh);
    let report = result?;
    crate::say!("{report}");
    report::write_doc(None, SECTION, &report)?;
    crate::say!("bench shadow: wrote the \"Shadow\" section of docs/benchmarks.md");
    Ok(())
}

/// One phase's wrk numbers and how far each journal moved during it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Phase {
    wrk: Wrk,
    /// Mirrored requests the active color answered (its journal records those too).
    sampled: u64,
    /// Copies the standby answered.
    answered: u64,
}

/// What the report is made of.
struct Numbers {
    machine: String,
    connections: u32,
    secs: u64,
    budget_ms: u64,
    active: Color,
    off: Phase,
    ten: Phase,
    full: Phase,
    hung: Phase,
}

fn measure(
    sh: &Shell,
    global: &flags::Global,
    bench: &flags::Bench,
    dir: &Path,
    state: &Path,
) -> Result<String> {
    let config = crate::config::load(&global.config)?;
    let machine = report::machine(sh, "wrk, nginx and both colors");
    super::up(sh, global)?;
    let rt = runtime::open(sh, global, &config)?;
    let client = http::client()?;
    let balancer = rt.url(Part::Balancer);
    let active = active_color(&client, &balancer)?;
    let standby = active.other();
    let journals = Journals {
        client: &client,
        active: rt.url(Part::Color(active)),
        standby: rt.url(Part::Color(standby)),
    };
    let lua = dir.join("predict.lua");
    wrk::write_script(&lua)?;
    let secs = bench.duration.max(5);
    let budget = Duration::from_millis(config.shadow.timeout_ms);
    let load = || {
        WrkRun::start(
            &lua,
            &format!("{balancer}/predict"),
            secs,
            bench.connections,
        )?
        .finish()
    };

    let shadow = Shadow::new(rt.host());
    let _mirror = MirrorGuard(&shadow);
    let buckets = config.balancer.buckets;
    let phase = |percent: Option<u8>| -> Result<Phase> {
        match percent {
            None => shadow.stop()?,
            Some(percent) => shadow.start(standby, percent, buckets)?,
        }
        let before = journals.marks()?;
        let run = load()?;
        // Copies still on their way get the mirror's whole budget to be answered.
        thread::sleep(budget + Duration::from_millis(100));
        let measured = journals.since(before, run)?;
        if percent.is_some() && measured.answered == 0 {
            bail!(
                "no copy reached the standby {standby} during the {} % run (its journal did not move): \
                 the mirror does not work; try `cargo xtask shadow` on a deployment",
                percent.unwrap_or_default()
            );
        }
        crate::say!(
            "  {}: {:.0} req/s, p99 {}, {} copies answered by {standby}",
            name(percent),
            measured.wrk.req_per_sec,
            wrk::ms(measured.wrk.p99_us),
            measured.answered
        );
        Ok(measured)
    };

    // Alternate the phases and keep each one's best run: the machine is shared, so a single
    // run of each mostly measures what else was running at the time.
    let mut best: [Phase; 3] = Default::default();
    for round in 1..=ROUNDS {
        crate::say!(
            "round {round}/{ROUNDS}: shadow off, 10 %, 100 % ({secs} s each, active {active})…"
        );
        for (best, percent) in best.iter_mut().zip([None, Some(10), Some(100)]) {
            let measured = phase(percent)?;
            if measured.wrk.req_per_sec > best.wrk.req_per_sec {
                *best = measured;
            }
        }
    }

    crate::say!("shadow 100 % with the standby {standby} hung (SIGSTOP)…");
    shadow.start(standby, 100, buckets)?;
    let before = journals.marks()?;
    let pid_file = state.join(format!("{standby}.pid"));
    let stopped = Hung::stop(sh, &pid_file)?;
    let run = load();
    drop(stopped);
    let run = run?;
    shadow.stop()?;
    // A resumed standby answers what was queued on its sockets before its journal.
    let hung = util::poll("the resumed standby's journal", RESUME_PATIENCE, || {
        journals.since(before, run.clone())
    })?;
    crate::say!(
        "  hung standby: {:.0} req/s, p99 {}, max {}",
        hung.wrk.req_per_sec,
        wrk::ms(hung.wrk.p99_us),
        wrk::ms(hung.wrk.max_us)
    );
    let [off, ten, full] = best;
    Ok(render_report(&Numbers {
        machine,
        connections: bench.connections,
        secs,
        budget_ms: config.shadow.timeout_ms,
        active,
        off,
        ten,
        full,
        hung,
    }))
}

/// The color the balancer routes to now: what it says in `X-Routed-To` for one prediction.
fn active_color(client: &Client, balancer: &str) -> Result<Color> {
    let response = client
        .post(format!("{balancer}/predict"))
        .header("content-type", "application/json")
        .body(wrk::BODY)
        .send()
        .context("send one prediction through the balancer")?;
    let routed = response
        .headers()
        .get("x-routed-to")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !response.status().is_success() {
        bail!(
            "the balancer answered {} to a prediction after `up`",
            response.status()
        );
    }
    routed
        .parse()
        .map_err(|_| anyhow::anyhow!("the balancer's X-Routed-To is {routed:?}, not a color"))
}

/// Both colors' shadow journals, on their direct ports.
struct Journals<'a> {
    client: &'a Client,
    active: String,
    standby: String,
}

impl Journals<'_> {
    /// Each journal's last sequence number: (active, standby).
    fn marks(&self) -> Result<(u64, u64)> {
        Ok((self.last(&self.active)?, self.last(&self.standby)?))
    }

    /// A phase's numbers: `wrk` and how far the journals moved since `before`.
    fn since(&self, before: (u64, u64), wrk: Wrk) -> Result<Phase> {
        let after = self.marks()?;
        Ok(Phase {
            wrk,
            sampled: after.0.saturating_sub(before.0),
            answered: after.1.saturating_sub(before.1),
        })
    }

    fn last(&self, url: &str) -> Result<u64> {
        let address = format!("{url}{JOURNAL_MARK}");
        let response = self
            .client
            .get(&address)
            .send()
            .with_context(|| format!("no answer from the shadow journal {address}"))?;
        if !response.status().is_success() {
            bail!(
                "the shadow journal {address} answered {}",
                response.status()
            );
        }
        let page: Page = response
            .json()
            .with_context(|| format!("read the shadow journal {address}"))?;
        Ok(page.last)
    }
}

/// Stops the mirror when dropped, so no exit path leaves it on.
struct MirrorGuard<'a>(&'a Shadow<'a>);

impl Drop for MirrorGuard<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.0.stop() {
            crate::say!("warning: could not stop the mirror: {err:#}");
        }
    }
}

/// A color stopped with SIGSTOP; dropping it sends SIGCONT, so no exit path leaves it hung.
struct Hung<'a> {
    sh: &'a Shell,
    pid: String,
}

impl<'a> Hung<'a> {
    fn stop(sh: &'a Shell, pid_file: &Path) -> Result<Hung<'a>> {
        let pid = fs::read_to_string(pid_file)
            .with_context(|| format!("read {}", pid_file.display()))?
            .trim()
            .to_owned();
        if pid.parse::<u32>().is_err() {
            bail!("{} holds {pid:?}, not a pid", pid_file.display());
        }
        cmd!(sh, "kill -STOP {pid}")
            .quiet()
            .run()
            .context("hang the standby (SIGSTOP)")?;
        Ok(Hung { sh, pid })
    }
}

impl Drop for Hung<'_> {
    fn drop(&mut self) {
        let (sh, pid) = (self.sh, &self.pid);
        if let Err(err) = cmd!(sh, "kill -CONT {pid}").quiet().run() {
            crate::say!("warning: could not resume the standby (pid {pid}): {err:#}");
        }
    }
}

/// A phase's name in progress lines.
fn name(percent: Option<u8>) -> String {
    percent.map_or("shadow off".into(), |p| format!("shadow {p} %"))
}

fn render_report(n: &Numbers) -> String {
    let standby = n.active.other();
    let off = n.off.wrk.req_per_sec.max(1.0);
    let row = |phase: &str, p: &Phase, change: String| {
        format!(
            "| {phase} | {:.0} | {change} | {} | {} | {} | {} | {} | {} |\n",
            p.wrk.req_per_sec,
            wrk::ms(p.wrk.p50_us),
            wrk::ms(p.wrk.p99_us),
            wrk::ms(p.wrk.max_us),
            p.wrk.failed(),
            p.sampled,
            p.answered,
        )
    };
    let mut s = String::new();
    s += &format!(
        "Measured by `cargo xtask bench shadow` (local runtime, release `ml-service`, both colors on this machine; \
         wrk 2 threads, {} keep-alive connections, `POST /predict` through the balancer, {} s per run, no retries; \
         {active} active, copies to {standby}; mirror budget `[shadow] timeout_ms = {}`). {}\n\n",
        n.connections,
        n.secs,
        n.budget_ms,
        n.machine,
        active = n.active,
    );
    s += "| phase | req/s | req/s vs off | p50 | p99 | max | errors | mirrored requests (active's journal) | copies answered by the standby |\n";
    s += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let vs_off = |p: &Phase| format!("{:+.1} %", 100.0 * (p.wrk.req_per_sec - off) / off);
    s += &row("shadow off (best of 2)", &n.off, "—".into());
    s += &row("shadow 10 % (best of 2)", &n.ten, vs_off(&n.ten));
    s += &row("shadow 100 % (best of 2)", &n.full, vs_off(&n.full));
    s += &row(
        "shadow 100 %, standby hung (SIGSTOP)",
        &n.hung,
        vs_off(&n.hung),
    );
    s += "\nErrors are wrk's socket errors plus non-2xx answers. The journal columns are how far each \
          color's shadow journal moved during the run: the active color records every request the mirror \
          sampled, the standby every copy it answered (for the hung row, counted after SIGCONT).\n\n";
    s += "On this machine mirroring costs clients the standby's work on the same 2 cores: it computes every \
          copy beside the active color, nginx and wrk, and nginx reads a connection's next request only once \
          that connection's copy is answered (or its budget is spent), so a copy slowed by the shared CPU \
          also delays a client. A standby on its own machine, answering copies as fast as the active color \
          answers the originals, would take little of this from clients: these rows are an upper bound for \
          one small machine, not the price of mirroring.";
    if n.hung.wrk.req_per_sec > n.full.wrk.req_per_sec {
        s += &format!(
            " Sampling and journaling every request without a standby computing the copies (the hung row, \
             whose copies go to nginx's local sink) cost {:.0} % against shadow off; the rest of the 100 % \
             row's cost is the standby computing the copies.",
            100.0 * (off - n.hung.wrk.req_per_sec).max(0.0) / off
        );
    }
    s += &format!(
        "\n\nThe hung row shows the budget: nginx gives a copy at most {budget} ms, marks a standby that \
         misses it down for 5 s (copies go to the sink meanwhile) and then tries it with one copy again, so \
         clients wait the budget only for the copies in flight when the hang starts and for those probes. \
         Its max latency was {max}; {failed} requests failed.\n",
        budget = n.budget_ms,
        max = wrk::ms(n.hung.wrk.max_us),
        failed = n.hung.wrk.failed(),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(req_per_sec: f64, p99_us: u64, sampled: u64, answered: u64) -> Phase {
        Phase {
            wrk: Wrk {
                requests: 1000,
                req_per_sec,
                p50_us: 1_000,
                p99_us,
                max_us: 2 * p99_us,
                socket_errors: 1,
                non_2xx: 2,
            },
            sampled,
            answered,
        }
    }

    #[test]
    fn the_report_has_a_row_per_phase_against_shadow_off() {
        let report = render_report(&Numbers {
            machine: "Machine: test.".into(),
            connections: 64,
            secs: 10,
            budget_ms: 200,
            active: Color::Blue,
            off: phase(5000.0, 4_000, 0, 0),
            ten: phase(4500.0, 5_000, 4_500, 4_500),
            full: phase(2500.0, 9_000, 25_000, 25_000),
            hung: phase(4000.0, 6_000, 40_000, 60),
        });
        assert!(report.contains("blue active, copies to green"));
        assert!(report.contains(
            "| shadow off (best of 2) | 5000 | — | 1.00ms | 4.00ms | 8.00ms | 3 | 0 | 0 |"
        ));
        assert!(report.contains("| shadow 10 % (best of 2) | 4500 | -10.0 % |"));
        assert!(report.contains("| shadow 100 %, standby hung (SIGSTOP) | 4000 | -20.0 % | 1.00ms | 6.00ms | 12.00ms | 3 | 40000 | 60 |"));
        assert!(report.contains("at most 200 ms"));
        assert!(report.contains("cost 20 % against shadow off"));
        assert!(report.contains("Its max latency was 12.00ms; 3 requests failed."));
    }

    #[test]
    fn phases_are_named_for_progress() {
        assert_eq!(name(None), "shadow off");
        assert_eq!(name(Some(10)), "shadow 10 %");
    }
}
