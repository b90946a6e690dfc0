//! Switch benchmark: a core assignment change reaching gRPC traffic through a real Envoy, by the
//! old path (render a static Envoy configuration and hot-restart Envoy, as envoyd did) and by
//! the new one (the same change through voltha-xds over xDS), under the same steady traffic.
//!
//! ```text
//! scripts/bench-switch.sh            # builds in release, then runs both paths
//! cargo run --release --example switchbench -- --changes 20 --rate 200
//! ```
//!
//! What it does, for each path:
//! 1. starts two fake VOLTHA cores (`voltha-fake-core`, ids `vcore-a` on 127.0.0.2 and `vcore-b`
//!    on 127.0.0.3, one port) and writes an assignment naming `vcore-a`;
//! 2. configuration: the embedded default profile (`config/voltha-xds.yaml`: the NBI gRPC and
//!    REST listeners, clusters `voltha-grpc` and `voltha-grpc-RR` fed by the assignment), moved
//!    to free loopback ports, its file source polled every `--poll-interval`, default debounce
//!    (50 ms quiet);
//!    - *hot restart*: `voltha-xds render --node-cluster voltha` turns that configuration and
//!      the assignment into Envoy resources, which become a static bootstrap (EDS clusters made
//!      STATIC with their load assignment inline, RDS made inline). Envoy runs with
//!      `--restart-epoch N --base-id B --drain-time-s D --parent-shutdown-time-s P`;
//!    - *xDS*: `voltha-xds serve` on that configuration, one Envoy from `voltha-xds bootstrap`;
//! 3. a gRPC client sends `voltha.HealthService/GetHealthStatus` through Envoy's NBI listener at
//!    a fixed rate (`--rate`, default 200 calls/s) on one channel (one HTTP/2 connection,
//!    reconnected by the client when Envoy closes it), each call with a 1 s deadline; the fake
//!    core names itself in the `x-voltha-core` response header;
//! 4. `--changes` times (default 20), `--interval-ms` apart (default 4 s): switches the
//!    assignment to the other core (write + rename of the assignment file). The hot restart
//!    path then renders the new static configuration and starts the next Envoy epoch, as
//!    envoyd did. The switch time is from just before the rename to the completion of the first
//!    call, sent after the rename, that the new core served;
//! 5. reports per path: switch time p50/max, calls sent, failed (any error or deadline), served
//!    by the old core after the change, Envoy processes started, and memory: the proportional
//!    set size (PSS, so pages Envoy epochs share are counted once) of every Envoy process alive,
//!    summed, sampled every 50 ms (peak and mean), and on the xDS path the server's own PSS.
//!
//! Envoy's own defaults (and envoyd's) are a 600 s drain and a 900 s parent shutdown: an old
//! epoch would serve its connections with the old assignment for up to 10 minutes. The
//! benchmark shortens both (2 s and 3 s by default) so that 20 changes fit in minutes, which
//! makes the hot restart path look better than envoyd's, not worse.
//!
//! `--source consul|etcd --path xds` runs the xDS path from a KV write instead of the file
//! (`examples/kv_writer/mod.rs`): the Consul double with the shipped
//! `config/voltha-consul.yaml`, or a real etcd with `config/voltha-etcd.yaml`; the switch time
//! then runs from just before the write (the double's `PUT`, etcd's `/v3/kv/put`).
//! `scripts/bench-kv-call.sh` runs the three sources in a row.
//!
//! Every wait is bounded; a process that dies or a switch that does not happen is reported.

mod common;
#[path = "kv_writer/mod.rs"]
mod kv_writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use common::{free_port, percentile, tail};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use voltha_xds::proto::voltha::health_service_client::HealthServiceClient;

#[derive(Parser, Debug)]
#[command(about = "An assignment change through a real Envoy: hot restart (envoyd's way) against xDS (voltha-xds)")]
struct Args {
    /// Assignment changes per path.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// gRPC calls per second through Envoy, sent throughout the changes.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Milliseconds between changes.
    #[arg(long, default_value_t = 4000)]
    interval_ms: u64,
    /// Envoy's --drain-time-s on the hot restart path.
    #[arg(long, default_value_t = 2)]
    drain_time_s: u64,
    /// Envoy's --parent-shutdown-time-s on the hot restart path.
    #[arg(long, default_value_t = 3)]
    parent_shutdown_time_s: u64,
    /// Which paths to run.
    #[arg(long, value_enum, default_value = "both")]
    path: Which,
    /// The file source's poll interval on the xDS path.
    #[arg(long, default_value = "10ms")]
    poll_interval: String,
    /// Where the xDS path's assignment is written: the file (the embedded default profile),
    /// Consul (the Consul double, shipped `config/voltha-consul.yaml`) or a real etcd (shipped
    /// `config/voltha-etcd.yaml`). The hot restart path reads the file only.
    #[arg(long, value_enum, default_value = "file")]
    source: kv_writer::Source,
    /// The etcd binary for `--source etcd`.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Leave the shipped configuration's `grpc_services` out (the proxyless gRPC groups): what
    /// a server built before they existed reads, for a before/after table. Envoy's group is the
    /// same either way.
    #[arg(long)]
    envoy_only: bool,
    /// The voltha-xds binary [default: next to this example's directory].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The Envoy binary [default: $ENVOY_BIN, else .venv/bin/envoy].
    #[arg(long)]
    envoy_bin: Option<PathBuf>,
    /// Keep the temporary directory (configurations, logs).
    #[arg(long)]
    keep: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Both,
    HotRestart,
    Xds,
}

const CORES: [(&str, &str); 2] = [("vcore-a", "127.0.0.2"), ("vcore-b", "127.0.0.3")];
const CALL_DEADLINE: Duration = Duration::from_secs(1);

fn assignment(core: usize) -> String {
    let (id, host) = CORES[core % 2];
    format!(r#"{{"0001": {{"id": "{id}", "host": "{host}"}}, "0002": null}}"#)
}

// ---- Processes. ----

/// A child process killed when dropped, with its log file.
struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path, name: &str) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
            name: name.to_string(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.exited() {
            bail!("{} exited ({status}); log tail:\n{}", self.name, tail(&self.log, 20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Proportional set size of a process in KiB (0 once it is gone).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn sibling_bin(name: &str) -> PathBuf {
    // target/<profile>/examples/switchbench -> target/<profile>/<name>
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn envoy_bin(args: &Args) -> PathBuf {
    if let Some(p) = &args.envoy_bin {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy")
}

/// Replaces `path` by write + rename; returns the instant just before the rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<Instant> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let t0 = Instant::now();
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(t0)
}

// ---- Static configuration for the hot restart path. ----

/// `voltha-xds render` output (one group, `/config_dump` shape) → a static Envoy bootstrap:
/// EDS clusters become STATIC with their load assignment inline, RDS becomes an inline route
/// configuration. Every other field is what the xDS path serves.
fn static_bootstrap(dump: &Value, node_id: &str, admin_port: u16) -> Result<Value> {
    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("@type");
        }
        v
    };
    let configs = dump["configs"]
        .as_array()
        .ok_or_else(|| anyhow!("render output has no configs"))?;
    let (mut clusters, mut endpoints, mut listeners, mut routes) = (vec![], HashMap::new(), vec![], HashMap::new());
    for c in configs {
        let ty = c["@type"].as_str().unwrap_or_default();
        let items = |key: &str| c[key].as_array().cloned().unwrap_or_default();
        if ty.ends_with("ClustersConfigDump") {
            clusters.extend(
                items("dynamic_active_clusters")
                    .into_iter()
                    .map(|x| strip(x["cluster"].clone())),
            );
        } else if ty.ends_with("EndpointsConfigDump") {
            for x in items("dynamic_endpoint_configs") {
                let e = strip(x["endpoint_config"].clone());
                let name = e["cluster_name"].as_str().unwrap_or_default().to_string();
                endpoints.insert(name, e);
            }
        } else if ty.ends_with("ListenersConfigDump") {
            listeners.extend(
                items("dynamic_listeners")
                    .into_iter()
                    .map(|x| strip(x["active_state"]["listener"].clone())),
            );
        } else if ty.ends_with("RoutesConfigDump") {
            for x in items("dynamic_route_configs") {
                let r = strip(x["route_config"].clone());
                let name = r["name"].as_str().unwrap_or_default().to_string();
                routes.insert(name, r);
            }
        }
    }
    for c in &mut clusters {
        if c["type"] != "EDS" {
            continue;
        }
        let name = c["eds_cluster_config"]["service_name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| c["name"].as_str())
            .unwrap_or_default()
            .to_string();
        let o = c.as_object_mut().ok_or_else(|| anyhow!("a cluster is not an object"))?;
        o.remove("eds_cluster_config");
        o.insert("type".into(), json!("STATIC"));
        let la = endpoints
            .remove(&name)
            .unwrap_or_else(|| json!({ "cluster_name": name }));
        o.insert("load_assignment".into(), la);
    }
    for l in &mut listeners {
        for chain in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in chain["filters"].as_array_mut().into_iter().flatten() {
                let Some(tc) = f["typed_config"].as_object_mut() else {
                    continue;
                };
                let Some(rds) = tc.remove("rds") else { continue };
                let name = rds["route_config_name"].as_str().unwrap_or_default();
                let rc = routes
                    .get(name)
                    .cloned()
                    .ok_or_else(|| anyhow!("no route configuration {name:?} in the render output"))?;
                tc.insert("route_config".into(), rc);
            }
        }
    }
    Ok(json!({
        "node": { "id": node_id, "cluster": "voltha" },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
        "static_resources": { "listeners": listeners, "clusters": clusters },
    }))
}

/// envoyd's step: the configuration for the current assignment, rendered and written out.
fn render_static(server_bin: &Path, config: &Path, out: &Path, admin_port: u16) -> Result<()> {
    let o = Command::new(server_bin)
        .args(["render", "--node-cluster", "voltha", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .context("running voltha-xds render")?;
    if !o.status.success() {
        bail!("voltha-xds render failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let dump: Value = serde_json::from_slice(&o.stdout).context("parsing the render output")?;
    let bs = static_bootstrap(&dump, "switch-hot-restart", admin_port)?;
    std::fs::write(out, serde_json::to_vec_pretty(&bs)?).with_context(|| format!("writing {}", out.display()))
}

// ---- Traffic. ----

struct Call {
    sent: Instant,
    done: Instant,
    /// The core that answered, or the error.
    outcome: Result<String, String>,
}

type Calls = Arc<Mutex<Vec<Call>>>;

async fn one_call(ch: Channel) -> Result<String, String> {
    let mut c = HealthServiceClient::new(ch);
    match tokio::time::timeout(CALL_DEADLINE, c.get_health_status(())).await {
        Err(_) => Err("deadline (1 s)".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(r)) => Ok(r
            .metadata()
            .get("x-voltha-core")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()),
    }
}

/// Calls at a fixed rate until `stop` is set; every call's record goes to `calls`.
fn start_traffic(
    ch: Channel,
    rate: u32,
    calls: Calls,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut inflight = tokio::task::JoinSet::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let (ch, calls) = (ch.clone(), calls.clone());
            inflight.spawn(async move {
                let sent = Instant::now();
                let outcome = one_call(ch).await;
                calls.lock().push(Call {
                    sent,
                    done: Instant::now(),
                    outcome,
                });
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    })
}

/// Waits (bounded) until a call sent at or after `t0` was served by `core`; returns when it
/// completed.
/// `from`: the number of records before `t0` (records are pushed as calls complete, so a call
/// sent after `t0` lands after them).
async fn first_served_by(calls: &Calls, from: usize, t0: Instant, core: &str, limit: Duration) -> Option<Instant> {
    let deadline = t0 + limit;
    loop {
        let found = calls.lock()[from..]
            .iter()
            .filter(|c| c.sent >= t0 && c.outcome.as_deref() == Ok(core))
            .map(|c| c.done)
            .min();
        if found.is_some() {
            return found;
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Calls through Envoy until `core` answers (bounded): the path is up.
async fn wait_serving(ch: &Channel, core: &str, limit: Duration, procs: &mut [&mut Proc]) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        match one_call(ch.clone()).await {
            Ok(c) if c == core => return Ok(()),
            Ok(c) => last = format!("served by {c}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no call through Envoy reached {core} within {limit:?} (last: {last})")
}

// ---- Memory sampling. ----

#[derive(Default)]
struct Memory {
    /// Every Envoy process alive at the sample, summed.
    envoy_peak_kib: u64,
    envoy_sum_kib: u64,
    /// The voltha-xds server (xDS path only).
    server_peak_kib: u64,
    samples: u64,
    max_envoys: usize,
}

fn start_sampler(
    pids: Arc<Mutex<Vec<u32>>>,
    server: Option<u32>,
    mem: Arc<Mutex<Memory>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let envoys: Vec<u64> = pids.lock().iter().map(|p| pss_kib(*p)).filter(|k| *k > 0).collect();
            let total = envoys.iter().sum::<u64>();
            let srv = server.map_or(0, pss_kib);
            let mut m = mem.lock();
            m.envoy_peak_kib = m.envoy_peak_kib.max(total);
            m.envoy_sum_kib += total;
            m.server_peak_kib = m.server_peak_kib.max(srv);
            m.samples += 1;
            m.max_envoys = m.max_envoys.max(envoys.len());
            drop(m);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

// ---- One path. ----

struct Report {
    path: String,
    switch_ms: Vec<f64>,
    missed: usize,
    sent: usize,
    failed: usize,
    stale: usize,
    errors: BTreeMap<String, usize>,
    envoys_started: usize,
    max_envoys: usize,
    envoy_peak_mib: f64,
    envoy_mean_mib: f64,
    server_peak_mib: f64,
}

struct Setup {
    dir: PathBuf,
    server_bin: PathBuf,
    envoy_bin: PathBuf,
    config: PathBuf,
    writer: kv_writer::Writer,
    grpc_port: u16,
}

async fn setup(args: &Args, dir: &Path, name: &str) -> Result<(Setup, Vec<Proc>)> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let server_bin = args.server_bin.clone().unwrap_or_else(|| sibling_bin("voltha-xds"));
    let core_bin = sibling_bin("voltha-fake-core");
    let envoy_bin = envoy_bin(args);
    for (what, p) in [
        ("voltha-xds", &server_bin),
        ("voltha-fake-core", &core_bin),
        ("Envoy", &envoy_bin),
    ] {
        if !p.is_file() {
            bail!(
                "{what} not found at {} (scripts/bench-switch.sh builds and installs everything)",
                p.display()
            );
        }
    }
    let core_port = free_port()?;
    let mut cores = Vec::new();
    for (id, host) in CORES {
        let listen = format!("{host}:{core_port}");
        let mut cmd = Command::new(&core_bin);
        cmd.args(["--id", id, "--store-id", "0001", "--listen", &listen]);
        cores.push(Proc::spawn(&mut cmd, &dir.join(format!("{id}.log")), id)?);
    }
    let assignment_file = dir.join("assignment.json");
    let writer = kv_writer::start(args.source, &dir, &assignment_file, &args.etcd_bin, &assignment(0)).await?;
    let grpc_port = free_port()?;
    let yaml = kv_writer::shipped(args.source)
        .replace("0.0.0.0:50555", &format!("127.0.0.1:{grpc_port}"))
        .replace("0.0.0.0:8882", &format!("127.0.0.1:{}", free_port()?))
        .replace("0.0.0.0:3000", &format!("127.0.0.1:{}", free_port()?))
        .replace("port: 50556", &format!("port: {core_port}"))
        .replace(
            "path: config/assignment.json",
            &format!(
                "path: {}",
                serde_json::to_string(&assignment_file.display().to_string())?
            ),
        )
        .replace(
            "poll_interval: 250ms",
            &format!("poll_interval: {}", args.poll_interval),
        );
    let yaml = writer.configure(&yaml);
    let yaml = if args.envoy_only {
        without_grpc_services(&yaml)
    } else {
        yaml
    };
    let config = dir.join("voltha-xds.yaml");
    std::fs::write(&config, yaml)?;
    Ok((
        Setup {
            dir,
            server_bin,
            envoy_bin,
            config,
            writer,
            grpc_port,
        },
        cores,
    ))
}

/// The configuration without its top-level `grpc_services` list and the groups' `grpc_services`
/// keys (the shipped files write both on lines of their own).
fn without_grpc_services(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut in_list = false;
    for line in yaml.lines() {
        if line == "grpc_services:" {
            in_list = true;
            continue;
        }
        if in_list && (line.starts_with(' ') || line.is_empty()) {
            continue;
        }
        in_list = false;
        if line.trim_start().starts_with("grpc_services:") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn envoy_cmd(s: &Setup, bootstrap: &Path) -> Command {
    let mut cmd = Command::new(&s.envoy_bin);
    cmd.arg("-c")
        .arg(bootstrap)
        .args(["--concurrency", "1", "--log-level", "warn"]);
    cmd
}

async fn run_path(args: &Args, root: &Path, hot_restart: bool) -> Result<Report> {
    let name = if hot_restart { "hot-restart" } else { "xds" };
    if hot_restart && args.source != kv_writer::Source::File {
        bail!(
            "the hot restart path renders the file only: use --path xds with --source {:?}",
            args.source
        );
    }
    let (mut s, mut cores) = setup(args, root, name).await?;
    let admin_port = free_port()?;
    let base_id = 100 + std::process::id() % 10_000;
    let mut envoys: Vec<Proc> = Vec::new();
    let mut server: Option<Proc> = None;

    if hot_restart {
        let bs = s.dir.join("envoy-epoch-0.json");
        render_static(&s.server_bin, &s.config, &bs, admin_port)?;
        let mut cmd = envoy_cmd(&s, &bs);
        hot_restart_flags(&mut cmd, args, base_id, 0);
        envoys.push(Proc::spawn(
            &mut cmd,
            &s.dir.join("envoy-epoch-0.log"),
            "Envoy epoch 0",
        )?);
    } else {
        let xds = format!("127.0.0.1:{}", free_port()?);
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&s.server_bin);
        cmd.args(["--log-format", "json", "serve", "--config"])
            .arg(&s.config)
            .args(["--xds-listen", &xds, "--admin-listen", &admin])
            .args(["--admin-debug-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        let mut srv = Proc::spawn(&mut cmd, &s.dir.join("server.log"), "voltha-xds")?;
        let ready = Instant::now() + Duration::from_secs(30);
        loop {
            srv.check_alive()?;
            let ok = reqwest::get(format!("http://{admin}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() > ready {
                bail!("voltha-xds not ready within 30 s; log tail:\n{}", tail(&srv.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let o = Command::new(&s.server_bin)
            .args([
                "bootstrap",
                "--node-id",
                "switch-xds",
                "--node-cluster",
                "voltha",
                "--xds",
                &xds,
            ])
            .args(["--admin-port", &admin_port.to_string()])
            .output()
            .context("running voltha-xds bootstrap")?;
        if !o.status.success() {
            bail!("voltha-xds bootstrap failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let bs = s.dir.join("envoy-bootstrap.yaml");
        std::fs::write(&bs, &o.stdout)?;
        let mut cmd = envoy_cmd(&s, &bs);
        cmd.arg("--disable-hot-restart");
        envoys.push(Proc::spawn(&mut cmd, &s.dir.join("envoy.log"), "Envoy")?);
        server = Some(srv);
    }

    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", s.grpc_port))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy();
    {
        let mut watched: Vec<&mut Proc> = envoys
            .iter_mut()
            .chain(server.iter_mut())
            .chain(cores.iter_mut())
            .collect();
        wait_serving(&ch, CORES[0].0, Duration::from_secs(30), &mut watched).await?;
    }

    let calls: Calls = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pids = Arc::new(Mutex::new(envoys.iter().map(Proc::pid).collect::<Vec<_>>()));
    let mem = Arc::new(Mutex::new(Memory::default()));
    let sampler = start_sampler(pids.clone(), server.as_ref().map(Proc::pid), mem.clone(), stop.clone());
    let traffic = start_traffic(ch.clone(), args.rate, calls.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let interval = Duration::from_millis(args.interval_ms);
    let mut switch_ms = Vec::new();
    let mut missed = 0;
    let mut changes_at = Vec::new();
    let result: Result<()> = async {
        for i in 1..=args.changes {
            let core = CORES[i % 2].0;
            let from = calls.lock().len();
            let t0 = s.writer.write(&assignment(i)).await?;
            changes_at.push((t0, CORES[(i + 1) % 2].0));
            if hot_restart {
                // The previous parent must be gone before the next epoch starts.
                let busy = Instant::now() + Duration::from_secs(args.parent_shutdown_time_s + 10);
                let k = envoys.len();
                while k >= 2 && envoys[k - 2].exited().is_none() && Instant::now() < busy {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // An exited epoch's pid may be reused: stop sampling it.
                let gone: Vec<u32> = envoys.iter_mut().filter_map(|p| p.exited().map(|_| p.pid())).collect();
                pids.lock().retain(|p| !gone.contains(p));
                let bs = s.dir.join(format!("envoy-epoch-{i}.json"));
                render_static(&s.server_bin, &s.config, &bs, admin_port)?;
                let mut cmd = envoy_cmd(&s, &bs);
                hot_restart_flags(&mut cmd, args, base_id, i);
                let p = Proc::spawn(
                    &mut cmd,
                    &s.dir.join(format!("envoy-epoch-{i}.log")),
                    &format!("Envoy epoch {i}"),
                )?;
                pids.lock().push(p.pid());
                envoys.push(p);
            }
            match first_served_by(&calls, from, t0, core, interval).await {
                Some(done) => switch_ms.push((done - t0).as_secs_f64() * 1e3),
                None => missed += 1,
            }
            if let Some(last) = envoys.last_mut() {
                last.check_alive()?;
            }
            if let Some(srv) = server.as_mut() {
                srv.check_alive()?;
            }
            let next = t0 + interval;
            tokio::time::sleep_until(next.into()).await;
        }
        Ok(())
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(CALL_DEADLINE * 3, traffic).await;
    let _ = sampler.join();
    result?;

    let calls = std::mem::take(&mut *calls.lock());
    let mut errors = BTreeMap::new();
    let mut failed = 0;
    let mut stale = 0;
    for c in &calls {
        match &c.outcome {
            Err(e) => {
                failed += 1;
                *errors.entry(e.chars().take(120).collect::<String>()).or_insert(0) += 1;
            }
            Ok(core) => {
                // Served by a core the assignment no longer names at the time the call was sent.
                let current_old = changes_at
                    .iter()
                    .rev()
                    .find(|(t0, _)| *t0 <= c.sent)
                    .map(|(_, old)| *old);
                if current_old == Some(core.as_str()) {
                    stale += 1;
                }
            }
        }
    }
    let m = mem.lock();
    let report = Report {
        path: if hot_restart {
            "hot restart (envoyd)".to_string()
        } else {
            format!("xDS (voltha-xds, {})", args.source.name())
        },
        switch_ms,
        missed,
        sent: calls.len(),
        failed,
        stale,
        errors,
        envoys_started: envoys.len(),
        max_envoys: m.max_envoys,
        envoy_peak_mib: m.envoy_peak_kib as f64 / 1024.0,
        envoy_mean_mib: m.envoy_sum_kib as f64 / m.samples.max(1) as f64 / 1024.0,
        server_peak_mib: m.server_peak_kib as f64 / 1024.0,
    };
    drop(m);
    drop(envoys);
    drop(server);
    drop(cores);
    Ok(report)
}

fn hot_restart_flags(cmd: &mut Command, args: &Args, base_id: u32, epoch: usize) {
    cmd.args(["--base-id", &base_id.to_string()])
        .args(["--restart-epoch", &epoch.to_string()])
        .args(["--drain-time-s", &args.drain_time_s.to_string()])
        .args(["--parent-shutdown-time-s", &args.parent_shutdown_time_s.to_string()]);
}

fn print_reports(args: &Args, reports: &[Report]) {
    println!();
    println!(
        "{} changes, {} calls/s, {} ms apart; hot restart with --drain-time-s {} --parent-shutdown-time-s {}",
        args.changes, args.rate, args.interval_ms, args.drain_time_s, args.parent_shutdown_time_s
    );
    println!("| path | switch p50 ms | switch max ms | no switch within interval | calls sent | calls failed | served by the old core after the change | Envoy processes started | Envoys alive at once (max) | Envoy PSS peak MiB | Envoy PSS mean MiB | voltha-xds PSS peak MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let mut s = r.switch_ms.clone();
        s.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
            r.path,
            percentile(&s, 0.5),
            s.last().copied().unwrap_or(f64::NAN),
            r.missed,
            r.sent,
            r.failed,
            r.stale,
            r.envoys_started,
            r.max_envoys,
            r.envoy_peak_mib,
            r.envoy_mean_mib,
            if r.server_peak_mib > 0.0 {
                format!("{:.1}", r.server_peak_mib)
            } else {
                "—".into()
            }
        );
    }
    for r in reports {
        if !r.errors.is_empty() {
            println!("{} errors:", r.path);
            for (e, n) in &r.errors {
                println!("  {n} x {e}");
            }
        }
    }
}

fn main() -> ExitCode {
    common::main_with("switchbench", Some(2), run(Args::parse()))
}

async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("switchbench").tempdir()?;
    let root = tmp.path().to_path_buf();
    println!("switchbench: dir {}", root.display());
    let mut reports = Vec::new();
    let mut first_err = None;
    for hot in [true, false] {
        let wanted = match args.path {
            // A KV source has no hot restart path: its static configuration is the file's.
            Which::Both => !hot || args.source == kv_writer::Source::File,
            Which::HotRestart => hot,
            Which::Xds => !hot,
        };
        if !wanted {
            continue;
        }
        println!("=== {} ===", if hot { "hot restart" } else { "xDS" });
        match run_path(&args, &root, hot).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("!!! {} path failed: {e:#}", if hot { "hot restart" } else { "xDS" });
                first_err.get_or_insert(e);
            }
        }
    }
    print_reports(&args, &reports);
    if args.keep {
        println!("kept {}", tmp.keep().display());
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
