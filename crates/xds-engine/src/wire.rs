//! Response messages as they go on the wire.
//!
//! These are wire-compatible with `envoy.service.discovery.v3.DiscoveryResponse` and
//! `DeltaDiscoveryResponse`, but carry each resource as pre-encoded bytes (`bytes::Bytes`,
//! reference counted) instead of a decoded `Any`. A resource is encoded once when a snapshot is
//! built; every stream that sends it shares those bytes. Protobuf encodes a `repeated Any` field
//! as a sequence of length-delimited messages, which is exactly what `repeated bytes` with the
//! same tag and the `Any`'s encoding produces, so clients decode these with the stock types.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::ControlPlane;

/// `envoy.service.discovery.v3.DiscoveryResponse`, resources pre-encoded as `Any` messages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryResponse {
    #[prost(string, tag = "1")]
    /// The version of the resources.
    pub version_info: String,
    /// Each element is an encoded `google.protobuf.Any`.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(bool, tag = "3")]
    /// Always false.
    pub canary: bool,
    #[prost(string, tag = "4")]
    /// The type URL of the resources.
    pub type_url: String,
    #[prost(string, tag = "5")]
    /// The nonce the client echoes back.
    pub nonce: String,
    #[prost(message, optional, tag = "6")]
    /// The control plane's identifier (unset).
    pub control_plane: Option<ControlPlane>,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`, resources pre-encoded as
/// `envoy.service.discovery.v3.Resource` messages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaDiscoveryResponse {
    #[prost(string, tag = "1")]
    /// A version for debugging (unset).
    pub system_version_info: String,
    /// Each element is an encoded `envoy.service.discovery.v3.Resource`.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    /// The type URL of the resources.
    pub type_url: String,
    #[prost(string, tag = "5")]
    /// The nonce the client echoes back.
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    /// Names removed since the client's state.
    pub removed_resources: Vec<String>,
    #[prost(message, optional, tag = "7")]
    /// The control plane's identifier (unset).
    pub control_plane: Option<ControlPlane>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3 as pb;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    #[test]
    fn sotw_response_decodes_as_the_stock_message() {
        let any = Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![1, 2, 3],
        };
        let ours = DiscoveryResponse {
            version_info: "v1".into(),
            resources: vec![Bytes::from(any.encode_to_vec())],
            type_url: "type.googleapis.com/x.Y".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let theirs = pb::DiscoveryResponse::decode(ours.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(theirs.version_info, "v1");
        assert_eq!(theirs.nonce, "7");
        assert_eq!(theirs.resources, vec![any]);
    }

    #[test]
    fn delta_response_decodes_as_the_stock_message() {
        let res = pb::Resource {
            name: "a".into(),
            version: "00ff".into(),
            resource: Some(Any {
                type_url: "t".into(),
                value: vec![9],
            }),
            ..Default::default()
        };
        let ours = DeltaDiscoveryResponse {
            system_version_info: "s".into(),
            resources: vec![Bytes::from(res.encode_to_vec())],
            type_url: "t".into(),
            nonce: "1".into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        };
        let theirs = pb::DeltaDiscoveryResponse::decode(ours.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(theirs.resources, vec![res]);
        assert_eq!(theirs.removed_resources, vec!["gone".to_string()]);
        assert_eq!(theirs.nonce, "1");
    }
}
