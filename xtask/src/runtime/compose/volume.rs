//! The compose runtime's host state directory: the named volume mounted at [`STATE_DIR`] in the
//! balancer container, read and changed only through the Docker API, so a remote engine
//! (`DOCKER_HOST=ssh://…`) works unchanged.
//!
//! - atomic writes: `tee <file>.tmp-<pid>` then `mv -f` (rename(2)); appends: `tee -a`;
//! - a folder: a tar stream made here, copied in with `docker cp` (root-owned, readable by
//!   nginx's workers), after removing a leftover of the same name;
//! - a link: `ln -sfn <target> <link>.tmp` then `mv -Tf` (rename(2));
//! - the lock: `mkdir lock.d` (atomic), holding an `owner` file, removed when the guard drops;
//! - with the balancer container stopped, reads copy the folder out (`docker cp` works on a
//!   stopped container) and answer from the copy ([`TarTree`]).

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use xshell::cmd;

use serde_json::json;

use super::{
    agent,
    docker::Access,
    state_path,
    tar::{TarEntry, TarKind},
    Compose, STATE_DIR,
};
use crate::{
    runtime::{HostDir, HostLock, Link},
    util::now_secs,
};

impl Compose {
    /// A copy of the top-level folder or file `rel` lies in, for reading a stopped container.
    fn copy_of(&self, rel: &str) -> Result<TarTree> {
        let top = rel.split('/').next().unwrap_or(rel);
        Ok(TarTree(self.copy_out(&state_path(top)?)?))
    }
}

impl HostDir for Compose {
    fn read(&self, rel: &str) -> Result<Option<String>> {
        let path = state_path(rel)?;
        if let Some(answer) = self.via_agent(json!({"op": "read", "rel": rel}))? {
            return Ok(answer["contents"].as_str().map(str::to_owned));
        }
        match self.access()? {
            Access::Absent => return Ok(None),
            Access::Stopped => return self.copy_of(rel)?.read(rel),
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

    fn write(&self, rel: &str, contents: &str) -> Result<()> {
        let path = state_path(rel)?;
        let request = json!({"op": "write", "rel": rel, "contents": contents});
        if self.via_agent(request)?.is_some() {
            return Ok(());
        }
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

    fn append(&self, rel: &str, line: &str) -> Result<()> {
        let path = state_path(rel)?;
        if self
            .via_agent(json!({"op": "append", "rel": rel, "line": line}))?
            .is_some()
        {
            return Ok(());
        }
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

    fn list(&self, rel: &str) -> Result<Option<Vec<String>>> {
        let path = state_path(rel)?;
        if let Some(answer) = self.via_agent(json!({"op": "list", "rel": rel}))? {
            return Ok(agent::names_of(&answer));
        }
        match self.access()? {
            Access::Absent => return Ok(None),
            Access::Stopped => return self.copy_of(rel)?.list(rel),
            Access::Running => {}
        }
        let exec = self.exec(&["ls", "-1", &format!("{path}/")], None)?;
        if exec.ok {
            return Ok(Some(exec.stdout.lines().map(str::to_owned).collect()));
        }
        if exec.stderr.contains("No such file") {
            return Ok(None);
        }
        bail!("list {path}: {}", exec.stderr)
    }

    fn install_dir(&self, rel: &str, empty_files: &[String]) -> Result<()> {
        let path = state_path(rel)?;
        let request = json!({"op": "install_dir", "rel": rel, "files": empty_files});
        if self.via_agent(request)?.is_some() {
            return Ok(());
        }
        self.state_container()?;
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mut entries = vec![(name.to_owned(), TarKind::Dir, "")];
        entries.extend(
            empty_files
                .iter()
                .map(|file| (format!("{name}/{file}"), TarKind::File, "")),
        );
        self.exec_ok("remove a leftover folder", &["rm", "-rf", &path], None)?;
        let dest = if parent.is_empty() {
            STATE_DIR.to_owned()
        } else {
            state_path(parent)?
        };
        self.copy_in(&entries, &dest)
    }

    fn swap_link(&self, link: &str, target: &str) -> Result<()> {
        let path = state_path(link)?;
        let request = json!({"op": "swap_link", "link": link, "target": target});
        if self.via_agent(request)?.is_some() {
            return Ok(());
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or((STATE_DIR, &path));
        let tmp = format!("{name}.tmp");
        let id = self.state_container()?;
        for args in [
            ["ln", "-sfn", target, tmp.as_str()],
            ["mv", "-Tf", tmp.as_str(), name],
        ] {
            let output = cmd!(self.sh, "docker exec --workdir {dir} {id} {args...}")
                .quiet()
                .ignore_status()
                .output()?;
            if !output.status.success() {
                bail!(
                    "`{}` in {dir}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        Ok(())
    }

    fn read_link(&self, link: &str) -> Result<Link> {
        let path = state_path(link)?;
        if let Some(answer) = self.via_agent(json!({"op": "read_link", "link": link}))? {
            return Ok(agent::link_of(&answer));
        }
        match self.access()? {
            Access::Absent => return Ok(Link::Missing),
            Access::Stopped => return self.copy_of(link)?.read_link(link),
            Access::Running => {}
        }
        let target = self.exec(&["readlink", &path], None)?;
        if target.ok {
            return Ok(Link::To(target.stdout.trim().to_owned()));
        }
        let exists = self.exec(&["ls", "-ld", &path], None)?;
        if !exists.ok {
            return Ok(Link::Missing);
        }
        Ok(Link::Broken(format!(
            "{path} is not a symlink: {}",
            exists.stdout.trim()
        )))
    }

    fn remove_dirs(&self, rels: &[String]) -> Result<()> {
        let paths = rels
            .iter()
            .map(|rel| state_path(rel))
            .collect::<Result<Vec<_>>>()?;
        if self
            .via_agent(json!({"op": "remove_dirs", "rels": rels}))?
            .is_some()
        {
            return Ok(());
        }
        let mut args = vec!["rm", "-rf"];
        args.extend(paths.iter().map(String::as_str));
        self.exec_ok("remove folders", &args, None)?;
        Ok(())
    }

    fn last_line(&self, rel: &str) -> Result<Option<String>> {
        state_path(rel)?;
        if let Some(answer) = self.via_agent(json!({"op": "last_line", "rel": rel}))? {
            return Ok(answer["line"].as_str().map(str::to_owned));
        }
        Ok(self
            .read(rel)?
            .as_deref()
            .and_then(crate::runtime::last_line_of))
    }

    fn on_interrupt(&self, log: &str, found: &str, moved: Option<&str>) -> Result<()> {
        state_path(log)?;
        let request = json!({"op": "on_abort", "log": log, "line": found, "kept": moved});
        self.via_agent(request)?;
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
        let agent = if agent::disabled() {
            Err(anyhow::anyhow!("{} is set", agent::DISABLE))
        } else {
            self.lock_with_agent(timeout, holder)
        };
        match agent {
            Ok(guard) => return Ok(guard),
            Err(err) if err.downcast_ref::<agent::Refused>().is_some() => return Err(err),
            Err(err) => eprintln!(
                "note: the host's agent cannot run ({err:#}); each step is a `docker exec` of its own"
            ),
        }
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
                let owner = self.read("lock.d/owner").ok().flatten().unwrap_or_default();
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
    /// Takes the lock in a new session with the host's agent, which then serves every file
    /// operation until the returned guard releases the lock. A busy lock is a
    /// [`agent::Refused`] whose message says who holds it.
    fn lock_with_agent(&self, timeout: Duration, holder: &str) -> Result<HostLock> {
        let mut session = self.open_agent()?;
        let owner = lock_owner(holder, now_secs());
        let answer = match session.call(&agent::lock_request(&owner, timeout)) {
            Ok(answer) => answer,
            Err(err) => {
                session.close();
                let Some(refused) = err.downcast_ref::<agent::Refused>() else {
                    return Err(err);
                };
                if refused.kind != "busy" {
                    return Err(err.context("take the deploy lock through the host's agent"));
                }
                let message = lock_busy_message(
                    &refused.owner,
                    now_secs(),
                    &self.nginx()?,
                    &format!("{STATE_DIR}/lock.d"),
                );
                return Err(err.context(message));
            }
        };
        if let Some(stale) = answer["broke_stale"].as_str() {
            let holder = stale.lines().next().unwrap_or("an unknown operation");
            eprintln!(
                "warning: released a deploy lock left by `{holder}`, whose process on the host is gone"
            );
        }
        *self.agent.borrow_mut() = Some(session);
        Ok(Box::new(agent::AgentLock {
            agent: self.agent.clone(),
        }))
    }
}

/// A read-only view of a copy out of the state volume: entry paths are relative to the state
/// directory (a copy of `routes` holds `routes/current`, `routes/gen-7/3`, …).
pub struct TarTree(pub Vec<TarEntry>);

impl TarTree {
    fn entry(&self, rel: &str) -> Option<&TarEntry> {
        self.0.iter().find(|e| e.path == rel)
    }
}

impl HostDir for TarTree {
    fn read(&self, rel: &str) -> Result<Option<String>> {
        Ok(self
            .entry(rel)
            .filter(|e| e.kind == TarKind::File)
            .map(|e| String::from_utf8_lossy(&e.data).into_owned()))
    }

    fn list(&self, rel: &str) -> Result<Option<Vec<String>>> {
        if !self.entry(rel).is_some_and(|e| e.kind == TarKind::Dir) {
            return Ok(None);
        }
        let prefix = format!("{rel}/");
        Ok(Some(
            self.0
                .iter()
                .filter_map(|e| e.path.strip_prefix(&prefix))
                .filter(|name| !name.contains('/'))
                .map(str::to_owned)
                .collect(),
        ))
    }

    fn read_link(&self, link: &str) -> Result<Link> {
        Ok(match self.entry(link) {
            None => Link::Missing,
            Some(e) if e.kind == TarKind::Symlink => Link::To(e.link.clone()),
            Some(_) => Link::Broken(format!("{link} is not a symlink")),
        })
    }

    fn write(&self, rel: &str, _: &str) -> Result<()> {
        bail!("{rel}: the balancer container is stopped: run `cargo xtask up`")
    }

    fn append(&self, rel: &str, _: &str) -> Result<()> {
        self.write(rel, "")
    }

    fn install_dir(&self, rel: &str, _: &[String]) -> Result<()> {
        self.write(rel, "")
    }

    fn swap_link(&self, link: &str, _: &str) -> Result<()> {
        self.write(link, "")
    }

    fn remove_dirs(&self, _: &[String]) -> Result<()> {
        self.write("routes", "")
    }

    fn lock(&self, _: Duration, _: &str) -> Result<HostLock> {
        bail!("a copy of the state volume cannot be locked")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::RouteReading,
        runtime::{
            compose::tar::{parse_tar, tests::tar},
            routes::Routes,
        },
    };

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
        let copy = TarTree(parse_tar(&bytes).unwrap());
        let routes = Routes::new(&copy);
        assert_eq!(
            routes.reading().unwrap(),
            RouteReading::Active {
                generation: 7,
                green_buckets: vec![3, 12]
            }
        );
        let mut generations = routes.generations().unwrap();
        generations.sort_unstable();
        assert_eq!(generations, vec![6, 7]);
    }

    #[test]
    fn broken_routes_are_reported_not_hidden() {
        let reading = |entries: &[(&str, u8, &str, &[u8])]| {
            Routes::new(&TarTree(parse_tar(&tar(entries)).unwrap()))
                .reading()
                .unwrap()
        };
        assert_eq!(
            reading(&[("routes/", b'5', "", b"")]),
            RouteReading::Missing
        );
        let dangling = reading(&[("routes/current", b'2', "gen-9", b"")]);
        assert!(matches!(dangling, RouteReading::Unreadable(why) if why.contains("gen-9")));
        let file = reading(&[("routes/current", b'0', "", b"")]);
        assert!(matches!(file, RouteReading::Unreadable(_)));
        assert!(parse_tar(&tar(&[("a", b'0', "", b"abc")])[..514]).is_err());
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
