//! Envelope encryption of card numbers.
//!
//! PANs are sealed with AES-256-GCM under a versioned *data key*; data keys are
//! wrapped by the *key-encryption key* (KEK), which is read from a file and never
//! enters the Raft log, a snapshot or a log line. Associated data binds every
//! ciphertext to its merchant, token and key version, so a ciphertext moved to
//! another record fails to open.

mod entropy;
mod kek;

pub use entropy::Entropy;
pub use kek::{write_private, DataKey, Kek, KekProvider, KekSet, KeyError, KeyRing};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

/// Length of an AES-GCM nonce in bytes.
pub const NONCE_BYTES: usize = 12;

fn pan_aad(merchant_id: &str, token: &str, key_version: u32) -> Vec<u8> {
    format!("kura:pan:v1|{merchant_id}|{token}|{key_version}").into_bytes()
}

/// Seals PAN digits for one merchant's token under `key`.
pub fn seal_pan(
    key: &DataKey,
    key_version: u32,
    merchant_id: &str,
    token: &str,
    digits: &str,
    nonce: &[u8; NONCE_BYTES],
) -> Vec<u8> {
    let aad = pan_aad(merchant_id, token, key_version);
    Aes256Gcm::new(key.as_aes_key())
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: digits.as_bytes(),
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of a short message cannot fail")
}

/// Opens a sealed PAN; fails if the key, nonce, ciphertext or any bound field differ.
pub fn open_pan(
    key: &DataKey,
    key_version: u32,
    merchant_id: &str,
    token: &str,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<String>, KeyError> {
    if nonce.len() != NONCE_BYTES {
        return Err(KeyError::Corrupt);
    }
    let aad = pan_aad(merchant_id, token, key_version);
    let plain = Aes256Gcm::new(key.as_aes_key())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| KeyError::Corrupt)?;
    String::from_utf8(plain)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Corrupt)
}

/// The card's fingerprint for one merchant: HMAC-SHA256 under the fingerprint key of
/// merchant id and PAN, hex. Equal for the same card at the same merchant; useless without
/// the key, and different across merchants.
pub fn card_fingerprint(key: &DataKey, merchant_id: &str, digits: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.bytes())
        .expect("HMAC takes any key length");
    mac.update(b"kura:card-fp:v1|");
    mac.update(merchant_id.as_bytes());
    mac.update(b"|");
    mac.update(digits.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// SHA-256 of a high-entropy API secret, hex-encoded: how merchant keys are stored.
pub fn api_key_hash(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equality that takes the same time wherever the inputs differ (for secrets and MACs;
/// only the length may show).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn sealed_pan_opens_only_with_the_same_binding() {
        let e = Entropy::seeded(7);
        let key = DataKey::generate(&e);
        let nonce = e.nonce();
        let ct = seal_pan(&key, 1, "m1", "tok_a", "4242424242424242", &nonce);
        assert!(!ct.windows(16).any(|w| w == b"4242424242424242"));
        let opened = open_pan(&key, 1, "m1", "tok_a", &nonce, &ct).unwrap();
        assert_eq!(opened.as_str(), "4242424242424242");
        assert!(
            open_pan(&key, 1, "m2", "tok_a", &nonce, &ct).is_err(),
            "other merchant"
        );
        assert!(
            open_pan(&key, 1, "m1", "tok_b", &nonce, &ct).is_err(),
            "other token"
        );
        assert!(
            open_pan(&key, 2, "m1", "tok_a", &nonce, &ct).is_err(),
            "other key version"
        );
        let other = DataKey::generate(&e);
        assert!(
            open_pan(&other, 1, "m1", "tok_a", &nonce, &ct).is_err(),
            "other key"
        );
    }

    #[test]
    fn fingerprints_are_keyed_and_merchant_scoped() {
        let e = Entropy::seeded(9);
        let (k1, k2) = (DataKey::generate(&e), DataKey::generate(&e));
        let fp = card_fingerprint(&k1, "m1", "4242424242424242");
        assert_eq!(fp, card_fingerprint(&k1, "m1", "4242424242424242"));
        assert_ne!(
            fp,
            card_fingerprint(&k1, "m2", "4242424242424242"),
            "other merchant"
        );
        assert_ne!(
            fp,
            card_fingerprint(&k1, "m1", "4111111111111111"),
            "other card"
        );
        assert_ne!(
            fp,
            card_fingerprint(&k2, "m1", "4242424242424242"),
            "other key"
        );
        assert!(!fp.contains("4242"));
        let kek = Kek::from_bytes(e.bytes());
        let (id, wrapped) = kek.wrap_fingerprint_key(&k1, &e).unwrap();
        assert!(kek.unwrap_fingerprint_key(&wrapped, Some(&id)).is_ok());
        assert!(
            kek.unwrap_key(&wrapped, 1, Some(&id)).is_err(),
            "a fingerprint key never unwraps as a data key"
        );
    }

    #[test]
    fn api_key_hash_is_stable_and_distinct() {
        assert_eq!(api_key_hash("sk_a"), api_key_hash("sk_a"));
        assert_ne!(api_key_hash("sk_a"), api_key_hash("sk_b"));
        assert_eq!(api_key_hash("sk_a").len(), 64);
    }
}
