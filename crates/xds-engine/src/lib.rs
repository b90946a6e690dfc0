//! xDS serving: opaque, typed, pre-encoded resources in a versioned snapshot cache, streamed to
//! Envoy over gRPC (ADS and the per-type services, State of the World and Delta).
//!
//! This crate knows nothing of VOLTHA, of the sources or of translation: it is handed, per node
//! group, lists of encoded resources by type, and serves them to the letter of the xDS protocol.

pub mod cache;
pub mod csds;
pub mod grpc;
pub mod listen;
pub mod logsafe;
pub mod metrics;
pub mod resources;
pub mod server;
pub mod status;
pub mod stream;
pub mod wire;
