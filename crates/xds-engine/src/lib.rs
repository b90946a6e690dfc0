//! An Envoy xDS server: opaque, typed, pre-encoded resources in a versioned snapshot cache,
//! streamed to Envoy over gRPC (ADS and the per-type services, State of the World and Delta),
//! with CSDS, TLS on the listener, and a bound on every per-client structure.
//!
//! This crate knows nothing of where the resources come from: it is handed, per node group
//! (matched against a client's `node.cluster`), lists of resources by type, encodes each once
//! and serves the shared bytes to every stream to the letter of the xDS protocol.
//!
//! - [`cache`]: the snapshot cache ([`cache::Cache::publish`], one version per group and type).
//! - [`resources`]: the four types (CDS, EDS, LDS, RDS), a map keyed by type, and a resource
//!   encoded once.
//! - [`stream`]: the per-stream protocol state machines (SotW and Delta).
//! - [`names`]: subscribed names, shared between the streams of a server.
//! - [`server`], `services`, `grpc`, [`wire`]: the stream tasks, the gRPC services and their
//!   framing.
//! - [`csds`]: client status (CSDS) over the same port.
//! - [`listen`]: the listener, its connection bound and TLS.
//! - [`status`]: the table of open streams, for status pages and CSDS.
//! - [`metrics`]: the engine's Prometheus metrics.
//! - `logsafe`: escaping and rate-limiting of client-supplied text in logs.
//!
//! # Serving a snapshot to Envoy
//!
//! ```no_run
//! use std::collections::BTreeMap;
//!
//! use envoy_types::pb::envoy::config::cluster::v3::Cluster;
//! use xds_engine::cache::{Cache, GroupResources};
//! use xds_engine::server::XdsServer;
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! // One group ("default") with one cluster, encoded once when published.
//! let group = GroupResources {
//!     clusters: vec![Cluster { name: "backend".into(), ..Default::default() }],
//!     ..Default::default()
//! };
//! let cache = Cache::new();
//! cache.publish(&BTreeMap::from([("default".to_string(), group)]), "default", std::time::Instant::now())?;
//!
//! // ADS, the per-type services and CSDS on one port.
//! let server = XdsServer::new(cache.clone())
//!     .with_max_streams(10_000)
//!     // Shown by Envoy as `control_plane.identifier`.
//!     .with_control_plane(Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
//!         identifier: "my-control-plane".into(),
//!     }));
//! server
//!     .into_router(tonic::transport::Server::builder())
//!     .serve("127.0.0.1:18000".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod cache;
pub mod csds;
mod grpc;
pub mod listen;
mod logsafe;
pub mod metrics;
pub mod names;
pub mod resources;
pub mod server;
mod services;
pub mod status;
pub mod stream;
pub mod wire;
