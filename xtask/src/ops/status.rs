//! The status report (`status`) and the operation log as lines (`history`).
//!
//! Steps of [`gather`]:
//! 1. read the live state (the route directory decides the split) and the recorded one;
//! 2. ask each color and the balancer whether they run, what `/health` says and whether their
//!    gRPC port reports SERVING (`grpc.health.v1`);
//! 3. list every disagreement (recorded vs. routed split, recorded vs. served version, a color
//!    with traffic that is down, a missing or unreadable route directory);
//! 4. the report renders as text or a Markdown table (for CI job summaries) with pure functions
//!    ([`render_text`], [`render_markdown`]); it serialises as JSON.

use anyhow::Result;
use serde::Serialize;

use super::{gates, read_live, Deployment};
use crate::{
    domain::{Color, Operation, RouteReading, Split},
    runtime::Part,
};

/// How many operations `status` shows.
const RECENT: usize = 5;
/// How long `status` waits for one health answer.
const STATUS_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub runtime: String,
    pub balancer: PartReport,
    /// The split nginx applies now.
    pub split: Split,
    /// The active color, absent during a canary split.
    pub active: Option<Color>,
    /// The live route generation (0: none).
    pub generation: u64,
    /// When the recorded state began.
    pub since: Option<String>,
    pub colors: Vec<ColorReport>,
    /// Disagreements and problems; empty when all is well.
    pub problems: Vec<String>,
    /// What nginx mirrors to the standby now (`shadow`), absent when nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    /// Set when nginx cannot read a route generation, so traffic does not follow the recorded
    /// split (everything goes to blue): `status` and `smoke` then fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrouted: Option<String>,
    pub recent: Vec<Operation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub url: String,
    /// The gRPC address (`host:port`).
    pub grpc: String,
    pub running: bool,
    pub healthy: bool,
    /// What `grpc.health.v1` says there (`SERVING`, `NOT_SERVING`, or why there is no answer).
    pub grpc_health: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColorReport {
    pub color: Color,
    pub url: String,
    /// The gRPC address (`host:port`).
    pub grpc: String,
    /// What `grpc.health.v1` says there (`SERVING`, `NOT_SERVING`, or why there is no answer).
    pub grpc_health: String,
    /// Percent of requests it takes.
    pub share: u8,
    pub running: bool,
    pub healthy: bool,
    /// Running and accepting connections, but not answering within the probe's timeout.
    pub hung: bool,
    /// What `/health` reports.
    pub version: Option<String>,
    /// What the state records.
    pub recorded_version: Option<String>,
    /// How many replicas it should have, where a color has several (swarm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// Each replica, where a color has several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<super::replicas::ReplicaReport>,
}

impl ColorReport {
    /// The version to show: what the color answers, else what the state records.
    fn shown_version(&self) -> &str {
        self.version
            .as_deref()
            .or(self.recorded_version.as_deref())
            .unwrap_or("?")
    }
}

/// Reads the live deployment into a [`Report`].
pub fn gather(ctx: &Deployment) -> Result<Report> {
    let live = read_live(ctx)?;
    let mut problems: Vec<String> = live
        .problem
        .iter()
        .chain(&live.recovered)
        .cloned()
        .collect();
    if let Some(recorded) = &live.recorded {
        let routed = matches!(live.reading, RouteReading::Active { .. });
        if routed && (recorded.split != live.split || recorded.generation != live.generation()) {
            problems.push(format!(
                "state.json records {} (generation {}) but the route directory routes {} (generation {}); the route directory is what nginx follows, the next operation records it",
                recorded.split,
                recorded.generation,
                live.split,
                live.generation()
            ));
        }
    } else {
        problems.push("no recorded state: run `cargo xtask up`".into());
    }
    let state = live.state(&ctx.config);
    // Short probes: `status` must answer quickly even when a color hangs.
    let probe = crate::http::client_with_timeout(STATUS_PROBE_TIMEOUT)?;
    let budget = ctx.config.balancer.read_timeout.as_secs();
    let mut colors = Vec::new();
    for color in Color::ALL {
        let url = ctx.rt.url(Part::Color(color));
        let running = ctx.rt.is_running(Part::Color(color)).unwrap_or(false);
        let answer = gates::healthy_version(&probe, &url);
        let hung = running && answer.as_ref().is_err_and(gates::timed_out);
        let version = answer.ok();
        let recorded_version = live
            .recorded
            .as_ref()
            .and_then(|s| s.version(color))
            .map(str::to_owned);
        let share = live.split.share(color);
        let grpc_url = ctx.rt.grpc_url(Part::Color(color));
        // A color that does not answer HTTP is not asked again over gRPC: `status` stays quick.
        let grpc_health = if version.is_some() {
            grpc_serving(&grpc_url)
        } else {
            "not asked (HTTP does not answer)".to_owned()
        };
        if version.is_some() && grpc_health != SERVING && share > 0 {
            problems.push(format!(
                "{color} takes {share} % of traffic and answers HTTP, but its gRPC port {} reports {grpc_health}:                  gRPC calls fail over to the other color; restart it with `cargo xtask up`",
                grpc_addr(&grpc_url)
            ));
        }
        if hung && share > 0 {
            problems.push(format!(
                "{color} takes {share} % of traffic but hangs: it accepts connections without answering within {} s; \
                 nginx passes each of its requests to the other color after the {budget} s latency budget, so they are slow; \
                 restart it with `cargo xtask up`",
                STATUS_PROBE_TIMEOUT.as_secs()
            ));
        } else if version.is_none() && share > 0 {
            problems.push(format!("{color} takes {share} % of traffic but is not healthy (nginx fails over to the other color)"));
        }
        if let (Some(live_v), Some(rec_v)) = (&version, &recorded_version) {
            if live_v != rec_v {
                problems.push(format!(
                    "{color} serves {live_v} but the state records {rec_v}"
                ));
            }
        }
        let (desired_replicas, replicas, replica_problems) =
            super::replicas::gather(ctx, color, &probe);
        if desired_replicas.is_some_and(|n| n > 0) || share > 0 {
            problems.extend(replica_problems);
        }
        colors.push(ColorReport {
            desired_replicas,
            replicas,
            color,
            url: ctx.rt.address_for_people(Part::Color(color)),
            grpc: grpc_addr(&grpc_url),
            grpc_health,
            share,
            running,
            healthy: version.is_some(),
            hung,
            version,
            recorded_version,
        });
    }
    let balancer_url = ctx.rt.url(Part::Balancer);
    let health = crate::http::balancer_answers(&probe, &balancer_url);
    let balancer_grpc = ctx.rt.grpc_url(Part::Balancer);
    let balancer = PartReport {
        running: ctx.rt.is_running(Part::Balancer).unwrap_or(false),
        healthy: health.is_ok(),
        url: balancer_url,
        grpc: grpc_addr(&balancer_grpc),
        grpc_health: grpc_serving(&balancer_grpc),
    };
    if balancer.healthy && balancer.grpc_health != SERVING {
        problems.push(format!(
            "the balancer's gRPC port {} reports {}",
            balancer.grpc, balancer.grpc_health
        ));
    }
    match health {
        Ok(()) => {}
        Err(err) if crate::http::balancer_responds(&probe, &balancer.url).is_ok() => {
            problems.push(format!("{err:#}"));
        }
        Err(_) => problems.push("the balancer does not answer: run `cargo xtask up`".into()),
    }
    let shadow = match super::shadow::reading(ctx) {
        Ok(mirror) => {
            super::shadow::describe(&mirror, ctx.config.balancer.buckets).map(|(color, percent)| {
                format!("{percent} % of prediction requests mirrored to {color}")
            })
        }
        Err(err) => Some(format!("unknown ({err:#})")),
    };
    if let Some(mirror) = &shadow {
        problems.push(format!(
            "shadow: {mirror}; unless a `cargo xtask shadow` or `deploy --shadow` is running, stop it with `cargo xtask shadow --stop`"
        ));
    }
    let ops = ctx.operations()?;
    Ok(Report {
        shadow,
        runtime: ctx.rt.name().into(),
        balancer,
        split: live.split,
        active: live.split.active(),
        generation: live.generation(),
        since: live.recorded.map(|_| state.since.clone()),
        colors,
        problems,
        unrouted: live
            .problem
            .clone()
            .filter(|_| !matches!(live.reading, RouteReading::Active { .. })),
        recent: ops[ops.len().saturating_sub(RECENT)..].to_vec(),
    })
}

const SERVING: &str = "SERVING";

/// What `grpc.health.v1` answers at `grpc_url`, or why it does not.
fn grpc_serving(grpc_url: &str) -> String {
    match crate::grpc::Probe::connect(grpc_url, STATUS_PROBE_TIMEOUT).and_then(|p| p.serving("")) {
        Ok(status) => status.as_str_name().to_owned(),
        Err(err) => format!(
            "no answer ({})",
            crate::util::last_lines(&format!("{err:#}"), 1)
        ),
    }
}

fn grpc_addr(url: &str) -> String {
    crate::grpc::address(url).to_owned()
}

fn health_word(healthy: bool, running: bool) -> &'static str {
    match (healthy, running) {
        (true, _) => "healthy",
        (false, true) => "running, not healthy",
        (false, false) => "down",
    }
}

impl ColorReport {
    fn health_word(&self) -> &'static str {
        if self.hung {
            "hung (accepts connections, does not answer)"
        } else {
            health_word(self.healthy, self.running)
        }
    }
}

pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let active = r.active.map_or_else(
        || format!("split {}", r.split),
        |c| format!("{c} takes all traffic"),
    );
    out += &format!(
        "{active} (generation {}, since {}, {} runtime)\n",
        r.generation,
        r.since.as_deref().unwrap_or("?"),
        r.runtime
    );
    out += &format!(
        "balancer  {}  grpc {}  {}{}\n",
        r.balancer.url,
        r.balancer.grpc,
        health_word(r.balancer.healthy, r.balancer.running),
        grpc_note(r.balancer.healthy, &r.balancer.grpc_health)
    );
    for c in &r.colors {
        out += &format!(
            "{:<8}  {}  grpc {}  {:>3} %  {}  {}{}\n",
            c.color.as_str(),
            c.url,
            c.grpc,
            c.share,
            c.shown_version(),
            c.health_word(),
            grpc_note(c.healthy, &c.grpc_health)
        );
        if let Some(desired) = c.desired_replicas {
            let healthy = c.replicas.iter().filter(|r| r.healthy).count();
            out += &format!("  {healthy} of {desired} replicas healthy\n");
            out += &super::replicas::render_text(&c.replicas);
        }
    }
    for problem in &r.problems {
        out += &format!("problem: {problem}\n");
    }
    if !r.recent.is_empty() {
        out += "recent operations:\n";
        for op in &r.recent {
            out += &format!("  {}\n", history_line(op));
        }
    }
    out
}

pub fn render_markdown(r: &Report) -> String {
    let mut out = String::from("### Deploy status\n\n");
    out += &format!(
        "Traffic: **{}** · route generation {} · runtime {} · since {}\n\n",
        r.split,
        r.generation,
        r.runtime,
        r.since.as_deref().unwrap_or("?")
    );
    out += "| part | url | gRPC | share | version | health |\n| --- | --- | --- | ---: | --- | --- |\n";
    out += &format!(
        "| balancer | {} | {} | | | {}{} |\n",
        r.balancer.url,
        r.balancer.grpc,
        health_word(r.balancer.healthy, r.balancer.running),
        grpc_note(r.balancer.healthy, &r.balancer.grpc_health)
    );
    for c in &r.colors {
        out += &format!(
            "| {} | {} | {} | {} % | {} | {}{} |\n",
            c.color,
            c.url,
            c.grpc,
            c.share,
            c.shown_version(),
            c.health_word(),
            grpc_note(c.healthy, &c.grpc_health)
        );
    }
    if !r.problems.is_empty() {
        out += "\n**Problems**\n\n";
        for problem in &r.problems {
            out += &format!("- {problem}\n");
        }
    }
    if !r.recent.is_empty() {
        out += "\n| time | operation | from | to | result | seconds |\n| --- | --- | --- | --- | --- | ---: |\n";
        for op in &r.recent {
            out += &format!(
                "| {} | {} | {} | {} | {} | {:.2} |\n",
                op.time, op.operation, op.from, op.to, op.result, op.duration_secs
            );
        }
    }
    out
}

/// Nothing when gRPC agrees with HTTP's health; otherwise what gRPC says.
fn grpc_note(healthy: bool, grpc_health: &str) -> String {
    if !healthy || grpc_health == SERVING {
        String::new()
    } else {
        format!(", gRPC {grpc_health}")
    }
}

/// One operation as a line of text.
pub fn history_line(op: &Operation) -> String {
    let mut line = format!(
        "{}  {:<8}  {} → {}  {}  {:.2} s  gen {}",
        op.time, op.operation, op.from, op.to, op.result, op.duration_secs, op.generation
    );
    if let Some(reason) = &op.reason {
        line += &format!("  ({})", reason.lines().next().unwrap_or(""));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Outcome;

    fn example() -> Report {
        let op = Operation {
            time: "2026-01-02T03:04:05Z".into(),
            operation: "canary".into(),
            runtime: "local".into(),
            from: Split::all(Color::Blue),
            to: Split::with(Color::Green, 10),
            split: Split::with(Color::Green, 10),
            versions: [
                (Color::Blue, "v1.0.0".into()),
                (Color::Green, "v1.1.0".into()),
            ]
            .into(),
            result: Outcome::Ok,
            duration_secs: 0.04,
            generation: 4,
            reason: None,
        };
        Report {
            runtime: "local".into(),
            balancer: PartReport {
                url: "http://127.0.0.1:8080".into(),
                grpc: "127.0.0.1:50050".into(),
                running: true,
                healthy: true,
                grpc_health: "SERVING".into(),
            },
            split: Split::with(Color::Green, 10),
            active: None,
            generation: 4,
            since: Some("2026-01-02T03:04:05Z".into()),
            colors: vec![
                ColorReport {
                    color: Color::Blue,
                    url: "http://127.0.0.1:8081".into(),
                    grpc: "127.0.0.1:50051".into(),
                    grpc_health: "NOT_SERVING".into(),
                    share: 90,
                    running: true,
                    healthy: true,
                    hung: false,
                    version: Some("v1.0.0".into()),
                    recorded_version: Some("v1.0.0".into()),
                    desired_replicas: None,
                    replicas: Vec::new(),
                },
                ColorReport {
                    color: Color::Green,
                    url: "http://127.0.0.1:8082".into(),
                    grpc: "127.0.0.1:50052".into(),
                    grpc_health: "not asked (HTTP does not answer)".into(),
                    share: 10,
                    running: false,
                    healthy: false,
                    hung: false,
                    version: None,
                    recorded_version: Some("v1.1.0".into()),
                    desired_replicas: None,
                    replicas: Vec::new(),
                },
            ],
            problems: vec!["green takes 10 % of traffic but is not healthy".into()],
            unrouted: None,
            shadow: None,
            recent: vec![op],
        }
    }

    #[test]
    fn renderings_match_golden_files() {
        for (name, text) in [
            ("xtask/test_data/status.txt", render_text(&example())),
            ("xtask/test_data/status.md", render_markdown(&example())),
        ] {
            crate::util::ensure_file_contents(name, &text);
        }
    }

    #[test]
    fn json_report_names_split_and_problems() {
        let json = serde_json::to_value(example()).unwrap();
        assert_eq!(json["split"], serde_json::json!({"blue": 90, "green": 10}));
        assert_eq!(json["active"], serde_json::Value::Null);
        assert_eq!(json["colors"][1]["healthy"], false);
        assert_eq!(json["problems"].as_array().unwrap().len(), 1);
    }
}
