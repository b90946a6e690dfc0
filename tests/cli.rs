//! The `voltha-xds` binary's command line: `serve` flags from `VOLTHA_XDS_*` variables, the log
//! level and its precedence under `RUST_LOG`, and what `--help` lists.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Every variable the command line reads; each run starts without them, so the test's own
/// environment cannot leak in.
const VARS: [&str; 7] = [
    "VOLTHA_XDS_CONFIG",
    "VOLTHA_XDS_XDS_LISTEN",
    "VOLTHA_XDS_ADMIN_LISTEN",
    "VOLTHA_XDS_ADMIN_DEBUG_LISTEN",
    "VOLTHA_XDS_LOG_FORMAT",
    "VOLTHA_XDS_LOG_LEVEL",
    "RUST_LOG",
];

/// A configuration whose one source reads a file that does not exist: the server starts, is not
/// ready, and logs a warning for the source.
fn config(dir: &std::path::Path) -> String {
    format!(
        r#"
server: {{ shutdown_grace: 2s }}
default_group: g
sources:
  - {{ name: cores, type: file, path: "{}", format: voltha_assignment, poll_interval: 50ms }}
clusters: [{{ name: c, endpoints: {{ source: cores, port: 50556 }} }}]
listeners: [{{ name: l, address: "127.0.0.1:1", routes: [{{ prefix: /, cluster: c }}] }}]
groups: [{{ name: g, listeners: [l] }}]
"#,
        dir.join("absent.json").display()
    )
}

struct Served {
    xds: SocketAddr,
    admin: SocketAddr,
    debug: SocketAddr,
    child: Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `voltha-xds serve` with no flags at all: the configuration and the three addresses
    /// come from `VOLTHA_XDS_*` variables, plus `extra` variables.
    async fn start(config_path: &std::path::Path, extra: &[(&str, &str)]) -> Served {
        let (xds, admin, debug) = (free_addr(), free_addr(), free_addr());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voltha-xds"));
        for v in VARS {
            cmd.env_remove(v);
        }
        cmd.arg("serve")
            .env("VOLTHA_XDS_CONFIG", config_path)
            .env("VOLTHA_XDS_XDS_LISTEN", xds.to_string())
            .env("VOLTHA_XDS_ADMIN_LISTEN", admin.to_string())
            .env("VOLTHA_XDS_ADMIN_DEBUG_LISTEN", debug.to_string())
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("voltha-xds starts");
        let s = Served {
            xds,
            admin,
            debug,
            child,
        };
        wait_listening(s.xds).await;
        // The admin listener serves probes only; the debug listener the status document.
        let (code, _) = get_json(&format!("http://{}/healthz", s.admin)).await;
        assert_eq!(code, 200);
        let (code, status) = get_json(&format!("http://{}/debug/status", s.debug)).await;
        assert_eq!(code, 200, "{status}");
        // The source named in the configuration file has failed (so its warning is written).
        let readyz = format!("http://{}/readyz", s.admin);
        wait_for(WAIT, "the file source to report its error", || {
            let readyz = readyz.clone();
            async move {
                let (_, v) = get_json(&readyz).await;
                (v["sources"]["cores"]["state"] == "error").then_some(())
            }
        })
        .await;
        s
    }

    /// SIGTERM, then the exit status and everything written to stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            assert!(t0.elapsed() < WAIT, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut log).expect("log");
        }
        (status.code(), log)
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn config_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config(dir.path())).expect("write");
    (dir, path)
}

/// `--config`, the three listen addresses and `--log-format` all come from the environment: the
/// server runs the file's configuration (its source `cores` exists) on the given addresses and
/// logs JSON, the start line naming those addresses.
#[tokio::test]
async fn serve_takes_its_flags_from_the_environment() {
    let (_dir, path) = config_file();
    let s = Served::start(&path, &[("VOLTHA_XDS_LOG_FORMAT", "json")]).await;
    let (xds, admin, debug) = (s.xds, s.admin, s.debug);
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|v| v["fields"]["message"] == "voltha-xds serving")
        .unwrap_or_else(|| panic!("no start line in {log}"));
    assert_eq!(start["fields"]["xds_addr"], xds.to_string(), "{start}");
    assert_eq!(start["fields"]["admin_addr"], admin.to_string(), "{start}");
    assert_eq!(start["fields"]["admin_debug_addr"], debug.to_string(), "{start}");
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && v["fields"]["message"] == "stopped"),
        "{log}"
    );
}

/// `VOLTHA_XDS_LOG_LEVEL=warn` keeps the warnings (the missing file) and drops the info lines.
#[tokio::test]
async fn log_level_from_the_environment_filters_the_log() {
    let (_dir, path) = config_file();
    let s = Served::start(&path, &[("VOLTHA_XDS_LOG_LEVEL", "warn")]).await;
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("source error"), "no warning in {log}");
    assert!(
        !log.contains("voltha-xds serving") && !log.contains("stopped"),
        "info lines at warn: {log}"
    );
    assert!(!log.contains("INFO"), "{log}");
}

/// `RUST_LOG`, when set, wins over `--log-level`; a `RUST_LOG` that does not parse is said and
/// `--log-level` applies.
#[tokio::test]
async fn rust_log_wins_over_log_level() {
    let (_dir, path) = config_file();
    let s = Served::start(&path, &[("VOLTHA_XDS_LOG_LEVEL", "error"), ("RUST_LOG", "info")]).await;
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("voltha-xds serving") && log.contains("stopped"), "{log}");

    let s = Served::start(&path, &[("VOLTHA_XDS_LOG_LEVEL", "warn"), ("RUST_LOG", "info,=[")]).await;
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("RUST_LOG is not a valid filter"), "{log}");
    assert!(
        log.contains("source error") && !log.contains("voltha-xds serving"),
        "{log}"
    );
}

/// A bad listen address from a `serve` variable is a usage error that names the flag and the
/// variable.
#[test]
fn a_bad_listen_address_names_the_flag_and_the_variable() {
    for (var, flag) in [
        ("VOLTHA_XDS_XDS_LISTEN", "--xds-listen"),
        ("VOLTHA_XDS_ADMIN_LISTEN", "--admin-listen"),
        ("VOLTHA_XDS_ADMIN_DEBUG_LISTEN", "--admin-debug-listen"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .env_remove("RUST_LOG")
            .env(var, "localhost:18000")
            .args(["serve", "--config", "/nonexistent/voltha-xds.yaml"])
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {err}");
        assert!(
            err.contains(&format!("'{flag}")) && err.contains(var) && err.contains("localhost:18000"),
            "{var}: {err}"
        );
    }
}

/// A flag given on the command line wins over its variable.
#[tokio::test]
async fn a_flag_wins_over_its_variable() {
    for args in [
        &["--log-level", "info", "--log-format", "json", "validate"][..],
        &["validate", "--log-level", "info", "--log-format", "json"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .env_remove("RUST_LOG")
            .env("VOLTHA_XDS_LOG_LEVEL", "not a [level")
            .env("VOLTHA_XDS_LOG_FORMAT", "xml")
            .args(args)
            .args(["--config", "/nonexistent/voltha-xds.yaml"])
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        // Reached `validate` (the file is missing), so the variables' bad values were not used.
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("/nonexistent/voltha-xds.yaml"), "{err}");
    }

    // Without the flags, a bad variable is a usage error (exit status 2) that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .env("VOLTHA_XDS_LOG_LEVEL", "not a [level")
        .args(["validate", "--config", "/nonexistent/voltha-xds.yaml"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'--log-level' (or VOLTHA_XDS_LOG_LEVEL)") && err.contains("not a log level"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .env("VOLTHA_XDS_LOG_FORMAT", "xml")
        .args(["validate", "--config", "/nonexistent/voltha-xds.yaml"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"xml\" for '--log-format' (or VOLTHA_XDS_LOG_FORMAT)"),
        "{err}"
    );
}

/// `--help` names each variable next to its flag.
#[test]
fn help_lists_the_environment_variables() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .args(args)
            .output()
            .expect("runs");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let serve = help(&["serve", "--help"]);
    for (flag, var) in [
        ("--config", "VOLTHA_XDS_CONFIG"),
        ("--xds-listen", "VOLTHA_XDS_XDS_LISTEN"),
        ("--admin-listen", "VOLTHA_XDS_ADMIN_LISTEN"),
        ("--admin-debug-listen", "VOLTHA_XDS_ADMIN_DEBUG_LISTEN"),
        ("--log-format", "VOLTHA_XDS_LOG_FORMAT"),
        ("--log-level", "VOLTHA_XDS_LOG_LEVEL"),
    ] {
        let at = serve
            .find(&format!("\n      {flag} "))
            .unwrap_or_else(|| panic!("{flag} not in {serve}"));
        let next_flag = serve[at + flag.len()..]
            .find("\n      --")
            .map_or(serve.len(), |i| at + flag.len() + i);
        assert!(
            serve[at..next_flag].contains(&format!("[env: {var}=")),
            "{flag} does not name {var}: {}",
            &serve[at..next_flag]
        );
    }
    let top = help(&["--help"]);
    assert!(
        top.contains("[env: VOLTHA_XDS_LOG_LEVEL=") && top.contains("[env: VOLTHA_XDS_LOG_FORMAT="),
        "{top}"
    );
}

/// The binary's `/metrics` names its build and has the standard process metrics, read at scrape
/// time (open connections show in `process_open_fds`); the start log line names the version.
#[tokio::test]
async fn metrics_and_start_line_name_the_build_and_the_process() {
    let (_dir, path) = config_file();
    let s = Served::start(&path, &[("VOLTHA_XDS_LOG_FORMAT", "json")]).await;
    let url = format!("http://{}/metrics", s.admin);
    let m = get_text(&url).await;
    let build = format!(
        "voltha_xds_build_info{{version=\"{}\",revision=\"{}\"}}",
        voltha_xds::build_info::VERSION,
        voltha_xds::build_info::REVISION
    );
    assert_eq!(sample(&m, &build), Some(1.0), "{build} not in {m}");
    assert!(m.contains("# TYPE process_cpu_seconds counter"), "{m}");
    // CPU time is counted in clock ticks (10 ms): a server this fresh may not have used one yet.
    assert!(sample(&m, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0), "{m}");
    let rss = sample(&m, "process_resident_memory_bytes").expect("rss");
    assert!(rss > 1_000_000.0 && rss < 4e9, "{rss}");
    let vsz = sample(&m, "process_virtual_memory_bytes").expect("vsz");
    assert!(vsz >= rss, "{vsz} < {rss}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = sample(&m, "process_start_time_seconds").expect("start time");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "started {started}, now {now}"
    );
    let max = sample(&m, "process_max_fds").expect("max fds");
    let fds = sample(&m, "process_open_fds").expect("open fds");
    assert!(fds >= 3.0 && fds <= max, "{fds} of {max}");
    assert!(m.ends_with("# EOF\n"), "{m}");
    assert_eq!(m.matches("# EOF").count(), 1, "{m}");

    // 20 more connections are 20 more descriptors in the server, seen on the next scrape. The
    // scrapes share one kept-alive connection, so none of them adds or leaves a descriptor of
    // its own (a client per scrape leaves the server closing the last one's socket while the
    // next is counted).
    let scraper = reqwest::Client::new();
    let open_fds = || {
        let (scraper, url) = (scraper.clone(), url.clone());
        async move {
            let text = scraper.get(&url).send().await.ok()?.text().await.ok()?;
            sample(&text, "process_open_fds")
        }
    };
    // A descriptor can be there for a moment only: a file the server reads (the configuration's
    // reload check, every second), or the socket of the earlier scrape's connection until the
    // server sees it closed. The baseline is the least of the scrapes over half a second, so
    // that it counts neither.
    let mut base = f64::MAX;
    for _ in 0..25 {
        base = base.min(open_fds().await.expect("open fds"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(tokio::net::TcpStream::connect(s.xds).await.expect("connect"));
    }
    wait_for(WAIT, "20 more open descriptors", || async {
        (open_fds().await? >= base + 20.0).then_some(())
    })
    .await;
    drop(conns);

    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    let start = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "voltha-xds serving")
        .unwrap_or_else(|| panic!("no start line in {log}"));
    assert_eq!(start["fields"]["version"], voltha_xds::build_info::VERSION, "{start}");
    assert_eq!(start["fields"]["revision"], voltha_xds::build_info::REVISION, "{start}");
}

/// `--version` names the version and the revision.
#[test]
fn version_names_the_revision() {
    let out = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .arg("--version")
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "voltha-xds {} ({})",
            voltha_xds::build_info::VERSION,
            voltha_xds::build_info::REVISION
        )
    );
    // Built in a git checkout, the revision is its commit.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(h) = head.ok().filter(|h| h.status.success()) {
        if std::env::var_os("VOLTHA_XDS_REVISION").is_none() {
            assert_eq!(
                voltha_xds::build_info::REVISION,
                String::from_utf8_lossy(&h.stdout).trim()
            );
        }
    }
}

/// `bootstrap --grpc` through the command line prints gRPC's bootstrap JSON: the server with
/// `xds_v3`, the node, and the `--tls-*` files as gRPC's `tls` credentials; `--delta` is refused.
#[test]
fn bootstrap_grpc_prints_the_grpc_clients_bootstrap() {
    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_voltha-xds"));
        c.args([
            "bootstrap",
            "--grpc",
            "--node-id",
            "voltctl-1",
            "--node-cluster",
            "voltha",
        ])
        .args(["--xds", "xds.voltha.svc:18000"])
        .args(extra);
        for v in VARS {
            c.env_remove(v);
        }
        c.output().expect("runs")
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let server = &v["xds_servers"][0];
    assert_eq!(server["server_uri"], "xds.voltha.svc:18000");
    assert_eq!(
        server["server_features"],
        serde_json::json!(["xds_v3", "ignore_resource_deletion"])
    );
    assert_eq!(server["channel_creds"], serde_json::json!([{ "type": "insecure" }]));
    assert_eq!(v["node"]["id"], "voltctl-1");
    assert_eq!(v["node"]["cluster"], "voltha");

    let out = run(&[
        "--tls-ca",
        "/etc/xds/ca.pem",
        "--tls-cert",
        "/etc/xds/c.pem",
        "--tls-key",
        "/etc/xds/k.pem",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v["xds_servers"][0]["channel_creds"],
        serde_json::json!([{ "type": "tls", "config": {
            "ca_certificate_file": "/etc/xds/ca.pem",
            "certificate_file": "/etc/xds/c.pem",
            "private_key_file": "/etc/xds/k.pem",
        }}])
    );

    let out = run(&["--delta"]);
    assert!(
        !out.status.success(),
        "gRPC's xDS client speaks State of the World only"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("State of the World"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
