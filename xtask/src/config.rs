//! The deploy configuration (`deploy.toml`): ports, versions, buckets, images, timeouts.
//!
//! Steps:
//! 1. read the file (`--config`, default `deploy.toml` at the project root);
//! 2. parse it with `toml_edit` ([`parse`] is pure, so the rules are unit-tested);
//! 3. check every value, naming the key (`balancer.port`) in any error.
//!
//! Every table and key is optional; absent ones take the defaults in [`defaults`], which match
//! the committed `deploy.toml`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use toml_edit::{DocumentMut, Item};

use crate::domain::Color;

/// Named defaults, the same values the committed `deploy.toml` spells out.
pub mod defaults {
    pub const BALANCER_PORT: u16 = 8080;
    /// The balancer's gRPC port (HTTP/2 cleartext), and each color's.
    pub const BALANCER_GRPC_PORT: u16 = 50050;
    pub const BUCKETS: u16 = 100;
    /// The latency budget: how long nginx waits for a color's answer before it tries the other.
    pub const READ_TIMEOUT_SECS: u64 = 3;
    pub const BLUE_VERSION: &str = "v1.0.0";
    pub const BLUE_PORT: u16 = 8081;
    pub const BLUE_GRPC_PORT: u16 = 50051;
    pub const GREEN_VERSION: &str = "v1.1.0";
    pub const GREEN_PORT: u16 = 8082;
    pub const GREEN_GRPC_PORT: u16 = 50052;
    pub const LOCAL_STATE_DIR: &str = ".deploy/local";
    pub const COMPOSE_PROJECT: &str = "mldeploy";
    pub const COMPOSE_IMAGE: &str = "ml-service";
    pub const COMPOSE_NGINX_IMAGE: &str = "nginx:1.27";
    pub const COMPOSE_SUBNET: &str = "172.30.77.0/24";
    /// Replicas per color on a swarm.
    pub const SWARM_REPLICAS: u32 = 3;
    /// Each color's overlay network on a swarm (its replicas' addresses tell the colors apart).
    pub const SWARM_BLUE_SUBNET: &str = "10.77.11.0/24";
    pub const SWARM_GREEN_SUBNET: &str = "10.77.12.0/24";
    /// How long nginx's mirror waits for the standby's answer to a shadow copy.
    pub const SHADOW_TIMEOUT_MS: u64 = 200;
    pub const LOCAL_MODELS_DIR: &str = "models";
    pub const HEALTHY_SECS: u64 = 30;
    pub const LOCK_SECS: u64 = 30;
    pub const TESTERS_HEADER: &str = "X-Deploy-Color";
    pub const TESTERS_COOKIE: &str = "deploy_color";
    /// The most buckets `split_clients` can express: shares are hundredths of a percent.
    pub const MAX_BUCKETS: u16 = 10_000;
}

/// The whole deploy configuration, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    pub balancer: Balancer,
    pub blue: ColorConfig,
    pub green: ColorConfig,
    pub local: Local,
    pub compose: Compose,
    pub swarm: Swarm,
    pub timeouts: Timeouts,
    pub testers: Testers,
    pub shadow: Shadow,
}

/// `[shadow]`: mirroring live prediction requests to the standby (`cargo xtask shadow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// How long the mirror waits for the standby's answer to one copy. nginx reads a client's
    /// next request on a keep-alive connection only once the mirror is done, so this bounds
    /// what a slow standby can add to a client's next request.
    pub timeout_ms: u64,
}

/// `[balancer]`: nginx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancer {
    /// The public port (bound to 127.0.0.1 by the local runtime).
    pub port: u16,
    /// The public gRPC port (HTTP/2 cleartext), routed by the same route generation.
    pub grpc_port: u16,
    /// Route buckets: the split moves in steps of `100 / buckets` percent.
    pub buckets: u16,
    /// The latency budget: a color that has not answered within it (hung, or far too slow)
    /// loses the request to the other color, and is avoided for a moment after.
    pub read_timeout: Duration,
}

/// `[blue]` / `[green]`: one color's default model version and direct port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorConfig {
    /// The model version `up` starts this color with (a folder under `models/`).
    pub version: String,
    /// The color's direct port on 127.0.0.1 (not through the balancer).
    pub port: u16,
    /// The color's direct gRPC port on 127.0.0.1.
    pub grpc_port: u16,
}

/// `[local]`: the local runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Relative paths are relative to the project root.
    pub state_dir: PathBuf,
    /// Where the model versions are (`<models_dir>/<version>/model.json`); relative to the
    /// project root.
    pub models_dir: PathBuf,
}

/// `[compose]`: the docker compose runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    pub project: String,
    pub image: String,
    pub nginx_image: String,
    pub subnet: String,
}

/// `[swarm]`: the swarm runtime. The stack takes `compose.project`'s name and images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swarm {
    /// Replicas per color (`up --replicas` overrides it; `scale` changes one color's).
    pub replicas: u32,
    /// How the balancer finds a color's replicas: `dnsrr` (Docker's DNS answers every task's
    /// address; nginx resolves them per request) or `vip` (one virtual IP per color, balanced
    /// by the kernel's IPVS, which not every kernel has).
    pub endpoint_mode: EndpointMode,
    /// Blue's overlay network (a /16 or /24): nginx tells the colors apart by these addresses.
    pub blue_subnet: String,
    /// Green's overlay network.
    pub green_subnet: String,
}

/// How swarm exposes a color's replicas to the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointMode {
    Dnsrr,
    Vip,
}

impl EndpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Dnsrr => "dnsrr",
            EndpointMode::Vip => "vip",
        }
    }
}

/// `[testers]`: a request naming a color in a header or a cookie reaches that color whatever
/// the split, so people can try the standby through the public address before a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Testers {
    pub enabled: bool,
    /// The request header naming the color (`X-Deploy-Color: green`).
    pub header: String,
    /// The cookie naming the color (`deploy_color=green`); the header wins when both are there.
    pub cookie: String,
    /// When not empty, the request must also carry it (`X-Deploy-Token` header or
    /// `deploy_token` cookie), so the public cannot pick the untested color.
    pub token: String,
}

/// `[timeouts]`, in seconds in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub healthy: Duration,
    pub lock: Duration,
}

impl DeployConfig {
    pub fn color(&self, color: Color) -> &ColorConfig {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    /// The local runtime's state directory, absolute (relative paths hang off `root`).
    pub fn local_state_dir(&self, root: &Path) -> PathBuf {
        if self.local.state_dir.is_absolute() {
            self.local.state_dir.clone()
        } else {
            root.join(&self.local.state_dir)
        }
    }

    /// The local runtime's model folder, absolute (relative paths hang off `root`).
    pub fn local_models_dir(&self, root: &Path) -> PathBuf {
        root.join(&self.local.models_dir)
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        use defaults::*;
        DeployConfig {
            balancer: Balancer {
                port: BALANCER_PORT,
                grpc_port: BALANCER_GRPC_PORT,
                buckets: BUCKETS,
                read_timeout: Duration::from_secs(READ_TIMEOUT_SECS),
            },
            blue: ColorConfig {
                version: BLUE_VERSION.into(),
                port: BLUE_PORT,
                grpc_port: BLUE_GRPC_PORT,
            },
            green: ColorConfig {
                version: GREEN_VERSION.into(),
                port: GREEN_PORT,
                grpc_port: GREEN_GRPC_PORT,
            },
            local: Local {
                state_dir: LOCAL_STATE_DIR.into(),
                models_dir: LOCAL_MODELS_DIR.into(),
            },
            compose: Compose {
                project: COMPOSE_PROJECT.into(),
                image: COMPOSE_IMAGE.into(),
                nginx_image: COMPOSE_NGINX_IMAGE.into(),
                subnet: COMPOSE_SUBNET.into(),
            },
            swarm: Swarm {
                replicas: SWARM_REPLICAS,
                endpoint_mode: EndpointMode::Dnsrr,
                blue_subnet: SWARM_BLUE_SUBNET.into(),
                green_subnet: SWARM_GREEN_SUBNET.into(),
            },
            timeouts: Timeouts {
                healthy: Duration::from_secs(HEALTHY_SECS),
                lock: Duration::from_secs(LOCK_SECS),
            },
            testers: Testers {
                enabled: false,
                header: TESTERS_HEADER.into(),
                cookie: TESTERS_COOKIE.into(),
                token: String::new(),
            },
            shadow: Shadow {
                timeout_ms: SHADOW_TIMEOUT_MS,
            },
        }
    }
}

/// Reads and checks the deploy configuration at `path`.
pub fn load(path: &Path) -> Result<DeployConfig> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "read the deploy configuration {} (pass another with `--config <file>`)",
            path.display()
        )
    })?;
    parse(&text).with_context(|| format!("deploy configuration {}", path.display()))
}

/// Parses and checks a deploy configuration's text.
pub fn parse(text: &str) -> Result<DeployConfig> {
    let doc: DocumentMut = text.parse().context("parse TOML")?;
    let d = DeployConfig::default();
    let config = DeployConfig {
        balancer: Balancer {
            port: port(&doc, "balancer", "port", d.balancer.port)?,
            grpc_port: port(&doc, "balancer", "grpc_port", d.balancer.grpc_port)?,
            buckets: int(
                &doc,
                "balancer",
                "buckets",
                d.balancer.buckets.into(),
                1,
                defaults::MAX_BUCKETS.into(),
            )? as u16,
            read_timeout: Duration::from_secs(int(
                &doc,
                "balancer",
                "read_timeout_secs",
                d.balancer.read_timeout.as_secs(),
                1,
                300,
            )?),
        },
        blue: ColorConfig {
            version: version(&doc, "blue", &d.blue.version)?,
            port: port(&doc, "blue", "port", d.blue.port)?,
            grpc_port: port(&doc, "blue", "grpc_port", d.blue.grpc_port)?,
        },
        green: ColorConfig {
            version: version(&doc, "green", &d.green.version)?,
            port: port(&doc, "green", "port", d.green.port)?,
            grpc_port: port(&doc, "green", "grpc_port", d.green.grpc_port)?,
        },
        local: Local {
            state_dir: string(
                &doc,
                "local",
                "state_dir",
                &d.local.state_dir.to_string_lossy(),
            )?
            .into(),
            models_dir: string(
                &doc,
                "local",
                "models_dir",
                &d.local.models_dir.to_string_lossy(),
            )?
            .into(),
        },
        compose: Compose {
            project: string(&doc, "compose", "project", &d.compose.project)?,
            image: string(&doc, "compose", "image", &d.compose.image)?,
            nginx_image: string(&doc, "compose", "nginx_image", &d.compose.nginx_image)?,
            subnet: string(&doc, "compose", "subnet", &d.compose.subnet)?,
        },
        swarm: Swarm {
            replicas: int(
                &doc,
                "swarm",
                "replicas",
                d.swarm.replicas.into(),
                1,
                MAX_REPLICAS.into(),
            )? as u32,
            endpoint_mode: match string(&doc, "swarm", "endpoint_mode", "dnsrr")?.as_str() {
                "dnsrr" => EndpointMode::Dnsrr,
                "vip" => EndpointMode::Vip,
                other => bail!("`swarm.endpoint_mode` is `{other}`: use `dnsrr` or `vip`"),
            },
            blue_subnet: subnet(&doc, "blue_subnet", &d.swarm.blue_subnet)?,
            green_subnet: subnet(&doc, "green_subnet", &d.swarm.green_subnet)?,
        },
        timeouts: Timeouts {
            healthy: Duration::from_secs(int(
                &doc,
                "timeouts",
                "healthy_secs",
                d.timeouts.healthy.as_secs(),
                1,
                3600,
            )?),
            lock: Duration::from_secs(int(
                &doc,
                "timeouts",
                "lock_secs",
                d.timeouts.lock.as_secs(),
                0,
                3600,
            )?),
        },
        testers: Testers {
            enabled: boolean(&doc, "testers", "enabled", d.testers.enabled)?,
            header: name(&doc, "testers", "header", &d.testers.header, '-')?,
            cookie: name(&doc, "testers", "cookie", &d.testers.cookie, '_')?,
            token: token(&doc)?,
        },
        shadow: Shadow {
            timeout_ms: int(
                &doc,
                "shadow",
                "timeout_ms",
                d.shadow.timeout_ms,
                10,
                10_000,
            )?,
        },
    };
    let ports = [
        ("balancer.port", config.balancer.port),
        ("blue.port", config.blue.port),
        ("green.port", config.green.port),
        ("balancer.grpc_port", config.balancer.grpc_port),
        ("blue.grpc_port", config.blue.grpc_port),
        ("green.grpc_port", config.green.grpc_port),
    ];
    for (i, (a, pa)) in ports.iter().enumerate() {
        for (b, pb) in &ports[i + 1..] {
            if pa == pb {
                bail!("`{a}` and `{b}` are both {pa}: give each part its own port");
            }
        }
    }
    if config.swarm.blue_subnet == config.swarm.green_subnet {
        bail!("`swarm.blue_subnet` and `swarm.green_subnet` are the same: the balancer tells the colors apart by their addresses");
    }
    Ok(config)
}

/// The most replicas per color `[swarm] replicas` and `scale` accept.
pub const MAX_REPLICAS: u32 = 64;

/// A swarm subnet: an IPv4 network on an octet boundary (`/8`, `/16` or `/24`).
fn subnet(doc: &DocumentMut, key: &str, default: &str) -> Result<String> {
    let value = string(doc, "swarm", key, default)?;
    if subnet_prefix(&value).is_none() {
        bail!("`swarm.{key}` is `{value}`: give an IPv4 network on an octet boundary, like `10.77.11.0/24`");
    }
    Ok(value)
}

/// The fixed leading octets of `a.b.c.d/8|16|24` (`10.77.11.` for `10.77.11.0/24`).
pub fn subnet_prefix(subnet: &str) -> Option<String> {
    let (addr, bits) = subnet.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let octets = match bits {
        "8" => 1,
        "16" => 2,
        "24" => 3,
        _ => return None,
    };
    let kept: Vec<String> = addr.octets()[..octets].iter().map(u8::to_string).collect();
    Some(format!("{}.", kept.join(".")))
}

fn item<'a>(doc: &'a DocumentMut, table: &str, key: &str) -> Result<Option<&'a Item>> {
    let Some(t) = doc.get(table) else {
        return Ok(None);
    };
    if !t.is_table_like() {
        bail!("`{table}` must be a table (`[{table}]`)");
    }
    Ok(t.get(key).filter(|item| !item.is_none()))
}

fn boolean(doc: &DocumentMut, table: &str, key: &str, default: bool) -> Result<bool> {
    let Some(item) = item(doc, table, key)? else {
        return Ok(default);
    };
    item.as_bool().with_context(|| {
        format!(
            "`{table}.{key}` must be true or false, found `{}`",
            item.to_string().trim()
        )
    })
}

/// A header or cookie name: letters, digits and `separator`, so nginx can name its variable.
fn name(
    doc: &DocumentMut,
    table: &str,
    key: &str,
    default: &str,
    separator: char,
) -> Result<String> {
    let value = string(doc, table, key, default)?;
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == separator)
    {
        bail!("`{table}.{key}` = {value:?}: use letters, digits and `{separator}`");
    }
    Ok(value)
}

/// The testers' token: empty (none), or at least 16 characters a header and a cookie carry as
/// they are.
fn token(doc: &DocumentMut) -> Result<String> {
    let value = string(doc, "testers", "token", "")?;
    if !value.is_empty()
        && (value.len() < 16
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        bail!(
            "`testers.token`: use at least 16 letters, digits, `-`, `_`, `.` or `~` (e.g. the output of `openssl rand -hex 16`), or leave the key out for no token"
        );
    }
    Ok(value)
}

fn int(doc: &DocumentMut, table: &str, key: &str, default: u64, min: u64, max: u64) -> Result<u64> {
    let Some(item) = item(doc, table, key)? else {
        return Ok(default);
    };
    let Some(value) = item.as_integer() else {
        bail!(
            "`{table}.{key}` must be an integer, found `{}`",
            item.to_string().trim()
        );
    };
    if value < min as i64 || value > max as i64 {
        bail!("`{table}.{key}` = {value} is out of range: use {min}..={max}");
    }
    Ok(value as u64)
}

fn port(doc: &DocumentMut, table: &str, key: &str, default: u16) -> Result<u16> {
    Ok(int(doc, table, key, default.into(), 1, u16::MAX.into())? as u16)
}

fn string(doc: &DocumentMut, table: &str, key: &str, default: &str) -> Result<String> {
    let Some(item) = item(doc, table, key)? else {
        return Ok(default.to_owned());
    };
    match item.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.to_owned()),
        Some(_) => {
            bail!("`{table}.{key}` is empty: give it a value or remove the key for the default")
        }
        None => bail!(
            "`{table}.{key}` must be a string, found `{}`",
            item.to_string().trim()
        ),
    }
}

fn version(doc: &DocumentMut, table: &str, default: &str) -> Result<String> {
    let value = string(doc, table, "version", default)?;
    if let Err(why) = crate::domain::check_version(&value) {
        bail!("`{table}.version` = {value:?}: {why}");
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
