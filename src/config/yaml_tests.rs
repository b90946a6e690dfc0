use std::time::{Duration, Instant};

use serde::Deserialize;

use super::*;
use crate::config::{Config, ConfigError};

fn parse_error(text: &str) -> String {
    match Config::from_yaml(text) {
        Err(ConfigError::Parse(m)) => m,
        Err(other) => panic!("expected a parse error, got: {other}"),
        Ok(_) => panic!("expected a parse error, got a configuration"),
    }
}

#[test]
fn the_shipped_configurations_share_their_route_lists_through_an_alias() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["voltha-xds.yaml", "voltha-consul.yaml", "voltha-etcd.yaml"] {
        let text = std::fs::read_to_string(root.join("config").join(file)).expect("read");
        assert!(
            text.contains("&voltha_routes") && text.contains("*voltha_routes"),
            "{file}"
        );
        let c = Config::load(&root.join("config").join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let grpc = &c.listener("voltha-grpc").expect("voltha-grpc").routes;
        let rest = &c.listener("voltha-rest").expect("voltha-rest").routes;
        assert_eq!(grpc.len(), 5, "{file}");
        assert_eq!(format!("{grpc:?}"), format!("{rest:?}"), "{file}");
    }
}

#[test]
fn merge_keys_fill_in_what_a_mapping_does_not_say() {
    let text = r#"
default_group: g
clusters:
  - &base { name: a, protocol: http1, connect_timeout: 250ms, endpoints: { static: ["10.0.0.1:80"] } }
  - <<: *base
    name: b
  - { name: c, <<: *base, connect_timeout: 2s }
listeners:
  - name: l
    address: 0.0.0.0:8080
    routes: [{ prefix: /, cluster: b }]
groups:
  - name: g
    listeners: [l]
"#;
    let c = Config::from_yaml(text).expect("valid");
    let names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let b = c.cluster("b").expect("b");
    assert_eq!(b.protocol, crate::config::Protocol::Http1);
    assert_eq!(b.connect_timeout.0, Duration::from_millis(250));
    // A key the mapping gives itself wins over the merged one, wherever the merge key is.
    assert_eq!(c.cluster("c").expect("c").connect_timeout.0, Duration::from_secs(2));
}

#[test]
fn a_parse_error_is_one_line_that_names_the_line_and_column() {
    let minimal = "default_group: g\nclusters:\n  - name: c\n    connect_timeout: 5x\n";
    let e = parse_error(minimal);
    assert!(e.contains("unknown unit \"x\""), "{e}");
    assert!(e.ends_with("at line 4, column 22"), "{e}");
    let e = parse_error("default_group: g\nlisteners_typo: []\n");
    assert!(e.starts_with("unknown field `listeners_typo`, expected one of"), "{e}");
    assert!(e.ends_with("at line 2, column 1"), "{e}");
    // A syntax error, and an alias to nothing.
    let e = parse_error("default_group: g\nclusters: [\n");
    assert!(e.contains("line 2"), "{e}");
    let e = parse_error("default_group: *nothing\n");
    assert!(e.ends_with("at line 1, column 16"), "{e}");
    for e in [parse_error("a: b\n c: d\n"), parse_error("\t- a\n")] {
        assert!(!e.contains('\n') && e.contains(" at line "), "{e}");
    }
}

#[test]
fn a_key_given_twice_is_an_error() {
    let e = parse_error("default_group: g\ndefault_group: h\n");
    assert_eq!(
        e,
        "duplicate mapping key `default_group` is not allowed here at line 2, column 1"
    );
}

#[test]
fn only_true_and_false_are_booleans_and_strings_keep_their_text() {
    #[derive(Deserialize)]
    struct B {
        b: bool,
    }
    for no in ["yes", "no", "on", "off", "y", "n", "1"] {
        let e = from_str::<B>(&format!("b: {no}")).err().unwrap_or_default();
        assert!(e.ends_with("at line 1, column 4"), "{no}: {e:?}");
    }
    for (yes, want) in [("true", true), ("True", true), ("TRUE", true), ("false", false)] {
        assert_eq!(from_str::<B>(&format!("b: {yes}")).map(|b| b.b), Ok(want), "{yes}");
    }
    #[derive(Deserialize)]
    struct S {
        s: String,
    }
    for text in ["yes", "0755", "1e3", "0x1F", "'null'"] {
        let s = from_str::<S>(&format!("s: {text}")).map(|s| s.s);
        assert_eq!(s.as_deref(), Ok(text.trim_matches('\'')), "{text}");
    }
    // A null where a string is wanted is an error, not the text "null".
    for null in ["null", "~", ""] {
        let e = from_str::<S>(&format!("s: {null}")).err().unwrap_or_default();
        assert!(e.contains("null") && e.contains("at line 1"), "{null:?}: {e:?}");
    }
}

#[test]
fn an_alias_bomb_is_refused_at_the_replay_limit() {
    // Each level repeats the previous one ten times: a million scalars from 6 short lines.
    let text = "\
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
";
    let start = Instant::now();
    let e = from_str::<serde_json::Value>(text).expect_err("refused");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    assert!(
        e.contains(&format!(
            "total_replayed_events={} > {MAX_ALIAS_EVENTS}",
            MAX_ALIAS_EVENTS + 1
        )),
        "{e}"
    );
    assert!(e.contains("line "), "{e}");
    // Four levels (10,000 scalars) are within the limit.
    let small: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    let v = from_str::<serde_json::Value>(&small).expect("within the limit");
    assert_eq!(v["d"][9][9][9][9].as_str(), Some("x"));
}

#[test]
fn yaml_written_reads_back_the_same() {
    let v = serde_json::json!({"a": [1, "two", {"b": null, "c": true}], "d": "yes", "e": "0755", "f": ""});
    let text = to_string(&v).expect("write");
    assert_eq!(from_str::<serde_json::Value>(&text), Ok(v), "{text}");
}
