//! Docker plumbing for the compose runtime: finding the parts' containers, `docker exec` and
//! `docker cp` into the balancer container (which holds the state volume), and compose calls.

use anyhow::{bail, Context, Result};
use xshell::cmd;

use super::{
    tar::{parse_tar, tar_archive, TarEntry, TarKind},
    Compose,
};
use crate::runtime::{Part, Runtime};

impl Compose {
    /// The id of `part`'s container (running or not), if it exists.
    pub fn container_id(&self, part: Part) -> Result<Option<String>> {
        if part == Part::Balancer {
            if let Some(id) = self.nginx_id.borrow().clone() {
                return Ok(Some(id));
            }
        }
        let ids = match (&self.swarm_service, part) {
            // A swarm keeps a service's stopped task containers: the running one holds the
            // volume, a stopped one is read only when no task runs.
            (Some(service), Part::Balancer) => {
                let service = format!("label=com.docker.swarm.service.name={service}");
                let running = cmd!(
                    self.sh,
                    "docker ps --quiet --no-trunc --filter {service} --filter status=running"
                )
                .quiet()
                .read()
                .context("find the balancer's task container")?;
                if running.trim().is_empty() {
                    cmd!(
                        self.sh,
                        "docker ps --all --quiet --no-trunc --filter {service}"
                    )
                    .quiet()
                    .read()
                    .context("find the balancer's task container")?
                } else {
                    running
                }
            }
            (Some(_), Part::Color(_)) => bail!("a swarm color has no single container"),
            (None, _) => {
                let project = format!("label=com.docker.compose.project={}", self.project);
                let service = format!("label=com.docker.compose.service={}", Self::service(part));
                cmd!(
                    self.sh,
                    "docker ps --all --quiet --no-trunc --filter {project} --filter {service}"
                )
                .quiet()
                .read()
                .with_context(|| format!("find the {part} container"))?
            }
        };
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
    pub(super) fn nginx(&self) -> Result<String> {
        match self.container_id(Part::Balancer)? {
            Some(id) => Ok(id),
            None => bail!(
                "the balancer container of {} `{}` does not exist: run `cargo xtask up`",
                if self.swarm_service.is_some() {
                    "stack"
                } else {
                    "project"
                },
                self.project
            ),
        }
    }

    /// The nginx container, started if needed: every change to the state volume goes through it,
    /// and `up` may record routes before it starts the balancer with its final config. A missing
    /// balancer is started with this runtime's rendered config.
    pub(super) fn state_container(&self) -> Result<String> {
        if let Some(id) = self.container_id(Part::Balancer)? {
            if self.nginx_running.get() || self.container_running(&id)? {
                self.nginx_running.set(true);
                return Ok(id);
            }
        }
        if let Some(service) = &self.swarm_service {
            bail!("the balancer service `{service}` has no running task, and the deploy state lives in it: run `cargo xtask up`");
        }
        self.start_balancer(&crate::nginx::render(&self.nginx_params()))
            .context("start the balancer, which holds the deploy state")?;
        self.nginx_running.set(true);
        self.nginx()
    }

    /// Whether the nginx container (and so the state volume) exists; reads of a deployment
    /// that was never brought up find nothing instead of failing.
    pub(super) fn has_state(&self) -> Result<bool> {
        Ok(self.container_id(Part::Balancer)?.is_some())
    }

    /// How the state volume can be read now.
    pub(super) fn access(&self) -> Result<Access> {
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
    pub(super) fn copy_out(&self, path: &str) -> Result<Vec<TarEntry>> {
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
    pub(super) fn exec(&self, args: &[&str], stdin: Option<&str>) -> Result<Exec> {
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
    pub(super) fn exec_ok(&self, what: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let exec = self.exec(args, stdin)?;
        if !exec.ok {
            bail!("{what}: {}", exec.stderr);
        }
        Ok(exec.stdout)
    }

    pub(super) fn container_running(&self, id: &str) -> Result<bool> {
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
    pub(super) fn copy_in(&self, entries: &[(String, TarKind, &str)], dest: &str) -> Result<()> {
        self.copy_into(&self.nginx()?, entries, dest)
    }

    /// [`Compose::copy_in`] into container `id` (which may be stopped).
    pub fn copy_into(
        &self,
        id: &str,
        entries: &[(String, TarKind, &str)],
        dest: &str,
    ) -> Result<()> {
        let archive = tar_archive(entries);
        let target = format!("{id}:{dest}");
        cmd!(self.sh, "docker cp - {target}")
            .quiet()
            .stdin(archive)
            .run()
            .with_context(|| format!("docker cp into {dest}"))
    }

    /// Runs compose with `args`, waiting for the compose process itself to exit: its error
    /// output goes to a file, not a pipe, because over `ssh://` compose v1 leaves `ssh`
    /// children behind that inherit its stderr, and reading a pipe to its end would wait for
    /// them forever. The error says what compose printed.
    pub(super) fn compose(&self, what: &str, args: &[&str]) -> Result<()> {
        let Some(cli) = &self.cli else {
            bail!("{what}: no compose in a swarm stack");
        };
        let context = || format!("{what} ({} {})", cli.display_name(), args.join(" "));
        let log_path = std::env::temp_dir().join(format!(
            "mldeploy-compose-{}-{}.log",
            std::process::id(),
            COMPOSE_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut command: std::process::Command = cli.cmd(&self.sh, args).into();
        let status = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .with_context(context);
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        if !status?.success() {
            bail!("{}: {}", context(), said.trim());
        }
        Ok(())
    }
}

/// Numbers the compose runs of this process, for their log files' names.
static COMPOSE_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How the state volume can be read.
pub(super) enum Access {
    /// No balancer container: nothing was deployed.
    Absent,
    /// `docker exec` works.
    Running,
    /// The container is stopped: only `docker cp` out works.
    Stopped,
}

pub(super) struct Exec {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}
