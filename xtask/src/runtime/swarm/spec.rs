//! The stack's names and its services' definitions, as the `docker service` arguments that
//! make them: pure functions, so what the swarm runs is unit-tested and readable in one place.
//!
//! Every object the swarm runtime creates carries the label `com.docker.stack.namespace=<stack>`
//! (the label `docker stack deploy` sets), so `docker stack ps <stack>` and `docker stack
//! services <stack>` show the deployment, and `down` finds everything it made by that label.

use crate::{
    config::{DeployConfig, EndpointMode},
    domain::Color,
    runtime::{
        compose::{BALANCER_GRPC_PORT, CONTAINER_GRPC_PORT, CONTAINER_PORT, STATE_DIR},
        Part,
    },
};

/// The label that ties objects to the stack.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// The node label `up` sets on the manager when it created the swarm: `down` then leaves it.
pub const CREATED_SWARM_LABEL: &str = "mldeploy.created-swarm";
/// How long a stopping task may drain before it is killed (as the compose runtime).
pub const STOP_GRACE: &str = "10s";

/// The stack's object names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub stack: String,
}

impl Names {
    /// `nginx`, `blue`, `green` prefixed by the stack, like `docker stack deploy` names them.
    pub fn service(&self, part: Part) -> String {
        match part {
            Part::Balancer => format!("{}_nginx", self.stack),
            Part::Color(color) => format!("{}_{color}", self.stack),
        }
    }
    /// Each color's overlay network; the balancer joins both.
    pub fn network(&self, color: Color) -> String {
        format!("{}_{color}", self.stack)
    }
    /// The state volume on the manager that runs the balancer.
    pub fn volume(&self) -> String {
        format!("{}_state", self.stack)
    }
    /// The stopped helper container that seeds the volume before the balancer first starts.
    pub fn seed(&self) -> String {
        format!("{}_seed", self.stack)
    }
}

/// `docker network create` arguments for `color`'s network.
pub fn network_args(names: &Names, config: &DeployConfig, color: Color) -> Vec<String> {
    let subnet = match color {
        Color::Blue => &config.swarm.blue_subnet,
        Color::Green => &config.swarm.green_subnet,
    };
    strings(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        subnet,
        "--label",
        &format!("{STACK_LABEL}={}", names.stack),
        &names.network(color),
    ])
}

/// The environment a color's tasks run with: the model version and where it is.
pub fn color_env(version: &str) -> Vec<String> {
    vec![
        format!("MODEL_VERSION={version}"),
        format!("MODEL_PATH=/models/{version}"),
    ]
}

/// `docker service create` arguments for `color` with `replicas` tasks serving `version`.
///
/// - Hardened like the compose containers: a read-only root, no capabilities. (Swarm services
///   have no `no-new-privileges`; the image runs as an unprivileged user without setuid files.)
/// - Health: the image's own `HEALTHCHECK` (`/ml-service healthcheck`, every 2 s); swarm
///   counts a task as running once it is healthy, and replaces one that turns unhealthy.
/// - Updates start the new task first, one at a time, watch it 5 s, and roll back on failure,
///   so a bad version never takes a replica away.
/// - Placement spreads the replicas over the nodes.
pub fn color_create_args(
    names: &Names,
    config: &DeployConfig,
    color: Color,
    version: &str,
    replicas: u32,
    image: &str,
) -> Vec<String> {
    let mut args = strings(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &names.service(Part::Color(color)),
        "--label",
        &format!("{STACK_LABEL}={}", names.stack),
        "--container-label",
        &format!("{STACK_LABEL}={}", names.stack),
        "--replicas",
        &replicas.to_string(),
        "--endpoint-mode",
        config.swarm.endpoint_mode.as_str(),
        "--network",
        &format!("name={},alias={color}", names.network(color)),
        "--env",
        "HOST=0.0.0.0",
        "--env",
        &format!("PORT={CONTAINER_PORT}"),
        "--env",
        &format!("GRPC_PORT={CONTAINER_GRPC_PORT}"),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--stop-grace-period",
        STOP_GRACE,
        "--restart-condition",
        "any",
        "--restart-delay",
        "1s",
        "--placement-pref",
        "spread=node.id",
    ]);
    for env in color_env(version) {
        args.extend(["--env".to_owned(), env]);
    }
    args.extend(update_policy());
    args.extend(strings(&["--no-resolve-image", image]));
    args
}

/// `docker service update` arguments that put `version` (and `image`) on `color`, replica by
/// replica, starting each new task before its old one stops.
pub fn color_update_args(
    names: &Names,
    color: Color,
    version: &str,
    image: &str,
    replicas: Option<u32>,
) -> Vec<String> {
    let mut args = strings(&["service", "update", "--detach", "--quiet"]);
    for env in color_env(version) {
        args.extend(["--env-add".to_owned(), env]);
    }
    args.extend(update_policy());
    if let Some(replicas) = replicas {
        args.extend(["--replicas".to_owned(), replicas.to_string()]);
    }
    args.extend(strings(&[
        "--image",
        image,
        "--no-resolve-image",
        &names.service(Part::Color(color)),
    ]));
    args
}

fn update_policy() -> Vec<String> {
    strings(&[
        "--update-order",
        "start-first",
        "--update-parallelism",
        "1",
        "--update-monitor",
        "5s",
        "--update-failure-action",
        "rollback",
        "--rollback-order",
        "start-first",
    ])
}

/// `docker service create` arguments for the balancer: one nginx task pinned to the manager
/// node `node_id` (the state volume is local to it), on both colors' networks, its ports
/// published on that node (`mode=host`: no routing mesh needed), hardened like the compose
/// balancer (read-only root, a tmpfs for `/tmp`, only the capabilities nginx's master needs).
pub fn balancer_create_args(
    names: &Names,
    config: &DeployConfig,
    node_id: &str,
    image: &str,
) -> Vec<String> {
    let conf = format!("{STATE_DIR}/nginx/nginx.conf");
    strings(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &names.service(Part::Balancer),
        "--label",
        &format!("{STACK_LABEL}={}", names.stack),
        "--container-label",
        &format!("{STACK_LABEL}={}", names.stack),
        "--replicas",
        "1",
        "--constraint",
        &format!("node.id=={node_id}"),
        "--mount",
        &format!("type=volume,source={},target={STATE_DIR}", names.volume()),
        "--mount",
        "type=tmpfs,target=/tmp",
        "--network",
        &names.network(Color::Blue),
        "--network",
        &names.network(Color::Green),
        "--publish",
        &format!(
            "mode=host,published={},target={CONTAINER_PORT}",
            config.balancer.port
        ),
        "--publish",
        &format!(
            "mode=host,published={},target={BALANCER_GRPC_PORT}",
            config.balancer.grpc_port
        ),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CHOWN",
        "--cap-add",
        "SETGID",
        "--cap-add",
        "SETUID",
        "--stop-signal",
        "SIGQUIT",
        "--stop-grace-period",
        STOP_GRACE,
        "--restart-condition",
        "any",
        "--restart-delay",
        "1s",
        // The host ports are the node's: the old task must free them first.
        "--update-order",
        "stop-first",
        // Resolving per request, nginx opens a connection per request to a replica (no
        // upstream keep-alive) and closes it, leaving it in TIME_WAIT for 60 s: with the
        // default 28 000 local ports, a few hundred requests a second to one replica run out
        // of ports and stall. Reusing TIME_WAIT ports for new connections (safe with TCP
        // timestamps) and a wider range keep thousands a second flowing.
        "--sysctl",
        "net.ipv4.tcp_tw_reuse=1",
        "--sysctl",
        "net.ipv4.ip_local_port_range=10000 65535",
        "--entrypoint",
        &format!("nginx -e /dev/stderr -c {conf} -g 'daemon off;'"),
        "--no-resolve-image",
        image,
    ])
}

/// Which endpoint mode the colors use, for messages.
pub fn endpoint_note(mode: EndpointMode) -> &'static str {
    match mode {
        EndpointMode::Dnsrr => "Docker's DNS lists every replica; nginx resolves it per request",
        EndpointMode::Vip => "one virtual IP per color, balanced by the kernel's IPVS",
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            stack: "demo".into(),
        }
    }

    fn pairs(args: &[String]) -> Vec<(String, String)> {
        args.windows(2)
            .filter(|w| w[0].starts_with("--"))
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    }

    #[test]
    fn a_color_is_hardened_health_checked_and_updated_start_first() {
        let config = DeployConfig::default();
        let args = color_create_args(&names(), &config, Color::Green, "v1.1.0", 3, "ml:1");
        let has = |k: &str, v: &str| pairs(&args).contains(&(k.to_owned(), v.to_owned()));
        assert!(has("--name", "demo_green"));
        assert!(has("--replicas", "3"));
        assert!(has("--endpoint-mode", "dnsrr"));
        assert!(has("--network", "name=demo_green,alias=green"));
        assert!(has("--env", "MODEL_VERSION=v1.1.0"));
        assert!(has("--env", "MODEL_PATH=/models/v1.1.0"));
        assert!(has("--cap-drop", "ALL"));
        assert!(has("--update-order", "start-first"));
        assert!(has("--update-failure-action", "rollback"));
        assert!(has("--label", "com.docker.stack.namespace=demo"));
        assert!(args.contains(&"--read-only".to_owned()));
        assert_eq!(args.last().unwrap(), "ml:1");
        // The image's exec-form HEALTHCHECK is used: a --health-cmd would need a shell.
        assert!(!args.iter().any(|a| a == "--health-cmd"));
    }

    #[test]
    fn an_update_changes_version_and_image_and_keeps_the_policy() {
        let args = color_update_args(&names(), Color::Blue, "v1.1.0", "ml:2", None);
        let p = pairs(&args);
        assert!(p.contains(&("--env-add".into(), "MODEL_VERSION=v1.1.0".into())));
        assert!(p.contains(&("--image".into(), "ml:2".into())));
        assert!(p.contains(&("--update-order".into(), "start-first".into())));
        assert!(!args.contains(&"--replicas".to_owned()));
        assert_eq!(args.last().unwrap(), "demo_blue");
        let scaled = color_update_args(&names(), Color::Blue, "v1", "ml", Some(2));
        assert!(pairs(&scaled).contains(&("--replicas".into(), "2".into())));
    }

    #[test]
    fn the_balancer_is_pinned_to_its_node_and_publishes_on_it() {
        let config = DeployConfig::default();
        let args = balancer_create_args(&names(), &config, "node1", "nginx:x");
        let has = |k: &str, v: &str| pairs(&args).contains(&(k.to_owned(), v.to_owned()));
        assert!(has("--constraint", "node.id==node1"));
        assert!(has("--publish", "mode=host,published=8080,target=8080"));
        assert!(has("--publish", "mode=host,published=50050,target=50050"));
        assert!(has("--network", "demo_blue"));
        assert!(has("--network", "demo_green"));
        assert!(has(
            "--mount",
            "type=volume,source=demo_state,target=/var/lib/mldeploy"
        ));
        assert!(has("--stop-signal", "SIGQUIT"));
        assert!(has("--sysctl", "net.ipv4.tcp_tw_reuse=1"));
    }

    #[test]
    fn networks_take_the_configured_subnets() {
        let config = DeployConfig::default();
        let args = network_args(&names(), &config, Color::Blue);
        assert!(pairs(&args).contains(&("--subnet".into(), "10.77.11.0/24".into())));
        assert_eq!(args.last().unwrap(), "demo_blue");
    }
}
