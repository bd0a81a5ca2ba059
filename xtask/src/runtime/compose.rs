//! The docker compose runtime: nginx, blue and green as containers of one compose project.
//!
//! Layout:
//! - the project runs `docker-compose.yml` (nginx, the network, the `state` volume) together
//!   with `docker-compose.blue.yml` and `docker-compose.green.yml`; each color is started,
//!   replaced and stopped on its own (`up -d --no-deps <color>`), never touching nginx;
//! - every part has a static address on the project network (derived from `compose.subnet`:
//!   `.10` nginx, `.11` blue, `.12` green), so recreating a color keeps the address nginx
//!   resolved when it loaded its config;
//! - the host state directory is the named volume mounted at [`STATE_DIR`] in the nginx
//!   container. It is read and changed only through the Docker API (`docker exec`, `docker cp`),
//!   never through a bind mount, so a remote engine (`DOCKER_HOST=ssh://…`) works unchanged and
//!   the live state is always read back from the host.
//!
//! Operations on the state directory:
//! - atomic writes: `tee <file>.tmp-<pid>` then `mv -f` (rename(2)); appends: `tee -a`;
//! - a route generation: a locally prepared `gen-<n>/` copied in with `docker cp`;
//! - activation: `ln -sfn gen-<n> current.tmp` then `mv -Tf current.tmp current` (rename(2));
//! - the lock: `mkdir lock.d` (atomic), holding an `owner` file, removed when the guard drops;
//! - nginx's static config: written to a temporary path, `nginx -t -c` on it, then installed and
//!   nginx reloaded (SIGHUP to the container). Never part of a switch.
//!
//! The colors' image is `<compose.image>:<MLDEPLOY_IMAGE_TAG or latest>`; missing images are
//! built (`images.rs`) when a part starts.
//!
//! Reaching the parts: the published ports on 127.0.0.1 for a local engine; with
//! `DOCKER_HOST=ssh://…`, an `ssh -N -L` tunnel to the host's balancer and direct ports (the
//! direct ports listen on the host's loopback only); `MLDEPLOY_PUBLIC_HOST` overrides both.

use std::{
    cell::RefCell,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{HostLock, Part, RouteReading, Runtime};
use crate::{
    config::DeployConfig,
    domain::Color,
    engine::{self, ComposeCli},
    images,
    nginx::NginxParams,
    util,
};

/// Where the state volume is mounted in the nginx container.
pub const STATE_DIR: &str = "/var/lib/mldeploy";
/// The port every container listens on inside the project network.
pub const CONTAINER_PORT: u16 = 8080;
/// The compose files, relative to the project root, in the order they are merged.
pub const COMPOSE_FILES: [&str; 3] = [
    "docker-compose.yml",
    "docker-compose.blue.yml",
    "docker-compose.green.yml",
];
/// How long a stopping container may drain before it is killed.
const STOP_TIMEOUT_SECS: &str = "10";
/// How long a freshly started nginx container gets to prove it stays up.
const BALANCER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Containers through `docker compose` / `docker-compose`.
pub struct Compose {
    sh: Shell,
    cli: ComposeCli,
    config: DeployConfig,
    addresses: Addresses,
    /// The nginx container's id, looked up once.
    nginx_id: RefCell<Option<String>>,
    /// Whether the nginx container was seen running during this command (checked once: a
    /// container stopping mid-operation makes the next `docker exec` fail anyway).
    nginx_running: std::cell::Cell<bool>,
    /// With `DOCKER_HOST=ssh://…`: local forwards to the host's balancer and direct ports (the
    /// direct ports are bound to the host's loopback, so the gates reach them only this way).
    tunnel: Option<Tunnel>,
}

impl Compose {
    /// Opens the compose runtime; fails when it cannot be used here (no compose command, no
    /// engine), which makes `--runtime auto` choose the local runtime.
    pub fn new(sh: &Shell, config: &DeployConfig) -> Result<Compose> {
        engine::ensure_engine(sh)?;
        let root = util::project_root();
        let project = project_name(&config.compose.project)?;
        let cli = ComposeCli::detect(sh, &project, compose_files())?;
        let addresses = Addresses::in_subnet(&config.compose.subnet).context("`compose.subnet`")?;
        let sh = sh.clone();
        sh.change_dir(&root);
        for (key, value) in compose_env(config, &addresses) {
            sh.set_var(key, value);
        }
        Ok(Compose {
            sh,
            cli,
            config: config.clone(),
            addresses,
            nginx_id: RefCell::new(None),
            nginx_running: std::cell::Cell::new(false),
            tunnel: Tunnel::open_for_docker_host(config)?,
        })
    }

    /// The service image the colors run, `name:tag`.
    pub fn service_image(&self) -> String {
        service_image_ref(&self.config)
    }

    fn service(part: Part) -> &'static str {
        match part {
            Part::Balancer => "nginx",
            Part::Color(color) => color.as_str(),
        }
    }

    /// The id of `part`'s container (running or not), if it exists.
    pub fn container_id(&self, part: Part) -> Result<Option<String>> {
        if part == Part::Balancer {
            if let Some(id) = self.nginx_id.borrow().clone() {
                return Ok(Some(id));
            }
        }
        let project = format!("label=com.docker.compose.project={}", self.cli.project);
        let service = format!("label=com.docker.compose.service={}", Self::service(part));
        let ids = cmd!(
            self.sh,
            "docker ps --all --quiet --no-trunc --filter {project} --filter {service}"
        )
        .quiet()
        .read()
        .with_context(|| format!("find the {part} container"))?;
        let id = ids
            .lines()
            .next()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        if part == Part::Balancer {
            *self.nginx_id.borrow_mut() = id.clone();
        }
        Ok(id)
    }

    /// The nginx container, which must be running: it holds the state volume.
    fn nginx(&self) -> Result<String> {
        match self.container_id(Part::Balancer)? {
            Some(id) => Ok(id),
            None => bail!(
                "the balancer container of project `{}` does not exist: run `cargo xtask up`",
                self.cli.project
            ),
        }
    }

    /// The nginx container, started if needed: every change to the state volume goes through it,
    /// and `up` may record routes before it starts the balancer with its final config. A missing
    /// balancer is started with this runtime's rendered config.
    fn state_container(&self) -> Result<String> {
        if let Some(id) = self.container_id(Part::Balancer)? {
            if self.nginx_running.get() || self.container_running(&id)? {
                self.nginx_running.set(true);
                return Ok(id);
            }
        }
        self.start_balancer(&crate::nginx::render(&self.nginx_params()))
            .context("start the balancer, which holds the deploy state")?;
        self.nginx_running.set(true);
        self.nginx()
    }

    /// Whether the nginx container (and so the state volume) exists; reads of a deployment
    /// that was never brought up find nothing instead of failing.
    fn has_state(&self) -> Result<bool> {
        Ok(self.container_id(Part::Balancer)?.is_some())
    }

    /// How the state volume can be read now.
    fn access(&self) -> Result<Access> {
        let Some(id) = self.container_id(Part::Balancer)? else {
            return Ok(Access::Absent);
        };
        if self.nginx_running.get() || self.container_running(&id)? {
            self.nginx_running.set(true);
            Ok(Access::Running)
        } else {
            Ok(Access::Stopped)
        }
    }

    /// `docker cp <nginx>:<path> -`, which works on a stopped container too: the tar stream's
    /// entries, none when the path does not exist.
    fn copy_out(&self, path: &str) -> Result<Vec<TarEntry>> {
        let id = self.nginx()?;
        let source = format!("{id}:{path}");
        let output = cmd!(self.sh, "docker cp {source} -")
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| format!("docker cp {path} out of the balancer container"))?;
        if !output.status.success() {
            let err = String::from_utf8_lossy(&output.stderr);
            if err.contains("Could not find") || err.contains("No such") {
                return Ok(Vec::new());
            }
            bail!(
                "docker cp {path} out of the balancer container: {}",
                err.trim()
            );
        }
        parse_tar(&output.stdout).with_context(|| format!("read the copy of {path}"))
    }

    /// `docker exec <nginx> <args>`; returns the result whatever the exit status.
    fn exec(&self, args: &[&str], stdin: Option<&str>) -> Result<Exec> {
        let id = self.nginx()?;
        let interactive: &[&str] = if stdin.is_some() {
            &["--interactive"]
        } else {
            &[]
        };
        let mut cmd = cmd!(self.sh, "docker exec {interactive...} {id} {args...}")
            .quiet()
            .ignore_status();
        if let Some(input) = stdin {
            cmd = cmd.stdin(input);
        }
        let output = cmd
            .output()
            .with_context(|| format!("run `docker exec {}`", args.join(" ")))?;
        let exec = Exec {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        };
        if !exec.ok && exec.stderr.contains("is not running") {
            bail!(
                "the balancer container is stopped: run `cargo xtask up` ({})",
                exec.stderr
            );
        }
        Ok(exec)
    }

    /// Like [`Compose::exec`], failing with the command's error output when it fails.
    fn exec_ok(&self, what: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let exec = self.exec(args, stdin)?;
        if !exec.ok {
            bail!("{what}: {}", exec.stderr);
        }
        Ok(exec.stdout)
    }

    fn container_running(&self, id: &str) -> Result<bool> {
        let format = "{{.State.Running}}";
        let out = cmd!(self.sh, "docker inspect --format {format} {id}")
            .quiet()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        Ok(out.trim() == "true")
    }

    /// The container's state for messages: `running (healthy)`, `restarting`, `exited (1)`…
    pub fn describe(&self, part: Part) -> Result<String> {
        let Some(id) = self.container_id(part)? else {
            return Ok("absent".to_owned());
        };
        let format = "{{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}";
        let out = cmd!(self.sh, "docker inspect --format {format} {id}")
            .quiet()
            .read()?;
        let mut words = out.split_whitespace();
        let status = words.next().unwrap_or("unknown");
        let code = words.next().unwrap_or("0");
        Ok(match (status, words.next()) {
            ("exited", _) => format!("exited ({code})"),
            (status, Some(health)) => format!("{status} ({health})"),
            (status, None) => status.to_owned(),
        })
    }

    /// Extracts `entries` (paths relative to `dest`) into `dest` (absolute) in the nginx
    /// container: a tar stream made here, owned by root whoever runs this (a copied folder
    /// would keep the operator's uid, which root in the container, without
    /// `CAP_DAC_OVERRIDE`, could then not change).
    fn copy_in(&self, entries: &[(String, TarKind, &str)], dest: &str) -> Result<()> {
        let id = self.nginx()?;
        let archive = tar_archive(entries);
        let target = format!("{id}:{dest}");
        cmd!(self.sh, "docker cp - {target}")
            .quiet()
            .stdin(archive)
            .run()
            .with_context(|| format!("docker cp into {dest}"))
    }

    fn compose(&self, what: &str, args: &[&str]) -> Result<()> {
        self.cli
            .cmd(&self.sh, args)
            .quiet()
            .ignore_stdout()
            .output()
            .map(drop)
            .with_context(|| format!("{what} ({} {})", self.cli.display_name(), args.join(" ")))
    }
}

/// How the state volume can be read.
enum Access {
    /// No balancer container: nothing was deployed.
    Absent,
    /// `docker exec` works.
    Running,
    /// The container is stopped: only `docker cp` out works.
    Stopped,
}

struct Exec {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Runtime for Compose {
    fn name(&self) -> &'static str {
        "compose"
    }

    fn url(&self, part: Part) -> String {
        let index = match part {
            Part::Balancer => 0,
            Part::Color(Color::Blue) => 1,
            Part::Color(Color::Green) => 2,
        };
        if let Some(tunnel) = &self.tunnel {
            return format!("http://127.0.0.1:{}", tunnel.local[index]);
        }
        format!(
            "http://{}:{}",
            published_host(),
            remote_ports(&self.config)[index]
        )
    }

    fn nginx_params(&self) -> NginxParams {
        let mut params = NginxParams::container_default();
        params.listen = CONTAINER_PORT.to_string();
        params.blue = format!("{}:{CONTAINER_PORT}", self.addresses.blue);
        params.green = format!("{}:{CONTAINER_PORT}", self.addresses.green);
        params.route_dir = format!("{STATE_DIR}/routes");
        params.buckets = self.config.balancer.buckets;
        // /tmp exists in every nginx image; nginx creates its temp folders directly under it.
        params.temp_dir = "/tmp".to_owned();
        params
    }

    fn start_balancer(&self, nginx_conf: &str) -> Result<()> {
        let offline = images::offline_from_env();
        let image =
            images::resolve_nginx_image(&self.sh, &self.config.compose.nginx_image, offline)?;
        self.sh.set_var("MLDEPLOY_NGINX_IMAGE", &image);
        *self.nginx_id.borrow_mut() = None;
        self.nginx_running.set(false);
        if let Some(id) = self.container_id(Part::Balancer)? {
            if self.container_running(&id)? {
                if self.current_config()?.as_deref() == Some(nginx_conf) {
                    return Ok(());
                }
                return self.apply_config(nginx_conf);
            }
        } else {
            self.compose(
                "create the balancer container",
                &["up", "--no-start", "--no-deps", "nginx"],
            )?;
            *self.nginx_id.borrow_mut() = None;
        }
        // The container exists but is stopped: seed the volume through `docker cp` (which works
        // on stopped containers), then start it.
        let id = self.nginx()?;
        let seed = [
            ("nginx".to_owned(), TarKind::Dir, ""),
            ("nginx/nginx.conf".to_owned(), TarKind::File, nginx_conf),
            ("routes".to_owned(), TarKind::Dir, ""),
        ];
        self.copy_in(&seed, STATE_DIR)
            .context("install nginx's config into the state volume")?;
        cmd!(self.sh, "docker start {id}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("start the balancer container")?;
        // nginx exits at once on a bad config: wait until it answers its own health path.
        let health = format!("{}{}", self.url(Part::Balancer), crate::nginx::HEALTH_PATH);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .context("build an HTTP client")?;
        util::poll(
            "wait for the balancer to answer",
            BALANCER_START_TIMEOUT,
            || {
                if !self.container_running(&id)? {
                    bail!(
                        "the balancer container is {}",
                        self.describe(Part::Balancer)?
                    );
                }
                let status = client
                    .get(&health)
                    .send()
                    .with_context(|| format!("GET {health}"))?
                    .status();
                if !status.is_success() {
                    bail!("GET {health} answered {status}");
                }
                Ok(())
            },
        )
        .with_context(|| {
            format!(
                "nginx did not start; its log:\n{}",
                self.logs(Part::Balancer, 20).unwrap_or_default()
            )
        })
    }

    fn start_color(&self, color: Color, version: &str) -> Result<()> {
        let image = self.service_image();
        images::ensure_service_image(&self.sh, &self.config.compose.image, &image)?;
        let prefix = color.as_str().to_uppercase();
        let service = color.as_str();
        let _version = self
            .sh
            .push_env(format!("MLDEPLOY_{prefix}_VERSION"), version);
        self.compose(
            &format!("start {color} with {version}"),
            &["up", "--detach", "--no-deps", service],
        )
    }

    fn stop_color(&self, color: Color) -> Result<()> {
        self.compose(
            &format!("stop {color}"),
            &["stop", "--timeout", STOP_TIMEOUT_SECS, color.as_str()],
        )
    }

    fn is_running(&self, part: Part) -> Result<bool> {
        match self.container_id(part)? {
            Some(id) => self.container_running(&id),
            None => Ok(false),
        }
    }

    fn logs(&self, part: Part, lines: usize) -> Result<String> {
        let Some(id) = self.container_id(part)? else {
            return Ok(format!("(no {part} container)"));
        };
        let tail = lines.to_string();
        let output = cmd!(self.sh, "docker logs --tail {tail} {id}")
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| format!("read the {part} container's log"))?;
        // The services log to stderr and stdout; show both, in that order of importance.
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(engine::last_lines(&text, lines))
    }

    fn down(&self) -> Result<()> {
        self.compose(
            "remove the containers, network and volume",
            &[
                "down",
                "--volumes",
                "--remove-orphans",
                "--timeout",
                STOP_TIMEOUT_SECS,
            ],
        )?;
        *self.nginx_id.borrow_mut() = None;
        self.nginx_running.set(false);
        Ok(())
    }

    fn apply_config(&self, nginx_conf: &str) -> Result<()> {
        if !self.is_running(Part::Balancer)? {
            return self.start_balancer(nginx_conf);
        }
        let candidate = format!("{STATE_DIR}/nginx/nginx.conf.new");
        let installed = format!("{STATE_DIR}/nginx/nginx.conf");
        self.exec_ok(
            "write the new nginx config",
            &["tee", &candidate],
            Some(nginx_conf),
        )?;
        let test = self.exec(&["nginx", "-t", "-q", "-c", &candidate], None)?;
        if !test.ok {
            let _ = self.exec(&["rm", "-f", &candidate], None);
            bail!(
                "nginx rejects the new config (the running one stays): {}",
                test.stderr
            );
        }
        self.exec_ok(
            "install the new nginx config",
            &["mv", "-f", &candidate, &installed],
            None,
        )?;
        let id = self.nginx()?;
        cmd!(self.sh, "docker kill --signal HUP {id}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("reload nginx (SIGHUP)")?;
        Ok(())
    }

    fn current_config(&self) -> Result<Option<String>> {
        if self.container_id(Part::Balancer)?.is_none() {
            return Ok(None);
        }
        self.read_file("nginx/nginx.conf")
    }

    fn read_file(&self, rel: &str) -> Result<Option<String>> {
        let path = state_path(rel)?;
        match self.access()? {
            Access::Absent => return Ok(None),
            Access::Stopped => {
                let entries = self.copy_out(&path)?;
                let file = entries.into_iter().find(|e| e.kind == TarKind::File);
                return Ok(file.map(|e| String::from_utf8_lossy(&e.data).into_owned()));
            }
            Access::Running => {}
        }
        let exec = self.exec(&["cat", &path], None)?;
        if exec.ok {
            Ok(Some(exec.stdout))
        } else if exec.stderr.contains("No such file") {
            Ok(None)
        } else {
            bail!("read {path} in the balancer container: {}", exec.stderr)
        }
    }

    fn write_file_atomic(&self, rel: &str, contents: &str) -> Result<()> {
        let path = state_path(rel)?;
        self.state_container()?;
        let temp = format!("{path}.tmp-{}", std::process::id());
        self.exec_ok(&format!("write {temp}"), &["tee", &temp], Some(contents))?;
        self.exec_ok(
            &format!("rename {temp} to {path}"),
            &["mv", "-f", &temp, &path],
            None,
        )?;
        Ok(())
    }

    fn append_line(&self, rel: &str, line: &str) -> Result<()> {
        let path = state_path(rel)?;
        self.state_container()?;
        let mut text = line.trim_end_matches('\n').to_owned();
        text.push('\n');
        self.exec_ok(
            &format!("append to {path}"),
            &["tee", "-a", &path],
            Some(&text),
        )?;
        Ok(())
    }

    fn install_generation(&self, generation: u64, green_buckets: &[u16]) -> Result<()> {
        self.state_container()?;
        let name = generation_name(generation);
        let mut entries = vec![(name.clone(), TarKind::Dir, "")];
        entries.extend(
            green_buckets
                .iter()
                .map(|bucket| (format!("{name}/{bucket}"), TarKind::File, "")),
        );
        let result = (|| {
            let remote = format!("{STATE_DIR}/routes/{name}");
            self.exec_ok(
                "remove a leftover generation",
                &["rm", "-rf", &remote],
                None,
            )?;
            self.copy_in(&entries, &format!("{STATE_DIR}/routes"))
        })();
        result.with_context(|| format!("install route generation {generation}"))
    }

    fn activate_generation(&self, generation: u64) -> Result<()> {
        let routes = format!("{STATE_DIR}/routes");
        let name = generation_name(generation);
        let id = self.state_container()?;
        for args in [
            ["ln", "-sfn", name.as_str(), "current.tmp"],
            ["mv", "-Tf", "current.tmp", "current"],
        ] {
            let output = cmd!(self.sh, "docker exec --workdir {routes} {id} {args...}")
                .quiet()
                .ignore_status()
                .output()?;
            if !output.status.success() {
                bail!(
                    "activate route generation {generation} (`{}`): {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        Ok(())
    }

    fn active_generation(&self) -> Result<RouteReading> {
        match self.access()? {
            Access::Absent => return Ok(RouteReading::Missing),
            Access::Stopped => {
                let entries = self.copy_out(&format!("{STATE_DIR}/routes"))?;
                return Ok(route_reading(&entries));
            }
            Access::Running => {}
        }
        let current = format!("{STATE_DIR}/routes/current");
        let link = self.exec(&["readlink", &current], None)?;
        if !link.ok {
            let exists = self.exec(&["ls", "-ld", &current], None)?;
            if !exists.ok {
                return Ok(RouteReading::Missing);
            }
            return Ok(RouteReading::Unreadable(format!(
                "{current} is not a symlink: {}",
                exists.stdout.trim()
            )));
        }
        let target = link.stdout.trim();
        let Some(generation) = parse_generation_name(target) else {
            return Ok(RouteReading::Unreadable(format!(
                "{current} points at {target:?}, not a gen-<n> folder"
            )));
        };
        let listing = self.exec(
            &["ls", "-1", &format!("{STATE_DIR}/routes/{target}/")],
            None,
        )?;
        if !listing.ok {
            return Ok(RouteReading::Unreadable(format!(
                "{current} points at {target}: {}",
                listing.stderr
            )));
        }
        match parse_buckets(&listing.stdout) {
            Ok(green_buckets) => Ok(RouteReading::Active {
                generation,
                green_buckets,
            }),
            Err(err) => Ok(RouteReading::Unreadable(format!("{target}: {err}"))),
        }
    }

    fn max_generation(&self) -> Result<u64> {
        Ok(self.generations()?.into_iter().max().unwrap_or(0))
    }

    fn prune_generations(&self, keep: &[u64]) -> Result<()> {
        let doomed: Vec<String> = self
            .generations()?
            .into_iter()
            .filter(|generation| !keep.contains(generation))
            .map(|generation| format!("{STATE_DIR}/routes/{}", generation_name(generation)))
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let mut args = vec!["rm", "-rf"];
        args.extend(doomed.iter().map(String::as_str));
        self.exec_ok("prune route generations", &args, None)?;
        Ok(())
    }

    fn lock(&self, timeout: Duration, holder: &str) -> Result<HostLock> {
        let dir = format!("{STATE_DIR}/lock.d");
        let owner_file = format!("{dir}/owner");
        let started = Instant::now();
        let mut delay = Duration::from_millis(20);
        if !self.has_state()? {
            // Nothing is deployed, so there is nothing to protect yet (and `down` must not
            // create a balancer just to lock it); the first write creates the balancer.
            return Ok(Box::new(()));
        }
        self.state_container()?;
        loop {
            let exec = self.exec(&["mkdir", &dir], None)?;
            if exec.ok {
                let owner = lock_owner(holder, now_secs());
                self.exec_ok(
                    "record the lock's owner",
                    &["tee", &owner_file],
                    Some(&owner),
                )?;
                return Ok(Box::new(LockGuard {
                    container: self.nginx()?,
                    dir,
                }));
            }
            if !exec.stderr.contains("File exists") {
                bail!("take the deploy lock ({dir}): {}", exec.stderr);
            }
            if started.elapsed() >= timeout {
                let owner = self
                    .read_file("lock.d/owner")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                bail!(
                    "{}",
                    lock_busy_message(&owner, now_secs(), &self.nginx()?, &dir)
                );
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }
}

impl Compose {
    /// The generation numbers present under `routes/`.
    fn generations(&self) -> Result<Vec<u64>> {
        match self.access()? {
            Access::Absent => return Ok(Vec::new()),
            Access::Stopped => {
                let entries = self.copy_out(&format!("{STATE_DIR}/routes"))?;
                return Ok(generations_in(&entries));
            }
            Access::Running => {}
        }
        let exec = self.exec(&["ls", "-1", &format!("{STATE_DIR}/routes/")], None)?;
        if !exec.ok {
            if exec.stderr.contains("No such file") {
                return Ok(Vec::new());
            }
            bail!("list route generations: {}", exec.stderr);
        }
        Ok(exec
            .stdout
            .lines()
            .filter_map(|name| parse_generation_name(name.trim()))
            .collect())
    }
}

/// Releases the deploy lock when dropped.
struct LockGuard {
    container: String,
    dir: String,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let output = Command::new("docker")
            .args(["exec", &self.container, "rm", "-rf", &self.dir])
            .stdin(std::process::Stdio::null())
            .output();
        let gone = |stderr: &[u8]| {
            let text = String::from_utf8_lossy(stderr);
            // `down` removed the container, and the lock with it.
            text.contains("No such container") || text.contains("is not running")
        };
        if !matches!(&output, Ok(o) if o.status.success() || gone(&o.stderr)) {
            eprintln!(
                "warning: could not release the deploy lock {} in container {}",
                self.dir, self.container
            );
        }
    }
}

// Pure helpers.

/// The static addresses of the parts on the project network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub nginx: Ipv4Addr,
    pub blue: Ipv4Addr,
    pub green: Ipv4Addr,
}

impl Addresses {
    /// `.10`, `.11` and `.12` of `subnet` (`a.b.c.d/len`, len at most 28).
    pub fn in_subnet(subnet: &str) -> Result<Addresses> {
        let Some((base, len)) = subnet.split_once('/') else {
            bail!("{subnet:?} is not a subnet like 172.30.77.0/24");
        };
        let base: Ipv4Addr = base
            .parse()
            .with_context(|| format!("{base:?} is not an IPv4 address"))?;
        let len: u32 = len
            .parse()
            .with_context(|| format!("{len:?} is not a prefix length"))?;
        if !(8..=28).contains(&len) {
            bail!("{subnet}: use a prefix length between 8 and 28");
        }
        let mask = u32::MAX << (32 - len);
        let network = u32::from(base) & mask;
        if network != u32::from(base) {
            bail!(
                "{subnet}: the address has host bits set; use {}/{len}",
                Ipv4Addr::from(network)
            );
        }
        let at = |offset: u32| Ipv4Addr::from(network + offset);
        Ok(Addresses {
            nginx: at(10),
            blue: at(11),
            green: at(12),
        })
    }

    pub fn color(&self, color: Color) -> Ipv4Addr {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// The compose project name: what compose itself would make of it, refused when that changes it
/// (labels must match exactly).
pub fn project_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("`compose.project` = {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter or digit");
    }
    Ok(name.to_owned())
}

/// The variables the compose files read, from the deploy configuration.
pub fn compose_env(config: &DeployConfig, addresses: &Addresses) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "MLDEPLOY_PUBLIC_PORT".to_owned(),
            config.balancer.port.to_string(),
        ),
        ("MLDEPLOY_SUBNET".to_owned(), config.compose.subnet.clone()),
        (
            "MLDEPLOY_NGINX_ADDR".to_owned(),
            addresses.nginx.to_string(),
        ),
        (
            "MLDEPLOY_NGINX_IMAGE".to_owned(),
            config.compose.nginx_image.clone(),
        ),
    ];
    for color in Color::ALL {
        let prefix = format!("MLDEPLOY_{}", color.as_str().to_uppercase());
        let color_config = config.color(color);
        env.push((format!("{prefix}_IMAGE"), service_image_ref(config)));
        env.push((format!("{prefix}_VERSION"), color_config.version.clone()));
        env.push((format!("{prefix}_PORT"), color_config.port.to_string()));
        env.push((format!("{prefix}_ADDR"), addresses.color(color).to_string()));
    }
    env
}

/// `<compose.image>:<tag>`, the tag from `MLDEPLOY_IMAGE_TAG` or `latest`.
pub fn service_image_ref(config: &DeployConfig) -> String {
    let tag = std::env::var("MLDEPLOY_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "latest".into());
    format!("{}:{tag}", config.compose.image)
}

/// The ports the deployment publishes on its host: balancer, blue, green.
fn remote_ports(config: &DeployConfig) -> [u16; 3] {
    [config.balancer.port, config.blue.port, config.green.port]
}

/// An `ssh -N -L …` child forwarding local ports to the deploy host's published ports; killed
/// when dropped.
struct Tunnel {
    child: std::process::Child,
    /// Local ports for the balancer, blue and green.
    local: [u16; 3],
}

/// How long an SSH tunnel may take to come up.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(15);

impl Tunnel {
    /// Opens a tunnel when `DOCKER_HOST` is `ssh://…` and `MLDEPLOY_PUBLIC_HOST` is not set.
    fn open_for_docker_host(config: &DeployConfig) -> Result<Option<Tunnel>> {
        if std::env::var("MLDEPLOY_PUBLIC_HOST").is_ok_and(|h| !h.is_empty()) {
            return Ok(None);
        }
        let Some((dest, port)) = std::env::var("DOCKER_HOST")
            .ok()
            .as_deref()
            .and_then(ssh_target)
        else {
            return Ok(None);
        };
        let mut local = [0u16; 3];
        for slot in &mut local {
            *slot = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("find a free local port for the SSH tunnel")?
                .port();
        }
        let forwards: Vec<(u16, u16)> = local.iter().copied().zip(remote_ports(config)).collect();
        let args = ssh_tunnel_args(&dest, port, &forwards);
        let mut child = Command::new("ssh")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start `ssh` for a tunnel to the deploy host (is an SSH client installed?)")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("wait for ssh")? {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                bail!("the SSH tunnel to {dest} failed ({status}): {}", err.trim());
            }
            let ready = local.iter().all(|port| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if ready {
                return Ok(Some(Tunnel { child, local }));
            }
            if started.elapsed() > TUNNEL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the SSH tunnel to {dest} did not open within {} s: check `ssh {dest}` works \
                     without a prompt, or set MLDEPLOY_PUBLIC_HOST to reach the ports directly",
                    TUNNEL_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `user@host` and the port of an `ssh://` `DOCKER_HOST`.
pub fn ssh_target(docker_host: &str) -> Option<(String, Option<u16>)> {
    let rest = docker_host.strip_prefix("ssh://")?;
    let rest = rest.split('/').next()?;
    let (user, host_port) = match rest.rsplit_once('@') {
        Some((user, host_port)) => (Some(user), host_port),
        None => (None, rest),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse().ok()?)),
        None => (host_port, None),
    };
    if host.is_empty() {
        return None;
    }
    let dest = match user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_owned(),
    };
    Some((dest, port))
}

/// The `ssh` arguments of a tunnel: no command, fail when a forward cannot be set up, never
/// prompt.
pub fn ssh_tunnel_args(dest: &str, port: Option<u16>, forwards: &[(u16, u16)]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ServerAliveInterval=15",
    ]
    .map(String::from)
    .to_vec();
    if let Some(port) = port {
        args.extend(["-p".to_owned(), port.to_string()]);
    }
    for (local, remote) in forwards {
        args.extend([
            "-L".to_owned(),
            format!("127.0.0.1:{local}:127.0.0.1:{remote}"),
        ]);
    }
    args.push(dest.to_owned());
    args
}

/// The host the published ports are reached at: `MLDEPLOY_PUBLIC_HOST`, else the host of a
/// `tcp://` or `ssh://` `DOCKER_HOST`, else 127.0.0.1.
fn published_host() -> String {
    if let Ok(host) = std::env::var("MLDEPLOY_PUBLIC_HOST") {
        if !host.is_empty() {
            return host;
        }
    }
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|url| docker_host_name(&url))
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// The host name in a remote `DOCKER_HOST` (`ssh://user@host:22`, `tcp://host:2376`).
pub fn docker_host_name(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("tcp://"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

/// An absolute path in the state volume for `rel`, refusing anything that would leave it.
pub fn state_path(rel: &str) -> Result<String> {
    if rel.is_empty()
        || rel.starts_with('/')
        || rel.split('/').any(|part| part == ".." || part.is_empty())
    {
        bail!("{rel:?} is not a relative path inside the state directory");
    }
    Ok(format!("{STATE_DIR}/{rel}"))
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation}")
}

/// `gen-<n>` → n.
pub fn parse_generation_name(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// The bucket numbers in a `ls -1` listing of a generation folder, sorted.
pub fn parse_buckets(listing: &str) -> Result<Vec<u16>> {
    let mut buckets = listing
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            name.parse::<u16>()
                .with_context(|| format!("{name:?} is not a bucket number"))
        })
        .collect::<Result<Vec<u16>>>()?;
    buckets.sort_unstable();
    Ok(buckets)
}

/// The contents of the lock's `owner` file.
pub fn lock_owner(holder: &str, now: u64) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    format!(
        "{holder}\npid {} on {}\nsince {now}\n",
        std::process::id(),
        if host.is_empty() { "?" } else { &host }
    )
}

/// The error when the lock stays taken: who holds it, for how long, and how to clear a stale one.
pub fn lock_busy_message(owner: &str, now: u64, container: &str, dir: &str) -> String {
    let holder = owner
        .lines()
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or("an unknown operation");
    let since = owner
        .lines()
        .find_map(|l| l.strip_prefix("since "))
        .and_then(|s| s.trim().parse::<u64>().ok());
    let age = since.map(|since| now.saturating_sub(since));
    let short = &container[..container.len().min(12)];
    let mut message = format!("another operation holds the deploy lock: {holder}");
    if let Some(age) = age {
        message.push_str(&format!(" (for {age} s)"));
    }
    message.push_str("; wait for it to finish and try again");
    if age.is_none_or(|age| age > 600) {
        message.push_str(&format!(
            ". It looks stale: if no operation is running, remove it with `docker exec {short} rm -rf {dir}`"
        ));
    }
    message
}

/// What a tar entry is (only what the state directory holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The path inside the archive, without a trailing `/`.
    pub path: String,
    pub kind: TarKind,
    /// A symlink's target.
    pub link: String,
    pub data: Vec<u8>,
}

/// Parses a (ustar/GNU/PAX) tar stream as `docker cp … -` writes it. GNU long names are
/// followed; PAX headers are skipped (the state directory's names are short and ASCII).
pub fn parse_tar(bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let field = |block: &[u8], range: std::ops::Range<usize>| {
        let raw = &block[range];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut long_name: Option<String> = None;
    while offset + 512 <= bytes.len() {
        let block = &bytes[offset..offset + 512];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let size_text = field(block, 124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .with_context(|| format!("bad tar size field {size_text:?}"))?
            as usize;
        let data_start = offset + 512;
        let data_end = data_start + size;
        if data_end > bytes.len() {
            bail!("the tar stream ends inside an entry");
        }
        let data = &bytes[data_start..data_end];
        let typeflag = block[156];
        let mut path = field(block, 0..100);
        if &block[257..262] == b"ustar" {
            let prefix = field(block, 345..500);
            if !prefix.is_empty() {
                path = format!("{prefix}/{path}");
            }
        }
        offset = data_start + size.div_ceil(512) * 512;
        match typeflag {
            b'L' => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                continue;
            }
            b'x' | b'g' => continue,
            _ => {}
        }
        if let Some(name) = long_name.take() {
            path = name;
        }
        let kind = match typeflag {
            b'0' | 0 | b'7' => TarKind::File,
            b'5' => TarKind::Dir,
            b'2' => TarKind::Symlink,
            _ => TarKind::Other,
        };
        entries.push(TarEntry {
            path: path.trim_end_matches('/').to_owned(),
            kind,
            link: field(block, 157..257),
            data: if kind == TarKind::File {
                data.to_vec()
            } else {
                Vec::new()
            },
        });
    }
    Ok(entries)
}

/// A tar stream of `entries` (folders 0755, files 0644, owned by root), readable by nginx's
/// workers.
pub fn tar_archive(entries: &[(String, TarKind, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, contents) in entries {
        let (mode, typeflag, data): (&str, u8, &[u8]) = match kind {
            TarKind::Dir => ("0000755", b'5', b""),
            _ => ("0000644", b'0', contents.as_bytes()),
        };
        let name = if *kind == TarKind::Dir {
            format!("{path}/")
        } else {
            path.clone()
        };
        let mut block = [0u8; 512];
        let name = name.as_bytes();
        block[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        block[100..107].copy_from_slice(mode.as_bytes());
        block[108..115].copy_from_slice(b"0000000");
        block[116..123].copy_from_slice(b"0000000");
        block[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        let mtime = format!("{:011o}", now_secs());
        block[136..147].copy_from_slice(mtime.as_bytes());
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].copy_from_slice(b"        ");
        let checksum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..155].copy_from_slice(format!("{checksum:06o}\0").as_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The route reading from the entries of a copy of `routes/` (entry paths start `routes/`).
pub fn route_reading(entries: &[TarEntry]) -> RouteReading {
    let Some(current) = entries.iter().find(|e| e.path == "routes/current") else {
        return RouteReading::Missing;
    };
    if current.kind != TarKind::Symlink {
        return RouteReading::Unreadable("routes/current is not a symlink".to_owned());
    }
    let target = current.link.trim_end_matches('/');
    let Some(generation) = parse_generation_name(target) else {
        return RouteReading::Unreadable(format!(
            "routes/current points at {target:?}, not a gen-<n> folder"
        ));
    };
    let dir = format!("routes/{target}");
    if !entries
        .iter()
        .any(|e| e.path == dir && e.kind == TarKind::Dir)
    {
        return RouteReading::Unreadable(format!("routes/current points at a missing {target}"));
    }
    let prefix = format!("{dir}/");
    let listing: String = entries
        .iter()
        .filter_map(|e| e.path.strip_prefix(&prefix))
        .map(|name| format!("{name}\n"))
        .collect();
    match parse_buckets(&listing) {
        Ok(green_buckets) => RouteReading::Active {
            generation,
            green_buckets,
        },
        Err(err) => RouteReading::Unreadable(format!("{target}: {err}")),
    }
}

/// The generation folders in the entries of a copy of `routes/`.
pub fn generations_in(entries: &[TarEntry]) -> Vec<u64> {
    entries
        .iter()
        .filter(|e| e.kind == TarKind::Dir)
        .filter_map(|e| e.path.strip_prefix("routes/"))
        .filter_map(parse_generation_name)
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The compose files, absolute.
pub fn compose_files() -> Vec<PathBuf> {
    let root = util::project_root();
    COMPOSE_FILES.iter().map(|f| root.join(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_fixed_offsets_in_the_subnet() {
        let a = Addresses::in_subnet("172.30.77.0/24").unwrap();
        assert_eq!(a.nginx, Ipv4Addr::new(172, 30, 77, 10));
        assert_eq!(a.color(Color::Blue), Ipv4Addr::new(172, 30, 77, 11));
        assert_eq!(a.color(Color::Green), Ipv4Addr::new(172, 30, 77, 12));
        assert_eq!(
            Addresses::in_subnet("10.1.2.16/28").unwrap().green,
            Ipv4Addr::new(10, 1, 2, 28)
        );
        for bad in [
            "172.30.77.0",
            "172.30.77.1/24",
            "172.30.77.0/30",
            "x/24",
            "1.2.3.0/y",
        ] {
            assert!(Addresses::in_subnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_names_must_survive_compose_normalisation() {
        assert_eq!(project_name("mldeploy-e2e_1").unwrap(), "mldeploy-e2e_1");
        for bad in ["", "MLdeploy", "a b", "-x", "a.b"] {
            assert!(project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_paths_stay_inside_the_volume() {
        assert_eq!(
            state_path("state.json").unwrap(),
            "/var/lib/mldeploy/state.json"
        );
        assert_eq!(
            state_path("routes/gen-3").unwrap(),
            "/var/lib/mldeploy/routes/gen-3"
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "a/"] {
            assert!(state_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generation_names_and_bucket_listings_parse() {
        assert_eq!(parse_generation_name("gen-42"), Some(42));
        assert_eq!(parse_generation_name("current"), None);
        assert_eq!(parse_generation_name("gen-x"), None);
        assert_eq!(parse_buckets("10\n2\n\n7\n").unwrap(), vec![2, 7, 10]);
        assert_eq!(parse_buckets("").unwrap(), Vec::<u16>::new());
        assert!(parse_buckets("2\nstray\n").is_err());
    }

    #[test]
    fn compose_env_names_every_variable_the_files_use() {
        let config = DeployConfig::default();
        let env = compose_env(
            &config,
            &Addresses::in_subnet(&config.compose.subnet).unwrap(),
        );
        let files: String = COMPOSE_FILES
            .iter()
            .map(|f| std::fs::read_to_string(util::project_root().join(f)).unwrap())
            .collect();
        let mut used: Vec<&str> = files
            .split("${")
            .skip(1)
            .map(|rest| rest.split([':', '}']).next().unwrap())
            .collect();
        used.sort_unstable();
        used.dedup();
        for var in used {
            assert!(
                env.iter().any(|(k, _)| k == var),
                "{var} is used by a compose file but never set"
            );
        }
        let get = |k: &str| env.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("MLDEPLOY_GREEN_ADDR"), "172.30.77.12");
        assert_eq!(get("MLDEPLOY_BLUE_PORT"), "8081");
    }

    #[test]
    fn compose_file_defaults_match_the_deploy_defaults() {
        // Someone running the compose files by hand gets the same deployment as `cargo xtask up`.
        let config = DeployConfig::default();
        let env = compose_env(
            &config,
            &Addresses::in_subnet(&config.compose.subnet).unwrap(),
        );
        let files: String = COMPOSE_FILES
            .iter()
            .map(|f| std::fs::read_to_string(util::project_root().join(f)).unwrap())
            .collect();
        for (key, value) in env.iter().filter(|(k, _)| !k.ends_with("_IMAGE")) {
            let pattern = format!("${{{key}:-{value}}}");
            assert!(files.contains(&pattern), "compose files lack {pattern}");
        }
    }

    /// A minimal tar writer for the tests (no checksum: the parser does not need one).
    fn tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, typeflag, link, data) in entries {
            let mut block = [0u8; 512];
            block[..name.len()].copy_from_slice(name.as_bytes());
            let size = format!("{:011o}", data.len());
            block[124..135].copy_from_slice(size.as_bytes());
            block[156] = *typeflag;
            block[157..157 + link.len()].copy_from_slice(link.as_bytes());
            block[257..262].copy_from_slice(b"ustar");
            out.extend_from_slice(&block);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn a_copied_routes_folder_reads_like_the_live_one() {
        let bytes = tar(&[
            ("routes/", b'5', "", b""),
            ("routes/current", b'2', "gen-7", b""),
            ("routes/gen-6/", b'5', "", b""),
            ("routes/gen-7/", b'5', "", b""),
            ("routes/gen-7/12", b'0', "", b""),
            ("routes/gen-7/3", b'0', "", b""),
        ]);
        let entries = parse_tar(&bytes).unwrap();
        assert_eq!(
            route_reading(&entries),
            RouteReading::Active {
                generation: 7,
                green_buckets: vec![3, 12]
            }
        );
        let mut generations = generations_in(&entries);
        generations.sort_unstable();
        assert_eq!(generations, vec![6, 7]);
    }

    #[test]
    fn archives_made_here_read_back() {
        let entries = [
            ("gen-3".to_owned(), TarKind::Dir, ""),
            ("gen-3/17".to_owned(), TarKind::File, ""),
            ("nginx.conf".to_owned(), TarKind::File, "events {}\n"),
        ];
        let bytes = tar_archive(&entries);
        assert_eq!(bytes.len() % 512, 0);
        let back = parse_tar(&bytes).unwrap();
        let summary: Vec<(&str, TarKind, &[u8])> = back
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.data.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("gen-3", TarKind::Dir, &b""[..]),
                ("gen-3/17", TarKind::File, &b""[..]),
                ("nginx.conf", TarKind::File, &b"events {}\n"[..]),
            ]
        );
        // The checksum is the one tar(1) verifies: the header's bytes, the field as spaces.
        let header = &bytes[..512];
        let mut sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        sum -= header[148..156].iter().map(|&b| u32::from(b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let field = String::from_utf8_lossy(&header[148..154]).into_owned();
        assert_eq!(u32::from_str_radix(&field, 8).unwrap(), sum);
    }

    #[test]
    fn a_copied_file_keeps_its_contents() {
        let body = vec![b'x'; 700];
        let entries = parse_tar(&tar(&[("state.json", b'0', "", &body)])).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].data, body);
        assert_eq!(entries[0].kind, TarKind::File);
    }

    #[test]
    fn broken_routes_are_reported_not_hidden() {
        let missing = parse_tar(&tar(&[("routes/", b'5', "", b"")])).unwrap();
        assert_eq!(route_reading(&missing), RouteReading::Missing);
        let dangling = parse_tar(&tar(&[("routes/current", b'2', "gen-9", b"")])).unwrap();
        assert!(
            matches!(route_reading(&dangling), RouteReading::Unreadable(why) if why.contains("gen-9"))
        );
        let file = parse_tar(&tar(&[("routes/current", b'0', "", b"")])).unwrap();
        assert!(matches!(route_reading(&file), RouteReading::Unreadable(_)));
        assert!(parse_tar(&tar(&[("a", b'0', "", b"abc")])[..514]).is_err());
    }

    #[test]
    fn ssh_docker_hosts_become_tunnels() {
        assert_eq!(
            ssh_target("ssh://deploy@example.org"),
            Some(("deploy@example.org".to_owned(), None))
        );
        assert_eq!(
            ssh_target("ssh://u@h.example:2222"),
            Some(("u@h.example".to_owned(), Some(2222)))
        );
        assert_eq!(
            ssh_target("ssh://h.example"),
            Some(("h.example".to_owned(), None))
        );
        assert_eq!(ssh_target("tcp://h:2376"), None);
        assert_eq!(ssh_target("ssh://u@"), None);
        let args = ssh_tunnel_args("u@h", Some(2222), &[(40000, 8080), (40001, 8081)]);
        assert_eq!(
            args.join(" "),
            "-N -o ExitOnForwardFailure=yes -o BatchMode=yes -o ServerAliveInterval=15 -p 2222 \
             -L 127.0.0.1:40000:127.0.0.1:8080 -L 127.0.0.1:40001:127.0.0.1:8081 u@h"
        );
    }

    #[test]
    fn docker_host_names() {
        assert_eq!(
            docker_host_name("ssh://deploy@example.org").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            docker_host_name("ssh://u@h.example:2222").as_deref(),
            Some("h.example")
        );
        assert_eq!(
            docker_host_name("tcp://10.0.0.5:2376").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(docker_host_name("unix:///var/run/docker.sock"), None);
    }

    #[test]
    fn a_busy_lock_names_its_holder_and_how_to_clear_it() {
        let owner = lock_owner("switch to green", 1000);
        let fresh = lock_busy_message(&owner, 1005, "0123456789abcdef", "/var/lib/mldeploy/lock.d");
        assert!(fresh.contains("switch to green (for 5 s)"), "{fresh}");
        assert!(!fresh.contains("stale"), "{fresh}");
        let stale = lock_busy_message(&owner, 5000, "0123456789abcdef", "/var/lib/mldeploy/lock.d");
        assert!(
            stale.contains("docker exec 0123456789ab rm -rf /var/lib/mldeploy/lock.d"),
            "{stale}"
        );
        let unknown = lock_busy_message("", 5000, "abc", "/d");
        assert!(
            unknown.contains("an unknown operation") && unknown.contains("stale"),
            "{unknown}"
        );
    }
}
