//! Configuration reload without a restart: a good configuration is applied under an open xDS
//! stream with only the changed types re-versioned and unchanged sources kept running; an
//! invalid or refused one keeps the running configuration and is reported (log, metric,
//! `/readyz`, `/debug/status`); the file is followed through edits and a ConfigMap symlink
//! swap; SIGHUP reloads the real binary.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use serde_json::Value;
use support::*;
use voltha_xds::reload::{Outcome, Trigger};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const WAIT: Duration = Duration::from_secs(10);
const ONE: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}}"#;

/// A configuration with two file sources (`assignment` and `spare`); `server` and `routes`
/// are spliced in.
fn yaml(dir: &Path, server: &str, routes: &str, spare_poll: &str) -> String {
    format!(
        r#"
server:
  xds_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  admin_debug_listen: 127.0.0.1:0
{server}
default_group: nbi
debounce: {{ quiet: 10ms, max_delay: 200ms }}
sources:
  - {{ name: assignment, type: file, path: "{a}", poll_interval: 20ms }}
  - {{ name: spare, type: file, path: "{s}", poll_interval: {spare_poll} }}
clusters:
  - {{ name: voltha-grpc, endpoints: {{ source: assignment, port: 50556 }} }}
  - {{ name: spare-grpc, endpoints: {{ source: spare, port: 50556 }} }}
listeners:
  - name: nbi
    address: 127.0.0.1:50555
    codec: http2
    routes:
      - {{ prefix: /, cluster: voltha-grpc }}
{routes}
groups:
  - {{ name: nbi, listeners: [nbi], clusters: [spare-grpc] }}
"#,
        a = dir.join("assignment.json").display(),
        s = dir.join("spare.json").display(),
    )
}

struct Setup {
    dir: tempfile::TempDir,
    path: PathBuf,
    server: voltha_xds::Running,
}

impl Setup {
    async fn new(server_yaml: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("assignment.json"), ONE).expect("write");
        std::fs::write(dir.path().join("spare.json"), ONE.replace("10.0.0.1", "10.0.0.9")).expect("write");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml(dir.path(), server_yaml, "", "20ms")).expect("write");
        let server = start_from_file(&path).await;
        let s = Setup { dir, path, server };
        let url = s.admin("/readyz");
        wait_for(WAIT, "readiness", || {
            let url = url.clone();
            async move { (get_json(&url).await.0 == 200).then_some(()) }
        })
        .await;
        s
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin_debug_addr)
    }

    /// Writes the configuration file (renamed into place, as an editor or a ConfigMap does).
    fn write(&self, text: &str) {
        let tmp = self.dir.path().join("config.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.path).expect("rename");
    }

    fn config(&self, server: &str, routes: &str, spare_poll: &str) -> String {
        yaml(self.dir.path(), server, routes, spare_poll)
    }

    async fn reload(&self) -> Outcome {
        self.server.reload.reload_file(&self.path, Trigger::Request).await
    }

    /// The version of each type of group `nbi`, and the snapshot's generation.
    async fn versions(&self) -> (Vec<String>, u64) {
        let (_, s) = get_json(&self.admin("/debug/snapshot")).await;
        let types = &s["groups"]["nbi"]["types"];
        let v = ["cds", "eds", "lds", "rds"]
            .iter()
            .map(|t| types[t]["version"].as_str().unwrap_or_default().to_string())
            .collect();
        (v, s["generation"].as_u64().unwrap_or_default())
    }

    async fn snapshot_text(&self) -> String {
        get_json(&self.admin("/debug/snapshot")).await.1.to_string()
    }

    async fn readyz(&self) -> (u16, Value) {
        get_json(&format!("http://{}/readyz", self.server.admin_addr)).await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(self.server.admin_addr, series).await
    }
}

/// The shared SotW client with this file's node and requests.
struct Ads(support::sotw::Sotw);

impl Ads {
    async fn open(addr: std::net::SocketAddr) -> Ads {
        Ads(support::sotw::Sotw::open(channel(addr).await).await)
    }

    async fn request(&self, ty: &str, names: &[&str], prev: Option<&DiscoveryResponse>) {
        self.0
            .send(DiscoveryRequest {
                node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                    id: "reload-test".into(),
                    cluster: "nbi".into(),
                    ..Default::default()
                }),
                type_url: ty.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: prev.map(|p| p.version_info.clone()).unwrap_or_default(),
                response_nonce: prev.map(|p| p.nonce.clone()).unwrap_or_default(),
                ..Default::default()
            })
            .await;
    }

    async fn next(&mut self) -> DiscoveryResponse {
        self.0.next().await
    }

    /// Subscribes to every type (and ACKs), as Envoy does.
    async fn subscribe_all(&mut self) {
        for (ty, names) in [
            (CDS, vec![]),
            (EDS, vec!["voltha-grpc", "spare-grpc"]),
            (LDS, vec![]),
            (RDS, vec!["nbi-routes"]),
        ] {
            self.request(ty, &names, None).await;
            let r = self.next().await;
            assert_eq!(r.type_url, ty);
            self.request(ty, &names, Some(&r)).await;
        }
    }

    /// Fails if any response arrives within `d`.
    async fn nothing_for(&mut self, d: Duration) {
        self.0.nothing_for(d).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_route_on_the_open_stream_and_only_routes_get_a_new_version() {
    let s = Setup::new("").await;
    let mut ads = Ads::open(s.server.xds_addr).await;
    ads.subscribe_all().await;
    let (before, _) = s.versions().await;
    let sources_before = s.server.reload.live().sources();
    let streams_before = s.server.clients.len();

    s.write(&s.config(
        "",
        "      - { path: /voltha.NewService/Call, cluster: spare-grpc }",
        "20ms",
    ));
    let outcome = s.reload().await;
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");

    // The open stream gets the new route configuration, and nothing else.
    let r = ads.next().await;
    assert_eq!(r.type_url, RDS);
    assert!(
        String::from_utf8_lossy(&r.resources[0].value).contains("/voltha.NewService/Call"),
        "the new route is served"
    );
    ads.request(RDS, &["nbi-routes"], Some(&r)).await;
    ads.nothing_for(Duration::from_millis(300)).await;
    let (after, _) = s.versions().await;
    assert_eq!(after[..3], before[..3], "CDS, EDS and LDS keep their versions");
    assert_ne!(after[3], before[3], "RDS has a new version");
    assert_eq!(after[3], r.version_info);
    // The same stream, and both sources kept running (the same channels, with their state).
    assert_eq!(s.server.clients.len(), streams_before);
    let sources_after = s.server.reload.live().sources();
    for (a, b) in sources_before.iter().zip(sources_after.iter()) {
        assert!(a.rx.same_channel(&b.rx), "source {} was restarted", a.name);
    }
    assert_eq!(s.metric("voltha_xds_config_reloads_total{result=\"ok\"}").await, 1.0);
    let (code, ready) = s.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(ready["config"]["last_reload"]["result"], "ok");
    assert_eq!(ready["config"]["last_reload"]["trigger"], "request");

    // A changed source setting restarts that source only; the same data gives the same
    // versions, so the stream gets nothing.
    s.write(&s.config(
        "",
        "      - { path: /voltha.NewService/Call, cluster: spare-grpc }",
        "30ms",
    ));
    let outcome = s.reload().await;
    assert_eq!(
        outcome,
        Outcome::Applied(vec![
            "source \"spare\" restarted".to_string(),
            "1 sources kept running".to_string()
        ])
    );
    let now = s.server.reload.live().sources();
    assert!(now[0].rx.same_channel(&sources_after[0].rx), "assignment kept");
    assert!(!now[1].rx.same_channel(&sources_after[1].rx), "spare restarted");
    wait_for(WAIT, "the restarted source to deliver", || async {
        (s.readyz().await.0 == 200).then_some(())
    })
    .await;
    ads.nothing_for(Duration::from_millis(300)).await;
    assert_eq!(s.versions().await.0, after);
    // The kept source still follows its file: the stream gets the new endpoints.
    std::fs::write(
        s.dir.path().join("assignment.json"),
        ONE.replace("10.0.0.1", "10.0.0.2"),
    )
    .expect("write");
    let r = ads.next().await;
    assert_eq!(r.type_url, EDS);
    assert!(String::from_utf8_lossy(&r.resources[0].value).contains("10.0.0.2"));
    s.server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_keeps_the_running_one_and_is_reported_with_every_error() {
    let s = Setup::new("").await;
    let (before, generation) = s.versions().await;

    // Two validation errors: an unknown cluster and a debounce out of order.
    let bad = s
        .config("", "      - { path: /x, cluster: no-such-cluster }", "20ms")
        .replace("quiet: 10ms, max_delay: 200ms", "quiet: 2s, max_delay: 1s");
    s.write(&bad);
    let Outcome::Invalid(errors) = s.reload().await else {
        panic!("not invalid")
    };
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("no-such-cluster")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("debounce.quiet")), "{errors:?}");
    // A YAML syntax error, and a file that is not there.
    s.write("default_group: [unclosed\n");
    assert!(matches!(s.reload().await, Outcome::Invalid(e) if e.len() == 1));
    let missing = s
        .server
        .reload
        .reload_file(&s.path.with_extension("gone"), Trigger::Request)
        .await;
    assert!(
        matches!(&missing, Outcome::Invalid(e) if e[0].starts_with("cannot read")),
        "{missing:?}"
    );
    // Valid, but its snapshot cannot be built from the current inputs: a cluster of a source
    // whose hosts carry no port, and the cluster sets none.
    s.write(
        &s.config("", "", "20ms")
            .replace("{ source: assignment, port: 50556 }", "{ source: assignment }"),
    );
    let Outcome::Invalid(errors) = s.reload().await else {
        panic!("a configuration that cannot be built is invalid")
    };
    assert!(
        errors[0].contains("cannot be built from the current inputs"),
        "{errors:?}"
    );

    // Nothing changed: the same snapshot, ready, the sources running.
    assert_eq!(s.versions().await, (before, generation));
    assert_eq!(
        s.metric("voltha_xds_config_reloads_total{result=\"invalid\"}").await,
        4.0
    );
    assert_eq!(s.metric("voltha_xds_config_reloads_total{result=\"ok\"}").await, 0.0);
    assert_eq!(s.metric("voltha_xds_config_last_reload_successful").await, 0.0);
    let (code, ready) = s.readyz().await;
    assert_eq!(code, 200, "readiness stays: the running configuration is good");
    let last = &ready["config"]["last_reload"];
    assert_eq!(last["result"], "invalid");
    assert!(last["errors"][0]
        .as_str()
        .unwrap_or_default()
        .contains("cannot be built"));
    assert_eq!(ready["config"]["reloads_invalid"], 4);
    let (_, status) = get_json(&s.admin("/debug/status")).await;
    assert_eq!(status["config"]["last_reload"]["result"], "invalid");

    // The running configuration still follows its inputs...
    std::fs::write(
        s.dir.path().join("assignment.json"),
        ONE.replace("10.0.0.1", "10.0.0.2"),
    )
    .expect("write");
    wait_for(WAIT, "the new endpoint", || async {
        s.snapshot_text().await.contains("10.0.0.2").then_some(())
    })
    .await;
    // ...and a good configuration is applied after bad ones.
    s.write(&s.config("", "      - { path: /fixed, cluster: voltha-grpc }", "20ms"));
    assert!(matches!(s.reload().await, Outcome::Applied(_)));
    wait_for(WAIT, "the fixed route", || async {
        s.snapshot_text().await.contains("/fixed").then_some(())
    })
    .await;
    assert_eq!(s.metric("voltha_xds_config_last_reload_successful").await, 1.0);
    s.server.stop(Duration::from_secs(5)).await;
}

/// 100 streams open while 30 reloads alternate a good change, an invalid file and a refused
/// one: no stream ends, every count is exact, and every stream ends on the last good routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_under_100_streams_drops_none_and_ends_on_the_last_good_routes() {
    const STREAMS: usize = 100;
    const ROUNDS: usize = 10;
    let s = Setup::new("").await;
    let ch = channel(s.server.xds_addr).await;
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut a = Ads(support::sotw::Sotw::open(ch.clone()).await);
        a.request(RDS, &["nbi-routes"], None).await;
        let r = a.next().await;
        a.request(RDS, &["nbi-routes"], Some(&r)).await;
        streams.push(a);
    }
    wait_for(WAIT, "every stream registered", || async {
        (s.server.clients.len() == STREAMS).then_some(())
    })
    .await;
    let route = |i: usize| format!("      - {{ path: /round-{i}, cluster: spare-grpc }}");
    for i in 0..ROUNDS {
        s.write(&s.config("", &route(i), "20ms"));
        assert_eq!(s.reload().await.result(), "ok", "round {i}");
        s.write("default_group: [unclosed\n");
        assert_eq!(s.reload().await.result(), "invalid", "round {i}");
        s.write(&s.config("  max_streams: 7", &route(i + 100), "20ms"));
        assert_eq!(s.reload().await.result(), "refused", "round {i}");
    }
    let last_route = format!("/round-{}", ROUNDS - 1);
    wait_for(WAIT, "the last good routes", || async {
        s.snapshot_text().await.contains(&last_route).then_some(())
    })
    .await;
    let want = s.versions().await.0[3].clone();
    // Every stream gets to the last good version (SotW: it may skip the ones in between).
    for (n, a) in streams.iter_mut().enumerate() {
        let last = tokio::time::timeout(WAIT, async {
            loop {
                let r = a.next().await;
                a.request(RDS, &["nbi-routes"], Some(&r)).await;
                if r.version_info == want {
                    return r;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("stream {n} did not get the last routes"));
        assert!(String::from_utf8_lossy(&last.resources[0].value).contains(&format!("/round-{}", ROUNDS - 1)));
    }
    assert_eq!(s.server.clients.len(), STREAMS, "no stream ended");
    for (result, n) in [("ok", ROUNDS), ("invalid", ROUNDS), ("refused", ROUNDS)] {
        let series = format!("voltha_xds_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(s.metric(&series).await, n as f64, "{result}");
    }
    s.server.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_listener_bound_setting_is_refused_by_key_and_nothing_is_applied() {
    let s = Setup::new("  max_streams: 1000").await;
    let before = s.versions().await;
    let sources = s.server.reload.live().sources();
    // A new route with two settings bound at start: none of it is applied.
    s.write(&s.config(
        "  max_streams: 2000\n  tls: { cert_file: /etc/tls/c.pem, key_file: /etc/tls/k.pem }",
        "      - { path: /refused, cluster: voltha-grpc }",
        "40ms",
    ));
    let Outcome::Refused(why) = s.reload().await else {
        panic!("not refused")
    };
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].starts_with("server.max_streams cannot change without a restart (running 1000, new 2000)"));
    assert!(why[1].starts_with("server.tls cannot change without a restart (running off, new on)"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.versions().await, before);
    assert!(!s.snapshot_text().await.contains("/refused"));
    let now = s.server.reload.live().sources();
    assert!(now[1].rx.same_channel(&sources[1].rx), "no source restarted");
    assert_eq!(s.server.reload.live().config().server.max_streams, 1000);
    assert_eq!(
        s.metric("voltha_xds_config_reloads_total{result=\"refused\"}").await,
        1.0
    );
    let (code, ready) = s.readyz().await;
    assert_eq!(code, 200);
    assert_eq!(ready["config"]["last_reload"]["result"], "refused");
    assert_eq!(
        ready["config"]["last_reload"]["errors"].as_array().map(Vec::len),
        Some(2)
    );
    s.server.stop(Duration::from_secs(5)).await;
}

/// `..data` → a timestamped directory, `config.yaml` → `..data/config.yaml`, as a ConfigMap
/// volume lays them out; `swap` writes a new directory and renames a new `..data` over the old.
#[cfg(unix)]
struct ConfigMapDir {
    root: PathBuf,
    n: u32,
}

#[cfg(unix)]
impl ConfigMapDir {
    fn new(root: &Path, text: &str) -> ConfigMapDir {
        let mut d = ConfigMapDir {
            root: root.to_path_buf(),
            n: 0,
        };
        d.swap(text);
        std::os::unix::fs::symlink("..data/config.yaml", root.join("config.yaml")).expect("symlink");
        d
    }

    fn swap(&mut self, text: &str) {
        self.n += 1;
        let dir = format!("..2026_12_04_{:02}", self.n);
        std::fs::create_dir(self.root.join(&dir)).expect("mkdir");
        std::fs::write(self.root.join(&dir).join("config.yaml"), text).expect("write");
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&dir, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.root.join("..data")).expect("rename");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_followed_through_a_configmap_swap_an_edit_a_touch_and_a_bad_save() {
    let s = Setup::new("").await;
    let cm_root = s.dir.path().join("cm");
    std::fs::create_dir(&cm_root).expect("mkdir");
    let fast = "  config_reload_interval: 100ms";
    let mut cm = ConfigMapDir::new(&cm_root, &s.config(fast, "", "20ms"));
    let path = cm_root.join("config.yaml");
    // The server runs the ConfigMap's configuration, followed at 100 ms.
    s.server.reload.reload_file(&path, Trigger::Request).await;
    let triggers = voltha_xds::reload::trigger::spawn(
        s.server.reload.clone(),
        Some((path.clone(), std::fs::read(&path).expect("read"))),
        voltha_xds::reload::trigger::Hangup::install(),
        s.server.shutdown.clone(),
    )
    .await;
    let ok = |n: u64| {
        let s = &s;
        async move {
            let (_, r) = s.readyz().await;
            (r["config"]["reloads_ok"] == n).then_some(r["config"]["last_reload"].clone())
        }
    };

    cm.swap(&s.config(fast, "      - { path: /from-configmap, cluster: voltha-grpc }", "20ms"));
    let last = wait_for(WAIT, "the ConfigMap swap to be reloaded", || ok(2)).await;
    assert_eq!(last["trigger"], "file_change");
    wait_for(WAIT, "the new route", || async {
        s.snapshot_text().await.contains("/from-configmap").then_some(())
    })
    .await;

    // A touch (new times, same content) reloads nothing.
    let target = cm_root.join("..data").join("config.yaml");
    let text = std::fs::read_to_string(&target).expect("read");
    std::fs::write(&target, &text).expect("rewrite");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.readyz().await.1["config"]["reloads_ok"], 2);

    // A bad save is reported once, however many checks see it.
    cm.swap("default_group: [unclosed\n");
    wait_for(WAIT, "the bad save to be reported", || async {
        (s.readyz().await.1["config"]["reloads_invalid"] == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, r) = s.readyz().await;
    assert_eq!((code, &r["config"]["reloads_invalid"]), (200, &Value::from(1)));
    assert!(
        s.snapshot_text().await.contains("/from-configmap"),
        "the running configuration stays"
    );

    // And the fix is applied.
    cm.swap(&s.config(fast, "      - { path: /fixed, cluster: voltha-grpc }", "20ms"));
    wait_for(WAIT, "the fix to be reloaded", || ok(3)).await;
    s.server.stop(Duration::from_secs(5)).await;
    for t in triggers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}

/// A save in place (truncate, write half, the rest 100 ms later) is read once complete, never
/// half way; a removed file is reported once; its return is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_in_place_is_read_once_complete_and_a_removed_file_reported_once() {
    let s = Setup::new("").await;
    let every = "  config_reload_interval: 300ms";
    s.write(&s.config(every, "", "20ms"));
    assert_eq!(s.reload().await.result(), "ok");
    let triggers = voltha_xds::reload::trigger::spawn(
        s.server.reload.clone(),
        Some((s.path.clone(), std::fs::read(&s.path).expect("read"))),
        voltha_xds::reload::trigger::Hangup::install(),
        s.server.shutdown.clone(),
    )
    .await;
    let count = |result: &'static str| s.server.metrics.config_reload_count(result);

    let text = s.config(every, "      - { path: /saved-in-place, cluster: voltha-grpc }", "20ms");
    let (head, tail) = text.split_at(text.len() / 2);
    // Into the checks' cycle: the half-written file is there when a check comes one time in
    // three (checks that read a changed file at once read it then).
    tokio::time::sleep(Duration::from_millis(250)).await;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&s.path).expect("truncate");
        f.write_all(head.as_bytes()).expect("write half");
        f.sync_all().expect("sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.write_all(tail.as_bytes()).expect("write the rest");
    }
    wait_for(WAIT, "the save to be reloaded", || async {
        (count("ok") == 2).then_some(())
    })
    .await;
    assert_eq!(count("invalid"), 0, "the half-written file was never read");
    wait_for(WAIT, "the new route", || async {
        s.snapshot_text().await.contains("/saved-in-place").then_some(())
    })
    .await;

    std::fs::remove_file(&s.path).expect("rm");
    wait_for(WAIT, "the removal to be reported", || async {
        (count("invalid") == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(count("invalid"), 1, "reported once");
    let (code, r) = s.readyz().await;
    assert_eq!(code, 200);
    assert!(
        r["config"]["last_reload"]["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("cannot read"),
        "{r}"
    );
    assert!(
        s.snapshot_text().await.contains("/saved-in-place"),
        "the running configuration stays"
    );
    s.write(&text);
    wait_for(WAIT, "the file's return to be reloaded", || async {
        (count("ok") == 3).then_some(())
    })
    .await;
    s.server.stop(Duration::from_secs(5)).await;
    for t in triggers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}

/// The real binary: `kill -HUP` reloads `--config`; with the embedded default it says there is
/// nothing to reload and keeps serving.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_of_the_binary() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("assignment.json"), ONE).expect("write");
    std::fs::write(dir.path().join("spare.json"), ONE).expect("write");
    let (admin, debug) = (free_port(), free_port());
    let server = "  config_reload_interval: 0s\n  shutdown_grace: 1s";
    let text = yaml(dir.path(), server, "", "20ms")
        .replace("admin_listen: 127.0.0.1:0", &format!("admin_listen: 127.0.0.1:{admin}"))
        .replace(
            "admin_debug_listen: 127.0.0.1:0",
            &format!("admin_debug_listen: 127.0.0.1:{debug}"),
        );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &text).expect("write");
    let log = dir.path().join("server.log");
    let bin = Bin::start(&["serve", "--config", &path.display().to_string()], &log);
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    wait_for(WAIT, "readiness", || async {
        let r = reqwest::get(&readyz).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    std::fs::write(
        &path,
        yaml(
            dir.path(),
            server,
            "      - { path: /after-sighup, cluster: voltha-grpc }",
            "20ms",
        )
        .replace("admin_listen: 127.0.0.1:0", &format!("admin_listen: 127.0.0.1:{admin}"))
        .replace(
            "admin_debug_listen: 127.0.0.1:0",
            &format!("admin_debug_listen: 127.0.0.1:{debug}"),
        ),
    )
    .expect("write");
    // The check is off (0s): nothing happens until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(get_json(&readyz).await.1["config"]["last_reload"].is_null());
    bin.signal("HUP");
    let last = wait_for(WAIT, "the SIGHUP reload", || async {
        let r = get_json(&readyz).await.1;
        (!r["config"]["last_reload"].is_null()).then_some(r["config"].clone())
    })
    .await;
    assert_eq!(last["last_reload"]["trigger"], "sighup");
    assert_eq!(last["last_reload"]["result"], "ok");
    assert_eq!(last["path"], path.display().to_string());
    let snap = format!("http://127.0.0.1:{debug}/debug/snapshot");
    wait_for(WAIT, "the new route", || async {
        get_json(&snap)
            .await
            .1
            .to_string()
            .contains("/after-sighup")
            .then_some(())
    })
    .await;
    assert!(bin.alive());
    drop(bin);

    // The embedded default: a SIGHUP is logged as having nothing to reload; still serving.
    let (admin, debug) = (free_port(), free_port());
    let log = dir.path().join("default.log");
    let bin = Bin::start(
        &[
            "serve",
            "--xds-listen",
            "127.0.0.1:0",
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--admin-debug-listen",
            &format!("127.0.0.1:{debug}"),
        ],
        &log,
    );
    let healthz = format!("http://127.0.0.1:{admin}/healthz");
    wait_for(WAIT, "healthz", || async {
        reqwest::get(&healthz)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    bin.signal("HUP");
    wait_for(WAIT, "the SIGHUP log line", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("there is nothing to reload")
            .then_some(())
    })
    .await;
    assert!(bin.alive());
    assert!(reqwest::get(&healthz).await.is_ok_and(|r| r.status().is_success()));
}

/// The `voltha-xds` binary, stopped with SIGTERM when dropped.
struct Bin {
    child: std::process::Child,
}

impl Bin {
    fn start(args: &[&str], log: &Path) -> Bin {
        let out = std::fs::File::create(log).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(out)
            .spawn()
            .expect("voltha-xds starts");
        Bin { child }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    fn alive(&self) -> bool {
        std::process::Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        self.signal("TERM");
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
