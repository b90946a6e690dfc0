//! What a reload does to the sources it restarts or stops: a restarted source starts from the
//! last good data of the one it replaces (the others' changes keep being pushed and readiness
//! stays up), and the metric series of a stopped source or a removed group go away.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;
use voltha_xds::reload::{Outcome, Trigger};

const WAIT: Duration = Duration::from_secs(10);

fn assignment(host: &str) -> String {
    format!(r#"{{"0001": {{"id": "a", "host": "{host}"}}}}"#)
}

/// Two file sources, `assignment` (clusters `voltha-grpc`) and `spare` (`spare-grpc`, reading
/// `spare_file`); `spare_group` adds a second node group.
fn yaml(dir: &Path, spare_file: &str, with_spare: bool, spare_group: bool) -> String {
    let spare_source = if with_spare {
        format!(
            r#"  - {{ name: spare, type: file, path: "{}", poll_interval: 20ms }}"#,
            dir.join(spare_file).display()
        )
    } else {
        String::new()
    };
    let spare_cluster = if with_spare {
        "  - { name: spare-grpc, endpoints: { source: spare, port: 50556 } }"
    } else {
        ""
    };
    let nbi_clusters = if with_spare { "[spare-grpc]" } else { "[]" };
    let group = if spare_group {
        "  - { name: extra, listeners: [nbi] }"
    } else {
        ""
    };
    format!(
        r#"
server:
  xds_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  admin_debug_listen: 127.0.0.1:0
default_group: nbi
debounce: {{ quiet: 10ms, max_delay: 200ms }}
sources:
  - {{ name: assignment, type: file, path: "{a}", poll_interval: 20ms }}
{spare_source}
clusters:
  - {{ name: voltha-grpc, endpoints: {{ source: assignment, port: 50556 }} }}
{spare_cluster}
listeners:
  - name: nbi
    address: 127.0.0.1:50555
    codec: http2
    routes:
      - {{ prefix: /, cluster: voltha-grpc }}
groups:
  - {{ name: nbi, listeners: [nbi], clusters: {nbi_clusters} }}
{group}
"#,
        a = dir.join("assignment.json").display(),
    )
}

struct Setup {
    dir: tempfile::TempDir,
    path: PathBuf,
    server: voltha_xds::Running,
}

impl Setup {
    async fn new(spare_group: bool) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("assignment.json"), assignment("10.0.0.1")).expect("write");
        std::fs::write(dir.path().join("spare.json"), assignment("10.0.0.9")).expect("write");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml(dir.path(), "spare.json", true, spare_group)).expect("write");
        let server = start_from_file(&path).await;
        let s = Setup { dir, path, server };
        s.wait_snapshot("readiness", |_| true).await;
        s
    }

    /// Writes `text` as the configuration and reloads it.
    async fn reload(&self, text: &str) -> Outcome {
        let tmp = self.dir.path().join("config.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.path).expect("rename");
        self.server.reload.reload_file(&self.path, Trigger::Request).await
    }

    async fn readyz(&self) -> (u16, Value) {
        get_json(&format!("http://{}/readyz", self.server.admin_addr)).await
    }

    /// Waits until the server is ready and `/debug/snapshot` satisfies `ok`.
    async fn wait_snapshot(&self, what: &str, ok: impl Fn(&str) -> bool) {
        let url = format!("http://{}/debug/snapshot", self.server.admin_debug_addr);
        wait_for(WAIT, what, || {
            let url = url.clone();
            let ok = &ok;
            async move {
                let (code, v) = get_json(&url).await;
                (code == 200 && ok(&v.to_string()) && self.readyz().await.0 == 200).then_some(())
            }
        })
        .await;
    }

    async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.server.admin_addr)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_carries_its_data_over_and_the_others_keep_being_pushed() {
    let s = Setup::new(false).await;
    // `spare` is restarted on a file that does not exist yet: it cannot deliver.
    let out = s.reload(&yaml(s.dir.path(), "spare-new.json", true, false)).await;
    assert!(
        matches!(&out, Outcome::Applied(c) if c.iter().any(|c| c == "source \"spare\" restarted")),
        "{out:?}"
    );
    let (code, body) = s.readyz().await;
    assert_eq!(code, 200, "{body}");
    let spare = &body["sources"]["spare"];
    assert_eq!(spare["carried_over"], true, "{body}");
    assert_eq!(spare["delivered"], true, "{body}");

    // Another source's change is pushed while `spare` has not delivered.
    std::fs::write(s.dir.path().join("assignment.json"), assignment("10.0.0.2")).expect("write");
    s.wait_snapshot("the assignment's change to be published", |t| {
        t.contains("10.0.0.2") && !t.contains("10.0.0.1") && t.contains("10.0.0.9")
    })
    .await;
    let (code, body) = s.readyz().await;
    assert_eq!(code, 200, "{body}");
    // The restarted source's failure keeps the carried data as its last good state.
    assert_eq!(body["sources"]["spare"]["state"], "error", "{body}");
    assert_eq!(body["sources"]["spare"]["carried_over"], true, "{body}");

    // Its first delivery replaces the carried data.
    std::fs::write(s.dir.path().join("spare-new.json"), assignment("10.0.0.7")).expect("write");
    s.wait_snapshot("the restarted source's data", |t| {
        t.contains("10.0.0.7") && !t.contains("10.0.0.9")
    })
    .await;
    let (_, body) = s.readyz().await;
    assert_eq!(body["sources"]["spare"]["carried_over"], false, "{body}");
    assert_eq!(body["sources"]["spare"]["state"], "ok", "{body}");
    s.server.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_of_a_stopped_source_and_a_removed_group_are_removed() {
    let s = Setup::new(true).await;
    // An error counted for `spare`, so that each of its series exists.
    std::fs::write(s.dir.path().join("spare.json"), "{not json").expect("write");
    let m = s.server.metrics.clone();
    wait_for(WAIT, "spare's error to be counted", || {
        let n = m.source_error_count("spare", "malformed_json");
        async move { (n > 0).then_some(()) }
    })
    .await;
    let text = s.metrics().await;
    for series in [
        "voltha_xds_source_last_success_timestamp_seconds{source=\"spare\"}",
        "voltha_xds_source_updates_total{source=\"spare\"}",
        "voltha_xds_source_errors_total{source=\"spare\",kind=\"malformed_json\"}",
        "voltha_xds_snapshot_resources{group=\"extra\",type=\"lds\"}",
        "voltha_xds_snapshot_bytes{group=\"extra\",type=\"lds\"}",
    ] {
        assert!(text.contains(series), "{series} before the reload:\n{text}");
    }

    let out = s.reload(&yaml(s.dir.path(), "spare.json", false, false)).await;
    assert!(matches!(out, Outcome::Applied(_)), "{out:?}");
    let url = format!("http://{}/debug/snapshot", s.server.admin_debug_addr);
    wait_for(WAIT, "the group to be gone from the snapshot", || {
        let url = url.clone();
        async move { get_json(&url).await.1["groups"].get("extra").is_none().then_some(()) }
    })
    .await;
    let text = s.metrics().await;
    for gone in ["source=\"spare\"", "group=\"extra\""] {
        assert!(!text.contains(gone), "{gone} after the reload:\n{text}");
    }
    for kept in [
        "voltha_xds_source_last_success_timestamp_seconds{source=\"assignment\"}",
        "voltha_xds_snapshot_resources{group=\"nbi\",type=\"lds\"}",
    ] {
        assert!(text.contains(kept), "{kept} after the reload:\n{text}");
    }
    s.server.shutdown.cancel();
}
