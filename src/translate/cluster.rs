//! Clusters and their load assignments.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as PbLb,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, Http1ProtocolOptions, Http2ProtocolOptions, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::Any;

use super::{any, duration, TranslateError};
use crate::config::{ClusterConfig, DnsLookup, LbPolicy, Protocol};
use crate::model::{Model, DEFAULT_SET};

/// A configured cluster's Envoy clusters: itself, or with `fan_out` one member per non-default
/// set of its source (`vcore{}` over sets `1`, `2` → `vcore1`, `vcore2`), in set order. A set
/// that appears or disappears adds or removes its member.
pub(crate) fn clusters(
    c: &ClusterConfig,
    model: &Model,
) -> Result<Vec<(Cluster, Option<ClusterLoadAssignment>)>, TranslateError> {
    let (Some(fan), Some(src)) = (&c.fan_out, &c.endpoints.source) else {
        return Ok(vec![cluster(c, model)?]);
    };
    let data = model
        .sources
        .get(src)
        .ok_or_else(|| TranslateError::MissingSource(src.clone()))?;
    data.sets
        .keys()
        .filter(|set| set.as_str() != DEFAULT_SET)
        .map(|set| {
            let mut member = c.clone();
            member.name = fan.member(set);
            member.fan_out = None;
            member.endpoints.set = Some(set.clone());
            cluster(&member, model)
        })
        .collect()
}

/// A cluster, and its load assignment when it is served over EDS.
pub(crate) fn cluster(
    c: &ClusterConfig,
    model: &Model,
) -> Result<(Cluster, Option<ClusterLoadAssignment>), TranslateError> {
    let ep = &c.endpoints;
    // host, port pairs, and whether any host is a DNS name.
    let mut hosts: Vec<(String, u16)> = Vec::new();
    let mut dns = false;
    if let Some(src) = &ep.source {
        let data = model
            .sources
            .get(src)
            .ok_or_else(|| TranslateError::MissingSource(src.clone()))?;
        for b in data.set(ep.set.as_deref().unwrap_or(DEFAULT_SET)) {
            let port = b.port.or(ep.port).ok_or_else(|| TranslateError::NoPort {
                cluster: c.name.clone(),
                host: b.host.clone(),
            })?;
            if b.host.parse::<std::net::IpAddr>().is_err() {
                dns = true;
            }
            hosts.push((b.host.clone(), port));
        }
    } else {
        // `static` or `dns`, parsed when the configuration was read.
        dns = ep.dns.is_some();
        hosts.extend(ep.fixed_hosts.iter().cloned());
    }
    hosts.sort();
    hosts.dedup();
    let cla = ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: hosts.iter().map(|(h, p)| lb_endpoint(h, *p)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut cluster = Cluster {
        name: c.name.clone(),
        connect_timeout: Some(duration(c.connect_timeout.0)),
        lb_policy: match c.lb_policy {
            LbPolicy::RoundRobin => PbLb::RoundRobin,
            LbPolicy::LeastRequest => PbLb::LeastRequest,
            LbPolicy::Random => PbLb::Random,
            LbPolicy::RingHash => PbLb::RingHash,
            LbPolicy::Maglev => PbLb::Maglev,
        } as i32,
        typed_extension_protocol_options: BTreeMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            protocol_options(c.protocol),
        )])
        .into_iter()
        .collect(),
        ..Default::default()
    };
    if dns {
        // Envoy resolves names itself; EDS endpoints must be IP addresses.
        let t = match ep.dns_lookup {
            DnsLookup::Strict => DiscoveryType::StrictDns,
            DnsLookup::Logical => DiscoveryType::LogicalDns,
        };
        cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(t as i32));
        cluster.load_assignment = Some(cla);
        Ok((cluster, None))
    } else {
        cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        cluster.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        });
        Ok((cluster, Some(cla)))
    }
}

/// `ConfigSource { ads: {}, resource_api_version: V3 }`.
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn protocol_options(p: Protocol) -> Any {
    let cfg = match p {
        Protocol::Http1 => ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default()),
        Protocol::Http2 => ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default()),
    };
    any(&HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(cfg),
        })),
        ..Default::default()
    })
}

pub(crate) fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn lb_endpoint(host: &str, port: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(host, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}
