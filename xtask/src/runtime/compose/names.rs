//! The compose project's names and addresses, as pure functions of the deploy configuration:
//! the project name, the parts' static addresses, the variables the compose files read, the
//! service image, and paths inside the state volume.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context, Result};

use super::{COMPOSE_FILES, STATE_DIR};
use crate::{config::DeployConfig, domain::Color, util};

/// The static addresses of the parts on the project network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub nginx: Ipv4Addr,
    pub blue: Ipv4Addr,
    pub green: Ipv4Addr,
}

impl Addresses {
    /// `.10`, `.11` and `.12` of `subnet` (`a.b.c.d/len`, len at most 28).
    pub fn in_subnet(subnet: &str) -> Result<Addresses> {
        let Some((base, len)) = subnet.split_once('/') else {
            bail!("{subnet:?} is not a subnet like 172.30.77.0/24");
        };
        let base: Ipv4Addr = base
            .parse()
            .with_context(|| format!("{base:?} is not an IPv4 address"))?;
        let len: u32 = len
            .parse()
            .with_context(|| format!("{len:?} is not a prefix length"))?;
        if !(8..=28).contains(&len) {
            bail!("{subnet}: use a prefix length between 8 and 28");
        }
        let mask = u32::MAX << (32 - len);
        let network = u32::from(base) & mask;
        if network != u32::from(base) {
            bail!(
                "{subnet}: the address has host bits set; use {}/{len}",
                Ipv4Addr::from(network)
            );
        }
        let at = |offset: u32| Ipv4Addr::from(network + offset);
        Ok(Addresses {
            nginx: at(10),
            blue: at(11),
            green: at(12),
        })
    }

    pub fn color(&self, color: Color) -> Ipv4Addr {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// The compose project name: what compose itself would make of it, refused when that changes it
/// (labels must match exactly).
pub fn project_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("`compose.project` = {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter or digit");
    }
    Ok(name.to_owned())
}

/// The variables the compose files read, from the deploy configuration.
pub fn compose_env(config: &DeployConfig, addresses: &Addresses) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "MLDEPLOY_PUBLIC_PORT".to_owned(),
            config.balancer.port.to_string(),
        ),
        (
            "MLDEPLOY_PUBLIC_GRPC_PORT".to_owned(),
            config.balancer.grpc_port.to_string(),
        ),
        ("MLDEPLOY_SUBNET".to_owned(), config.compose.subnet.clone()),
        (
            "MLDEPLOY_NGINX_ADDR".to_owned(),
            addresses.nginx.to_string(),
        ),
        (
            "MLDEPLOY_NGINX_IMAGE".to_owned(),
            config.compose.nginx_image.clone(),
        ),
    ];
    for color in Color::ALL {
        let prefix = format!("MLDEPLOY_{}", color.as_str().to_uppercase());
        let color_config = config.color(color);
        env.push((format!("{prefix}_IMAGE"), service_image_ref(config)));
        env.push((format!("{prefix}_VERSION"), color_config.version.clone()));
        env.push((format!("{prefix}_PORT"), color_config.port.to_string()));
        env.push((
            format!("{prefix}_GRPC_PORT"),
            color_config.grpc_port.to_string(),
        ));
        env.push((format!("{prefix}_ADDR"), addresses.color(color).to_string()));
    }
    env
}

/// `<compose.image>:<tag>`, the tag from `MLDEPLOY_IMAGE_TAG` or `latest`.
pub fn service_image_ref(config: &DeployConfig) -> String {
    let tag = std::env::var("MLDEPLOY_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "latest".into());
    format!("{}:{tag}", config.compose.image)
}

/// An absolute path in the state volume for `rel`, refusing anything that would leave it.
pub fn state_path(rel: &str) -> Result<String> {
    if rel.is_empty()
        || rel.starts_with('/')
        || rel.split('/').any(|part| part == ".." || part.is_empty())
    {
        bail!("{rel:?} is not a relative path inside the state directory");
    }
    Ok(format!("{STATE_DIR}/{rel}"))
}

/// The compose files, absolute.
pub fn compose_files() -> Vec<PathBuf> {
    let root = util::project_root();
    COMPOSE_FILES.iter().map(|f| root.join(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variables for the default configuration, and the compose files' text.
    fn default_env_and_files() -> (Vec<(String, String)>, String) {
        let config = DeployConfig::default();
        let env = compose_env(
            &config,
            &Addresses::in_subnet(&config.compose.subnet).unwrap(),
        );
        let files = COMPOSE_FILES
            .iter()
            .map(|f| std::fs::read_to_string(util::project_root().join(f)).unwrap())
            .collect();
        (env, files)
    }

    #[test]
    fn addresses_are_fixed_offsets_in_the_subnet() {
        let a = Addresses::in_subnet("172.30.77.0/24").unwrap();
        assert_eq!(a.nginx, Ipv4Addr::new(172, 30, 77, 10));
        assert_eq!(a.color(Color::Blue), Ipv4Addr::new(172, 30, 77, 11));
        assert_eq!(a.color(Color::Green), Ipv4Addr::new(172, 30, 77, 12));
        assert_eq!(
            Addresses::in_subnet("10.1.2.16/28").unwrap().green,
            Ipv4Addr::new(10, 1, 2, 28)
        );
        for bad in [
            "172.30.77.0",
            "172.30.77.1/24",
            "172.30.77.0/30",
            "x/24",
            "1.2.3.0/y",
        ] {
            assert!(Addresses::in_subnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_names_must_survive_compose_normalisation() {
        assert_eq!(project_name("mldeploy-e2e_1").unwrap(), "mldeploy-e2e_1");
        for bad in ["", "MLdeploy", "a b", "-x", "a.b"] {
            assert!(project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_paths_stay_inside_the_volume() {
        assert_eq!(
            state_path("state.json").unwrap(),
            "/var/lib/mldeploy/state.json"
        );
        assert_eq!(
            state_path("routes/gen-3").unwrap(),
            "/var/lib/mldeploy/routes/gen-3"
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "a/"] {
            assert!(state_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compose_env_names_every_variable_the_files_use() {
        let (env, files) = default_env_and_files();
        let mut used: Vec<&str> = files
            .split("${")
            .skip(1)
            .map(|rest| rest.split([':', '}']).next().unwrap())
            .collect();
        used.sort_unstable();
        used.dedup();
        for var in used {
            assert!(
                env.iter().any(|(k, _)| k == var),
                "{var} is used by a compose file but never set"
            );
        }
        let get = |k: &str| env.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("MLDEPLOY_GREEN_ADDR"), "172.30.77.12");
        assert_eq!(get("MLDEPLOY_BLUE_PORT"), "8081");
    }

    #[test]
    fn compose_file_defaults_match_the_deploy_defaults() {
        // Someone running the compose files by hand gets the same deployment as `cargo xtask up`.
        let (env, files) = default_env_and_files();
        for (key, value) in env.iter().filter(|(k, _)| !k.ends_with("_IMAGE")) {
            let pattern = format!("${{{key}:-{value}}}");
            assert!(files.contains(&pattern), "compose files lack {pattern}");
        }
    }
}
