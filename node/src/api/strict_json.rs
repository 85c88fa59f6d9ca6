//! A request body read as its JSON Schema description says, not as serde allows.
//!
//! serde's derived `Deserialize` also takes a struct from a JSON array, its fields in
//! order: `["Shop"]` passed for `{"name": "Shop"}`, at any depth. The API's
//! description calls every request object an `object`, and a client that sends an
//! array has a bug the API should name, not guess around. And JSON has one kind of
//! number: `12.0` is the integer 12 to the description's JSON Schema (an `integer` is
//! a number with no fractional part), while serde refuses it for a `u32`.
//!
//! The description also gives every `u64` field the JSON Schema format `int64` (as
//! utoipa writes it), so a client generated from it holds such a field in a signed
//! 64-bit integer: a value above 2^63 − 1 is refused.
//!
//! [`Strict`] wraps a deserializer and changes exactly those things, everywhere in the
//! value: a struct must be a JSON object, an integer field takes a number with no
//! fractional part (within ±2^53, where every such float is exact), and a `u64` one
//! no value above `i64::MAX`. Everything else is passed through to the wrapped
//! deserializer unchanged.

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, Error as _, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};
use std::fmt;

/// A deserializer that reads structs only from JSON objects and integers also from
/// floats with no fractional part.
pub struct Strict<D>(pub D);

/// What the value being read is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A struct: an object, never an array.
    Struct,
    /// An integer: an integral float is taken too.
    Integer,
    /// A `u64`, described as `int64`: as `Integer`, and at most `i64::MAX`.
    Int64,
    /// Anything else: read as the wrapped deserializer reads it.
    Other,
}

/// The largest magnitude at which every integral `f64` is exact (2^53).
const EXACT_F64_MAX: f64 = 9_007_199_254_740_992.0;

macro_rules! forward {
    ($shape:expr => $($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(Wrap { inner: visitor, shape: $shape })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward!(Shape::Other =>
        deserialize_any, deserialize_bool, deserialize_f32, deserialize_f64,
        deserialize_char, deserialize_str, deserialize_string, deserialize_bytes,
        deserialize_byte_buf, deserialize_option, deserialize_unit, deserialize_seq,
        deserialize_map, deserialize_identifier, deserialize_ignored_any);
    forward!(Shape::Integer =>
        deserialize_i8, deserialize_i16, deserialize_i32, deserialize_i64, deserialize_i128,
        deserialize_u8, deserialize_u16, deserialize_u32, deserialize_u128);
    forward!(Shape::Int64 => deserialize_u64);

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Wrap::other(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_newtype_struct(name, Wrap::other(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Wrap::other(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, Wrap::other(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, Wrap::object(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, Wrap::other(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// A visitor that hands the wrapped deserializer's nested values on as [`Strict`]
/// ones, and refuses or converts by the [`Shape`] it was made for.
struct Wrap<V> {
    inner: V,
    shape: Shape,
}

impl<V> Wrap<V> {
    fn other(inner: V) -> Wrap<V> {
        Wrap {
            inner,
            shape: Shape::Other,
        }
    }

    /// For a struct: an object, never an array.
    fn object(inner: V) -> Wrap<V> {
        Wrap {
            inner,
            shape: Shape::Struct,
        }
    }
}

macro_rules! pass {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: serde::de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Struct => f.write_str("a JSON object"),
            _ => self.inner.expecting(f),
        }
    }

    pass!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u128(u128),
        visit_f32(f32),
        visit_char(char),
        visit_str(&str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<V::Value, E> {
        if self.shape == Shape::Int64 && i64::try_from(v).is_err() {
            return Err(E::invalid_value(
                Unexpected::Unsigned(v),
                &"an integer of at most 2^63 - 1",
            ));
        }
        self.inner.visit_u64(v)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<V::Value, E> {
        let integral = v.fract() == 0.0 && v.abs() <= EXACT_F64_MAX;
        let integer = matches!(self.shape, Shape::Integer | Shape::Int64);
        if integer && integral {
            // Exact by the bound: no value changes in the conversion.
            if v >= 0.0 {
                return self.inner.visit_u64(v as u64);
            }
            return self.inner.visit_i64(v as i64);
        }
        self.inner.visit_f64(v)
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.inner.visit_borrowed_str(v)
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Strict(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Strict(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if self.shape == Shape::Struct {
            return Err(A::Error::invalid_type(Unexpected::Seq, &"a JSON object"));
        }
        self.inner.visit_seq(Seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Map(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Enum(data))
    }
}

/// A seed whose value is read through [`Strict`].
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(d))
    }
}

struct Seq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Map<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Enum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<A> {
    type Error = A::Error;
    type Variant = Variant<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Seed(seed))?;
        Ok((value, Variant(variant)))
    }
}

struct Variant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap::other(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap::object(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Card {
        number: String,
        exp_month: u32,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        card: Card,
        #[serde(default)]
        cards: Vec<Card>,
        #[serde(default)]
        note: Option<Card>,
        #[serde(default)]
        tags: BTreeMap<String, i64>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        OneTime,
        Shaped { exp_month: u8 },
    }

    fn strict<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        T::deserialize(Strict(&mut de)).map_err(|e| e.to_string())
    }

    fn lax<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_struct_is_read_from_an_object_and_never_from_an_array() {
        let card = Card {
            number: "1".into(),
            exp_month: 12,
        };
        assert_eq!(strict::<Card>(r#"{"number":"1","exp_month":12}"#), Ok(card));
        // What serde alone takes, and the wrapper refuses: at the top, nested, inside
        // a list, inside an option, and in a struct variant.
        let top = r#"["1", 12]"#;
        assert!(lax::<Card>(top).is_ok(), "serde alone takes {top}");
        let e = strict::<Card>(top).unwrap_err();
        assert!(e.contains("expected a JSON object"), "{e}");
        for body in [
            r#"{"card": ["1", 12]}"#,
            r#"{"card": {"number":"1","exp_month":12}, "cards": [["1", 12]]}"#,
            r#"{"card": {"number":"1","exp_month":12}, "note": ["1", 12]}"#,
            r#"{"card": {"number":"1","exp_month":12}, "kind": {"shaped": [3]}}"#,
        ] {
            assert!(lax::<Outer>(body).is_ok(), "serde alone takes {body}");
            let e = strict::<Outer>(body).unwrap_err();
            assert!(e.contains("expected a JSON object"), "{body}: {e}");
        }
    }

    #[test]
    fn lists_maps_options_and_enums_read_as_before() {
        let body = r#"{"card": {"number":"1","exp_month":12},
            "cards": [{"number":"2","exp_month":1}], "note": null,
            "tags": {"a": -3}, "kind": "one_time"}"#;
        let strict_value = strict::<Outer>(body).unwrap();
        assert_eq!(strict_value, lax::<Outer>(body).unwrap());
        assert_eq!(strict_value.cards[0].number, "2");
        assert_eq!(strict_value.tags["a"], -3);
        assert_eq!(strict_value.kind, Some(Kind::OneTime));
        let shaped =
            r#"{"card": {"number":"1","exp_month":12}, "kind": {"shaped": {"exp_month": 4}}}"#;
        assert_eq!(
            strict::<Outer>(shaped).unwrap().kind,
            Some(Kind::Shaped { exp_month: 4 })
        );
    }

    #[test]
    fn an_integer_is_also_read_from_a_number_with_no_fraction() {
        assert_eq!(strict::<u32>("12.0"), Ok(12));
        assert_eq!(strict::<u64>("1e12"), Ok(1_000_000_000_000));
        assert_eq!(strict::<i64>("-3.0"), Ok(-3));
        assert_eq!(strict::<i64>("-0.0"), Ok(0));
        assert_eq!(strict::<u64>("9007199254740992.0"), Ok(1 << 53));
        assert!(lax::<u32>("12.0").is_err(), "serde alone refuses 12.0");
        // A fraction, a value past 2^53 (not exact as a float), a negative for an
        // unsigned field, and one past the field's own range: refused as before.
        for (json, what) in [
            ("12.5", "floating point"),
            ("18014398509481984.0", "floating point"),
            ("-1.0", "integer `-1`"),
            ("4294967296.0", "integer `4294967296`"),
        ] {
            let e = strict::<u32>(json).unwrap_err();
            assert!(e.contains(what), "{json}: {e}");
        }
        // A float field is untouched.
        assert_eq!(strict::<f64>("2.5"), Ok(2.5));
    }

    #[test]
    fn a_u64_is_read_within_the_int64_range_the_description_gives_it() {
        assert_eq!(strict::<u64>("9223372036854775807"), Ok(i64::MAX as u64));
        assert!(lax::<u64>("9223372036854775808").is_ok());
        let e = strict::<u64>("9223372036854775808").unwrap_err();
        assert!(e.contains("expected an integer of at most 2^63 - 1"), "{e}");
        let e = strict::<Option<u64>>("18446744073709551615").unwrap_err();
        assert!(e.contains("at most 2^63 - 1"), "{e}");
        // Narrower unsigned fields keep their own range checks.
        assert_eq!(strict::<u32>("4294967295"), Ok(u32::MAX));
    }
}
