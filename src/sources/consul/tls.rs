//! The Consul source's HTTP client and its TLS files: the CA bundle, the client certificate and
//! key (mutual TLS) and the name Consul's certificate is verified against. The files are
//! watched: when one changes, a new client is built from them; when they do not make one (a
//! missing file, a certificate without its key, a key that does not match), the error is
//! reported and the previous client, with the previous files' contents, keeps being used.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What the client's TLS is made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
    pub server_name: Option<String>,
}

/// A file's identity and version: what a change of it changes (modification time, size, inode).
/// `None` when it cannot be read.
pub(super) type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(p: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

impl TlsFiles {
    fn paths(&self) -> Vec<&std::path::Path> {
        let mut v: Vec<&std::path::Path> = self.ca_file.iter().map(|p| p.as_path()).collect();
        if let Some((c, k)) = &self.client {
            v.push(c);
            v.push(k);
        }
        v
    }

    /// The files' current versions.
    pub(super) fn stamps(&self) -> Vec<Stamp> {
        self.paths().into_iter().map(stamp).collect()
    }

    /// A client with these files' current contents.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let b = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        let needs_own_tls = self.ca_file.is_some() || self.server_name.is_some();
        let b = if needs_own_tls {
            b.use_preconfigured_tls(self.rustls_config()?)
        } else if let Some((cert, key)) = &self.client {
            // The platform's roots (reqwest's), with a client certificate.
            let mut pem = read(cert, "client certificate")?;
            pem.push(b'\n');
            pem.extend(read(key, "client key")?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("client certificate {} with key {}: {e}", cert.display(), key.display()))?;
            b.identity(id)
        } else {
            b
        };
        b.build().map_err(|e| e.to_string())
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca) = &self.ca_file else {
            return Err(
                "tls_server_name (CONSUL_TLS_SERVER_NAME) needs ca_file (CONSUL_CACERT): the \
                        CA that signs Consul's certificate"
                    .into(),
            );
        };
        let ca_pem = read(ca, "ca_file")?;
        for c in certs(&ca_pem, ca, "ca_file")? {
            roots.add(c).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| format!("tls_server_name {name:?}: {e}"))?;
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
            }
        };
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = certs(&read(cert, "client certificate")?, cert, "client certificate")?;
                let key_pem = read(key, "client key")?;
                let k = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("client key {}: no private key in PEM ({e})", key.display()))?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|e| format!("client certificate {} with key {}: {e}", cert.display(), key.display()))
            }
        }
    }
}

fn read(p: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

fn certs(pem: &[u8], p: &std::path::Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in PEM", p.display()));
    }
    Ok(certs)
}

/// Verifies Consul's certificate as the standard verifier does, but for the configured name
/// instead of the address's host (Consul's `TLSConfig.Address`, `CONSUL_TLS_SERVER_NAME`).
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client in use and the files' versions it was built from.
pub(super) struct Client {
    files: TlsFiles,
    stamps: Vec<Stamp>,
    pub(super) http: reqwest::Client,
}

impl Client {
    pub(super) fn new(files: &TlsFiles) -> Result<Client, String> {
        let stamps = files.stamps();
        Ok(Client {
            http: files.client()?,
            files: files.clone(),
            stamps,
        })
    }

    /// When a file changed since the client was built: a new client from them (`Ok(true)`), or
    /// the reason there is none (`Err`; the current client stays, and the same versions of the
    /// files are not tried again). `Ok(false)`: nothing changed.
    pub(super) fn refresh(&mut self) -> Result<bool, String> {
        let now = self.files.stamps();
        if now == self.stamps {
            return Ok(false);
        }
        self.stamps = now;
        self.http = self.files.client()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_name_needs_a_ca_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = TlsFiles {
            server_name: Some("consul.example".into()),
            ..Default::default()
        }
        .client()
        .err()
        .unwrap_or_default();
        assert!(e.contains("needs ca_file"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let e = TlsFiles {
            ca_file: Some(garbage.clone()),
            ..Default::default()
        }
        .client()
        .err()
        .unwrap_or_default();
        assert!(e.starts_with("ca_file ") && e.contains("no certificate"), "{e}");

        let missing = dir.path().join("missing.pem");
        let e = TlsFiles {
            client: Some((missing.clone(), garbage.clone())),
            ..Default::default()
        }
        .client()
        .err()
        .unwrap_or_default();
        assert!(e.starts_with("client certificate ") && e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn refresh_rebuilds_only_after_a_change_and_keeps_the_client_on_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["consul".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(&ca, cert.pem()).expect("write");
        let files = TlsFiles {
            ca_file: Some(ca.clone()),
            ..Default::default()
        };
        let mut c = Client::new(&files).expect("client");
        assert_eq!(c.refresh(), Ok(false));
        std::fs::write(&ca, "broken").expect("write");
        let e = c.refresh().err().unwrap_or_default();
        assert!(e.contains("no certificate"), "{e}");
        // The same broken version is reported once.
        assert_eq!(c.refresh(), Ok(false));
        std::fs::write(&ca, format!("{}\n", cert.pem())).expect("write");
        assert_eq!(c.refresh(), Ok(true));
    }
}
