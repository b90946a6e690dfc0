//! Build steps, all in Rust (no system `protoc`):
//! 1. compile the VOLTHA northbound subset in `proto-vendor/` with `protox`, write its
//!    descriptor set to `$OUT_DIR/voltha_descriptor.bin` (embedded into the gRPC-JSON
//!    transcoder config) and generate its tonic client and server (the fake core uses them);
//! 2. compile the etcd v3 API subset in `proto-vendor/etcd/` into a tonic client (the etcd
//!    source);
//! 3. set `VOLTHA_XDS_REVISION` for the code (`voltha_xds_build_info`, the start log line,
//!    `--version`): the variable of that name when the build has it (the Dockerfile passes it,
//!    its context has no `.git`), else the commit from `git rev-parse`, else `unknown`.
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

    println!("cargo:rustc-env=VOLTHA_XDS_REVISION={}", revision());
    Ok(())
}

/// The source revision this build is made from; see the module doc.
fn revision() -> String {
    println!("cargo:rerun-if-env-changed=VOLTHA_XDS_REVISION");
    // A label value and part of `--version`: a short, plain string.
    let clean = |s: &str| -> Option<String> {
        let s = s.trim();
        let ok = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        ok.then(|| s.to_string())
    };
    if let Some(r) = std::env::var("VOLTHA_XDS_REVISION").ok().as_deref().and_then(clean) {
        return r;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short=12", "HEAD"]).as_deref().and_then(clean) else {
        return "unknown".to_string();
    };
    // Built again when HEAD moves: HEAD itself, the branch it names, the packed refs.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for w in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    rev
}
