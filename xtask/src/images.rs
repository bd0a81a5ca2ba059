//! Container images: the service image and the balancer's nginx image.
//!
//! The service image ([`build_service_image`]):
//! 1. build the service statically (`+crt-static`, `x86_64-unknown-linux-gnu`), so a `FROM
//!    scratch` image needs nothing else;
//! 2. `docker build` the `Dockerfile` (no base image to pull), tagged
//!    `<image>:<crate version>-<git short rev>` and `<image>:latest`, with OCI labels; the legacy
//!    builder (`DOCKER_BUILDKIT=0`) when the buildx plugin is missing.
//!
//! The nginx image ([`resolve_nginx_image`]), the first that works of:
//! 1. the configured image (the official `nginx` by default), when present;
//! 2. the image built earlier from Debian's packages, when present;
//!    (against a remote engine, "present" includes "present in this machine's engine, and
//!    copied over the same connection": [`image_present_or_copied`]; the same for the service
//!    image before it is built);
//! 3. `docker pull` of the configured image, with a short deadline (skipped offline);
//! 4. a build from Debian's packages: `debootstrap --variant=minbase --include=nginx` into a
//!    folder, trimmed, then `tar -C <dir> -c . | docker import -` (the pipe is made here, not by
//!    a shell). The Debian mirror is the one this machine's apt sources name.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::util;

/// The Debian release the offline nginx image is built from (nginx 1.22).
pub const DEBIAN_SUITE: &str = "bookworm";
/// The name of the nginx image built from Debian's packages.
pub const DEBIAN_NGINX_IMAGE: &str = "mldeploy-nginx:bookworm";
/// The Rust target of the static service binary.
pub const SERVICE_TARGET: &str = "x86_64-unknown-linux-gnu";
/// How long `docker pull` may try before the offline build takes over.
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
/// The image size the service image should stay under.
pub const MAX_SERVICE_IMAGE_BYTES: u64 = 20 * 1000 * 1000;

/// Whether `MLDEPLOY_OFFLINE=1` asks for images built without any registry.
pub fn offline_from_env() -> bool {
    std::env::var("MLDEPLOY_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Whether the engine has `image` (a name with its tag, or an id).
pub fn image_exists(sh: &Shell, image: &str) -> bool {
    cmd!(sh, "docker image inspect {image}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// The remote engine `DOCKER_HOST` names (`ssh://…`, `tcp://…`), if it names one.
fn remote_engine() -> Option<String> {
    crate::runtime::compose::remote_docker_host()
        .filter(|h| h.starts_with("ssh://") || h.starts_with("tcp://"))
}

/// Whether the engine has `image`; against a remote engine that lacks it, copies it there
/// from this machine's own engine when that has it (`docker save | docker load` over the same
/// connection): images built or loaded on a laptop reach a deploy host without a registry.
pub fn image_present_or_copied(sh: &Shell, image: &str) -> bool {
    if image_exists(sh, image) {
        return true;
    }
    let Some(remote) = remote_engine() else {
        return false;
    };
    let local = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    };
    let here = local(&["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !here {
        return false;
    }
    crate::say!("copying {image} from this machine's engine to {remote}…");
    let started = Instant::now();
    let copied = (|| -> Result<()> {
        let mut save = local(&["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("run docker save")?;
        let stream = save.stdout.take().context("docker save's output")?;
        let load = Command::new("docker")
            .args(["load", "--quiet"])
            .stdin(stream)
            .stdout(Stdio::null())
            .output()
            .context("run docker load")?;
        let saved = save.wait().context("wait for docker save")?;
        if !saved.success() || !load.status.success() {
            bail!(
                "docker save | docker load failed: {}",
                String::from_utf8_lossy(&load.stderr).trim()
            );
        }
        Ok(())
    })();
    match copied {
        Ok(()) => {
            crate::say!("copied {image} in {:.1} s", started.elapsed().as_secs_f64());
            image_exists(sh, image)
        }
        Err(err) => {
            crate::say!("could not copy {image}: {err:#}");
            false
        }
    }
}

/// The size of `image` in bytes.
pub fn image_size(sh: &Shell, image: &str) -> Result<u64> {
    let format = "{{.Size}}";
    let text = cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .read()
        .with_context(|| format!("inspect image {image}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("image size of {image}: {text:?}"))
}

// The service image.

/// What a service image build is tagged and labelled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImage {
    /// The repository part, e.g. `ml-service` or `ghcr.io/owner/repo`.
    pub name: String,
    /// The service crate's version.
    pub version: String,
    /// `git rev-parse --short HEAD`, or `unknown` outside a git checkout.
    pub revision: String,
    /// Where the source lives (for `org.opencontainers.image.source`), when known.
    pub source: Option<String>,
}

impl ServiceImage {
    /// The tags: `<name>:<version>-<revision>` and `<name>:latest`.
    pub fn tags(&self) -> [String; 2] {
        [
            format!("{}:{}-{}", self.name, self.version, self.revision),
            format!("{}:latest", self.name),
        ]
    }

    /// The OCI labels.
    pub fn labels(&self) -> Vec<(String, String)> {
        let mut labels = vec![
            (
                "org.opencontainers.image.title".to_owned(),
                "ml-service".to_owned(),
            ),
            (
                "org.opencontainers.image.version".to_owned(),
                self.version.clone(),
            ),
            (
                "org.opencontainers.image.revision".to_owned(),
                self.revision.clone(),
            ),
        ];
        if let Some(source) = &self.source {
            labels.push(("org.opencontainers.image.source".to_owned(), source.clone()));
        }
        labels
    }
}

/// Reads the crate version, git revision and source of the service image named `name`.
pub fn service_image(sh: &Shell, name: &str) -> Result<ServiceImage> {
    let manifest = fs::read_to_string(util::project_root().join("service/Cargo.toml"))
        .context("read service/Cargo.toml")?;
    let version = crate_version(&manifest).context("find the service crate's version")?;
    let revision = cmd!(sh, "git rev-parse --short HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|rev| rev.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let source = match (
        std::env::var("GITHUB_SERVER_URL"),
        std::env::var("GITHUB_REPOSITORY"),
    ) {
        (Ok(server), Ok(repo)) if !repo.is_empty() => Some(format!("{server}/{repo}")),
        _ => cmd!(sh, "git remote get-url origin")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty()),
    };
    Ok(ServiceImage {
        name: name.to_owned(),
        version,
        revision,
        source,
    })
}

/// `package.version` of a `Cargo.toml`.
pub fn crate_version(manifest: &str) -> Result<String> {
    let doc: toml_edit::DocumentMut = manifest.parse().context("parse Cargo.toml")?;
    match doc
        .get("package")
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
    {
        Some(version) => Ok(version.to_owned()),
        None => bail!("no `package.version` (a string) in Cargo.toml"),
    }
}

/// Builds the static service binary and returns its path.
pub fn build_service_binary(sh: &Shell) -> Result<PathBuf> {
    build_static(
        sh,
        "service",
        "ml-service",
        "the static service binary",
        true,
    )
}

/// Builds the host's agent (`agent/`, `mldeploy-agent`) statically for [`SERVICE_TARGET`], the
/// balancer container's architecture, and returns its path. Quick when it is up to date.
/// Its progress goes to stderr: it is built in the middle of commands whose output may be JSON.
pub fn build_agent_binary(sh: &Shell) -> Result<PathBuf> {
    build_static(
        sh,
        "mldeploy-agent",
        "mldeploy-agent",
        "the host's agent",
        false,
    )
}

/// `cargo build --release` of `package`'s `bin` for [`SERVICE_TARGET`] with `+crt-static`, so
/// it runs in any Linux container of that architecture; progress on stdout when `loud`, else
/// on stderr.
fn build_static(sh: &Shell, package: &str, bin: &str, what: &str, loud: bool) -> Result<PathBuf> {
    let say = |text: String| {
        if loud {
            crate::say!("{text}");
        } else {
            eprintln!("{text}");
        }
    };
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.contains("crt-static") {
        rustflags = format!("{rustflags} -C target-feature=+crt-static")
            .trim()
            .to_owned();
    }
    let _flags = sh.push_env("RUSTFLAGS", rustflags);
    say(format!("building {what} ({SERVICE_TARGET}, release)…"));
    let started = Instant::now();
    let target = SERVICE_TARGET;
    cmd!(
        sh,
        "cargo build --release --package {package} --bin {bin} --target {target}"
    )
    .run()
    .with_context(|| format!("build {what}"))?;
    let binary = target_dir(sh)?
        .join(SERVICE_TARGET)
        .join("release")
        .join(bin);
    if !binary.is_file() {
        bail!("the build finished but {} is missing", binary.display());
    }
    say(format!(
        "built {} in {:.1} s",
        binary.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(binary)
}

fn target_dir(sh: &Shell) -> Result<PathBuf> {
    let text = cmd!(sh, "cargo metadata --format-version 1 --no-deps")
        .quiet()
        .read()
        .context("ask cargo for the target directory")?;
    let meta: serde_json::Value = serde_json::from_str(&text).context("parse cargo metadata")?;
    match meta["target_directory"].as_str() {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("cargo metadata has no target_directory"),
    }
}

/// Builds the service image from `binary` (built by [`build_service_binary`]) and `models/`.
pub fn build_service_image(sh: &Shell, image: &ServiceImage, binary: &Path) -> Result<()> {
    let root = util::project_root();
    // The Dockerfile copies the binary from inside the build context (the project root).
    let binary_rel = match binary.strip_prefix(&root) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => {
            let staged = root.join(".deploy/image/ml-service");
            fs::create_dir_all(staged.parent().unwrap()).context("create .deploy/image")?;
            fs::copy(binary, &staged)
                .with_context(|| format!("copy {} into the build context", binary.display()))?;
            staged.strip_prefix(&root).unwrap().to_path_buf()
        }
    };
    let [versioned, latest] = image.tags();
    let mut args: Vec<String> = vec![
        "--tag".into(),
        versioned.clone(),
        "--tag".into(),
        latest.clone(),
    ];
    for arg in [
        format!("BINARY={}", binary_rel.display()),
        format!("VERSION={}", image.version),
        format!("REVISION={}", image.revision),
    ] {
        args.push("--build-arg".into());
        args.push(arg);
    }
    for (key, value) in image.labels() {
        args.push("--label".into());
        args.push(format!("{key}={value}"));
    }
    let _builder = (!buildx_available(sh)).then(|| sh.push_env("DOCKER_BUILDKIT", "0"));
    crate::say!("building image {versioned}…");
    let started = Instant::now();
    cmd!(sh, "docker build --file Dockerfile {args...} .")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("docker build {versioned}"))?;
    let size = image_size(sh, &versioned)?;
    crate::say!(
        "built {versioned} (also {latest}) in {:.1} s: {:.1} MB",
        started.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );
    if size > MAX_SERVICE_IMAGE_BYTES {
        eprintln!(
            "warning: the image is {:.1} MB, above the 20 MB target",
            size as f64 / 1e6
        );
    }
    Ok(())
}

/// Whether `docker buildx` is installed (BuildKit builds then work; otherwise the legacy builder).
pub fn buildx_available(sh: &Shell) -> bool {
    cmd!(sh, "docker buildx version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// Makes sure the service image `reference` (`name:tag`) exists, copying it from this
/// machine's engine to a remote one, or building binary and image when it does not.
pub fn ensure_service_image(sh: &Shell, name: &str, reference: &str) -> Result<()> {
    if image_present_or_copied(sh, reference) {
        return Ok(());
    }
    crate::say!("image {reference} is missing: building it");
    let binary = build_service_binary(sh)?;
    let image = service_image(sh, name)?;
    build_service_image(sh, &image, &binary)?;
    if !image_exists(sh, reference) {
        bail!(
            "built {} but {reference} still does not exist: run `cargo xtask build`",
            image.tags()[0]
        );
    }
    Ok(())
}

// The nginx image: `images/nginx.rs`.
mod nginx;

pub use nginx::resolve_nginx_image;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_version_reads_the_package_table() {
        assert_eq!(
            crate_version("[package]\nname = \"service\"\nversion = \"0.3.1\"\n").unwrap(),
            "0.3.1"
        );
        assert!(crate_version("[package]\nversion.workspace = true\n").is_err());
    }

    #[test]
    fn tags_and_labels_carry_version_and_revision() {
        let image = ServiceImage {
            name: "ml-service".into(),
            version: "0.1.0".into(),
            revision: "abc1234".into(),
            source: None,
        };
        assert_eq!(
            image.tags(),
            [
                "ml-service:0.1.0-abc1234".to_owned(),
                "ml-service:latest".to_owned()
            ]
        );
        let labels = image.labels();
        assert!(labels.contains(&("org.opencontainers.image.revision".into(), "abc1234".into())));
        assert!(!labels.iter().any(|(k, _)| k.ends_with(".source")));
    }
}
