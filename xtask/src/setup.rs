//! `cargo xtask setup`: make this machine able to run the chosen runtime and the checks.
//!
//! Steps:
//! 1. find which required commands are missing (`nginx`, `wrk`, `docker`, compose, …);
//! 2. with `--check`, report them and stop;
//! 3. otherwise install them from Debian's packages when this is a Debian-like machine and we
//!    are root, or say exactly what to install when we cannot.
//!
//! Other commands call [`ensure_commands`] so a fresh machine needs no manual step.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::flags;

/// A command the tool needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub command: &'static str,
    pub package: &'static str,
}

pub const NGINX: Need = Need {
    command: "nginx",
    package: "nginx",
};
pub const WRK: Need = Need {
    command: "wrk",
    package: "wrk",
};
pub const DOCKER: Need = Need {
    command: "dockerd",
    package: "docker.io",
};
pub const DOCKER_COMPOSE: Need = Need {
    command: "docker-compose",
    package: "docker-compose",
};
pub const DEBOOTSTRAP: Need = Need {
    command: "debootstrap",
    package: "debootstrap",
};

impl flags::Setup {
    pub(crate) fn run(self, sh: &Shell, _global: &flags::Global) -> Result<()> {
        if self.deploy_target {
            return deploy_target(sh);
        }
        let mut needs = vec![NGINX, WRK, DEBOOTSTRAP];
        needs.extend(docker_needs(sh));
        if self.check {
            let missing = missing(&needs);
            if missing.is_empty() {
                crate::say!("setup: everything is installed");
                return Ok(());
            }
            for need in &missing {
                crate::say!(
                    "missing: `{}` (Debian package `{}`)",
                    need.command,
                    need.package
                );
            }
            bail!(
                "{} command(s) missing: run `cargo xtask setup` to install them",
                missing.len()
            );
        }
        ensure_commands(sh, &needs)?;
        crate::engine::ensure_engine(sh)?;
        crate::say!("setup: done");
        Ok(())
    }
}

/// Whether this process runs as root (it may install packages and start daemons).
pub fn is_root(sh: &Shell) -> bool {
    cmd!(sh, "id -u")
        .quiet()
        .read()
        .is_ok_and(|uid| uid.trim() == "0")
}

/// Whether `command` is on PATH (or in the sbin folders, where Debian puts daemons).
pub fn has_command(command: &str) -> bool {
    find_command(command).is_some()
}

/// The full path of `command`, looking in PATH and then the sbin folders.
pub fn find_command(command: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(Into::into))
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

fn missing(needs: &[Need]) -> Vec<Need> {
    needs
        .iter()
        .copied()
        .filter(|need| !has_command(need.command))
        .collect()
}

/// Installs whatever of `needs` is missing, from Debian's packages, as root or through
/// password-less `sudo` (as on GitHub's runners). Fails with the exact command to run when
/// installing is not possible here.
pub fn ensure_commands(sh: &Shell, needs: &[Need]) -> Result<()> {
    let missing = missing(needs);
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|need| need.package).collect();
    let commands: Vec<&str> = missing.iter().map(|need| need.command).collect();
    let is_root = is_root(sh);
    let sudo = !is_root
        && has_command("sudo")
        && cmd!(sh, "sudo -n true")
            .quiet()
            .ignore_stderr()
            .run()
            .is_ok();
    if !(is_root || sudo) || !has_command("apt-get") {
        bail!(
            "missing {}: install {} (on Debian or Ubuntu: `sudo apt-get install -y {}`), then run this again",
            commands.join(", "),
            packages.join(", "),
            packages.join(" ")
        );
    }
    crate::say!(
        "installing {} (for {})…",
        packages.join(", "),
        commands.join(", ")
    );
    // As root: `apt-get …`; otherwise `sudo -n env DEBIAN_FRONTEND=noninteractive apt-get …`.
    let apt = |args: &[&str]| {
        if sudo {
            sh.cmd("sudo")
                .args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"])
                .args(args)
        } else {
            sh.cmd("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(args)
        }
    };
    // A stale package index makes installs fail with 404s; refresh it once first.
    apt(&["update", "-q"])
        .quiet()
        .ignore_stdout()
        .run()
        .context("refresh the package index (apt-get update)")?;
    apt(&["install", "-y", "-q"])
        .args(&packages)
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("install {}", packages.join(" ")))?;
    let still = missing_after(needs);
    if !still.is_empty() {
        bail!(
            "installed {} but `{}` is still not found",
            packages.join(" "),
            still.join("`, `")
        );
    }
    crate::say!("installed {}", packages.join(", "));
    Ok(())
}

/// What the compose runtime needs that is missing here: the engine (`dockerd`) unless one
/// already answers (a remote `DOCKER_HOST`, say), and a compose CLI unless `docker compose`
/// (v2) or `docker-compose` (v1) works.
pub fn docker_needs(sh: &Shell) -> Vec<Need> {
    let mut needs = Vec::new();
    if !crate::engine::engine_answers(sh) {
        needs.push(DOCKER);
    }
    let compose_v2 = has_command("docker")
        && cmd!(sh, "docker compose version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok();
    if !compose_v2 {
        needs.push(DOCKER_COMPOSE);
    }
    needs
}

fn missing_after(needs: &[Need]) -> Vec<&'static str> {
    missing(needs)
        .into_iter()
        .map(|need| need.command)
        .collect()
}

/// The remote deploy host, read from the environment (CI secrets).
#[derive(Debug, PartialEq, Eq)]
struct DeployTarget {
    host: String,
    user: String,
}

impl DeployTarget {
    /// `None` when no host is configured; an error when the configuration is half there.
    fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<DeployTarget>> {
        let value = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(host) = value("DEPLOY_SSH_HOST") else {
            return Ok(None);
        };
        let Some(user) = value("DEPLOY_SSH_USER") else {
            bail!("DEPLOY_SSH_HOST is set but DEPLOY_SSH_USER is empty: set the user the deploy connects as")
        };
        if value("DEPLOY_SSH_KEY").is_none() {
            bail!("DEPLOY_SSH_HOST is set but DEPLOY_SSH_KEY is empty: set the private key of the deploy user")
        }
        if value("DEPLOY_SSH_KNOWN_HOSTS").is_none() {
            bail!(
                "DEPLOY_SSH_HOST is set but DEPLOY_SSH_KNOWN_HOSTS is empty: set it to the host's key line \
                 (the output of `ssh-keyscan {host}` checked against the host), so the connection is verified"
            )
        }
        Ok(Some(DeployTarget { host, user }))
    }

    fn docker_host(&self) -> String {
        format!("ssh://{}@{}", self.user, self.host)
    }
}

/// Points the following CI steps at the configured deploy host, or at this machine's engine.
///
/// Writes the key and known hosts under `~/.ssh` (mode 0600, never printed) and exports
/// `DOCKER_HOST` through `$GITHUB_ENV`.
fn deploy_target(sh: &Shell) -> Result<()> {
    let target = DeployTarget::from_env(|name| std::env::var(name).ok())?;
    let Some(target) = target else {
        crate::say!(
            "no deploy target configured (DEPLOY_SSH_HOST is empty): deploying on this machine"
        );
        return crate::engine::ensure_engine(sh);
    };
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let home = std::env::var("HOME").context("HOME is not set")?;
    let ssh_dir = std::path::Path::new(&home).join(".ssh");
    std::fs::create_dir_all(&ssh_dir).context("create ~/.ssh")?;
    let write_private = |name: &str, contents: &str, append: bool| -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .mode(0o600)
            .open(ssh_dir.join(name))
            .with_context(|| format!("open ~/.ssh/{name}"))?;
        let mut contents = contents.trim().to_owned();
        contents.push('\n');
        file.write_all(contents.as_bytes())
            .with_context(|| format!("write ~/.ssh/{name}"))
    };
    write_private(
        "mldeploy_key",
        &std::env::var("DEPLOY_SSH_KEY").unwrap_or_default(),
        false,
    )?;
    write_private(
        "known_hosts",
        &std::env::var("DEPLOY_SSH_KNOWN_HOSTS").unwrap_or_default(),
        true,
    )?;
    let host_block = format!(
        "Host {host}\n  User {user}\n  IdentityFile ~/.ssh/mldeploy_key\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n",
        host = target.host,
        user = target.user
    );
    write_private("config", &host_block, true)?;
    let docker_host = target.docker_host();
    match std::env::var("GITHUB_ENV") {
        Ok(github_env) if !github_env.is_empty() => {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&github_env)
                .context("open $GITHUB_ENV")?;
            writeln!(file, "DOCKER_HOST={docker_host}").context("write $GITHUB_ENV")?;
            crate::say!(
                "deploy target: {docker_host} (exported as DOCKER_HOST for the next steps)"
            );
        }
        _ => crate::say!(
            "deploy target: run `export DOCKER_HOST={docker_host}` before the next commands"
        ),
    }
    let _host = sh.push_env("DOCKER_HOST", &docker_host);
    let format = "{{.ServerVersion}}";
    cmd!(sh, "docker info --format {format}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("the Docker engine at {docker_host} does not answer: check the host, user, key and that the user may use Docker"))?;
    crate::say!("deploy target answers: {docker_host}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn no_host_means_no_deploy_target() {
        assert_eq!(DeployTarget::from_env(env(&[])).unwrap(), None);
        assert_eq!(
            DeployTarget::from_env(env(&[("DEPLOY_SSH_HOST", "  ")])).unwrap(),
            None
        );
    }

    #[test]
    fn a_complete_target_becomes_an_ssh_docker_host() {
        let target = DeployTarget::from_env(env(&[
            ("DEPLOY_SSH_HOST", "deploy.example.org"),
            ("DEPLOY_SSH_USER", "ops"),
            ("DEPLOY_SSH_KEY", "KEY"),
            (
                "DEPLOY_SSH_KNOWN_HOSTS",
                "deploy.example.org ssh-ed25519 AAAA",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(target.docker_host(), "ssh://ops@deploy.example.org");
    }

    #[test]
    fn a_half_configured_target_says_what_is_missing() {
        let err =
            DeployTarget::from_env(env(&[("DEPLOY_SSH_HOST", "h"), ("DEPLOY_SSH_USER", "u")]))
                .unwrap_err();
        assert!(err.to_string().contains("DEPLOY_SSH_KEY"), "{err}");
        let err = DeployTarget::from_env(env(&[
            ("DEPLOY_SSH_HOST", "h"),
            ("DEPLOY_SSH_USER", "u"),
            ("DEPLOY_SSH_KEY", "k"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("DEPLOY_SSH_KNOWN_HOSTS"), "{err}");
    }
}
