use super::*;

const STATIC: &str = r#"
default_group: g
clusters: [{ name: c, endpoints: { static: ["10.0.0.1:80"] } }]
groups: [{ name: g, clusters: [c] }]
"#;

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"))
}

fn reloader(c: Config) -> (Reloader, Arc<Metrics>, Cache) {
    let metrics = Arc::new(Metrics::new());
    let cache = Cache::new();
    let r = Reloader::start(Arc::new(c), metrics.clone(), cache.clone(), CancellationToken::new());
    (r, metrics, cache)
}

#[test]
fn errors_are_capped_in_number_and_length() {
    let many: Vec<String> = (0..100).map(|i| format!("error {i}")).collect();
    let Outcome::Invalid(kept) = capped(Outcome::Invalid(many)) else {
        panic!("still invalid")
    };
    assert_eq!(kept.len(), MAX_ERRORS + 1);
    assert_eq!(kept[MAX_ERRORS - 1], "error 63");
    assert_eq!(kept[MAX_ERRORS], "… and 36 more");
    let long = "é".repeat(5000);
    let Outcome::Refused(kept) = capped(Outcome::Refused(vec![long.clone()])) else {
        panic!("still refused")
    };
    assert!(kept[0].starts_with(&"é".repeat(MAX_ERROR_CHARS)));
    assert!(
        kept[0].ends_with(&format!("… ({} bytes in all)", long.len())),
        "{}",
        &kept[0][2040..]
    );
    assert_eq!(
        capped(Outcome::Applied(vec!["x".into()])),
        Outcome::Applied(vec!["x".into()])
    );
}

#[tokio::test]
async fn outcomes_are_counted_kept_for_the_status_and_a_good_one_moves_applied_at() {
    let (r, metrics, cache) = reloader(config(STATIC));
    let started = r.live().status();
    assert_eq!((started.last_reload.clone(), started.path.clone()), (None, None));
    let out = r.apply(Err(vec!["bad".into()]), Trigger::Signal).await;
    assert_eq!(out, Outcome::Invalid(vec!["bad".into()]));
    let st = r.live().status();
    assert_eq!((st.reloads_ok, st.reloads_invalid, st.reloads_refused), (0, 1, 0));
    assert_eq!(st.applied_at, started.applied_at);
    let last = st.last_reload.expect("kept");
    assert_eq!((last.trigger.as_str(), last.result.as_str()), ("sighup", "invalid"));
    assert_eq!(last.errors, vec!["bad".to_string()]);
    assert_eq!(metrics.config_reload_count("invalid"), 1);
    assert!(metrics.render().contains("voltha_xds_config_last_reload_successful 0"));

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let out = r.apply(Ok(config(STATIC)), Trigger::FileChange).await;
    assert_eq!(out, Outcome::Applied(vec!["0 sources kept running".into()]));
    let st = r.live().status();
    assert_eq!((st.reloads_ok, st.reloads_invalid), (1, 1));
    assert!(st.applied_at > started.applied_at);
    assert!(metrics.render().contains("voltha_xds_config_last_reload_successful 1"));
    // The static configuration's snapshot was built once, and the reload rebuilt it unchanged.
    wait_for_snapshot(&cache).await;
    r.shutdown.cancel();
    r.stopped().await;
}

async fn wait_for_snapshot(cache: &Cache) {
    let mut rx = cache.subscribe();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|s| s.is_some())).await;
    assert!(matches!(got, Ok(Ok(_))), "a snapshot is published");
}

#[tokio::test]
async fn a_removed_source_is_stopped_and_an_added_one_started() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("a.json");
    std::fs::write(&file, r#"{"0001": {"id": "a", "host": "10.0.0.1"}}"#).expect("write");
    let with = |name: &str| {
        format!(
            "default_group: g\nsources: [{{ name: {name}, type: file, path: \"{}\", poll_interval: 10ms }}]\n\
             clusters: [{{ name: c, endpoints: {{ source: {name}, port: 80 }} }}]\ngroups: [{{ name: g, clusters: [c] }}]\n",
            file.display()
        )
    };
    let (r, _, cache) = reloader(config(&with("a")));
    wait_for_snapshot(&cache).await;
    let mut old = r.live().sources()[0].rx.clone();
    let out = r.apply(Ok(config(&with("b"))), Trigger::Request).await;
    assert_eq!(
        out,
        Outcome::Applied(vec![
            "source \"b\" added".into(),
            "source \"a\" stopped".into(),
            "0 sources kept running".into()
        ])
    );
    let now = r.live().sources();
    assert_eq!(now.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
    // The stopped source's task ended: its channel closed.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while old.changed().await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the removed source's task still runs");
    r.shutdown.cancel();
    r.stopped().await;
}

#[tokio::test]
async fn a_refused_reload_changes_nothing() {
    let (r, metrics, _) = reloader(config(STATIC));
    let running = r.live().config();
    let out = r
        .apply(
            Ok(config(&format!("server: {{ max_streams: 7 }}\n{STATIC}"))),
            Trigger::Request,
        )
        .await;
    assert_eq!(out.result(), "refused");
    assert!(Arc::ptr_eq(&running, &r.live().config()));
    assert_eq!(metrics.config_reload_count("refused"), 1);
    r.shutdown.cancel();
    r.stopped().await;
}

/// The log lines written while `f` runs, as JSON objects (a capture on this thread).
async fn logged<F: std::future::Future>(f: F) -> (F::Output, Vec<serde_json::Value>) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let out = f.await;
    drop(guard);
    let text = String::from_utf8_lossy(&buf.0.lock()).to_string();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out, lines)
}

/// The warn lines of one reload result: one per error (with the error) and the summary.
fn warn_lines<'a>(lines: &'a [serde_json::Value], result: &str) -> (Vec<&'a str>, Vec<&'a serde_json::Value>) {
    let warn: Vec<&serde_json::Value> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    let per_error = warn
        .iter()
        .filter(|l| l["fields"]["message"] == format!("configuration reload {result}").as_str())
        .map(|l| {
            assert_eq!(l["fields"]["result"], result, "{l}");
            l["fields"]["error"].as_str().unwrap_or_default()
        })
        .collect();
    let summary = warn
        .iter()
        .copied()
        .filter(|l| {
            l["fields"]["message"]
                == format!("configuration reload {result}; the running configuration is kept").as_str()
        })
        .collect();
    (per_error, summary)
}

#[tokio::test]
async fn an_invalid_and_a_refused_reload_log_one_warn_line_per_error() {
    let (r, _, _) = reloader(config(STATIC));
    let errors = vec!["first \"bad\" key".to_string(), "second".to_string()];
    let (out, lines) = logged(r.apply(Err(errors.clone()), Trigger::Signal)).await;
    assert_eq!(out, Outcome::Invalid(errors));
    let (per_error, summary) = warn_lines(&lines, "invalid");
    assert_eq!(per_error, ["\"first \\\"bad\\\" key\"", "\"second\""], "{lines:?}");
    assert_eq!(summary.len(), 1, "{lines:?}");
    assert_eq!(summary[0]["fields"]["errors"], 2);
    assert_eq!(summary[0]["fields"]["trigger"], "sighup");

    let refused = config(&format!(
        "server: {{ max_streams: 7, xds_listen: \"127.0.0.1:1\" }}\n{STATIC}"
    ));
    let (out, lines) = logged(r.apply(Ok(refused), Trigger::Request)).await;
    let Outcome::Refused(keys) = out else {
        panic!("refused: {out:?}")
    };
    assert_eq!(keys.len(), 2, "{keys:?}");
    let (per_error, summary) = warn_lines(&lines, "refused");
    let want: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    assert_eq!(per_error, want, "{lines:?}");
    assert_eq!(summary.len(), 1, "{lines:?}");
    assert_eq!(summary[0]["fields"]["errors"], 2);
    assert!(warn_lines(&lines, "invalid").0.is_empty());
    r.shutdown.cancel();
    r.stopped().await;
}

/// The file changed between the read `serve` parsed and the watcher's start: the content
/// recorded as applied is the one parsed, so the change is reloaded, not taken as applied.
#[tokio::test]
async fn a_change_after_the_parsed_read_at_start_is_reloaded() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config.yaml");
    let parsed = format!("server: {{ config_reload_interval: 100ms }}\n{STATIC}");
    let (r, _, _) = reloader(config(&parsed));
    let r = Arc::new(r);
    // Written after the parse, before the watcher starts.
    let changed = parsed.replace("10.0.0.1:80", "10.0.0.2:80");
    std::fs::write(&path, &changed).expect("write");
    let tasks = trigger::spawn(
        r.clone(),
        Some((path.clone(), parsed.into_bytes())),
        trigger::Hangup::install(),
        r.shutdown.clone(),
    )
    .await;
    let applied = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while r.live().status().reloads_ok == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(applied.is_ok(), "the change was not reloaded: {:?}", r.live().status());
    let c = r.live().config();
    assert_eq!(
        c.clusters[0]
            .endpoints
            .static_endpoints
            .as_ref()
            .map(|s| s[0].to_string()),
        Some("10.0.0.2:80".into())
    );
    r.shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    r.stopped().await;
}
