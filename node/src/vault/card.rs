//! Card numbers: parsing, the Luhn check, brand detection and expiry rules.
//!
//! A [`Pan`] never prints its digits: `Debug` and `Display` show only the brand-free
//! mask `************1234`, and the digits are wiped from memory when it drops.

use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Shortest and longest PAN accepted (ISO/IEC 7812).
pub const PAN_DIGITS_MIN: usize = 12;
/// Longest PAN accepted.
pub const PAN_DIGITS_MAX: usize = 19;

/// A validated primary account number. Its digits never appear in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Pan(String);

/// Why a card number or expiry was refused. Each variant has a stable `code()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CardError {
    /// The number contains something other than ASCII digits.
    NotDigits,
    /// Fewer than 12 or more than 19 digits.
    BadLength,
    /// The Luhn check digit is wrong.
    LuhnFailed,
    /// The expiry month is not 1..=12 or the year is implausible.
    BadExpiry,
    /// The card expired before the current month.
    Expired,
    /// The card security code is not 3 digits (4 for American Express).
    CvcInvalid,
}

impl CardError {
    /// The stable machine-readable code sent to clients.
    pub fn code(self) -> &'static str {
        match self {
            CardError::NotDigits => "card_number_not_digits",
            CardError::BadLength => "card_number_length",
            CardError::LuhnFailed => "card_number_luhn",
            CardError::BadExpiry => "card_expiry_invalid",
            CardError::Expired => "card_expired",
            CardError::CvcInvalid => "card_cvc_invalid",
        }
    }

    /// A human sentence saying what is wrong and what to do. Never contains the number.
    pub fn message(self) -> &'static str {
        match self {
            CardError::NotDigits => "card.number must contain digits only (no spaces or dashes)",
            CardError::BadLength => "card.number must be 12 to 19 digits long",
            CardError::LuhnFailed => "card.number fails the Luhn check; check for a mistyped digit",
            CardError::BadExpiry => {
                "card.exp_month must be 1-12 and card.exp_year a four-digit year"
            }
            CardError::Expired => "the card's expiry date has passed",
            CardError::CvcInvalid => {
                "card.cvc must be 3 digits (4 digits for American Express cards)"
            }
        }
    }
}

impl fmt::Display for CardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for CardError {}

impl Pan {
    /// Parses and validates a card number: ASCII digits only, 12–19 long, Luhn-valid.
    pub fn parse(input: &str) -> Result<Pan, CardError> {
        if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardError::NotDigits);
        }
        if !(PAN_DIGITS_MIN..=PAN_DIGITS_MAX).contains(&input.len()) {
            return Err(CardError::BadLength);
        }
        if !luhn_valid(input) {
            return Err(CardError::LuhnFailed);
        }
        Ok(Pan(input.to_owned()))
    }

    /// The digits, for encryption only.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The last four digits, which may be shown and stored in clear (PCI DSS 3.4.1).
    pub fn last4(&self) -> String {
        self.0[self.0.len() - 4..].to_owned()
    }

    /// The card brand from the issuer identification number ranges.
    pub fn brand(&self) -> Brand {
        Brand::from_iin(&self.0)
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan(****{})", self.last4())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "****{}", self.last4())
    }
}

/// A card security code (CVC/CVV), validated for its brand. Never printed, wiped on drop,
/// and never written to disk: kura keeps it only in memory (see `cvc` in the node).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Cvc(String);

impl Cvc {
    /// Checks the code: 3 ASCII digits, or 4 for American Express.
    pub fn parse(input: &str, brand: Brand) -> Result<Cvc, CardError> {
        let want = if brand == Brand::Amex { 4 } else { 3 };
        if input.len() != want || !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardError::CvcInvalid);
        }
        Ok(Cvc(input.to_owned()))
    }

    /// The digits, to send to an acquirer.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc(***)")
    }
}

/// True when the digit string passes the Luhn (mod 10) check.
pub fn luhn_valid(digits: &str) -> bool {
    luhn_sum(digits.bytes().rev().map(|b| b - b'0'), false) % 10 == 0
}

/// The digit that, appended to `digits`, makes the whole string Luhn-valid.
pub fn luhn_check_digit(digits: &str) -> u8 {
    let sum = luhn_sum(digits.bytes().rev().map(|b| b - b'0'), true);
    ((10 - sum % 10) % 10) as u8
}

fn luhn_sum(rev_digits: impl Iterator<Item = u8>, double_first: bool) -> u32 {
    rev_digits
        .enumerate()
        .map(|(i, d)| {
            let doubled = (i % 2 == 1) != double_first;
            let v = if doubled { d as u32 * 2 } else { d as u32 };
            if v > 9 {
                v - 9
            } else {
                v
            }
        })
        .sum()
}

/// Card brands kura recognises from the IIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Brand {
    Visa,
    Mastercard,
    Jcb,
    Amex,
    Diners,
    Discover,
    Unknown,
}

impl Brand {
    /// Brand by issuer identification number prefix ranges.
    pub fn from_iin(digits: &str) -> Brand {
        let prefix = |n: usize| {
            digits
                .get(..n)
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
        if p2 == 34 || p2 == 37 {
            Brand::Amex
        } else if (3528..=3589).contains(&p4) {
            Brand::Jcb
        } else if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 || p3 == 309 {
            Brand::Diners
        } else if (51..=55).contains(&p2) || (222100..=272099).contains(&p6) {
            Brand::Mastercard
        } else if p4 == 6011
            || p2 == 65
            || (644..=649).contains(&p3)
            || (622126..=622925).contains(&p6)
        {
            Brand::Discover
        } else if p1 == 4 {
            Brand::Visa
        } else {
            Brand::Unknown
        }
    }
}

/// A card's expiry month, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// 1..=12
    pub month: u8,
    /// Four-digit year.
    pub year: u16,
}

impl Expiry {
    /// Validates the month and year and that the card is still valid in the month of `now`.
    /// `now_ym` is `(year, month)` of the leader-stamped time.
    pub fn new(month: u32, year: u32, now_ym: (u32, u32)) -> Result<Expiry, CardError> {
        if !(1..=12).contains(&month) || !(2000..=2199).contains(&year) {
            return Err(CardError::BadExpiry);
        }
        if (year, month) < now_ym {
            return Err(CardError::Expired);
        }
        Ok(Expiry {
            month: month as u8,
            year: year as u16,
        })
    }
}

/// `(year, month)` of a Unix time in milliseconds, UTC (proleptic Gregorian).
pub fn year_month_of_ms(unix_ms: u64) -> (u32, u32) {
    let days = (unix_ms / 86_400_000) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year as u32, month as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cvc_length_follows_the_brand_and_never_prints() {
        assert!(Cvc::parse("123", Brand::Visa).is_ok());
        assert!(Cvc::parse("1234", Brand::Amex).is_ok());
        for (bad, brand) in [
            ("1234", Brand::Visa),
            ("123", Brand::Amex),
            ("12a", Brand::Jcb),
            ("", Brand::Visa),
            ("12", Brand::Mastercard),
        ] {
            assert_eq!(
                Cvc::parse(bad, brand),
                Err(CardError::CvcInvalid),
                "{bad} {brand:?}"
            );
        }
        let c = Cvc::parse("987", Brand::Visa).unwrap();
        assert_eq!(format!("{c:?}"), "Cvc(***)");
    }

    #[test]
    fn accepts_well_known_test_numbers_with_their_brands() {
        let cases = [
            ("4242424242424242", Brand::Visa),
            ("4111111111111111", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("3530111333300000", Brand::Jcb),
            ("378282246310005", Brand::Amex),
            ("36227206271667", Brand::Diners),
            ("6011111111111117", Brand::Discover),
        ];
        for (number, brand) in cases {
            let pan = Pan::parse(number).unwrap_or_else(|e| panic!("{number}: {e}"));
            assert_eq!(pan.brand(), brand, "{number}");
            assert_eq!(pan.last4(), &number[number.len() - 4..]);
        }
    }

    #[test]
    fn refuses_non_digits_bad_length_and_bad_luhn_with_distinct_codes() {
        assert_eq!(Pan::parse("4242 4242 4242 4242"), Err(CardError::NotDigits));
        assert_eq!(Pan::parse(""), Err(CardError::NotDigits));
        assert_eq!(Pan::parse("42424242424"), Err(CardError::BadLength));
        assert_eq!(
            Pan::parse("42424242424242424242"),
            Err(CardError::BadLength)
        );
        assert_eq!(Pan::parse("4242424242424241"), Err(CardError::LuhnFailed));
        let codes: std::collections::BTreeSet<_> = [
            CardError::NotDigits,
            CardError::BadLength,
            CardError::LuhnFailed,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes.len(), 3);
    }

    #[test]
    fn debug_and_display_never_show_the_digits() {
        let pan = Pan::parse("4242424242424242").unwrap();
        let shown = format!("{pan:?} {pan}");
        assert!(!shown.contains("424242424242"), "{shown}");
        assert!(shown.contains("4242"));
    }

    #[test]
    fn expiry_refuses_past_months_and_accepts_the_current_one() {
        assert_eq!(Expiry::new(11, 2026, (2026, 11)).map(|e| e.month), Ok(11));
        assert_eq!(Expiry::new(10, 2026, (2026, 11)), Err(CardError::Expired));
        assert_eq!(Expiry::new(13, 2030, (2026, 11)), Err(CardError::BadExpiry));
        assert_eq!(Expiry::new(0, 2030, (2026, 11)), Err(CardError::BadExpiry));
        assert_eq!(Expiry::new(1, 30, (2026, 11)), Err(CardError::BadExpiry));
    }

    #[test]
    fn year_month_of_known_instants() {
        assert_eq!(year_month_of_ms(0), (1970, 1));
        assert_eq!(year_month_of_ms(951_782_400_000), (2000, 2)); // 2000-02-29
        assert_eq!(year_month_of_ms(1_795_392_000_000), (2026, 11)); // 2026-11-22
        assert_eq!(year_month_of_ms(1_798_761_599_000), (2026, 12)); // 2026-12-31T23:59:59
    }

    proptest! {
        #[test]
        fn appending_the_check_digit_always_passes_luhn(body in "[0-9]{11,18}") {
            let full = format!("{body}{}", luhn_check_digit(&body));
            prop_assert!(luhn_valid(&full));
            prop_assert!(Pan::parse(&full).is_ok());
        }

        #[test]
        fn changing_one_digit_always_fails_luhn(body in "[0-9]{11,18}", pos in 0usize..19, delta in 1u8..10) {
            let full = format!("{body}{}", luhn_check_digit(&body));
            let pos = pos % full.len();
            let mut bytes = full.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(!luhn_valid(&changed));
        }
    }
}
