//! A typed method for every endpoint of the client API and the admin plane. Merchant
//! methods need a client made with the merchant's key; admin methods a client of the
//! admin plane (an operator's certificate, see [`ClientConfig::with_client_cert`]).
//!
//! Retries follow the client's rules: reads are retried freely, payments and their
//! changes under their idempotency key, and everything else only when it provably never
//! reached a node.
//!
//! [`ClientConfig::with_client_cert`]: crate::ClientConfig::with_client_cert

use super::{decode, ApiResponse, Client, Error};
use http::Method;
use kura_types::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn body<B: Serialize>(b: &B) -> Result<Value, Error> {
    serde_json::to_value(b).map_err(|e| Error::Decode(e.to_string()))
}

impl Client {
    async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        decode(self.call(Method::GET, path, None).await?)
    }

    async fn send_as<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        b: Option<&B>,
    ) -> Result<T, Error> {
        let b = b.map(body).transpose()?;
        decode(self.call(method, path, b).await?)
    }

    async fn keyed_as<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        b: &B,
        key: &str,
    ) -> Result<T, Error> {
        decode(
            self.call_idempotent(Method::POST, path, Some(body(b)?), key)
                .await?,
        )
    }

    // ---- the client API (a merchant's key) ----

    /// Tokenizes a card: a new token, or the card-on-file token the member already
    /// has for this card. Not retried once sent: a retry could create a second token.
    pub async fn tokenize(&self, req: &TokenizeIn) -> Result<Token, Error> {
        self.send_as(Method::POST, "/v1/tokens", Some(req)).await
    }

    /// A token's metadata (linearizable).
    pub async fn get_token(&self, token: &str) -> Result<Token, Error> {
        self.get_as(&format!("/v1/tokens/{token}")).await
    }

    /// Uses a one-time token, exactly once, to put its card on file for `member_id`:
    /// the new card-on-file token, or the one already on file for this card.
    pub async fn register_card(
        &self,
        member_id: &str,
        one_time_token: &str,
    ) -> Result<Token, Error> {
        let req = RegisterCardIn {
            token: one_time_token.to_owned(),
        };
        self.send_as(
            Method::POST,
            &format!("/v1/members/{member_id}/cards"),
            Some(&req),
        )
        .await
    }

    /// The member's cards on file.
    pub async fn member_cards(&self, member_id: &str) -> Result<MemberCards, Error> {
        self.get_as(&format!("/v1/members/{member_id}/cards")).await
    }

    /// Deletes one of the member's cards for good.
    pub async fn delete_card(&self, member_id: &str, token: &str) -> Result<(), Error> {
        self.call(
            Method::DELETE,
            &format!("/v1/members/{member_id}/cards/{token}"),
            None,
        )
        .await
        .map(drop)
    }

    /// Authorises a payment (and captures it if `req.capture`), exactly once per `key`:
    /// sent again with the same key until it gets an answer. A payment still `pending`
    /// is in doubt at the acquirer: ask again with the same key.
    pub async fn authorize(&self, req: &AuthorizeIn, key: &str) -> Result<Payment, Error> {
        self.keyed_as("/v1/payments", req, key).await
    }

    /// Captures `amount` of an authorised payment (default: all of it), once per `key`.
    pub async fn capture(
        &self,
        id: &str,
        amount: Option<u64>,
        key: &str,
    ) -> Result<Payment, Error> {
        self.keyed_as(
            &format!("/v1/payments/{id}/capture"),
            &AmountIn { amount },
            key,
        )
        .await
    }

    /// Voids an authorised payment before capture, once per `key`.
    pub async fn void(&self, id: &str, key: &str) -> Result<Payment, Error> {
        self.keyed_as(
            &format!("/v1/payments/{id}/void"),
            &AmountIn::default(),
            key,
        )
        .await
    }

    /// Refunds `amount` of a captured payment (default: what is left), once per `key`.
    pub async fn refund(&self, id: &str, amount: Option<u64>, key: &str) -> Result<Payment, Error> {
        self.keyed_as(
            &format!("/v1/payments/{id}/refund"),
            &AmountIn { amount },
            key,
        )
        .await
    }

    /// A payment, its state and history (linearizable).
    pub async fn payment(&self, id: &str) -> Result<Payment, Error> {
        self.get_as(&format!("/v1/payments/{id}")).await
    }

    /// The order's payment, if it has one.
    pub async fn payment_by_order(&self, order_id: &str) -> Result<Option<Payment>, Error> {
        let found: Payments = self
            .get_as(&format!("/v1/payments?order_id={order_id}"))
            .await?;
        Ok(found.payments.into_iter().next())
    }

    /// The payments created in `[from, to)` (Unix seconds), with totals per state.
    pub async fn payment_report(&self, from: u64, to: u64) -> Result<PaymentReport, Error> {
        self.get_as(&format!("/v1/reports/payments?from={from}&to={to}"))
            .await
    }

    /// The answering node's view of the cluster.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        self.get_as("/v1/cluster/status").await
    }

    /// The API's OpenAPI 3.1 description.
    pub async fn openapi(&self) -> Result<Value, Error> {
        self.call(Method::GET, "/openapi.json", None)
            .await
            .map(|r: ApiResponse| r.body)
    }

    // ---- the admin plane (an operator) ----

    /// Forms the cluster from the configured members, once.
    pub async fn init(&self) -> Result<InitOutcome, Error> {
        self.send_as::<_, ()>(Method::POST, "/admin/v1/init", None)
            .await
    }

    /// Creates a merchant; its keys are in the answer, once.
    pub async fn create_merchant(&self, m: &CreateMerchantIn) -> Result<Merchant, Error> {
        self.send_as(Method::POST, "/admin/v1/merchants", Some(m))
            .await
    }

    /// Every merchant (never their keys).
    pub async fn merchants(&self) -> Result<Vec<Merchant>, Error> {
        let m: Merchants = self.get_as("/admin/v1/merchants").await?;
        Ok(m.merchants)
    }

    /// One merchant.
    pub async fn merchant(&self, id: &str) -> Result<Merchant, Error> {
        self.get_as(&format!("/admin/v1/merchants/{id}")).await
    }

    /// Changes a merchant's settings.
    pub async fn update_merchant(&self, id: &str, u: &UpdateMerchantIn) -> Result<Merchant, Error> {
        self.send_as(Method::PATCH, &format!("/admin/v1/merchants/{id}"), Some(u))
            .await
    }

    /// Issues a new key of `role`; the old one stops working at once.
    pub async fn rotate_merchant_key(&self, id: &str, role: KeyRole) -> Result<Merchant, Error> {
        self.send_as(
            Method::POST,
            &format!("/admin/v1/merchants/{id}/rotate-key"),
            Some(&RotateKeyIn { key: role }),
        )
        .await
    }

    /// Data keys, the KEK and the re-wraps' progress.
    pub async fn key_status(&self) -> Result<KeyStatus, Error> {
        self.get_as("/admin/v1/keys").await
    }

    /// Makes a new data key version current.
    pub async fn rotate_data_key(&self) -> Result<KeyStatus, Error> {
        self.send_as::<_, ()>(Method::POST, "/admin/v1/keys/rotate", None)
            .await
    }

    /// Re-wraps every key under the nodes' current KEK.
    pub async fn rotate_kek(&self) -> Result<KeyStatus, Error> {
        self.send_as::<_, ()>(Method::POST, "/admin/v1/keys/rotate-kek", None)
            .await
    }

    /// Destroys an old data key version once no card uses it.
    pub async fn retire_data_key(&self, version: u32) -> Result<KeyStatus, Error> {
        self.send_as::<_, ()>(
            Method::POST,
            &format!("/admin/v1/keys/{version}/retire"),
            None,
        )
        .await
    }

    /// Opens every stored card under its key (a scrub).
    pub async fn verify_cards(&self) -> Result<KeyVerification, Error> {
        self.send_as::<_, ()>(Method::POST, "/admin/v1/keys/verify", None)
            .await
    }

    /// A page of the audit trail from `from_seq`.
    pub async fn audit_page(&self, from_seq: u64, limit: u32) -> Result<AuditPage, Error> {
        self.get_as(&format!(
            "/admin/v1/audit?from_seq={from_seq}&limit={limit}"
        ))
        .await
    }

    /// The audit trail's head, signed now.
    pub async fn audit_head(&self) -> Result<SignedHeadNow, Error> {
        self.get_as("/admin/v1/audit/head").await
    }

    /// Recomputes the audit chain and checks its signatures (and `exported`, if given).
    pub async fn verify_audit(
        &self,
        exported: Option<SignedHead>,
    ) -> Result<AuditVerification, Error> {
        let req = AuditVerifyIn {
            signed_head: exported,
        };
        self.send_as(Method::POST, "/admin/v1/audit/verify", Some(&req))
            .await
    }

    /// Moves leadership to the member named `to`.
    pub async fn transfer_leader(&self, to: &str) -> Result<Leader, Error> {
        let req = TransferIn { to: to.to_owned() };
        self.send_as(Method::POST, "/admin/v1/leader/transfer", Some(&req))
            .await
    }

    /// Adds a member as a learner.
    pub async fn add_member(&self, m: &AddMemberIn) -> Result<MemberOut, Error> {
        self.send_as(Method::POST, "/admin/v1/members", Some(m))
            .await
    }

    /// Promotes the learner named `name` to voter.
    pub async fn promote_member(&self, name: &str) -> Result<MemberOut, Error> {
        self.send_as::<_, ()>(
            Method::POST,
            &format!("/admin/v1/members/{name}/promote"),
            None,
        )
        .await
    }

    /// Removes the member named `name` (`force`: even without a quorum of reachable
    /// voters left).
    pub async fn remove_member(&self, name: &str, force: bool) -> Result<(), Error> {
        self.call(
            Method::DELETE,
            &format!("/admin/v1/members/{name}?force={force}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Drains the member named `name` (or undrains it).
    pub async fn set_drained(&self, name: &str, drained: bool) -> Result<Drained, Error> {
        let action = if drained { "drain" } else { "undrain" };
        self.send_as::<_, ()>(
            Method::POST,
            &format!("/admin/v1/nodes/{name}/{action}"),
            None,
        )
        .await
    }

    /// The answering node's fault switches (tests only).
    pub async fn faults(&self) -> Result<Faults, Error> {
        self.get_as("/admin/v1/faults").await
    }

    /// Sets the answering node's fault switches (tests only).
    pub async fn set_faults(&self, f: &Faults) -> Result<Faults, Error> {
        self.send_as(Method::POST, "/admin/v1/faults", Some(f))
            .await
    }

    /// The answering node's view of the cluster, with the cluster id.
    pub async fn admin_cluster_status(&self) -> Result<ClusterStatus, Error> {
        self.get_as("/admin/v1/cluster/status").await
    }

    /// The answering node's last vault scrub (or the one running).
    pub async fn scrub(&self) -> Result<Scrub, Error> {
        self.get_as("/admin/v1/scrub").await
    }

    /// Starts a full check of the answering node's vault; poll [`Self::scrub`] for the
    /// outcome. `409 scrub_running` while one runs.
    pub async fn start_scrub(&self) -> Result<Scrub, Error> {
        self.send_as::<_, ()>(Method::POST, "/admin/v1/scrub", None)
            .await
    }

    /// The leader's last comparison of the members' vaults, or the one running.
    pub async fn compare(&self) -> Result<Compare, Error> {
        self.get_as("/admin/v1/compare").await
    }

    /// Starts a comparison of the members' vaults on the leader; poll [`Self::compare`]
    /// for the outcome. `409 compare_running` while one runs.
    pub async fn start_compare(&self) -> Result<Compare, Error> {
        self.send_as::<_, ()>(Method::POST, "/admin/v1/compare", None)
            .await
    }
}
