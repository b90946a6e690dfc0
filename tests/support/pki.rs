//! Test certificates made at test time (rcgen), and a TLS front for the plain HTTP doubles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// A CA and, signed by it, a certificate for 127.0.0.1 and a client certificate (PEM files).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA, to sign more certificates.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate for localhost and 127.0.0.1, signed by the CA: (cert PEM, key PEM).
fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    // A subject of its own: with the issuer's name, BoringSSL (Envoy) takes it for self-signed.
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn create(dir: &std::path::Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "voltha-xds test CA");
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (server_cert, server_key) = leaf(&issuer, ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(&issuer, ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            issuer,
        }
    }

    /// A new server certificate and key from the same CA, written over the server's files (the
    /// key first, as a rotation tool would leave them for a moment). Returns the new cert PEM.
    pub fn rotate_server(&self) -> String {
        let (cert, key) = leaf(&self.issuer, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        std::fs::write(&self.server_key, &key).expect("write key");
        std::fs::write(&self.server_cert, &cert).expect("write cert");
        cert
    }
}

/// Terminates TLS (the [`Pki`]'s server certificate for 127.0.0.1) on a loopback port and
/// forwards the plain bytes to `target`. Ends with the test's runtime.
pub async fn tls_front(pki: &Pki, target: SocketAddr) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// [`tls_front`] that requires a client certificate signed by the [`Pki`]'s CA (mutual TLS, as
/// Consul's `verify_incoming`). Returns the address and a count of handshakes refused.
pub async fn mtls_front(pki: &Pki, target: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).expect("ca file") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, refused)
}
