//! The host's SSH side: its keys, `known_hosts` and sshd (started in the namespace), and the
//! marked block of root's `~/.ssh/config` that makes every SSH client here use them.

use std::{
    fs,
    io::Write,
    net::{SocketAddr, TcpStream},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::PathBuf,
    time::Duration,
};

use super::{bounded, ok, poll_until, tail, DeployHost, Names, COMMAND_TIMEOUT, START_TIMEOUT};

impl DeployHost {
    /// The host key, the client key (authorized), `known_hosts` and sshd's config, in `D`.
    pub(super) fn make_ssh_files(&self) {
        let n = &self.names;
        for (file, comment) in [("ssh_host_ed25519_key", "host"), ("id_ed25519", "client")] {
            let mut keygen = bounded("ssh-keygen", COMMAND_TIMEOUT);
            keygen
                .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                .arg(format!("{}-{comment}", n.name))
                .arg("-f")
                .arg(n.path(file));
            ok(&mut keygen, "ssh-keygen");
        }
        fs::copy(n.path("id_ed25519.pub"), n.path("authorized_keys")).unwrap();
        let host_key = fs::read_to_string(n.path("ssh_host_ed25519_key.pub")).unwrap();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        fs::write(
            n.path("known_hosts"),
            format!("{} {}\n", self.addr, host_key.join(" ")),
        )
        .unwrap();
        let d = n.dir.display();
        fs::write(
            n.path("sshd_config"),
            format!(
                "# The sshd of the test deploy host {name} (the testhost crate).\n\
                 ListenAddress {addr}:22\n\
                 HostKey {d}/ssh_host_ed25519_key\n\
                 PidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 AllowUsers root\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 # D lies under the world-writable temp dir.\n\
                 StrictModes no\n\
                 X11Forwarding no\n\
                 PrintMotd no\n\
                 # The namespace shares this machine's files: the host's engine, not /var/run/docker.sock.\n\
                 SetEnv DOCKER_HOST=unix://{d}/docker.sock\n",
                name = n.name,
                addr = self.addr,
            ),
        )
        .unwrap();
    }

    pub(super) fn start_sshd(&mut self) {
        // OpenSSH's compiled-in privilege separation directory (the package's init script
        // makes it; nothing here runs that).
        let _ = fs::create_dir_all("/run/sshd");
        let config = self.names.path("sshd_config");
        let mut check = bounded("/usr/sbin/sshd", COMMAND_TIMEOUT);
        check.arg("-t").arg("-f").arg(&config);
        ok(&mut check, "sshd -t (the config)");
        self.sshd = Some(self.engine.spawn_in_namespace(
            "/usr/sbin/sshd",
            &[
                "-D".into(),
                "-e".into(),
                "-f".into(),
                config.display().to_string(),
            ],
            "sshd.log",
        ));
        let address = SocketAddr::from((self.addr, 22));
        let sshd = &mut self.sshd;
        let log = self.names.path("sshd.log");
        let listening = poll_until(START_TIMEOUT, || {
            if let Some(status) = sshd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "the deploy host's sshd exited ({status}); its log:\n{}",
                    tail(&log, 20)
                );
            }
            TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
        });
        assert!(
            listening,
            "the deploy host's sshd does not listen on {address}; its log:\n{}",
            tail(&log, 20)
        );
    }

    /// The `~/.ssh/config` block, prepended (OpenSSH takes the first value it finds for most
    /// options) and closed by `Host *`.
    fn ssh_config_block(&self) -> String {
        let n = &self.names;
        let d = n.dir.display();
        format!(
            "{begin} the test deploy host of process {pid}, removed by the testhost crate\n\
             Host {addr}\n\
             \x20   User root\n\
             \x20   IdentityFile {d}/id_ed25519\n\
             \x20   IdentitiesOnly yes\n\
             \x20   UserKnownHostsFile {d}/known_hosts\n\
             \x20   StrictHostKeyChecking yes\n\
             \x20   BatchMode yes\n\
             \x20   ControlMaster no\n\
             \x20   ControlPath none\n\
             Host *\n\
             {end}\n",
            begin = n.marker_begin(),
            pid = n.pid,
            addr = self.addr,
            end = n.marker_end(),
        )
    }

    pub(super) fn add_ssh_config(&self) {
        let block = self.ssh_config_block();
        edit_ssh_config(|text| {
            let text = remove_block(text, &self.names);
            Some(format!("{block}{text}"))
        });
    }

    /// `ssh root@<addr>` works without a prompt and lands on the host's engine.
    pub(super) fn check_over_ssh(&self) {
        let mut ssh = bounded("ssh", COMMAND_TIMEOUT);
        ssh.arg(format!("root@{}", self.addr))
            .arg("echo $DOCKER_HOST");
        let out = ok(&mut ssh, "ssh root@<host> (non-interactive)");
        let expected = self.names.engine_socket();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected,
            "an SSH session's DOCKER_HOST"
        );
        let info = self.docker(&["info", "--format", "{{.DockerRootDir}}"]);
        assert_eq!(
            info.trim(),
            self.names.path("data").display().to_string(),
            "the engine `docker -H {}` reaches",
            self.docker_host()
        );
    }
}

/// The home OpenSSH reads `~/.ssh` from: the passwd entry's (not `$HOME`), `/root` for root.
fn ssh_home() -> PathBuf {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "0".into());
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 5 && fields[2] == uid)
        .map(|fields| PathBuf::from(fields[5]))
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn ssh_config_path() -> PathBuf {
    ssh_home().join(".ssh").join("config")
}

pub(super) fn read_ssh_config() -> String {
    fs::read_to_string(ssh_config_path()).unwrap_or_default()
}

/// `text` without the host's block.
pub(super) fn remove_block(text: &str, names: &Names) -> String {
    let (begin, end) = (names.marker_begin(), names.marker_end());
    let mut out = String::new();
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if !inside && bare.starts_with(&begin) {
            inside = true;
        } else if inside && bare == end {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    out
}

/// Rewrites `~/.ssh/config` with `edit` (None: leave it) under a lock shared by all test
/// processes (on `~/.ssh`), atomically (a new file renamed over it, keeping its mode; a symlinked config is
/// written through to its target). An empty result removes the file.
pub(super) fn edit_ssh_config(edit: impl FnOnce(&str) -> Option<String>) {
    let link = ssh_config_path();
    let ssh_dir = link.parent().unwrap().to_path_buf();
    if !ssh_dir.exists() {
        fs::create_dir_all(&ssh_dir).unwrap();
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    // flock(2) on the ~/.ssh directory itself: no lock file to leave behind.
    let lock = fs::File::open(&ssh_dir).expect("open ~/.ssh");
    lock.lock().expect("lock ~/.ssh");
    let path = fs::canonicalize(&link).unwrap_or(link);
    let old = fs::read_to_string(&path).unwrap_or_default();
    let mode = fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    if let Some(new) = edit(&old) {
        if new != old {
            if new.trim().is_empty() {
                let _ = fs::remove_file(&path);
            } else {
                let temp = path.with_file_name(format!(".config.mldeploy-{}", std::process::id()));
                let mut file = fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&temp)
                    .expect("write ~/.ssh/config");
                file.write_all(new.as_bytes()).unwrap();
                file.sync_all().unwrap();
                fs::set_permissions(&temp, fs::Permissions::from_mode(mode)).unwrap();
                fs::rename(&temp, &path).expect("replace ~/.ssh/config");
            }
        }
    }
    let _ = lock.unlock();
}
