//! Mutual TLS on the xDS port, end to end with the real Envoy: Envoy bootstrapped by
//! `voltha-xds bootstrap --tls-ca/--tls-cert/--tls-key` gets its configuration and serves calls;
//! a client without a certificate is refused; the server certificate is rotated on disk and
//! reloaded while Envoy's stream stays open and keeps receiving pushes.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::pki::Pki;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_block(pki: &Pki) -> String {
    format!(
        "server:\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n    client_ca_file: \"{}\"\n    reload_interval: 100ms\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    )
}

/// A TLS client for 127.0.0.1 that trusts the test CA, with or without the client certificate.
fn client_config(pki: &Pki, with_cert: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add");
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut c = if with_cert {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.client_cert)
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).expect("key");
        b.with_client_auth_cert(chain, key).expect("client auth")
    } else {
        b.with_no_client_auth()
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// Connects, sends the HTTP/2 preface and reads: the server's certificate when the server
/// answered, an error text when it refused.
async fn probe(pki: &Pki, addr: SocketAddr, with_cert: bool) -> Result<CertificateDer<'static>, String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(pki, with_cert));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let fut = async {
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 9];
        // The server's SETTINGS frame: 9 bytes of frame header, type 4.
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if buf[3] != 4 {
            return Err(format!("not an HTTP/2 SETTINGS frame: {buf:?}"));
        }
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no peer certificate")?;
        Ok(cert.into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn pem_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
}

/// A metric's value (`name{labels}` exactly as exposed), 0 when absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_mtls_gets_its_config_and_keeps_its_stream_through_a_certificate_rotation() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let (grpc, rest, core_port, admin) = (free_port(), free_port(), free_port(), free_port());
    let assignment_path = dir.path().join("assignment.json");
    std::fs::write(&assignment_path, assignment(&["127.0.0.1"])).expect("write");
    let mut cores = Vec::new();
    for (id, ip) in [("vcore-0", "127.0.0.1"), ("vcore-1", "127.0.0.2")] {
        let addr: SocketAddr = format!("{ip}:{core_port}").parse().expect("addr");
        cores.push(fake_core(id, addr));
        wait_listening(addr).await;
    }
    let yaml = config_yaml(dir.path(), grpc, rest, core_port, "").replacen("server:\n", &tls_block(&pki), 1);
    let server = start_server(&yaml).await;
    // The bootstrap comes from the binary's own `bootstrap` command, as an operator makes it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .args(["bootstrap", "--node-id", "mtls-envoy", "--node-cluster", "voltha"])
        .args([
            "--xds",
            &server.xds_addr.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .args(["--tls-ca", &pki.ca.display().to_string()])
        .args(["--tls-cert", &pki.client_cert.display().to_string()])
        .args(["--tls-key", &pki.client_key.display().to_string()])
        .output()
        .expect("bootstrap runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bs = String::from_utf8(out.stdout).expect("utf-8");
    let envoy = Envoy::start(dir.path(), "envoy", &bs, admin);
    let ch = lazy_channel(grpc);

    // Configuration arrived over mTLS: calls through Envoy reach the assigned core.
    let serving = |want: &'static str| {
        let ch = ch.clone();
        let log = envoy.log.clone();
        async move {
            let r = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if which_core(ch.clone()).await.is_ok_and(|c| c == want) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            assert!(
                r.is_ok(),
                "no call reached {want}; envoy log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    };
    serving("vcore-0").await;
    assert_eq!(envoy.stat("control_plane.connected_state").await, Some(1));
    let xds_connections = envoy.stat("cluster.voltha_xds.upstream_cx_total").await;
    assert_eq!(xds_connections, Some(1));
    let (_, clients) = get_json(&format!("http://{}/debug/clients", server.admin_debug_addr)).await;
    assert_eq!(clients["clients"][0]["node_id"], "mtls-envoy");

    // A client with the CA but without a client certificate is refused, and so is plain text.
    let refused = probe(&pki, server.xds_addr, false).await;
    assert!(refused.is_err(), "a client without a certificate was served");
    let plain = async {
        let mut s = tokio::net::TcpStream::connect(server.xds_addr).await.expect("connect");
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        // A TLS server answers plain HTTP/2 with a TLS alert or by closing, never with SETTINGS.
        !matches!(n, Ok(Ok(n)) if n >= 9 && buf[3] == 4)
    };
    assert!(plain.await, "plain HTTP/2 was served on the TLS port");
    wait_for(
        Duration::from_secs(5),
        "both refused handshakes to be counted",
        || async {
            (metric(
                server.admin_addr,
                "voltha_xds_connections_refused_total{reason=\"tls_handshake\"}",
            )
            .await
                >= 2.0)
                .then_some(())
        },
    )
    .await;
    let before = probe(&pki, server.xds_addr, true)
        .await
        .expect("a client with a certificate is served");

    // Rotate the server certificate on disk: reloaded, new connections get the new one.
    let new_cert = pem_der(&pki.rotate_server());
    assert_ne!(before, new_cert);
    wait_for(Duration::from_secs(10), "the certificate reload", || async {
        (metric(server.admin_addr, "voltha_xds_tls_reloads_total{result=\"ok\"}").await >= 1.0).then_some(())
    })
    .await;
    let after = probe(&pki, server.xds_addr, true)
        .await
        .expect("served after the reload");
    assert_eq!(after, new_cert, "a new connection gets the rotated certificate");

    // Envoy's stream was not dropped: the next push reaches it on the same connection.
    std::fs::write(dir.path().join("assignment.tmp"), assignment(&["127.0.0.2"])).expect("write");
    std::fs::rename(dir.path().join("assignment.tmp"), &assignment_path).expect("rename");
    serving("vcore-1").await;
    assert_eq!(
        envoy.stat("cluster.voltha_xds.upstream_cx_total").await,
        xds_connections
    );
    assert_eq!(envoy.stat("control_plane.connected_state").await, Some(1));
    server.stop(Duration::from_secs(5)).await;
}

/// A server whose TLS files are unusable does not start, and says which file is wrong.
#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let yaml = |cert: &str| {
        format!(
            "server: {{ tls: {{ cert_file: \"{cert}\", key_file: \"{}\" }} }}\ndefault_group: g\nclusters: [{{ name: c, endpoints: {{ static: [\"127.0.0.1:1\"] }} }}]\nlisteners: [{{ name: l, address: \"127.0.0.1:1\", routes: [{{ prefix: /, cluster: c }}] }}]\ngroups: [{{ name: g, listeners: [l] }}]\n",
            pki.server_key.display()
        )
    };
    let missing = dir.path().join("missing.pem");
    let config = voltha_xds::config::Config::from_yaml(&yaml(&missing.display().to_string())).expect("config");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let err = voltha_xds::start(config, addr, addr, addr)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("server.tls.cert_file") && err.contains("missing.pem"),
        "{err}"
    );

    // The client certificate (another key) with the server key: refused too.
    let config = voltha_xds::config::Config::from_yaml(&yaml(&pki.client_cert.display().to_string())).expect("config");
    let err = voltha_xds::start(config, addr, addr, addr)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("do not go together"), "{err}");
}

/// `validate` loads the TLS files too, and names the one that is wrong.
#[test]
fn validate_checks_the_tls_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let run = |cert: &std::path::Path| {
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            format!(
                "server: {{ tls: {{ cert_file: \"{}\", key_file: \"{}\", client_ca_file: \"{}\" }} }}\ndefault_group: g\nclusters: [{{ name: c, endpoints: {{ static: [\"127.0.0.1:1\"] }} }}]\nlisteners: [{{ name: l, address: \"127.0.0.1:1\", routes: [{{ prefix: /, cluster: c }}] }}]\ngroups: [{{ name: g, listeners: [l] }}]\n",
                cert.display(),
                pki.server_key.display(),
                pki.ca.display()
            ),
        )
        .expect("write");
        std::process::Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .arg("validate")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("runs")
    };
    let ok = run(&pki.server_cert);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("is valid"));
    let bad = run(&dir.path().join("absent.pem"));
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("server.tls.cert_file") && err.contains("absent.pem"),
        "{err}"
    );
}

/// A client certificate without its key (or without the CA) is refused by `bootstrap` with the
/// missing flag named, and nothing is printed.
#[test]
fn bootstrap_refuses_a_client_certificate_without_its_key() {
    let base = [
        "bootstrap",
        "--node-id",
        "n",
        "--node-cluster",
        "c",
        "--xds",
        "127.0.0.1:18000",
    ];
    for (extra, missing) in [
        (vec!["--tls-ca", "ca.pem", "--tls-cert", "c.pem"], "--tls-key"),
        (vec!["--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-ca"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
            .args(base)
            .args(&extra)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        assert!(out.stdout.is_empty(), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(missing), "{extra:?}: {err}");
    }
}
