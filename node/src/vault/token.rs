//! Token identifiers and kinds. Ids are drawn by the leader from random bytes it
//! passes in; this module only formats them.

use super::card::luhn_valid;
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

/// Bits of a [`time_ordered`] id that hold its time; the other 80 are random.
const TIME_BITS: u32 = 48;

/// A 128-bit id that sorts by when it was drawn: the time in milliseconds since the
/// Unix epoch in its top 48 bits (enough until the year 10889), 80 bits of `random`
/// below. Tables keyed by such ids take each new one at their end, on a page already
/// in memory, instead of on a random page of the whole table; 80 random bits keep it
/// as unguessable as before, and only the time it was drawn shows.
pub fn time_ordered(now_ms: u64, random: [u8; 16]) -> u128 {
    let time = u128::from(now_ms) & ((1 << TIME_BITS) - 1);
    let random = u128::from_be_bytes(random) & ((1 << (128 - TIME_BITS)) - 1);
    time << (128 - TIME_BITS) | random
}

/// An opaque token id: `tok_` followed by a [`time_ordered`] value in base62 (the
/// alphabet is in ASCII order, so ids sort as their values do).
pub fn opaque_token_id(now_ms: u64, random: [u8; 16]) -> String {
    format!("tok_{}", base62_u128(time_ordered(now_ms, random)))
}

/// A numeric token id for a PAN of `pan_len` digits ending in `last4`: as long as the PAN,
/// keeping its last four digits, the rest drawn from `random`, and always failing the Luhn
/// check, so it can never be mistaken for (or accepted as) a card number.
///
/// `pan_len` must be 12..=19 and `last4` four ASCII digits.
pub fn numeric_token_id(random: [u8; 16], pan_len: usize, last4: &str) -> String {
    assert!(
        (12..=19).contains(&pan_len) && last4.len() == 4,
        "a PAN's shape"
    );
    let mut v = u128::from_be_bytes(random);
    let mut out = String::with_capacity(pan_len);
    // The first digit is never 0, so the id keeps its length wherever digits are parsed.
    out.push(char::from(b'1' + (v % 9) as u8));
    v /= 9;
    for _ in 1..pan_len - 5 {
        out.push(char::from(b'0' + (v % 10) as u8));
        v /= 10;
    }
    // The digit before the last four is chosen so the whole id fails the Luhn check.
    let mut d = (v % 10) as u8;
    loop {
        let candidate = format!("{out}{}{last4}", char::from(b'0' + d));
        if !luhn_valid(&candidate) {
            return candidate;
        }
        d = (d + 1) % 10;
    }
}

/// True when `s` has the shape of a token id kura issues (used to answer 404 early).
pub fn looks_like_token_id(s: &str) -> bool {
    let opaque = s.strip_prefix("tok_").is_some_and(|rest| {
        rest.len() == BASE62_U128_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let numeric = (12..=19).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('0')
        && !luhn_valid(s);
    opaque || numeric
}

/// How a merchant's tokens look. Chosen per merchant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    /// `tok_` and 22 base62 characters: the time drawn and 80 random bits.
    #[default]
    Opaque,
    /// Digits, as long as the card number, keeping its last four, failing the Luhn check.
    Numeric,
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

/// True when `s` has the shape of an id kura issues with `prefix` (`pay_`, `tok_`):
/// the prefix and 22 base62 characters.
pub fn is_issued_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == BASE62_U128_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_ids_have_fixed_shape_and_differ_for_different_bytes() {
        let a = opaque_token_id(0, [0; 16]);
        let b = opaque_token_id(0, [255; 16]);
        let c = opaque_token_id(0, [1; 16]);
        assert_eq!(a, "tok_0000000000000000000000");
        for id in [&a, &b, &c] {
            assert_eq!(id.len(), 4 + BASE62_U128_LEN);
            assert!(looks_like_token_id(id), "{id}");
        }
        assert_ne!(b, c);
        let latest = opaque_token_id((1 << 48) - 1, [255; 16]);
        assert_eq!(latest.len(), 4 + BASE62_U128_LEN);
        assert!(looks_like_token_id(&latest), "{latest}");
        assert!(!looks_like_token_id("tok_short"));
        assert!(!looks_like_token_id("pm_0000000000000000000000"));
    }

    #[test]
    fn numeric_ids_keep_length_and_last4_and_always_fail_luhn() {
        for len in 12..=19 {
            for seed in 0u8..=255 {
                let id = numeric_token_id([seed; 16], len, "4242");
                assert_eq!(id.len(), len, "{id}");
                assert!(id.ends_with("4242"), "{id}");
                assert!(!luhn_valid(&id), "{id} passes Luhn");
                assert!(looks_like_token_id(&id), "{id}");
                assert!(
                    crate::vault::Pan::parse(&id).is_err(),
                    "{id} parses as a card"
                );
            }
        }
        assert_ne!(
            numeric_token_id([1; 16], 16, "1111"),
            numeric_token_id([2; 16], 16, "1111")
        );
        assert!(
            !looks_like_token_id("4242424242424242"),
            "a valid PAN is no token"
        );
        assert!(!looks_like_token_id("12345"));
    }

    #[test]
    fn opaque_ids_sort_by_the_time_they_were_drawn_whatever_their_random_bits() {
        // A day of milliseconds apart and one apart, with the random bits of the
        // earlier id all ones and of the later all zeros.
        let now = 1_796_000_000_000u64;
        for later in [now + 1, now + 86_400_000] {
            let (a, b) = (
                opaque_token_id(now, [255; 16]),
                opaque_token_id(later, [0; 16]),
            );
            assert!(a < b, "{a} drawn before {b} sorts after it");
            assert!(time_ordered(now, [255; 16]) < time_ordered(later, [0; 16]));
        }
        // Within one millisecond the 80 random bits tell ids apart; the bits above
        // them are the time's, not the random bytes'.
        let (x, y) = ([0x12; 16], [0x34; 16]);
        assert_ne!(opaque_token_id(now, x), opaque_token_id(now, y));
        assert_eq!(time_ordered(now, x) >> 80, u128::from(now));
        assert_eq!(
            time_ordered(now, [255; 16]) & ((1 << 80) - 1),
            (1 << 80) - 1
        );
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
