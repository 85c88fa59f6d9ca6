//! The key-encryption key, data keys, and the ring that caches unwrapped data keys.

use super::{Entropy, NONCE_BYTES};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

const KEY_BYTES: usize = 32;
const FINGERPRINT_KEY_AAD: &str = "kura:fpk:v1";

/// Why a key could not be loaded or used. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read the key-encryption key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the key-encryption key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key-encryption key file {path} must hold exactly 64 hex characters (32 bytes)")]
    Format { path: PathBuf },
    #[error("ciphertext or wrapped key failed authentication (wrong key, or corrupted data)")]
    Corrupt,
    #[error("data key version {0} is not in the replicated state")]
    UnknownVersion(u32),
    #[error("the key-encryption key provider is unavailable: {0}")]
    Unavailable(String),
    #[error("the key-encryption key {0} is not held by this node (add its file to kek_previous_files until `kura keys rotate-kek` is done)")]
    UnknownKek(String),
}

/// A 256-bit data key that seals PANs. Wiped from memory on drop; never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_BYTES]>);

impl DataKey {
    /// A fresh random data key.
    pub fn generate(entropy: &Entropy) -> DataKey {
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        entropy.fill(k.as_mut());
        DataKey(k)
    }

    fn from_plain(plain: &[u8]) -> Result<DataKey, KeyError> {
        if plain.len() != KEY_BYTES {
            return Err(KeyError::Corrupt);
        }
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        k.copy_from_slice(plain);
        Ok(DataKey(k))
    }

    pub(super) fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    pub(super) fn as_aes_key(&self) -> &Key<Aes256Gcm> {
        Key::<Aes256Gcm>::from_slice(self.0.as_ref())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

/// The key-encryption key: wraps and unwraps data keys. Never leaves this process.
pub struct Kek(Zeroizing<[u8; KEY_BYTES]>);

/// The associated data a data key is wrapped with: bound to its version and, since
/// KEKs rotate, to the KEK that wrapped it (keys wrapped before KEK ids existed carry
/// none).
fn dek_aad(version: u32, kek_id: Option<&str>) -> String {
    match kek_id {
        None => format!("kura:dek:v{version}"),
        Some(id) => format!("kura:dek:v{version}|{id}"),
    }
}

fn fingerprint_aad(kek_id: Option<&str>) -> String {
    match kek_id {
        None => FINGERPRINT_KEY_AAD.to_owned(),
        Some(id) => format!("{FINGERPRINT_KEY_AAD}|{id}"),
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(redacted)")
    }
}

impl Kek {
    /// Reads a KEK file holding 64 hex characters (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Kek, KeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                    path: path.into(),
                    source,
                })?,
            );
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        hex::decode_to_slice(text.trim(), k.as_mut())
            .map_err(|_| KeyError::Format { path: path.into() })?;
        Ok(Kek(k))
    }

    /// Writes a new random KEK to `path` with owner-only permissions, unless the file exists.
    pub fn create_file_if_missing(path: &Path, entropy: &Entropy) -> Result<(), KeyError> {
        if path.exists() {
            return Ok(());
        }
        let k = Zeroizing::new(entropy.bytes::<KEY_BYTES>());
        let text = Zeroizing::new(hex::encode(k.as_ref()) + "\n");
        write_private(path, text.as_bytes()).map_err(|source| KeyError::Write {
            path: path.into(),
            source,
        })
    }

    /// A KEK from raw bytes (tests and simulations).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Kek {
        Kek(Zeroizing::new(bytes))
    }

    /// The KEK's public id: `kek_` and the first 8 bytes of HMAC-SHA256(kek,
    /// "kura:kek-id:v1") in hex, a key check value that names the key without revealing
    /// anything about it.
    pub fn id(&self) -> String {
        use hmac::{Hmac, Mac};
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.as_ref()).expect("any key length");
        mac.update(b"kura:kek-id:v1");
        format!("kek_{}", hex::encode(&mac.finalize().into_bytes()[..8]))
    }

    /// HMAC-SHA256 of `msg` under a key derived from this KEK for the audit trail
    /// (HMAC-SHA256(kek, "kura:audit-mac-key:v1")), so the KEK itself signs nothing.
    pub fn audit_mac(&self, msg: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        type H = Hmac<sha2::Sha256>;
        let mut derive = <H as Mac>::new_from_slice(self.0.as_ref()).expect("any key length");
        derive.update(b"kura:audit-mac-key:v1");
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(derive.finalize().into_bytes().into());
        let mut mac = <H as Mac>::new_from_slice(key.as_ref()).expect("any key length");
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.as_ref()))
    }

    /// Seals a short secret for another node of this cluster (all members share the KEK):
    /// `nonce || AES-256-GCM(kek, msg)` bound to `aad`.
    pub fn seal(&self, msg: &[u8], aad: &str, entropy: &Entropy) -> Vec<u8> {
        let nonce = entropy.nonce();
        let mut out = nonce.to_vec();
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`Kek::seal`] sealed with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.len() <= NONCE_BYTES {
            return Err(KeyError::Corrupt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Corrupt)
    }
}

/// Where the key-encryption key lives. The KEK never leaves its provider: kura hands it
/// data keys to wrap and wrapped keys to unwrap. [`Kek`] (a key file) is the simplest;
/// [`KekSet`] adds the previous KEKs a rotation still needs; a PKCS#11 HSM provider
/// implements the same operations.
pub trait KekProvider: Send + Sync + fmt::Debug {
    /// A short name for status output, e.g. `file`.
    fn kind(&self) -> &'static str;

    /// The id of the current KEK (new keys are wrapped under it).
    fn id(&self) -> String;

    /// Every KEK this provider holds, the current one first.
    fn ids(&self) -> Vec<String> {
        vec![self.id()]
    }

    /// Encrypts and authenticates `msg` under the current KEK, bound to `aad`.
    fn seal(&self, msg: &[u8], aad: &str, entropy: &Entropy) -> Result<Vec<u8>, KeyError>;

    /// Opens what [`KekProvider::seal`] sealed with the same `aad`.
    fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError>;

    /// Opens what the KEK `kek_id` sealed (the current one or a previous one).
    fn open_with(
        &self,
        kek_id: &str,
        sealed: &[u8],
        aad: &str,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if kek_id == self.id() {
            self.open(sealed, aad)
        } else {
            Err(KeyError::UnknownKek(kek_id.to_owned()))
        }
    }

    /// HMAC-SHA256 of `msg` under a MAC key the KEK `kek_id` holds (the audit trail's
    /// signing key: it never leaves the provider, and never enters the log).
    fn mac(&self, kek_id: &str, msg: &[u8]) -> Result<[u8; 32], KeyError> {
        let _ = (kek_id, msg);
        Err(KeyError::Unavailable(format!(
            "the {} provider cannot sign",
            self.kind()
        )))
    }

    /// Wraps a data key under the current KEK, bound to its version and the KEK's id;
    /// returns the id with the wrapped bytes.
    fn wrap(
        &self,
        key: &DataKey,
        version: u32,
        entropy: &Entropy,
    ) -> Result<(String, Vec<u8>), KeyError> {
        let id = self.id();
        let wrapped = self.seal(key.bytes(), &dek_aad(version, Some(&id)), entropy)?;
        Ok((id, wrapped))
    }

    /// Unwraps a data key wrapped for `version` under KEK `kek_id` (`None`: wrapped
    /// before KEK ids existed, by the current KEK).
    fn unwrap_key(
        &self,
        wrapped: &[u8],
        version: u32,
        kek_id: Option<&str>,
    ) -> Result<DataKey, KeyError> {
        let aad = dek_aad(version, kek_id);
        let plain = match kek_id {
            Some(id) => self.open_with(id, wrapped, &aad)?,
            None => self.open(wrapped, &aad)?,
        };
        DataKey::from_plain(&plain)
    }

    /// Wraps the card fingerprint key (a different binding than any data key).
    fn wrap_fingerprint_key(
        &self,
        key: &DataKey,
        entropy: &Entropy,
    ) -> Result<(String, Vec<u8>), KeyError> {
        let id = self.id();
        let wrapped = self.seal(key.bytes(), &fingerprint_aad(Some(&id)), entropy)?;
        Ok((id, wrapped))
    }

    /// Unwraps the card fingerprint key.
    fn unwrap_fingerprint_key(
        &self,
        wrapped: &[u8],
        kek_id: Option<&str>,
    ) -> Result<DataKey, KeyError> {
        let aad = fingerprint_aad(kek_id);
        let plain = match kek_id {
            Some(id) => self.open_with(id, wrapped, &aad)?,
            None => self.open(wrapped, &aad)?,
        };
        DataKey::from_plain(&plain)
    }
}

impl KekProvider for Kek {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn id(&self) -> String {
        Kek::id(self)
    }

    fn seal(&self, msg: &[u8], aad: &str, entropy: &Entropy) -> Result<Vec<u8>, KeyError> {
        Ok(Kek::seal(self, msg, aad, entropy))
    }

    fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        Kek::open(self, sealed, aad)
    }

    fn mac(&self, kek_id: &str, msg: &[u8]) -> Result<[u8; 32], KeyError> {
        if kek_id == Kek::id(self) {
            Ok(self.audit_mac(msg))
        } else {
            Err(KeyError::UnknownKek(kek_id.to_owned()))
        }
    }
}

/// The current KEK and the previous ones a KEK rotation still needs to unwrap keys
/// (`kek_file` and `kek_previous_files`): new keys are wrapped under the current one
/// only.
#[derive(Debug)]
pub struct KekSet {
    current: Kek,
    current_id: String,
    previous: Vec<(String, Kek)>,
}

impl KekSet {
    /// `current` and the `previous` KEKs (their order does not matter).
    pub fn new(current: Kek, previous: Vec<Kek>) -> KekSet {
        KekSet {
            current_id: current.id(),
            current,
            previous: previous.into_iter().map(|k| (k.id(), k)).collect(),
        }
    }
}

impl KekSet {
    /// The KEK with id `kek_id`, current or previous.
    fn by_id(&self, kek_id: &str) -> Result<&Kek, KeyError> {
        if kek_id == self.current_id {
            return Ok(&self.current);
        }
        self.previous
            .iter()
            .find(|(id, _)| id == kek_id)
            .map(|(_, k)| k)
            .ok_or_else(|| KeyError::UnknownKek(kek_id.to_owned()))
    }
}

impl KekProvider for KekSet {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn id(&self) -> String {
        self.current_id.clone()
    }

    fn ids(&self) -> Vec<String> {
        std::iter::once(self.current_id.clone())
            .chain(self.previous.iter().map(|(id, _)| id.clone()))
            .collect()
    }

    fn seal(&self, msg: &[u8], aad: &str, entropy: &Entropy) -> Result<Vec<u8>, KeyError> {
        Ok(self.current.seal(msg, aad, entropy))
    }

    fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.current.open(sealed, aad)
    }

    fn open_with(
        &self,
        kek_id: &str,
        sealed: &[u8],
        aad: &str,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.by_id(kek_id)?.open(sealed, aad)
    }

    fn mac(&self, kek_id: &str, msg: &[u8]) -> Result<[u8; 32], KeyError> {
        Ok(self.by_id(kek_id)?.audit_mac(msg))
    }
}

/// Writes `bytes` to a new file readable only by its owner, then syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The KEK provider and a cache of unwrapped data keys by version.
#[derive(Debug)]
pub struct KeyRing {
    kek: std::sync::Arc<dyn KekProvider>,
    cache: Mutex<HashMap<u32, DataKey>>,
    fingerprint: Mutex<Option<DataKey>>,
    /// A probe value sealed once per boot (and per KEK): each health probe only opens
    /// it, so probing draws no nonce under the KEK.
    probe: Mutex<Option<(String, Vec<u8>)>>,
}

impl KeyRing {
    /// A ring around `kek` with an empty cache.
    pub fn new(kek: std::sync::Arc<dyn KekProvider>) -> KeyRing {
        KeyRing {
            kek,
            cache: Mutex::new(HashMap::new()),
            fingerprint: Mutex::new(None),
            probe: Mutex::new(None),
        }
    }

    /// The KEK provider, to wrap new data keys.
    pub fn kek(&self) -> &dyn KekProvider {
        self.kek.as_ref()
    }

    /// Opens a probe through the KEK provider: the health check. The probe is sealed
    /// once (again only after the KEK changed or sealing failed), so a probe every
    /// 250 ms exercises the provider without drawing a nonce under the KEK each time.
    pub fn probe(&self, entropy: &Entropy) -> Result<(), KeyError> {
        const AAD: &str = "kura:probe:v1";
        let mut slot = self.probe.lock().expect("key ring lock");
        let id = self.kek.id();
        if slot.as_ref().is_none_or(|(for_id, _)| *for_id != id) {
            *slot = Some((id.clone(), self.kek.seal(b"probe", AAD, entropy)?));
        }
        let (_, sealed) = slot.as_ref().expect("sealed above");
        let opened = self.kek.open(sealed, AAD)?;
        if opened.as_slice() == b"probe" {
            Ok(())
        } else {
            Err(KeyError::Corrupt)
        }
    }

    /// Drops cached keys unwrapped under a KEK (after a KEK rotation re-wrapped them;
    /// they unwrap again from the new wrapping on next use).
    pub fn forget_all(&self) {
        self.cache.lock().expect("key ring lock").clear();
        *self.fingerprint.lock().expect("key ring lock") = None;
    }

    /// Forgets a retired data key (its bytes are zeroized as the last copy drops).
    pub fn forget(&self, version: u32) {
        self.cache.lock().expect("key ring lock").remove(&version);
    }

    /// The fingerprint key, unwrapping `wrapped` (under KEK `kek_id`) on first use.
    pub fn fingerprint_key(
        &self,
        wrapped: &[u8],
        kek_id: Option<&str>,
    ) -> Result<DataKey, KeyError> {
        let mut slot = self.fingerprint.lock().expect("key ring lock");
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let k = self.kek.unwrap_fingerprint_key(wrapped, kek_id)?;
        *slot = Some(k.clone());
        Ok(k)
    }

    /// The data key of `version`, unwrapping `wrapped` (under KEK `kek_id`) on first
    /// use.
    pub fn data_key(
        &self,
        version: u32,
        wrapped: &[u8],
        kek_id: Option<&str>,
    ) -> Result<DataKey, KeyError> {
        let mut cache = self.cache.lock().expect("key ring lock");
        if let Some(k) = cache.get(&version) {
            return Ok(k.clone());
        }
        let k = self.kek.unwrap_key(wrapped, version, kek_id)?;
        cache.insert(version, k.clone());
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_unwraps_only_with_the_same_kek_and_version() {
        let e = Entropy::seeded(1);
        let kek = Kek::from_bytes(e.bytes());
        let dek = DataKey::generate(&e);
        let (id, wrapped) = kek.wrap(&dek, 3, &e).unwrap();
        assert_eq!(id, kek.id());
        let back = kek.unwrap_key(&wrapped, 3, Some(&id)).unwrap();
        assert_eq!(back.0.as_ref(), dek.0.as_ref());
        assert!(kek.unwrap_key(&wrapped, 4, Some(&id)).is_err());
        assert!(Kek::from_bytes(e.bytes())
            .unwrap_key(&wrapped, 3, Some(&id))
            .is_err());
        assert!(kek.unwrap_key(&wrapped[..10], 3, Some(&id)).is_err());
        // The KEK's id is bound: the same bytes claimed under no id (or another) fail.
        assert!(kek.unwrap_key(&wrapped, 3, None).is_err());
    }

    #[test]
    fn a_kek_set_wraps_under_the_current_kek_and_unwraps_under_any_it_holds() {
        let e = Entropy::seeded(9);
        let (old_bytes, new_bytes) = (e.bytes(), e.bytes());
        let old = Kek::from_bytes(old_bytes);
        let dek = DataKey::generate(&e);
        let (old_id, under_old) = old.wrap(&dek, 1, &e).unwrap();
        // A key wrapped before KEK ids existed.
        let legacy = old.seal(dek.bytes(), "kura:dek:v1", &e);
        let set = KekSet::new(Kek::from_bytes(new_bytes), vec![Kek::from_bytes(old_bytes)]);
        assert_ne!(set.id(), old_id);
        assert_eq!(set.ids(), vec![set.id(), old_id.clone()]);
        let back = set.unwrap_key(&under_old, 1, Some(&old_id)).unwrap();
        assert_eq!(back.bytes(), dek.bytes());
        let (new_id, under_new) = set.wrap(&dek, 1, &e).unwrap();
        assert_eq!(new_id, set.id());
        assert!(set.unwrap_key(&under_new, 1, Some(&new_id)).is_ok());
        // Without the old KEK, keys under it are reported by id, not as corrupt.
        let alone = Kek::from_bytes(new_bytes);
        assert!(matches!(
            alone.unwrap_key(&under_old, 1, Some(&old_id)),
            Err(KeyError::UnknownKek(id)) if id == old_id
        ));
        assert!(old.unwrap_key(&legacy, 1, None).is_ok());
    }

    #[test]
    fn probes_seal_once_and_then_only_open() {
        #[derive(Debug)]
        struct Counting(Kek, std::sync::atomic::AtomicU32);
        impl KekProvider for Counting {
            fn kind(&self) -> &'static str {
                "counting"
            }
            fn id(&self) -> String {
                self.0.id()
            }
            fn seal(&self, m: &[u8], aad: &str, e: &Entropy) -> Result<Vec<u8>, KeyError> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(self.0.seal(m, aad, e))
            }
            fn open(&self, s: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
                self.0.open(s, aad)
            }
        }
        let e = Entropy::seeded(4);
        let kek = std::sync::Arc::new(Counting(Kek::from_bytes(e.bytes()), 0.into()));
        let ring = KeyRing::new(kek.clone());
        for _ in 0..100 {
            ring.probe(&e).unwrap();
        }
        assert_eq!(kek.1.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn kek_file_is_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        let e = Entropy::seeded(2);
        Kek::create_file_if_missing(&path, &e).unwrap();
        let first = std::fs::read(&path).unwrap();
        Kek::create_file_if_missing(&path, &e).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            first,
            "an existing KEK is never replaced"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let kek = Kek::from_file(&path).unwrap();
        let dek = DataKey::generate(&e);
        let (id, wrapped) = kek.wrap(&dek, 1, &e).unwrap();
        assert!(kek.unwrap_key(&wrapped, 1, Some(&id)).is_ok());
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        let err = Kek::from_file(&dir.path().join("bad"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex characters"), "{err}");
    }

    #[test]
    fn debug_output_redacts_key_material() {
        let e = Entropy::seeded(3);
        let shown = format!(
            "{:?} {:?}",
            Kek::from_bytes(e.bytes()),
            DataKey::generate(&e)
        );
        assert_eq!(shown, "Kek(redacted) DataKey(redacted)");
    }
}
