//! The Docker engine and the compose tool: find them, start the engine when it is installed but
//! not running.
//!
//! Steps of [`ensure_engine`]:
//! 1. ask the engine (`docker info`); if it answers, done;
//! 2. if `DOCKER_HOST` names a remote engine, or `dockerd` is not installed, or we are not root,
//!    stop with a message saying how to get an engine;
//! 3. otherwise start `dockerd` detached (its own process group, so it outlives this command),
//!    logging to `/var/log/mldeploy-dockerd.log` (or `.deploy/dockerd.log`);
//! 4. poll `docker info` until it answers or the deadline passes (the error shows the log's tail).
//!
//! [`docker_needs`] says what of the engine and compose is missing here.
//! [`ComposeCli::detect`] finds `docker compose` (v2 plugin) or `docker-compose` (v1) and builds
//! their command lines.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd, Shell};

use crate::{host, util};

/// How long a freshly started `dockerd` may take to answer.
const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes sure a Docker engine answers, starting one when possible.
pub fn ensure_engine(sh: &Shell) -> Result<()> {
    if engine_answers(sh) {
        return Ok(());
    }
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if !host.is_empty() && !host.starts_with("unix://") {
            bail!(
                "the Docker engine at DOCKER_HOST={host} does not answer: check that it runs and that \
                 `docker info` works from this machine"
            );
        }
    }
    let Some(dockerd) = host::find_command("dockerd") else {
        bail!(
            "no Docker engine answers and `dockerd` is not installed: run `cargo xtask setup` \
             (installs docker.io), or use `--runtime local`"
        );
    };
    if !host::has_command("docker") {
        bail!("the `docker` command is missing: run `cargo xtask setup` (installs docker.io)");
    }
    if !host::is_root() {
        bail!(
            "no Docker engine answers: start it (`sudo systemctl start docker` or `sudo dockerd &`), \
             or run this as root so it can start `dockerd` itself"
        );
    }
    let log = engine_log_path();
    crate::say!(
        "starting the Docker engine ({}, log: {})…",
        dockerd.display(),
        log.display()
    );
    start_dockerd(&dockerd, &log)?;
    let started = std::time::Instant::now();
    util::poll(
        "wait for the Docker engine to answer",
        ENGINE_START_TIMEOUT,
        || {
            if engine_answers(sh) {
                Ok(())
            } else {
                bail!("`docker info` fails")
            }
        },
    )
    .with_context(|| {
        format!(
            "dockerd did not come up; the end of {}:\n{}",
            log.display(),
            tail(&log, 15)
        )
    })?;
    crate::say!(
        "started the Docker engine in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether a Docker engine answers `docker info`.
pub fn engine_answers(sh: &Shell) -> bool {
    host::has_command("docker") && {
        let format = "{{.ServerVersion}}";
        cmd!(sh, "docker info --format {format}")
    }
    .quiet()
    .ignore_stdout()
    .ignore_stderr()
    .run()
    .is_ok()
}

fn engine_log_path() -> PathBuf {
    let system = Path::new("/var/log");
    if fs::metadata(system)
        .map(|meta| !meta.permissions().readonly())
        .unwrap_or(false)
    {
        return system.join("mldeploy-dockerd.log");
    }
    util::project_root().join(".deploy/dockerd.log")
}

/// Starts `dockerd` in its own process group with its output in `log`, and does not wait for it:
/// the engine must outlive this command.
fn start_dockerd(dockerd: &Path, log: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;

    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone().context("duplicate the log handle")?;
    Command::new(dockerd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("start dockerd")?;
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    util::last_lines(&text, lines)
}

/// What the compose runtime needs that is missing here: the engine (`dockerd`) unless one
/// already answers (a remote `DOCKER_HOST`, say), and a compose CLI unless `docker compose`
/// (v2) or `docker-compose` (v1) works.
pub fn docker_needs(sh: &Shell) -> Vec<host::Need> {
    let mut needs = Vec::new();
    if !engine_answers(sh) {
        needs.push(host::DOCKER);
    }
    let compose_v2 = host::has_command("docker")
        && cmd!(sh, "docker compose version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok();
    if !compose_v2 {
        needs.push(host::DOCKER_COMPOSE);
    }
    needs
}

/// Which compose tool drives the containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeKind {
    /// The `docker compose` plugin (what GitHub's runners have).
    V2,
    /// The standalone `docker-compose` (what Debian ships as `docker-compose`).
    V1,
}

/// The compose tool, with the project and files every invocation needs.
#[derive(Debug, Clone)]
pub struct ComposeCli {
    pub kind: ComposeKind,
    pub project: String,
    pub files: Vec<PathBuf>,
}

impl ComposeCli {
    /// Finds `docker compose` (preferred) or `docker-compose`.
    pub fn detect(sh: &Shell, project: &str, files: Vec<PathBuf>) -> Result<ComposeCli> {
        let kind = detect_kind(sh)?;
        Ok(ComposeCli {
            kind,
            project: project.to_owned(),
            files,
        })
    }

    /// `docker compose -p <project> -f <file>… <args>` (or the v1 equivalent).
    pub fn cmd<'a>(&self, sh: &'a Shell, args: &[&str]) -> Cmd<'a> {
        let program: &[&str] = match self.kind {
            ComposeKind::V2 => &["docker", "compose"],
            ComposeKind::V1 => &["docker-compose"],
        };
        let mut cmd = sh.cmd(program[0]).args(&program[1..]);
        cmd = cmd.arg("--project-name").arg(&self.project);
        for file in &self.files {
            cmd = cmd.arg("--file").arg(file);
        }
        cmd.args(args)
    }

    /// The name a person would type, for messages.
    pub fn display_name(&self) -> &'static str {
        match self.kind {
            ComposeKind::V2 => "docker compose",
            ComposeKind::V1 => "docker-compose",
        }
    }
}

/// `docker compose version` (v2), else an installed `docker-compose` (v1).
pub fn detect_kind(sh: &Shell) -> Result<ComposeKind> {
    let quiet_ok = |cmd: Cmd<'_>| cmd.quiet().ignore_stdout().ignore_stderr().run().is_ok();
    if quiet_ok(cmd!(sh, "docker compose version")) {
        return Ok(ComposeKind::V2);
    }
    // `docker-compose version` takes half a second (Python starting); being installed is enough.
    if host::has_command("docker-compose") {
        return Ok(ComposeKind::V1);
    }
    bail!(
        "neither `docker compose` (v2) nor `docker-compose` (v1) is installed: run `cargo xtask setup` \
         (installs docker-compose) or install the compose plugin"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_command_names_project_and_files() {
        let sh = Shell::new().unwrap();
        let cli = ComposeCli {
            kind: ComposeKind::V1,
            project: "demo".into(),
            files: vec!["a.yml".into(), "b.yml".into()],
        };
        let text = cli.cmd(&sh, &["up", "-d"]).to_string();
        assert_eq!(
            text,
            "docker-compose --project-name demo --file a.yml --file b.yml up -d"
        );
        let v2 = ComposeCli {
            kind: ComposeKind::V2,
            ..cli
        };
        assert!(v2
            .cmd(&sh, &["ps"])
            .to_string()
            .starts_with("docker compose --project-name demo"));
    }
}
