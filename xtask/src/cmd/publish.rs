//! `cargo xtask publish`: push the built service image to a registry (GHCR in CI).
//!
//! Steps:
//! 1. find the image `cargo xtask build` made (`<image>:latest` from the deploy configuration);
//! 2. compute the tags: the git revision, one per model version the image carries, `latest`;
//! 3. `docker tag` and `docker push` each, printing what went where.
//!
//! Logging in is the caller's business (`docker login`, or the login action in CI), so no
//! credential ever passes through this tool.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{config, flags, util::project_root};

impl flags::Publish {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let config = config::load(&global.config_path())?;
        let local = format!("{}:latest", config.compose.image);
        if cmd!(sh, "docker image inspect {local}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_err()
        {
            bail!("no image {local} here: run `cargo xtask build` first");
        }
        let revision = cmd!(sh, "git rev-parse --short=12 HEAD")
            .quiet()
            .read()
            .context("read the git revision")?;
        let versions = model_versions()?;
        let repository = registry_repository(&self.registry)?;
        let tags = tags(&revision, &versions);
        crate::say!("publishing {local} to {repository} as {}…", tags.join(", "));
        for tag in &tags {
            let target = format!("{repository}:{tag}");
            cmd!(sh, "docker tag {local} {target}")
                .run()
                .with_context(|| format!("tag {target}"))?;
            cmd!(sh, "docker push {target}").run().with_context(|| {
                format!("push {target} (logged in to the registry? `docker login`)")
            })?;
        }
        crate::say!("published {repository} ({} tags)", tags.len());
        Ok(())
    }
}

/// The model versions under `models/`, sorted.
fn model_versions() -> Result<Vec<String>> {
    let dir = project_root().join("models");
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("metadata.json").is_file() {
            versions.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    versions.sort();
    Ok(versions)
}

/// Registries want lowercase repository names; GitHub's `owner/repo` may have capitals.
fn registry_repository(registry: &str) -> Result<String> {
    let repository = registry.trim().trim_end_matches('/').to_lowercase();
    if repository.is_empty() || repository.contains(char::is_whitespace) || repository.contains(':')
    {
        bail!("`{registry}` is not a registry repository: pass e.g. `--registry ghcr.io/OWNER/REPO` (no tag)");
    }
    Ok(repository)
}

fn tags(revision: &str, model_versions: &[String]) -> Vec<String> {
    let mut tags = vec![revision.trim().to_owned()];
    tags.extend(model_versions.iter().cloned());
    tags.push("latest".to_owned());
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_is_lowercased_and_tags_are_refused() {
        assert_eq!(
            registry_repository("ghcr.io/Owner/Repo/").unwrap(),
            "ghcr.io/owner/repo"
        );
        assert!(registry_repository("ghcr.io/owner/repo:v1").is_err());
        assert!(registry_repository(" ").is_err());
    }

    #[test]
    fn tags_carry_the_revision_and_every_model_version() {
        let tags = tags("abc123\n", &["v1.0.0".into(), "v1.1.0".into()]);
        assert_eq!(tags, ["abc123", "v1.0.0", "v1.1.0", "latest"]);
    }
}
