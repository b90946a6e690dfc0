use super::*;
use crate::config::Config;

const DEEP: usize = 100_000;

fn too_deep(e: &ConfigError) -> (usize, usize) {
    match e {
        ConfigError::TooDeep {
            line, column, limit, ..
        } => {
            assert_eq!(*limit, MAX_NESTING);
            (*line, *column)
        }
        other => panic!("expected the nesting limit, got: {other}"),
    }
}

#[test]
fn a_deeply_nested_flow_sequence_is_refused_at_the_level_past_the_limit() {
    let text = format!("default_group: g\ngroups: {}{}\n", "[".repeat(DEEP), "]".repeat(DEEP));
    let e = Config::from_yaml(&text).expect_err("too deep");
    // The top mapping is the first level; `groups: ` is 8 characters, so the 63rd `[` (the
    // 64th level) is at column 8 + 63 and the next one goes beyond.
    assert_eq!(too_deep(&e), (2, 8 + MAX_NESTING));
    let msg = e.to_string();
    assert!(msg.contains("line 2, column 72"), "{msg}");
    assert!(msg.contains("nested more than 64 deep"), "{msg}");
    // Unclosed, at the top level: the same.
    let e = Config::from_yaml(&"[".repeat(DEEP)).expect_err("too deep");
    assert_eq!(too_deep(&e), (1, MAX_NESTING + 1));
}

#[test]
fn a_deeply_nested_flow_mapping_is_refused() {
    let text = format!("{}x{}", "{a: ".repeat(DEEP), "}".repeat(DEEP));
    let e = Config::from_yaml(&text).expect_err("too deep");
    assert_eq!(too_deep(&e), (1, 4 * MAX_NESTING + 1));
}

#[test]
fn deeply_nested_block_collections_are_refused() {
    // 100,000 block mappings on one line, as explicit keys (`? ? ? x`): each opens a mapping
    // two columns deeper than the last.
    let e = Config::from_yaml(&format!("{}x\n", "? ".repeat(DEEP))).expect_err("too deep");
    assert_eq!(too_deep(&e), (1, 2 * MAX_NESTING + 1));
    // The same with sequences: `- - - x`.
    let e = Config::from_yaml(&format!("groups:\n{}x\n", "- ".repeat(DEEP))).expect_err("too deep");
    assert_eq!(too_deep(&e), (2, 2 * (MAX_NESTING - 1) + 1));
    // Block mappings by indentation, one level a line (as deep as 4 MiB allows).
    let levels = 2_000;
    let text: String = (0..levels).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    let e = Config::from_yaml(&text).expect_err("too deep");
    assert_eq!(too_deep(&e), (MAX_NESTING + 1, MAX_NESTING + 1));
    // A sequence at its key's column is a level too: line n holds levels 2n and 2n + 1.
    let text: String = std::iter::once("k:\n".to_string())
        .chain((1..levels).map(|j| format!("{}- k:\n", " ".repeat(2 * (j - 1)))))
        .collect();
    let e = Config::from_yaml(&text).expect_err("too deep");
    assert_eq!(too_deep(&e), (MAX_NESTING / 2 + 1, MAX_NESTING + 1));
}

#[test]
fn the_limit_itself_is_accepted() {
    let flow = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
    assert_eq!(
        nesting(&flow, MAX_NESTING),
        Nesting {
            max: MAX_NESTING,
            over: None
        }
    );
    let block: String = (0..MAX_NESTING).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
    assert_eq!(nesting(&block, MAX_NESTING).max, MAX_NESTING);
    // Refused by the parser as a configuration, not by the limit.
    let e = Config::from_yaml(&flow).expect_err("not a configuration");
    assert!(matches!(e, ConfigError::Parse(_)), "{e}");
}

#[test]
fn brackets_in_scalars_and_comments_are_not_collections() {
    let deep = "[".repeat(2 * MAX_NESTING);
    let text = format!(
        r#"
default_group: g   # {deep}
clusters:
  - name: c
    endpoints: {{ static: ["10.0.0.1:80"] }}
listeners:
  - name: l
    address: 0.0.0.0:8080
    access_log:
      format: "{deep} \" {deep}"
    routes:
      - prefix: /a{deep}
        cluster: c
      - path: '/b{deep} '' {deep}'
        cluster: c
      - prefix: /c
        cluster: c
        headers:
          - name: x
            exact: |
              {deep}
              {deep}
          - name: y
            exact: >-
              {deep}
          - name: z
            prefix: plain {deep}
              continued {deep}
groups:
  - name: g
    listeners: [l]
"#
    );
    let n = nesting(&text, MAX_NESTING);
    assert_eq!(n.over, None, "{n:?}");
    // The top mapping, listeners, a listener, routes, a route, headers, a header.
    assert_eq!(n.max, 7);
    let c = Config::from_yaml(&text).expect("valid");
    let headers = &c.listeners[0].routes[2].headers;
    assert_eq!(
        headers[2].prefix.as_deref(),
        Some(format!("plain {deep} continued {deep}").as_str())
    );
    let routes = &c.listeners[0].routes;
    assert_eq!(routes[0].prefix.as_deref(), Some(format!("/a{deep}").as_str()));
    assert_eq!(
        routes[2].headers[0].exact.as_deref(),
        Some(format!("{deep}\n{deep}\n").as_str())
    );
}

#[test]
fn a_configuration_over_the_size_limit_is_refused() {
    let pad = "#".repeat(MAX_CONFIG_BYTES);
    let text = format!("default_group: g\n{pad}\n");
    match Config::from_yaml(&text).expect_err("too large") {
        ConfigError::TooLarge { size, limit, .. } => {
            assert_eq!(size, text.len() as u64);
            assert_eq!(limit, MAX_CONFIG_BYTES as u64);
        }
        other => panic!("{other}"),
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &text).expect("write");
    let e = Config::load(&path).expect_err("too large");
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("more than the 4194304 bytes (4 MiB)"), "{msg}");
    // One byte under the limit is parsed.
    let text = format!("{}\n", &text[..MAX_CONFIG_BYTES - 2]);
    assert!(!matches!(Config::from_yaml(&text), Err(ConfigError::TooLarge { .. })));
}

#[test]
fn load_names_the_file_in_a_nesting_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("deep.yaml");
    std::fs::write(&path, format!("default_group: g\ngroups:\n  - {}\n", "[".repeat(DEEP))).expect("write");
    let e = Config::load(&path).expect_err("too deep");
    assert_eq!(too_deep(&e), (3, 5 + MAX_NESTING - 2));
    assert!(
        e.to_string().starts_with(&format!("{}, line 3,", path.display())),
        "{e}"
    );
}

#[test]
fn every_shipped_configuration_nests_well_under_the_limit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("config")).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let n = nesting(&text, MAX_NESTING);
            assert!(n.max <= 8 && n.over.is_none(), "{}: {n:?}", path.display());
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
}

/// The nesting of a parsed document: what the parser built, counted as it is deserialized
/// (any document, whatever its keys).
struct Depth(usize);

impl<'de> serde::Deserialize<'de> for Depth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Depth, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Depth;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_i128<E>(self, _: i128) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_u128<E>(self, _: u128) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_str<E>(self, _: &str) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_unit<E>(self) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_none<E>(self) -> Result<Depth, E> {
                Ok(Depth(0))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Depth, D::Error> {
                <Depth as serde::Deserialize>::deserialize(d)
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Depth, D::Error> {
                <Depth as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Depth, A::Error> {
                let mut max = 0;
                while let Some(Depth(d)) = a.next_element()? {
                    max = max.max(d);
                }
                Ok(Depth(1 + max))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Depth, A::Error> {
                let mut max = 0;
                while let Some((Depth(k), Depth(v))) = a.next_entry()? {
                    max = max.max(k).max(v);
                }
                Ok(Depth(1 + max))
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, a: A) -> Result<Depth, A::Error> {
                // A tagged node (`!t {a: b}`): the node under the tag.
                use serde::de::VariantAccess;
                let (_, v): (serde::de::IgnoredAny, _) = a.variant()?;
                v.newtype_variant::<Depth>()
            }
        }
        d.deserialize_any(V)
    }
}

/// The parser's nesting of `text`, if it accepts it.
fn parsed_depth(text: &str) -> Result<usize, String> {
    crate::config::yaml::from_str::<Depth>(text).map(|d| d.0)
}

#[test]
fn the_count_matches_the_parser_on_known_documents() {
    for (text, want) in [
        ("a", 0),
        ("[a, [b], {c: [d]}]", 3),
        ("a:\n  b:\n    - [1, {c: d}]\n", 5),
        ("a:\n- b\n- c: d\n", 3),
        ("- - - x\n", 3),
        ("? ? x\n", 2),
        ("[a, b]: c\n", 2),
        ("{a: [b]}: c\n", 3),
        ("a: &x [b]\nc: !t {d: e}\n", 2),
        ("a: \"[[\n  [[\"\nb: [c]\n", 2),
        ("a: b [\n  c [[\n", 1),
        ("a: |\n  [[[\n  {{{\nb: {c: d}\n", 2),
        ("a: >2\n   [[[\n  x\nb: [c]\n", 2),
        ("[a # ]\n, [b]]\n", 2),
        ("- 'it''s [' \n- \"\\\" [\"\n- [x]\n", 2),
        ("---\n[a]\n...\n", 1),
        ("a:\n  - b:\n    - [c]\n", 5),
        ("[ : x ]\n", 2),
        ("[a, : ]: b\n", 3),
    ] {
        let parsed = parsed_depth(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(parsed, want, "parser, {text:?}");
        assert_eq!(nesting(text, MAX_NESTING).max, want, "scan, {text:?}");
    }
}

/// The count is never below what the parser builds: random documents over YAML's indicators,
/// each one the parser accepts compared.
#[test]
fn the_count_is_never_below_the_parsers_nesting() {
    const PIECES: &[&str] = &[
        "[", "]", "{", "}", ", ", ",", ": ", ":", "- ", "-", "? ", " ", "  ", "\n", "\n  ", "\n    ", "a", "b", "'",
        "''", "\"", "\\", "# ", "#", "|", ">", "|-\n", "&x ", "!t ", "\t", "---\n", "x: ", "  - ", "\r\n",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut parsed, mut nested) = (0, 0);
    for _ in 0..100_000 {
        let len = 1 + (next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let Ok(depth) = parsed_depth(&text) else {
            continue;
        };
        parsed += 1;
        if depth >= 3 {
            nested += 1;
        }
        let n = nesting(&text, usize::MAX);
        assert!(n.max >= depth, "scan {} < parser {depth}: {text:?}", n.max);
    }
    assert!(parsed > 10_000 && nested > 40, "parsed {parsed}, nested {nested}");
}
