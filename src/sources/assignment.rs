//! Parsing the values sources deliver, and the size limit they are held to.
//!
//! The VOLTHA core assignment (voltha.md §1) is a JSON object keyed by 4-hex-digit core-store
//! ids: `{"0001": {"id": "vcore-0_…", "host": "10.233.102.5"}, "0003": null}`.
//! - a `null` slot is a core that died: skipped;
//! - only a well-formed value means "no cores": `{}`, or an object whose slots are all `null`;
//! - anything else is an error, and the caller keeps its last good state: an empty or
//!   all-whitespace value (kind `empty`: a value being written, a truncated file), a value
//!   that is not JSON at any length (`malformed_json`), a value of the wrong shape, `null`
//!   included (`wrong_shape`), and a value over the source's `max_value_bytes` (`too_large`).
//!
//! envoyd read a value of 10 bytes or fewer as "not ready yet: do not start Envoy, retry"; it
//! never meant "remove every core", so no length rule is kept here.
//!
//! The `endpoints` format follows the same rules: `{}` (or sets that are empty arrays) is the
//! only empty state; an empty value is an error.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{canonical_host, is_host, parse_host_port};
use crate::model::{Backend, SourceData};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the value is empty")]
    Empty,
    #[error("{len} bytes, over the limit of {max} bytes (max_value_bytes)")]
    TooLarge { len: u64, max: usize },
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("slot {:?}: {}", cap(.slot, 64), cap(.problem, 300))]
    Slot { slot: String, problem: String },
    #[error("set {:?}: {}", cap(.set, 64), cap(.problem, 300))]
    Set { set: String, problem: String },
}

impl ParseError {
    /// A short label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::TooLarge { .. } => "too_large",
            ParseError::Json(_) => "malformed_json",
            _ => "wrong_shape",
        }
    }
}

/// `s` cut to `max` characters (a source-supplied name or host may be megabytes long).
fn cap(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A value of `len` bytes against the limit `max`.
pub(crate) fn check_size(len: u64, max: usize) -> Result<(), ParseError> {
    if len > max as u64 {
        Err(ParseError::TooLarge { len, max })
    } else {
        Ok(())
    }
}

/// A JSON error message, capped: serde_json's messages quote no input, but keep them short.
fn json_error(e: &serde_json::Error) -> ParseError {
    ParseError::Json(e.to_string().chars().take(200).collect())
}

/// The value parsed as JSON; empty or all-whitespace is [`ParseError::Empty`].
fn json(bytes: &[u8]) -> Result<Value, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    serde_json::from_slice(bytes).map_err(|e| json_error(&e))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a source value in the configured format. Size limits are the caller's
/// ([`check_size`]): it knows the size before it reads.
pub fn parse(format: crate::config::FileFormat, bytes: &[u8]) -> Result<SourceData, ParseError> {
    match format {
        crate::config::FileFormat::VolthaAssignment => parse_assignment(bytes),
        crate::config::FileFormat::Endpoints => parse_endpoint_sets(bytes),
    }
}

/// Parses a VOLTHA core assignment into its backends (no ports: the cluster gives them).
pub fn parse_assignment(bytes: &[u8]) -> Result<SourceData, ParseError> {
    let v = json(bytes)?;
    let Value::Object(slots) = v else {
        return Err(ParseError::NotAnObject(kind_of(&v)));
    };
    let mut backends = Vec::new();
    for (slot, entry) in slots {
        let obj = match entry {
            Value::Null => continue,
            Value::Object(o) => o,
            other => {
                return Err(ParseError::Slot {
                    slot,
                    problem: format!("expected an object or null, got {}", kind_of(&other)),
                })
            }
        };
        let host = match obj.get("host") {
            Some(Value::String(h)) if is_host(h) => canonical_host(h),
            Some(Value::String(h)) => {
                return Err(ParseError::Slot {
                    slot,
                    problem: format!("host {h:?} is neither an IP address nor a DNS name"),
                })
            }
            Some(other) => {
                return Err(ParseError::Slot {
                    slot,
                    problem: format!("\"host\" must be a string, got {}", kind_of(other)),
                })
            }
            None => {
                return Err(ParseError::Slot {
                    slot,
                    problem: "has no \"host\"".into(),
                })
            }
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(other) => {
                return Err(ParseError::Slot {
                    slot,
                    problem: format!("\"id\" must be a string, got {}", kind_of(other)),
                })
            }
        };
        backends.push(Backend { host, port: None, id });
    }
    Ok(SourceData::single(backends))
}

/// Parses named endpoint sets: `{"set": ["host:port", "host", ...], ...}`.
pub(crate) fn parse_endpoint_sets(bytes: &[u8]) -> Result<SourceData, ParseError> {
    let v = json(bytes)?;
    let Value::Object(sets) = v else {
        return Err(ParseError::NotAnObject(kind_of(&v)));
    };
    let mut out = BTreeMap::new();
    for (set, list) in sets {
        let Value::Array(items) = list else {
            return Err(ParseError::Set {
                set,
                problem: format!("expected an array of \"host:port\", got {}", kind_of(&list)),
            });
        };
        let mut backends = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(s) = item else {
                return Err(ParseError::Set {
                    set,
                    problem: format!("expected \"host:port\" strings, got {}", kind_of(&item)),
                });
            };
            let (host, port) = match parse_host_port(&s, None) {
                Ok((h, p)) => (h, Some(p)),
                Err(_) if is_host(&s) => (canonical_host(&s), None),
                Err(problem) => return Err(ParseError::Set { set, problem }),
            };
            backends.push(Backend { host, port, id: None });
        }
        backends.sort();
        backends.dedup();
        out.insert(set, backends);
    }
    Ok(SourceData { sets: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DEFAULT_SET;

    fn hosts(d: &SourceData) -> Vec<&str> {
        d.set(DEFAULT_SET).iter().map(|b| b.host.as_str()).collect()
    }

    #[test]
    fn null_slots_are_skipped_and_hosts_kept() {
        let d = parse_assignment(
            br#"{"0001": {"id": "vcore-0_1", "host": "10.233.102.5"},
                 "0002": {"id": "vcore-1_2", "host": "10.233.102.6"},
                 "0003": null}"#,
        )
        .expect("valid");
        assert_eq!(hosts(&d), vec!["10.233.102.5", "10.233.102.6"]);
        assert_eq!(d.set(DEFAULT_SET)[0].id.as_deref(), Some("vcore-0_1"));
    }

    #[test]
    fn only_a_well_formed_value_means_no_cores() {
        for v in [&b"{}"[..], b"  {}  \n", b"{ }", br#"{"0001": null, "0002": null}"#] {
            let d = parse_assignment(v).expect("a well-formed empty assignment");
            assert!(hosts(&d).is_empty(), "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn short_empty_and_malformed_values_are_errors_not_an_empty_assignment() {
        // envoyd's "10 bytes or fewer" meant "not ready yet"; none of these may remove a core.
        let cases: [(&[u8], &str); 9] = [
            (b"", "empty"),
            (b"   ", "empty"),
            (b" \n\t\r ", "empty"),
            (b"{not json", "malformed_json"),
            (b"{", "malformed_json"),
            (b"null", "wrong_shape"),
            (br#"{"0001": 5}"#, "wrong_shape"),
            (b"[]", "wrong_shape"),
            (b"\"x\"", "wrong_shape"),
        ];
        for (input, kind) in cases {
            let e = parse_assignment(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(e.kind(), kind, "{:?}: {e}", String::from_utf8_lossy(input));
        }
        // Unparseable at any length.
        let long = format!("{{\"0001\": {{\"host\": \"10.0.0.1\"}}, {}", " ".repeat(1000));
        assert_eq!(
            parse_assignment(long.as_bytes()).map_err(|e| e.kind()),
            Err("malformed_json")
        );
    }

    #[test]
    fn sizes_over_the_limit_are_too_large() {
        assert_eq!(check_size(4 << 20, 4 << 20), Ok(()));
        let e = check_size((4 << 20) + 1, 4 << 20).expect_err("over");
        assert_eq!(e.kind(), "too_large");
        assert_eq!(
            e.to_string(),
            "4194305 bytes, over the limit of 4194304 bytes (max_value_bytes)"
        );
    }

    #[test]
    fn source_supplied_names_are_capped_in_messages() {
        let slot = "s".repeat(10_000);
        let host = "h!".repeat(10_000);
        let v = format!("{{\"{slot}\": {{\"host\": \"{host}\"}}}}");
        let msg = parse_assignment(v.as_bytes()).expect_err("bad host").to_string();
        assert!(msg.len() < 500, "{} bytes", msg.len());
        assert!(msg.starts_with("slot \"sss") && msg.contains('…'), "{msg}");
    }

    #[test]
    fn dns_names_are_hosts_too_and_duplicates_collapse() {
        let d =
            parse_assignment(br#"{"0001": {"host": "vcore-0.voltha.svc"}, "0002": {"host": "vcore-0.voltha.svc"}}"#)
                .expect("valid");
        assert_eq!(hosts(&d), vec!["vcore-0.voltha.svc"]);
    }

    #[test]
    fn an_ip_written_two_ways_is_one_backend_in_its_usual_form() {
        // Two slots with one IPv6 address, written in full and compressed (upper case too): one
        // backend, not two (Envoy would balance twice the share of calls onto it).
        let d = parse_assignment(
            br#"{"0001": {"host": "FD00:0:0:0:0:0:0:1"}, "0002": {"host": "fd00::1"}, "0003": {"host": "10.0.0.1"}}"#,
        )
        .expect("valid");
        assert_eq!(hosts(&d), vec!["10.0.0.1", "fd00::1"]);
        let d = parse_endpoint_sets(br#"{"a": ["[fd00:0::1]:80", "[FD00::1]:80", "fd00:0:0::1", "fd00::1"]}"#)
            .expect("valid");
        let a: Vec<(&str, Option<u16>)> = d.set("a").iter().map(|b| (b.host.as_str(), b.port)).collect();
        assert_eq!(a, vec![("fd00::1", None), ("fd00::1", Some(80))]);
    }

    #[test]
    fn wrong_shapes_are_errors_that_name_the_slot() {
        let cases: [(&[u8], &str); 7] = [
            (b"{\"0001\": {\"host\": ", "malformed_json"),
            (b"[1, 2, 3, 4, 5, 6, 7]", "wrong_shape"),
            (br#"{"0001": "10.0.0.1", "x": 1}"#, "wrong_shape"),
            (br#"{"0001": {"id": "x"}}"#, "wrong_shape"),
            (br#"{"0001": {"host": 42}}"#, "wrong_shape"),
            (br#"{"0001": {"host": "not a host!"}}"#, "wrong_shape"),
            (br#"{"0001": {"host": "10.0.0.1", "id": 5}}"#, "wrong_shape"),
        ];
        for (input, kind) in cases {
            let e = parse_assignment(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(e.kind(), kind, "{e}");
        }
        let e = parse_assignment(br#"{"0002": {"id": "x"}}"#).expect_err("no host");
        assert_eq!(e.to_string(), "slot \"0002\": has no \"host\"");
    }

    #[test]
    fn endpoint_sets_parse_hosts_with_and_without_ports() {
        let d = parse_endpoint_sets(br#"{"a": ["10.0.0.1:80", "10.0.0.1:80", "b.example"], "c": []}"#).expect("valid");
        assert_eq!(d.set("a").len(), 2);
        assert_eq!(d.set("a")[0].port, Some(80));
        assert_eq!(d.set("a")[1].port, None);
        assert!(d.set("c").is_empty());
        assert!(parse_endpoint_sets(br#"{"a": "10.0.0.1:80"}"#).is_err());
        assert!(parse_endpoint_sets(br#"{"a": [1]}"#).is_err());
        assert!(parse_endpoint_sets(br#"{"a": ["bad host:1"]}"#).is_err());
    }

    #[test]
    fn endpoint_sets_are_empty_only_when_well_formed() {
        assert!(parse_endpoint_sets(b"{}").expect("valid").sets.is_empty());
        assert!(parse_endpoint_sets(br#"{"a": []}"#).expect("valid").set("a").is_empty());
        let cases: [(&[u8], &str); 5] = [
            (b"", "empty"),
            (b"  \n", "empty"),
            (b"{", "malformed_json"),
            (b"null", "wrong_shape"),
            (br#"{"a": 5}"#, "wrong_shape"),
        ];
        for (input, kind) in cases {
            let e = parse_endpoint_sets(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
