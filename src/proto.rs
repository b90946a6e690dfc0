//! The VOLTHA northbound subset compiled from `proto-vendor/` (see `build.rs`): its descriptor
//! set, which the gRPC-JSON transcoder config carries inline, and its tonic client and server,
//! which the fake core and the tests use.

/// `FileDescriptorSet` of `proto-vendor/` (VOLTHA subset with its imports).
pub(crate) const VOLTHA_DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/voltha_descriptor.bin"));

#[allow(clippy::all, missing_docs)]
pub mod voltha {
    tonic::include_proto!("voltha");
}

#[allow(clippy::all, missing_docs)]
pub mod common {
    tonic::include_proto!("common");
}

#[allow(clippy::all, missing_docs)]
pub mod schema {
    tonic::include_proto!("schema");
}

/// Compiled for the VOLTHA protos' imports (HTTP annotations); nothing here calls it.
#[allow(clippy::all, missing_docs, dead_code)]
pub(crate) mod google {
    pub(crate) mod api {
        tonic::include_proto!("google.api");
    }
}

/// The etcd v3 API subset in `proto-vendor/etcd/` (client only): KV.Range, Watch.Watch,
/// Auth.Authenticate.
#[allow(clippy::all, missing_docs)]
pub(crate) mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[allow(clippy::all, missing_docs)]
pub(crate) mod mvccpb {
    tonic::include_proto!("mvccpb");
}
