//! Build steps, all in Rust (no system `protoc`):
//! 1. compile the VOLTHA northbound subset in `proto-vendor/` with `protox`, write its
//!    descriptor set to `$OUT_DIR/voltha_descriptor.bin` (embedded into the gRPC-JSON
//!    transcoder config) and generate its tonic client and server (the fake core uses them);
//! 2. generate the xDS gRPC services with our own response types, so a response is assembled
//!    from resources encoded once per snapshot and shared by every stream.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto-vendor");

    let mut compiler = protox::Compiler::new(["proto-vendor"])?;
    compiler
        .include_imports(true)
        .include_source_info(false)
        .open_files([
            "voltha/voltha.proto",
            "voltha/health.proto",
            "schema/schema.proto",
        ])?;
    // The encoded set keeps custom options (the google.api.http rules the transcoder needs);
    // the prost_types form, used for code generation only, drops them.
    std::fs::write(
        out_dir.join("voltha_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    xds_services(&out_dir);
    Ok(())
}

struct Svc {
    package: &'static str,
    name: &'static str,
    stream: &'static str,
    delta: &'static str,
    fetch: Option<&'static str>,
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn xds_services(out_dir: &std::path::Path) {
    use tonic_build::manual::{Builder, Method, Service};
    let services = [
        Svc {
            package: "envoy.service.discovery.v3",
            name: "AggregatedDiscoveryService",
            stream: "StreamAggregatedResources",
            delta: "DeltaAggregatedResources",
            fetch: None,
        },
        Svc {
            package: "envoy.service.cluster.v3",
            name: "ClusterDiscoveryService",
            stream: "StreamClusters",
            delta: "DeltaClusters",
            fetch: Some("FetchClusters"),
        },
        Svc {
            package: "envoy.service.endpoint.v3",
            name: "EndpointDiscoveryService",
            stream: "StreamEndpoints",
            delta: "DeltaEndpoints",
            fetch: Some("FetchEndpoints"),
        },
        Svc {
            package: "envoy.service.listener.v3",
            name: "ListenerDiscoveryService",
            stream: "StreamListeners",
            delta: "DeltaListeners",
            fetch: Some("FetchListeners"),
        },
        Svc {
            package: "envoy.service.route.v3",
            name: "RouteDiscoveryService",
            stream: "StreamRoutes",
            delta: "DeltaRoutes",
            fetch: Some("FetchRoutes"),
        },
    ];
    let req = "envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest";
    let dreq = "envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest";
    let resp = "crate::xds::wire::DiscoveryResponse";
    let dresp = "crate::xds::wire::DeltaDiscoveryResponse";
    let codec = "tonic_prost::ProstCodec";
    let built: Vec<Service> = services
        .iter()
        .map(|s| {
            let mut b = Service::builder().name(s.name).package(s.package);
            b = b.method(
                Method::builder()
                    .name(snake(s.stream))
                    .route_name(s.stream)
                    .input_type(req)
                    .output_type(resp)
                    .codec_path(codec)
                    .client_streaming()
                    .server_streaming()
                    .build(),
            );
            b = b.method(
                Method::builder()
                    .name(snake(s.delta))
                    .route_name(s.delta)
                    .input_type(dreq)
                    .output_type(dresp)
                    .codec_path(codec)
                    .client_streaming()
                    .server_streaming()
                    .build(),
            );
            if let Some(f) = s.fetch {
                b = b.method(
                    Method::builder()
                        .name(snake(f))
                        .route_name(f)
                        .input_type(req)
                        .output_type(resp)
                        .codec_path(codec)
                        .build(),
                );
            }
            b.build()
        })
        .collect();
    Builder::new()
        .build_client(false)
        .build_server(true)
        .out_dir(out_dir)
        .compile(&built);
}
