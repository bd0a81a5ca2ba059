use super::*;

#[test]
fn committed_file_matches_the_defaults() {
    let text = std::fs::read_to_string(crate::util::project_root().join("deploy.toml")).unwrap();
    assert_eq!(parse(&text).unwrap(), DeployConfig::default());
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(parse("").unwrap(), DeployConfig::default());
}

#[test]
fn values_override_the_defaults() {
    let config =
        parse("[balancer]\nport = 9000\ngrpc_port = 9001\nbuckets = 20\nread_timeout_secs = 7\n[green]\nversion = \"v2.0.0\"\n")
            .unwrap();
    assert_eq!(
        config.balancer,
        Balancer {
            port: 9000,
            grpc_port: 9001,
            buckets: 20,
            read_timeout: Duration::from_secs(7),
        }
    );
    assert_eq!(config.green.version, "v2.0.0");
    assert_eq!(config.green.port, defaults::GREEN_PORT);
    assert_eq!(config.green.grpc_port, defaults::GREEN_GRPC_PORT);
    let err = parse("[blue]\ngrpc_port = 8080\n").unwrap_err().to_string();
    assert!(
        err.contains("`balancer.port` and `blue.grpc_port` are both 8080"),
        "{err}"
    );
}

#[test]
fn testers_are_off_by_default_and_checked_when_set() {
    assert!(!DeployConfig::default().testers.enabled);
    let config =
        parse("[testers]\nenabled = true\nheader = \"X-Try\"\ntoken = \"0123456789abcdef\"\n")
            .unwrap();
    assert_eq!(
        config.testers,
        Testers {
            enabled: true,
            header: "X-Try".into(),
            cookie: defaults::TESTERS_COOKIE.into(),
            token: "0123456789abcdef".into(),
        }
    );
    for (text, message) in [
        ("[testers]\nenabled = 1", "must be true or false"),
        ("[testers]\nheader = \"X Try\"", "`testers.header`"),
        ("[testers]\ncookie = \"a;b\"", "`testers.cookie`"),
        ("[testers]\ntoken = \"short\"", "at least 16"),
        ("[testers]\ntoken = \"has a space in it!!\"", "at least 16"),
    ] {
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains(message), "{text}: {err}");
    }
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            "[balancer]\nport = \"x\"",
            "`balancer.port` must be an integer",
        ),
        (
            "[balancer]\nport = 70000",
            "`balancer.port` = 70000 is out of range",
        ),
        (
            "[balancer]\nbuckets = 0",
            "`balancer.buckets` = 0 is out of range",
        ),
        ("[blue]\nversion = 3", "`blue.version` must be a string"),
        ("[blue]\nversion = \"../etc\"", "`blue.version`"),
        ("[local]\nstate_dir = \"\"", "`local.state_dir` is empty"),
        ("blue = 1", "`blue` must be a table"),
        (
            "[green]\nport = 8081",
            "`blue.port` and `green.port` are both 8081",
        ),
        ("[timeouts\n", "parse TOML"),
    ];
    for (text, expected) in cases {
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(
            err.contains(expected),
            "{text:?}: {err:?} lacks {expected:?}"
        );
    }
}
