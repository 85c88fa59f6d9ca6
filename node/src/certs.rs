//! `kura certs`: the cluster's certificate authority, node certificates and named
//! operators' client certificates (rcgen). Keys are written 0600 and no file is ever
//! overwritten; the CA key belongs outside every node's directory.

use crate::net::tls::{self, Identity, OperatorRole};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use std::path::{Path, PathBuf};
use time::Duration;
pub use time::OffsetDateTime;

/// The signature algorithm of new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256: what browsers accept on the client API.
    P256,
    /// Ed25519: small and fixed-size signatures (the simulation's certificates).
    Ed25519,
}

impl Algorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Algorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// Where a new key comes from.
#[derive(Debug, Clone, Copy)]
pub enum NewKey {
    /// Drawn from the operating system's randomness.
    Random(Algorithm),
    /// An Ed25519 key derived from a seed: the simulation's certificates are the same
    /// bytes for the same run seed.
    Ed25519Seed([u8; 32]),
}

/// Why a certificate could not be made, written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused the key or the certificate.
    #[error("{0}")]
    Make(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists; kura certs never overwrites", .0.display())]
    Exists(PathBuf),
    #[error("{} holds a certificate kura cannot parse", .0.display())]
    Unparsable(PathBuf),
    #[error("operator name {0:?} must be 1-64 letters, digits, '-', '_' or '.'")]
    OperatorName(String),
    #[error(transparent)]
    Dir(#[from] crate::files::FileError),
}

fn made<E: std::fmt::Display>(e: E) -> CertError {
    CertError::Make(e.to_string())
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.to_owned();
    move |source| CertError::Io {
        action,
        path,
        source,
    }
}

impl From<Algorithm> for NewKey {
    fn from(a: Algorithm) -> NewKey {
        NewKey::Random(a)
    }
}

impl NewKey {
    fn make(self) -> Result<KeyPair, CertError> {
        match self {
            NewKey::Random(alg) => KeyPair::generate_for(alg.rcgen()).map_err(made),
            NewKey::Ed25519Seed(seed) => {
                // PKCS#8 v1 of an Ed25519 private key: a fixed prefix, then the seed.
                let mut der = hex::decode("302e020100300506032b657004220420").expect("hex");
                der.extend_from_slice(&seed);
                KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &rcgen::PKCS_ED25519)
                    .map_err(made)
            }
        }
    }
}

/// Days a new CA certificate is valid.
pub const CA_DAYS_DEFAULT: i64 = 3650;
/// Days a new node or operator certificate is valid.
pub const LEAF_DAYS_DEFAULT: i64 = 365;

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: i64) {
    // An hour back, so a peer whose clock is a little behind accepts it at once.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kura");
    dn.push(DnType::CommonName, cn);
    dn
}

fn uri(s: &str) -> Result<SanType, CertError> {
    Ok(SanType::URI(
        s.try_into()
            .map_err(|e| CertError::Make(format!("{s:?}: {e}")))?,
    ))
}

/// A new self-signed CA.
pub fn new_ca(
    cn: &str,
    key: impl Into<NewKey>,
    now: OffsetDateTime,
    days: i64,
) -> Result<Issued, CertError> {
    let key = key.into().make()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, days);
    let cert = params.self_signed(&key).map_err(made)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A leaf certificate for `identity` signed by the CA (`ca_cert_pem`, `ca_key_pem`).
/// Node certificates carry `hosts` (DNS names or IP addresses) and serve every plane;
/// operator certificates are client certificates only; without an identity, a plain
/// server certificate for `hosts` (an acquirer simulator's).
pub fn new_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    identity: Option<&Identity>,
    hosts: &[String],
    key: impl Into<NewKey>,
    now: OffsetDateTime,
    days: i64,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|_| CertError::Make("the CA key is not a PEM key".into()))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| CertError::Make(format!("the CA certificate cannot sign: {e}")))?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| CertError::Make(format!("bad host name: {e}")))?;
    if let Some(id) = identity {
        params.subject_alt_names.push(uri(&id.uri())?);
    }
    let cn = identity.map_or_else(
        || hosts.first().cloned().unwrap_or_default(),
        |i| i.to_string(),
    );
    params.distinguished_name = name(&cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        Some(Identity::Node { .. }) => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Some(Identity::Operator { .. }) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        None => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, days);
    let key = key.into().make()?;
    let cert = params.signed_by(&key, &issuer).map_err(made)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `cert` and its key as `<dir>/<stem>.crt` and `<dir>/<stem>.key` (0600),
/// creating `dir` (0700); refuses if either file exists.
pub fn write(dir: &Path, stem: &str, issued: &Issued) -> Result<(PathBuf, PathBuf), CertError> {
    crate::files::create_private_dir(dir)?;
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    for p in [&crt, &key] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    for (p, text) in [(&key, &issued.key_pem), (&crt, &issued.cert_pem)] {
        crate::crypto::write_private(p, text.as_bytes()).map_err(io("write", p))?;
    }
    Ok((crt, key))
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(io("read", path))
}

/// Reads the CA's certificate and key from `ca_dir` (`ca.crt`, `ca.key`).
pub fn read_ca(ca_dir: &Path) -> Result<(String, String), CertError> {
    Ok((read(&ca_dir.join("ca.crt"))?, read(&ca_dir.join("ca.key"))?))
}

/// One certificate as `kura certs list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub file: PathBuf,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

/// Every certificate in the `.crt` files under `dir` (recursively), in path order.
pub fn list(dir: &Path) -> Result<Vec<Listed>, CertError> {
    let mut files = Vec::new();
    collect_crt(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for der in kura_sdk::tls::load_certs(&f).map_err(|_| CertError::Unparsable(f.clone()))? {
            let info = tls::describe(&der).ok_or_else(|| CertError::Unparsable(f.clone()))?;
            out.push(Listed {
                file: f.clone(),
                subject: info.subject,
                sans: info.sans,
                not_after: info.not_after,
                is_ca: info.is_ca,
            });
        }
    }
    Ok(out)
}

fn collect_crt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CertError> {
    let entries = std::fs::read_dir(dir).map_err(io("read", dir))?;
    for e in entries {
        let path = e.map_err(io("read", dir))?.path();
        if path.is_dir() {
            collect_crt(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "crt") {
            out.push(path);
        }
    }
    Ok(())
}

/// An operator identity from the command line.
pub fn operator(name: &str, role: OperatorRole) -> Result<Identity, CertError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(CertError::OperatorName(name.to_owned()));
    }
    Ok(Identity::Operator {
        name: name.to_owned(),
        role,
    })
}

/// The CLI's outer edge reports errors as one sentence.
impl From<CertError> for String {
    fn from(e: CertError) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn a_node_certificate_carries_its_identity_hosts_and_expiry() {
        let ca = new_ca("kura test CA", Algorithm::Ed25519, now(), 10).unwrap();
        let node = Identity::Node { id: 2 };
        let hosts = vec!["127.0.0.1".to_owned(), "dr.kura.test".to_owned()];
        let leaf = new_leaf(
            &ca.cert_pem,
            &ca.key_pem,
            Some(&node),
            &hosts,
            Algorithm::P256,
            now(),
            30,
        )
        .unwrap();
        let der = kura_sdk::tls::load_certs_pem(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(tls::identity_of(&der[0]), Some(node));
        let info = tls::describe(&der[0]).unwrap();
        assert!(
            info.sans.iter().any(|s| s == "127.0.0.1"),
            "{:?}",
            info.sans
        );
        assert!(info.sans.iter().any(|s| s == "dr.kura.test"));
        assert_eq!(info.not_after, now() + Duration::days(30));
        assert!(!info.is_ca);
        let ca_der = kura_sdk::tls::load_certs_pem(ca.cert_pem.as_bytes()).unwrap();
        assert!(tls::describe(&ca_der[0]).unwrap().is_ca);
        assert_eq!(tls::identity_of(&ca_der[0]), None);
    }

    #[test]
    fn an_operator_certificate_names_the_operator_and_role() {
        let ca = new_ca("kura test CA", Algorithm::P256, now(), 10).unwrap();
        let alice = operator("alice", OperatorRole::Auditor).unwrap();
        let leaf = new_leaf(
            &ca.cert_pem,
            &ca.key_pem,
            Some(&alice),
            &[],
            Algorithm::P256,
            now(),
            30,
        )
        .unwrap();
        let der = kura_sdk::tls::load_certs_pem(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(tls::identity_of(&der[0]), Some(alice));
        assert!(operator("alice/admin", OperatorRole::Admin).is_err());
        assert!(operator("", OperatorRole::Admin).is_err());
    }

    #[test]
    fn seeded_keys_give_the_same_certificate_bytes_every_time() {
        let make = |seed: u8| {
            let ca = new_ca("sim CA", NewKey::Ed25519Seed([seed; 32]), now(), 10).unwrap();
            let leaf = new_leaf(
                &ca.cert_pem,
                &ca.key_pem,
                Some(&Identity::Node { id: 1 }),
                &["main".to_owned()],
                NewKey::Ed25519Seed([seed ^ 0xff; 32]),
                now(),
                10,
            )
            .unwrap();
            (ca.cert_pem, leaf.cert_pem, leaf.key_pem)
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1).1, make(2).1);
    }

    #[test]
    fn files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("kura test CA", Algorithm::Ed25519, now(), 10).unwrap();
        let (crt, key) = write(&dir.path().join("ca"), "ca", &ca).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&crt), 0o600);
        assert_eq!(mode(&dir.path().join("ca")), 0o700);
        let again = new_ca("other", Algorithm::Ed25519, now(), 10).unwrap();
        let e = write(&dir.path().join("ca"), "ca", &again).unwrap_err();
        assert!(matches!(e, CertError::Exists(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), ca.key_pem);
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].is_ca && listed[0].subject.contains("kura test CA"));
    }
}
