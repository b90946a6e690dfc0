//! End to end with a real Envoy: the pod API double + voltha-xds running the shipped
//! `config/voltha-kubernetes.yaml` + fake cores on 127.0.0.x (the pods' IPs) + Envoy on the
//! afrouter port's stand-in. gRPC calls go through Envoy; each fake core answers with its own
//! id (`x-voltha-core`), so every assertion names the core that served the call.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::kube_api::{core_pod, set_ip, KubeApi};
use support::*;
use tonic::transport::Channel;
use voltha_xds::bootstrap::{bootstrap, BootstrapOptions};
use voltha_xds::proto::voltha::health_service_client::HealthServiceClient;
use voltha_xds::proto::voltha::voltha_service_client::VolthaServiceClient;
use voltha_xds::proto::voltha::Device;

const NS: &str = "voltha";
const SHIPPED: &str = include_str!("../config/voltha-kubernetes.yaml");

/// (fake core id, pod name, IP, affinity group or "" for a read-only core)
const CORES: [(&str, &str, &str, &str); 6] = [
    ("rw-1a", "rw-core1-a", "127.0.0.11", "1"),
    ("rw-1b", "rw-core1-b", "127.0.0.12", "1"),
    ("rw-2a", "rw-core2-a", "127.0.0.21", "2"),
    ("rw-2b", "rw-core2-b", "127.0.0.22", "2"),
    ("ro-0", "ro-core-0", "127.0.0.31", ""),
    ("ro-1", "ro-core-1", "127.0.0.32", ""),
];
/// Where rw-core1-a comes back after its restart.
const RESTARTED: (&str, &str) = ("rw-1a-new", "127.0.0.13");

struct E2e {
    _dir: tempfile::TempDir,
    api: KubeApi,
    server: voltha_xds::Running,
    cores: Vec<Proc>,
    envoy: Envoy,
    nbi: u16,
}

impl E2e {
    async fn start(delta: bool) -> E2e {
        let dir = tempfile::tempdir().expect("tmp");
        let (nbi, core_port, admin) = (free_port(), free_port(), free_port());
        let mut cores = Vec::new();
        for (id, _, ip, _) in CORES.iter().copied().chain([(RESTARTED.0, "", RESTARTED.1, "")]) {
            cores.push(fake_core(id, format!("{ip}:{core_port}").parse().expect("addr")));
        }
        for (_, _, ip, _) in CORES.iter().copied().chain([("", "", RESTARTED.1, "")]) {
            wait_listening(format!("{ip}:{core_port}").parse::<SocketAddr>().expect("addr")).await;
        }
        let api = KubeApi::start().await;
        for (_, pod, ip, group) in CORES {
            let p = if group.is_empty() {
                core_pod(pod, ip, core_port, &[("app", "ro-core")])
            } else {
                core_pod(pod, ip, core_port, &[("app", "rw-core"), ("affinity-group", group)])
            };
            api.apply(NS, p);
        }
        let yaml = SHIPPED
            .replace(
                "    type: kubernetes\n",
                &format!("    type: kubernetes\n    api_server: \"{}\"\n", api.url()),
            )
            .replace("port: 50057", &format!("port: {core_port}"))
            .replace("0.0.0.0:55555", &format!("127.0.0.1:{nbi}"))
            .replace("quiet: 50ms", "quiet: 10ms")
            .replace("max_delay: 1s", "max_delay: 200ms");
        let server = start_server(&yaml).await;
        let bs = bootstrap(&BootstrapOptions {
            tls: None,
            node_id: format!("k8s-e2e-{}", if delta { "delta" } else { "sotw" }),
            node_cluster: "voltha".into(),
            xds: server.xds_addr.to_string(),
            admin_port: admin,
            admin_address: "127.0.0.1".into(),
            delta,
        })
        .expect("bootstrap");
        let envoy = Envoy::start(dir.path(), "envoy", &bs, admin);
        E2e {
            _dir: dir,
            api,
            server,
            cores,
            envoy,
            nbi,
        }
    }

    fn channel(&self) -> Channel {
        lazy_channel(self.nbi)
    }

    /// Waits until `call` is answered by one of `want`, for at most `limit`; returns the time.
    async fn wait_reached<F, Fut>(&self, limit: Duration, want: &[&str], mut call: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<String, tonic::Status>>,
    {
        let t0 = Instant::now();
        let mut last = None;
        while t0.elapsed() < limit {
            match call().await {
                Ok(core) if want.contains(&core.as_str()) => return t0.elapsed(),
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no call reached {want:?} within {limit:?} (last: {last:?}); envoy log:\n{}",
            self.envoy.log_text()
        );
    }

    async fn envoy_clusters(&self) -> String {
        get_text(&format!("{}/clusters", self.envoy.admin)).await
    }
}

fn core_of<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("x-voltha-core")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A health check, bound to a core pair by `voltha_backend_name` when given.
async fn health(ch: Channel, backend: Option<&str>) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(());
    if let Some(b) = backend {
        req.metadata_mut().insert(
            "voltha_backend_name",
            b.parse().map_err(|_| tonic::Status::internal("header"))?,
        );
    }
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        HealthServiceClient::new(ch).get_health_status(req),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("call timed out"))??;
    Ok(core_of(&r))
}

/// A read-only call (afrouter's `read_only` route).
async fn list_devices(ch: Channel) -> Result<String, tonic::Status> {
    let r = tokio::time::timeout(Duration::from_secs(2), VolthaServiceClient::new(ch).list_devices(()))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("call timed out"))??;
    Ok(core_of(&r))
}

/// A write (afrouter's `dev_manager`), without binding.
async fn create_device(ch: Channel) -> Result<String, tonic::Status> {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        VolthaServiceClient::new(ch).create_device(Device::default()),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("call timed out"))??;
    Ok(core_of(&r))
}

async fn served_by<F, Fut>(n: usize, mut call: F) -> BTreeSet<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, tonic::Status>>,
{
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(call().await.unwrap_or_else(|e| panic!("call failed: {e}")));
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn affinity_routing_through_envoy(delta: bool) {
    let mut e = E2e::start(delta).await;
    let ch = e.channel();

    // The binding: voltha_backend_name names the pair, through one cluster_header route.
    e.wait_reached(Duration::from_secs(30), &["rw-2a", "rw-2b"], || {
        health(ch.clone(), Some("vcore2"))
    })
    .await;
    assert_eq!(
        served_by(20, || health(ch.clone(), Some("vcore2"))).await,
        set(&["rw-2a", "rw-2b"])
    );
    let one = served_by(20, || health(ch.clone(), Some("vcore1"))).await;
    assert!(one.is_subset(&set(&["rw-1a", "rw-1b"])) && !one.is_empty(), "{one:?}");
    // Read-only calls spread over the read-only cores, round robin.
    assert_eq!(served_by(20, || list_devices(ch.clone())).await, set(&["ro-0", "ro-1"]));
    // Writes without a binding go to the read-write cores.
    let rw = served_by(20, || create_device(ch.clone())).await;
    assert!(rw.is_subset(&set(&["rw-1a", "rw-1b", "rw-2a", "rw-2b"])), "{rw:?}");
    // A group that does not exist: UNAVAILABLE (Envoy's 503 for an unknown cluster).
    let err = health(ch.clone(), Some("vcore7")).await.expect_err("no such group");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    let pid = e.envoy.pid();
    let cx_before = e.envoy.stat("http.afrouter.downstream_cx_total").await;

    // rw-core1-a restarts: the old process goes, the pod comes back with a new IP.
    e.cores.remove(0);
    let t0 = Instant::now();
    e.api.modify(NS, "rw-core1-a", |p| set_ip(p, RESTARTED.1));
    let reached = e
        .wait_reached(Duration::from_secs(2), &[RESTARTED.0], || {
            health(ch.clone(), Some("vcore1"))
        })
        .await;
    let took = t0.elapsed();
    eprintln!("pod IP change → first call served at the new address: {took:?} (poll loop {reached:?})");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // From now on the pair is the restarted core and its partner; every call succeeds.
    let one = served_by(30, || health(ch.clone(), Some("vcore1"))).await;
    assert!(one.is_subset(&set(&[RESTARTED.0, "rw-1b"])), "{one:?}");
    assert!(one.contains(RESTARTED.0), "{one:?}");

    // A whole group disappears: its cluster leaves Envoy cleanly, the others keep serving.
    let t0 = Instant::now();
    e.api.delete(NS, "rw-core2-a");
    e.api.delete(NS, "rw-core2-b");
    let admin = e.envoy.admin.clone();
    wait_for(Duration::from_secs(5), "vcore2 to leave Envoy", || {
        let a = admin.clone();
        async move {
            let text = get_text(&format!("{a}/clusters")).await;
            (!text.contains("vcore2::")).then_some(())
        }
    })
    .await;
    eprintln!("group deleted → its cluster gone from Envoy: {:?}", t0.elapsed());
    let clusters = e.envoy_clusters().await;
    assert!(clusters.contains("vcore1::"), "{clusters}");
    let err = health(ch.clone(), Some("vcore2")).await.expect_err("vcore2 is gone");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let rw = served_by(20, || create_device(ch.clone())).await;
    assert!(rw.is_subset(&set(&[RESTARTED.0, "rw-1b"])), "{rw:?}");
    assert!(!served_by(10, || health(ch.clone(), Some("vcore1"))).await.is_empty());

    // Same Envoy process, never restarted, same downstream connection, nothing rejected.
    assert_eq!(e.envoy.pid(), pid);
    assert!(e.envoy.proc.child.try_wait().ok().flatten().is_none(), "envoy exited");
    assert_eq!(e.envoy.stat("server.hot_restart_epoch").await, Some(0));
    assert_eq!(e.envoy.stat("http.afrouter.downstream_cx_total").await, cx_before);
    assert_eq!(e.envoy.stat("cluster_manager.cds.update_rejected").await, Some(0));
    assert!(e.envoy.stat("cluster_manager.cluster_removed").await >= Some(1));
    assert_eq!(e.envoy.stat("cluster_manager.warming_clusters").await, Some(0));
    let (_, clients) = get_json(&format!("http://{}/debug/clients", e.server.admin_debug_addr)).await;
    let c = &clients["clients"][0];
    for ty in ["cds", "eds", "lds", "rds"] {
        let t = &c["types"][ty];
        assert_eq!(t["last_acked_version"], t["last_sent_version"], "{ty}: {t}");
        assert!(t["last_nack"].is_null(), "{ty}: {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_affinity_routing_follows_the_pods() {
    affinity_routing_through_envoy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_affinity_routing_follows_the_pods() {
    affinity_routing_through_envoy(true).await;
}
