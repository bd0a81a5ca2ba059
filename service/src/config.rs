//! The service's configuration, read from the environment as the existing setups do.
//!
//! - [`Config`]: what to serve and where (`MODEL_PATH`, `MODEL_VERSION`, `HOST`, `PORT`,
//!   `GRPC_PORT`, `SHUTDOWN_TIMEOUT_SECS`); HTTP listens on `HOST:PORT`, gRPC on
//!   `HOST:GRPC_PORT`, and a port of 0 picks a free one; and how many mirrored answers the
//!   shadow journal keeps (`SHADOW_JOURNAL_RECORDS`, see [`crate::shadow`]);
//! - [`LogConfig`]: where and how the logs go (`LOG_FORMAT`, `LOG_FILE`, `LOG_MAX_BYTES`); read
//!   apart, and first, so that a refusal to start can itself be logged. The level comes from
//!   `RUST_LOG` (default `info`), read by [`crate::telemetry`].

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};

/// The port when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 8080;
/// The gRPC port when `GRPC_PORT` is unset: gRPC's customary one.
pub const DEFAULT_GRPC_PORT: u16 = 50051;
/// The address when `HOST` is unset: every interface, as a container needs.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// The model when `MODEL_PATH` is unset.
pub const DEFAULT_MODEL_PATH: &str = "models/v1.0.0";
/// How long in-flight requests may take to finish after SIGTERM when
/// `SHUTDOWN_TIMEOUT_SECS` is unset.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The records the shadow journal keeps when `SHADOW_JOURNAL_RECORDS` is unset: minutes of
/// mirrored traffic at hundreds of requests a second, about 10 MiB of single-row answers.
pub const DEFAULT_SHADOW_JOURNAL_RECORDS: usize = 50_000;
/// The size cap of `LOG_FILE` when `LOG_MAX_BYTES` is unset: 10 MiB, so the log and its one
/// rotated predecessor take at most about 20 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// What the service is told by its environment; see [`Config::from_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `MODEL_PATH`: a version folder (`models/v1.0.0`) or its `model.json`.
    pub model_path: PathBuf,
    /// `MODEL_VERSION`: the version the model must have; unchecked when unset.
    pub model_version: Option<String>,
    /// `HOST`: the address of both listeners.
    pub host: IpAddr,
    /// `PORT`: HTTP's port.
    pub port: u16,
    /// `GRPC_PORT`: gRPC's port; it must differ from `PORT` unless both are 0.
    pub grpc_port: u16,
    /// `SHUTDOWN_TIMEOUT_SECS`.
    pub shutdown_timeout: Duration,
    /// `SHADOW_JOURNAL_RECORDS`: the most answers to mirrored requests kept for
    /// `GET /_shadow/records` (the oldest are evicted); 0 records none.
    pub shadow_journal_records: usize,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let read_port = |name: &str, default: u16| match non_empty(name) {
            Some(raw) => raw
                .trim()
                .parse()
                .with_context(|| format!("{name}={raw:?} is not a port number (0-65535)")),
            None => Ok(default),
        };
        let port = read_port("PORT", DEFAULT_PORT)?;
        let grpc_port = read_port("GRPC_PORT", DEFAULT_GRPC_PORT)?;
        if port == grpc_port && port != 0 {
            anyhow::bail!(
                "PORT and GRPC_PORT are both {port}: HTTP and gRPC need a port each; set GRPC_PORT to another port (default {DEFAULT_GRPC_PORT})"
            );
        }
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
        let shadow_journal_records = match non_empty("SHADOW_JOURNAL_RECORDS") {
            Some(raw) => raw.trim().parse::<usize>().with_context(|| {
                format!(
                    "SHADOW_JOURNAL_RECORDS={raw:?} is not a number of records: give a whole number, or 0 to record none (default {DEFAULT_SHADOW_JOURNAL_RECORDS})"
                )
            })?,
            None => DEFAULT_SHADOW_JOURNAL_RECORDS,
        };
        Ok(Config {
            model_path: non_empty("MODEL_PATH")
                .unwrap_or_else(|| DEFAULT_MODEL_PATH.to_owned())
                .into(),
            model_version: non_empty("MODEL_VERSION"),
            host,
            port,
            grpc_port,
            shutdown_timeout,
            shadow_journal_records,
        })
    }
}

/// Where and how the log lines go; see [`LogConfig::from_env`].
///
/// Whatever the destination, a line that cannot be written (full disk, missing folder, a reader
/// that does not keep up) is dropped and counted in `log_lines_dropped_total`: logging never
/// fails or delays a request.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `LOG_FORMAT=json`: one JSON object per line; anything else, or unset: text.
    pub json: bool,
    /// `LOG_FILE`: append the lines to this file instead of stdout.
    pub file: Option<PathBuf>,
    /// `LOG_MAX_BYTES` (only with `LOG_FILE`; default [`DEFAULT_LOG_MAX_BYTES`]): when a line
    /// would take `LOG_FILE` past this size, the file is renamed to `<LOG_FILE>.1` (replacing
    /// an older one) and a new one is started. Only a regular file rotates (not `/dev/stdout`).
    pub max_bytes: u64,
}

impl Default for LogConfig {
    /// Text lines on stdout.
    fn default() -> LogConfig {
        LogConfig {
            json: false,
            file: None,
            max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

impl LogConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<LogConfig> {
        LogConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the log configuration through `get`, so tests need not touch the environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<LogConfig> {
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let max_bytes = match non_empty("LOG_MAX_BYTES") {
            Some(raw) => raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| {
                    format!("LOG_MAX_BYTES={raw:?} is not a positive number of bytes")
                })?,
            None => DEFAULT_LOG_MAX_BYTES,
        };
        Ok(LogConfig {
            json: non_empty("LOG_FORMAT").is_some_and(|f| f.trim().eq_ignore_ascii_case("json")),
            file: non_empty("LOG_FILE").map(PathBuf::from),
            max_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        Config::from_lookup(lookup(vars))
    }

    #[test]
    fn logs_go_to_stdout_as_text_unless_told_otherwise() {
        let c = LogConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c, LogConfig::default());
        assert_eq!(
            (c.json, c.file, c.max_bytes),
            (false, None, DEFAULT_LOG_MAX_BYTES)
        );
        let c = LogConfig::from_lookup(lookup(&[
            ("LOG_FORMAT", "JSON"),
            ("LOG_FILE", "/var/log/blue.log"),
            ("LOG_MAX_BYTES", "4096"),
        ]))
        .unwrap();
        assert!(c.json);
        assert_eq!(c.file, Some(PathBuf::from("/var/log/blue.log")));
        assert_eq!(c.max_bytes, 4096);
        for bad in ["0", "-1", "10M"] {
            let err = LogConfig::from_lookup(lookup(&[("LOG_MAX_BYTES", bad)])).unwrap_err();
            assert!(err.to_string().contains("LOG_MAX_BYTES"), "{err}");
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.grpc_port, 50051);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.model_path, PathBuf::from("models/v1.0.0"));
        assert_eq!(c.model_version, None);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.shadow_journal_records, 50_000);
    }

    #[test]
    fn the_shadow_journal_size_is_a_whole_number() {
        let records = |raw: &str| config(&[("SHADOW_JOURNAL_RECORDS", raw)]);
        assert_eq!(records(" 5 ").unwrap().shadow_journal_records, 5);
        assert_eq!(records("0").unwrap().shadow_journal_records, 0);
        for bad in ["-1", "1e3", "many"] {
            let err = format!("{:#}", records(bad).unwrap_err());
            assert!(
                err.contains("SHADOW_JOURNAL_RECORDS") && err.contains("0 to record none"),
                "{err}"
            );
        }
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
        let c = config(&[("GRPC_PORT", " 50052 ")]).unwrap();
        assert_eq!((c.port, c.grpc_port), (8080, 50052));
        assert_eq!(
            config(&[("PORT", "0"), ("GRPC_PORT", "0")])
                .unwrap()
                .grpc_port,
            0
        );
        let err = config(&[("GRPC_PORT", "grpc")]).unwrap_err().to_string();
        assert!(
            err.contains("GRPC_PORT=\"grpc\" is not a port number"),
            "{err}"
        );
        let err = config(&[("PORT", "9000"), ("GRPC_PORT", "9000")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PORT and GRPC_PORT are both 9000"), "{err}");
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
