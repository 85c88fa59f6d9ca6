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
/// How often a hash under way looks at the room left on its node's disk.
const ROOM_EVERY: Duration = Duration::from_millis(250);
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
        .map(|m| match &m.detail {
            Some(d) => format!("{} {} ({d})", m.name, state_name(m.state)),
            None => format!("{} {}", m.name, state_name(m.state)),
        })
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
        MemberDigestState::Unreadable => "did not hash its vault",
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
        DigestAnswer::Unreadable { detail } => {
            m.state = MemberDigestState::Unreadable;
            m.detail = Some(detail.clone());
        }
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
                        Some(format!(
                            "this node ({}) did not hash its own vault: {detail}",
                            self.cluster.me().name
                        )),
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
                        detail: None,
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

/// Why a member let go of a hash before it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveUp {
    /// It ran for [`HASH_LIMIT`]: no comparison waits longer for it.
    Time,
    /// The disk lost half the room it had above its floor when the hash began (bytes
    /// above the floor then and now).
    Room { at_start: u64, now: u64 },
}

impl GiveUp {
    /// The metric's label.
    fn reason(self) -> &'static str {
        match self {
            GiveUp::Time => "time",
            GiveUp::Room { .. } => "room",
        }
    }
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::store::mib;
        match self {
            GiveUp::Time => write!(
                f,
                "it ran for {} s, longer than any comparison waits",
                HASH_LIMIT.as_secs()
            ),
            GiveUp::Room { at_start, now } => write!(
                f,
                "the data directory's filesystem had {:.1} MiB free above \
                 health.storage_min_free_bytes when the hash began and {:.1} MiB now; its \
                 read keeps the vault's file from reusing pages, so it lets go before \
                 the disk reaches its floor",
                mib(*at_start),
                mib(*now)
            ),
        }
    }
}

/// Whether a hash begun with `at_start` bytes free above the disk's floor must let go
/// of its read now that `now` are: half of that room is gone (or none is left). While
/// the read is held, redb cannot reuse a page freed since, so the vault's file grows by
/// every page written meanwhile; a comparison is not worth taking a node to its floor,
/// where it stops being ready and a leader hands over (decision 0037).
fn room_taken(at_start: u64, now: u64) -> bool {
    now == 0 || now < at_start / 2
}

/// Resolves once the node's disk has lost half the room it had above its floor when it
/// was first called ([`room_taken`]), with the room then and now; never when free space
/// is not measured (no floor configured, or a simulated disk).
async fn room_lost(health: &crate::failover::Health) -> (u64, u64) {
    let Some(at_start) = health.room_above_floor() else {
        return std::future::pending().await;
    };
    loop {
        if let Some(now) = health
            .room_above_floor()
            .filter(|&n| room_taken(at_start, n))
        {
            return (at_start, now);
        }
        crate::runtime::sleep(ROOM_EVERY).await;
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
        let hashing = svc
            .cluster
            .hash_mark(mark, stop.clone(), svc.faults.clone());
        tokio::pin!(hashing);
        let give_up = || stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (hashed, why) = tokio::select! {
            biased;
            hashed = &mut hashing => (hashed, None),
            () = crate::runtime::sleep(HASH_LIMIT) => {
                give_up();
                (hashing.await, Some(GiveUp::Time))
            }
            (at_start, now) = room_lost(&svc.failover.health) => {
                give_up();
                (hashing.await, Some(GiveUp::Room { at_start, now }))
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let mut h = svc.compares.hashes();
        h.hashing = None;
        let check_hex = format!("{check:016x}");
        match hashed {
            Ok(None) => {
                let why = why.unwrap_or(GiveUp::Time);
                let said = why.to_string();
                tracing::warn!(check = %check_hex, index, seconds, reason = why.reason(), "gave up hashing the vault for a comparison: {said}");
                svc.metrics.digest_given_up(why.reason());
                h.done
                    .push_back(Err((check, format!("gave up hashing: {said}"))));
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
            detail: None,
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
        // A member that says why it did not hash is quoted.
        let mut member_said = vec![
            member(1, "main", Some("aa"), Hashed),
            member(2, "dr", Some("aa"), Hashed),
            member(3, "bk", None, Unreadable),
        ];
        member_part(
            &mut member_said[2],
            &DigestAnswer::Unreadable {
                detail: "gave up hashing: the disk".into(),
            },
        );
        let (state, detail) = verdict(&mut member_said, Some("aa"));
        assert_eq!(state, CompareState::Incomplete);
        assert_eq!(
            detail.as_deref(),
            Some("not every member hashed its vault: bk did not hash its vault (gave up hashing: the disk)")
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

    #[test]
    fn a_hash_lets_go_once_half_the_room_above_the_floor_is_gone() {
        const MIB: u64 = 1 << 20;
        // 100 MiB above the floor when the hash began: held down to 50 MiB, let go under.
        assert!(!room_taken(100 * MIB, 100 * MIB));
        assert!(!room_taken(100 * MIB, 50 * MIB));
        assert!(room_taken(100 * MIB, 50 * MIB - 1));
        // Room that grew meanwhile (space freed) is no reason to let go.
        assert!(!room_taken(100 * MIB, 400 * MIB));
        // At or under the floor, a hash lets go at once, however little it began with.
        assert!(room_taken(1, 0));
        assert!(room_taken(0, 0));
        let said = GiveUp::Room {
            at_start: 100 * MIB,
            now: 49 * MIB,
        }
        .to_string();
        assert!(
            said.contains("100.0 MiB free above health.storage_min_free_bytes")
                && said.contains("49.0 MiB now"),
            "{said}"
        );
        assert_eq!(GiveUp::Time.reason(), "time");
    }
}
