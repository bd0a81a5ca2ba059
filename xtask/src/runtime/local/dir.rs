//! The local runtime's host state directory: plain files under `local.state_dir`, changed with
//! `rename(2)` so nginx's workers and other operations only ever see whole files and links.
//! The lock is an advisory `flock` on `lock` (released by the kernel if the holder dies), its
//! holder described in `lock.holder`.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Local;
use crate::{
    host,
    runtime::{HostDir, HostLock, Link},
    util::now_rfc3339,
};

impl HostDir for Local {
    fn read(&self, rel: &str) -> Result<Option<String>> {
        match fs::read_to_string(self.path(rel)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("read {}", self.path(rel).display())),
        }
    }

    fn write(&self, rel: &str, contents: &str) -> Result<()> {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replace {}", path.display()))
    }

    fn append(&self, rel: &str, line: &str) -> Result<()> {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // One write call per line, so concurrent appenders never interleave within a line.
        file.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("append to {}", path.display()))
    }

    fn list(&self, rel: &str) -> Result<Option<Vec<String>>> {
        let path = self.path(rel);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("list {}", path.display())),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(Some(names))
    }

    fn install_dir(&self, rel: &str, empty_files: &[String]) -> Result<()> {
        self.ensure_dirs()?;
        let dir = self.path(rel);
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.with_file_name(format!(".{name}.tmp"));
        for stale in [&dir, &tmp] {
            if stale.exists() {
                fs::remove_dir_all(stale).with_context(|| format!("remove {}", stale.display()))?;
            }
        }
        fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        for file in empty_files {
            File::create(tmp.join(file)).with_context(|| format!("create {file} in {rel}"))?;
        }
        fs::rename(&tmp, &dir).with_context(|| format!("install {}", dir.display()))
    }

    fn swap_link(&self, link: &str, target: &str) -> Result<()> {
        let path = self.path(link);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).context("create the new symlink")?;
        fs::rename(&tmp, &path).with_context(|| format!("swap {}", path.display()))
    }

    fn read_link(&self, link: &str) -> Result<Link> {
        let path = self.path(link);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Link::Missing),
            Err(err) => return Ok(Link::Broken(format!("{}: {err}", path.display()))),
        };
        if !meta.file_type().is_symlink() {
            return Ok(Link::Broken(format!("{} is not a symlink", path.display())));
        }
        let target = fs::read_link(&path).context("read the symlink")?;
        match target.into_os_string().into_string() {
            Ok(target) => Ok(Link::To(target)),
            Err(target) => Ok(Link::Broken(format!(
                "{} points at {}",
                path.display(),
                Path::new(&target).display()
            ))),
        }
    }

    fn remove_dirs(&self, rels: &[String]) -> Result<()> {
        for rel in rels {
            let path = self.path(rel);
            match fs::remove_dir_all(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(err).with_context(|| format!("remove {}", path.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every folder on the way must let nginx's workers through. As root (workers run as
    /// `nobody`) that includes the ancestors: a checkout under `/root` (mode 700) is a classic
    /// way to route everything to blue without a single error in nginx's log.
    fn balancer_cannot_read(&self, rel: &str) -> Option<String> {
        let root = host::is_root();
        self.path(rel)
            .ancestors()
            .filter(|d| root || d.starts_with(&self.state))
            .find_map(|dir| worker_cannot_enter(dir, root))
    }

    fn lock(&self, timeout: Duration, holder: &str) -> Result<HostLock> {
        fs::create_dir_all(&self.state).context("create the state directory")?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path("lock"))
            .context("open the lock file")?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if start.elapsed() < timeout => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let who = self
                        .read("lock.holder")?
                        .unwrap_or_else(|| "an unknown process".into());
                    bail!(
                        "another operation holds the deploy lock ({}) and did not finish within {} s: wait for it and run this again (`timeouts.lock_secs` sets the wait)",
                        who.trim(),
                        timeout.as_secs()
                    );
                }
                Err(fs::TryLockError::Error(err)) => {
                    return Err(err).context("take the deploy lock")
                }
            }
        }
        let who = format!(
            "{holder}, pid {}, since {}",
            std::process::id(),
            now_rfc3339()
        );
        // Only a description for others: on a full disk, `down` must still be able to run.
        if let Err(err) = self.write("lock.holder", &who) {
            crate::say!("warning: could not note the lock's holder ({err:#}); going on");
        }
        Ok(Box::new(file))
    }
}

/// Why nginx's workers may not be able to `stat()` inside `dir` (search permission for
/// "others" when we are root, since the workers then run as `nobody`), if so.
fn worker_cannot_enter(dir: &Path, root: bool) -> Option<String> {
    let mode = fs::metadata(dir).ok()?.permissions().mode();
    let bit = if root { 0o001 } else { 0o100 };
    (mode & bit == 0).then(|| {
        format!(
            "{} has mode {:o}, so nginx's workers cannot enter it",
            dir.display(),
            mode & 0o777
        )
    })
}
