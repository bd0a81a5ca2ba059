//! `cargo xtask setup`: make this machine able to run the chosen runtime and the checks.
//!
//! Steps:
//! 1. find which required commands are missing (`nginx`, `wrk`, `docker`, compose, …);
//! 2. with `--check`, report them and stop;
//! 3. otherwise install them from Debian's packages when this is a Debian-like machine and we
//!    are root, or say exactly what to install when we cannot.
//!
//! Other commands call [`crate::host::ensure_commands`] so a fresh machine needs no manual step.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    docker::{self, docker_needs},
    flags,
    host::{ensure_commands, missing, DEBOOTSTRAP, NGINX, WRK},
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
        docker::ensure_engine(sh)?;
        crate::say!("setup: done");
        Ok(())
    }
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
        return crate::docker::ensure_engine(sh);
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
