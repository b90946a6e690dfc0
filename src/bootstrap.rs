//! `voltha-xds bootstrap`: an Envoy bootstrap that works as is: node identity, ADS over gRPC
//! (SotW or Delta) to this server, optionally over TLS or mutual TLS, CDS and LDS from ADS, an
//! admin listener; with `--grpc`, the JSON bootstrap of a proxyless gRPC client instead.

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
    /// TLS to the xDS server.
    pub tls: Option<BootstrapTls>,
}

/// TLS from Envoy to the xDS server; the paths are as Envoy sees them.
#[derive(Debug, Clone)]
pub struct BootstrapTls {
    /// CA that signed the server's certificate.
    pub ca: String,
    /// Client certificate and key, for mutual TLS.
    pub client: Option<(String, String)>,
}

/// Envoy's upstream TLS context: the server's certificate is verified against the CA and its
/// subject alternative names against the host Envoy dials; HTTP/2 by ALPN.
fn transport_socket(tls: &BootstrapTls, host: &str, is_ip: bool) -> Value {
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": { "filename": tls.ca },
            "match_typed_subject_alt_names": [{
                "san_type": if is_ip { "IP_ADDRESS" } else { "DNS" },
                "matcher": { "exact": host }
            }]
        }
    });
    if let Some((cert, key)) = &tls.client {
        common["tls_certificates"] = json!([{
            "certificate_chain": { "filename": cert },
            "private_key": { "filename": key }
        }]);
    }
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    if !is_ip {
        ctx["sni"] = json!(host);
    }
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": ctx })
}

pub fn bootstrap(o: &BootstrapOptions) -> Result<String, String> {
    let (host, port) = crate::config::parse_host_port(&o.xds, None).map_err(|e| format!("--xds: {e}"))?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let config_source = json!({ "ads": {}, "resource_api_version": "V3" });
    if let Some(t) = &o.tls {
        let files = std::iter::once(("--tls-ca", &t.ca))
            .chain(t.client.iter().flat_map(|(c, k)| [("--tls-cert", c), ("--tls-key", k)]));
        for (flag, f) in files {
            if f.trim().is_empty() {
                return Err(format!("{flag}: empty path"));
            }
        }
    }
    let mut v: Value = json!({
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
    if let Some(t) = &o.tls {
        v["static_resources"]["clusters"][0]["transport_socket"] = transport_socket(t, &host, is_ip);
    }
    crate::config::yaml::to_string(&v)
}

/// `voltha-xds bootstrap --grpc`: the JSON bootstrap of a proxyless gRPC client (the file
/// `GRPC_XDS_BOOTSTRAP` names): one xDS server with `server_features: ["xds_v3",
/// "ignore_resource_deletion"]` (gRFC A53: the client keeps a listener or cluster a later
/// response leaves out, instead of failing its calls), plain text or
/// gRPC's `tls` channel credentials (gRFC A65: CA, and for mutual TLS a certificate and key),
/// and the node. gRPC's xDS client speaks State of the World only, so `delta` is refused; the
/// admin options have no meaning for it and are not used.
pub fn grpc_bootstrap(o: &BootstrapOptions) -> Result<String, String> {
    let (host, port) = crate::config::parse_host_port(&o.xds, None).map_err(|e| format!("--xds: {e}"))?;
    if o.delta {
        return Err("--delta: gRPC's xDS client speaks State of the World only; leave --delta out with --grpc".into());
    }
    let server_uri = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let creds = match &o.tls {
        None => json!({ "type": "insecure" }),
        Some(t) => {
            let files = std::iter::once(("--tls-ca", &t.ca))
                .chain(t.client.iter().flat_map(|(c, k)| [("--tls-cert", c), ("--tls-key", k)]));
            for (flag, f) in files {
                if f.trim().is_empty() {
                    return Err(format!("{flag}: empty path"));
                }
            }
            let mut config = json!({ "ca_certificate_file": t.ca });
            if let Some((cert, key)) = &t.client {
                config["certificate_file"] = json!(cert);
                config["private_key_file"] = json!(key);
            }
            json!({ "type": "tls", "config": config })
        }
    };
    let v = json!({
        "xds_servers": [{
            "server_uri": server_uri,
            "channel_creds": [creds],
            // A53: a resource missing from a later response (a reload that drops the service)
            // is not deleted; the client keeps its last good LDS/CDS.
            "server_features": ["xds_v3", "ignore_resource_deletion"],
        }],
        "node": { "id": o.node_id, "cluster": o.node_cluster, "locality": {} },
    });
    let mut out = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_bootstrap_names_the_server_with_xds_v3_and_the_node() {
        let v: Value =
            serde_json::from_str(&grpc_bootstrap(&opts("127.0.0.1:18000", false)).expect("ok")).expect("json");
        let server = &v["xds_servers"][0];
        assert_eq!(server["server_uri"], "127.0.0.1:18000");
        assert_eq!(server["server_features"], json!(["xds_v3", "ignore_resource_deletion"]));
        assert_eq!(server["channel_creds"], json!([{ "type": "insecure" }]));
        assert_eq!(v["node"]["id"], "n1");
        assert_eq!(v["node"]["cluster"], "voltha");
        let v6: Value = serde_json::from_str(&grpc_bootstrap(&opts("[::1]:18000", false)).expect("ok")).expect("json");
        assert_eq!(v6["xds_servers"][0]["server_uri"], "[::1]:18000");
        let err = grpc_bootstrap(&opts("127.0.0.1:18000", true)).expect_err("delta");
        assert!(err.contains("State of the World"), "{err}");
        assert!(
            grpc_bootstrap(&opts("127.0.0.1", false)).is_err(),
            "the port is required"
        );
        let mtls = BootstrapOptions {
            tls: Some(BootstrapTls {
                ca: "/etc/xds/ca.pem".into(),
                client: Some(("/etc/xds/c.pem".into(), "/etc/xds/k.pem".into())),
            }),
            ..opts("xds.voltha.svc:18000", false)
        };
        let v: Value = serde_json::from_str(&grpc_bootstrap(&mtls).expect("ok")).expect("json");
        assert_eq!(
            v["xds_servers"][0]["channel_creds"],
            json!([{ "type": "tls", "config": {
                "ca_certificate_file": "/etc/xds/ca.pem",
                "certificate_file": "/etc/xds/c.pem",
                "private_key_file": "/etc/xds/k.pem",
            }}])
        );
    }

    fn opts(xds: &str, delta: bool) -> BootstrapOptions {
        BootstrapOptions {
            node_id: "n1".into(),
            node_cluster: "voltha".into(),
            xds: xds.into(),
            admin_port: 9901,
            admin_address: "127.0.0.1".into(),
            delta,
            tls: None,
        }
    }

    #[test]
    fn tls_verifies_the_server_name_and_mtls_adds_the_client_certificate() {
        let tls = |client: bool| BootstrapTls {
            ca: "/etc/xds/ca.pem".into(),
            client: client.then(|| ("/etc/xds/envoy.pem".into(), "/etc/xds/envoy-key.pem".into())),
        };
        let socket = |xds: &str, client: bool| -> Value {
            let o = BootstrapOptions {
                tls: Some(tls(client)),
                ..opts(xds, false)
            };
            let y: Value = crate::config::yaml::from_str(&bootstrap(&o).expect("ok")).expect("yaml");
            y["static_resources"]["clusters"][0]["transport_socket"]["typed_config"].clone()
        };
        let by_ip = socket("127.0.0.1:18000", false);
        let common = &by_ip["common_tls_context"];
        assert_eq!(
            common["validation_context"]["trusted_ca"]["filename"],
            "/etc/xds/ca.pem"
        );
        let san = &common["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["san_type"], "IP_ADDRESS");
        assert_eq!(san["matcher"]["exact"], "127.0.0.1");
        assert!(by_ip.get("sni").is_none(), "no SNI for an IP address");
        assert!(
            common.get("tls_certificates").is_none(),
            "no client certificate without --tls-cert"
        );
        assert_eq!(common["alpn_protocols"][0], "h2");

        let by_name = socket("voltha-xds.voltha.svc:18000", true);
        assert_eq!(by_name["sni"], "voltha-xds.voltha.svc");
        let common = &by_name["common_tls_context"];
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"][0]["san_type"],
            "DNS"
        );
        assert_eq!(
            common["tls_certificates"][0]["certificate_chain"]["filename"],
            "/etc/xds/envoy.pem"
        );
        assert_eq!(
            common["tls_certificates"][0]["private_key"]["filename"],
            "/etc/xds/envoy-key.pem"
        );

        let o = BootstrapOptions {
            tls: Some(BootstrapTls {
                ca: " ".into(),
                client: None,
            }),
            ..opts("127.0.0.1:1", false)
        };
        assert_eq!(bootstrap(&o).err().as_deref(), Some("--tls-ca: empty path"));
    }

    #[test]
    fn bootstrap_points_ads_at_the_server() {
        let y: Value =
            crate::config::yaml::from_str(&bootstrap(&opts("127.0.0.1:18000", true)).expect("ok")).expect("yaml");
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
            crate::config::yaml::from_str(&bootstrap(&opts("voltha-xds.voltha.svc:18000", false)).expect("ok"))
                .expect("yaml");
        assert_eq!(y["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        assert_eq!(y["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert!(bootstrap(&opts("no-port", false)).is_err());
        assert!(bootstrap(&opts("bad host:1", false)).is_err());
    }
}
