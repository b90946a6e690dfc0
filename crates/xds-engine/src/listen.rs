//! The xDS port's accept loop: a limit on open connections, TLS or mutual TLS with certificates
//! re-read when their files change, and the handshake off the accept path.
//!
//! Connections come out as one [`Conn`] type (plain or TLS) for tonic's
//! `serve_with_incoming_shutdown`. A certificate reload swaps the configuration that *new*
//! handshakes use; connections already open keep their session, so no stream is dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// TLS on the xDS port: the files, re-read every `reload_interval` when they change; open
/// streams keep going.
#[derive(Debug, Clone)]
pub struct XdsTlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA bundle; when set, every client must present a certificate it signed (mTLS).
    pub client_ca_file: Option<String>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// The HTTP/2 flow-control window the server grants each ADS stream: what a client may send
/// before the server has read it. An Envoy's ACK repeats its subscription (7 KiB with 1,000
/// EDS names): with HTTP/2's default of 64 KiB the server sent a `WINDOW_UPDATE` every four or
/// five ACKs, one more write each; with 256 KiB, one every eighteen. What a connection can make
/// the server hold stays bounded by [`CONNECTION_WINDOW`], and a larger request flows as it is
/// read.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// The window for all of a connection's streams together (hyper's default, stated).
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// A handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection, plain or TLS. Holds its slot of `server.max_connections` until it
/// is dropped.
pub struct Conn {
    io: Io,
    remote: Option<SocketAddr>,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What tonic's request extensions get: the peer's address.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo { remote: self.remote }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS files' content when they were last loaded, to tell a change.
#[derive(PartialEq, Eq)]
struct Fingerprint(Vec<Vec<u8>>);

fn read_files(tls: &XdsTlsConfig) -> Result<Fingerprint, String> {
    let mut v = Vec::new();
    for (what, f) in [
        ("cert_file", Some(&tls.cert_file)),
        ("key_file", Some(&tls.key_file)),
        ("client_ca_file", tls.client_ca_file.as_ref()),
    ] {
        if let Some(f) = f {
            v.push(std::fs::read(f).map_err(|e| format!("server.tls.{what}: cannot read {f}: {e}"))?);
        }
    }
    Ok(Fingerprint(v))
}

fn certs(pem: &[u8], what: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls.{what}: {path}: bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("server.tls.{what}: {path} holds no certificate"));
    }
    Ok(certs)
}

/// Builds the rustls configuration from the files' content (read once, by [`read_files`]).
fn server_config(tls: &XdsTlsConfig, files: &Fingerprint) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certs(&files.0[0], "cert_file", &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&files.0[1])
        .map_err(|e| format!("server.tls.key_file: {}: no usable private key: {e}", tls.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (&tls.client_ca_file, files.0.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(pem, "client_ca_file", path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("server.tls.client_ca_file: {path}: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("server.tls.client_ca_file: {path}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("server.tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration new handshakes use, replaced when the files change.
pub struct Tls {
    config: XdsTlsConfig,
    current: RwLock<(Fingerprint, Arc<rustls::ServerConfig>)>,
}

impl Tls {
    /// Loads the files; an error names the file and the problem.
    pub fn load(config: &XdsTlsConfig) -> Result<Arc<Tls>, String> {
        let files = read_files(config)?;
        let sc = server_config(config, &files)?;
        Ok(Arc::new(Tls {
            config: config.clone(),
            current: RwLock::new((files, sc)),
        }))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().1.clone())
    }

    /// Re-reads the files. `Ok(true)`: they changed and the new configuration is in use;
    /// `Ok(false)`: unchanged; `Err`: changed but unusable, the previous configuration stays.
    pub fn reload(&self) -> Result<bool, String> {
        let files = read_files(&self.config)?;
        if files == self.current.read().0 {
            return Ok(false);
        }
        let sc = server_config(&self.config, &files)?;
        *self.current.write() = (files, sc);
        Ok(true)
    }

    /// Checks the files every `reload_interval` until `shutdown`. A failed reload is logged and
    /// counted once per distinct error; the last good certificates keep being used.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Ok(true) => {
                    metrics.tls_reload(true);
                    last_error = None;
                    info!(cert = %self.config.cert_file, "xDS TLS certificates reloaded; new connections use them");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        metrics.tls_reload(false);
                        warn!(error = %e, "xDS TLS reload failed; the previous certificates stay in use");
                        last_error = Some(e);
                    }
                }
            }
        }
    }
}

/// Accepts until `shutdown`: at most `max_connections` open at once (others are closed at
/// once and counted), TLS handshakes in their own tasks with a timeout. The task ends, and the
/// port is closed, at `shutdown`.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    max_connections: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<io::Result<Conn>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    let task = tokio::spawn(async move {
        let mut refused_logged = false;
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        debug!(error = %e, "xDS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.connection_refused("max_connections");
                if !refused_logged {
                    warn!(%remote, max_connections, "xDS connection refused: server.max_connections reached");
                    refused_logged = true;
                }
                drop(tcp);
                continue;
            };
            refused_logged = false;
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    let conn = Conn {
                        io: Io::Plain(tcp),
                        remote: Some(remote),
                        _slot: slot,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    let tx = tx.clone();
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let conn = Conn {
                                    io: Io::Tls(Box::new(s)),
                                    remote: Some(remote),
                                    _slot: slot,
                                };
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(e)) => {
                                metrics.connection_refused("tls_handshake");
                                info!(%remote, error = %super::logsafe::Safe(&e), "xDS TLS handshake failed");
                            }
                            Err(_) => {
                                metrics.connection_refused("tls_handshake_timeout");
                                info!(%remote, "xDS TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    (rx, task)
}

/// Checks TLS files as `serve` would load them (for `validate`).
pub fn check(tls: &XdsTlsConfig) -> Result<(), String> {
    Tls::load(tls).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(dir: &Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        p.display().to_string()
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn config(dir: &Path, cert: &str, key: &str) -> XdsTlsConfig {
        XdsTlsConfig {
            cert_file: write(dir, "cert.pem", cert),
            key_file: write(dir, "key.pem", key),
            client_ca_file: None,
            reload_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = self_signed("a");
        let c = config(dir.path(), &cert, &key);
        assert!(Tls::load(&c).is_ok());

        let missing = XdsTlsConfig {
            cert_file: dir.path().join("nope.pem").display().to_string(),
            ..c.clone()
        };
        let e = Tls::load(&missing).err().expect("missing file refused");
        assert!(e.contains("server.tls.cert_file") && e.contains("nope.pem"), "{e}");

        let garbage = config(dir.path(), "not a certificate", &key);
        let e = Tls::load(&garbage).err().expect("garbage refused");
        assert!(e.contains("holds no certificate"), "{e}");

        let (other_cert, _) = self_signed("b");
        let mismatched = config(dir.path(), &other_cert, &key);
        let e = Tls::load(&mismatched).err().expect("mismatch refused");
        assert!(e.contains("do not go together"), "{e}");

        let no_key = config(dir.path(), &cert, "");
        let e = Tls::load(&no_key).err().expect("empty key refused");
        assert!(e.contains("server.tls.key_file"), "{e}");
    }

    #[test]
    fn reload_swaps_on_change_and_keeps_the_last_good_on_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = self_signed("a");
        let c = config(dir.path(), &cert, &key);
        let tls = Tls::load(&c).expect("load");
        let before = tls.current.read().1.clone();
        assert_eq!(tls.reload(), Ok(false), "unchanged files");
        assert!(Arc::ptr_eq(&before, &tls.current.read().1));

        // A half-written rotation (new cert, old key) is refused; the old config stays.
        let (cert2, key2) = self_signed("b");
        std::fs::write(&c.cert_file, &cert2).expect("write");
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.current.read().1));

        std::fs::write(&c.key_file, &key2).expect("write");
        assert_eq!(tls.reload(), Ok(true));
        assert!(!Arc::ptr_eq(&before, &tls.current.read().1));
        assert_eq!(tls.current.read().1.alpn_protocols, vec![b"h2".to_vec()]);
    }
}
