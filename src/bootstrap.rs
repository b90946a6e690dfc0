//! `voltha-xds bootstrap`: an Envoy bootstrap that works as is: node identity, ADS over gRPC
//! (SotW or Delta) to this server, CDS and LDS from ADS, an admin listener.

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub node_cluster: String,
    /// `host:port` of the xDS server.
    pub xds: String,
    pub admin_port: u16,
    /// The admin listener's address (loopback by default).
    pub admin_address: String,
    pub delta: bool,
}

pub fn bootstrap(o: &BootstrapOptions) -> Result<String, String> {
    let (host, port) = crate::config::parse_host_port(&o.xds, None).map_err(|e| format!("--xds: {e}"))?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let config_source = json!({ "ads": {}, "resource_api_version": "V3" });
    let v: Value = json!({
        "node": { "id": o.node_id, "cluster": o.node_cluster },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if o.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "voltha_xds" } }],
            },
            "cds_config": config_source,
            "lds_config": config_source,
        },
        "static_resources": {
            "clusters": [{
                "name": "voltha_xds",
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {
                            "http2_protocol_options": {
                                "connection_keepalive": { "interval": "30s", "timeout": "10s" }
                            }
                        }
                    }
                },
                "load_assignment": {
                    "cluster_name": "voltha_xds",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": host, "port_value": port }
                    }}}]}]
                }
            }]
        },
        "admin": {
            "address": { "socket_address": { "address": o.admin_address, "port_value": o.admin_port } }
        }
    });
    serde_yaml::to_string(&v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(xds: &str, delta: bool) -> BootstrapOptions {
        BootstrapOptions {
            node_id: "n1".into(),
            node_cluster: "voltha".into(),
            xds: xds.into(),
            admin_port: 9901,
            admin_address: "127.0.0.1".into(),
            delta,
        }
    }

    #[test]
    fn bootstrap_points_ads_at_the_server() {
        let y: Value = serde_yaml::from_str(&bootstrap(&opts("127.0.0.1:18000", true)).expect("ok")).expect("yaml");
        assert_eq!(y["node"]["cluster"], "voltha");
        assert_eq!(y["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
        let c = &y["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        let sa = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(sa["address"], "127.0.0.1");
        assert_eq!(sa["port_value"], 18000);
        assert_eq!(y["admin"]["address"]["socket_address"]["port_value"], 9901);
    }

    #[test]
    fn dns_names_use_strict_dns_and_bad_addresses_are_refused() {
        let y: Value =
            serde_yaml::from_str(&bootstrap(&opts("voltha-xds.voltha.svc:18000", false)).expect("ok")).expect("yaml");
        assert_eq!(y["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        assert_eq!(y["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert!(bootstrap(&opts("no-port", false)).is_err());
        assert!(bootstrap(&opts("bad host:1", false)).is_err());
    }
}
