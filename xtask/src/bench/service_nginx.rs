//! The private nginx of `bench service`: two proxy servers that differ only in their upstream,
//! one to the service, one to a fixed answer nginx serves itself (the ceiling), rendered from
//! `service-nginx.conf`.

use std::{
    fs,
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::{host, util::poll};

/// The private nginx's config, with `@NAME@` placeholders ([`render_nginx`]).
const NGINX_TEMPLATE: &str = include_str!("service-nginx.conf");

/// The ports of the private nginx's servers, and the service's.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NginxPorts {
    pub service: u16,
    pub proxy_service: u16,
    pub proxy_fixed: u16,
    pub fixed: u16,
}

/// The benchmark's config: [`NGINX_TEMPLATE`] filled in. `body` becomes the fixed answer, so it
/// may not hold what nginx would read as a variable (`$`) or the end of the string.
fn render_nginx(prefix: &Path, ports: &NginxPorts, body: &str) -> Result<String> {
    ensure!(
        !body.is_empty() && !body.contains(['$', '\'', '\\', '\n']),
        "the fixed answer {body:?} cannot be put in an nginx string as it is"
    );
    let local = |port: u16| format!("127.0.0.1:{port}");
    Ok(NGINX_TEMPLATE
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@SERVICE@", &local(ports.service))
        .replace("@PROXY_SERVICE@", &local(ports.proxy_service))
        .replace("@PROXY_FIXED@", &local(ports.proxy_fixed))
        .replace("@FIXED@", &local(ports.fixed))
        .replace("@VERSION@", super::service::VERSION)
        .replace("@BODY@", body))
}

/// The private nginx, under its own prefix.
pub(super) struct BenchNginx {
    nginx: PathBuf,
    prefix: PathBuf,
}

impl BenchNginx {
    /// Writes the config and starts nginx with `-p <prefix> -c <conf> -e <errlog>`; waits until
    /// the three servers listen.
    pub(super) fn start(
        sh: &Shell,
        prefix: PathBuf,
        ports: &NginxPorts,
        body: &str,
    ) -> Result<BenchNginx> {
        let nginx = host::find_command("nginx").context("find nginx")?;
        fs::create_dir_all(prefix.join("temp")).context("create the nginx prefix")?;
        fs::write(
            prefix.join("nginx.conf"),
            render_nginx(&prefix, ports, body)?,
        )
        .context("write the benchmark's nginx.conf")?;
        let bench_nginx = BenchNginx { nginx, prefix };
        bench_nginx.command(sh, &[]).context("start nginx")?;
        for port in [ports.proxy_service, ports.proxy_fixed, ports.fixed] {
            poll("nginx to listen", Duration::from_secs(5), || {
                TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .map(drop)
                    .context("not listening yet")
            })?;
        }
        Ok(bench_nginx)
    }

    /// `nginx <args> -p <prefix>/ -c <prefix>/nginx.conf -e <prefix>/error.log`.
    fn command(&self, sh: &Shell, args: &[&str]) -> Result<()> {
        let nginx = &self.nginx;
        let (prefix, conf, err) = (
            format!("{}/", self.prefix.display()),
            self.prefix.join("nginx.conf"),
            self.prefix.join("error.log"),
        );
        cmd!(sh, "{nginx} {args...} -p {prefix} -c {conf} -e {err}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("nginx {}", args.join(" ")))
    }

    /// The worker processes' pids: the children of the master.
    pub(super) fn workers(&self) -> Result<Vec<u32>> {
        let master =
            fs::read_to_string(self.prefix.join("nginx.pid")).context("read nginx's pid file")?;
        let master = master.trim();
        let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .context("list nginx's workers")?;
        let workers: Vec<u32> = children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        ensure!(!workers.is_empty(), "nginx has no worker process");
        Ok(workers)
    }

    /// Stops nginx (`-s quit`, graceful) and waits until its master has exited.
    pub(super) fn stop(self, sh: &Shell) {
        let Ok(pid) = fs::read_to_string(self.prefix.join("nginx.pid")) else {
            return;
        };
        let pid = pid.trim().to_owned();
        if self.command(sh, &["-s", "quit"]).is_err() {
            return;
        }
        let _ = poll("nginx to stop", Duration::from_secs(10), || {
            let alive =
                fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
            ensure!(!alive, "still running");
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> NginxPorts {
        NginxPorts {
            service: 20001,
            proxy_service: 20002,
            proxy_fixed: 20003,
            fixed: 20004,
        }
    }

    #[test]
    fn the_two_proxies_differ_only_in_their_upstream() {
        let body = r#"{"class":0,"label":"setosa","version":"v1.0.0"}"#;
        let conf = render_nginx(Path::new("/tmp/b"), &ports(), body).unwrap();
        let unfilled = conf
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains('@'));
        assert!(!unfilled, "every placeholder filled:\n{conf}");
        assert!(conf.contains("pid \"/tmp/b/nginx.pid\";"));
        for line in [
            "server 127.0.0.1:20001;",
            "server 127.0.0.1:20004;",
            "listen 127.0.0.1:20002;",
            "listen 127.0.0.1:20003;",
            "listen 127.0.0.1:20004;",
        ] {
            assert!(conf.contains(line), "{line} missing:\n{conf}");
        }
        assert!(conf.contains(&format!("return 200 '{body}';")));
        // The proxy settings are shared, at the `http` level: the servers hold only `proxy_pass`.
        assert_eq!(conf.matches("proxy_pass").count(), 2);
        assert_eq!(conf.matches("proxy_set_header").count(), 4);
    }

    #[test]
    fn a_body_nginx_would_misread_is_refused() {
        for body in ["", "a'b", "$x", "a\\b", "a\nb"] {
            assert!(
                render_nginx(Path::new("/p"), &ports(), body).is_err(),
                "{body:?}"
            );
        }
    }
}
