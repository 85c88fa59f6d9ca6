//! Token identifiers and kinds. Ids are drawn by the leader from random bytes it
//! passes in; this module only formats them.

use serde::{Deserialize, Serialize};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of a 128-bit value in base62, zero-padded.
pub const BASE62_U128_LEN: usize = 22;

/// Encodes 128 bits as exactly 22 base62 characters.
pub fn base62_u128(mut v: u128) -> String {
    let mut out = [b'0'; BASE62_U128_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 alphabet is ASCII")
}

/// An opaque token id: `tok_` followed by 128 random bits in base62.
pub fn opaque_token_id(random: [u8; 16]) -> String {
    format!("tok_{}", base62_u128(u128::from_be_bytes(random)))
}

/// True when `s` has the shape of a token id kura issues (used to answer 404 early).
pub fn looks_like_token_id(s: &str) -> bool {
    s.strip_prefix("tok_").is_some_and(|rest| {
        rest.len() == BASE62_U128_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The two kinds of token a merchant can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Usable once, expires after the one-time token TTL.
    OneTime,
    /// Bound to a merchant's member, reusable until deleted.
    CardOnFile,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_ids_have_fixed_shape_and_differ_for_different_bytes() {
        let a = opaque_token_id([0; 16]);
        let b = opaque_token_id([255; 16]);
        let c = opaque_token_id([1; 16]);
        assert_eq!(a, "tok_0000000000000000000000");
        for id in [&a, &b, &c] {
            assert_eq!(id.len(), 4 + BASE62_U128_LEN);
            assert!(looks_like_token_id(id), "{id}");
        }
        assert_ne!(b, c);
        assert!(!looks_like_token_id("tok_short"));
        assert!(!looks_like_token_id("pm_0000000000000000000000"));
    }

    #[test]
    fn base62_round_trips_through_the_alphabet() {
        let s = base62_u128(u128::MAX);
        let back = s.bytes().fold(0u128, |acc, b| {
            acc * 62 + BASE62.iter().position(|&x| x == b).unwrap() as u128
        });
        assert_eq!(back, u128::MAX);
    }
}
