//! Parsing the values sources deliver.
//!
//! The VOLTHA core assignment (voltha.md §1) is a JSON object keyed by 4-hex-digit core-store
//! ids: `{"0001": {"id": "vcore-0_…", "host": "10.233.102.5"}, "0003": null}`.
//! - a `null` slot is a core that died: skipped;
//! - `{}`, or a value of 10 bytes or fewer (envoyd's rule), means no core has registered yet;
//! - anything else that is not that shape is an error, and the caller keeps its last good state.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{is_host, parse_host_port};
use crate::model::{Backend, SourceData};

/// envoyd treated a value this short as "not ready yet".
const NOT_READY_MAX_LEN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("slot {slot:?}: {problem}")]
    Slot { slot: String, problem: String },
    #[error("set {set:?}: {problem}")]
    Set { set: String, problem: String },
}

impl ParseError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::Json(_) => "malformed_json",
            _ => "wrong_shape",
        }
    }
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

/// Parses a source value in the configured format.
pub fn parse(format: crate::config::FileFormat, bytes: &[u8]) -> Result<SourceData, ParseError> {
    match format {
        crate::config::FileFormat::VolthaAssignment => parse_assignment(bytes),
        crate::config::FileFormat::Endpoints => parse_endpoint_sets(bytes),
    }
}

/// Parses a VOLTHA core assignment into its backends (no ports: the cluster gives them).
pub fn parse_assignment(bytes: &[u8]) -> Result<SourceData, ParseError> {
    if bytes.iter().filter(|b| !b.is_ascii_whitespace()).count() <= NOT_READY_MAX_LEN
        && serde_json::from_slice::<Value>(bytes).map_or(true, |v| v.is_object() || v.is_null())
    {
        return Ok(SourceData::single(Vec::new()));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
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
            Some(Value::String(h)) if is_host(h) => h.clone(),
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
pub fn parse_endpoint_sets(bytes: &[u8]) -> Result<SourceData, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(SourceData::default());
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
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
                Err(_) if is_host(&s) => (s.clone(), None),
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
    fn empty_object_and_short_values_mean_no_cores_yet() {
        for v in [&b"{}"[..], b"", b"  {}  \n", b"null", b"{ }"] {
            let d = parse_assignment(v).expect("not ready is not an error");
            assert!(hosts(&d).is_empty(), "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn dns_names_are_hosts_too_and_duplicates_collapse() {
        let d =
            parse_assignment(br#"{"0001": {"host": "vcore-0.voltha.svc"}, "0002": {"host": "vcore-0.voltha.svc"}}"#)
                .expect("valid");
        assert_eq!(hosts(&d), vec!["vcore-0.voltha.svc"]);
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
}
