//! `cargo xtask build`: the static service binary, the service image and the nginx image.
//!
//! Steps:
//! 1. build `ml-service` statically for `x86_64-unknown-linux-gnu` (release);
//! 2. with `--no-image`, stop there;
//! 3. make sure a Docker engine answers (starting `dockerd` when possible);
//! 4. `docker build` the service image, tagged `<image>:<version>-<git rev>` and `<image>:latest`;
//! 5. make sure an nginx image exists: the configured one, pulled if needed, or one built from
//!    Debian's packages (with `--offline` or `MLDEPLOY_OFFLINE=1`, always the latter).
//!
//! The image logic lives in `images.rs`; `up` on the compose runtime reuses it for missing images.

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{config, docker, flags, images};

impl flags::Build {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let config = config::load(&global.config_path())?;
        let binary = images::build_service_binary(sh)?;
        if self.no_image {
            return Ok(());
        }
        docker::ensure_engine(sh)?;
        let image = images::service_image(sh, &config.compose.image)?;
        images::build_service_image(sh, &image, &binary).context("build the service image")?;
        let offline = self.offline || images::offline_from_env();
        let nginx = images::resolve_nginx_image(sh, &config.compose.nginx_image, offline)
            .context("provide the nginx image")?;
        crate::say!("build: {} and {nginx} are ready", image.tags()[0]);
        Ok(())
    }
}
