//! Comparing the members' vaults, as etcd's corruption check compares its members'
//! hashes. A scrub proves one node's vault consistent with itself; it cannot see a
//! value that changed on disk and still decodes (an amount, a name, a state), nor an
//! apply that came out differently on one node. A comparison can.
//!
//! Whoever starts one (the leader, on `POST /admin/v1/compare` or every
//! `api.compare_interval_s`) writes a marker entry ([`Command::CompareVaults`]) through
//! the log. Every member, as it applies the marker, keeps its vault as it stands just
//! after it (`store::Mark`: O(1) copies of the buffer over one read transaction) and
//! hashes every row of every table in order in the background ([`hash_loop`]), one
//! marker at a time, oldest first. Equal
//! vaults give equal hashes whatever each node's timing; the leader asks each member
//! for its hash over the peer plane ([`DIGEST_PATH`]) and names any that differs from
//! the rest.

use super::auth::Operator;
use super::{Kind, Service, ServiceError};
use crate::vault::{Command, Response};
use kura_types::{Compare, CompareState, MemberDigest, MemberDigestState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a member answers for its hash at a comparison's marker, on the peer listener:
/// `GET {DIGEST_PATH}/{check}?index={marker index}`.
pub const DIGEST_PATH: &str = "/peer/v1/vault-digest";

/// How long a comparison waits for the members' hashes: hashing reads the whole vault
/// (372,000 rows — 90,000 cards — took 0.10–0.14 s per node with the vault in the page
/// cache, so ten million cards take tens of seconds, more from a cold disk), and a
/// member may be catching up first.
const COMPARE_WAIT: Duration = Duration::from_secs(3600);
/// How long a member may hash one marker before it gives up. No comparison waits longer
/// than [`COMPARE_WAIT`] for it, and the hash holds a read transaction open all the
/// while, in which redb cannot reuse a page freed since: at the lowest priority
/// (decision 0033) under sustained load a hash could otherwise hold it for ever and
/// let the vault's file grow by everything written meanwhile.
const HASH_LIMIT: Duration = COMPARE_WAIT;
/// A member that has not answered for this long is left out, as unreachable.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);
/// How often the comparison asks the members that have not answered yet.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long one ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Hashes a node keeps for the leader to ask for.
const HASHES_KEPT: usize = 8;

/// This node's hash of its vault just after one comparison's marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub check: u64,
    pub index: u64,
    pub sha256: String,
    pub rows: u64,
    pub seconds: f64,
}

/// What a member says of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum DigestAnswer {
    Hashed {
        digest: Digest,
    },
    /// It has not applied the marker yet, or is hashing.
    Pending {
        applied_index: u64,
    },
    /// It applied past the marker without hashing there.
    Missed {
        applied_index: u64,
    },
    /// Its vault could not be read.
    Unreadable {
        detail: String,
    },
}

/// This node's hashes, and the last comparison it ran.
pub(crate) struct Compares {
    hashes: Mutex<Hashes>,
    last: Mutex<Compare>,
}

#[derive(Default)]
struct Hashes {
    /// The comparison being hashed now.
    hashing: Option<u64>,
    /// The last hashes, newest last.
    done: VecDeque<Result<Digest, (u64, String)>>,
}

impl Compares {
    pub(crate) fn new() -> Compares {
        Compares {
            hashes: Mutex::default(),
            last: Mutex::new(Compare {
                check: None,
                state: CompareState::Never,
                started_at_ms: None,
                finished_at_ms: None,
                index: None,
                members: Vec::new(),
                detail: None,
            }),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Compare> {
        self.last.lock().expect("compare lock")
    }

    fn hashes(&self) -> std::sync::MutexGuard<'_, Hashes> {
        self.hashes.lock().expect("hashes lock")
    }
}

/// Why a comparison did not start.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("a comparison is running already; see GET /admin/v1/compare")]
    Running,
}

impl ServiceError for CompareError {
    fn code(&self) -> &'static str {
        "compare_running"
    }
    fn kind(&self) -> Kind {
        Kind::Conflict
    }
}

/// The hash most members have: the one to hold the others against. A tie goes to
/// `own` (this node's hash), then to the lower hash, so that the verdict is the same
/// however the answers came.
fn most_held<'a>(hashes: impl Iterator<Item = &'a str>, own: Option<&str>) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in hashes {
        *counts.entry(h).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    let tied: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n == most)
        .map(|(h, _)| *h)
        .collect();
    Some(
        own.filter(|o| tied.contains(o))
            .unwrap_or(tied[0])
            .to_owned(),
    )
}

/// The verdict on the members' answers: the state, and the detail to give with it.
fn verdict(members: &mut [MemberDigest], own: Option<&str>) -> (CompareState, Option<String>) {
    let held = most_held(members.iter().filter_map(|m| m.sha256.as_deref()), own);
    for m in members.iter_mut() {
        m.differs = matches!((&m.sha256, &held), (Some(h), Some(most)) if h != most);
    }
    let names = |f: &dyn Fn(&MemberDigest) -> bool| {
        members
            .iter()
            .filter(|m| f(m))
            .map(|m| m.name.clone())
            .collect::<Vec<_>>()
    };
    let differ = names(&|m| m.differs);
    if !differ.is_empty() {
        let agree = names(&|m| m.sha256.is_some() && !m.differs);
        return (
            CompareState::Differed,
            Some(format!(
                "the vault of {} differs from that of {}",
                differ.join(", "),
                if agree.is_empty() {
                    "every other member".to_owned()
                } else {
                    agree.join(", ")
                }
            )),
        );
    }
    let out: Vec<String> = members
        .iter()
        .filter(|m| m.state != MemberDigestState::Hashed)
        .map(|m| format!("{} {}", m.name, state_name(m.state)))
        .collect();
    if out.is_empty() {
        (CompareState::Agreed, None)
    } else {
        (
            CompareState::Incomplete,
            Some(format!(
                "not every member hashed its vault: {}",
                out.join(", ")
            )),
        )
    }
}

fn state_name(s: MemberDigestState) -> &'static str {
    match s {
        MemberDigestState::Hashed => "hashed",
        MemberDigestState::Pending => "still pending",
        MemberDigestState::Missed => "missed the marker",
        MemberDigestState::Unreadable => "could not read its vault",
        MemberDigestState::Unreachable => "unreachable",
    }
}

/// `answer` as member `m`'s part.
fn member_part(m: &mut MemberDigest, answer: &DigestAnswer) {
    match answer {
        DigestAnswer::Hashed { digest } => {
            m.state = MemberDigestState::Hashed;
            m.sha256 = Some(digest.sha256.clone());
            m.rows = Some(digest.rows);
            m.seconds = Some(digest.seconds);
        }
        DigestAnswer::Pending { .. } => m.state = MemberDigestState::Pending,
        DigestAnswer::Missed { .. } => m.state = MemberDigestState::Missed,
        DigestAnswer::Unreadable { .. } => m.state = MemberDigestState::Unreadable,
    }
}

impl Service {
    /// This node's last comparison of the members' vaults (or the one running).
    pub fn compare_status(&self) -> Compare {
        self.compares.last().clone()
    }

    /// What this node says of comparison `check`, whose marker is entry `index`.
    pub fn digest_answer(&self, check: u64, index: u64) -> DigestAnswer {
        // Applied first: a node that has applied the marker has its state in hand
        // (`store::Mark`) or has taken it to hash.
        let applied_index = self.cluster.vault().applied_index();
        let h = self.compares.hashes();
        if let Some(done) = h.done.iter().rev().find(|d| match d {
            Ok(d) => d.check == check,
            Err((c, _)) => *c == check,
        }) {
            return match done {
                Ok(digest) => DigestAnswer::Hashed {
                    digest: digest.clone(),
                },
                Err((_, detail)) => DigestAnswer::Unreadable {
                    detail: detail.clone(),
                },
            };
        }
        let waiting = self.cluster.vault().mark_waits(check);
        if h.hashing == Some(check) || waiting || applied_index < index {
            DigestAnswer::Pending { applied_index }
        } else {
            DigestAnswer::Missed { applied_index }
        }
    }

    /// Starts a comparison of the members' vaults in the background (on the leader);
    /// answers at once. `op` is the operator who asked, `None` for the schedule.
    pub fn start_compare(self: &Arc<Self>, op: Option<&Operator>) -> Result<Compare, CompareError> {
        let check = self.entropy.u64();
        let started = {
            let mut c = self.compares.last();
            if c.state == CompareState::Running {
                return Err(CompareError::Running);
            }
            *c = Compare {
                check: Some(format!("{check:016x}")),
                state: CompareState::Running,
                started_at_ms: Some((self.clock)()),
                finished_at_ms: None,
                index: None,
                members: Vec::new(),
                detail: None,
            };
            c.clone()
        };
        let by = op.map(|o| format!("operator:{}", o.name));
        tracing::info!(check = %format!("{check:016x}"), by = by.as_deref().unwrap_or("schedule"), "vault comparison started");
        let svc = self.clone();
        crate::runtime::spawn(async move {
            let (state, detail) = svc.run_compare(check, by).await;
            let outcome = match state {
                CompareState::Agreed => "agreed",
                CompareState::Differed => "differed",
                _ => "incomplete",
            };
            let mut c = svc.compares.last();
            c.state = state;
            c.detail = detail.clone();
            c.finished_at_ms = Some((svc.clock)());
            let check = format!("{check:016x}");
            let index = c.index.unwrap_or(0);
            match state {
                CompareState::Agreed => {
                    tracing::info!(%check, index, "vault comparison: every member's vault is the same")
                }
                CompareState::Differed => {
                    tracing::error!(%check, index, detail = detail.as_deref().unwrap_or(""), "vault comparison: the members' vaults DIFFER")
                }
                _ => {
                    tracing::warn!(%check, index, detail = detail.as_deref().unwrap_or(""), "vault comparison incomplete")
                }
            }
            drop(c);
            svc.metrics.observe_compare(outcome);
        });
        Ok(started)
    }

    /// Writes comparison `check`'s marker and gathers the members' hashes at it.
    async fn run_compare(&self, check: u64, by: Option<String>) -> (CompareState, Option<String>) {
        let at_ms = self.now_ms().await;
        match self
            .write(Command::CompareVaults { check, at_ms, by })
            .await
        {
            Ok(Response::Recorded) => {}
            Ok(_) => {
                return (
                    CompareState::Incomplete,
                    Some("the marker was refused".into()),
                )
            }
            Err(e) => {
                return (
                    CompareState::Incomplete,
                    Some(format!("the marker was not written: {e}")),
                )
            }
        }
        let deadline = tokio::time::Instant::now() + COMPARE_WAIT;
        // This node applied the marker before its write was answered (so the marker is
        // at or below what it has applied now), and its own answer names the marker's
        // index.
        let me = self.cluster.id();
        let applied = self.cluster.vault().applied_index();
        let (own, index) = loop {
            match self.digest_answer(check, applied) {
                DigestAnswer::Hashed { digest } => break (Some(digest.sha256), digest.index),
                DigestAnswer::Pending { .. } if tokio::time::Instant::now() < deadline => {
                    crate::runtime::sleep(POLL_EVERY).await;
                }
                DigestAnswer::Unreadable { detail } => {
                    return (
                        CompareState::Incomplete,
                        Some(format!("this node could not read its own vault: {detail}")),
                    )
                }
                DigestAnswer::Pending { .. } | DigestAnswer::Missed { .. } => {
                    return (
                        CompareState::Incomplete,
                        Some("this node did not hash its own vault at the marker".into()),
                    )
                }
            }
        };
        let members = self.cluster.members();
        let mut parts: BTreeMap<u64, MemberDigest> = members
            .iter()
            .map(|(id, m)| {
                (
                    *id,
                    MemberDigest {
                        node_id: *id,
                        name: m.name.clone(),
                        state: MemberDigestState::Pending,
                        sha256: None,
                        rows: None,
                        seconds: None,
                        differs: false,
                    },
                )
            })
            .collect();
        if let Some(m) = parts.get_mut(&me) {
            member_part(m, &self.digest_answer(check, index));
        }
        let mut heard: BTreeMap<u64, tokio::time::Instant> = members
            .keys()
            .map(|id| (*id, tokio::time::Instant::now()))
            .collect();
        let path = format!("{DIGEST_PATH}/{check}?index={index}");
        loop {
            {
                let mut c = self.compares.last();
                c.index = Some(index);
                c.members = parts.values().cloned().collect();
            }
            let settled = |m: &MemberDigest| m.state != MemberDigestState::Pending;
            if parts.values().all(settled) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            crate::runtime::sleep(POLL_EVERY).await;
            for (id, body, at) in self.cluster.get_from_peers(&path, ASK_TIMEOUT).await {
                let Some(m) = parts.get_mut(&id) else {
                    continue;
                };
                if settled(m) {
                    continue;
                }
                match body.and_then(|b| serde_json::from_slice::<DigestAnswer>(&b).ok()) {
                    Some(answer) => {
                        heard.insert(id, at);
                        member_part(m, &answer);
                    }
                    None if heard.get(&id).is_some_and(|h| at - *h >= UNREACHABLE_AFTER) => {
                        m.state = MemberDigestState::Unreachable;
                    }
                    None => {}
                }
            }
        }
        let mut members: Vec<MemberDigest> = parts.into_values().collect();
        let (state, detail) = verdict(&mut members, own.as_deref());
        let mut c = self.compares.last();
        c.members = members;
        (state, detail)
    }
}

/// Runs for the node's lifetime on every node: hashes the vault as each comparison
/// marker left it, one at a time, and keeps the last few hashes for the leader to ask
/// for.
pub async fn hash_loop(svc: Arc<Service>) {
    let vault = svc.cluster.vault().clone();
    loop {
        let mark = {
            let mut h = svc.compares.hashes();
            let mark = vault.take_mark();
            h.hashing = mark.as_ref().map(|m| m.check);
            mark
        };
        let Some(mark) = mark else {
            vault.marked().await;
            continue;
        };
        let (check, index) = (mark.check, mark.index);
        let t = tokio::time::Instant::now();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hashing = svc.cluster.hash_mark(mark, stop.clone());
        tokio::pin!(hashing);
        let hashed = tokio::select! {
            biased;
            hashed = &mut hashing => hashed,
            () = crate::runtime::sleep(HASH_LIMIT) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                hashing.await
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let mut h = svc.compares.hashes();
        h.hashing = None;
        let check_hex = format!("{check:016x}");
        match hashed {
            Ok(None) => {
                tracing::warn!(check = %check_hex, index, seconds, "gave up hashing the vault for a comparison: no comparison waits this long");
                svc.metrics.vault_digests_given_up.inc();
                h.done.push_back(Err((
                    check,
                    format!("gave up hashing after {} s", HASH_LIMIT.as_secs()),
                )));
            }
            Ok(Some((sha256, rows))) => {
                tracing::info!(check = %check_hex, index, rows, seconds, "vault hashed for a comparison");
                svc.metrics.vault_digest_duration.set(seconds);
                h.done.push_back(Ok(Digest {
                    check,
                    index,
                    sha256,
                    rows,
                    seconds,
                }));
            }
            Err(e) => {
                tracing::error!(check = %check_hex, index, error = %e, "the vault could not be read to hash it for a comparison");
                h.done.push_back(Err((check, e.to_string())));
            }
        }
        while h.done.len() > HASHES_KEPT {
            h.done.pop_front();
        }
    }
}

/// Runs for the node's lifetime: on the leader, compares the members' vaults every
/// `api.compare_interval_s` (never when 0).
pub async fn compare_loop(svc: Arc<Service>) {
    let every = svc.settings.compare_interval_s;
    if every == 0 {
        return;
    }
    loop {
        crate::runtime::sleep(Duration::from_secs(every)).await;
        if svc.cluster.is_leader() {
            // One running already (an operator's) stands for this one.
            let _ = svc.start_compare(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, sha: Option<&str>, state: MemberDigestState) -> MemberDigest {
        MemberDigest {
            node_id: id,
            name: name.into(),
            state,
            sha256: sha.map(str::to_owned),
            rows: sha.map(|_| 10),
            seconds: None,
            differs: false,
        }
    }

    #[test]
    fn the_member_whose_hash_the_others_do_not_share_is_named() {
        use MemberDigestState::*;
        let mut m = vec![
            member(1, "main", Some("aa"), Hashed),
            member(2, "dr", Some("bb"), Hashed),
            member(3, "bk", Some("aa"), Hashed),
        ];
        // Even when the leader (main) is the one with the odd hash, the majority wins.
        let (state, detail) = verdict(&mut m, Some("bb"));
        assert_eq!(state, CompareState::Differed);
        assert_eq!(
            detail.as_deref(),
            Some("the vault of dr differs from that of main, bk")
        );
        assert_eq!(
            m.iter().map(|m| m.differs).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn two_hashes_alone_that_differ_hold_the_other_against_this_nodes() {
        use MemberDigestState::*;
        let mut m = vec![
            member(1, "main", Some("bb"), Hashed),
            member(2, "dr", Some("aa"), Hashed),
            member(3, "bk", None, Unreachable),
        ];
        let (state, detail) = verdict(&mut m, Some("bb"));
        assert_eq!(state, CompareState::Differed);
        assert_eq!(
            detail.as_deref(),
            Some("the vault of dr differs from that of main")
        );
    }

    #[test]
    fn equal_hashes_agree_and_a_member_left_out_makes_it_incomplete() {
        use MemberDigestState::*;
        let mut all = vec![
            member(1, "main", Some("aa"), Hashed),
            member(2, "dr", Some("aa"), Hashed),
            member(3, "bk", Some("aa"), Hashed),
        ];
        assert_eq!(verdict(&mut all, Some("aa")), (CompareState::Agreed, None));
        let mut some = vec![
            member(1, "main", Some("aa"), Hashed),
            member(2, "dr", None, Missed),
            member(3, "bk", Some("aa"), Hashed),
        ];
        let (state, detail) = verdict(&mut some, Some("aa"));
        assert_eq!(state, CompareState::Incomplete);
        assert_eq!(
            detail.as_deref(),
            Some("not every member hashed its vault: dr missed the marker")
        );
    }

    #[test]
    fn an_answer_reads_back_as_it_was_sent() {
        let answers = [
            DigestAnswer::Hashed {
                digest: Digest {
                    check: 7,
                    index: 42,
                    sha256: "ab".into(),
                    rows: 3,
                    seconds: 0.5,
                },
            },
            DigestAnswer::Pending { applied_index: 41 },
            DigestAnswer::Missed { applied_index: 50 },
            DigestAnswer::Unreadable {
                detail: "gone".into(),
            },
        ];
        for a in answers {
            let json = serde_json::to_vec(&a).unwrap();
            assert_eq!(serde_json::from_slice::<DigestAnswer>(&json).unwrap(), a);
        }
    }
}
