//! Byte strings in the vault's serialized form (log entries, snapshots, RPCs).
//!
//! JSON writes them as lower-case hex: a 32-byte ciphertext is 64 characters, where
//! serde's default array of numbers is up to 128 and costs a number parse per byte.
//! Arrays of numbers are still read, so logs and snapshots written before kura used
//! hex load unchanged. Binary formats get plain bytes.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// Writes `bytes` as hex (human-readable formats) or as bytes.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&lower(bytes))
    } else {
        s.serialize_bytes(bytes)
    }
}

/// `bytes` as lower-case hex: the same string as `hex::encode`, which builds it a
/// character at a time (with the stored digests' check below, 2.8% of the nodes' CPU
/// in a payments profile, on every apply).
pub fn lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The bytes that [`lower`] writes as `text`, into `out` (half its length); false, with
/// `out` partly written, when `text` is not such a string.
fn decode_lower(text: &str, out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != out.len() * 2 {
        return false;
    }
    for (pair, o) in text.chunks_exact(2).zip(out) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *o = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

/// Reads hex, bytes, or an array of numbers (the form before hex).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(BytesVisitor)
    } else {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// The same for an optional byte string (`null` when absent).
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `Some` as [`super::serialize`] does, `None` as null.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&Hex(b)),
            None => s.serialize_none(),
        }
    }

    /// Reads what [`serialize`] wrote, or the array form from before hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Bytes>::deserialize(d)?.map(|b| b.0))
    }

    struct Hex<'a>(&'a [u8]);

    impl serde::Serialize for Hex<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(self.0, s)
        }
    }

    struct Bytes(Vec<u8>);

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            super::deserialize(d).map(Bytes)
        }
    }
}

/// A string that is normally lower-case hex, such as a digest: binary formats store its
/// bytes (half the size), readable ones the string. Any other string is written as a
/// string in both, so every string reads back as it was.
pub mod text {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Writes `text` as bytes (binary formats, when it is lower-case hex) or a string.
    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() && text.len().is_multiple_of(2) {
            // A digest's bytes fit on the stack; anything longer is decoded into a Vec.
            let (mut small, mut large) = ([0u8; 64], Vec::new());
            let out = match small.get_mut(..text.len() / 2) {
                Some(out) => out,
                None => {
                    large.resize(text.len() / 2, 0);
                    &mut large
                }
            };
            if super::decode_lower(text, out) {
                return s.serialize_bytes(out);
            }
        }
        s.serialize_str(text)
    }

    /// Reads a string, or bytes back as their lower-case hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(TextVisitor)
    }

    struct TextVisitor;

    impl Visitor<'_> for TextVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, or bytes written for hex")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<String, E> {
            Ok(super::lower(v))
        }
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a hex string or an array of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        // The error names neither the input nor where it went wrong: these are key and
        // card ciphertexts.
        hex::decode(v).map_err(|_| E::custom("invalid hex in a byte string"))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sealed {
        #[serde(with = "super")]
        ciphertext: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Retirable {
        #[serde(with = "super::option")]
        wrapped: Option<Vec<u8>>,
    }

    #[test]
    fn optional_bytes_are_hex_or_null_and_old_arrays_load() {
        for r in [
            Retirable {
                wrapped: Some(vec![0xde, 0xad]),
            },
            Retirable { wrapped: None },
        ] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Retirable>(&json).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Retirable {
                wrapped: Some(vec![0xde, 0xad])
            })
            .unwrap(),
            r#"{"wrapped":"dead"}"#
        );
        let old: Retirable = serde_json::from_str(r#"{"wrapped":[222,173]}"#).unwrap();
        assert_eq!(old.wrapped, Some(vec![0xde, 0xad]));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Digest {
        #[serde(with = "super::text")]
        sha256: String,
    }

    #[test]
    fn hex_text_is_stored_as_its_bytes_and_any_other_text_as_text() {
        let digest = Digest {
            sha256: "00ff".repeat(16),
        };
        let packed = rmp_serde::to_vec(&digest).unwrap();
        let as_text = rmp_serde::to_vec(&("00ff".repeat(16),)).unwrap();
        assert!(packed.len() < as_text.len() - 30, "{packed:?}");
        assert_eq!(rmp_serde::from_slice::<Digest>(&packed).unwrap(), digest);
        // What was stored as text before reads the same.
        assert_eq!(rmp_serde::from_slice::<Digest>(&as_text).unwrap(), digest);
        for text in ["", "h", "ABCD", "abc", "0g", "tok_1"] {
            let d = Digest {
                sha256: text.into(),
            };
            let back: Digest = rmp_serde::from_slice(&rmp_serde::to_vec(&d).unwrap()).unwrap();
            assert_eq!(back, d, "{text}");
        }
        assert_eq!(
            serde_json::to_string(&digest).unwrap(),
            format!(r#"{{"sha256":"{}"}}"#, "00ff".repeat(16))
        );
    }

    #[test]
    fn lower_hex_is_the_hex_crates_and_only_it_is_stored_as_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower(&all), hex::encode(&all));
        assert_eq!(super::lower(&[]), "");
        // Exactly the strings that decode and encode back to themselves count as hex,
        // at a digest's length and past the 64 bytes decoded on the stack.
        let long = "0a".repeat(65);
        for text in ["", "0", "00", "0f", "0F", "fg", "abcdef0123456789", &long] {
            let round_trips = hex::decode(text).is_ok_and(|b| hex::encode(b) == text);
            let mut out = vec![0; text.len() / 2];
            let decoded = text.len() % 2 == 0 && super::decode_lower(text, &mut out);
            assert_eq!(decoded, round_trips, "{text}");
            if decoded {
                assert_eq!(hex::decode(text).unwrap(), out);
            }
            let d = Digest {
                sha256: text.to_owned(),
            };
            let packed = rmp_serde::to_vec(&d).unwrap();
            assert_eq!(rmp_serde::from_slice::<Digest>(&packed).unwrap(), d);
            let as_text = rmp_serde::to_vec(&(text,)).unwrap();
            assert_eq!(packed != as_text, round_trips, "{text}");
        }
    }

    #[test]
    fn bytes_are_written_as_hex_and_read_back() {
        let s = Sealed {
            ciphertext: vec![0, 1, 0xab, 0xff],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"ciphertext":"0001abff"}"#);
        assert_eq!(serde_json::from_str::<Sealed>(&json).unwrap(), s);
    }

    #[test]
    fn arrays_written_before_hex_still_load() {
        let old: Sealed = serde_json::from_str(r#"{"ciphertext":[0,1,171,255]}"#).unwrap();
        assert_eq!(old.ciphertext, vec![0, 1, 0xab, 0xff]);
        let empty: Sealed = serde_json::from_str(r#"{"ciphertext":[]}"#).unwrap();
        assert!(empty.ciphertext.is_empty());
    }

    #[test]
    fn bad_hex_and_out_of_range_numbers_are_refused_without_echoing_them() {
        let e = serde_json::from_str::<Sealed>(r#"{"ciphertext":"0g"}"#).unwrap_err();
        assert!(!e.to_string().contains("0g"), "{e}");
        assert!(serde_json::from_str::<Sealed>(r#"{"ciphertext":"abc"}"#).is_err());
        assert!(serde_json::from_str::<Sealed>(r#"{"ciphertext":[256]}"#).is_err());
        assert!(serde_json::from_str::<Sealed>(r#"{"ciphertext":7}"#).is_err());
    }
}
