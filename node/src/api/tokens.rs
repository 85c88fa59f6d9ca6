//! `POST /v1/tokens` and `GET /v1/tokens/{token}`.

use super::{AppState, Caller, Problem, St};
use crate::crypto::{card_fingerprint, seal_pan, DataKey};
use crate::cvc::CvcState;
use crate::vault::card::year_month_of_ms;
use crate::vault::token::{looks_like_token_id, numeric_token_id, opaque_token_id};
use crate::vault::{
    Brand, CardError, Command, Cvc, Expiry, KeyRole, Pan, Refusal, Response, SealedCard,
    TokenFormat, TokenKind, TokenMeta,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Longest member id accepted.
pub const MEMBER_ID_CHARS_MAX: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CardIn {
    number: Zeroizing<String>,
    exp_month: u32,
    exp_year: u32,
    /// One-time tokens only; held in memory, never stored.
    #[serde(default)]
    cvc: Option<Zeroizing<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeIn {
    card: CardIn,
    kind: TokenKind,
    #[serde(default)]
    member_id: Option<String>,
}

/// A token as the API shows it. Times are Unix seconds.
#[derive(Serialize)]
pub(super) struct TokenOut {
    token: String,
    kind: TokenKind,
    member_id: Option<String>,
    brand: crate::vault::Brand,
    last4: String,
    exp_month: u8,
    exp_year: u16,
    created_at: u64,
    expires_at: Option<u64>,
    /// When a one-time token was used (absent while unused).
    #[serde(skip_serializing_if = "Option::is_none")]
    used_at: Option<u64>,
    /// One-time tokens: whether the leader holds the CVC given with the card.
    #[serde(skip_serializing_if = "Option::is_none")]
    cvc: Option<CvcState>,
}

impl TokenOut {
    /// The token as shown by this node, with its CVC state for one-time tokens.
    pub(super) fn new(st: &AppState, m: TokenMeta) -> TokenOut {
        let cvc = (m.kind == TokenKind::OneTime)
            .then(|| st.cvc.state(&m.token, m.cvc_supplied, (st.clock)()));
        TokenOut {
            token: m.token,
            kind: m.kind,
            member_id: m.member_id,
            brand: m.brand,
            last4: m.last4,
            exp_month: m.exp_month,
            exp_year: m.exp_year,
            created_at: m.created_at_ms / 1000,
            expires_at: m.expires_at_ms.map(|t| t / 1000),
            used_at: m.used_at_ms.map(|t| t / 1000),
            cvc,
        }
    }
}

pub(super) fn body_or_problem(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is too large",
            )
        } else {
            Problem::bad_request("invalid_body", "the request body could not be read")
        }
    })
}

pub(super) fn check_member_id(kind: TokenKind, member_id: &Option<String>) -> Result<(), Problem> {
    match (kind, member_id) {
        (TokenKind::CardOnFile, None) => Err(Problem::unprocessable(
            "member_id_required",
            "card_on_file tokens need a member_id",
        )),
        (TokenKind::OneTime, Some(_)) => Err(Problem::unprocessable(
            "member_id_not_allowed",
            "one_time tokens do not take a member_id; register the card to a member instead",
        )),
        (_, Some(m))
            if m.is_empty()
                || m.len() > MEMBER_ID_CHARS_MAX
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            Err(Problem::bad_request(
                "member_id_invalid",
                "member_id must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
            ))
        }
        _ => Ok(()),
    }
}

/// `POST /v1/tokens`: validates and seals the card, then stores it under a new token.
pub async fn create(
    State(st): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    match tokenize(&st, &headers, body).await {
        Ok(Stored::New(meta)) => {
            (StatusCode::CREATED, axum::Json(TokenOut::new(&st, meta))).into_response()
        }
        Ok(Stored::AlreadyOnFile(meta)) => {
            (StatusCode::OK, axum::Json(TokenOut::new(&st, meta))).into_response()
        }
        Err(p) => p.into_response(),
    }
}

/// What a tokenization stored.
enum Stored {
    /// A new token (201).
    New(TokenMeta),
    /// The card was already on file for this member: the existing token (200).
    AlreadyOnFile(TokenMeta),
}

/// A publishable key may only create one-time tokens, and from a browser only from one of
/// the merchant's allowed origins.
fn check_publishable(
    st: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    kind: TokenKind,
) -> Result<(), Problem> {
    if caller.role != KeyRole::Publishable {
        return Ok(());
    }
    if kind != TokenKind::OneTime {
        return Err(Problem::forbidden(
            "publishable_key_not_allowed",
            "a publishable key may only create one_time tokens; use the secret key from your server",
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = st.cluster.vault().read(|v| {
        v.merchant_info(&caller.merchant_id).is_some_and(|m| {
            m.settings
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes() == origin.as_bytes())
        })
    });
    if allowed {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "origin_not_allowed",
            "this merchant does not allow browser requests from this origin; add it to the merchant's allowed_origins",
        ))
    }
}

/// Attempts at a fresh token id when one is taken (numeric ids can collide).
pub(super) const TOKEN_ID_ATTEMPTS: usize = 4;

async fn tokenize(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Stored, Problem> {
    let caller = st.caller(headers)?;
    let body = body_or_problem(body)?;
    let input: TokenizeIn = super::problem::parse_json(&body)?;
    check_publishable(st, &caller, headers, input.kind)?;
    check_member_id(input.kind, &input.member_id)?;
    let now_ms = st.now_ms();
    let card_problem = |e: CardError| Problem::unprocessable(e.code(), e.message());
    let pan = Pan::parse(&input.card.number).map_err(card_problem)?;
    let expiry = Expiry::new(
        input.card.exp_month,
        input.card.exp_year,
        year_month_of_ms(now_ms),
    )
    .map_err(card_problem)?;
    let cvc = match (&input.card.cvc, input.kind) {
        (None, _) => None,
        (Some(c), TokenKind::OneTime) => Some(Cvc::parse(c, pan.brand()).map_err(card_problem)?),
        (Some(_), TokenKind::CardOnFile) => {
            return Err(Problem::unprocessable(
                "cvc_not_allowed",
                "card_on_file tokens never keep a CVC; create a one_time token with the CVC and register it to the member",
            ))
        }
    };
    let merchant_id = caller.merchant_id;
    let fingerprint = match input.kind {
        TokenKind::CardOnFile => Some(card_fingerprint(
            &fingerprint_key(st).await?,
            &merchant_id,
            pan.digits(),
        )),
        TokenKind::OneTime => None,
    };
    let expires_at_ms = match input.kind {
        TokenKind::OneTime => Some(now_ms + st.settings.one_time_token_ttl_s * 1000),
        TokenKind::CardOnFile => None,
    };
    for _ in 0..TOKEN_ID_ATTEMPTS {
        let seal = seal_for_new_token(st, &merchant_id, pan.digits()).await?;
        let token = seal.token.clone();
        let cmd = Command::Tokenize {
            merchant_id: merchant_id.clone(),
            token: token.clone(),
            kind: input.kind,
            member_id: input.member_id.clone(),
            card: seal.card(pan.brand(), pan.last4(), expiry),
            at_ms: now_ms,
            expires_at_ms,
            fingerprint: fingerprint.clone(),
            key_role: caller.role,
            cvc_supplied: cvc.is_some(),
        };
        let written = match (&cvc, expires_at_ms) {
            (Some(cvc), Some(expires)) => {
                write_with_cvc(st, cmd, &token, &merchant_id, cvc, expires).await
            }
            _ => st.write(cmd).await,
        };
        match written? {
            Response::Tokenized(meta) => return Ok(Stored::New(meta)),
            Response::AlreadyOnFile(meta) => return Ok(Stored::AlreadyOnFile(meta)),
            // A taken id, or a data key retired while this request sealed under it: seal again.
            Response::Refused(Refusal::TokenIdTaken | Refusal::UnknownDataKey) => continue,
            Response::Refused(Refusal::UnknownMerchant) => return Err(Problem::unauthorized()),
            other => return Err(unexpected(&other)),
        }
    }
    Err(Problem::internal("no free token id after several attempts"))
}

/// Holds the CVC here, copies it to the other nodes while the token is written, and
/// wipes the local copy if the token was not created.
async fn write_with_cvc(
    st: &AppState,
    cmd: Command,
    token: &str,
    merchant_id: &str,
    cvc: &Cvc,
    expires_at_ms: u64,
) -> Result<Response, Problem> {
    st.cvc
        .put(token, merchant_id, cvc.clone(), expires_at_ms)
        .map_err(|e| {
            st.metrics.cvc_not_taken(e.reason());
            let code = match e {
                crate::cvc::CvcStoreFull::Full { .. } => "cvc_store_full",
                crate::cvc::CvcStoreFull::MerchantShare { .. } => "cvc_share_exhausted",
            };
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                format!("{e}; retry later or without the CVC"),
            )
        })?;
    let (written, copies) = futures::join!(
        st.write(cmd),
        super::peer::replicate_cvc(st, token, merchant_id, cvc, expires_at_ms)
    );
    st.metrics.cvc_copies(copies);
    if !matches!(written, Ok(Response::Tokenized(_))) {
        st.cvc.take(token, 0);
    }
    written
}

/// A problem for a vault response the handler did not expect.
pub(super) fn unexpected(r: &Response) -> Problem {
    Problem::internal(format!("unexpected vault response {}", response_kind(r)))
}

pub(super) fn response_kind(r: &Response) -> &'static str {
    match r {
        Response::None => "none",
        Response::DataKeyInstalled { .. } => "data_key_installed",
        Response::Merchant(_) => "merchant",
        Response::Tokenized(_) => "tokenized",
        Response::AlreadyOnFile(_) => "already_on_file",
        Response::FingerprintKeyInstalled => "fingerprint_key_installed",
        Response::CardDeleted => "card_deleted",
        Response::Resealed { .. } => "resealed",
        Response::DataKeyRetired { .. } => "data_key_retired",
        Response::KeysRewrapped { .. } => "keys_rewrapped",
        Response::Purged { .. } => "purged",
        Response::Recorded => "recorded",
        Response::Payment(_) => "payment",
        Response::Refused(r) => r.code(),
    }
}

/// A new token id and the PAN digits sealed for it under the current data key.
pub(super) struct NewSeal {
    pub token: String,
    pub key_version: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl NewSeal {
    /// The sealed card with the fields shown in clear.
    pub fn card(self, brand: Brand, last4: String, expiry: Expiry) -> SealedCard {
        SealedCard {
            brand,
            last4,
            exp_month: expiry.month,
            exp_year: expiry.year,
            key_version: self.key_version,
            nonce: self.nonce,
            ciphertext: self.ciphertext,
        }
    }
}

/// Draws a new token id in the merchant's format and seals `digits` for it under the
/// current data key (the associated data binds merchant, token and key version), creating
/// the first data key if the vault has none.
pub(super) async fn seal_for_new_token(
    st: &AppState,
    merchant_id: &str,
    digits: &str,
) -> Result<NewSeal, Problem> {
    let (key_version, key) = current_data_key(st).await?;
    let format = st.cluster.vault().read(|v| {
        v.merchant_info(merchant_id)
            .map(|m| m.settings.token_format)
            .unwrap_or_default()
    });
    let token = match format {
        TokenFormat::Opaque => opaque_token_id(st.entropy.bytes()),
        TokenFormat::Numeric => numeric_token_id(
            st.entropy.bytes(),
            digits.len(),
            &digits[digits.len() - 4..],
        ),
    };
    let nonce = st.entropy.nonce();
    let ciphertext = seal_pan(&key, key_version, merchant_id, &token, digits, &nonce);
    Ok(NewSeal {
        token,
        key_version,
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// The current data key, creating version 1 through the log if the vault has none yet.
pub(super) async fn current_data_key(st: &AppState) -> Result<(u32, DataKey), Problem> {
    for _ in 0..2 {
        let current = st.cluster.vault().read(|v| {
            v.current_data_key()
                .map(|(ver, w)| (ver, w.to_vec(), v.data_key_kek(ver).map(str::to_owned)))
        });
        if let Some((version, wrapped, kek_id)) = current {
            let key = st
                .keys
                .data_key(version, &wrapped, kek_id.as_deref())
                .map_err(|e| key_unavailable("data key", e))?;
            return Ok((version, key));
        }
        let fresh = DataKey::generate(&st.entropy);
        let (kek_id, wrapped) = st
            .keys
            .kek()
            .wrap(&fresh, 1, &st.entropy)
            .map_err(|e| key_unavailable("data key", e))?;
        match st
            .write(Command::InstallDataKey {
                version: 1,
                wrapped,
                kek_id: Some(kek_id),
                at_ms: st.now_ms(),
                by_admin: false,
                by: None,
            })
            .await?
        {
            Response::DataKeyInstalled { .. }
            | Response::Refused(Refusal::DataKeyExists { .. }) => continue,
            other => return Err(unexpected(&other)),
        }
    }
    Err(Problem::internal("no data key after installing one"))
}

pub(super) fn key_unavailable(what: &str, e: crate::crypto::KeyError) -> Problem {
    tracing::error!(error = %e, "cannot unwrap the {what}");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "key_unavailable",
        format!("the {what} cannot be unwrapped with this node's key-encryption key"),
    )
}

/// The card fingerprint key, installing one through the log if the vault has none yet.
pub(super) async fn fingerprint_key(st: &AppState) -> Result<DataKey, Problem> {
    for _ in 0..2 {
        if let Some((wrapped, kek_id)) = st.cluster.vault().read(|v| {
            v.fingerprint_key()
                .map(|w| (w.to_vec(), v.fingerprint_key_kek().map(str::to_owned)))
        }) {
            return st
                .keys
                .fingerprint_key(&wrapped, kek_id.as_deref())
                .map_err(|e| key_unavailable("fingerprint key", e));
        }
        let (kek_id, wrapped) = st
            .keys
            .kek()
            .wrap_fingerprint_key(&DataKey::generate(&st.entropy), &st.entropy)
            .map_err(|e| key_unavailable("fingerprint key", e))?;
        match st
            .write(Command::InstallFingerprintKey {
                wrapped,
                kek_id: Some(kek_id),
                at_ms: st.now_ms(),
            })
            .await?
        {
            Response::FingerprintKeyInstalled
            | Response::Refused(Refusal::FingerprintKeyExists) => continue,
            other => return Err(unexpected(&other)),
        }
    }
    Err(Problem::internal("no fingerprint key after installing one"))
}

/// `GET /v1/tokens/{token}`: the token's metadata, to its owner only (404 to anyone else).
pub async fn get(State(st): St, headers: HeaderMap, Path(token): Path<String>) -> HttpResponse {
    let result = async {
        let merchant_id = st.merchant(&headers)?;
        let not_found = || Problem::not_found("token_not_found", "no such token for this merchant");
        if !looks_like_token_id(&token) {
            return Err(not_found());
        }
        st.linearize().await?;
        st.cluster
            .vault()
            .read(|v| v.token_for(&merchant_id, &token))
            .ok_or_else(not_found)
    }
    .await;
    match result {
        Ok(meta) => axum::Json(TokenOut::new(&st, meta)).into_response(),
        Err(p) => p.into_response(),
    }
}

/// Token records the purge examines per second: a bounded share of the leader's time
/// whatever the vault's size (a full pass over a million tokens takes under two
/// minutes).
const PURGE_SCAN_PER_TICK: usize = 10_000;
/// Pause between purge batches, so foreground writes keep most of the log.
const PURGE_PAUSE_MS: u64 = 20;

/// Runs for the node's lifetime: on the leader, destroys the sealed cards of one-time
/// tokens that were used or have expired, through the log, in bounded batches (PCI DSS
/// 3.2.1: a card is kept no longer than it is needed). Their metadata and audit
/// records stay.
pub async fn purge_loop(st: std::sync::Arc<AppState>) {
    let mut cursor: Option<String> = None;
    loop {
        crate::runtime::sleep(std::time::Duration::from_secs(1)).await;
        if !st.cluster.is_leader() {
            cursor = None;
            continue;
        }
        let now_ms = st.now_ms();
        let (found, next) = st.cluster.vault().read(|v| {
            v.purgeable(
                cursor.as_deref(),
                PURGE_SCAN_PER_TICK,
                st.settings.rewrap_batch_cards,
                now_ms,
            )
        });
        cursor = next;
        if found.is_empty() {
            continue;
        }
        let cmd = Command::PurgeCards {
            tokens: found,
            at_ms: now_ms,
        };
        match st.write(cmd).await {
            Ok(Response::Purged { purged, .. }) => {
                st.metrics.purged_cards.inc_by(purged);
            }
            Ok(other) => tracing::warn!(
                response = response_kind(&other),
                "unexpected answer to a card purge"
            ),
            Err(p) => tracing::debug!(code = p.code, "card purge not written; retrying"),
        }
        crate::runtime::sleep(std::time::Duration::from_millis(PURGE_PAUSE_MS)).await;
    }
}
