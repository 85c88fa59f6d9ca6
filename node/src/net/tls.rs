//! TLS for a node's listeners and outbound links: identities in certificates, the
//! planes' server configurations, and certificate files reloaded without a restart.
//!
//! Every plane speaks TLS 1.3 with the node's certificate. The client API asks for no
//! client certificate (merchants authenticate with their keys); the peer plane requires
//! one signed by the cluster CA and naming a member (`kura://node/<id>`), checked right
//! after the handshake, before any byte of a request is read.

use kura_sdk::tls::SharedClientConfig;
use kura_sdk::tls::{load_certs, load_key, provider, roots_from_file};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OperatorRole {
    /// Everything on the admin plane.
    Admin,
    /// Reads status, audit and keys status; changes nothing.
    Auditor,
}

impl OperatorRole {
    fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Admin => "admin",
            OperatorRole::Auditor => "auditor",
        }
    }
}

/// Who a certificate speaks for, from its `kura://` URI subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A cluster member: `kura://node/<id>`.
    Node { id: u64 },
    /// A named operator: `kura://operator/<role>/<name>`.
    Operator { name: String, role: OperatorRole },
}

const URI_PREFIX: &str = "kura://";

impl Identity {
    /// The URI that names this identity in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node { id } => format!("{URI_PREFIX}node/{id}"),
            Identity::Operator { name, role } => {
                format!("{URI_PREFIX}operator/{}/{name}", role.as_str())
            }
        }
    }

    /// Parses a `kura://` URI; anything else is `None`.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let mut parts = rest.split('/');
        let id = match (parts.next()?, parts.next(), parts.next()) {
            ("node", Some(id), None) if !id.starts_with('+') => Identity::Node {
                id: id.parse().ok()?,
            },
            ("operator", Some(role), Some(name)) if !name.is_empty() => Identity::Operator {
                name: name.to_owned(),
                role: match role {
                    "admin" => OperatorRole::Admin,
                    "auditor" => OperatorRole::Auditor,
                    _ => return None,
                },
            },
            _ => return None,
        };
        parts.next().is_none().then_some(id)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node { id } => write!(f, "node:{id}"),
            Identity::Operator { name, .. } => write!(f, "operator:{name}"),
        }
    }
}

/// The one identity a certificate names; `None` if it names none or several.
pub fn identity_of(der: &CertificateDer<'_>) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
        _ => None,
    });
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Identity::from_uri(first)
}

/// What `kura certs list` and the expiry gauge need of a certificate.
pub struct CertInfo {
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: time::OffsetDateTime,
    pub is_ca: bool,
}

/// Parses a certificate's subject, names and expiry.
pub fn describe(der: &CertificateDer<'_>) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = match cert.subject_alternative_name().ok()? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::URI(u) => u.to_string(),
                GeneralName::IPAddress(b) => ip_text(b),
                other => other.to_string(),
            })
            .collect(),
        None => Vec::new(),
    };
    Some(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_after: time::OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .ok()?,
        is_ca: cert.is_ca(),
    })
}

fn ip_text(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).expect("4 bytes")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")).to_string(),
        _ => hex::encode(b),
    }
}

/// The files a node's TLS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA: trusted for peers' certificates and for the servers a node calls.
    pub ca_file: PathBuf,
    /// This node's certificate (chain), served on every plane and shown to peers.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// One loaded generation of a node's TLS configurations.
struct Material {
    api: Arc<rustls::ServerConfig>,
    peer: Arc<rustls::ServerConfig>,
    admin: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    not_after_unix_s: i64,
}

/// Keys of [`TlsFiles`] as the config names them, for errors.
const CA_KEY: &str = "tls.ca_file";
const CERT_KEY: &str = "tls.cert_file";
const KEY_KEY: &str = "tls.key_file";

/// A time source for rustls: the system's (`None`) or a simulation's.
pub type Time = Option<Arc<dyn rustls::time_provider::TimeProvider>>;

/// A node's TLS material, parsed.
pub struct Pem {
    pub roots: rustls::RootCertStore,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A file a setting names (`tls.cert_file`, ...) could not be used.
    #[error("{key}: {detail}")]
    File { key: &'static str, detail: String },
    /// The PEM text does not hold what it should.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(String),
}

impl From<TlsSetupError> for String {
    fn from(e: TlsSetupError) -> String {
        e.to_string()
    }
}

impl Pem {
    fn load(files: &TlsFiles) -> Result<Pem, TlsSetupError> {
        let named = |key: &'static str, e: kura_sdk::tls::TlsError| TlsSetupError::File {
            key,
            detail: e.0,
        };
        Ok(Pem {
            roots: roots_from_file(&files.ca_file).map_err(|e| named(CA_KEY, e))?,
            chain: load_certs(&files.cert_file).map_err(|e| named(CERT_KEY, e))?,
            key: load_key(&files.key_file).map_err(|e| named(KEY_KEY, e))?,
        })
    }

    /// From PEM text (the simulation's certificates, made in memory).
    pub fn from_text(ca: &str, cert: &str, key: &str) -> Result<Pem, TlsSetupError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in
            kura_sdk::tls::load_certs_pem(ca.as_bytes()).map_err(|e| TlsSetupError::Pem(e.0))?
        {
            roots
                .add(c)
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
        }
        Ok(Pem {
            roots,
            chain: kura_sdk::tls::load_certs_pem(cert.as_bytes())
                .map_err(|e| TlsSetupError::Pem(e.0))?,
            key: rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|_| TlsSetupError::Pem("no PEM private key".into()))?,
        })
    }
}

/// A TLS 1.3 server configuration builder with kura's provider and `time`.
fn server_builder(
    time: &Time,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsSetupError> {
    let b = match time {
        Some(t) => rustls::ServerConfig::builder_with_details(provider(), t.clone()),
        None => rustls::ServerConfig::builder_with_provider(provider()),
    };
    b.with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))
}

impl Material {
    fn build(pem: Pem, admin_token_allowed: bool, time: &Time) -> Result<Material, TlsSetupError> {
        let Pem { roots, chain, key } = pem;
        let roots = Arc::new(roots);
        let not_after_unix_s = describe(&chain[0])
            .ok_or_else(|| TlsSetupError::File {
                key: CERT_KEY,
                detail: "the certificate cannot be parsed".into(),
            })?
            .not_after
            .unix_timestamp();
        let mismatch = |e: rustls::Error| {
            TlsSetupError::Rustls(format!(
                "{CERT_KEY} and {KEY_KEY} do not belong together: {e}"
            ))
        };
        let mutual = |optional: bool| -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            }
            .build()
            .map_err(|e| TlsSetupError::File {
                key: CA_KEY,
                detail: format!("cannot verify clients with it: {e}"),
            })?;
            let config = server_builder(time)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(mismatch)?;
            Ok(Arc::new(config))
        };
        // The client API asks for a certificate but does not need one: merchants send
        // none; a node forwarding a request sends its own, which vouches for the
        // client address it names.
        let api = mutual(true)?;
        let peer = mutual(false)?;
        // With a break-glass token configured, the admin plane also takes connections
        // without a certificate (the token then authenticates each request).
        let admin = mutual(admin_token_allowed)?;
        let client =
            kura_sdk::tls::client_config_at((*roots).clone(), Some((chain, key)), time.clone())
                .map_err(|e| TlsSetupError::Pem(e.0))?;
        Ok(Material {
            api,
            peer,
            admin,
            client: Arc::new(client),
            not_after_unix_s,
        })
    }
}

/// A TLS 1.3 server configuration with the certificate and key in these files and no
/// client certificates (the acquirer simulator's).
pub fn server_only(
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let chain = load_certs(cert_file).map_err(|e| TlsSetupError::Pem(e.0))?;
    let key = load_key(key_file).map_err(|e| TlsSetupError::Pem(e.0))?;
    server_only_with(chain, key, &None).map_err(|e| {
        TlsSetupError::Rustls(format!(
            "{} and {}: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })
}

/// A TLS 1.3 server configuration with `chain` and `key`, no client certificates.
pub fn server_only_with(
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    time: &Time,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    server_builder(time)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsSetupError::Rustls(format!(
                "the certificate and key do not belong together: {e}"
            ))
        })
}

/// A server configuration that is replaced when its files change.
pub type SharedServerConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// A node's TLS: the configuration of each plane and of its outbound links, reloaded
/// from the files when they change (new connections use the new material; a file that
/// fails to load leaves the old material in use).
pub struct NodeTls {
    /// Where the material comes from; `None` for material made in memory (never reloaded).
    files: Option<TlsFiles>,
    admin_token_allowed: bool,
    /// The client API: server certificate only.
    pub api: SharedServerConfig,
    /// The peer plane: mutual TLS with the cluster CA.
    pub peer: SharedServerConfig,
    /// The admin plane: operators' certificates from the cluster CA (and none needed
    /// when a break-glass token is configured).
    pub admin: SharedServerConfig,
    /// Outbound: to peers and to the leader when forwarding (trusts the cluster CA,
    /// presents the node certificate).
    pub client: SharedClientConfig,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
    not_after_unix_s: AtomicI64,
}

impl NodeTls {
    /// Loads every file; the error is one sentence naming the config key. With
    /// `admin_token_allowed`, the admin plane accepts connections without a certificate.
    pub fn load(files: TlsFiles, admin_token_allowed: bool) -> Result<NodeTls, TlsSetupError> {
        let stamp = stamps(&files);
        let m = Material::build(Pem::load(&files)?, admin_token_allowed, &None)?;
        Ok(NodeTls::with(Some(files), m, admin_token_allowed, stamp))
    }

    /// From material made in memory, judging validity by `time` (the simulation's).
    pub fn from_pem(
        pem: Pem,
        admin_token_allowed: bool,
        time: Time,
    ) -> Result<NodeTls, TlsSetupError> {
        let m = Material::build(pem, admin_token_allowed, &time)?;
        Ok(NodeTls::with(None, m, admin_token_allowed, Vec::new()))
    }

    fn with(
        files: Option<TlsFiles>,
        m: Material,
        admin_token_allowed: bool,
        stamp: Vec<Option<(SystemTime, u64)>>,
    ) -> NodeTls {
        NodeTls {
            files,
            admin_token_allowed,
            api: Arc::new(RwLock::new(m.api)),
            peer: Arc::new(RwLock::new(m.peer)),
            admin: Arc::new(RwLock::new(m.admin)),
            client: Arc::new(RwLock::new(m.client)),
            stamp: Mutex::new(stamp),
            not_after_unix_s: AtomicI64::new(m.not_after_unix_s),
        }
    }

    /// When the node certificate in use expires (Unix seconds).
    pub fn not_after_unix_s(&self) -> i64 {
        self.not_after_unix_s.load(Ordering::Relaxed)
    }

    /// Reloads the material if any file changed since it was last read: `Ok(true)` when
    /// new material is in use, `Err` (old material kept) when the new files fail.
    pub fn reload_if_changed(&self) -> Result<bool, TlsSetupError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let now = stamps(files);
        {
            let mut seen = self.stamp.lock().expect("tls stamp lock");
            if *seen == now {
                return Ok(false);
            }
            // Judge each change once: a broken file is reported once, not every poll.
            *seen = now;
        }
        let m = Material::build(Pem::load(files)?, self.admin_token_allowed, &None)?;
        *self.api.write().expect("tls lock") = m.api;
        *self.peer.write().expect("tls lock") = m.peer;
        *self.admin.write().expect("tls lock") = m.admin;
        *self.client.write().expect("tls lock") = m.client;
        self.not_after_unix_s
            .store(m.not_after_unix_s, Ordering::Relaxed);
        Ok(true)
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.ca_file, &files.cert_file, &files.key_file]
        .iter()
        .map(|p| stamp(p))
        .collect()
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a CA and node 1's certificate under `dir`; returns the files.
    fn files_in(dir: &Path) -> TlsFiles {
        use crate::certs::{new_ca, new_leaf, write, Algorithm};
        let now = time::OffsetDateTime::now_utc();
        let ca = new_ca("test CA", Algorithm::Ed25519, now, 10).unwrap();
        let leaf = new_leaf(
            &ca.cert_pem,
            &ca.key_pem,
            Some(&Identity::Node { id: 1 }),
            &["127.0.0.1".to_owned()],
            Algorithm::Ed25519,
            now,
            10,
        )
        .unwrap();
        let (ca_file, _) = write(dir, "ca", &ca).unwrap();
        let (cert_file, key_file) = write(dir, "node", &leaf).unwrap();
        TlsFiles {
            ca_file,
            cert_file,
            key_file,
        }
    }

    #[test]
    fn unusable_tls_files_refuse_to_load_in_one_sentence_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = files_in(dir.path());
        assert!(NodeTls::load(good.clone(), false).is_ok());
        let missing = TlsFiles {
            key_file: dir.path().join("absent.key"),
            ..good.clone()
        };
        let wrong_key = TlsFiles {
            key_file: files_in(&dir.path().join("other")).key_file,
            ..good.clone()
        };
        let not_a_ca = TlsFiles {
            ca_file: good.key_file.clone(),
            ..good.clone()
        };
        for (files, key) in [
            (missing, "tls.key_file"),
            (wrong_key, "tls.key_file"),
            (not_a_ca, "tls.ca_file"),
        ] {
            let e = NodeTls::load(files, false)
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(key) && !e.contains('\n'), "{e}");
            assert!(!e.contains("PRIVATE KEY"), "no key material in {e}");
        }
    }

    #[test]
    fn a_reload_keeps_the_old_material_when_the_new_files_fail() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        let tls = NodeTls::load(files.clone(), false).unwrap();
        let before = tls.not_after_unix_s();
        assert_eq!(tls.reload_if_changed().ok(), Some(false), "nothing changed");
        std::fs::write(&files.cert_file, "not a certificate").unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert_eq!(tls.not_after_unix_s(), before);
        assert_eq!(
            tls.reload_if_changed().ok(),
            Some(false),
            "a broken file is judged once"
        );
    }

    #[test]
    fn identities_round_trip_through_their_uri_and_nothing_else_parses() {
        for id in [
            Identity::Node { id: 3 },
            Identity::Operator {
                name: "alice".into(),
                role: OperatorRole::Auditor,
            },
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for bad in [
            "kura://node/",
            "kura://node/+3",
            "kura://node/3/4",
            "kura://node/x",
            "kura://operator/root/alice",
            "kura://operator/admin/",
            "kura://operator/admin/alice/x",
            "https://node/3",
            "kura://merchant/shop",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }
}
