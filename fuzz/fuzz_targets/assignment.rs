//! The assignment and endpoint-set parsers (`sources::assignment`), on any bytes.
//!
//! Each input goes through both formats. Checked for each:
//! - no panic, and the same answer when parsed again (parsing is deterministic);
//! - an accepted value satisfies the model's invariants: every backend's host is a valid host
//!   (`config::is_host`), no port is 0, each set is sorted with no two backends at the same
//!   host and port; an assignment has only the default set and no ports;
//! - an accepted value written back in its format (a slot per backend, `host:port` strings)
//!   parses to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use voltha_xds::config::{is_host, FileFormat};
use voltha_xds::model::{SourceData, DEFAULT_SET};
use voltha_xds::sources::assignment::parse;

fn check_invariants(d: &SourceData, format: FileFormat) {
    for (set, backends) in &d.sets {
        for b in backends {
            assert!(is_host(&b.host), "set {set:?}: host {:?} is not a host", b.host);
            assert_ne!(b.port, Some(0), "set {set:?}: host {:?} with port 0", b.host);
        }
        for w in backends.windows(2) {
            assert!(w[0] <= w[1], "set {set:?} is not sorted: {w:?}");
            assert!(
                (&w[0].host, w[0].port) != (&w[1].host, w[1].port),
                "set {set:?} holds {:?} twice",
                w[0]
            );
        }
    }
    if format == FileFormat::VolthaAssignment {
        assert!(d.sets.keys().all(|s| s == DEFAULT_SET), "{:?}", d.sets.keys());
        assert!(d.sets.values().flatten().all(|b| b.port.is_none()));
    }
}

/// The value written back in its format.
fn write_back(d: &SourceData, format: FileFormat) -> Vec<u8> {
    let v = match format {
        FileFormat::VolthaAssignment => {
            let slots: serde_json::Map<String, serde_json::Value> = d
                .set(DEFAULT_SET)
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut o = serde_json::Map::new();
                    o.insert("host".into(), b.host.clone().into());
                    if let Some(id) = &b.id {
                        o.insert("id".into(), id.clone().into());
                    }
                    (format!("{i:04x}"), o.into())
                })
                .collect();
            serde_json::Value::Object(slots)
        }
        FileFormat::Endpoints => {
            let sets: serde_json::Map<String, serde_json::Value> = d
                .sets
                .iter()
                .map(|(set, backends)| {
                    let items: Vec<serde_json::Value> = backends
                        .iter()
                        .map(|b| match b.port {
                            Some(p) if b.host.contains(':') => format!("[{}]:{p}", b.host).into(),
                            Some(p) => format!("{}:{p}", b.host).into(),
                            None => b.host.clone().into(),
                        })
                        .collect();
                    (set.clone(), items.into())
                })
                .collect();
            serde_json::Value::Object(sets)
        }
    };
    serde_json::to_vec(&v).expect("a JSON value serializes")
}

fuzz_target!(|data: &[u8]| {
    for format in [FileFormat::VolthaAssignment, FileFormat::Endpoints] {
        let first = parse(format, data);
        assert_eq!(first, parse(format, data), "parsing is deterministic");
        let Ok(d) = first else { continue };
        check_invariants(&d, format);
        let again = write_back(&d, format);
        match parse(format, &again) {
            Ok(back) => assert_eq!(back, d, "written back as {:?}", String::from_utf8_lossy(&again)),
            Err(e) => panic!("{:?} written back does not parse: {e}", String::from_utf8_lossy(&again)),
        }
    }
});
