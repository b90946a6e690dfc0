//! The status views against a known set of connected xDS clients: the status page at `/` of
//! the admin debug listener rendered by headless Chromium (Debian's `chromium`, or
//! `$CHROMIUM_BIN`), and the `voltha-xds status` command. The admin listener (the one a
//! deployment exposes for probes and scraping) serves neither.

#[path = "support/status_clients.rs"]
mod status_clients;
mod support;

use std::process::Stdio;
use std::time::Duration;

use status_clients::*;
use support::chromium::{dump_dom, screenshot};
use voltha_xds::xds::resources::ResourceType;

/// A node id that HTML would take for markup.
const ODD_ID: &str = "<b>x&y</b>";

/// The HTML of the first element that starts with `open` (up to its closing `</tr>`).
fn row<'a>(dom: &'a str, open: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in the page:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// Per type (cds, eds, lds, rds): the cell's `data-state` and text in a node's row.
fn cells(row: &str) -> Vec<(String, String)> {
    let re = regex::Regex::new(r#"data-type="(\w+)" data-state="([A-Z ]+)"[^>]*>([^<]*)</td>"#).expect("re");
    re.captures_iter(row)
        .map(|c| {
            assert!(c[3].starts_with(&c[2]), "state {} shown as {}", &c[2], &c[3]);
            (c[1].to_string(), c[3].to_string())
        })
        .collect()
}

fn short(v: &str) -> &str {
    &v[..8]
}

#[tokio::test]
async fn the_status_page_shows_envoys_states_snapshot_nacks_pushes_and_sources() {
    let s = Setup::new().await;
    let _clients = connect_known_clients(&s).await;
    let mut odd = Sotw::open(s.channel().await, ODD_ID, "nbi").await;
    odd.sync(CDS, &[]).await;
    wait_states(
        &s,
        &[
            (ODD_ID, ["SYNCED", "NOT SENT", "NOT SENT", "NOT SENT"]),
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;

    let dom = dump_dom(&s.admin("/")).await;
    let v = |g: &str, t: ResourceType| s.version(g, t);
    let nbi = |t: ResourceType| format!("SYNCED {}", short(&v("nbi", t)));
    let front = |t: ResourceType| format!("SYNCED {}", short(&v("front-proxy", t)));
    let pair = |t: &str, text: String| (t.to_string(), text);

    assert_eq!(
        cells(row(&dom, r#"<tr data-node="olt-sotw-1">"#)),
        vec![
            pair("cds", nbi(ResourceType::Cluster)),
            pair("eds", nbi(ResourceType::Endpoint)),
            pair("lds", nbi(ResourceType::Listener)),
            pair("rds", nbi(ResourceType::Route)),
        ]
    );
    assert_eq!(
        cells(row(&dom, r#"<tr data-node="olt-sotw-2">"#)),
        vec![
            pair("cds", format!("NACKED {}", short(&v("nbi", ResourceType::Cluster)))),
            pair("eds", "NOT SENT".into()),
            pair("lds", "NOT SENT".into()),
            pair("rds", "NOT SENT".into()),
        ]
    );
    let delta = row(&dom, r#"<tr data-node="olt-delta-1">"#);
    assert_eq!(
        cells(delta),
        vec![
            pair("cds", front(ResourceType::Cluster)),
            pair("eds", "NOT SENT".into()),
            pair("lds", front(ResourceType::Listener)),
            pair("rds", "NOT SENT".into()),
        ]
    );
    assert!(delta.contains("<td>front-proxy</td>"), "the group: {delta}");
    assert!(delta.contains("<td>delta/ads</td>"), "the stream: {delta}");
    assert!(delta.contains(" ago</td>"), "time since the last ACK: {delta}");

    // Text from the network is text: the odd node id and the NACK error are escaped, not markup.
    assert!(
        dom.contains(r#"<td class="node-id">&lt;b&gt;x&amp;y&lt;/b&gt;</td>"#),
        "odd node id:\n{dom}"
    );
    assert!(!dom.contains("<b>x"), "the node id became markup");
    let nack = row(&dom, r#"<tr data-nack-node="olt-sotw-2">"#);
    let escaped_error = NACK_ERROR
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        nack.contains(&format!(r#"<td class="nack-error">{escaped_error}</td>"#)),
        "NACK error: {nack}"
    );
    assert!(nack.contains("<td>cds</td>"), "{nack}");

    // The snapshot per group: the server's versions and resource counts.
    for (group, types) in [
        ("nbi", ["cds", "eds", "lds", "rds"]),
        ("front-proxy", ["cds", "eds", "lds", "rds"]),
    ] {
        let r = row(&dom, &format!(r#"<tr data-group="{group}">"#));
        let snap = s.server.cache.current().expect("snapshot");
        for (ty, t) in types.iter().zip(ResourceType::ALL) {
            let ts = snap.groups[group].get(t);
            let want = format!(
                r#"data-type="{ty}" data-version="{}">{} ({})</td>"#,
                ts.version,
                ts.version,
                ts.resources.len()
            );
            assert!(r.contains(&want), "{group} {ty}: want {want} in {r}");
        }
    }
    assert!(row(&dom, r#"<tr data-group="nbi">"#).contains("<td>nbi (default)</td>"));

    // Pushes, source health, readiness.
    assert!(dom.contains(r#"<tr data-push-group="nbi">"#), "pushes:\n{dom}");
    assert!(dom.contains(r#"<tr data-push-group="front-proxy">"#), "pushes:\n{dom}");
    let src = row(&dom, r#"<tr data-source="assignment" data-source-state="ok">"#);
    assert!(src.contains("<td>yes</td>"), "delivered: {src}");
    assert!(dom.contains(r#"data-ready="true""#), "readiness:\n{dom}");
    assert!(
        dom.contains(r#"<div id="error"></div>"#),
        "the page reported an error:\n{dom}"
    );
}

async fn run_status(admin: &str) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .args(["status", "--admin", admin])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("status ends in time")
    .expect("status runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_status_command_prints_a_table_of_the_connected_envoys() {
    let s = Setup::new().await;
    let _clients = connect_known_clients(&s).await;
    wait_states(
        &s,
        &[
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;
    let (ok, out, err) = run_status(&format!("http://{}", s.server.admin_debug_addr)).await;
    assert!(ok, "status failed: {err}");
    let words = |prefix: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line for {prefix}:\n{out}"));
        line.split_whitespace().map(String::from).collect()
    };
    let v = |g: &str, t: ResourceType| short(&s.version(g, t)).to_string();
    assert_eq!(
        words("NODE"),
        vec!["NODE", "CLUSTER", "GROUP", "CDS", "EDS", "LDS", "RDS", "LAST", "ACK"]
    );
    let sotw1 = words("olt-sotw-1 ");
    assert_eq!(
        sotw1[..11],
        [
            "olt-sotw-1".to_string(),
            "nbi".into(),
            "nbi".into(),
            "SYNCED".into(),
            v("nbi", ResourceType::Cluster),
            "SYNCED".into(),
            v("nbi", ResourceType::Endpoint),
            "SYNCED".into(),
            v("nbi", ResourceType::Listener),
            "SYNCED".into(),
            v("nbi", ResourceType::Route),
        ]
    );
    assert_eq!(sotw1[12], "ago");
    assert_eq!(
        words("olt-sotw-2 ")[..6],
        [
            "olt-sotw-2".to_string(),
            "nbi".into(),
            "nbi".into(),
            "NACKED".into(),
            v("nbi", ResourceType::Cluster),
            "NOT".into()
        ]
    );
    assert_eq!(
        words("olt-delta-1 ")[..5],
        [
            "olt-delta-1".to_string(),
            "front-proxy".into(),
            "front-proxy".into(),
            "SYNCED".into(),
            v("front-proxy", ResourceType::Cluster),
        ]
    );
    // Columns line up: every row's CDS cell starts where the header's does.
    let col = out.lines().next().and_then(|h| h.find("CDS")).expect("header");
    for l in out.lines().skip(1).take(3) {
        assert!(
            l[col..].starts_with("SYNCED") || l[col..].starts_with("NACKED"),
            "misaligned: {l}"
        );
    }
    assert!(
        out.contains(&format!(
            "NACKED:\n  olt-sotw-2 cds {}: {NACK_ERROR}\n",
            v("nbi", ResourceType::Cluster)
        )),
        "{out}"
    );
    let gen = s.server.cache.current().expect("snapshot").generation;
    assert!(
        out.contains(&format!("snapshot generation {gen}, default group nbi")),
        "{out}"
    );

    // Nothing listens there: a clear error and a failure exit status.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let (ok, out, err) = run_status(&closed).await;
    assert!(!ok, "status succeeded against {closed}: {out}");
    assert!(
        err.contains(&format!("cannot reach the admin debug API at {closed}")),
        "stderr: {err}"
    );

    // The admin listener is not the debug API: the error says which address to give.
    let public = format!("http://{}", s.server.admin_addr);
    let (ok, out, err) = run_status(&public).await;
    assert!(!ok, "status succeeded against the admin listener: {out}");
    assert!(
        err.contains(&format!("{public}/debug/status answered 404"))
            && err.contains("give --admin the address of server.admin_debug_listen"),
        "stderr: {err}"
    );
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("reachable");
    let code = r.status().as_u16();
    (code, r.text().await.expect("body"))
}

/// The admin listener (bound to every address by the Kubernetes Deployment, for the kubelet's
/// probes and Prometheus) answers `/healthz`, `/readyz` and `/metrics` and nothing that shows
/// resources or clients; the debug listener (loopback) serves all of it.
#[tokio::test]
async fn the_admin_listener_serves_probes_and_metrics_and_the_debug_listener_the_rest() {
    let s = Setup::new().await;
    let _clients = connect_known_clients(&s).await;
    wait_states(
        &s,
        &[
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;
    assert_ne!(s.server.admin_addr, s.server.admin_debug_addr);
    let public = |p: &str| format!("http://{}{p}", s.server.admin_addr);
    let debug = |p: &str| format!("http://{}{p}", s.server.admin_debug_addr);

    for base in [&public as &dyn Fn(&str) -> String, &debug] {
        assert_eq!(get(&base("/healthz")).await, (200, "ok\n".to_string()));
        let (code, ready) = get(&base("/readyz")).await;
        assert_eq!(code, 200, "{ready}");
        assert!(ready.contains(r#""ready":true"#), "{ready}");
        let (code, metrics) = get(&base("/metrics")).await;
        assert_eq!(code, 200);
        assert!(metrics.contains("voltha_xds_streams{"), "{metrics}");
    }

    for path in [
        "/",
        "/debug/clients",
        "/debug/snapshot",
        "/debug/snapshot?group=nbi",
        "/debug/status",
        "/debug",
        "/index.html",
    ] {
        let (code, body) = get(&public(path)).await;
        assert_eq!(code, 404, "admin listener {path}: {body}");
        assert!(
            !body.contains("olt-sotw-1") && !body.contains("10.0.0.1"),
            "{path}: {body}"
        );
        assert!(body.contains("server.admin_debug_listen"), "{path}: {body}");
    }

    let (code, clients) = get(&debug("/debug/clients")).await;
    assert_eq!(code, 200);
    assert!(clients.contains("olt-sotw-1"), "{clients}");
    let (code, snapshot) = get(&debug("/debug/snapshot?group=nbi")).await;
    assert_eq!(code, 200);
    assert!(snapshot.contains("10.0.0.1"), "{snapshot}");
    let (code, status) = get(&debug("/debug/status")).await;
    assert_eq!(code, 200);
    assert!(status.contains("olt-sotw-1"), "{status}");
    let (code, page) = get(&debug("/")).await;
    assert_eq!(code, 200);
    assert!(page.contains(r#"fetch("debug/status""#), "the page reads debug/status");
}

/// One address for both listeners is refused with a clear error, not served half.
#[tokio::test]
async fn the_admin_and_debug_listeners_may_not_share_an_address() {
    let config = voltha_xds::config::Config::from_yaml(
        "default_group: g\ngroups: [{ name: g, clusters: [c] }]\nclusters: [{ name: c, endpoints: { static: [\"127.0.0.1:1\"] } }]\n",
    )
    .expect("config");
    let taken: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().expect("addr");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let err = voltha_xds::start(config, any, taken, taken)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&format!(
            "the admin debug listener ({taken}) must not share the admin listener's address ({taken})"
        )),
        "{err}"
    );
}

/// Which cores are behind which cluster, with the source each came from, and the latency
/// chart: its points in the DOM, and drawn (the screenshot has the series' colours inside the
/// chart's frame).
#[tokio::test]
async fn the_status_page_shows_the_endpoints_per_cluster_and_a_latency_chart() {
    let s = Setup::new().await;
    let _clients = connect_known_clients(&s).await;
    wait_states(
        &s,
        &[
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;
    // A third core joins: a push to the connected Envoys, observed in push latency.
    std::fs::write(
        s.dir.path().join("assignment.json"),
        r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}, "0003": {"id": "c", "host": "10.0.0.3"}}"#,
    )
    .expect("write");
    let status_url = s.admin("/debug/status");
    let status: voltha_xds::admin::view::StatusView = support::wait_for(WAIT, "a push observed", || {
        let url = status_url.clone();
        async move {
            let v: voltha_xds::admin::view::StatusView =
                serde_json::from_value(support::get_json(&url).await.1).ok()?;
            let pushed = v.latency.last().is_some_and(|p| p.push.count > 0);
            let third = v
                .endpoints
                .iter()
                .any(|c| c.endpoints.iter().any(|e| e.address == "10.0.0.3"));
            (pushed && third).then_some(v)
        }
    })
    .await;
    let dom = dump_dom(&s.admin("/")).await;
    assert!(
        dom.contains(r#"<div id="error"></div>"#),
        "the page reported an error:\n{dom}"
    );

    // The assignment's cores behind voltha-grpc in group nbi, with their ids.
    for (addr, id) in [
        ("10.0.0.1:50556", "a"),
        ("10.0.0.2:50556", "b"),
        ("10.0.0.3:50556", "c"),
    ] {
        let r = row(
            &dom,
            &format!(r#"<tr data-endpoint-cluster="nbi/voltha-grpc" data-endpoint="{addr}">"#),
        );
        assert!(r.contains(&format!(r#"<td class="mono">{addr}"#)), "{r}");
        assert!(r.contains(r#"<td class="endpoint-source">assignment</td>"#), "{r}");
        assert!(r.contains(&format!(r#"<td class="mono endpoint-id">{id}</td>"#)), "{r}");
    }
    let first = row(
        &dom,
        r#"<tr data-endpoint-cluster="nbi/voltha-grpc" data-endpoint="10.0.0.1:50556">"#,
    );
    assert!(
        first.contains("<td>nbi</td><td>voltha-grpc</td><td>eds</td>"),
        "{first}"
    );
    // A name from the configuration, resolved by Envoy.
    let dns = row(
        &dom,
        r#"<tr data-endpoint-cluster="front-proxy/portainer" data-endpoint="portainer:9000">"#,
    );
    assert!(dns.contains("<td>dns</td>"), "{dns}");
    assert!(
        dns.contains(r#"<td class="endpoint-source">configuration</td>"#),
        "{dns}"
    );

    // The pushes and ACKs so far are the chart's latest point.
    let last = status.latency.last().expect("a latency point");
    assert!(last.push.count > 0 && last.ack.count > 0, "{last:?}");
    assert!(
        last.push.p99.is_some_and(|v| v > 0.0) && last.ack.p99.is_some(),
        "{last:?}"
    );
    assert!(dom.contains(r#"<svg id="latency-chart""#), "no chart:\n{dom}");
    for class in ["point-push-p99", "point-ack-p99", "point-push-p50", "point-ack-p50"] {
        assert!(dom.contains(&format!(r#"class="point {class}""#)), "no {class} point");
    }
    let summary = row(&dom, r#"<p id="latency-summary">"#);
    assert!(
        summary.contains(" push(es), p99 ") && summary.contains(" ACK(s), p99 "),
        "{summary}"
    );

    // Drawn: the chart's frame (#5a7d2a, a colour nothing else has) bounds a box in which the
    // series' colours appear.
    let png = screenshot(&s.admin("/")).await;
    // To look at it: STATUS_PAGE_SCREENSHOT=/tmp/status.png cargo test --test status_page
    if let Some(path) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
        std::fs::write(path, &png).expect("write the screenshot");
    }
    let img = support::png::decode(&png);
    let frame = [0x5a, 0x7d, 0x2a];
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            if img.at(x, y) == frame {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    assert!(x0 < x1 && y0 < y1, "no chart frame in the screenshot");
    assert!(
        (500..=600).contains(&(x1 - x0)) && (150..=200).contains(&(y1 - y0)),
        "the frame is {}x{} at {x0},{y0}",
        x1 - x0,
        y1 - y0
    );
    let near = |p: [u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 24);
    let count = |c: [u8; 3]| {
        let mut n = 0;
        // The points of the last interval sit on the right edge: a few pixels beyond the frame.
        for y in y0..=y1 {
            for x in x0..(x1 + 8).min(img.width) {
                n += usize::from(near(img.at(x, y), c));
            }
        }
        n
    };
    let (push, ack) = (count([0x1f, 0x5f, 0xbf]), count([0xd9, 0x48, 0x0f]));
    assert!(
        push >= 20 && ack >= 20,
        "series pixels in the chart: push {push}, ack {ack}"
    );
    let background = [0xfb, 0xfb, 0xfb];
    assert!(
        count(background) > (x1 - x0) * (y1 - y0) / 2,
        "the plot area is not drawn"
    );
}

/// The "Configuration" section: the last reload's result and every error, as text.
#[tokio::test]
async fn the_status_page_shows_a_failed_reload_and_its_errors_as_text() {
    use voltha_xds::reload::Trigger;
    let s = Setup::new().await;
    let odd = "<img src=x onerror=alert(1)> & more";
    let outcome = s
        .server
        .reload
        .apply(Err(vec![odd.to_string(), "second error".to_string()]), Trigger::Request)
        .await;
    assert_eq!(outcome.result(), "invalid");
    let dom = dump_dom(&s.admin("/")).await;
    let last = row(&dom, r#"<p id="config-last""#);
    assert!(last.contains(r#"data-result="invalid""#), "{last}");
    assert!(
        last.contains("(request): invalid, the running configuration is kept"),
        "{last}"
    );
    let errors = row(&dom, r#"<ul id="config-errors">"#);
    assert!(
        errors.contains("&lt;img src=x onerror=alert(1)&gt; &amp; more"),
        "{errors}"
    );
    assert!(errors.contains("second error"), "{errors}");
    assert!(!dom.contains("<img"), "an error is never markup");
    assert!(
        row(&dom, r#"<p id="config-summary">"#).contains("reloads: 0 ok, 1 invalid, 0 refused"),
        "{dom}"
    );
    // The status command's JSON carries the same.
    let (_, v) = support::get_json(&s.admin("/debug/status")).await;
    assert_eq!(v["config"]["last_reload"]["errors"][1], "second error");
    s.server.stop(Duration::from_secs(5)).await;
}
