//! `cargo xtask bench compose`: the docker compose runtime on a private project, under `wrk`.
//!
//! Steps (everything on a project of its own, so a developer's stack is never touched):
//! 1. make sure a Docker engine answers and `wrk` is installed; note the machine, the load
//!    average, the Docker and compose versions;
//! 2. write a private `deploy.toml` under `target/bench/compose`: the committed one with the
//!    project `mldeploy-bench-<pid>`, free ports, a free subnet and its own state folder
//!    ([`private_config`], [`free_subnet`]: pure and tested); a guard runs `down` through it and
//!    removes the folder whatever happens;
//! 3. `up`, timed, through a copy of this binary (`--runtime compose --config <private>`), as a
//!    person would run it; then the service image's size and the nginx image the balancer runs;
//! 4. a color's start: `docker run` of the service image on a free loopback port until `/health`
//!    answers 200, 5 times (each container removed at once);
//! 5. 20 `switch` runs without load: wall time p50 / max; then 20 more with `MLDEPLOY_AGENT=off`
//!    (one `docker exec` per step instead of one session with the host's agent);
//! 6. wrk (2 threads, keep-alive `POST /predict` through the balancer's published port) for
//!    `--duration` seconds without operations;
//! 7. wrk again while 10 switches and 3 rollbacks run one after the other, spread over at least
//!    `--duration` seconds; wrk starts with a generous duration and is stopped 2 s after the last
//!    operation, so it covers all of them; failed requests (socket errors + non-2xx) must be 0;
//! 8. print the report and write it as the subsection "Measured by `cargo xtask bench compose`"
//!    at the end of "Containers" in `docs/benchmarks.md`.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use toml_edit::{value, DocumentMut};
use xshell::{cmd, Shell};

use super::{
    report,
    service::health_ok,
    wrk::{self, free_port, Wrk, WrkRun},
};
use crate::{
    config,
    docker::{self, ComposeKind},
    flags, host, images,
    runtime::compose::{service_image_ref, CONTAINER_PORT},
    util::project_root,
};

const SWITCHES_IDLE: usize = 20;
const STARTS: usize = 5;
/// The subnets the benchmark may take: apart from the committed one (`172.30.77.0/24`) and from
/// the end-to-end tests' (`172.30.150-250.0/24`).
const SUBNET_OCTETS: std::ops::RangeInclusive<u8> = 100..=149;
/// How long a started container may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Load before and after the operations of the loaded run.
const MARGIN: Duration = Duration::from_secs(2);
const PARENT: &str = "## Containers";
const SECTION: &str = "### Measured by `cargo xtask bench compose`";

/// One operation of the loaded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Switch,
    Rollback,
}

impl Op {
    fn command(self) -> &'static str {
        match self {
            Op::Switch => "switch",
            Op::Rollback => "rollback",
        }
    }
}

pub(crate) fn run(sh: &Shell, _global: &flags::Global, bench: &flags::Bench) -> Result<()> {
    docker::ensure_engine(sh).context("start the Docker engine")?;
    host::ensure_commands(sh, &[host::WRK]).context("install wrk")?;
    let load_before = report::load_average();
    let tools = tools(sh)?;

    let dir = project_root().join("target/bench/compose");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).context("create the benchmark folder")?;
    let committed = fs::read_to_string(project_root().join("deploy.toml"))
        .context("read the committed deploy.toml")?;
    let private = Private {
        project: format!("mldeploy-bench-{}", std::process::id()),
        ports: [free_port()?, free_port()?, free_port()?],
        subnet: free_subnet(&used_subnets(sh)?)
            .context("every 172.30.100-149.0/24 subnet is taken by a Docker network")?,
        state_dir: dir.join("local"),
    };
    let config_path = dir.join("deploy.toml");
    fs::write(&config_path, private_config(&committed, &private)?)
        .context("write the private deploy.toml")?;
    let config = config::load(&config_path)?;
    // A private copy of this binary: a rebuild of `target/` during the run must not pull it away.
    let exe = dir.join("xtask");
    fs::copy(std::env::current_exe().context("find this binary")?, &exe)
        .context("copy the xtask binary")?;

    crate::say!(
        "bench compose: project {}, balancer on port {}, subnet {}",
        private.project,
        private.ports[0],
        private.subnet
    );
    let stack = Stack {
        exe,
        config: config_path,
        dir,
    };
    let numbers = measure(sh, &stack, &config, &private, bench)?;
    drop(stack);
    let report = render_report(&Setting {
        machine: report::cpu(),
        load_before,
        tools,
        connections: bench.connections,
        numbers: &numbers,
    });
    crate::say!("{report}");
    report::write_doc(Some(PARENT), SECTION, &report)?;
    crate::say!("bench compose: wrote its subsection of \"Containers\" in docs/benchmarks.md");
    let failed = numbers.operating.failed();
    if failed > 0 {
        bail!("{failed} requests failed while switching and rolling back");
    }
    Ok(())
}

/// The benchmark's own deployment: `down` and the folder's removal when dropped.
struct Stack {
    exe: PathBuf,
    config: PathBuf,
    dir: PathBuf,
}

impl Stack {
    /// Runs `xtask --runtime compose --config <private> <args>`; returns its wall time in
    /// seconds.
    fn xtask(&self, args: &[&str]) -> Result<f64> {
        self.xtask_with(args, &[])
    }

    /// [`Stack::xtask`] with extra environment variables.
    fn xtask_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<f64> {
        super::run_compose_xtask(&self.exe, &self.config, args, &[], env)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        crate::say!("bench compose: down…");
        if let Err(err) = self.xtask(&["down"]) {
            eprintln!("bench compose: {err:#}");
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The private deployment's names and places.
struct Private {
    project: String,
    /// Balancer, blue, green.
    ports: [u16; 3],
    subnet: String,
    state_dir: PathBuf,
}

/// What the compose runtime runs on.
struct Tools {
    docker: String,
    compose: String,
}

/// Everything measured.
struct Numbers {
    project: String,
    image: String,
    image_bytes: u64,
    nginx: String,
    up_secs: f64,
    starts: Vec<f64>,
    idle: Vec<f64>,
    /// The same switches with `MLDEPLOY_AGENT=off`: one `docker exec` per step.
    idle_without_agent: Vec<f64>,
    idle_run: Wrk,
    loaded: Vec<f64>,
    loaded_secs: f64,
    operating: Wrk,
    secs: u64,
}

fn measure(
    sh: &Shell,
    stack: &Stack,
    config: &config::DeployConfig,
    private: &Private,
    bench: &flags::Bench,
) -> Result<Numbers> {
    crate::say!("up…");
    let up_secs = stack.xtask(&["up"])?;
    crate::say!("up in {up_secs:.2} s");
    let image = service_image_ref(config);
    let image_bytes = images::image_size(sh, &image)?;
    let nginx = balancer_image(sh, &private.project)?;

    crate::say!("timing {STARTS} container starts to the first 200 from /health…");
    let starts = (0..STARTS)
        .map(|_| container_start(sh, &image, &private.project))
        .collect::<Result<Vec<_>>>()?;

    crate::say!("timing {SWITCHES_IDLE} switches without load…");
    let idle = (0..SWITCHES_IDLE)
        .map(|_| stack.xtask(&["switch"]))
        .collect::<Result<Vec<_>>>()?;
    crate::say!("timing {SWITCHES_IDLE} switches without load or the host's agent…");
    let idle_without_agent = (0..SWITCHES_IDLE)
        .map(|_| stack.xtask_with(&["switch"], &[("MLDEPLOY_AGENT", "off")]))
        .collect::<Result<Vec<_>>>()?;

    let lua = stack.dir.join("predict.lua");
    wrk::write_script(&lua)?;
    let url = format!("http://127.0.0.1:{}/predict", private.ports[0]);
    let secs = bench.duration.max(5);
    crate::say!("warming up, then {secs} s of load without operations…");
    wrk::run(sh, &lua, &url, 2, bench.connections).context("warm up with wrk")?;
    let idle_run = wrk::run(sh, &lua, &url, secs, bench.connections)?;

    let ops = operations();
    crate::say!(
        "{} switches and {} rollbacks under load…",
        ops.iter().filter(|&&op| op == Op::Switch).count(),
        ops.iter().filter(|&&op| op == Op::Rollback).count()
    );
    // Generous: wrk is stopped 2 s after the last operation, whenever that is.
    let generous = secs + ops.len() as u64 * 30 + 60;
    let started = Instant::now();
    let load = WrkRun::start(&lua, &url, generous, bench.connections)?;
    let ops_result = operate(stack, &ops, Duration::from_secs(secs));
    if ops_result.is_ok() {
        thread::sleep(MARGIN);
    }
    let operating = load.stop(sh);
    let loaded_secs = started.elapsed().as_secs_f64();
    let loaded = ops_result?;
    let operating = operating.context("read wrk's result")?;

    Ok(Numbers {
        project: private.project.clone(),
        image,
        image_bytes,
        nginx,
        up_secs,
        starts,
        idle,
        idle_without_agent,
        idle_run,
        loaded,
        loaded_secs,
        operating,
        secs,
    })
}

/// Runs `ops` one after the other, spread over at least `over`; returns each one's wall time.
fn operate(stack: &Stack, ops: &[Op], over: Duration) -> Result<Vec<f64>> {
    thread::sleep(MARGIN);
    let spread = over.saturating_sub(2 * MARGIN) / ops.len() as u32;
    let mut times = Vec::new();
    for op in ops {
        let t = Instant::now();
        times.push(stack.xtask(&[op.command()])?);
        thread::sleep(spread.saturating_sub(t.elapsed()));
    }
    Ok(times)
}

/// 10 switches and 3 rollbacks: a rollback after every third switch, so each undoes a switch.
fn operations() -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 1..=10 {
        ops.push(Op::Switch);
        if i % 3 == 0 {
            ops.push(Op::Rollback);
        }
    }
    ops
}

/// `docker run` of the service image on a free loopback port, timed to its first 200 from
/// `/health`; the container is removed whatever happens.
fn container_start(sh: &Shell, image: &str, project: &str) -> Result<f64> {
    let port = free_port()?;
    let publish = format!("127.0.0.1:{port}:{CONTAINER_PORT}");
    let label = format!("mldeploy.bench={project}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let t = Instant::now();
    let id = cmd!(
        sh,
        "docker run --detach --rm --label {label} --publish {publish} {image}"
    )
    .quiet()
    .read()
    .with_context(|| format!("docker run {image}"))?;
    let mut healthy = None;
    while t.elapsed() < START_TIMEOUT {
        if health_ok(addr) {
            healthy = Some(t.elapsed().as_secs_f64());
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let id = id.trim();
    let removed = cmd!(sh, "docker rm --force {id}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("remove the container {id}"));
    let secs = healthy.with_context(|| {
        format!(
            "{image} did not answer /health on {addr} within {} s",
            START_TIMEOUT.as_secs()
        )
    })?;
    removed?;
    Ok(secs)
}

/// The balancer container's image and nginx version: `mldeploy-nginx:bookworm (nginx/1.22.1)`.
fn balancer_image(sh: &Shell, project: &str) -> Result<String> {
    let (project, service) = (
        format!("label=com.docker.compose.project={project}"),
        "label=com.docker.compose.service=nginx",
    );
    let format = "{{.ID}} {{.Image}}";
    let line = cmd!(
        sh,
        "docker ps --filter {project} --filter {service} --format {format}"
    )
    .quiet()
    .read()
    .context("find the balancer container")?;
    let Some((id, image)) = line.trim().split_once(' ') else {
        bail!("no balancer container is running");
    };
    let version = cmd!(sh, "docker exec {id} nginx -v")
        .quiet()
        .ignore_status()
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_owned()
        })
        .unwrap_or_default();
    Ok(format!("`{image}` ({version})"))
}

fn tools(sh: &Shell) -> Result<Tools> {
    let format = "{{.Server.Version}}";
    let docker = cmd!(sh, "docker version --format {format}")
        .quiet()
        .read()
        .context("ask the Docker engine its version")?;
    let compose = match docker::detect_kind(sh)? {
        ComposeKind::V2 => {
            let v = cmd!(sh, "docker compose version --short").quiet().read()?;
            format!("`docker compose` {} (v2)", v.trim())
        }
        ComposeKind::V1 => {
            let v = cmd!(sh, "docker-compose version --short").quiet().read()?;
            format!("`docker-compose` {} (v1)", v.trim())
        }
    };
    Ok(Tools {
        docker: docker.trim().to_owned(),
        compose,
    })
}

/// Every subnet the engine's networks use, separated by whitespace.
pub(super) fn used_subnets(sh: &Shell) -> Result<String> {
    let networks = cmd!(sh, "docker network ls --quiet")
        .quiet()
        .read()
        .context("list Docker networks")?;
    let ids: Vec<&str> = networks.split_whitespace().collect();
    let format = "{{range .IPAM.Config}}{{.Subnet}} {{end}}";
    cmd!(sh, "docker network inspect --format {format} {ids...}")
        .quiet()
        .read()
        .context("inspect Docker networks")
}

/// The first `172.30.<100-149>.0/24` not in `used`.
pub(super) fn free_subnet(used: &str) -> Option<String> {
    SUBNET_OCTETS
        .map(|octet| format!("172.30.{octet}.0/24"))
        .find(|subnet| !used.split_whitespace().any(|u| u == subnet))
}

/// The committed configuration with the private project, ports, subnet and state folder; the
/// rest (versions, buckets, images, timeouts) as committed.
fn private_config(committed: &str, p: &Private) -> Result<String> {
    let mut doc: DocumentMut = committed.parse().context("parse deploy.toml")?;
    for (table, port) in ["balancer", "blue", "green"].into_iter().zip(p.ports) {
        doc[table]["port"] = value(i64::from(port));
    }
    doc["compose"]["project"] = value(p.project.as_str());
    doc["compose"]["subnet"] = value(p.subnet.as_str());
    doc["local"]["state_dir"] = value(p.state_dir.display().to_string());
    Ok(doc.to_string())
}

/// What the report says besides the numbers.
struct Setting<'a> {
    machine: String,
    load_before: String,
    tools: Tools,
    connections: u32,
    numbers: &'a Numbers,
}

fn render_report(c: &Setting<'_>) -> String {
    let n = c.numbers;
    let (start_p50, start_max) = report::p50_max(&n.starts);
    let (idle_p50, idle_max) = report::p50_max(&n.idle);
    let (off_p50, off_max) = report::p50_max(&n.idle_without_agent);
    let (load_p50, load_max) = report::p50_max(&n.loaded);
    let switches = operations().iter().filter(|&&op| op == Op::Switch).count();
    let rollbacks = n.loaded.len() - switches;
    let run = |w: &Wrk| {
        format!(
            "{:.0} req/s, p50 {}, p99 {}",
            w.req_per_sec,
            wrk::ms(w.p50_us),
            wrk::ms(w.p99_us)
        )
    };
    let w = &n.operating;
    let mut s = String::new();
    s += &format!(
        "Measured by `cargo xtask bench compose` on a private compose project (`{}`: its own ports, subnet \
         and state, brought down at the end), driving this tool's own binary with `--runtime compose` as a \
         person would. Machine: {}, shared by wrk, nginx, both colors and the Docker engine; load average \
         before the run {}. Docker {}, {}, nginx image {}.\n\n",
        n.project, c.machine, c.load_before, c.tools.docker, c.tools.compose, n.nginx
    );
    s += "| what | result |\n| --- | --- |\n";
    s += &format!(
        "| service image (`{}`) | **{:.1} MB** |\n",
        n.image,
        n.image_bytes as f64 / 1e6
    );
    s += &format!(
        "| `cargo xtask up` (network, both colors and nginx, from nothing to healthy) | {:.2} s |\n",
        n.up_secs
    );
    s += &format!(
        "| container start → `/health` answers 200 (`docker run` → first 200, {} runs) | p50 {start_p50:.2} s, max {start_max:.2} s |\n",
        n.starts.len()
    );
    s += &format!(
        "| `cargo xtask switch` wall time, no load | **p50 {idle_p50:.2} s**, max {idle_max:.2} s over {} switches |\n",
        n.idle.len()
    );
    s += &format!(
        "| the same with `MLDEPLOY_AGENT=off` (a `docker exec` per step, as before the host's agent) | p50 {off_p50:.2} s, max {off_max:.2} s over {} switches |\n",
        n.idle_without_agent.len()
    );
    s += &format!(
        "| `switch` / `rollback` wall time under the load below | p50 {load_p50:.2} s, max {load_max:.2} s over {} operations |\n",
        n.loaded.len()
    );
    s += &format!(
        "| `POST /predict` through the balancer, no operations ({} s) | {} |\n",
        n.secs,
        run(&n.idle_run)
    );
    s += &format!(
        "| the same during {switches} switches + {rollbacks} rollbacks ({:.0} s) | {} |\n",
        n.loaded_secs,
        run(w)
    );
    s += &format!(
        "| failed requests during {switches} switches + {rollbacks} rollbacks | **{}** of {} ({} socket errors, {} non-2xx) |\n",
        w.failed(),
        w.requests,
        w.socket_errors,
        w.non_2xx
    );
    s += &format!(
        "\nLoad: `wrk -t{} -c{} --latency -s predict.lua http://127.0.0.1:<balancer>/predict` (keep-alive, no \
         retries; the script posts `{}` as JSON), after a 2 s warm-up. During the loaded run the operations \
         run one after the other, spread over at least {} s; wrk starts before the first and stops 2 s after \
         the last. A color's start is timed with a plain `docker run` of the image on a free loopback port, \
         polled every millisecond.\n",
        wrk::THREADS,
        c.connections,
        wrk::BODY,
        n.secs
    );
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_private_config_keeps_the_rest() {
        let committed = fs::read_to_string(project_root().join("deploy.toml")).unwrap();
        let private = Private {
            project: "mldeploy-bench-1".into(),
            ports: [21_000, 21_001, 21_002],
            subnet: "172.30.100.0/24".into(),
            state_dir: Path::new("/tmp/bench/local").into(),
        };
        let ours = config::parse(&private_config(&committed, &private).unwrap()).unwrap();
        let theirs = config::parse(&committed).unwrap();
        assert_eq!(
            (ours.balancer.port, ours.blue.port, ours.green.port),
            (21_000, 21_001, 21_002)
        );
        assert_eq!(ours.compose.project, "mldeploy-bench-1");
        assert_eq!(ours.compose.subnet, "172.30.100.0/24");
        assert_eq!(ours.local.state_dir, Path::new("/tmp/bench/local"));
        assert_eq!(ours.compose.image, theirs.compose.image);
        assert_eq!(ours.blue.version, theirs.blue.version);
        assert_eq!(ours.timeouts, theirs.timeouts);
    }

    #[test]
    fn the_subnet_is_one_no_network_uses() {
        assert_eq!(
            free_subnet("172.17.0.0/16 172.30.100.0/24 172.30.101.0/24").as_deref(),
            Some("172.30.102.0/24")
        );
        let all: Vec<String> = SUBNET_OCTETS.map(|o| format!("172.30.{o}.0/24")).collect();
        assert_eq!(free_subnet(&all.join(" ")), None);
    }

    #[test]
    fn ten_switches_and_three_rollbacks_never_two_rollbacks_in_a_row() {
        let ops = operations();
        assert_eq!(ops.iter().filter(|&&op| op == Op::Switch).count(), 10);
        assert_eq!(ops.iter().filter(|&&op| op == Op::Rollback).count(), 3);
        assert_eq!(ops[0], Op::Switch);
        assert!(ops.windows(2).all(|w| w != [Op::Rollback, Op::Rollback]));
    }
}
