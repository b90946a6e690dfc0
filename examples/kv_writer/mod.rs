//! Where the switch benchmark's xDS path writes the assignment (`--source`): the file (write +
//! rename, as before), Consul (the Consul HTTP API double of `tests/support/consul.rs`, in this
//! process, behind the shipped `config/voltha-consul.yaml`) or a real etcd (`/usr/bin/etcd` or
//! `--etcd-bin`, a temporary data dir, behind the shipped `config/voltha-etcd.yaml`; written
//! with etcd's `/v3/kv/put` on a kept-alive connection, no `etcdctl` process in the measured
//! time).
//!
//! Each write returns the instant just before the write started: the switch time runs from
//! there to the first call served by the new core.

#![allow(dead_code)]

#[path = "../../tests/support/consul.rs"]
mod consul;
// The Consul double's TLS front (unused here) names it.
#[allow(dead_code)]
#[path = "../../tests/support/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::ValueEnum;

/// The key VOLTHA's leader writes (the shipped KV configurations' `key`).
pub const KEY: &str = "service/voltha/data/core/assignment";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Source {
    File,
    Consul,
    Etcd,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Consul => "Consul",
            Source::Etcd => "etcd",
        }
    }
}

/// A running store and how to write to it.
pub enum Writer {
    File(PathBuf),
    Consul(consul::ConsulDouble),
    Etcd {
        http: reqwest::Client,
        child: Child,
        addr: String,
    },
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Writer::Etcd { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The shipped configuration of `source` (`file`: the embedded default profile).
pub fn shipped(source: Source) -> &'static str {
    match source {
        Source::File => voltha_xds::config::EMBEDDED_DEFAULT,
        Source::Consul => include_str!("../../config/voltha-consul.yaml"),
        Source::Etcd => include_str!("../../config/voltha-etcd.yaml"),
    }
}

/// Starts the store for `source` with `first` as the assignment.
pub async fn start(source: Source, dir: &Path, file: &Path, etcd_bin: &Path, first: &str) -> Result<Writer> {
    match source {
        Source::File => {
            std::fs::write(file, first)?;
            Ok(Writer::File(file.to_path_buf()))
        }
        Source::Consul => {
            let c = consul::ConsulDouble::start().await;
            c.put(KEY, first.as_bytes());
            Ok(Writer::Consul(c))
        }
        Source::Etcd => {
            let client = crate::free_port()?;
            let peer = crate::free_port()?;
            let (c, p) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
            let log = std::fs::File::create(dir.join("etcd.log"))?;
            let child = Command::new(etcd_bin)
                .args(["--name", "bench", "--data-dir"])
                .arg(dir.join("etcd-data"))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
                .args(["--initial-cluster", &format!("bench={p}"), "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} (Debian: etcd-server)", etcd_bin.display()))?;
            let mut w = Writer::Etcd {
                http: reqwest::Client::new(),
                child,
                addr: format!("127.0.0.1:{client}"),
            };
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                match w.write(first).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > until => bail!("etcd did not answer in 20 s: {e:#}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Ok(w)
        }
    }
}

impl Writer {
    /// Points the source of a shipped KV configuration at this store (a file configuration is
    /// returned as it is).
    pub fn configure(&self, yaml: &str) -> String {
        match self {
            Writer::File(_) => yaml.to_string(),
            Writer::Consul(c) => yaml.replace(
                "    type: consul\n",
                &format!("    type: consul\n    address: http://{}\n", c.addr),
            ),
            Writer::Etcd { addr, .. } => yaml.replace(
                "    type: etcd\n",
                &format!("    type: etcd\n    endpoints: [\"{addr}\"]\n"),
            ),
        }
    }

    /// Writes the assignment; returns the instant just before the write began.
    pub async fn write(&mut self, body: &str) -> Result<Instant> {
        match self {
            Writer::File(path) => crate::write_atomically(path, body.as_bytes()),
            Writer::Consul(c) => {
                let t0 = Instant::now();
                c.put(KEY, body.as_bytes());
                Ok(t0)
            }
            Writer::Etcd { http, addr, .. } => {
                // etcd's gateway for its KV API (JSON, bytes in base64): the same Put as a gRPC
                // client's, on a kept-alive HTTP connection.
                let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
                let req = serde_json::json!({ "key": b64(KEY.as_bytes()), "value": b64(body.as_bytes()) });
                let t0 = Instant::now();
                let r = http
                    .post(format!("http://{addr}/v3/kv/put"))
                    .json(&req)
                    .send()
                    .await
                    .context("etcd put")?;
                if !r.status().is_success() {
                    bail!("etcd put: HTTP {}", r.status());
                }
                Ok(t0)
            }
        }
    }
}
