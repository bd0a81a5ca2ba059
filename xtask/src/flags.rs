//! The command line: every command and flag, documented where it is declared.
//!
//! The `///` text on each item is what `--help` prints. Each command's entry point lives in
//! `cmd/` (one small file per verb), as `impl flags::Command { fn run(...) }`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::Color;

/// Build, deploy, switch and roll back the model service behind nginx, without dropping a request.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
pub struct Xtask {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every deployment command understands.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Where the colors and nginx run: containers through a Docker engine (compose), services
    /// with replicas on a Docker Swarm, or local processes. `auto` keeps a running local
    /// deployment, else picks swarm when the engine is a swarm manager, compose when a Docker
    /// engine answers, local otherwise.
    #[arg(long, global = true, value_enum, default_value_t = RuntimeKind::Auto, env = "MLDEPLOY_RUNTIME")]
    pub runtime: RuntimeKind,
    /// The deploy configuration (ports, versions, buckets, images).
    #[arg(
        long,
        global = true,
        default_value = "deploy.toml",
        env = "MLDEPLOY_CONFIG"
    )]
    pub config: PathBuf,
}

impl Global {
    /// The deploy configuration's path: a relative `--config` means the caller's folder when
    /// the file is there, else the project root, so `cargo xtask status` works from any folder
    /// of the checkout. Every command reads the configuration through this one path.
    pub fn config_path(&self) -> PathBuf {
        resolve_config(&self.config, &crate::util::project_root())
    }
}

fn resolve_config(config: &std::path::Path, root: &std::path::Path) -> PathBuf {
    if config.is_relative() && !config.exists() {
        root.join(config)
    } else {
        config.to_path_buf()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    Auto,
    Compose,
    Local,
    Swarm,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model version reproducibly into `models/<version>/`.
    Train(Train),
    /// Train model v1.1.0 (the second preset), as `train --version v1.1.0`.
    #[command(name = "train-v1.1")]
    TrainV1_1(TrainV1_1),
    /// Build the static service binary and the container image.
    Build(Build),
    /// Install and start what the chosen runtime needs (nginx, a Docker engine, load tools).
    Setup(Setup),
    /// Start nginx and both colors, wait until every part is healthy.
    Up(Up),
    /// Stop everything this tool started.
    Down(Down),
    /// Swarm runtime: set a color's replica count (waits until they all run healthy).
    Scale(Scale),
    /// Show the live deploy state: active color, split, versions and health, recent operations.
    Status(Status),
    /// Move all traffic to the other (or the named) color, after gating it.
    Switch(Switch),
    /// Return to the state before the last operation.
    Rollback(Rollback),
    /// Send a percentage of traffic to the standby color (0 cancels, 100 completes), or step
    /// through a rollout judged from the canary's metrics (`--steps 10,25,50,100`).
    Canary(Canary),
    /// Put a model version on the standby color, gate it, then switch to it.
    Deploy(Deploy),
    /// Mirror a share of live prediction requests to the standby color and compare its answers
    /// with the active color's (class agreement, confusion matrix, probability differences,
    /// latency), without changing what any client gets.
    Shadow(Shadow),
    /// Check the deployment through the balancer: health, predictions, versions, bad input.
    Smoke(Smoke),
    /// Print the operation log.
    History(History),
    /// Measure the service, the switch or the compose runtime under load and print the numbers.
    Bench(Bench),
    /// Push the built service image to a registry, tagged with the git revision and model versions.
    Publish(Publish),
    /// Run every check CI runs: formatting, lints, tests, workflow and Dockerfile linters.
    Ci(Ci),
}

#[derive(Debug, Args)]
pub struct Train {
    /// The model version to train (a preset: v1.0.0 or v1.1.0).
    #[arg(long, default_value = "v1.0.0")]
    pub version: String,
    /// Overwrite an existing `models/<version>/`.
    #[arg(long)]
    pub force: bool,
    /// Refuse to write a model whose test accuracy is below this.
    #[arg(long, default_value_t = 0.9)]
    pub min_accuracy: f64,
    /// Write into this folder instead of `models/`.
    #[arg(long, default_value = "models")]
    pub out_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct TrainV1_1 {
    /// Overwrite an existing `models/v1.1.0/`.
    #[arg(long)]
    pub force: bool,
    /// Refuse to write a model whose test accuracy is below this.
    #[arg(long, default_value_t = 0.9)]
    pub min_accuracy: f64,
}

#[derive(Debug, Args)]
pub struct Build {
    /// Build only the service binary, not the container image.
    #[arg(long)]
    pub no_image: bool,
    /// Build the nginx image from Debian's packages instead of using the official one.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct Setup {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
    /// Point the next CI steps at the deploy host named by the `DEPLOY_SSH_*` environment
    /// variables (exports `DOCKER_HOST`), or at this machine when none is configured.
    #[arg(long)]
    pub deploy_target: bool,
}

#[derive(Debug, Args)]
pub struct Up {
    /// The model version blue serves.
    #[arg(long)]
    pub blue: Option<String>,
    /// The model version green serves.
    #[arg(long)]
    pub green: Option<String>,
    /// Use this static nginx config instead of the one rendered from the deploy configuration
    /// (it must keep the routing of `nginx/nginx.conf`). Applied only if `nginx -t` accepts it.
    #[arg(long)]
    pub nginx_conf: Option<PathBuf>,
    /// Swarm runtime: replicas per color (overrides `[swarm] replicas`; also rescales running
    /// colors).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=crate::config::MAX_REPLICAS as i64))]
    pub replicas: Option<u32>,
}

#[derive(Debug, Args)]
pub struct Scale {
    /// The color to scale.
    #[arg(long, value_enum)]
    pub color: Color,
    /// How many replicas it runs (each is started healthy before the count is reached).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=crate::config::MAX_REPLICAS as i64))]
    pub replicas: u32,
}

#[derive(Debug, Args)]
pub struct Down {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct Status {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Shorthand for `--format json`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Switch {
    /// The color to move traffic to; the standby color when absent.
    #[arg(long, value_enum)]
    pub to: Option<Color>,
}

#[derive(Debug, Args)]
pub struct Rollback {}

#[derive(Debug, Args)]
pub struct Canary {
    /// Percentage of requests the standby color takes (0 cancels, 100 completes).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100), required_unless_present = "steps", conflicts_with = "steps")]
    pub percent: Option<u8>,
    /// A stepped rollout instead: the percentages to go through, e.g. `10,25,50,100`. After each
    /// step but the last, the canary color's own metrics are analysed over `--hold`; a breach
    /// returns all traffic to the stable color and fails.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=100))]
    pub steps: Option<Vec<u8>>,
    /// Seconds to hold each step before analysing it.
    #[arg(long, default_value_t = 30)]
    pub hold: u64,
    /// Highest share of the canary's prediction requests that may fail with a 5xx during a step.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Highest p99 latency of the canary's prediction requests during a step, in milliseconds.
    #[arg(long, default_value_t = 250.0)]
    pub max_p99_ms: f64,
    /// Fewest prediction requests the canary must answer during a step for it to be judged;
    /// fewer is a breach (no evidence is not good evidence).
    #[arg(long, default_value_t = 0)]
    pub min_requests: u64,
}

impl Canary {
    /// The limits each step of a stepped rollout must stay within.
    pub fn limits(&self) -> crate::domain::canary::Limits {
        crate::domain::canary::Limits {
            max_error_rate: self.max_error_rate,
            max_p99: std::time::Duration::from_secs_f64(self.max_p99_ms / 1000.0),
            min_requests: self.min_requests,
        }
    }
}

#[derive(Debug, Args)]
pub struct Deploy {
    /// The model version to put on the standby color (a folder under `models/`).
    #[arg(long)]
    pub version: String,
    /// Put the version on the standby color and gate it, but do not switch.
    #[arg(long)]
    pub no_switch: bool,
    /// After the gates, before any traffic moves: mirror this percent of live prediction
    /// requests to the new version and compare its answers with the active color's.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub shadow: Option<u8>,
    /// How long the shadow stage runs, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        requires = "shadow"
    )]
    pub shadow_duration: u64,
    /// End the shadow stage earlier, after this many compared requests.
    #[arg(long, value_name = "N", requires = "shadow")]
    pub shadow_requests: Option<u64>,
    /// Refuse the switch (traffic stays) when the shadow stage's class agreement, in percent,
    /// is below this.
    #[arg(long, value_name = "PERCENT", requires = "shadow")]
    pub min_agreement: Option<f64>,
}

impl Deploy {
    /// The shadow stage's options, when one was asked for.
    pub fn shadow_options(&self) -> Option<crate::ops::shadow::Options> {
        self.shadow.map(|percent| crate::ops::shadow::Options {
            percent,
            duration: std::time::Duration::from_secs(self.shadow_duration),
            requests: self.shadow_requests,
        })
    }
}

#[derive(Debug, Args)]
pub struct Shadow {
    /// Percent of prediction requests to mirror to the standby (1-100).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100), required_unless_present = "stop")]
    pub percent: Option<u8>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub duration: u64,
    /// Stop earlier, after this many compared requests.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Exit non-zero when the class agreement, in percent, is below this.
    #[arg(long, value_name = "PERCENT")]
    pub min_agreement: Option<f64>,
    /// Output format of the report.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Where to write the report's chart (SVG).
    #[arg(long, default_value = "target/shadow/report.svg")]
    pub svg: PathBuf,
    /// Stop a mirror left running by an interrupted shadow run, and do nothing else.
    #[arg(long, conflicts_with_all = ["percent", "requests", "min_agreement"])]
    pub stop: bool,
}

impl Shadow {
    pub fn options(&self) -> crate::ops::shadow::Options {
        crate::ops::shadow::Options {
            percent: self.percent.unwrap_or(0),
            duration: std::time::Duration::from_secs(self.duration),
            requests: self.requests,
        }
    }
}

#[derive(Debug, Args)]
pub struct Smoke {
    /// The balancer's base URL; the deploy configuration's when absent.
    #[arg(long)]
    pub url: Option<String>,
    /// Check one color through the balancer, as a tester: every request names it in the
    /// testers' header (with the token, when one is set), and only it may answer. Needs
    /// `[testers] enabled = true` in the deploy configuration.
    #[arg(long, value_enum)]
    pub color: Option<Color>,
}

#[derive(Debug, Args)]
pub struct History {
    /// Show only the last N operations.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print the raw JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// The model service alone on loopback, then behind nginx against nginx's own ceiling.
    Service,
    /// Switches under load through nginx, against the reload-based methods.
    Switch,
    /// The docker compose runtime on a private project: image size, `up`, container start,
    /// switch time, and failed requests under load while switching and rolling back.
    Compose,
    /// The active color hanging for 5 s and 90 s (`--duration 90` or more; else that many
    /// seconds) under load, with nginx's default read timeout and with the latency budget:
    /// failed requests, p99 and max latency, time until the standby answers.
    Hang,
    /// gRPC unary Predict direct and through nginx against HTTP/JSON predict in the same run
    /// (req/s, p50, p99; `--connections` calls in flight over 4 HTTP/2 channels), then failed
    /// RPCs while switching under gRPC load.
    Grpc,
    /// Client req/s, p50, p99 and max through the balancer with shadow traffic off, at 10 %,
    /// at 100 %, and at 100 % with the standby hung (SIGSTOP), and the copies the standby answered.
    Shadow,
    /// The compose runtime on a second host over `ssh://` (a network namespace of this machine
    /// with its own engine and sshd; needs root): `up`, `status` and `switch` wall times, with
    /// and without the host's agent and the forwarded Docker socket.
    Remote,
    /// The swarm runtime on a one-node swarm (made for the run when the engine is in none):
    /// req/s and p99 with 1, 2 and 3 replicas per color, switch wall time, failed requests
    /// while switching and while a replica of the active color is killed.
    Swarm,
}

#[derive(Debug, Args)]
pub struct Bench {
    /// What to measure.
    #[arg(value_enum)]
    pub target: BenchTarget,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
}

#[derive(Debug, Args)]
pub struct Publish {
    /// The repository to push to, e.g. `ghcr.io/OWNER/REPO` (lowercased; no tag).
    #[arg(long, env = "MLDEPLOY_REGISTRY")]
    pub registry: String,
}

#[derive(Debug, Args)]
pub struct Ci {
    /// Skip the Docker end-to-end tests (they are required unless this is given).
    #[arg(long)]
    pub no_docker: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_config_is_resolved_once_against_the_project_root() {
        let root = std::path::Path::new("/srv/checkout");
        let config = resolve_config(std::path::Path::new("no-such-dir/deploy.toml"), root);
        assert_eq!(config, root.join("no-such-dir/deploy.toml"));
        // Resolving the result again changes nothing (`build` used to join the root twice).
        assert_eq!(resolve_config(&config, root), config);
        let absolute = std::path::Path::new("/etc/mldeploy/deploy.toml");
        assert_eq!(resolve_config(absolute, root), absolute);
    }

    #[test]
    fn every_command_parses_its_help() {
        use clap::CommandFactory;
        Xtask::command().debug_assert();
    }
}
