//! The audit record of each command and its outcome. Never card data or keys.

use super::*;
use crate::vault::audit::AuditEntry;

/// The audit record of `cmd` and its response. Never includes card data or keys.
pub(super) fn audit_entry(cmd: &Command, response: &Response) -> AuditEntry {
    // The operator who asked; entries from before named operators say `admin`.
    let admin = |by: &Option<String>| by.clone().unwrap_or_else(|| "admin".to_owned());
    let system = || "system".to_owned();
    let merchant = |id: &str, role: KeyRole| format!("merchant:{id}:{}", role.as_str());
    let (actor, merchant_id, token, detail): (String, Option<&str>, Option<&str>, String) =
        match cmd {
            Command::InstallDataKey {
                version,
                by_admin,
                by,
                ..
            } => (
                if *by_admin { admin(by) } else { system() },
                None,
                None,
                format!("version {version}"),
            ),
            Command::CreateMerchant {
                merchant_id, by, ..
            }
            | Command::UpdateMerchant {
                merchant_id, by, ..
            } => (admin(by), Some(merchant_id), None, String::new()),
            Command::RotateMerchantKey {
                merchant_id,
                role,
                by,
                ..
            } => (
                admin(by),
                Some(merchant_id),
                None,
                format!("{} key", role.as_str()),
            ),
            Command::Tokenize {
                merchant_id,
                token,
                kind,
                member_id,
                key_role,
                ..
            } => (
                merchant(merchant_id, *key_role),
                Some(merchant_id),
                Some(token),
                match member_id {
                    Some(m) => format!("{kind:?} for member {m}"),
                    None => format!("{kind:?}"),
                },
            ),
            Command::InstallFingerprintKey { .. } => (system(), None, None, String::new()),
            Command::SignAuditHead { signed, .. } => (system(), None, None, signed.to_detail()),
            Command::PurgeCards { tokens, .. } => (
                system(),
                None,
                None,
                match response {
                    Response::Purged { purged, skipped } => format!(
                        "sealed cards of {purged} used or expired one-time tokens destroyed; {skipped} of {} skipped",
                        tokens.len()
                    ),
                    _ => String::new(),
                },
            ),
            Command::RewrapKeys {
                kek_id, keys, by, ..
            } => (
                admin(by),
                None,
                None,
                format!(
                    "{} keys re-wrapped under {kek_id}",
                    keys.len()
                        + usize::from(matches!(
                            cmd,
                            Command::RewrapKeys {
                                fingerprint: Some(_),
                                ..
                            }
                        ))
                ),
            ),
            Command::UseOneTimeForCard {
                merchant_id,
                one_time_token,
                member_id,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                Some(one_time_token),
                match response {
                    Response::Tokenized(m) | Response::AlreadyOnFile(m) => {
                        format!("card on file {} for member {member_id}", m.token)
                    }
                    _ => format!("for member {member_id}"),
                },
            ),
            Command::DeleteCard {
                merchant_id,
                member_id,
                token,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                Some(token),
                format!("member {member_id}"),
            ),
            Command::ResealCards { to_version, .. } => (
                system(),
                None,
                None,
                match response {
                    Response::Resealed { moved, skipped } => {
                        format!("{moved} cards to version {to_version}, {skipped} skipped")
                    }
                    _ => format!("to version {to_version}"),
                },
            ),
            Command::RetireDataKey { version, by, .. } => {
                (admin(by), None, None, format!("version {version}"))
            }
            Command::RecordLeaderChange {
                leader_name,
                term,
                cause,
                ..
            } => (
                if *cause == LeaderChangeCause::Operator {
                    admin(&None)
                } else {
                    system()
                },
                None,
                None,
                format!("{leader_name} leads term {term}, cause {cause}"),
            ),
            Command::SetDrained { node, by, .. } => (admin(by), None, None, format!("node {node}")),
            Command::OpenPayment {
                merchant_id,
                payment_id,
                token,
                amount,
                currency,
                order_id,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                Some(token),
                format!("payment {payment_id} order {order_id} {amount} {currency}"),
            ),
            Command::ReroutePayment {
                payment_id, route, ..
            } => (
                system(),
                None,
                None,
                format!("payment {payment_id} to route {route}"),
            ),
            Command::SettlePayment {
                payment_id,
                outcome,
                ..
            } => (
                system(),
                None,
                None,
                format!(
                    "payment {payment_id} {}",
                    match outcome {
                        AuthOutcome::Approved { .. } => "approved",
                        AuthOutcome::Declined { .. } => "declined",
                        AuthOutcome::Reversed => "reversed",
                    }
                ),
            ),
            Command::ChangePayment {
                merchant_id,
                payment_id,
                change,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                None,
                format!("payment {payment_id} {change:?}"),
            ),
            Command::RecordAdminAction {
                action, detail, by, ..
            } => (admin(by), None, None, format!("{action}: {detail}")),
            Command::CompareVaults { check, by, .. } => (
                by.clone().unwrap_or_else(system),
                None,
                None,
                format!("comparison {check:016x}"),
            ),
        };
    AuditEntry {
        at_ms: cmd.at_ms(),
        actor,
        merchant_id: merchant_id.map(str::to_owned),
        action: cmd.action().to_owned(),
        token: token.map(str::to_owned),
        outcome: response.outcome().to_owned(),
        detail,
    }
}
