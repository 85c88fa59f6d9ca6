//! `application/problem+json` errors (RFC 9457) with a stable `code`.

use super::strict_json::Strict;
use crate::service::{Kind, ServiceError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: HTTP status, stable machine code, and a sentence for humans.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl Problem {
    /// A problem with any status.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid key as `Authorization: Bearer <key>`",
        )
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// Nothing was done; the client may retry, on this node or another.
    pub fn not_leader(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", detail)
    }

    /// No leader is known; nothing was done; retry shortly.
    pub fn no_leader() -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "the cluster has no leader right now; nothing was done; retry shortly",
        )
    }

    /// The write may or may not have been applied.
    pub fn outcome_unknown(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

/// The one mapping from the service layer's errors to HTTP: the kind decides the status,
/// the error its code and sentence.
impl<E: ServiceError> From<E> for Problem {
    fn from(e: E) -> Problem {
        Problem::new(status_of(e.kind()), e.code(), e.to_string())
    }
}

/// The HTTP status of a kind of failure.
pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Gone => StatusCode::GONE,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:kura:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

/// Parses a JSON body as the API's description reads it ([`Strict`]: objects are
/// objects, `12.0` is an integer), with nothing after the value but whitespace,
/// turning every failure into a `400 invalid_json` problem that names the field
/// without echoing its value.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(Strict(&mut de)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "the body is not valid JSON".to_string()
            }
            _ => redact_serde_message(&inner.to_string()),
        };
        let at = if path == "." || path == "?" || path.is_empty() {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        Problem::bad_request("invalid_json", format!("{what}{at}"))
    })?;
    de.end().map_err(|_| {
        Problem::bad_request("invalid_json", "the body has more after its JSON value")
    })?;
    Ok(value)
}

/// serde messages can quote input values (`invalid type: string "4242..."`); keep only
/// the part before any quoted value.
fn redact_serde_message(msg: &str) -> String {
    let cut = msg.find(['"', '`']).map_or(msg, |i| &msg[..i]);
    let cut = cut.split(" at line ").next().unwrap_or(cut);
    cut.trim_end_matches([' ', ':', ',']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Card {
        number: String,
        exp_month: u32,
    }

    #[test]
    fn json_errors_name_the_field_but_never_echo_values() {
        let err =
            parse_json::<Card>(br#"{"number": 4242424242424242, "exp_month": 1}"#).unwrap_err();
        assert_eq!(err.code, "invalid_json");
        assert!(err.detail.contains("`number`"), "{}", err.detail);
        assert!(!err.detail.contains("4242"), "{}", err.detail);
        let err = parse_json::<Card>(
            br#"{"number": "4242424242424242", "exp_month": "4242424242424242"}"#,
        )
        .unwrap_err();
        assert!(!err.detail.contains("4242"), "{}", err.detail);
        let err = parse_json::<Card>(b"{not json").unwrap_err();
        assert_eq!(err.detail, "the body is not valid JSON");
    }

    #[test]
    fn a_body_is_one_json_object_read_strictly() {
        let card = parse_json::<Card>(b" {\"number\": \"1\", \"exp_month\": 12.0}\n").unwrap();
        assert_eq!((card.number.as_str(), card.exp_month), ("1", 12));
        for (body, detail) in [
            (
                &br#"["4242424242424242", 12]"#[..],
                "invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"number": "1", "exp_month": 12} {"number": "2"}"#,
                "the body has more after its JSON value",
            ),
            (
                br#"{"number": "1", "exp_month": 12}]"#,
                "the body has more after its JSON value",
            ),
        ] {
            let err = parse_json::<Card>(body).unwrap_err();
            assert_eq!((err.code, err.detail.as_str()), ("invalid_json", detail));
            assert!(!err.detail.contains("4242"), "{}", err.detail);
        }
    }

    #[test]
    fn problem_responses_use_problem_json() {
        let r = Problem::no_leader().into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
