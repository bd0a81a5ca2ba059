use super::*;

fn local_example() -> NginxParams {
    NginxParams {
        listen: "127.0.0.1:8080".into(),
        blue: "127.0.0.1:8081".into(),
        green: "127.0.0.1:8082".into(),
        grpc_listen: "127.0.0.1:50050".into(),
        blue_grpc: "127.0.0.1:50051".into(),
        green_grpc: "127.0.0.1:50052".into(),
        route_dir: "/srv/mldeploy/routes".into(),
        shadow_dir: "/srv/mldeploy/shadow".into(),
        shadow_timeout_ms: 200,
        buckets: 4,
        pid_path: "/srv/mldeploy/nginx/nginx.pid".into(),
        error_log: "/srv/mldeploy/nginx/logs/error.log".into(),
        access_log: "/srv/mldeploy/nginx/logs/access.log".into(),
        temp_dir: "/srv/mldeploy/nginx/temp".into(),
        read_timeout_secs: 3,
        testers: None,
        resolver: None,
        color_prefixes: Vec::new(),
    }
}

/// The swarm runtime's parameters: colors by name, resolved per request, told apart by subnet.
fn swarm_example() -> NginxParams {
    NginxParams {
        blue: "blue:8080".into(),
        green: "green:8080".into(),
        blue_grpc: "blue:50051".into(),
        green_grpc: "green:50051".into(),
        resolver: Some("127.0.0.11".into()),
        color_prefixes: vec![
            (crate::domain::Color::Blue, "10.77.11.".into()),
            (crate::domain::Color::Green, "10.77.12.".into()),
        ],
        ..NginxParams::container_default()
    }
}

#[test]
fn swarm_config_matches_golden_file() {
    check_golden(
        "xtask/test_data/nginx.swarm.conf",
        &render(&swarm_example()),
    );
}

#[test]
fn swarm_config_never_names_a_color_in_an_upstream_block() {
    // nginx resolves an upstream block's names once, at load, and refuses to start when one has
    // no address (a color scaled to 0): every color address must be a per-request variable.
    let conf = render(&swarm_example());
    assert!(!conf.contains("\n    upstream "), "{conf}");
    for expected in [
        "resolver 127.0.0.11 valid=1s ipv6=off;",
        "proxy_pass http://$color_http;",
        "error_page 502 504 = @failover;",
        "proxy_pass http://$other_http;",
        "grpc_pass grpc://$color_grpc;",
        "grpc_pass grpc://$other_grpc;",
        "proxy_pass http://$shadow_http$request_uri;",
        "grpc_pass grpc://$shadow_grpc;",
        "\"~[| ]10\\.77\\.11\\.[0-9.]*:[0-9]+$\" blue;",
    ] {
        assert!(conf.contains(expected), "missing {expected:?} in\n{conf}");
    }
}

#[test]
fn testers_pick_a_color_with_the_token_only() {
    let mut p = local_example();
    assert!(!render(&p).contains("tester"));
    p.testers = Some(crate::config::Testers {
        enabled: true,
        header: "X-Deploy-Color".into(),
        cookie: "deploy_color".into(),
        token: "abc-def.0123456789".into(),
    });
    let conf = render(&p);
    for expected in [
        "map \"$http_x_deploy_color|$cookie_deploy_color\" $tester_pick {",
        "map \"$http_x_deploy_token|$cookie_deploy_token\" $tester_allowed {",
        "\"~^abc\\-def\\.0123456789\\|\" 1;",
        "\"~^1:(?<c>blue|green)$\" $c;",
        "            if ($tester_color) {\n                set $color $tester_color;\n            }",
    ] {
        assert!(conf.contains(expected), "{expected} missing from:\n{conf}");
    }
    // The tester's pick comes after the bucket's, so it wins.
    assert!(
        conf.find("set $color $tester_color").unwrap() > conf.find("set $color green").unwrap()
    );
}

fn check_golden(name: &str, actual: &str) {
    crate::util::ensure_file_contents(name, actual);
}

#[test]
fn local_config_matches_golden_file() {
    check_golden(
        "xtask/test_data/nginx.local.conf",
        &render(&local_example()),
    );
}

#[test]
fn committed_container_config_is_the_rendering_of_its_defaults() {
    check_golden(
        "nginx/nginx.conf",
        &render(&NginxParams::container_default()),
    );
}

#[test]
fn shares_cover_exactly_one_hundred_percent() {
    for buckets in [1, 3, 7, 100, 333, 10_000] {
        let shares = bucket_shares(buckets);
        assert_eq!(shares.len(), usize::from(buckets));
        let listed: u32 = shares.iter().flatten().sum();
        assert!(listed < 10_000 || buckets == 1, "{buckets}: {listed}");
        assert_eq!(shares.last(), Some(&None));
    }
    assert_eq!(percent(100), "1");
    assert_eq!(percent(3333), "33.33");
    assert_eq!(percent(50), "0.5");
}

#[test]
fn served_by_map_only_for_ip_addresses() {
    let text = render(&NginxParams::container_default());
    assert!(!text.contains("\"~[| ]"), "host names get no address rule");
    let text = render(&local_example());
    assert!(
        text.contains(r#""~[| ]127\.0\.0\.1:8081$" blue;"#),
        "{text}"
    );
    assert!(is_ip_literal("[::1]:80"));
    assert!(!is_ip_literal("blue:8080"));
}

#[test]
fn paths_are_quoted() {
    let mut p = local_example();
    p.route_dir = "/a dir/with\"quote".into();
    assert!(render(&p).contains(r#"if (-f "/a dir/with\"quote/current/$bucket") {"#));
}
