//! The Consul KV answer decoder (`sources::consul::decode_body`), on any body.
//!
//! The key is the one the shipped configuration watches. Checked:
//! - no panic, and the same answer when decoded again;
//! - the value of an accepted body that is JSON to `serde_json::Value` agrees with a plain
//!   reading of that JSON: the first entry whose `Key` is the key, its `Value` base64-decoded
//!   (`null` or absent: empty);
//! - the value written back as a one-entry answer decodes to the same value;
//! - the value then goes through the assignment parser as the source does (no panic).

#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voltha_xds::config::FileFormat;
use voltha_xds::fuzz_api::consul_decode_body;
use voltha_xds::sources::assignment::parse;

const KEY: &str = "service/voltha/data/core/assignment";

/// What a plain reading of the body's JSON finds: `None` when the body is not JSON that
/// `serde_json::Value` takes (serde skips the fields it ignores without checking their UTF-8 or
/// their numbers' range, so the decoder can accept a body this reading cannot judge); else the
/// value, if it finds one.
fn plain_reading(body: &[u8]) -> Option<Option<Vec<u8>>> {
    let v = serde_json::from_slice::<Value>(body).ok()?;
    Some(value_in(v))
}

fn value_in(v: Value) -> Option<Vec<u8>> {
    let Value::Array(entries) = v else {
        return None;
    };
    // An entry is an object, or (as serde reads a struct) an array of its two fields in order.
    let fields = |e: &Value| -> Option<(Option<String>, Option<Value>)> {
        match e {
            Value::Object(o) => Some((o.get("Key")?.as_str().map(String::from), o.get("Value").cloned())),
            Value::Array(a) if a.len() == 2 => Some((a[0].as_str().map(String::from), Some(a[1].clone()))),
            _ => None,
        }
    };
    let (_, value) = entries
        .iter()
        .filter_map(fields)
        .find(|(k, _)| k.as_deref() == Some(KEY))?;
    match value.as_ref() {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD.decode(s).ok(),
        Some(_) => None,
    }
}

fuzz_target!(|body: &[u8]| {
    let got = consul_decode_body(KEY, body);
    assert_eq!(got, consul_decode_body(KEY, body), "decoding is deterministic");
    let Ok(value) = got else { return };
    let value = value.expect("a 200 answer always holds a value");
    if let Some(plain) = plain_reading(body) {
        assert_eq!(plain.as_ref(), Some(&value), "the plain reading finds the same value");
    }
    let written = serde_json::json!([{
        "Key": KEY,
        "Value": base64::engine::general_purpose::STANDARD.encode(&value),
    }]);
    let back = consul_decode_body(KEY, written.to_string().as_bytes());
    assert_eq!(back, Ok(Some(value.clone())), "written back");
    for format in [FileFormat::VolthaAssignment, FileFormat::Endpoints] {
        let _ = parse(format, &value);
    }
});
