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

pub const NGINX: Need = Need { command: "nginx", package: "nginx-light" };
pub const WRK: Need = Need { command: "wrk", package: "wrk" };
pub const DOCKER: Need = Need { command: "dockerd", package: "docker.io" };
pub const DOCKER_COMPOSE: Need = Need { command: "docker-compose", package: "docker-compose" };
pub const DEBOOTSTRAP: Need = Need { command: "debootstrap", package: "debootstrap" };

impl flags::Setup {
    pub(crate) fn run(self, sh: &Shell, _global: &flags::Global) -> Result<()> {
        let needs = [NGINX, WRK, DOCKER, DOCKER_COMPOSE, DEBOOTSTRAP];
        if self.check {
            let missing = missing(&needs);
            if missing.is_empty() {
                println!("setup: everything is installed");
                return Ok(());
            }
            for need in &missing {
                println!("missing: `{}` (Debian package `{}`)", need.command, need.package);
            }
            bail!("{} command(s) missing: run `cargo xtask setup` to install them", missing.len());
        }
        ensure_commands(sh, &needs)?;
        crate::engine::ensure_engine(sh)?;
        println!("setup: done");
        Ok(())
    }
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
    needs.iter().copied().filter(|need| !has_command(need.command)).collect()
}

/// Installs whatever of `needs` is missing, from Debian's packages. Fails with the exact command
/// to run when installing is not possible here (not root, or no `apt-get`).
pub fn ensure_commands(sh: &Shell, needs: &[Need]) -> Result<()> {
    let missing = missing(needs);
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|need| need.package).collect();
    let commands: Vec<&str> = missing.iter().map(|need| need.command).collect();
    let is_root = cmd!(sh, "id -u").quiet().read().map(|uid| uid.trim() == "0").unwrap_or(false);
    if !is_root || !has_command("apt-get") {
        bail!(
            "missing {}: install {} (on Debian or Ubuntu: `sudo apt-get install -y {}`), then run this again",
            commands.join(", "),
            packages.join(", "),
            packages.join(" ")
        );
    }
    println!("installing {} (for {})…", packages.join(", "), commands.join(", "));
    let _frontend = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    // A stale package index makes installs fail with 404s; refresh it once first.
    cmd!(sh, "apt-get update -q").quiet().ignore_stdout().run().context("refresh the package index (apt-get update)")?;
    let install = &packages;
    cmd!(sh, "apt-get install -y -q --no-install-recommends {install...}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("install {}", packages.join(" ")))?;
    let still = missing_after(needs);
    if !still.is_empty() {
        bail!("installed {} but `{}` is still not found", packages.join(" "), still.join("`, `"));
    }
    println!("installed {}", packages.join(", "));
    Ok(())
}

fn missing_after(needs: &[Need]) -> Vec<&'static str> {
    missing(needs).into_iter().map(|need| need.command).collect()
}
