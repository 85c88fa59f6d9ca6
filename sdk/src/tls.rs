//! TLS 1.3 for kura's clients and nodes: rustls with the ring provider only, passed
//! explicitly (no process-wide default provider, so a second provider in the tree can
//! never be picked by accident), PEM through `rustls-pki-types`.

use crate::wire::{BoxFut, BoxIo, Connector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The one crypto provider kura uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Why TLS material could not be loaded: one sentence naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// Every certificate in the PEM file at `path`; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs_pem(&read(path)?).map_err(|TlsError(e)| TlsError(format!("{}: {e}", path.display())))
}

/// Every certificate in PEM text; at least one.
pub fn load_certs_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, SEC1 or PKCS#1). The error never
/// shows the file's content.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| TlsError(format!("{} holds no PEM private key", path.display())))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
}

/// Trust anchors from a PEM file of CA certificates.
pub fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| {
            TlsError(format!(
                "{}: not a usable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The operating system's trust anchors.
pub fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError(
            "no usable CA certificate in the system's trust store".into(),
        ));
    }
    Ok(roots)
}

/// A TLS 1.3 client configuration trusting `roots`, presenting `identity` (certificate
/// chain and key) when given.
pub fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_at(roots, identity, None)
}

/// Like [`client_config`], judging certificates' validity by `time` (a simulation's
/// clock) instead of the system's when given.
pub fn client_config_at(
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    time: Option<Arc<dyn rustls::time_provider::TimeProvider>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = match time {
        Some(t) => rustls::ClientConfig::builder_with_details(provider(), t),
        None => rustls::ClientConfig::builder_with_provider(provider()),
    };
    let builder = builder
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(format!("TLS 1.3 unavailable: {e}")))?
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError(format!("client certificate and key do not match: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A client configuration that can be replaced while connections are made with it (a
/// renewed certificate is used for new connections).
pub type SharedClientConfig = Arc<RwLock<Arc<rustls::ClientConfig>>>;

/// Wraps another connector's streams in TLS. The server name checked against the
/// server's certificate is the host part of the address (a DNS name or an IP address).
pub struct TlsConnector {
    inner: Arc<dyn Connector>,
    config: SharedClientConfig,
}

impl TlsConnector {
    /// TLS over `inner` with the configuration `config` holds at each connect.
    pub fn new(inner: Arc<dyn Connector>, config: SharedClientConfig) -> TlsConnector {
        TlsConnector { inner, config }
    }

    /// TLS over `inner` with a fixed configuration.
    pub fn fixed(inner: Arc<dyn Connector>, config: rustls::ClientConfig) -> TlsConnector {
        TlsConnector::new(inner, Arc::new(RwLock::new(Arc::new(config))))
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed) as a TLS name.
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} has no host usable as a TLS server name"),
        )
    })
}

impl Connector for TlsConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let name = server_name(addr)?;
            let config = self.config.read().expect("tls config lock").clone();
            let tcp = self.inner.connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls) as BoxIo)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(
            server_name("127.0.0.1:7001").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7001").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("main.kura.internal:7001").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn a_missing_or_empty_file_is_one_sentence_naming_it() {
        let dir = std::env::temp_dir().join(format!("kura-sdk-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all").unwrap();
        let e = load_certs(&empty).unwrap_err().0;
        assert!(e.contains("empty.pem") && !e.contains('\n'), "{e}");
        let e = load_key(&dir.join("absent.key")).unwrap_err().0;
        assert!(e.contains("absent.key"), "{e}");
        let e = load_key(&empty).unwrap_err().0;
        assert!(e.contains("empty.pem") && !e.contains("not pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
