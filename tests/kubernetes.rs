//! The Kubernetes pod source against the pod API double (`support::kube_api`), which kube's
//! real client and watcher talk to over HTTP on loopback. voltha-xds runs the shipped
//! `config/voltha-kubernetes.yaml` pointed at the double; every test asserts what it serves
//! (`/debug/snapshot`), its readiness and its metrics.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::kube_api::{core_pod, set_ip, set_ready, KubeApi};
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const SHIPPED: &str = include_str!("../config/voltha-kubernetes.yaml");
const NS: &str = "voltha";

/// The shipped configuration, pointed at the double, on loopback, with a short debounce.
fn shipped_config(api: &KubeApi, core_port: u16, nbi_port: u16) -> String {
    SHIPPED
        .replace(
            "    type: kubernetes\n",
            &format!("    type: kubernetes\n    api_server: \"{}\"\n", api.url()),
        )
        .replace("port: 50057", &format!("port: {core_port}"))
        .replace("0.0.0.0:55555", &format!("127.0.0.1:{nbi_port}"))
        .replace("quiet: 50ms", "quiet: 10ms")
        .replace("max_delay: 1s", "max_delay: 200ms")
}

fn rw(name: &str, ip: &str, group: &str) -> k8s_openapi::api::core::v1::Pod {
    core_pod(name, ip, 50057, &[("app", "rw-core"), ("affinity-group", group)])
}

fn ro(name: &str, ip: &str) -> k8s_openapi::api::core::v1::Pod {
    core_pod(name, ip, 50057, &[("app", "ro-core")])
}

/// Two pairs, two read-only cores, and pods the selectors must leave out.
fn populate(api: &KubeApi) {
    api.apply(NS, rw("rw-core1-a", "127.0.0.11", "1"));
    api.apply(NS, rw("rw-core1-b", "127.0.0.12", "1"));
    api.apply(NS, rw("rw-core2-a", "127.0.0.21", "2"));
    api.apply(NS, rw("rw-core2-b", "127.0.0.22", "2"));
    api.apply(NS, ro("ro-core-0", "127.0.0.31"));
    api.apply(NS, ro("ro-core-1", "127.0.0.32"));
    api.apply(NS, core_pod("kafka-0", "127.0.0.41", 9092, &[("app", "kafka")]));
    api.apply("other", rw("rw-core9-a", "127.0.0.91", "9"));
}

/// Cluster name → its endpoints (`ip:port`), from the served snapshot of group `voltha`.
async fn served(admin: std::net::SocketAddr) -> Option<BTreeMap<String, Vec<String>>> {
    let (code, v) = get_json(&format!("http://{admin}/debug/snapshot?group=voltha")).await;
    if code != 200 {
        return None;
    }
    let types = &v["groups"]["voltha"]["types"];
    let mut out = BTreeMap::new();
    for c in types["cds"]["resources"].as_array()? {
        out.insert(c["name"].as_str()?.to_string(), Vec::new());
    }
    for cla in types["eds"]["resources"].as_array()? {
        let name = cla["clusterName"].as_str()?.to_string();
        let mut eps: Vec<String> = cla["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["lbEndpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                let sa = &e["endpoint"]["address"]["socketAddress"];
                format!("{}:{}", sa["address"].as_str().unwrap_or("?"), sa["portValue"])
            })
            .collect();
        eps.sort();
        out.insert(name, eps);
    }
    Some(out)
}

/// Waits until the served clusters satisfy `pred`; returns them and how long it took.
async fn wait_served(
    admin: std::net::SocketAddr,
    what: &str,
    pred: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) -> (BTreeMap<String, Vec<String>>, Duration) {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < WAIT {
        if let Some(s) = served(admin).await {
            if pred(&s) {
                return (s, t0.elapsed());
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}; last served: {last:#?}");
}

fn eps(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn readyz(admin: std::net::SocketAddr) -> (u16, Value) {
    get_json(&format!("http://{admin}/readyz")).await
}

/// A counter's value, `None` when the series is absent.
async fn counter(admin: std::net::SocketAddr, series: &str) -> Option<u64> {
    metric_value(admin, series).await.map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_become_one_cluster_per_group_a_read_only_cluster_and_a_rw_cluster() {
    let api = KubeApi::start().await;
    populate(&api);
    let server = start_server(&shipped_config(&api, 50057, free_port())).await;
    let (s, _) = wait_served(server.admin_debug_addr, "the pods' clusters", |s| {
        s.contains_key("vcore2")
    })
    .await;
    let mut want = BTreeMap::new();
    want.insert("vcore1".to_string(), eps(&["127.0.0.11:50057", "127.0.0.12:50057"]));
    want.insert("vcore2".to_string(), eps(&["127.0.0.21:50057", "127.0.0.22:50057"]));
    want.insert("ro_vcore".to_string(), eps(&["127.0.0.31:50057", "127.0.0.32:50057"]));
    want.insert(
        "rw_vcore".to_string(),
        eps(&[
            "127.0.0.11:50057",
            "127.0.0.12:50057",
            "127.0.0.21:50057",
            "127.0.0.22:50057",
        ]),
    );
    // Label selectors are honoured (no kafka), and only the configured namespace is watched.
    assert_eq!(s, want);

    let (code, r) = readyz(server.admin_debug_addr).await;
    assert_eq!(code, 200, "{r}");
    for src in ["rw-cores", "ro-cores"] {
        assert_eq!(r["sources"][src]["state"], "ok", "{r}");
    }
    // One list per source, then watches.
    assert_eq!(api.lists(), 2);
    assert!(api.watches() >= 2);
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_events_update_endpoints_and_clusters_at_once_without_polling() {
    let api = KubeApi::start().await;
    populate(&api);
    let server = start_server(&shipped_config(&api, 50057, free_port())).await;
    let admin = server.admin_debug_addr;
    wait_served(admin, "the pods' clusters", |s| s.contains_key("vcore2")).await;
    api.bookmark();

    // A core restarts with a new IP (same pod name, as in a StatefulSet).
    let t0 = Instant::now();
    api.modify(NS, "rw-core1-a", |p| set_ip(p, "127.0.0.13"));
    let (s, _) = wait_served(admin, "the new IP", |s| {
        s.get("vcore1") == Some(&eps(&["127.0.0.12:50057", "127.0.0.13:50057"]))
    })
    .await;
    let ip_change = t0.elapsed();
    assert!(s["rw_vcore"].contains(&"127.0.0.13:50057".to_string()));
    assert!(!s["rw_vcore"].contains(&"127.0.0.11:50057".to_string()));
    eprintln!("pod IP change in the API → served: {ip_change:?}");
    assert!(ip_change < Duration::from_secs(1), "{ip_change:?}");

    // Unready: no endpoint, the group keeps its cluster.
    api.modify(NS, "rw-core1-b", |p| set_ready(p, false));
    wait_served(admin, "rw-core1-b unready", |s| {
        s.get("vcore1") == Some(&eps(&["127.0.0.13:50057"]))
    })
    .await;
    api.bookmark();
    // Every pod of the group unready or gone: the cluster stays, empty.
    api.delete(NS, "rw-core1-a");
    wait_served(admin, "group 1 empty", |s| s.get("vcore1") == Some(&Vec::new())).await;
    // The last pod of the group deleted: the cluster goes.
    api.delete(NS, "rw-core1-b");
    let (s, _) = wait_served(admin, "vcore1 gone", |s| !s.contains_key("vcore1")).await;
    assert_eq!(s["rw_vcore"], eps(&["127.0.0.21:50057", "127.0.0.22:50057"]));
    // A new group appears with its cluster.
    api.apply(NS, rw("rw-core3-a", "127.0.0.51", "3"));
    wait_served(admin, "vcore3", |s| {
        s.get("vcore3") == Some(&eps(&["127.0.0.51:50057"]))
    })
    .await;
    // A pod whose labels stop matching the selector leaves (the watch sees it DELETED).
    api.modify(NS, "rw-core3-a", |p| {
        if let Some(l) = p.metadata.labels.as_mut() {
            l.insert("app".into(), "retired".into());
        }
    });
    wait_served(admin, "vcore3 gone", |s| !s.contains_key("vcore3")).await;
    // A read-only core goes unready and comes back.
    api.modify(NS, "ro-core-1", |p| set_ready(p, false));
    wait_served(admin, "ro-core-1 out", |s| s["ro_vcore"] == eps(&["127.0.0.31:50057"])).await;
    api.modify(NS, "ro-core-1", |p| set_ready(p, true));
    wait_served(admin, "ro-core-1 back", |s| s["ro_vcore"].len() == 2).await;

    // All of it through the watches: still one list per source, no error.
    assert_eq!(api.lists(), 2, "the source relisted or polled");
    assert_eq!(
        counter(admin, "voltha_xds_source_errors_total{source=\"rw-cores\"").await,
        None
    );
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_no_endpoint_is_lost_in_between() {
    let api = KubeApi::start().await;
    populate(&api);
    let server = start_server(&shipped_config(&api, 50057, free_port())).await;
    let admin = server.admin_debug_addr;
    let (before, _) = wait_served(admin, "the pods' clusters", |s| s.contains_key("vcore2")).await;
    let lists = api.lists();

    // The watch expires (410) and the relist is slow; meanwhile a core changes IP and a whole
    // group is deleted. Until the relist completes, the served state is the old one, whole.
    api.set_list_delay(Duration::from_millis(800));
    api.force_gone();
    api.modify(NS, "rw-core1-a", |p| set_ip(p, "127.0.0.14"));
    api.delete(NS, "rw-core2-a");
    api.delete(NS, "rw-core2-b");
    let t0 = Instant::now();
    let mut samples = 0;
    while api.lists() < lists + 2 || t0.elapsed() < Duration::from_millis(500) {
        assert_eq!(served(admin).await.as_ref(), Some(&before), "changed mid-relist");
        samples += 1;
        assert!(t0.elapsed() < WAIT, "no relist");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 10, "{samples}");
    let (after, _) = wait_served(admin, "the relisted state", |s| !s.contains_key("vcore2")).await;
    assert_eq!(after["vcore1"], eps(&["127.0.0.12:50057", "127.0.0.14:50057"]));
    assert_eq!(after["ro_vcore"], before["ro_vcore"]);
    eprintln!(
        "410 with an 800 ms list → relisted state served {:?} after the 410",
        t0.elapsed()
    );
    // A relist is routine: counted as kind "gone", not a failure; the sources stay ok.
    let (code, r) = readyz(admin).await;
    assert_eq!(code, 200);
    assert_eq!(r["sources"]["rw-cores"]["state"], "ok", "{r}");
    assert_eq!(r["sources"]["rw-cores"]["last_error"], Value::Null, "{r}");
    assert_eq!(
        counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"gone\"}"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"watch\"}"
        )
        .await,
        None
    );
    assert_eq!(
        counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"list\"}"
        )
        .await,
        None
    );
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_as_an_http_410_also_relists_at_once() {
    let api = KubeApi::start().await;
    api.set_http_gone(true);
    populate(&api);
    let server = start_server(&shipped_config(&api, 50057, free_port())).await;
    let admin = server.admin_debug_addr;
    wait_served(admin, "the pods' clusters", |s| s.contains_key("vcore2")).await;
    let lists = api.lists();
    // The watches end without an event; re-watching from their version gets HTTP 410.
    api.force_gone();
    api.modify(NS, "rw-core1-a", |p| set_ip(p, "127.0.0.15"));
    let t0 = Instant::now();
    wait_served(admin, "the relisted state", |s| {
        s.get("vcore1")
            .is_some_and(|e| e.contains(&"127.0.0.15:50057".to_string()))
    })
    .await;
    eprintln!("HTTP 410 → relisted state served after {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "a relist without backoff: {:?}",
        t0.elapsed()
    );
    // Both sources relist (the read-only one had nothing to change).
    wait_for(WAIT, "both sources to relist", || {
        let n = api.lists();
        async move { (n >= lists + 2).then_some(()) }
    })
    .await;
    let (code, r) = readyz(admin).await;
    assert_eq!(code, 200);
    assert_eq!(r["sources"]["rw-cores"]["state"], "ok", "{r}");
    assert_eq!(
        counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"gone\"}"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"watch\"}"
        )
        .await,
        None
    );
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_unreachable_keeps_the_last_state_reports_it_and_recovers() {
    let api = KubeApi::start().await;
    populate(&api);
    let server = start_server(&shipped_config(&api, 50057, free_port())).await;
    let admin = server.admin_debug_addr;
    let (before, _) = wait_served(admin, "the pods' clusters", |s| s.contains_key("vcore2")).await;

    api.stop();
    let url = format!("http://{admin}/readyz");
    let r = wait_for(WAIT, "the source to report the outage", || {
        let u = url.clone();
        async move {
            let (_, r) = get_json(&u).await;
            (r["sources"]["rw-cores"]["state"] == "error").then_some(r)
        }
    })
    .await;
    let err = r["sources"]["rw-cores"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("namespace voltha"), "{err}");
    assert_eq!(r["sources"]["rw-cores"]["delivered"], true);
    assert!(
        r["ready"].as_bool().unwrap_or(false),
        "the last good state still serves: {r}"
    );
    let errors = counter(
        admin,
        "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"watch\"}",
    )
    .await
    .unwrap_or(0)
        + counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"list\"}",
        )
        .await
        .unwrap_or(0);
    assert!(errors >= 1, "{}", get_text(&format!("http://{admin}/metrics")).await);
    // The last good state is still served, unchanged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served(admin).await.as_ref(), Some(&before));

    // Changes made while unreachable arrive after it comes back (backoff, then a full relist).
    api.modify(NS, "rw-core2-a", |p| set_ip(p, "127.0.0.23"));
    let t0 = Instant::now();
    api.restart().await;
    let (after, _) = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Some(s) = served(admin).await {
                if s.get("vcore2")
                    .is_some_and(|e| e.contains(&"127.0.0.23:50057".to_string()))
                {
                    return (s, t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the change made during the outage arrives after recovery");
    eprintln!("API server back → change served after {:?}", t0.elapsed());
    assert_eq!(after["vcore1"], before["vcore1"]);
    let url = format!("http://{admin}/readyz");
    wait_for(WAIT, "the source to be ok again", || {
        let u = url.clone();
        async move { (get_json(&u).await.1["sources"]["rw-cores"]["state"] == "ok").then_some(()) }
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_start_is_not_ready_until_the_api_server_answers() {
    let api = KubeApi::start().await;
    populate(&api);
    api.stop();
    let server = start_server(&shipped_config(&api, 50057, free_port())).await;
    let admin = server.admin_debug_addr;
    let url = format!("http://{admin}/readyz");
    let r = wait_for(WAIT, "the list failure to be reported", || {
        let u = url.clone();
        async move {
            let (code, r) = get_json(&u).await;
            (code == 503 && r["sources"]["rw-cores"]["state"] == "error").then_some(r)
        }
    })
    .await;
    assert_eq!(r["sources"]["rw-cores"]["delivered"], false, "{r}");
    assert!(
        counter(
            admin,
            "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"list\"}"
        )
        .await
            >= Some(1)
    );
    api.restart().await;
    wait_for(Duration::from_secs(40), "ready once the API server answers", || {
        let u = url.clone();
        async move { (get_json(&u).await.0 == 200).then_some(()) }
    })
    .await;
    wait_served(admin, "the pods' clusters", |s| s.contains_key("vcore2")).await;
    server.stop(Duration::from_secs(5)).await;
}

/// The pod source retries with the backoff every source has, from its `backoff` key: 50 ms
/// doubling to 200 ms here, where kube-runtime's own would wait 0.8 s, then 1.6 s, and more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_backoff_paces_the_retries_and_the_recovery() {
    let api = KubeApi::start().await;
    populate(&api);
    let config = shipped_config(&api, 50057, free_port()).replace(
        "    type: kubernetes\n",
        "    type: kubernetes\n    backoff: { initial: 50ms, max: 200ms }\n",
    );
    let server = start_server(&config).await;
    let admin = server.admin_debug_addr;
    let (before, _) = wait_served(admin, "the pods' clusters", |s| s.contains_key("vcore2")).await;

    // Every request is refused with a 503 from now on, and the open watches are cut.
    api.set_refusing(true);
    api.restart().await;
    // Two sources watch the namespace; each waits 50, 100, 200, 200, … ms between tries (at
    // least half of each). Twenty refused requests are at least five tries per source, even
    // if a try were two requests: at least 25 + 50 + 100 + 100 = 275 ms, where a retry without
    // a pause takes milliseconds; and well within the wait's 10 s, where kube-runtime's own
    // backoff (0.8 s, 1.6 s, 3.2 s, …) would need about 25 s for five tries.
    let start = std::time::Instant::now();
    wait_for(Duration::from_secs(10), "twenty refused tries", || async {
        (api.refused() >= 20).then_some(())
    })
    .await;
    let took = start.elapsed();
    let refused = api.refused();
    eprintln!("{refused} requests refused in {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "{refused} tries in {took:?}: faster than the backoff allows"
    );
    let r = readyz(admin).await.1;
    assert_eq!(r["sources"]["rw-cores"]["state"], "error", "{r}");
    assert_eq!(
        served(admin).await.as_ref(),
        Some(&before),
        "the last good state is kept"
    );
    let lists = counter(
        admin,
        "voltha_xds_source_errors_total{source=\"rw-cores\",kind=\"list\"}",
    )
    .await
    .unwrap_or(0);
    assert!(lists >= 5, "{lists} list errors counted");

    // A change made during the outage arrives within one capped wait and a relist.
    api.modify(NS, "rw-core2-a", |p| set_ip(p, "127.0.0.23"));
    api.set_refusing(false);
    let (_, took) = wait_served(admin, "the change made during the outage", |s| {
        s.get("vcore2")
            .is_some_and(|e| e.contains(&"127.0.0.23:50057".to_string()))
    })
    .await;
    eprintln!("API server answering again → change served after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_namespaces_a_name_regex_a_named_port_and_ready_condition_only() {
    let api = KubeApi::start().await;
    let mut not_scheduled = core_pod("voltha-rw-core2-x", "127.0.0.62", 50060, &[("app", "rw-core")]);
    if let Some(cs) = not_scheduled.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        for c in cs.iter_mut().filter(|c| c.type_ == "PodScheduled") {
            c.status = "False".into();
        }
    }
    api.apply(
        "voltha",
        core_pod("voltha-rw-core1-x", "127.0.0.61", 50060, &[("app", "rw-core")]),
    );
    api.apply("voltha2", not_scheduled);
    api.apply(
        "voltha",
        core_pod("voltha-ro-core-0", "127.0.0.63", 50060, &[("app", "ro-core")]),
    );
    api.apply(
        "voltha3",
        core_pod("voltha-rw-core3-x", "127.0.0.64", 50060, &[("app", "rw-core")]),
    );
    let yaml = format!(
        r#"
debounce: {{ quiet: 10ms, max_delay: 200ms }}
default_group: voltha
sources:
  - name: legacy
    type: kubernetes
    api_server: "{}"
    namespaces: [voltha, voltha2]
    name_regex: "rw-core[0-9]-"
    readiness: ready_condition
    port: grpc
clusters:
  - {{ name: cores, endpoints: {{ source: legacy }} }}
listeners:
  - {{ name: nbi, address: "127.0.0.1:{}", codec: http2, routes: [{{ prefix: /, cluster: cores }}] }}
groups: [{{ name: voltha, listeners: [nbi] }}]
"#,
        api.url(),
        free_port()
    );
    let server = start_server(&yaml).await;
    let (s, _) = wait_served(server.admin_debug_addr, "both namespaces", |s| {
        s.get("cores").is_some_and(|e| e.len() == 2)
    })
    .await;
    // The regex leaves the ro-core out, voltha3 is not watched, PodScheduled=False does not
    // matter under ready_condition, and the port is the container port named grpc.
    assert_eq!(s["cores"], eps(&["127.0.0.61:50060", "127.0.0.62:50060"]));
    assert_eq!(api.lists(), 2, "one list per namespace");
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_lists_the_pods_once() {
    let api = KubeApi::start().await;
    populate(&api);
    let config = voltha_xds::config::Config::from_yaml(&shipped_config(&api, 50057, free_port())).expect("config");
    let model = voltha_xds::sources::read_once(&config).await.expect("pods listed");
    let rw = &model.sources["rw-cores"];
    assert_eq!(rw.sets.keys().collect::<Vec<_>>(), vec!["", "1", "2"]);
    assert_eq!(rw.set("2").len(), 2);
    assert_eq!(model.sources["ro-cores"].set("").len(), 2);
    assert_eq!((api.lists(), api.watches()), (2, 0));
    // Unreachable: a clear error naming the source and the namespace.
    api.stop();
    let err = voltha_xds::sources::read_once(&config).await.expect_err("unreachable");
    assert!(
        err.starts_with("source \"rw-cores\": cannot list pods in namespace voltha"),
        "{err}"
    );
}
