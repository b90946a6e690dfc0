use super::validate::parse_static;
use super::*;

const MINIMAL: &str = r#"
default_group: g
clusters:
  - name: c
    endpoints: { static: ["10.0.0.1:80"] }
listeners:
  - name: l
    address: 0.0.0.0:8080
    routes: [{ prefix: /, cluster: c }]
groups:
  - name: g
    listeners: [l]
"#;

fn errors_of(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml) {
        Err(ConfigError::Invalid(e)) => e,
        Err(other) => vec![other.to_string()],
        Ok(_) => vec![],
    }
}

#[test]
fn embedded_default_is_valid_and_has_both_groups() {
    let c = Config::embedded_default().expect("embedded default must validate");
    assert_eq!(c.default_group, "voltha");
    assert!(c.groups.iter().any(|g| g.name == "front-proxy"));
    let voltha = c.groups.iter().find(|g| g.name == "voltha").expect("group");
    assert_eq!(c.group_clusters(voltha), vec!["voltha-grpc", "voltha-grpc-RR"]);
    assert_eq!(c.server.xds_listen.addr(), "0.0.0.0:18000".parse().expect("addr"));
    assert_eq!(c.server.admin_listen.addr(), "127.0.0.1:18080".parse().expect("addr"));
    assert_eq!(c.debounce.quiet.0, Duration::from_millis(50));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_yaml(MINIMAL).expect("valid");
    let cl = c.cluster("c").expect("cluster");
    assert_eq!(cl.protocol, Protocol::Http2);
    assert_eq!(cl.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(cl.connect_timeout.0, Duration::from_secs(1));
    assert_eq!(c.listener("l").expect("l").domains, vec!["*"]);
    assert_eq!(c.server.max_names_per_type, 100_000);
}

#[test]
fn unknown_cluster_in_a_route_is_named() {
    let e = errors_of(&MINIMAL.replace("cluster: c }", "cluster: nope }"));
    assert_eq!(e, vec!["listener \"l\" route 1: unknown cluster \"nope\""]);
}

#[test]
fn duplicate_names_are_reported() {
    let yaml = MINIMAL.replace(
        "clusters:\n",
        "clusters:\n  - name: c\n    endpoints: { static: [\"10.0.0.2:80\"] }\n",
    );
    assert_eq!(errors_of(&yaml), vec!["duplicate cluster name \"c\""]);
}

#[test]
fn bad_addresses_are_reported() {
    let e = errors_of(
        &MINIMAL
            .replace("0.0.0.0:8080", "localhost")
            .replace("10.0.0.1:80", "10.0.0.1"),
    );
    assert!(
        e.iter()
            .any(|m| m.contains("listener \"l\": bad address \"localhost\"")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.contains("bad static endpoint \"10.0.0.1\"")),
        "{e:?}"
    );
}

#[test]
fn bad_durations_fail_to_parse_with_the_key_and_position() {
    let yaml = MINIMAL.replace("endpoints: { static", "connect_timeout: 5x\n    endpoints: { static");
    let e = Config::from_yaml(&yaml).expect_err("bad duration");
    let msg = e.to_string();
    assert!(msg.contains("unknown unit \"x\""), "{msg}");
    assert!(msg.contains("line"), "{msg}");
    let e = Config::from_yaml(&MINIMAL.replace("cluster: c }", "cluster: c, timeout: 15 }")).expect_err("unitless");
    assert!(e.to_string().contains("give a unit"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let e = Config::from_yaml(&MINIMAL.replace("default_group: g", "default_group: g\nlisteners_typo: []"))
        .expect_err("typo");
    assert!(e.to_string().contains("unknown field `listeners_typo`"), "{e}");
}

#[test]
fn every_structural_rule_has_a_message() {
    let yaml = r#"
default_group: missing
server: { xds_listen: "nope", max_names_per_type: 0 }
debounce: { quiet: 2s, max_delay: 1s }
sources:
  - { name: s, type: file, path: "", poll_interval: 0s, max_value_bytes: 0 }
clusters:
  - name: rh
    lb_policy: ring_hash
    endpoints: { source: nosuch }
  - name: both
    hash_header: x
    endpoints: { static: ["10.0.0.1:1"], dns: ["a:1"] }
  - name: dns
    endpoints: { dns: ["bad host:80", "nohost"] }
listeners:
  - name: l
    address: 0.0.0.0:80
    tls: { cert_file: "", key_file: k }
    grpc_json_transcoder: { services: [no.Such] }
    routes:
      - { cluster: rh }
      - { prefix: a, path: /b, cluster: rh }
      - { path: /x, prefix_rewrite: /, cluster: rh, timeout: 0s }
      - { prefix: /, cluster: rh, headers: [{ name: h }, { name: x-any, prefix: "" }] }
  - name: l2
    address: 0.0.0.0:80
    routes: [{ prefix: /, cluster: rh }]
groups:
  - { name: g, listeners: [l, l2, nol], clusters: [noc] }
  - { name: empty }
"#;
    let e = errors_of(yaml);
    let want = [
        "server.xds_listen: bad address \"nope\"",
        "server.max_names_per_type must be at least 1",
        "debounce.quiet (2s) must not exceed debounce.max_delay (1s)",
        "source \"s\": path is empty",
        "source \"s\": poll_interval must be above zero",
        "source \"s\": max_value_bytes must be above zero",
        "cluster \"rh\": lb_policy RingHash needs hash_header",
        "cluster \"rh\": unknown source \"nosuch\"",
        "cluster \"both\": hash_header only applies to ring_hash and maglev",
        "cluster \"both\": endpoints needs exactly one of source, static or dns",
        "cluster \"dns\": bad host \"bad host\"",
        "cluster \"dns\": \"nohost\" needs a port",
        "listener \"l\": tls needs cert_file and key_file",
        "the transcoder descriptor set has no service \"no.Such\"",
        "listener \"l\" route 1: needs a prefix or a path",
        "listener \"l\" route 2: give prefix or path, not both",
        "listener \"l\" route 3: prefix_rewrite needs a prefix match",
        "listener \"l\" route 3: timeout 0 is ambiguous",
        "listener \"l\" route 4: header \"h\" needs exactly one of exact or prefix",
        "listener \"l\" route 4: header \"x-any\": an empty prefix matches any value (Envoy and gRPC refuse it)",
        "default_group: unknown group \"missing\"",
        "group \"g\": listeners \"l\" and \"l2\" both use port 80",
        "group \"g\": unknown listener \"nol\"",
        "group \"g\": unknown cluster \"noc\"",
        "group \"empty\": has neither listeners nor clusters",
    ];
    for w in want {
        assert!(e.iter().any(|m| m.contains(w)), "missing error {w:?} in {e:#?}");
    }
}

#[test]
fn every_shipped_config_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            if let Err(e) = Config::from_yaml(&text) {
                panic!("{}: {e}", path.display());
            }
            checked.push(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    assert!(checked.iter().any(|n| n == "voltha-etcd.yaml"), "{checked:?}");
    assert!(checked.iter().any(|n| n == "voltha-consul.yaml"), "{checked:?}");
    assert!(checked.iter().any(|n| n == "voltha-kubernetes.yaml"), "{checked:?}");
    assert!(checked.iter().any(|n| n == "voltha-xds.yaml"), "{checked:?}");
}

#[test]
fn etcd_source_errors_are_named() {
    let yaml = format!(
        "{MINIMAL}{}",
        r#"sources: [{ name: kv, type: etcd, endpoints: ["etcd", "http://:1"], key: "", password: x, cert_file: /c, dial_timeout: 0s, backoff: { initial: 2s, max: 1s }, max_value_bytes: 0, probe_interval: 0s }]"#
    );
    let e = errors_of(&yaml);
    for want in [
        "source \"kv\": probe_interval must be above zero",
        "source \"kv\": key is empty",
        "source \"kv\": endpoint \"etcd\": needs a host and a port",
        "source \"kv\": endpoint \"http://:1\": needs a host and a port",
        "source \"kv\": a password needs a username",
        "source \"kv\": cert_file and key_file go together",
        "source \"kv\": dial_timeout must be above zero",
        "source \"kv\": backoff.initial must be above zero and at most backoff.max",
        "source \"kv\": max_value_bytes must be above zero",
    ] {
        assert!(e.iter().any(|x| x == want), "missing {want:?} in {e:?}");
    }
}

#[test]
fn a_transcoder_descriptor_file_is_read_once_at_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("voltha.pb");
    std::fs::write(&path, crate::proto::VOLTHA_DESCRIPTOR).expect("write");
    let yaml = MINIMAL.replace(
        "    routes: [{ prefix: /, cluster: c }]",
        &format!(
            "    grpc_json_transcoder: {{ services: [voltha.HealthService], descriptor_file: \"{}\" }}\n    routes: [{{ prefix: /, cluster: c }}]",
            path.display()
        ),
    );
    let c = Config::from_yaml(&yaml).expect("valid");
    // Gone after load: translation still has the bytes.
    std::fs::remove_file(&path).expect("rm");
    let t = c.listeners[0].grpc_json_transcoder.as_ref().expect("transcoder");
    assert_eq!(
        t.descriptor.as_deref().map(Vec::as_slice),
        Some(crate::proto::VOLTHA_DESCRIPTOR)
    );
    assert!(crate::translate::translate(&crate::model::Model::default(), &c).is_ok());
    // A missing file is a load error, named once.
    let e = errors_of(&yaml);
    assert_eq!(
        e.iter().filter(|x| x.contains("cannot read descriptor_file")).count(),
        1,
        "{e:?}"
    );
}

#[test]
fn file_source_defaults() {
    let yaml = format!("{MINIMAL}sources: [{{ name: f, type: file, path: a.json }}]\n");
    let c = Config::from_yaml(&yaml).expect("valid");
    let SourceConfig::File {
        poll_interval,
        max_value_bytes,
        ..
    } = &c.sources[0]
    else {
        panic!("not a file source: {:?}", c.sources[0]);
    };
    assert_eq!(
        (poll_interval.0, *max_value_bytes),
        (Duration::from_millis(250), 4 << 20)
    );
    let yaml = format!("{MINIMAL}sources: [{{ name: f, type: file, path: a.json, max_value_bytes: 1024 }}]\n");
    let c = Config::from_yaml(&yaml).expect("valid");
    assert!(matches!(
        &c.sources[0],
        SourceConfig::File {
            max_value_bytes: 1024,
            ..
        }
    ));
}

#[test]
fn consul_source_defaults() {
    let yaml = format!("{MINIMAL}sources: [{{ name: kv, type: consul }}]\n");
    let c = Config::from_yaml(&yaml).expect("valid");
    let SourceConfig::Consul(s) = &c.sources[0] else {
        panic!("not a consul source: {:?}", c.sources[0]);
    };
    assert_eq!(s.key, "service/voltha/data/core/assignment");
    assert_eq!(s.address, None, "no address: CONSUL_HTTP_ADDR decides at start");
    assert_eq!(s.format, FileFormat::VolthaAssignment);
    assert_eq!(s.consistency, ConsulConsistency::Consistent);
    assert_eq!(s.wait.0, Duration::from_secs(300));
    assert_eq!(s.min_interval.0, Duration::from_millis(100));
    assert_eq!(
        (s.backoff.initial.0, s.backoff.max.0),
        (Duration::from_millis(100), Duration::from_secs(30))
    );
    assert_eq!(s.max_value_bytes, 4 << 20);
    assert_eq!(s.probe_interval.0, Duration::from_millis(500));
    for (mode, want) in [
        ("default", ConsulConsistency::Default),
        ("consistent", ConsulConsistency::Consistent),
        ("stale", ConsulConsistency::Stale),
    ] {
        let yaml = format!("{MINIMAL}sources: [{{ name: kv, type: consul, consistency: {mode} }}]\n");
        let c = Config::from_yaml(&yaml).expect("valid");
        assert!(
            matches!(&c.sources[0], SourceConfig::Consul(s) if s.consistency == want),
            "{mode}"
        );
    }
}

#[test]
fn consul_source_errors_are_named() {
    let yaml = format!(
        "{MINIMAL}{}",
        r#"sources: [{ name: kv, type: consul, address: "http://consul:8500/v1", key: "/", token: t, token_file: /t, wait: 20m, min_interval: 0s, backoff: { initial: 0s, max: 1s }, max_value_bytes: 0, probe_interval: 0s }]"#
    );
    let e = errors_of(&yaml);
    for want in [
        "source \"kv\": key is empty",
        "source \"kv\": address \"http://consul:8500/v1\": expected host:port or http(s)://host:port",
        "source \"kv\": give token or token_file, not both",
        "source \"kv\": wait must be between 1s and 10m (Consul's limit)",
        "source \"kv\": min_interval must be above zero and at most wait",
        "source \"kv\": backoff.initial must be above zero and at most backoff.max",
        "source \"kv\": max_value_bytes must be above zero",
        "source \"kv\": probe_interval must be above zero",
    ] {
        assert!(e.iter().any(|x| x == want), "missing {want:?} in {e:?}");
    }
    let tls = format!(
        "{MINIMAL}sources: [{{ name: kv, type: consul, cert_file: /c.pem, tls_server_name: \"not a name\" }}]\n"
    );
    assert_eq!(
        errors_of(&tls),
        vec![
            "source \"kv\": cert_file and key_file go together".to_string(),
            "source \"kv\": tls_server_name \"not a name\" is not a DNS name or an IP address".to_string()
        ]
    );
    let short = format!("{MINIMAL}sources: [{{ name: kv, type: consul, wait: 1s, min_interval: 2s }}]\n");
    assert_eq!(
        errors_of(&short),
        vec!["source \"kv\": min_interval must be above zero and at most wait".to_string()]
    );
    // Unknown keys and modes are refused at parse time.
    let typo = format!("{MINIMAL}sources: [{{ name: kv, type: consul, adress: x }}]\n");
    assert!(
        errors_of(&typo).iter().any(|x| x.contains("unknown field `adress`")),
        "{:?}",
        errors_of(&typo)
    );
    let mode = format!("{MINIMAL}sources: [{{ name: kv, type: consul, consistency: strong }}]\n");
    assert!(
        errors_of(&mode).iter().any(|x| x.contains("unknown variant `strong`")),
        "{:?}",
        errors_of(&mode)
    );
    // Addresses as Consul's tools take them.
    for ok in [
        "127.0.0.1:8500",
        "consul:8500",
        "http://consul:8500",
        "https://consul.example:8501/",
    ] {
        let yaml = format!("{MINIMAL}sources: [{{ name: kv, type: consul, address: \"{ok}\" }}]\n");
        assert_eq!(errors_of(&yaml), Vec::<String>::new(), "{ok}");
    }
}

#[test]
fn server_limits_are_checked() {
    let yaml = r#"
default_group: g
groups: [{ name: g, clusters: [c] }]
server:
  max_streams: 0
  max_connections: 9999999999999999999
  max_streams_per_connection: 0
  max_request_bytes: 10
  csds: { max_concurrent_requests: 0, max_response_bytes: 10, stream_requests_per_second: 0, stream_burst: 0 }
  keepalive_interval: 10s
  keepalive_timeout: 0s
  tls: { cert_file: " ", key_file: k.pem, reload_interval: 1ms }
clusters:
  - { name: c, endpoints: { static: ["127.0.0.1:1"] } }
"#;
    let e = errors_of(yaml);
    let want = [
        "server.max_streams must be at least 1",
        "server.max_connections (9999999999999999999) must be at most",
        "server.max_streams_per_connection must be at least 1",
        "server.max_request_bytes (10) must be between 1024 and",
        "server.csds.max_concurrent_requests (0) must be between 1 and",
        "server.csds.max_response_bytes (10) must be between 1024 and",
        "server.csds.stream_requests_per_second (0) must be above 0",
        "server.csds.stream_burst (0) must be between 1 and 1000",
        "server.keepalive_timeout must be above zero when keepalive_interval is set",
        "server.tls.cert_file must not be empty",
        "server.tls.reload_interval (1ms) must be at least 10ms",
    ];
    for w in want {
        assert!(e.iter().any(|m| m.contains(w)), "missing error {w:?} in {e:#?}");
    }
}

#[test]
fn the_debug_api_has_a_listener_of_its_own() {
    let c = Config::from_yaml(MINIMAL).expect("valid");
    assert_eq!(c.server.admin_listen.text(), "127.0.0.1:18080");
    assert_eq!(c.server.admin_debug_listen.text(), "127.0.0.1:18081");
    let with = |admin: &str, debug: &str| {
        errors_of(&format!(
            "{MINIMAL}server: {{ admin_listen: \"{admin}\", admin_debug_listen: \"{debug}\" }}\n"
        ))
    };
    for (admin, debug) in [("127.0.0.1:9000", "127.0.0.1:9000"), ("0.0.0.0:9000", "127.0.0.1:9000")] {
        assert_eq!(
            with(admin, debug),
            vec![format!(
                "server.admin_debug_listen ({debug}) must not share server.admin_listen's address \
                 ({admin}): the debug API has a listener of its own"
            )]
        );
    }
    for (admin, debug) in [
        ("0.0.0.0:18080", "127.0.0.1:18081"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("10.0.0.1:9000", "127.0.0.1:9000"),
    ] {
        assert_eq!(with(admin, debug), Vec::<String>::new(), "{admin} {debug}");
    }
    assert_eq!(
        with("127.0.0.1:18080", "localhost:18081"),
        vec!["server.admin_debug_listen: bad address \"localhost:18081\" (expected ip:port, e.g. 0.0.0.0:18000)"]
    );
}

/// Port 0 is refused in every form: `ip:port` as well as `host:port` and a default port (an
/// endpoint at port 0 takes no connection). Found by the `assignment` fuzz target: an endpoint
/// set `{"a": ["10.0.0.1:0"]}` from a source was accepted with port 0.
#[test]
fn port_0_is_refused_in_every_form() {
    for s in ["10.0.0.1:0", "[fd00::1]:0", "vcore-0.voltha:0"] {
        for default in [None, Some(80)] {
            let e = parse_host_port(s, default).expect_err(s);
            assert!(e.contains("port 0"), "{s}: {e}");
        }
    }
    assert!(parse_host_port("vcore-0.voltha", Some(0)).is_err());
    for (s, default) in [("10.0.0.1:0", None), ("[fd00::1]:0", Some(80)), ("10.0.0.1", Some(0))] {
        let e = parse_static(s, default).expect_err(s);
        assert!(e.contains("port 0"), "{s}: {e}");
    }
    // From a source: the value is refused whole (the last good state is kept).
    let e = crate::sources::assignment::parse_endpoint_sets(br#"{"a": ["10.0.0.2:80", "10.0.0.1:0"]}"#)
        .expect_err("port 0");
    assert!(e.to_string().contains("port 0"), "{e}");
    // In the configuration: a static and a DNS endpoint.
    let e = errors_of(&MINIMAL.replace("10.0.0.1:80", "10.0.0.1:0"));
    assert!(e.iter().any(|x| x.contains("port 0")), "{e:?}");
    let dns = MINIMAL.replace(r#"static: ["10.0.0.1:80"]"#, r#"dns: ["10.0.0.1:0"]"#);
    let e = errors_of(&dns);
    assert!(e.iter().any(|x| x.contains("port 0")), "{e:?}");
}
