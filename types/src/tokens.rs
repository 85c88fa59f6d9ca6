//! Tokens and cards on file.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Usable once, expires after the one-time token TTL; may carry the CVC.
    OneTime,
    /// Bound to a merchant's member, reusable until deleted.
    CardOnFile,
}

/// The card's brand, from its issuer identification number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Jcb => "jcb",
            Brand::Amex => "amex",
            Brand::Diners => "diners",
            Brand::Discover => "discover",
            Brand::Unknown => "unknown",
        }
    }
}

/// Whether a one-time token's CVC is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CvcState {
    /// No CVC was given with the token.
    NotSupplied,
    /// Held in the answering node's memory.
    Available,
    /// Given, but no longer held (used, expired, or lost in a failover).
    Unavailable,
}

/// A card as a client sends it.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"number": "4242424242424242", "exp_month": 12, "exp_year": 2030})))]
#[serde(deny_unknown_fields)]
pub struct CardIn {
    /// 12-19 digits, no spaces.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9]{12,19}$"))]
    pub number: Zeroizing<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 12))]
    pub exp_month: u32,
    /// Four digits.
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 9999))]
    pub exp_year: u32,
    /// One-time tokens only: 3 digits (4 for American Express); held in memory, never
    /// stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[0-9]{3,4}$"))]
    pub cvc: Option<Zeroizing<String>>,
}

impl CardIn {
    /// A card without a CVC.
    pub fn new(number: impl Into<String>, exp_month: u32, exp_year: u32) -> CardIn {
        CardIn {
            number: Zeroizing::new(number.into()),
            exp_month,
            exp_year,
            cvc: None,
        }
    }

    /// The card with its CVC (one-time tokens only).
    pub fn with_cvc(mut self, cvc: impl Into<String>) -> CardIn {
        self.cvc = Some(Zeroizing::new(cvc.into()));
        self
    }
}

impl TokenizeIn {
    /// A one-time token for `card`.
    pub fn one_time(card: CardIn) -> TokenizeIn {
        TokenizeIn {
            card,
            kind: TokenKind::OneTime,
            member_id: None,
        }
    }

    /// A card-on-file token for `card`, for the merchant's member `member_id`.
    pub fn card_on_file(card: CardIn, member_id: impl Into<String>) -> TokenizeIn {
        TokenizeIn {
            card,
            kind: TokenKind::CardOnFile,
            member_id: Some(member_id.into()),
        }
    }
}

impl TokenKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::OneTime => "one_time",
            TokenKind::CardOnFile => "card_on_file",
        }
    }
}

impl std::fmt::Debug for CardIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardIn")
            .field("number", &"<redacted>")
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("cvc", &self.cvc.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030},
    "kind": "card_on_file", "member_id": "member-1"})))]
#[serde(deny_unknown_fields)]
pub struct TokenizeIn {
    pub card: CardIn,
    pub kind: TokenKind,
    /// Card-on-file tokens only: the merchant's member (1-64 of A-Z a-z 0-9 - _ .).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub member_id: Option<String>,
}

/// A token as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Token {
    pub token: String,
    pub kind: TokenKind,
    pub member_id: Option<String>,
    pub brand: Brand,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    /// When a one-time token was used (absent while unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<u64>,
    /// One-time tokens: whether the answering node holds the CVC given with the card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvc: Option<CvcState>,
}

/// `POST /v1/members/{member_id}/cards`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"token": "tok_2C8OFXzsYXar2NgHchldST"})))]
#[serde(deny_unknown_fields)]
pub struct RegisterCardIn {
    /// A one-time token of this merchant; used by the registration.
    pub token: String,
}

/// A member's cards on file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberCards {
    pub member_id: String,
    pub cards: Vec<Token>,
}
