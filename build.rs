//! Build steps, all in Rust (no system `protoc`):
//! 1. compile the VOLTHA northbound subset in `proto-vendor/` with `protox`, write its
//!    descriptor set to `$OUT_DIR/voltha_descriptor.bin` (embedded into the gRPC-JSON
//!    transcoder config) and generate its tonic client and server (the fake core uses them);
//! 2. compile the etcd v3 API subset in `proto-vendor/etcd/` into a tonic client (the etcd
//!    source).
//!
//! The xDS services need no generated code: `crates/xds-engine/src/grpc.rs` serves them directly, so a
//! response is framed from resources encoded once per snapshot and shared by every stream.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto-vendor");

    let mut compiler = protox::Compiler::new(["proto-vendor"])?;
    compiler.include_imports(true).include_source_info(false).open_files([
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

    // The etcd v3 API subset the etcd source uses (client only).
    let mut etcd = protox::Compiler::new(["proto-vendor"])?;
    etcd.include_imports(true)
        .include_source_info(false)
        .open_files(["etcd/etcdserverpb/rpc.proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd.file_descriptor_set())?;

    Ok(())
}
