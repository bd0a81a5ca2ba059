//! The docker compose runtime under test: a [`Stack`] with its own project
//! (`mldeploy-e2e-<pid>`), free ports, an unused subnet and its own image name, so it never
//! touches a developer's deployment or another run; and the `docker` helpers around it.

use std::{
    cell::Cell,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{
    free_ports, project_root, run_ok, runs_ok,
    xtask::{stderr, stdout, Xtask},
    Balancer, COMPOSE_PORTS,
};

pub const BLUE_VERSION: &str = "v1.0.0";
pub const GREEN_VERSION: &str = "v1.1.0";

/// Whether a Docker engine answers; panics when CI requires one (`MLDEPLOY_REQUIRE_DOCKER=1`)
/// and none does.
pub fn engine_available() -> bool {
    if runs_ok(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])) {
        return true;
    }
    if docker_required() {
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

/// Whether CI requires Docker: skipping for want of it is then a failure.
pub use testhost::docker_required;

/// One compose deployment of the tests, brought down when dropped.
pub struct Stack {
    pub dir: PathBuf,
    /// `mldeploy-e2e-<pid>`: two runs at once do not share containers.
    pub project: String,
    /// The service image name this run builds and tags (removed at the end).
    pub image: String,
    /// Set once the test's own `down` ran, so dropping does not bring the stack down again.
    down: Cell<bool>,
    pub balancer: Balancer,
    /// The balancer's gRPC address, `http://127.0.0.1:<port>`.
    pub grpc_balancer: String,
    pub xtask: Xtask,
}

impl Stack {
    pub fn new() -> Stack {
        let dir = std::env::temp_dir().join(format!("mldeploy-e2e-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let [balancer, blue, green, balancer_grpc, blue_grpc, green_grpc] =
            free_ports(COMPOSE_PORTS);
        let project = format!("mldeploy-e2e-{}", std::process::id());
        let image = format!("{project}/ml-service");
        let subnet = free_subnet();
        let config = format!(
            "[balancer]\nport = {balancer}\ngrpc_port = {balancer_grpc}\nbuckets = 100\n\
             [blue]\nversion = \"{BLUE_VERSION}\"\nport = {blue}\ngrpc_port = {blue_grpc}\n\
             [green]\nversion = \"{GREEN_VERSION}\"\nport = {green}\ngrpc_port = {green_grpc}\n\
             [local]\nstate_dir = \"{}\"\n\
             [compose]\nproject = \"{project}\"\nimage = \"{image}\"\nsubnet = \"{subnet}\"\n\
             [timeouts]\nhealthy_secs = 20\nlock_secs = 30\n\
             [testers]\nenabled = true\n",
            dir.join("local").display()
        );
        fs::write(dir.join("deploy.toml"), config).unwrap();
        Stack {
            xtask: Xtask {
                runtime: "compose",
                config: dir.join("deploy.toml"),
                env: Vec::new(),
                echo: true,
            },
            dir,
            project,
            image,
            down: Cell::new(false),
            balancer: Balancer::on_port(balancer),
            grpc_balancer: format!("http://127.0.0.1:{balancer_grpc}"),
        }
    }

    /// Runs the command, asserts it succeeded, returns its wall time.
    pub fn ok(&self, args: &[&str]) -> Duration {
        self.xtask.ok(args).1
    }

    /// Runs the command, asserts it succeeded, returns its stdout.
    pub fn stdout(&self, args: &[&str]) -> String {
        stdout(&self.xtask.ok(args).0)
    }

    /// Runs the command, asserts it failed, returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        stderr(&self.xtask.fails(args))
    }

    /// Runs the command (which must succeed) with `env` and a `docker` on `PATH` that notes
    /// each call before it runs the real one; returns the calls' arguments, one per line.
    pub fn docker_calls(&self, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let shim = self.dir.join("counting-docker");
        fs::create_dir_all(&shim).unwrap();
        let log = shim.join("calls.log");
        let _ = fs::remove_file(&log);
        let real = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v docker"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.trim()
        );
        let docker = shim.join("docker");
        fs::write(&docker, script).unwrap();
        let mut perms = fs::metadata(&docker).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(&docker, perms).unwrap();
        let path = format!(
            "{}:{}",
            shim.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = self.xtask.command(args);
        cmd.env("PATH", path).envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `down`, after which dropping the stack does not run it again.
    pub fn down(&self) {
        self.ok(&["down"]);
        self.down.set(true);
    }

    /// The version the balancer serves, asked `n` times; panics unless all agree.
    pub fn served_version(&self, n: usize) -> String {
        self.balancer.served_version(n)
    }

    /// Polls until the balancer serves `version` consistently; panics after 15 s.
    pub fn wait_served(&self, version: &str) {
        self.balancer.wait_served(version, Duration::from_secs(15));
    }

    /// The id of the project's container of `service`.
    pub fn container(&self, service: &str) -> String {
        let out = docker(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &self.label(),
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

    /// The `--filter` matching everything of the project.
    pub fn label(&self) -> String {
        format!("label=com.docker.compose.project={}", self.project)
    }

    /// The image `<image>:latest` points at.
    pub fn latest_image_id(&self) -> String {
        docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("{}:latest", self.image),
        ])
        .trim()
        .to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down.get() {
            let _ = self.xtask.run(&["down"]);
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

/// A /24 under 172.30.0.0/16 that no Docker network uses yet.
fn free_subnet() -> String {
    free_subnets("172.30", 150..=250, 1).remove(0)
}

/// `n` /24s `<prefix>.<octet>.0/24`, `octet` in `octets`, that no Docker network uses yet.
pub fn free_subnets(prefix: &str, octets: std::ops::RangeInclusive<u8>, n: usize) -> Vec<String> {
    let networks = docker(&["network", "ls", "--quiet"]);
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(networks.split_whitespace());
    let used = docker(&args);
    let free: Vec<String> = octets
        .map(|octet| format!("{prefix}.{octet}.0/24"))
        .filter(|subnet| !used.split_whitespace().any(|u| u == subnet))
        .take(n)
        .collect();
    assert_eq!(free.len(), n, "fewer than {n} free {prefix}.x.0/24 subnets");
    free
}

/// `docker <args>`'s stdout, whatever its exit status.
pub fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `docker <args>`'s stdout; panics unless it succeeded.
pub fn docker(args: &[&str]) -> String {
    let output = run_ok(
        Command::new("docker").args(args),
        &format!("docker {} failed", args.join(" ")),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Points `tag` back at `image` when dropped, even when the test fails half-way.
pub struct Retag {
    pub image: String,
    pub tag: String,
}

impl Drop for Retag {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["tag", &self.image, &self.tag])
            .status();
    }
}

/// The service image with `version`'s model file altered (its checksum no longer matches).
pub fn build_corrupt_image(dir: &Path, image: &str, version: &str) -> String {
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
    let mut build = Command::new("docker");
    if !runs_ok(Command::new("docker").args(["buildx", "version"])) {
        build.env("DOCKER_BUILDKIT", "0");
    }
    build
        .args(["build", "--quiet", "--tag", &tag])
        .arg(&context);
    run_ok(&mut build, "build the corrupted image");
    tag
}
