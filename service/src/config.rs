//! The service's configuration, read from the environment as the existing setups do.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};

/// The port when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 8080;
/// The address when `HOST` is unset: every interface, as a container needs.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// The model when `MODEL_PATH` is unset.
pub const DEFAULT_MODEL_PATH: &str = "models/v1.0.0";
/// How long in-flight requests may take to finish after SIGTERM when
/// `SHUTDOWN_TIMEOUT_SECS` is unset.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the service is told by its environment; see [`Config::from_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `MODEL_PATH`: a version folder (`models/v1.0.0`) or its `model.json`.
    pub model_path: PathBuf,
    /// `MODEL_VERSION`: the version the model must have; unchecked when unset.
    pub model_version: Option<String>,
    /// `HOST`.
    pub host: IpAddr,
    /// `PORT`.
    pub port: u16,
    /// `SHUTDOWN_TIMEOUT_SECS`.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let port = match non_empty("PORT") {
            Some(raw) => raw
                .trim()
                .parse()
                .with_context(|| format!("PORT={raw:?} is not a port number (0-65535)"))?,
            None => DEFAULT_PORT,
        };
        let host = non_empty("HOST").unwrap_or_else(|| DEFAULT_HOST.to_owned());
        let host = host
            .trim()
            .parse()
            .with_context(|| format!("HOST={host:?} is not an IP address"))?;
        let shutdown_timeout = match non_empty("SHUTDOWN_TIMEOUT_SECS") {
            Some(raw) => Duration::from_secs_f64(
                raw.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .with_context(|| {
                        format!("SHUTDOWN_TIMEOUT_SECS={raw:?} is not a number of seconds")
                    })?,
            ),
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };
        Ok(Config {
            model_path: non_empty("MODEL_PATH")
                .unwrap_or_else(|| DEFAULT_MODEL_PATH.to_owned())
                .into(),
            model_version: non_empty("MODEL_VERSION"),
            host,
            port,
            shutdown_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.model_path, PathBuf::from("models/v1.0.0"));
        assert_eq!(c.model_version, None);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn values_are_read_and_bad_ones_named() {
        let c = config(&[
            ("PORT", "8081"),
            ("HOST", "127.0.0.1"),
            ("MODEL_VERSION", "v1.1.0"),
            ("SHUTDOWN_TIMEOUT_SECS", "2.5"),
        ])
        .unwrap();
        assert_eq!((c.port, c.model_version.as_deref()), (8081, Some("v1.1.0")));
        assert_eq!(c.shutdown_timeout, Duration::from_millis(2500));
        assert!(config(&[("PORT", "http")])
            .unwrap_err()
            .to_string()
            .contains("PORT"));
        assert!(config(&[("HOST", "nowhere")])
            .unwrap_err()
            .to_string()
            .contains("HOST"));
        assert!(config(&[("SHUTDOWN_TIMEOUT_SECS", "-1")])
            .unwrap_err()
            .to_string()
            .contains("SHUTDOWN_TIMEOUT_SECS"));
    }
}
