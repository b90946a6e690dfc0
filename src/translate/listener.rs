//! Listeners: one HTTP connection manager each, routes from RDS over ADS.

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, substitution_format_string, transport_socket, DataSource, SubstitutionFormatString,
    TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{file_access_log::AccessLogFormat, FileAccessLog};
use envoy_types::pb::envoy::extensions::filters::http::grpc_json_transcoder::v3::{
    grpc_json_transcoder::DescriptorSet, GrpcJsonTranscoder,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsCertificate,
};

use super::any;
use super::cluster::{ads_config_source, socket_address};
use super::route::route_config_name;
use crate::config::{Codec, ListenerConfig};

pub(crate) fn listener(l: &ListenerConfig) -> Listener {
    let addr = l.address.addr();
    let mut http_filters = Vec::new();
    if let Some(t) = &l.grpc_json_transcoder {
        let descriptor = match &t.descriptor {
            Some(b) => b.as_ref().clone(),
            None => crate::proto::VOLTHA_DESCRIPTOR.to_vec(),
        };
        http_filters.push(HttpFilter {
            name: "envoy.filters.http.grpc_json_transcoder".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&GrpcJsonTranscoder {
                descriptor_set: Some(DescriptorSet::ProtoDescriptorBin(descriptor)),
                services: t.services.clone(),
                convert_grpc_status: t.convert_grpc_status,
                auto_mapping: t.auto_mapping,
                ..Default::default()
            }))),
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    });
    let access_log = l
        .access_log
        .iter()
        .map(|a| AccessLog {
            name: "envoy.access_loggers.file".into(),
            config_type: Some(access_log::ConfigType::TypedConfig(any(&FileAccessLog {
                path: a.path.clone(),
                access_log_format: a.format.as_ref().map(|f| {
                    AccessLogFormat::LogFormat(SubstitutionFormatString {
                        format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                            specifier: Some(Specifier::InlineString(f.clone())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                }),
            }))),
            ..Default::default()
        })
        .collect();
    let hcm = HttpConnectionManager {
        stat_prefix: l.stat_prefix.clone().unwrap_or_else(|| l.name.clone()),
        codec_type: match l.codec {
            Codec::Auto => CodecType::Auto,
            Codec::Http1 => CodecType::Http1,
            Codec::Http2 => CodecType::Http2,
        } as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config_name(&l.name),
        })),
        http_filters,
        access_log,
        ..Default::default()
    };
    let transport_socket = l.tls.as_ref().map(|tls| {
        let alpn = match l.codec {
            Codec::Http2 => vec!["h2".to_string()],
            Codec::Http1 => vec!["http/1.1".to_string()],
            Codec::Auto => vec!["h2".to_string(), "http/1.1".to_string()],
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: Some(file(&tls.cert_file)),
                        private_key: Some(file(&tls.key_file)),
                        ..Default::default()
                    }],
                    alpn_protocols: alpn,
                    ..Default::default()
                }),
                ..Default::default()
            }))),
        }
    });
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(&addr.ip().to_string(), addr.port())),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            transport_socket,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}
