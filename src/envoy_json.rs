//! Envoy JSON: resources in the proto3 JSON mapping, as Envoy's `/config_dump` shows them
//! (with `@type`, nested `Any`s expanded). Uses the Envoy API descriptor set in
//! `proto-vendor/envoy/`, decoded once on first use.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

static ENVOY_API: &[u8] = include_bytes!("../proto-vendor/envoy/envoy-api.fds.bin");

fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(ENVOY_API).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The JSON form of one encoded resource of `type_url`, with lowerCamelCase field names.
pub(crate) fn to_json(type_url: &str, body: &[u8]) -> Result<Value, String> {
    to_json_with(type_url, body, false)
}

/// As [`to_json`]; `proto_names` prints the proto field names (snake_case), as Envoy's
/// `/config_dump` does.
pub(crate) fn to_json_with(type_url: &str, body: &[u8], proto_names: bool) -> Result<Value, String> {
    let pool = pool()?;
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown message type {name}"))?;
    let msg = DynamicMessage::decode(desc, body).map_err(|e| format!("cannot decode {name}: {e}"))?;
    let opts = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(proto_names);
    let mut ser = serde_json::Serializer::new(Vec::new());
    msg.serialize_with_options(&mut ser, &opts)
        .map_err(|e| format!("cannot print {name}: {e}"))?;
    let mut v: Value = serde_json::from_slice(&ser.into_inner()).map_err(|e| e.to_string())?;
    if let Value::Object(m) = &mut v {
        let mut with_type = serde_json::Map::new();
        with_type.insert("@type".into(), Value::String(type_url.to_string()));
        with_type.extend(std::mem::take(m));
        *m = with_type;
    }
    Ok(v)
}
