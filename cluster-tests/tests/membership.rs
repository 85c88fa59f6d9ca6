//! Membership changes with real processes: bk is replaced by a new node at a new
//! address under a steady write load (`kura member replace`: add as a learner, catch
//! up by snapshot, promote through joint consensus, remove the old one); and the
//! changes an operator must not make by accident are refused.

use kura_cluster_tests::load::{missing, Writers};
use kura_cluster_tests::procs::{
    new_merchant, operator_config, tokenize_request, wait_for, ProcCluster,
};
use kura_sdk::{Error, ProblemCode};
use std::time::Duration;
use tokio::time::Instant;

fn pan(i: u32) -> String {
    (0..10)
        .map(|d| format!("4{:08}377{:03}{d}", 52_000_000 + i, i % 1000))
        .find(|p| kura_node::vault::card::luhn_valid(p))
        .expect("one check digit fits")
}

fn request(w: u32, seq: u64) -> kura_sdk::TokenizeRequest {
    let i = w * 1_000_000 + seq as u32;
    tokenize_request(&pan(i), Some(&format!("w{w}-{seq}")))
}

/// Small snapshots, so that the new node can only catch up from one.
const SMALL_SNAPSHOTS: &str =
    "[raft]\nsnapshot_every_entries = 100\nlog_entries_kept_after_snapshot = 10\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bk_is_replaced_under_load_without_a_gap_or_a_lost_write_and_the_old_bk_is_refused() {
    let mut c = ProcCluster::start(SMALL_SNAPSHOTS);
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("move").await;
    // Writes through main and dr only: bk is the node leaving.
    let writers = Writers::start(&c.client(&[0, 1], &key), 4, Duration::ZERO, request);
    wait_for(
        "writes before the change",
        Duration::from_secs(30),
        || async { writers.count() >= 300 },
    )
    .await;

    let bk2 = c.add_node("bk2", "bk", true);
    let config = c.config(0).to_str().unwrap().to_owned();
    let (api, raft, admin) = (
        c.api[bk2].clone(),
        c.raft[bk2].clone(),
        c.admin[bk2].clone(),
    );
    let started = Instant::now();
    let out = c.kura(&[
        "member", "replace", "bk", "--with", "bk2", "--id", "4", "--api", &api, "--raft", &raft,
        "--admin", &admin, "--config", &config,
    ]);
    let ended = Instant::now();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kura member replace:\n{text}");
    assert!(
        text.contains("bk2 is a voter") && text.contains("bk removed"),
        "{text}"
    );
    wait_for(
        "writes after the change",
        Duration::from_secs(30),
        || async { writers.count() >= 600 },
    )
    .await;
    let gap = writers
        .longest_gap(started, ended)
        .expect("writes around the change");
    let done = writers.finish().await;
    eprintln!(
        "replace took {:?}; {} writes acknowledged, {} failed; longest gap during it {gap:?}",
        ended - started,
        done.tokens.len(),
        done.failed
    );
    assert!(
        gap <= Duration::from_secs(1),
        "write gap {gap:?} during the replacement"
    );

    // The membership every node now reports: main, dr and bk2, all voters.
    let leader = c.wait_leader().await;
    let status = c.status(leader).await.unwrap();
    let mut names: Vec<(String, bool)> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m["voter"] == true))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("bk2".into(), true),
            ("dr".into(), true),
            ("main".into(), true)
        ],
        "{status}"
    );
    // bk2 holds the vault (it came in by snapshot: the log before it was purged).
    let target = status["applied_index"].as_u64().unwrap();
    let s = c.wait_applied(bk2, target, "bk2 to apply everything").await;
    assert!(
        s["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "bk2 caught up without a snapshot: {s}"
    );
    assert_eq!(
        c.metric(bk2, "kura_vault_tokens").await,
        c.metric(leader, "kura_vault_tokens").await
    );
    // No acknowledged write lost, read through the new membership.
    let lost = missing(&c.client(&[0, 1, bk2], &key), done.tokens.clone()).await;
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());

    // The old bk, still running, still takes requests. An operator who asks it for a
    // change gets a definite answer: the leader tells the old bk it is not a member
    // before reading the request, so the old bk answers `not_leader` (nothing was
    // done; ask the leader it names), never `outcome_unknown`.
    // A request that gets no answer at all (a timeout on a loaded machine) is asked
    // again; any answer must be that one.
    let mut cfg = operator_config(vec![c.admin[2].clone()]);
    cfg.attempts_max = 1;
    let old_bk = kura_sdk::Client::new(cfg);
    let mut unanswered = Vec::new();
    loop {
        match old_bk.create_merchant(&new_merchant("via-old-bk")).await {
            Err(Error::Unavailable { last, .. })
                if last.contains("not_leader")
                    && last.contains("not count this node as a member") =>
            {
                break
            }
            Err(e @ Error::Ambiguous(_)) if unanswered.len() < 4 => unanswered.push(e),
            other => {
                panic!("an admin write through the removed bk: {other:?} after {unanswered:?}")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = c.admin().merchant("via-old-bk").await;
    assert!(
        matches!(
            &r,
            Err(Error::Api {
                code: ProblemCode::MerchantNotFound,
                ..
            })
        ),
        "the write refused through the old bk was done after all: {r:?}"
    );

    // The old bk is stopped and comes back: the others refuse it; it cannot disturb
    // the cluster (no election it starts reaches anyone), and it learns nothing new.
    c.kill(2);
    let before = c.status(leader).await.unwrap();
    let term = before["term"].as_u64().unwrap();
    let bk_applied = c.status(0).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    c.restart(2);
    c.wait_live(2).await;
    let client = c.client(&[0, 1], &key);
    for i in 0..20 {
        client.tokenize(&request(9, i)).await.expect("writes go on");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = c.status(leader).await.unwrap();
    let old_term = c.status(2).await.map(|s| s["term"].clone());
    assert_eq!(
        now["term"].as_u64().unwrap(),
        term,
        "the term moved while the old bk was back (its own term now {old_term:?}): {now}"
    );
    assert_eq!(now["members"].as_array().unwrap().len(), 3, "{now}");
    let old = c
        .status(2)
        .await
        .expect("the old bk answers its own status");
    assert!(
        old["applied_index"].as_u64().unwrap() <= bk_applied,
        "the removed bk still receives the log: {old}"
    );
    assert_ne!(old["state"], "leader", "{old}");

    // Removing the leader: it hands leadership to the other voter that may lead (dr)
    // first, and the removal runs there.
    wait_for("main to lead again", Duration::from_secs(30), || async {
        c.status(0).await.is_some_and(|s| s["state"] == "leader")
    })
    .await;
    let dr_config = c.config(1).to_str().unwrap().to_owned();
    let out = c.kura(&["member", "remove", "main", "--config", &dr_config]);
    assert!(out.status.success(), "removing the leader: {out:?}");
    let out = c.kura(&["member", "list", "--config", &dr_config]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let names: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["dr", "bk2"], "{list}");
    assert!(list.lines().skip(1).all(|l| l.contains("voter")), "{list}");
    let s = c.status(1).await.unwrap();
    assert_eq!(s["state"], "leader", "{s}");
    c.client(&[1], &key)
        .tokenize(&request(10, 1))
        .await
        .expect("writes go on with dr and bk2");
}

/// A learner that has acknowledged nothing to the leader is not caught up, however few
/// entries the log holds: it is not promoted (nor offered leadership). Here the new
/// member is not running when it is added; once started it catches up by snapshot and
/// is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_has_acknowledged_nothing_is_not_promoted_until_it_catches_up() {
    let mut c = ProcCluster::start(SMALL_SNAPSHOTS);
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("owed").await;
    let client = c.client(&[0, 1, 2], &key);
    for seq in 0..250 {
        client.tokenize(&request(20, seq)).await.expect("a write");
    }
    c.wait_purged(leader, 0, "the leader to purge its log")
        .await;
    // dr2's machine, stopped before it is a member.
    let dr2 = c.add_node("dr2", "dr", false);
    c.kill(dr2);
    let admin = c.admin();
    admin
        .add_member(&kura_sdk::AddMemberIn {
            name: "dr2".into(),
            id: Some(dr2 as u64 + 1),
            role: kura_sdk::Role::Dr,
            api_addr: c.api[dr2].clone(),
            raft_addr: c.raft[dr2].clone(),
            admin_addr: c.admin[dr2].clone(),
            never_lead: false,
        })
        .await
        .expect("added as a learner");
    // dr2 as the leader sees it.
    let dr2_in = |s: &serde_json::Value| {
        s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == "dr2")
            .cloned()
            .unwrap_or_default()
    };
    let s = c.status(c.wait_leader().await).await.unwrap();
    assert!(
        s["last_log_index"].as_u64().unwrap() <= 1_000,
        "the whole log is inside the entry bound: {s}"
    );
    assert!(dr2_in(&s)["lag_entries"].is_null(), "{s}");
    let r = admin.promote_member("dr2").await;
    assert!(
        matches!(
            &r,
            Err(Error::Api { status: 409, code: ProblemCode::MemberNotCaughtUp, detail })
                if detail.contains("acknowledged nothing")
        ),
        "{r:?}"
    );
    let s = c.status(c.wait_leader().await).await.unwrap();
    assert_eq!(dr2_in(&s)["voter"], false, "dr2 stays a learner: {s}");

    // Started, it catches up by snapshot and the promotion goes through.
    c.restart(dr2);
    wait_for("dr2 to be promoted", Duration::from_secs(30), || async {
        admin.promote_member("dr2").await.is_ok()
    })
    .await;
    let s = c.wait_applied(dr2, 250, "dr2 to apply the vault").await;
    assert!(
        s["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "dr2 caught up without a snapshot: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_would_leave_no_quorum_or_no_leader_are_refused_unless_forced() {
    // dr and bk never lead: main is the only node that may.
    let mut c = ProcCluster::prepare_opts("", &[1, 2]);
    for i in 0..3 {
        c.restart(i);
    }
    c.init().await;
    c.wait_leader().await;
    let admin = c.admin();
    wait_for("main to lead", Duration::from_secs(30), || async {
        c.status(0).await.is_some_and(|s| s["state"] == "leader")
    })
    .await;
    // Without main, only bk (never_lead) would be left to lead.
    let r = admin.remove_member("main", false).await;
    assert!(
        matches!(
            &r,
            Err(Error::Api {
                code: ProblemCode::MembershipWithoutLeaderCandidate,
                ..
            })
        ),
        "{r:?}"
    );
    c.kill(1);
    wait_for("main to see dr gone", Duration::from_secs(10), || async {
        c.metric(0, "kura_peer_up{peer=\"dr\"}").await == 0.0
    })
    .await;
    // Removing bk now would leave main and the dead dr: one of two answers.
    let r = admin.remove_member("bk", false).await;
    assert!(
        matches!(
            &r,
            Err(Error::Api {
                status: 409,
                code: ProblemCode::MembershipWouldLoseQuorum,
                ..
            })
        ),
        "{r:?}"
    );
    let r = admin.remove_member("nobody", false).await;
    assert!(matches!(&r, Err(Error::Api { status: 404, .. })), "{r:?}");
    // A new member whose name or address is taken is refused; so is a bad address.
    let mut m = kura_sdk::AddMemberIn {
        name: "dr".into(),
        id: None,
        role: kura_sdk::Role::Dr,
        api_addr: "127.0.0.1:1".into(),
        raft_addr: "127.0.0.1:2".into(),
        admin_addr: String::new(),
        never_lead: false,
    };
    let r = admin.add_member(&m).await;
    assert!(
        matches!(
            &r,
            Err(Error::Api {
                code: ProblemCode::MemberExists,
                ..
            })
        ),
        "{r:?}"
    );
    m.name = "dr2".into();
    m.raft_addr = "nowhere".into();
    let r = admin.add_member(&m).await;
    assert!(
        matches!(
            &r,
            Err(Error::Api {
                status: 400,
                code: ProblemCode::MemberInvalid,
                ..
            })
        ),
        "{r:?}"
    );
    // The membership did not change.
    let s = c.status(0).await.unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 3, "{s}");
    // Forced, it is accepted: the joint configuration needs dr too, so the change
    // completes once dr is back — which is what forcing it means.
    let forced = tokio::spawn(async move { admin.remove_member("bk", true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart(1);
    // The answer may come before dr is back in time, or say the outcome is unknown
    // (the change waits on dr); either way the change completes once dr is back.
    let r = forced.await.unwrap();
    assert!(
        matches!(
            &r,
            Ok(())
                | Err(Error::Ambiguous(_))
                | Err(Error::Api {
                    code: ProblemCode::OutcomeUnknown,
                    ..
                })
        ),
        "forced removal: {r:?}"
    );
    let names = |s: &serde_json::Value| -> Vec<String> {
        s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect()
    };
    wait_for(
        "the forced removal to complete",
        Duration::from_secs(30),
        || async {
            c.status(0)
                .await
                .is_some_and(|s| names(&s) == ["main", "dr"])
        },
    )
    .await;
    let key = c.merchant("after").await;
    c.client(&[0, 1], &key)
        .tokenize(&request(1, 1))
        .await
        .expect("writes again once dr is back");
}
