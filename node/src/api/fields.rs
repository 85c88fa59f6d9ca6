//! No card number in the wrong field. A card number typed into a member id, an order
//! id, a merchant's name or an idempotency key would otherwise travel in clear into the
//! Raft log, the audit trail and log lines. Every request on the client API and the
//! admin plane is checked before anything else reads it: the path, the query, the
//! idempotency key and every string in a JSON body except the fields meant for card
//! data. A run of 12–19 digits (single spaces or dashes between digits allowed, as
//! people type them) that passes the Luhn check is refused with `422 pan_in_field`,
//! naming the field and never echoing it. A string that is wholly a hex digest (32,
//! 40, 64 or 128 hex digits with letters among them: a hash or a MAC, such as an
//! exported audit head's) is not searched: its digit runs are chance, one digest in a
//! few dozen holds a Luhn-valid one, and nobody types a card number into one.

use super::{AppState, Problem, St};
use crate::vault::card::luhn_valid;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use std::borrow::Cow;
use std::future::Future;

/// JSON fields that carry card data on purpose (dotted paths).
const CARD_FIELDS: [&str; 2] = ["card.number", "card.cvc"];

/// True when `s` holds a run of 12–19 digits that passes the Luhn check, and is not a
/// hex digest.
pub fn holds_pan(s: &str) -> bool {
    if is_hex_digest(s) {
        return false;
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digits, with single separators between two digits. Only a run of
        // up to 19 digits can be a card number, so only that many are kept.
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                if n < digits.len() {
                    digits[n] = b[j];
                }
                n += 1;
                j += 1;
            } else if (b[j] == b' ' || b[j] == b'-')
                && j + 1 < b.len()
                && b[j + 1].is_ascii_digit()
                && j > i
            {
                j += 1;
            } else {
                break;
            }
        }
        // ASCII digits: always UTF-8.
        if n <= 19 && pan_in_run(std::str::from_utf8(&digits[..n]).unwrap_or_default()) {
            return true;
        }
        i = j.max(i + 1);
    }
    false
}

/// A hash or a MAC in hex: 32, 40, 64 or 128 hex digits, letters among them (all
/// digits, it is one long run and no card number anyway).
fn is_hex_digest(s: &str) -> bool {
    matches!(s.len(), 32 | 40 | 64 | 128)
        && s.bytes().all(|c| c.is_ascii_hexdigit())
        && s.bytes().any(|c| c.is_ascii_alphabetic())
}

/// A digit run holds a card number when it has a card number's length (12–19) and
/// passes the Luhn check. Longer runs are not card numbers: looking for one inside them
/// would refuse most long numeric ids (each window passes Luhn one time in ten).
fn pan_in_run(digits: &str) -> bool {
    (12..=19).contains(&digits.len()) && luhn_valid(digits)
}

pub use crate::vault::token::is_issued_id;

/// The refusal for `field`.
pub fn pan_problem(field: &str) -> Problem {
    Problem::unprocessable(
        "pan_in_field",
        format!(
            "`{field}` holds what looks like a card number; card numbers go only in card.number, and this one was not stored"
        ),
    )
}

/// Checks one value.
pub fn check(field: &str, value: &str) -> Result<(), Problem> {
    if holds_pan(value) {
        Err(pan_problem(field))
    } else {
        Ok(())
    }
}

/// Walks a JSON body; returns the path of the first string (or number) that holds a
/// card number outside the card fields.
fn first_pan<'a>(v: &'a Value, path: &mut Vec<Cow<'a, str>>) -> Option<String> {
    match v {
        // The path is joined only for a value that holds a card number: nearly none.
        Value::String(s) => holds_pan(s)
            .then(|| path.join("."))
            .filter(|here| !CARD_FIELDS.contains(&here.as_str())),
        Value::Number(n) => holds_pan(&n.to_string())
            .then(|| path.join("."))
            .filter(|here| !CARD_FIELDS.contains(&here.as_str())),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            path.push(i.to_string().into());
            let found = first_pan(item, path);
            path.pop();
            found
        }),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            path.push(k.as_str().into());
            let found = if holds_pan(k) {
                Some(path.join("."))
            } else {
                first_pan(item, path)
            };
            path.pop();
            found
        }),
        _ => None,
    }
}

/// Refuses a request that carries a card number anywhere but the card fields.
pub async fn guard(State(st): St, req: Request, next: Next) -> Response {
    guard_around(&st, req, |req| next.run(req)).await
}

/// [`guard`], running a request that passes through `next`.
pub async fn guard_around<F, Fut>(st: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    match inspect(st, req).await {
        Ok(req) => next(req).await,
        Err(p) => p.into_response(),
    }
}

async fn inspect(st: &AppState, req: Request) -> Result<Request, Problem> {
    let path = req.uri().path();
    if holds_pan(&percent_decoded(path)) {
        return Err(pan_problem("path"));
    }
    if let Some(q) = req.uri().query() {
        if holds_pan(&percent_decoded(q)) {
            return Err(pan_problem("query"));
        }
    }
    for name in [super::payments::IDEMPOTENCY_HEADER] {
        if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
            check(name, v)?;
        }
    }
    if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, st.svc.settings().request_body_bytes_max)
        .collect()
        .await
        .map_err(|_| {
            Problem::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is too large",
            )
        })?
        .to_bytes();
    // A body that is not JSON is left to the handler, which refuses it; its digits are
    // checked as text all the same.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => {
            if let Some(field) = first_pan(&v, &mut Vec::new()) {
                return Err(pan_problem(&field));
            }
        }
        Err(_) => {
            if holds_pan(&String::from_utf8_lossy(&bytes)) {
                return Err(pan_problem("body"));
            }
        }
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// `%XX` escapes decoded (so `4242%204242…` is seen as typed); anything else kept.
fn percent_decoded(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return s.into();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| char::from(c).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_found_as_people_type_them() {
        for s in [
            "4242424242424242",
            "member-4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "x378282246310005y",   // 15-digit Amex
            "6011111111111117",    // Discover
            "0004242424242424242", // 19 digits
        ] {
            assert!(holds_pan(s), "{s}");
        }
    }

    #[test]
    fn ids_dates_and_numeric_tokens_pass() {
        for s in [
            "member-42",
            "order-2026-12-02",
            "4242424242424241", // fails Luhn
            "12345678901",      // 11 digits
            "2026 12 02 10 30", // short groups, under 12 digits in all
            "tok_4Xk9aP0qLmN2rS7tUvW1yZ",
            "pay_0000000000000000000000",
            "42424242424242424242", // 20 digits: longer than any card number
            "%E3%81%82%",
            "",
        ] {
            assert!(!holds_pan(s), "{s}");
        }
        // A numeric token id is PAN-shaped but never passes Luhn.
        let id = crate::vault::token::numeric_token_id([7; 16], 16, "4242");
        assert!(!holds_pan(&id), "{id}");
    }

    #[test]
    fn a_hex_digest_is_not_searched_but_a_card_number_beside_hex_is() {
        // A MAC whose digits happen to hold a Luhn-valid run of sixteen.
        let mac = format!("ab{}{}", "4242424242424242", "c".repeat(46));
        assert_eq!(mac.len(), 64);
        assert!(!holds_pan(&mac), "{mac}");
        assert!(!holds_pan(&mac.to_uppercase()));
        // Not a digest: one character more, a non-hex letter, or a typical length off.
        assert!(holds_pan(&format!("{mac}c")));
        assert!(holds_pan(&mac.replacen('c', "g", 1)));
        assert!(holds_pan(&format!("ab4242424242424242{}", "c".repeat(10))));
    }

    #[test]
    fn a_body_is_searched_everywhere_but_the_card_fields() {
        let body: Value = serde_json::from_str(
            r#"{"card":{"number":"4242424242424242","cvc":"123"},"kind":"one_time"}"#,
        )
        .unwrap();
        assert_eq!(first_pan(&body, &mut Vec::new()), None);
        let body: Value = serde_json::from_str(
            r#"{"card":{"number":"4242424242424242"},"kind":"card_on_file","member_id":"4000 0566 5566 5556"}"#,
        )
        .unwrap();
        assert_eq!(
            first_pan(&body, &mut Vec::new()).as_deref(),
            Some("member_id")
        );
        let body: Value =
            serde_json::from_str(r#"{"order_id":"o1","amount":4242424242424242}"#).unwrap();
        assert_eq!(first_pan(&body, &mut Vec::new()).as_deref(), Some("amount"));
        let body: Value =
            serde_json::from_str(r#"{"allowed_origins":["https://x","4242424242424242"]}"#)
                .unwrap();
        assert_eq!(
            first_pan(&body, &mut Vec::new()).as_deref(),
            Some("allowed_origins.1")
        );
    }

    #[test]
    fn the_refusal_names_the_field_and_never_echoes_it() {
        let p = check("member_id", "4242424242424242").unwrap_err();
        assert_eq!(p.code, "pan_in_field");
        assert!(p.detail.contains("member_id"));
        assert!(!p.detail.contains("4242"));
        assert_eq!(percent_decoded("4242%204242+42"), "4242 4242 42");
        assert_eq!(percent_decoded("a%e3%81%82%zz%"), "a\u{3042}%zz%");
    }
}
