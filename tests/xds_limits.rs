//! The xDS port's limits (streams, connections, request size) and graceful shutdown of the real
//! binary on SIGTERM.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use support::proxy::Proxy;
use support::sotw::Sotw;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const WAIT: Duration = Duration::from_secs(10);

fn config(server: &str) -> String {
    format!(
        r#"
server: {{ {server} }}
default_group: g
clusters: [{{ name: c, endpoints: {{ static: ["127.0.0.1:1"] }} }}]
listeners: [{{ name: l, address: "127.0.0.1:1", routes: [{{ prefix: /, cluster: c }}] }}]
groups: [{{ name: g, listeners: [l] }}]
"#
    )
}

fn cds(names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "limits".into(),
            cluster: "g".into(),
            ..Default::default()
        }),
        type_url: CDS.into(),
        resource_names: names,
        ..Default::default()
    }
}

/// Opens an ADS stream and sends a wildcard CDS request; the status if the server refused it.
async fn open(ch: Channel, first: DiscoveryRequest) -> Result<Sotw, tonic::Status> {
    Sotw::try_open(ch, Some(first)).await
}

#[tokio::test]
async fn streams_over_max_streams_are_refused_until_one_closes() {
    let server = start_server(&config("max_streams: 2")).await;
    let ch = channel(server.xds_addr).await;
    let mut a = open(ch.clone(), cds(vec![])).await.expect("first");
    let mut b = open(ch.clone(), cds(vec![])).await.expect("second");
    assert!(a.try_next().await.is_ok());
    assert!(b.try_next().await.is_ok());

    let third = match open(ch.clone(), cds(vec![])).await {
        Err(s) => s,
        Ok(mut s) => s.try_next().await.expect_err("a third stream is refused"),
    };
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("server.max_streams"), "{third:?}");
    assert_eq!(metric(server.admin_addr, "voltha_xds_streams_refused_total").await, 1.0);

    // One stream leaves: its slot is free again.
    drop(a);
    let again = wait_for(WAIT, "a slot to free up", || {
        let ch = ch.clone();
        async move {
            let mut s = open(ch, cds(vec![])).await.ok()?;
            s.try_next().await.ok().map(|_| s)
        }
    })
    .await;
    drop((again, b));
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_over_max_request_bytes_ends_only_its_stream() {
    let server = start_server(&config("max_request_bytes: 2048")).await;
    let ch = channel(server.xds_addr).await;
    let big: Vec<String> = (0..200).map(|i| format!("cluster-name-{i:04}")).collect();
    let mut s = open(ch.clone(), cds(big)).await.expect("open");
    let status = s.try_next().await.expect_err("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("server.max_request_bytes"), "{status:?}");
    assert_eq!(metric(server.admin_addr, "voltha_xds_bad_requests_total").await, 1.0);
    // The server, and the same connection, keep serving.
    let mut ok = open(ch, cds(vec![])).await.expect("open");
    assert!(ok.try_next().await.is_ok());
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once() {
    let server = start_server(&config("max_connections: 1")).await;
    let ch = channel(server.xds_addr).await;
    let mut first = open(ch.clone(), cds(vec![])).await.expect("open");
    assert!(first.try_next().await.is_ok());

    let mut second = tokio::net::TcpStream::connect(server.xds_addr).await.expect("tcp");
    let _ = second.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, second.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "the second connection was served: {n:?}");
    assert_eq!(
        metric(
            server.admin_addr,
            "voltha_xds_connections_refused_total{reason=\"max_connections\"}"
        )
        .await,
        1.0
    );
    // The first connection is untouched.
    let mut again = open(ch, cds(vec![])).await.expect("open on the first connection");
    assert!(again.try_next().await.is_ok());
    server.stop(Duration::from_secs(5)).await;
}

/// The HTTP/2 flow control the server grants, read from the frames it sends a new connection:
/// 256 KiB per stream in its SETTINGS (`SETTINGS_INITIAL_WINDOW_SIZE`), and a connection
/// window raised to 1 MiB (a `WINDOW_UPDATE` on stream 0 over HTTP/2's initial 65,535 bytes).
/// docs/configuration.md says both.
#[tokio::test]
async fn a_connection_is_granted_256_kib_per_stream_and_1_mib_in_all() {
    let server = start_server(&config("")).await;
    let mut tcp = tokio::net::TcpStream::connect(server.xds_addr).await.expect("tcp");
    // The client preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let (mut stream_window, mut connection_increment) = (None, None);
    // The server's first frames: its SETTINGS, the connection's WINDOW_UPDATE, our SETTINGS'
    // ACK. At most 8 frames, each read within WAIT; the asserts below say what did not come.
    for _ in 0..8 {
        let mut head = [0u8; 9];
        let Ok(read) = tokio::time::timeout(WAIT, tcp.read_exact(&mut head)).await else {
            break;
        };
        read.expect("a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        assert!(len <= 16_384, "a frame of {len} bytes");
        let mut payload = vec![0u8; len];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut payload))
            .await
            .expect("a frame in time")
            .expect("a frame payload");
        match (kind, stream) {
            // SETTINGS, not an ACK: 6-byte entries of id and value.
            (4, 0) if flags & 1 == 0 => {
                for e in payload.chunks_exact(6) {
                    if u16::from_be_bytes([e[0], e[1]]) == 4 {
                        stream_window = Some(u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
                    }
                }
            }
            // WINDOW_UPDATE: a reserved bit, then the 31-bit increment.
            (8, 0) => {
                connection_increment =
                    Some(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff)
            }
            _ => {}
        }
        if stream_window.is_some() && connection_increment.is_some() {
            break;
        }
    }
    assert_eq!(stream_window, Some(256 * 1024), "SETTINGS_INITIAL_WINDOW_SIZE");
    assert_eq!(
        connection_increment.map(|i| i + 65_535),
        Some(1024 * 1024),
        "the connection window"
    );
    drop(tcp);
    server.stop(Duration::from_secs(5)).await;
}

/// SIGTERM (Kubernetes) and SIGINT (Ctrl-C): the binary stops accepting, ends the open stream,
/// and exits 0 well within `server.shutdown_grace`. With `--log-format json` every log line is
/// one JSON object.
#[tokio::test]
async fn sigterm_ends_streams_and_exits_zero() {
    signal_ends_streams_and_exits_zero("TERM", "human").await;
}

#[tokio::test]
async fn sigint_ends_streams_and_exits_zero_with_json_logs() {
    signal_ends_streams_and_exits_zero("INT", "json").await;
}

async fn signal_ends_streams_and_exits_zero(signal: &str, log_format: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let (xds_port, admin_port) = (free_port(), free_port());
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config("shutdown_grace: 5s")).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .args(["--log-format", log_format])
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--xds-listen", &format!("127.0.0.1:{xds_port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--admin-debug-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voltha-xds starts");
    let xds: SocketAddr = format!("127.0.0.1:{xds_port}").parse().expect("addr");
    wait_listening(xds).await;
    let mut s = open(channel(xds).await, cds(vec![])).await.expect("open");
    assert!(s.try_next().await.is_ok());

    let t0 = Instant::now();
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // The stream ends (end of stream or a status), it does not hang.
    let end = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "a response after SIGTERM: {end:?}");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(t0.elapsed() < WAIT, "still running {:?} after SIGTERM", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}, beyond shutdown_grace"
    );
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(log.contains("shutting down") && log.contains("stopped"), "{log}");
    if log_format == "json" {
        for line in log.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        }
    } else {
        assert!(!log.trim_start().starts_with('{'), "{log}");
    }
    // The port is free again.
    assert!(tokio::net::TcpListener::bind(xds).await.is_ok(), "xDS port still held");
}

/// The sum of the `voltha_xds_streams` gauge over its labels.
async fn open_streams(admin: SocketAddr) -> f64 {
    metric_sum(admin, "voltha_xds_streams").await
}

/// An Envoy whose host vanishes without closing the connection: the HTTP/2 keepalive PING goes
/// unanswered, the server closes the connection within interval + timeout, and the stream is
/// gone from the streams gauge (its slot of max_streams is free again).
#[tokio::test]
async fn keepalive_drops_a_peer_that_stopped_answering() {
    let server = start_server(&config(
        "keepalive_interval: 200ms, keepalive_timeout: 200ms, max_streams: 1",
    ))
    .await;
    let proxy = Proxy::start(server.xds_addr).await;
    let mut s = open(channel(proxy.addr).await, cds(vec![])).await.expect("open");
    assert!(s.try_next().await.is_ok());
    assert_eq!(open_streams(server.admin_addr).await, 1.0);
    // Several keepalive rounds pass on a live peer: the stream stays. The connection is idle
    // but for the server's PINGs (17 bytes each): three of them reach the peer, which answers,
    // so the connection outlives more than two rounds of interval + timeout.
    let before = proxy.bytes_to_clients();
    wait_for(WAIT, "three keepalive PINGs to reach the peer", || async {
        (proxy.bytes_to_clients() >= before + 3 * 17).then_some(())
    })
    .await;
    assert_eq!(open_streams(server.admin_addr).await, 1.0, "a live peer was dropped");

    proxy.freeze();
    let t0 = Instant::now();
    wait_for(WAIT, "the dead peer's stream to end", || {
        let admin = server.admin_addr;
        async move { (open_streams(admin).await == 0.0).then_some(()) }
    })
    .await;
    eprintln!("dead peer dropped after {:?}", t0.elapsed());
    // Its slot is free: a new stream (directly, not through the frozen proxy) is served.
    let mut again = open(channel(server.xds_addr).await, cds(vec![])).await.expect("open");
    assert!(again.try_next().await.is_ok());
    drop((s, again));
    server.stop(Duration::from_secs(5)).await;
}

/// server.max_streams_per_connection is the HTTP/2 concurrent-stream limit the server
/// advertises: a third stream on a connection waits (the client holds it) until one of the two
/// open ones ends, while another connection is served at once.
#[tokio::test]
async fn max_streams_per_connection_holds_a_third_stream_on_one_connection() {
    let server = start_server(&config("max_streams_per_connection: 2")).await;
    let ch = channel(server.xds_addr).await;
    let mut a = open(ch.clone(), cds(vec![])).await.expect("first");
    let mut b = open(ch.clone(), cds(vec![])).await.expect("second");
    assert!(a.try_next().await.is_ok());
    assert!(b.try_next().await.is_ok());

    let third = tokio::spawn({
        let ch = ch.clone();
        async move {
            let mut s = open(ch, cds(vec![])).await.expect("third");
            s.try_next().await.expect("third's response");
            s
        }
    });
    // Another connection is not held: while a new connection is made and a stream on it is
    // served, five times over, the third stream on the first connection is not.
    let mut others = Vec::new();
    for _ in 0..5 {
        let mut other = open(channel(server.xds_addr).await, cds(vec![])).await.expect("other");
        assert!(other.try_next().await.is_ok());
        others.push(other);
    }
    wait_for(WAIT, "the streams counted", || async {
        (open_streams(server.admin_addr).await >= 7.0).then_some(())
    })
    .await;
    assert!(
        !third.is_finished(),
        "a third stream was served on a connection limited to two"
    );
    assert_eq!(open_streams(server.admin_addr).await, 7.0);

    drop(a);
    let third = tokio::time::timeout(WAIT, third)
        .await
        .expect("the third stream is served once one ends")
        .expect("task");
    drop((third, b, others));
    server.stop(Duration::from_secs(5)).await;
}

/// Shutdown finishes the response in flight: an Envoy that has not read the whole of a large
/// CDS response (HTTP/2 flow control holds the rest on the server) when shutdown begins still
/// receives all of it, then its stream ends; the server stops within the deadline.
#[tokio::test]
async fn shutdown_delivers_the_response_in_flight() {
    let n = 1500;
    let clusters: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "  - {{ name: cluster-with-a-long-name-{i:05}, endpoints: {{ static: [\"127.0.0.1:{}\"] }} }}",
                1000 + i
            )
        })
        .collect();
    let yaml =
        format!(
        "server: {{ shutdown_grace: 5s }}\ndefault_group: g\nclusters:\n{}\ngroups: [{{ name: g, clusters: [{}] }}]\n",
        clusters.join("\n"),
        (0..n).map(|i| format!("cluster-with-a-long-name-{i:05}")).collect::<Vec<_>>().join(", ")
    );
    let server = start_server(&yaml).await;
    let xds = server.xds_addr;
    // Through a proxy that counts what reaches the client.
    let proxy = Proxy::start(xds).await;
    let small_window = Channel::from_shared(format!("http://{}", proxy.addr))
        .expect("uri")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connect");
    let mut s = open(small_window, cds(vec![])).await.expect("open");
    // The response is queued and partly sent: a whole stream window (64 KiB) of it reaches the
    // client, which reads nothing yet, so flow control keeps the rest on the server.
    wait_for(WAIT, "a stream window of the response sent", || async {
        (proxy.bytes_to_clients() >= 65_535).then_some(())
    })
    .await;

    let t0 = Instant::now();
    let stopping = tokio::spawn(server.stop(Duration::from_secs(5)));
    wait_for(WAIT, "the xDS port to stop accepting", || async move {
        tokio::net::TcpStream::connect(xds).await.is_err().then_some(())
    })
    .await;

    let r = s
        .try_next()
        .await
        .expect("the response in flight is delivered after shutdown began");
    assert_eq!(r.type_url, CDS);
    assert_eq!(r.resources.len(), n, "a cut response");
    let size: usize = r.resources.iter().map(|a| a.value.len()).sum();
    assert!(
        size > 128 * 1024,
        "the response ({size} bytes) fits in one window; the test proves nothing"
    );
    let end = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "a response after shutdown: {end:?}");
    stopping.await.expect("stop");
    assert!(t0.elapsed() < Duration::from_secs(5), "stop took {:?}", t0.elapsed());
}

/// `serve` runs with the allocator settings that return memory after a burst
/// (`MIMALLOC_PURGE_DELAY=0`, `MIMALLOC_ALLOW_THP=0`), set in its own environment from the
/// start (same pid), and keeps an operator's value of either.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn serve_runs_with_the_allocator_settings_and_keeps_an_operators_value() {
    let dir = tempfile::tempdir().expect("tmp");
    let (xds_port, admin_port) = (free_port(), free_port());
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config("")).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--xds-listen", &format!("127.0.0.1:{xds_port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .env_remove("MIMALLOC_PURGE_DELAY")
        .env("MIMALLOC_ALLOW_THP", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("voltha-xds starts");
    wait_listening(format!("127.0.0.1:{xds_port}").parse().expect("addr")).await;
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).expect("the process's environment");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.starts_with("MIMALLOC_"))
        .collect();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(vars.contains(&"MIMALLOC_PURGE_DELAY=0".to_string()), "{vars:?}");
    assert!(vars.contains(&"MIMALLOC_ALLOW_THP=1".to_string()), "{vars:?}");
    assert_eq!(vars.len(), 2, "{vars:?}");
}
