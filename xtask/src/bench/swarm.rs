//! `cargo xtask bench swarm`: the swarm runtime on a one-node swarm, under `wrk`.
//!
//! Steps (a stack of its own, so a developer's deployment is never touched):
//! 1. make sure a Docker engine answers, `wrk` is installed and the engine is a swarm manager
//!    (a one-node swarm is made when it is in none, and left again at the end);
//! 2. a private `deploy.toml` under `target/bench/swarm`: stack `mldeploy-bswarm-<pid>`, free
//!    ports, two unused subnets; a copy of this binary drives it (`--runtime swarm`), and a
//!    guard runs `down` whatever happens;
//! 3. `up --replicas 1`, then for 1, 2 and 3 replicas per color (`scale` both colors): `wrk`
//!    (keep-alive `POST /predict` through the balancer) for `--duration` seconds: req/s, p50,
//!    p99;
//! 4. with 3 replicas: 10 `switch` runs without load (wall time p50 / max);
//! 5. wrk while 6 switches and 2 rollbacks run: failed requests (must be 0);
//! 6. wrk while one replica of the active color is killed (`docker kill`): failed requests and
//!    the largest latency (a request sent to the dead address waits for the connect timeout
//!    before nginx passes it to another replica);
//! 7. print the report and write it as the section "Swarm" of `docs/benchmarks.md`.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{
    report,
    wrk::{self, free_port, Wrk, WrkRun},
};
use crate::{docker, flags, host, util::project_root};

const SECTION: &str = "## Swarm";
const SWITCHES_IDLE: usize = 10;
/// Load before and after the operations of a loaded run.
const MARGIN: Duration = Duration::from_secs(2);

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    docker::ensure_engine(sh).context("start the Docker engine")?;
    host::ensure_commands(sh, &[host::WRK]).context("install wrk")?;
    let load_before = report::load_average();
    let made_swarm = crate::runtime::swarm::one_node_swarm(sh)?;
    let result = (|| {
        let stack = Stack::new(sh)?;
        let numbers = measure(sh, &stack, bench);
        drop(stack);
        numbers
    })();
    if made_swarm {
        let _ = crate::runtime::swarm::leave_swarm(sh);
    }
    let numbers = result?;
    let report = render(&numbers, &report::cpu(), &load_before, bench.connections);
    crate::say!("{report}");
    report::write_doc(None, SECTION, &report)?;
    crate::say!("bench swarm: wrote the section \"Swarm\" of docs/benchmarks.md");
    let failed = numbers.operating.failed() + numbers.killing.failed();
    if failed > 0 {
        bail!("{failed} requests failed while switching or while a replica was killed");
    }
    Ok(())
}

/// The benchmark's stack: a private configuration and binary; `down` when dropped.
struct Stack {
    exe: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    name: String,
    port: u16,
}

impl Stack {
    fn new(sh: &Shell) -> Result<Stack> {
        let dir = project_root().join("target/bench/swarm");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).context("create the benchmark folder")?;
        let name = format!("mldeploy-bswarm-{}", std::process::id());
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect::<Result<_>>()?;
        let used = cmd!(sh, "docker network ls --quiet").quiet().read()?;
        let used: Vec<&str> = used.split_whitespace().collect();
        let format = "{{range .IPAM.Config}}{{.Subnet}} {{end}}";
        let subnets = cmd!(sh, "docker network inspect --format {format} {used...}")
            .quiet()
            .read()
            .unwrap_or_default();
        let mut free = (100..=250)
            .map(|octet| format!("10.80.{octet}.0/24"))
            .filter(|s| !subnets.split_whitespace().any(|u| u == s));
        let (blue_subnet, green_subnet) = (
            free.next().context("no free 10.80.x.0/24")?,
            free.next().context("no free 10.80.x.0/24")?,
        );
        let config = dir.join("deploy.toml");
        fs::write(
            &config,
            format!(
                "[balancer]\nport = {}\ngrpc_port = {}\n[blue]\nport = {}\ngrpc_port = {}\n\
                 [green]\nport = {}\ngrpc_port = {}\n[local]\nstate_dir = \"{}\"\n\
                 [compose]\nproject = \"{name}\"\n\
                 [swarm]\nreplicas = 1\nblue_subnet = \"{blue_subnet}\"\ngreen_subnet = \"{green_subnet}\"\n\
                 [timeouts]\nhealthy_secs = 60\n",
                ports[0],
                ports[1],
                ports[2],
                ports[3],
                ports[4],
                ports[5],
                dir.join("local").display()
            ),
        )
        .context("write the private deploy.toml")?;
        // A private copy of this binary: a rebuild of `target/` must not pull it away.
        let exe = dir.join("xtask");
        fs::copy(std::env::current_exe().context("find this binary")?, &exe)
            .context("copy the xtask binary")?;
        Ok(Stack {
            exe,
            config,
            dir,
            name,
            port: ports[0],
        })
    }

    fn xtask(&self, args: &[&str]) -> Result<f64> {
        super::run_xtask(&self.exe, "swarm", &self.config, args, &[], &[])
    }

    /// The running task containers of `color`.
    fn containers(&self, sh: &Shell, color: &str) -> Result<Vec<String>> {
        let filter = format!("label=com.docker.swarm.service.name={}_{color}", self.name);
        Ok(cmd!(sh, "docker ps --quiet --filter {filter}")
            .quiet()
            .read()?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        crate::say!("bench swarm: down…");
        if let Err(err) = self.xtask(&["down"]) {
            eprintln!("bench swarm: {err:#}");
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Everything measured.
struct Numbers {
    up_secs: f64,
    /// (replicas per color, wrk without operations).
    throughput: Vec<(u32, Wrk)>,
    idle: Vec<f64>,
    loaded: Vec<f64>,
    operating: Wrk,
    killing: Wrk,
    secs: u64,
}

fn measure(sh: &Shell, stack: &Stack, bench: &flags::Bench) -> Result<Numbers> {
    crate::say!("up with 1 replica per color…");
    let up_secs = stack.xtask(&["up", "--replicas", "1"])?;
    let lua = stack.dir.join("predict.lua");
    wrk::write_script(&lua)?;
    let url = format!("http://127.0.0.1:{}/predict", stack.port);
    let secs = bench.duration.max(5);
    let mut throughput = Vec::new();
    for replicas in [1, 2, 3] {
        let n = replicas.to_string();
        for color in ["blue", "green"] {
            stack.xtask(&["scale", "--color", color, "--replicas", &n])?;
        }
        crate::say!("{replicas} replica(s) per color: warming up, then {secs} s of load…");
        wrk::run(sh, &lua, &url, 2, bench.connections).context("warm up with wrk")?;
        throughput.push((replicas, wrk::run(sh, &lua, &url, secs, bench.connections)?));
    }

    crate::say!("timing {SWITCHES_IDLE} switches without load (3 replicas per color)…");
    let idle = (0..SWITCHES_IDLE)
        .map(|_| stack.xtask(&["switch"]))
        .collect::<Result<Vec<_>>>()?;

    let ops = [
        "switch", "switch", "rollback", "switch", "switch", "rollback", "switch", "switch",
    ];
    crate::say!("6 switches and 2 rollbacks under load…");
    let load = WrkRun::start(&lua, &url, secs + 400, bench.connections)?;
    let started = Instant::now();
    let mut loaded = Vec::new();
    let mut result = Ok(());
    for op in ops {
        match stack.xtask(&[op]) {
            Ok(took) => loaded.push(took),
            Err(err) => {
                result = Err(err);
                break;
            }
        }
        // Spread the operations over at least the run's duration.
        let due = Duration::from_secs(secs) * loaded.len() as u32 / ops.len() as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            thread::sleep(wait);
        }
    }
    thread::sleep(MARGIN);
    let operating = load.stop(sh).context("read wrk's result")?;
    result?;

    crate::say!("one replica of the active color killed under load…");
    let active = active_color(stack)?;
    let victim = stack
        .containers(sh, &active)?
        .into_iter()
        .next()
        .with_context(|| format!("no running {active} replica"))?;
    let load = WrkRun::start(&lua, &url, secs + 60, bench.connections)?;
    thread::sleep(MARGIN);
    cmd!(sh, "docker kill {victim}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("kill a replica")?;
    thread::sleep(Duration::from_secs(secs));
    let killing = load.stop(sh).context("read wrk's result")?;

    Ok(Numbers {
        up_secs,
        throughput,
        idle,
        loaded,
        operating,
        killing,
        secs,
    })
}

/// The color taking all traffic, from `status --json`.
fn active_color(stack: &Stack) -> Result<String> {
    let out = std::process::Command::new(&stack.exe)
        .args(["--runtime", "swarm", "--config"])
        .arg(&stack.config)
        .args(["status", "--json"])
        .output()
        .context("run status")?;
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("read status --json")?;
    status["active"]
        .as_str()
        .map(str::to_owned)
        .context("no color takes all traffic")
}

fn render(n: &Numbers, cpu: &str, load_before: &str, connections: u32) -> String {
    let mut out = format!(
        "Measured by `cargo xtask bench swarm` on {cpu} (load average before: {load_before}): a \
         one-node swarm on this machine's engine, the stack `mldeploy-bswarm-<pid>` driven by \
         this tool (`--runtime swarm`), wrk with {connections} keep-alive connections posting \
         `/predict` through the balancer, {} s per run. `up` (1 replica per color, from nothing): \
         {:.1} s.\n\n",
        n.secs, n.up_secs
    );
    out += "| replicas per color | req/s | p50 | p99 | failed |\n| ---: | ---: | ---: | ---: | ---: |\n";
    for (replicas, run) in &n.throughput {
        out += &format!(
            "| {replicas} | {:.0} | {} | {} | {} |\n",
            run.req_per_sec,
            wrk::ms(run.p50_us),
            wrk::ms(run.p99_us),
            run.failed()
        );
    }
    let (idle_p50, idle_max) = report::p50_max(&n.idle);
    let (loaded_p50, loaded_max) = report::p50_max(&n.loaded);
    out += &format!(
        "\nWith 3 replicas per color: `switch` without load p50 {idle_p50:.2} s, max \
         {idle_max:.2} s ({} runs; each gates every replica of the target); under load p50 \
         {loaded_p50:.2} s, max {loaded_max:.2} s. Requests while 6 switches and 2 rollbacks \
         ran: {} at {:.0} req/s, **{} failed**, p99 {}, max {}. One replica of the active color \
         killed under load: {} requests, **{} failed**, p99 {}, max {} (requests sent to the \
         dead address before Docker's DNS drops it wait for the 1 s connect timeout, then go to \
         another replica).\n",
        n.idle.len(),
        n.operating.requests,
        n.operating.req_per_sec,
        n.operating.failed(),
        wrk::ms(n.operating.p99_us),
        wrk::ms(n.operating.max_us),
        n.killing.requests,
        n.killing.failed(),
        wrk::ms(n.killing.p99_us),
        wrk::ms(n.killing.max_us),
    );
    out += BOUND;
    out
}

/// What bounds these numbers, written under them.
const BOUND: &str = "\nThe bound: wrk, nginx and every replica share the same 2 cores, so more \
    replicas add no capacity here (each replica's share of the CPU shrinks as they multiply); \
    the gain is on several nodes. And nginx 1.22 resolves the replicas per request without \
    upstream keep-alive, so it opens and closes a connection per request to a replica (the \
    balancer reuses TIME_WAIT ports, else a few hundred requests a second exhaust them); an \
    upstream block with keep-alive to one replica's fixed address, measured once the same way, \
    served about 5 000 req/s. nginx 1.27.3 and later (`resolve` on upstream servers) would keep \
    both.\n";
