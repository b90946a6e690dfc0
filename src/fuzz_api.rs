//! Entry points for the cargo-fuzz targets in `fuzz/` (built only with the `fuzzing`
//! feature): thin wrappers over parsers that are private to their modules. Everything the
//! targets need that is already public is used directly; nothing here is part of the API.

/// The Consul source's reading of a `GET /v1/kv/<key>` answer body
/// (`sources::consul::decode_body`): the key's value, `Some(empty)` for a null value.
pub fn consul_decode_body(key: &str, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    crate::sources::consul::decode_body(key, body).map(Some)
}
