use super::*;

const BASE: &str = r#"
server:
  xds_listen: 127.0.0.1:18000
  admin_listen: 127.0.0.1:18080
  admin_debug_listen: 127.0.0.1:18081
default_group: g
sources:
  - { name: a, type: file, path: /tmp/a.json }
  - { name: b, type: file, path: /tmp/b.json }
clusters:
  - name: c
    endpoints: { source: a, port: 80 }
  - name: d
    endpoints: { source: b, port: 80 }
groups:
  - { name: g, clusters: [c, d] }
"#;

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"))
}

/// `BASE` with `from` replaced by `to` (which must occur once).
fn edited(from: &str, to: &str) -> Config {
    assert_eq!(BASE.matches(from).count(), 1, "{from}");
    config(&BASE.replacen(from, to, 1))
}

#[test]
fn the_same_configuration_is_neither_refused_nor_restarts_anything() {
    let (a, b) = (config(BASE), config(BASE));
    assert!(refusals(&a, &b).is_empty());
    assert_eq!(
        source_plan(&a.sources, &b.sources),
        (vec![SourceChange::Keep, SourceChange::Keep], vec![])
    );
}

#[test]
fn every_listener_bound_server_key_is_refused_by_name() {
    let base = config(BASE);
    let cases = [
        (
            "xds_listen: 127.0.0.1:18000",
            "xds_listen: 127.0.0.1:18001",
            "server.xds_listen",
        ),
        (
            "admin_listen: 127.0.0.1:18080",
            "admin_listen: 127.0.0.1:18090",
            "server.admin_listen",
        ),
        (
            "admin_debug_listen: 127.0.0.1:18081",
            "admin_debug_listen: 127.0.0.1:18091",
            "server.admin_debug_listen",
        ),
    ];
    for (from, to, key) in cases {
        let r = refusals(&base, &edited(from, to));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with(&format!("{key} cannot change without a restart")),
            "{}",
            r[0]
        );
    }
    let server_keys = [
        ("max_names_per_type: 5", "server.max_names_per_type"),
        ("max_streams: 5", "server.max_streams"),
        ("max_connections: 5", "server.max_connections"),
        ("max_streams_per_connection: 5", "server.max_streams_per_connection"),
        ("max_request_bytes: 5000", "server.max_request_bytes"),
        ("keepalive_interval: 5s", "server.keepalive_interval"),
        ("keepalive_timeout: 5s", "server.keepalive_timeout"),
        (
            "csds: { max_concurrent_requests: 2 }",
            "server.csds.max_concurrent_requests",
        ),
        ("csds: { max_response_bytes: 5000 }", "server.csds.max_response_bytes"),
        (
            "csds: { stream_requests_per_second: 2.5 }",
            "server.csds.stream_requests_per_second",
        ),
        ("csds: { stream_burst: 2 }", "server.csds.stream_burst"),
        ("tls: { cert_file: /c.pem, key_file: /k.pem }", "server.tls"),
    ];
    for (line, key) in server_keys {
        let new = edited("server:\n", &format!("server:\n  {line}\n"));
        let r = refusals(&base, &new);
        assert_eq!(r.len(), 1, "{line}: {r:?}");
        assert!(r[0].starts_with(&format!("{key} cannot change")), "{}", r[0]);
        // And back: the key is refused whichever side has it.
        assert_eq!(refusals(&new, &base).len(), 1, "{line}");
    }
}

#[test]
fn a_refusal_names_both_values_quoted() {
    let r = refusals(
        &config(BASE),
        &edited("xds_listen: 127.0.0.1:18000", "xds_listen: 127.0.0.1:19000"),
    );
    assert_eq!(
        r,
        vec![
            "server.xds_listen cannot change without a restart (running \"127.0.0.1:18000\", new \
              \"127.0.0.1:19000\"); the running configuration is kept: restore the value, or \
              restart to apply it"
                .to_string()
        ]
    );
}

#[test]
fn each_tls_file_path_is_refused_by_name() {
    let tls = "server:\n  tls: { cert_file: /c.pem, key_file: /k.pem, client_ca_file: /ca.pem }\n";
    let base = edited("server:\n", tls);
    for (from, to, key) in [
        ("/c.pem", "/c2.pem", "server.tls.cert_file"),
        ("/k.pem", "/k2.pem", "server.tls.key_file"),
        ("/ca.pem", "/ca2.pem", "server.tls.client_ca_file"),
        (", client_ca_file: /ca.pem", "", "server.tls.client_ca_file"),
    ] {
        let new = edited("server:\n", &tls.replace(from, to));
        let r = refusals(&base, &new);
        assert_eq!(r.len(), 1, "{key}: {r:?}");
        assert!(r[0].starts_with(&format!("{key} cannot change")), "{}", r[0]);
    }
    let new = edited("server:\n", &tls.replace("/ca.pem }", "/ca.pem, reload_interval: 1s }"));
    let r = refusals(&base, &new);
    assert!(r[0].starts_with("server.tls.reload_interval cannot change"), "{r:?}");
}

#[test]
fn shutdown_grace_and_the_reload_interval_change_without_a_restart() {
    let new = edited(
        "server:\n",
        "server:\n  shutdown_grace: 1s\n  config_reload_interval: 5s\n",
    );
    assert!(refusals(&config(BASE), &new).is_empty());
}

#[test]
fn several_refused_keys_are_all_named() {
    let new = edited("server:\n", "server:\n  max_streams: 5\n  keepalive_timeout: 1s\n");
    let r = refusals(&config(BASE), &new);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0].starts_with("server.max_streams "));
    assert!(r[1].starts_with("server.keepalive_timeout "));
}

#[test]
fn routes_clusters_groups_and_debounce_change_without_a_restart() {
    let new = config(
        &BASE
            .replace("port: 80 }\n  - name: d", "port: 81 }\n  - name: d")
            .replace("groups:", "debounce: { quiet: 10ms }\nlisteners:\n  - { name: l, address: 0.0.0.0:8080, routes: [{ prefix: /, cluster: c }] }\ngroups:")
            .replace("clusters: [c, d] }", "listeners: [l], clusters: [d] }"),
    );
    assert!(refusals(&config(BASE), &new).is_empty());
    assert_eq!(
        source_plan(&config(BASE).sources, &new.sources).0,
        vec![SourceChange::Keep, SourceChange::Keep]
    );
}

#[test]
fn only_sources_whose_settings_changed_are_restarted() {
    let base = config(BASE);
    let new = edited("/tmp/b.json }", "/tmp/b2.json }");
    assert_eq!(
        source_plan(&base.sources, &new.sources),
        (vec![SourceChange::Keep, SourceChange::Restart], vec![])
    );
    // A setting with a default, written out with its default value, is no change.
    let same = edited("/tmp/b.json }", "/tmp/b.json, poll_interval: 250ms }");
    assert_eq!(source_plan(&base.sources, &same.sources).0[1], SourceChange::Keep);
    let slower = edited("/tmp/b.json }", "/tmp/b.json, poll_interval: 1s }");
    assert_eq!(source_plan(&base.sources, &slower.sources).0[1], SourceChange::Restart);
}

#[test]
fn added_removed_and_renamed_sources() {
    let base = config(BASE);
    let new = config(
        &BASE
            .replace(
                "{ name: b, type: file, path: /tmp/b.json }",
                "{ name: e, type: file, path: /tmp/b.json }",
            )
            .replace("source: b,", "source: e,"),
    );
    // A renamed source is a new one; the old name is stopped.
    assert_eq!(
        source_plan(&base.sources, &new.sources),
        (vec![SourceChange::Keep, SourceChange::Add], vec!["b".to_string()])
    );
    let type_changed = config(&BASE.replace(
        "{ name: b, type: file, path: /tmp/b.json }",
        "{ name: b, type: consul, address: 127.0.0.1:8500 }",
    ));
    assert_eq!(
        source_plan(&base.sources, &type_changed.sources).0[1],
        SourceChange::Restart
    );
}

#[test]
fn a_source_that_cannot_be_resolved_is_an_error_naming_it() {
    let c = config(&BASE.replace(
        "{ name: b, type: file, path: /tmp/b.json }",
        "{ name: b, type: etcd, endpoints: [127.0.0.1:2379], username: u, password_file: /nonexistent/voltha-xds-pw }",
    ));
    let e = check_source(&c.sources[1]).expect_err("no password file");
    assert!(
        e.starts_with("source \"b\": password_file /nonexistent/voltha-xds-pw"),
        "{e}"
    );
    assert_eq!(check_source(&c.sources[0]), Ok(()));
}
