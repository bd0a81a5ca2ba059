//! This machine's tools: finding commands, knowing whether we are root, and installing what is
//! missing from Debian's packages, so a fresh machine needs no manual step.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// A command the tool needs, and the Debian package that provides it. `command` is a command
/// on `PATH`, or an absolute path the package installs (for a library).
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
/// What the deploy-host tests need: a network namespace (`ip`), an SSH server in it and the
/// client here, and paramiko, without which `docker-compose` v1 refuses `ssh://` hosts.
pub const DEPLOY_HOST_TESTS: [Need; 4] = [
    Need {
        command: "ip",
        package: "iproute2",
    },
    Need {
        command: "sshd",
        package: "openssh-server",
    },
    Need {
        command: "ssh",
        package: "openssh-client",
    },
    Need {
        command: "/usr/lib/python3/dist-packages/paramiko/__init__.py",
        package: "python3-paramiko",
    },
];

/// Whether this process runs as root (it may install packages and start daemons, and nginx's
/// workers then run as an unprivileged user).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
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

pub fn missing(needs: &[Need]) -> Vec<Need> {
    needs
        .iter()
        .copied()
        .filter(|need| {
            if need.command.starts_with('/') {
                !std::path::Path::new(need.command).exists()
            } else {
                !has_command(need.command)
            }
        })
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
    let is_root = is_root();
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

fn missing_after(needs: &[Need]) -> Vec<&'static str> {
    missing(needs)
        .into_iter()
        .map(|need| need.command)
        .collect()
}
