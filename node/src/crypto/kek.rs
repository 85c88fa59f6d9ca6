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
/// data keys to wrap and wrapped keys to unwrap. [`Kek`] (a key file) is the default; a
/// PKCS#11 HSM provider implements the same two operations.
pub trait KekProvider: Send + Sync + fmt::Debug {
    /// A short name for status output, e.g. `file`.
    fn kind(&self) -> &'static str;

    /// Encrypts and authenticates `msg`, bound to `aad`.
    fn seal(&self, msg: &[u8], aad: &str, entropy: &Entropy) -> Result<Vec<u8>, KeyError>;

    /// Opens what [`KekProvider::seal`] sealed with the same `aad`.
    fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError>;

    /// Wraps a data key, bound to its version.
    fn wrap(&self, key: &DataKey, version: u32, entropy: &Entropy) -> Result<Vec<u8>, KeyError> {
        self.seal(key.bytes(), &format!("kura:dek:v{version}"), entropy)
    }

    /// Unwraps a data key wrapped by [`KekProvider::wrap`] for the same version.
    fn unwrap_key(&self, wrapped: &[u8], version: u32) -> Result<DataKey, KeyError> {
        DataKey::from_plain(&self.open(wrapped, &format!("kura:dek:v{version}"))?)
    }

    /// Wraps the card fingerprint key (a different binding than any data key).
    fn wrap_fingerprint_key(&self, key: &DataKey, entropy: &Entropy) -> Result<Vec<u8>, KeyError> {
        self.seal(key.bytes(), FINGERPRINT_KEY_AAD, entropy)
    }

    /// Unwraps the card fingerprint key.
    fn unwrap_fingerprint_key(&self, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        DataKey::from_plain(&self.open(wrapped, FINGERPRINT_KEY_AAD)?)
    }
}

impl KekProvider for Kek {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn seal(&self, msg: &[u8], aad: &str, entropy: &Entropy) -> Result<Vec<u8>, KeyError> {
        Ok(Kek::seal(self, msg, aad, entropy))
    }

    fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        Kek::open(self, sealed, aad)
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
}

impl KeyRing {
    /// A ring around `kek` with an empty cache.
    pub fn new(kek: std::sync::Arc<dyn KekProvider>) -> KeyRing {
        KeyRing {
            kek,
            cache: Mutex::new(HashMap::new()),
            fingerprint: Mutex::new(None),
        }
    }

    /// The KEK provider, to wrap new data keys.
    pub fn kek(&self) -> &dyn KekProvider {
        self.kek.as_ref()
    }

    /// Seals and opens a probe through the KEK provider: the health check.
    pub fn probe(&self, entropy: &Entropy) -> Result<(), KeyError> {
        let sealed = self.kek.seal(b"probe", "kura:probe:v1", entropy)?;
        let opened = self.kek.open(&sealed, "kura:probe:v1")?;
        if opened.as_slice() == b"probe" {
            Ok(())
        } else {
            Err(KeyError::Corrupt)
        }
    }

    /// Forgets a retired data key (its bytes are zeroized as the last copy drops).
    pub fn forget(&self, version: u32) {
        self.cache.lock().expect("key ring lock").remove(&version);
    }

    /// The fingerprint key, unwrapping `wrapped` on first use.
    pub fn fingerprint_key(&self, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let mut slot = self.fingerprint.lock().expect("key ring lock");
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let k = self.kek.unwrap_fingerprint_key(wrapped)?;
        *slot = Some(k.clone());
        Ok(k)
    }

    /// The data key of `version`, unwrapping `wrapped` on first use.
    pub fn data_key(&self, version: u32, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let mut cache = self.cache.lock().expect("key ring lock");
        if let Some(k) = cache.get(&version) {
            return Ok(k.clone());
        }
        let k = self.kek.unwrap_key(wrapped, version)?;
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
        let wrapped = kek.wrap(&dek, 3, &e).unwrap();
        let back = kek.unwrap_key(&wrapped, 3).unwrap();
        assert_eq!(back.0.as_ref(), dek.0.as_ref());
        assert!(kek.unwrap_key(&wrapped, 4).is_err());
        assert!(Kek::from_bytes(e.bytes()).unwrap_key(&wrapped, 3).is_err());
        assert!(kek.unwrap_key(&wrapped[..10], 3).is_err());
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
        assert!(kek.unwrap_key(&kek.wrap(&dek, 1, &e).unwrap(), 1).is_ok());
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
