//! End-to-end tests of the docker compose runtime against a real Docker engine.
//!
//! They drive the real `cargo xtask` binary (`--runtime compose`) with their own deploy
//! configuration (project `mldeploy-e2e-<pid>`, free ports, an unused subnet, their own image
//! name), so they never touch a developer's deployment or another run.
//!
//! Steps of [`compose_runtime_end_to_end`], on one stack:
//! 1. `build` the images (offline when no registry answers), `up`, `smoke`; a broken nginx
//!    config refused by `nginx -t` in the container while the old one keeps serving;
//! 2. under continuous keep-alive load through the balancer: 10 switches, 3 rollbacks and 4
//!    deploys (each recreating the standby container) with 0 failed requests, the served version
//!    checked after each;
//! 3. the standby container stopped → `switch` refused naming it, traffic unchanged;
//! 4. the active container killed under load → every request still succeeds (the standby);
//! 5. a green built with a corrupted model → `deploy` refuses, traffic stays on blue;
//! 6. `down` leaves no container, network or volume of the project.
//!
//! Without a Docker engine they print why and return; with `MLDEPLOY_REQUIRE_DOCKER=1` (CI) they
//! fail instead.

use std::{
    collections::BTreeMap,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// The compose project of `compose_files_validate` (nothing is created under it).
const PROJECT: &str = "mldeploy-e2e";
const SUBNET: &str = "172.30.178.0/24";
const BLUE_VERSION: &str = "v1.0.0";
const GREEN_VERSION: &str = "v1.1.0";

/// Whether a Docker engine answers; panics when CI requires one and none does.
fn engine_available() -> bool {
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if answers {
        return true;
    }
    if std::env::var("MLDEPLOY_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!(
            "MLDEPLOY_REQUIRE_DOCKER=1 but no Docker engine answers `docker info`: \
             run `cargo xtask setup` (installs and starts one)"
        );
    }
    eprintln!(
        "skipping the compose end-to-end tests: no Docker engine answers \
         (set MLDEPLOY_REQUIRE_DOCKER=1 to make this a failure)"
    );
    false
}

/// A port nothing listens on, below Linux's ephemeral range (32768+) so that no outgoing
/// connection can take it before Docker publishes it, and apart from the range the local
/// runtime's tests use (20000+). The bind check (on every address: the balancer's port is
/// public) skips ports in use.
fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = (std::process::id() as usize * 7919) % 5_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 14_000 + ((offset + n * 13) % 6_000) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn show(output: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One compose deployment of the tests, brought down when dropped.
struct Stack {
    dir: PathBuf,
    /// `mldeploy-e2e-<pid>`: two runs at once do not share containers.
    project: String,
    /// The service image name this run builds and tags (removed at the end).
    image: String,
    /// Set once the test's own `down` ran, so dropping does not bring the stack down again.
    down: std::cell::Cell<bool>,
    balancer: u16,
    client: reqwest::blocking::Client,
}

impl Stack {
    fn new() -> Stack {
        let dir = std::env::temp_dir().join(format!("mldeploy-e2e-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (balancer, blue, green) = (free_port(), free_port(), free_port());
        let project = format!("mldeploy-e2e-{}", std::process::id());
        let image = format!("{project}/ml-service");
        let subnet = free_subnet();
        let config = format!(
            "[balancer]\nport = {balancer}\nbuckets = 100\n\
             [blue]\nversion = \"{BLUE_VERSION}\"\nport = {blue}\n\
             [green]\nversion = \"{GREEN_VERSION}\"\nport = {green}\n\
             [local]\nstate_dir = \"{}\"\n\
             [compose]\nproject = \"{project}\"\nimage = \"{image}\"\nsubnet = \"{subnet}\"\n\
             [timeouts]\nhealthy_secs = 20\nlock_secs = 30\n",
            dir.join("local").display()
        );
        fs::write(dir.join("deploy.toml"), config).unwrap();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap();
        Stack {
            dir,
            project,
            image,
            down: std::cell::Cell::new(false),
            balancer,
            client,
        }
    }

    fn xtask(&self, args: &[&str]) -> Output {
        let config = self.dir.join("deploy.toml");
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["--runtime", "compose", "--config"])
            .arg(&config)
            .args(args)
            .current_dir(project_root())
            .output()
            .expect("run the xtask binary");
        println!(
            "$ cargo xtask {} ({:.2} s, {})\n{}",
            args.join(" "),
            started.elapsed().as_secs_f64(),
            output.status,
            show(&output)
        );
        output
    }

    /// Runs the command, asserts it succeeded, returns its wall time.
    fn ok(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        let output = self.xtask(args);
        let took = started.elapsed();
        assert!(
            output.status.success(),
            "`cargo xtask {}` failed:\n{}",
            args.join(" "),
            show(&output)
        );
        took
    }

    /// Runs the command, asserts it failed, returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.xtask(args);
        assert!(
            !output.status.success(),
            "`cargo xtask {}` succeeded but must fail:\n{}",
            args.join(" "),
            show(&output)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.balancer)
    }

    /// The version the balancer serves, asked `n` times; panics unless all agree.
    fn served_version(&self, n: usize) -> String {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let response = self
                .client
                .get(format!("{}/health", self.url()))
                .send()
                .expect("GET /health");
            assert!(
                response.status().is_success(),
                "/health through the balancer: {}",
                response.status()
            );
            let version = header(&response, "x-model-version");
            *seen.entry(version).or_insert(0) += 1;
        }
        assert_eq!(
            seen.len(),
            1,
            "the balancer served several versions: {seen:?}"
        );
        seen.into_keys().next().unwrap()
    }

    /// Polls until the balancer serves `version` consistently, with a deadline.
    fn wait_served(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut agree = 0;
            for _ in 0..5 {
                let response = self
                    .client
                    .get(format!("{}/health", self.url()))
                    .send()
                    .expect("GET /health");
                assert!(
                    response.status().is_success(),
                    "/health through the balancer: {}",
                    response.status()
                );
                agree += usize::from(header(&response, "x-model-version") == version);
            }
            if agree == 5 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the balancer still does not serve {version} only"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn container(&self, service: &str) -> String {
        let out = docker(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        let id = out.lines().next().unwrap_or_default().trim().to_owned();
        assert!(
            !id.is_empty(),
            "no {service} container in project {}",
            self.project
        );
        id
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down.get() {
            let _ = self.xtask(&["down"]);
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The run's own tags; the layers stay shared with the project's image.
        let tags = docker_quiet(&[
            "image",
            "ls",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &self.image,
        ]);
        for tag in tags.lines().filter(|t| !t.is_empty()) {
            let _ = docker_quiet(&["rmi", tag]);
        }
    }
}

fn header(response: &reqwest::blocking::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A /24 under 172.30.0.0/16 that no Docker network uses yet.
fn free_subnet() -> String {
    let networks = docker(&["network", "ls", "--quiet"]);
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(networks.split_whitespace());
    let used = docker(&args);
    (150..=250)
        .map(|octet| format!("172.30.{octet}.0/24"))
        .find(|subnet| !used.split_whitespace().any(|u| u == subnet))
        .expect("every 172.30.150-250.0/24 subnet is taken")
}

/// `docker <args>`'s stdout, whatever its exit status.
fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {} failed:\n{}",
        args.join(" "),
        show(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What the load threads saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    versions: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.errors.extend(other.errors);
        for (version, n) in other.versions {
            *self.versions.entry(version).or_insert(0) += n;
        }
    }
}

/// Continuous keep-alive `POST /predict` load through the balancer, no retries.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
    started: Instant,
}

impl Load {
    fn start(url: &str, connections: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                let url = format!("{url}/predict");
                thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .no_proxy()
                        .build()
                        .unwrap();
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let result = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(r#"{"features":[5.1,3.5,1.4,0.2]}"#)
                            .send();
                        match result {
                            Ok(response) if response.status().is_success() => {
                                let version = header(&response, "x-model-version");
                                let body = response.text().unwrap_or_default();
                                if body.contains("\"setosa\"") {
                                    tally.ok += 1;
                                    *tally.versions.entry(version).or_insert(0) += 1;
                                } else {
                                    tally.failed += 1;
                                    tally.errors.push(format!("wrong answer: {body}"));
                                }
                            }
                            Ok(response) => {
                                tally.failed += 1;
                                tally.errors.push(format!("status {}", response.status()));
                            }
                            Err(err) => {
                                tally.failed += 1;
                                tally.errors.push(format!("{err:#}"));
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        Load {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for thread in self.threads {
            total.add(thread.join().expect("a load thread panicked"));
        }
        println!(
            "load: {} ok, {} failed in {:.1} s ({:.0} req/s), versions {:?}",
            total.ok,
            total.failed,
            self.started.elapsed().as_secs_f64(),
            total.ok as f64 / self.started.elapsed().as_secs_f64(),
            total.versions
        );
        total
    }
}

fn assert_no_failures(phase: &str, tally: &Tally) {
    let sample: Vec<&String> = tally.errors.iter().take(5).collect();
    assert_eq!(
        tally.failed, 0,
        "{phase}: {} failed requests, e.g. {sample:?}",
        tally.failed
    );
    assert!(tally.ok > 0, "{phase}: the load made no request at all");
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[test]
fn compose_runtime_end_to_end() {
    if !engine_available() {
        return;
    }
    let stack = Stack::new();

    // 1. Images, up, smoke.
    stack.ok(&["build"]);
    stack.ok(&["up"]);
    stack.ok(&["smoke"]);
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    // `up` again changes nothing.
    stack.ok(&["up"]);
    // A broken static config is refused by `nginx -t` inside the container; the old one stays.
    let broken = stack.dir.join("broken-nginx.conf");
    fs::write(
        &broken,
        "events {}\nhttp { server { listen 8080; bogus_directive on; } }\n",
    )
    .unwrap();
    let err = stack.fails(&["up", "--nginx-conf", broken.to_str().unwrap()]);
    assert!(
        err.contains("bogus_directive"),
        "the refusal does not quote nginx: {err}"
    );
    stack.ok(&["smoke"]);

    // 2. Switches and rollbacks under load.
    let load = Load::start(&stack.url(), 4);
    let mut expected = BLUE_VERSION;
    let flip = |v: &str| {
        if v == BLUE_VERSION {
            GREEN_VERSION
        } else {
            BLUE_VERSION
        }
    };
    let mut switch_times = Vec::new();
    for i in 1..=10 {
        switch_times.push(stack.ok(&["switch"]));
        expected = flip(expected);
        assert_eq!(stack.served_version(5), expected, "after switch {i}");
        if i % 3 == 0 {
            stack.ok(&["rollback"]);
            expected = flip(expected);
            assert_eq!(
                stack.served_version(5),
                expected,
                "after the rollback following switch {i}"
            );
        }
    }
    // 10 switches + 3 rollbacks from blue: green is active now. Deploys recreate the standby
    // container under the same load: v1.1.0 onto blue, v1.0.0 onto green, and back again.
    assert_eq!(expected, GREEN_VERSION);
    for (version, color) in [
        (GREEN_VERSION, "blue"),
        (BLUE_VERSION, "green"),
        (BLUE_VERSION, "blue"),
        (GREEN_VERSION, "green"),
    ] {
        let before = stack.container(color);
        stack.ok(&["deploy", "--version", version]);
        assert_ne!(
            stack.container(color),
            before,
            "deploy did not recreate {color}"
        );
        assert_eq!(
            stack.served_version(5),
            version,
            "after deploying {version} to {color}"
        );
    }
    let tally = load.finish();
    assert_no_failures("switches, rollbacks and deploys", &tally);
    for version in [BLUE_VERSION, GREEN_VERSION] {
        assert!(
            tally.versions.contains_key(version),
            "the load never saw {version}: {:?}",
            tally.versions
        );
    }
    println!(
        "compose switch wall time: median {:.2} s over {} switches (max {:.2} s)",
        median(switch_times.clone()).as_secs_f64(),
        switch_times.len(),
        switch_times.iter().max().unwrap().as_secs_f64()
    );
    // Green (v1.1.0) is active again, blue has v1.0.0: back to blue.
    stack.ok(&["switch", "--to", "blue"]);
    assert_eq!(stack.served_version(5), BLUE_VERSION);

    // 3. A stopped standby: the switch is refused, naming it; traffic stays.
    docker(&["stop", &stack.container("green")]);
    let err = stack.fails(&["switch"]);
    assert!(
        err.contains("green"),
        "the refusal does not name green: {err}"
    );
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    stack.ok(&["up"]);

    // 4. The active container killed under load: the standby answers.
    let load = Load::start(&stack.url(), 4);
    assert_eq!(stack.served_version(20), BLUE_VERSION);
    docker(&["kill", &stack.container("blue")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served_by_green = false;
    while Instant::now() < deadline && !served_by_green {
        let response = stack
            .client
            .get(format!("{}/health", stack.url()))
            .send()
            .expect("GET /health");
        served_by_green =
            response.status().is_success() && header(&response, "x-model-version") == GREEN_VERSION;
    }
    // Keep the load running a little while green answers alone.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(stack
            .client
            .get(format!("{}/health", stack.url()))
            .send()
            .unwrap()
            .status()
            .is_success());
    }
    let tally = load.finish();
    assert!(
        served_by_green,
        "after killing blue, green never answered through the balancer"
    );
    assert_no_failures("active container killed", &tally);
    stack.ok(&["up"]);
    // nginx keeps a failed server out for its `fail_timeout`; then blue takes traffic again.
    stack.wait_served(BLUE_VERSION);

    // 5. A green whose model is corrupted never becomes healthy: deploy refuses, blue keeps serving.
    let good = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        &format!("{}:latest", stack.image),
    ])
    .trim()
    .to_owned();
    let corrupt = build_corrupt_image(&stack.dir, &stack.image, BLUE_VERSION);
    let restore = Retag {
        image: good,
        tag: format!("{}:latest", stack.image),
    };
    docker(&["tag", &corrupt, &restore.tag]);
    let err = stack.fails(&["deploy", "--version", BLUE_VERSION]);
    drop(restore);
    assert!(
        err.contains("green"),
        "the refusal does not name green: {err}"
    );
    assert_eq!(stack.served_version(5), BLUE_VERSION);
    stack.ok(&["smoke"]);

    // 6. Down leaves nothing of the project behind.
    stack.ok(&["down"]);
    stack.down.set(true);
    let label = format!("label=com.docker.compose.project={}", stack.project);
    assert_eq!(
        docker(&["ps", "--all", "--quiet", "--filter", &label]).trim(),
        "",
        "containers left"
    );
    assert_eq!(
        docker(&["network", "ls", "--quiet", "--filter", &label]).trim(),
        "",
        "networks left"
    );
    assert_eq!(
        docker(&["volume", "ls", "--quiet", "--filter", &label]).trim(),
        "",
        "volumes left"
    );
}

/// Points `tag` back at `image` when dropped, even when the test fails half-way.
struct Retag {
    image: String,
    tag: String,
}

impl Drop for Retag {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["tag", &self.image, &self.tag])
            .status();
    }
}

/// The service image with `version`'s model file altered (its checksum no longer matches).
fn build_corrupt_image(dir: &Path, image: &str, version: &str) -> String {
    let context = dir.join("corrupt");
    fs::create_dir_all(&context).unwrap();
    let mut model = fs::read_to_string(
        project_root()
            .join("models")
            .join(version)
            .join("model.json"),
    )
    .unwrap();
    model.push(' ');
    fs::write(context.join("model.json"), model).unwrap();
    fs::write(
        context.join("Dockerfile"),
        format!("FROM {image}:latest\nCOPY model.json /models/{version}/model.json\n"),
    )
    .unwrap();
    let tag = format!("{image}:corrupt");
    let buildx = Command::new("docker")
        .args(["buildx", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut build = Command::new("docker");
    if !buildx {
        build.env("DOCKER_BUILDKIT", "0");
    }
    let output = build
        .args(["build", "--quiet", "--tag", &tag])
        .arg(&context)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build the corrupted image:\n{}",
        show(&output)
    );
    tag
}

/// The compose files validate with every compose tool installed here.
#[test]
fn compose_files_validate() {
    let root = project_root();
    let files = [
        "docker-compose.yml",
        "docker-compose.blue.yml",
        "docker-compose.green.yml",
    ];
    let tools: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let mut validated = 0;
    for tool in tools {
        let probe = Command::new(tool[0])
            .args(&tool[1..])
            .arg("version")
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let mut cmd = Command::new(tool[0]);
        cmd.args(&tool[1..])
            .args(["--project-name", PROJECT])
            .current_dir(&root);
        for file in files {
            cmd.args(["--file", file]);
        }
        // With the defaults, and with values like the tests' own.
        for env in [
            vec![],
            vec![
                ("MLDEPLOY_SUBNET", SUBNET),
                ("MLDEPLOY_BLUE_ADDR", "172.30.178.11"),
            ],
        ] {
            let output = Command::new(cmd.get_program())
                .args(cmd.get_args())
                .args(["config", "--quiet"])
                .envs(env)
                .current_dir(&root)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{} config rejects the files:\n{}",
                tool.join(" "),
                show(&output)
            );
        }
        validated += 1;
    }
    if validated == 0 {
        if std::env::var("MLDEPLOY_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("MLDEPLOY_REQUIRE_DOCKER=1 but neither `docker compose` nor `docker-compose` is installed");
        }
        eprintln!("skipping: no compose tool installed");
    }
}
