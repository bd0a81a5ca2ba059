//! The balancer's nginx image ([`resolve_nginx_image`]): the configured one, the one built
//! earlier from Debian's packages, a pull, or a build with debootstrap (see `images.rs`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{image_present_or_copied, image_size, DEBIAN_NGINX_IMAGE, DEBIAN_SUITE, PULL_TIMEOUT};
use crate::host;

/// The nginx image to run: `configured` when present or pullable (unless `offline`), else one
/// built from Debian's packages (built now if needed).
pub fn resolve_nginx_image(sh: &Shell, configured: &str, offline: bool) -> Result<String> {
    if !offline && image_present_or_copied(sh, configured) {
        return Ok(configured.to_owned());
    }
    if image_present_or_copied(sh, DEBIAN_NGINX_IMAGE) {
        return Ok(DEBIAN_NGINX_IMAGE.to_owned());
    }
    if !offline {
        crate::say!(
            "pulling {configured} (at most {} s)…",
            PULL_TIMEOUT.as_secs()
        );
        match pull(configured, PULL_TIMEOUT) {
            Ok(()) => {
                crate::say!("pulled {configured}");
                return Ok(configured.to_owned());
            }
            Err(err) => crate::say!(
                "cannot pull {configured} ({err:#}): building nginx from Debian's packages"
            ),
        }
    }
    build_debian_nginx(sh, DEBIAN_NGINX_IMAGE)?;
    Ok(DEBIAN_NGINX_IMAGE.to_owned())
}

fn pull(image: &str, timeout: Duration) -> Result<()> {
    let mut child = Command::new("docker")
        .args(["pull", "--quiet", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run docker pull")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("wait for docker pull")? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            }
            bail!("{}", err.trim());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no answer within {} s", timeout.as_secs());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Builds an nginx image named `image` from Debian's packages, without any registry.
pub fn build_debian_nginx(sh: &Shell, image: &str) -> Result<()> {
    host::ensure_commands(sh, &[host::DEBOOTSTRAP])?;
    if !host::is_root() {
        bail!("building the nginx image with debootstrap needs root: run `sudo cargo xtask build --offline`");
    }
    let mirror = debian_mirror()?;
    let dir = std::env::temp_dir().join(format!("mldeploy-nginx-rootfs-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    crate::say!(
        "building {image} from Debian {DEBIAN_SUITE}'s nginx (debootstrap, takes a minute or two)…"
    );
    let started = Instant::now();
    let result = (|| {
        let suite = DEBIAN_SUITE;
        cmd!(
            sh,
            "debootstrap --variant=minbase --include=nginx {suite} {dir} {mirror}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .context("debootstrap a minimal Debian with nginx")?;
        trim_rootfs(&dir)?;
        import_rootfs(&dir, image)
    })();
    let _ = fs::remove_dir_all(&dir);
    result?;
    crate::say!(
        "built {image} in {:.0} s: {:.1} MB",
        started.elapsed().as_secs_f64(),
        image_size(sh, image)? as f64 / 1e6
    );
    Ok(())
}

/// Removes what a container never needs: package caches, documentation, translations.
fn trim_rootfs(dir: &Path) -> Result<()> {
    for rel in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ] {
        let path = dir.join(rel);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
            fs::create_dir_all(&path).with_context(|| format!("recreate {}", path.display()))?;
        }
    }
    Ok(())
}

/// `tar -C <dir> -c . | docker import - <image>`, the pipe made here.
fn import_rootfs(dir: &Path, image: &str) -> Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("run tar")?;
    let tar_out = tar.stdout.take().context("tar's stdout")?;
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            r#"CMD ["nginx", "-g", "daemon off;"]"#,
            "--change",
            "EXPOSE 80",
            "-",
            image,
        ])
        .stdin(Stdio::from(tar_out))
        .stdout(Stdio::null())
        .status()
        .context("run docker import")?;
    let tar_status = tar.wait().context("wait for tar")?;
    if !tar_status.success() {
        bail!("tar of {} failed ({tar_status})", dir.display());
    }
    if !import.success() {
        bail!("docker import of {} failed ({import})", dir.display());
    }
    Ok(())
}

/// The Debian mirror this machine's apt uses (`/etc/apt/sources.list` and `sources.list.d`).
pub fn debian_mirror() -> Result<String> {
    let mut sources = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        sources.push(("sources.list".to_owned(), text));
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".list") || name.ends_with(".sources") {
                if let Ok(text) = fs::read_to_string(&path) {
                    sources.push((name, text));
                }
            }
        }
    }
    match mirror_from_sources(&sources) {
        Some(mirror) => Ok(mirror),
        None => bail!(
            "no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d: add one, or pull an \
             nginx image and set `compose.nginx_image`"
        ),
    }
}

/// The first Debian archive URI (not the security archive) in apt source files, given as
/// `(file name, text)`: one-line `deb URI suite …` entries in `*.list`, deb822 stanzas in
/// `*.sources`.
pub fn mirror_from_sources(sources: &[(String, String)]) -> Option<String> {
    let usable = |uri: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://"))
            && uri.contains("/debian")
            && !uri.contains("security")
    };
    for (name, text) in sources {
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|line| {
                        let (k, v) = line.split_once(':')?;
                        (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_owned())
                    })
                };
                let is_deb =
                    field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                let enabled = field("Enabled").is_none_or(|e| e != "no");
                if let (true, true, Some(uris)) = (is_deb, enabled, field("URIs")) {
                    if let Some(uri) = uris.split_whitespace().find(|u| usable(u)) {
                        return Some(uri.trim_end_matches('/').to_owned());
                    }
                }
            }
        } else {
            for line in text.lines() {
                let mut words = line.split_whitespace().filter(|w| !w.is_empty());
                if words.next() != Some("deb") {
                    continue;
                }
                let mut rest: Vec<&str> = words.collect();
                if rest.first().is_some_and(|w| w.starts_with('[')) {
                    let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
                    rest.drain(..=end);
                }
                if let Some(uri) = rest.first().filter(|u| usable(u)) {
                    return Some(uri.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> (String, String) {
        (name.to_owned(), text.to_owned())
    }

    #[test]
    fn mirror_from_a_deb822_file_skips_security() {
        let text = "Types: deb\nURIs: http://security.mirror.example/debian-security\nSuites: bookworm-security\n\n\
                    Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n";
        assert_eq!(
            mirror_from_sources(&[src("debian.sources", text)]).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn mirror_from_a_one_line_list_with_options() {
        let text = "# deb http://old.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(&[src("sources.list", text)]).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn no_mirror_when_none_is_debian() {
        let text = "deb http://apt.example/node stable main\n";
        assert_eq!(mirror_from_sources(&[src("node.list", text)]), None);
        assert_eq!(
            mirror_from_sources(&[src(
                "x.sources",
                "Types: deb\nEnabled: no\nURIs: http://m.example/debian\n"
            )]),
            None
        );
    }
}
