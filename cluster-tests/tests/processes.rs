//! Three real `kura` processes on loopback: forwarding, SIGKILL failover, catch-up by
//! snapshot, whole-cluster crash with no acknowledged write lost, a corrupt log refused
//! at start, the init guard, and no card number anywhere on disk or in the logs.

use kura_cluster_tests::procs::{
    copy_dir, files, first_needle_in, tls_connector, tokenize_request, wait_for, ProcCluster, NAMES,
};
use kura_node::vault::card::luhn_check_digit;
use kura_sdk::{Error, TokenizeRequest};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A Luhn-valid Visa test PAN unique to `i`, with a digit pattern that will not occur by chance.
fn pan(i: u32) -> String {
    let body = format!("4{:08}917{:03}", 31_000_000 + i, i % 1000);
    format!("{body}{}", luhn_check_digit(&body))
}

fn tokenize_req(i: u32) -> TokenizeRequest {
    tokenize_request(&pan(i), Some(&format!("member-{i}")))
}

fn assert_no_pan_on_disk(c: &ProcCluster, pans: &[String]) {
    let all = files(c.dir.path());
    assert!(
        all.iter().any(|p| p.ends_with("kura.redb")),
        "expected databases under {:?}",
        c.dir.path()
    );
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            first_needle_in(&bytes, pans.iter().map(|p| p.as_bytes())).is_none(),
            "PAN found in {}",
            f.display()
        );
    }
}

const SMALL_SNAPSHOTS: &str =
    "[raft]\nsnapshot_every_entries = 20\nlog_entries_kept_after_snapshot = 5\n";
/// `snapshot_every_entries` in [`SMALL_SNAPSHOTS`].
const SMALL_SNAPSHOT_ENTRIES: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_leader_sigkill_fails_over_and_old_leader_catches_up_by_snapshot() {
    let mut c = ProcCluster::start(SMALL_SNAPSHOTS);
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("shop").await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // Writes sent only to a follower succeed; reads from the other follower see them.
    let via_follower = c.client(&[follower], &key);
    let via_other = c.client(&[other], &key);
    let mut tokens = Vec::new();
    let mut pans = Vec::new();
    for i in 0..10 {
        let t = via_follower
            .tokenize(&tokenize_req(i))
            .await
            .expect("tokenize via follower");
        assert_eq!(t.last4, pan(i)[12..]);
        assert_eq!(
            via_other
                .get_token(&t.token)
                .await
                .expect("read via other follower"),
            t
        );
        tokens.push(t.token);
        pans.push(pan(i));
    }
    // A token is invisible to another merchant.
    let stranger = c.client(&[0, 1, 2], &c.merchant("other-shop").await);
    assert!(matches!(
        stranger.get_token(&tokens[0]).await,
        Err(Error::Api { status: 404, .. })
    ));

    // SIGKILL the leader; the survivors elect a new one and serve writes. Its log's
    // end, read just before (two more entries of its own could follow in between):
    // once the new leader has purged past it, only a snapshot can catch it up.
    let old_last = c.status(leader).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap()
        + 2;
    c.kill(leader);
    let killed_at = Instant::now();
    let everyone = c.client(&[0, 1, 2], &key);
    let t = everyone
        .tokenize(&tokenize_req(100))
        .await
        .expect("write after leader crash");
    println!(
        "first write after SIGKILL of {} (its log ending at or before {old_last}) took {:?}",
        NAMES[leader],
        killed_at.elapsed()
    );
    tokens.push(t.token);
    pans.push(pan(100));
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);

    // Enough writes while it is down that the new leader snapshots and purges its log.
    for i in 101..161 {
        tokens.push(
            everyone
                .tokenize(&tokenize_req(i))
                .await
                .expect("write")
                .token,
        );
        pans.push(pan(i));
    }
    c.wait_purged(
        new_leader,
        old_last,
        "the new leader to snapshot and purge past the old leader's log",
    )
    .await;
    let target = c.status(new_leader).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();

    c.restart(leader);
    let s = c
        .wait_applied(leader, target, "old leader to catch up")
        .await;
    assert!(
        s["snapshot_index"].as_u64().unwrap_or(0) > old_last,
        "caught up without a snapshot: {s}"
    );
    let via_old = c.client(&[leader], &key);
    for t in &tokens {
        via_old
            .get_token(t)
            .await
            .expect("every acknowledged token is readable");
    }

    for i in 0..3 {
        c.kill(i);
    }
    assert_no_pan_on_disk(&c, &pans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_catches_up_by_snapshot_with_no_write_to_prompt_it() {
    let mut c = ProcCluster::start(SMALL_SNAPSHOTS);
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("wipe").await;
    let everyone = c.client(&[0, 1, 2], &key);
    let mut tokens = Vec::new();
    for i in 0..60 {
        let t = everyone.tokenize(&tokenize_req(2_000 + i)).await;
        tokens.push(t.expect("write").token);
    }
    // The disk of a follower is replaced: same id, same config, no data.
    let f = (leader + 1) % 3;
    // Force the path under test: whichever node leads once the follower is back (the
    // leadership may move meanwhile), it no longer holds the log's first entries, so the
    // wiped follower can only catch up from a snapshot.
    for other in (0..3).filter(|&i| i != f) {
        let what = format!(
            "{} to snapshot and purge its log's first entries",
            NAMES[other]
        );
        c.wait_purged(other, 0, &what).await;
    }
    // Snapshots come as far apart as the vault is large (the default), so the leader's
    // latest lags its applied state by more than `snapshot_every_entries` (20) after a
    // few more writes: one the follower would install and then replay the rest after.
    let mut i = 0;
    let lag = |s: &serde_json::Value| {
        s["applied_index"].as_u64().unwrap() - s["snapshot_index"].as_u64().unwrap_or(0)
    };
    while lag(&c.status(leader).await.unwrap()) <= SMALL_SNAPSHOT_ENTRIES {
        let t = everyone.tokenize(&tokenize_req(3_000 + i)).await;
        tokens.push(t.expect("write").token);
        i += 1;
        assert!(i < 500, "the leader's snapshot never fell behind");
    }
    let target = c.status(leader).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    c.kill(f);
    std::fs::remove_dir_all(c.data_dir(f)).unwrap();
    std::fs::create_dir_all(c.data_dir(f)).unwrap();
    c.restart(f);
    // No write from here on: the cluster must notice the empty log by itself (openraft
    // alone keeps sending from where it believes the follower is, forever).
    let s = c
        .wait_applied(f, target, "the wiped follower to catch up")
        .await;
    // The snapshot it got was built for it, not the stale one: it covers the writes
    // made before the wipe, less at most `snapshot_every_entries`.
    assert!(
        s["snapshot_index"].as_u64().unwrap_or(0) + SMALL_SNAPSHOT_ENTRIES >= target,
        "caught up from a snapshot more than {SMALL_SNAPSHOT_ENTRIES} entries behind {target}: {s}"
    );
    // It wrote its vault while the snapshot arrived, and installing took that vault.
    let log = std::fs::read_to_string(c.log_path(f)).unwrap();
    let installed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("snapshot installed"))
        .collect();
    assert!(
        !installed.is_empty()
            && installed
                .iter()
                .all(|l| l.contains("written_on_arrival=true")),
        "{installed:?}"
    );
    let via_wiped = c.client(&[f], &key);
    for t in &tokens {
        via_wiped.get_token(t).await.expect("readable through it");
    }
}

/// Flips one bit in the payload of the middle record of the Raft log segment `seg`
/// (records: `len u32 | crc u32 | index u64 | payload`, little-endian, then zeros).
fn flip_a_bit_mid_log(seg: &std::path::Path) {
    let mut bytes = std::fs::read(seg).unwrap();
    let ends = kura_node::store::record_ends(&bytes);
    let starts: Vec<usize> = std::iter::once(0)
        .chain(ends.iter().copied())
        .take(ends.len())
        .collect();
    assert!(
        starts.len() > 20,
        "{} records in {}",
        starts.len(),
        seg.display()
    );
    bytes[starts[starts.len() / 2] + 16 + 1] ^= 0x08;
    std::fs::write(seg, &bytes).unwrap();
}

/// A follower's Raft log changed on disk after it was written (one bit, in an entry
/// it made durable and acknowledged): started again, it refuses to start, says that
/// its log is corrupt and what to do, and changes nothing (cutting the log there
/// would drop entries a quorum counted on). Started with an empty data directory, as
/// the message says, it catches up and serves every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_is_corrupt_refuses_to_start_and_catches_up_started_empty() {
    let mut c = ProcCluster::start("");
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("bitrot").await;
    let everyone = c.client(&[0, 1, 2], &key);
    let mut tokens = Vec::new();
    for i in 0..80 {
        let t = everyone.tokenize(&tokenize_req(5_000 + i)).await;
        tokens.push(t.expect("write").token);
    }
    c.wait_all_applied().await;
    let f = (leader + 1) % 3;
    c.kill(f);
    let wal = c.data_dir(f).join("kura.wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    flip_a_bit_mid_log(&segments[0]);
    let before: Vec<Vec<u8>> = segments.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let logged = std::fs::metadata(c.log_path(f)).unwrap().len() as usize;
    c.restart(f);
    let status = c.wait_exit(f, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(c.log_path(f)).unwrap();
    let said = &log[logged..];
    assert!(
        !status.success(),
        "{} starts on a corrupt log: {said}",
        NAMES[f]
    );
    assert!(
        said.contains("raft log:")
            && said.contains("the log is corrupt")
            && said.contains("start the node again with an empty one")
            && !said.contains("panicked"),
        "it says why, without a panic: {said}"
    );
    let after: Vec<Vec<u8>> = segments.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after, "its log is left as it was");

    // What the message says to do: its data directory moved aside, started empty.
    let aside = c.data_dir(f).with_extension("corrupt");
    std::fs::rename(c.data_dir(f), &aside).unwrap();
    std::fs::create_dir_all(c.data_dir(f)).unwrap();
    c.restart(f);
    let target = c.status(leader).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    c.wait_applied(f, target, "the follower started empty to catch up")
        .await;
    let via_it = c.client(&[f], &key);
    for t in &tokens {
        via_it.get_token(t).await.expect("readable through it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_all_nodes_mid_load_loses_no_acknowledged_write() {
    let mut c = ProcCluster::start(SMALL_SNAPSHOTS);
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("shop").await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (client, acked) = (c.client(&[0, 1, 2], &key), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                match client.tokenize(&tokenize_req(w * 10_000 + i)).await {
                    Ok(t) => acked.lock().unwrap().push(t.token),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("some writes", Duration::from_secs(30), || async {
        acked.lock().unwrap().len() >= 100
    })
    .await;
    for i in 0..3 {
        c.kill(i);
    }
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    println!("{} writes acknowledged before the crash", acked.len());

    for i in 0..3 {
        c.restart(i);
    }
    c.wait_leader().await;
    let client = c.client(&[0, 1, 2], &key);
    for t in &acked {
        client
            .get_token(t)
            .await
            .unwrap_or_else(|e| panic!("acknowledged token {t} lost: {e}"));
    }
    client
        .tokenize(&tokenize_req(99_999))
        .await
        .expect("the cluster serves writes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_is_idempotent_and_a_node_with_data_never_joins_another_cluster() {
    let mut a = ProcCluster::start("");
    a.init().await;
    a.wait_leader().await;
    let again = a
        .admin()
        .call(http::Method::POST, "/admin/v1/init", None)
        .await
        .expect("second init");
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.body["already_initialized"], true);
    assert_eq!(
        again.body["cluster_id"],
        a.admin_status(0).await.unwrap()["cluster_id"]
    );
    // The public status does not give the cluster id away.
    assert_eq!(
        a.status(0).await.unwrap()["cluster_id"],
        serde_json::Value::Null
    );

    // Cluster B's bk starts from a copy of cluster A's bk: it holds A's data and id.
    a.wait_for_replicated_cluster_id(2).await;
    a.kill(2);
    let mut b = ProcCluster::prepare("");
    copy_dir(&a.data_dir(2), &b.data_dir(2));
    for i in 0..3 {
        b.restart(i);
    }
    for i in 0..3 {
        b.wait_live(i).await;
    }
    match b
        .admin()
        .call(http::Method::POST, "/admin/v1/init", None)
        .await
    {
        Err(Error::Api {
            status: 409,
            code,
            detail,
        }) => {
            assert_eq!(code, "init_refused");
            assert!(detail.contains("already belongs to cluster"), "{detail}");
        }
        other => panic!("init with a member of another cluster must be refused, got {other:?}"),
    }
    assert_eq!(
        b.admin_status(0).await.unwrap()["cluster_id"],
        serde_json::Value::Null,
        "B formed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_transfer_moves_leadership_to_the_named_node_and_writes_continue() {
    let c = ProcCluster::start("");
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("shop").await;
    let client = c.client(&[0, 1, 2], &key);
    let config = c.config(0).to_str().unwrap().to_owned();
    for target in [(leader + 1) % 3, (leader + 2) % 3, leader] {
        if target == leader {
            // The last one as an operator types it.
            let out = c.kura(&[
                "leader",
                "transfer",
                "--to",
                NAMES[target],
                "--config",
                &config,
            ]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{out:?}");
            assert_eq!(text.trim(), format!("{} leads", NAMES[target]));
        } else {
            let r = c
                .admin()
                .transfer_leader(NAMES[target])
                .await
                .expect("transfer");
            assert_eq!(r.leader, NAMES[target]);
        }
        let s = c.status(target).await.unwrap();
        assert_eq!(
            s["state"], "leader",
            "{} should lead after the transfer: {s}",
            NAMES[target]
        );
        client
            .tokenize(&tokenize_req(target as u32))
            .await
            .expect("writes continue after a transfer");
    }
    // Each transfer is in the audit trail, by the operator who asked, though the node
    // that made it no longer led when it recorded it.
    let mut transfers = Vec::new();
    let mut actions = Vec::new();
    let mut from = 0;
    loop {
        let page = c.admin().audit_page(from, 1000).await.expect("audit page");
        actions.extend(page.records.iter().map(|r| r.action.clone()));
        transfers.extend(page.records.into_iter().filter_map(|r| {
            let to = r.detail.strip_prefix("leader.transfer: ")?.to_owned();
            (r.action == "admin.action").then_some((to, r.actor))
        }));
        match page.next_from_seq {
            Some(next) => from = next,
            None => break,
        }
    }
    let wanted: Vec<String> = [(leader + 1) % 3, (leader + 2) % 3, leader]
        .iter()
        .map(|t| format!("to {}", NAMES[*t]))
        .collect();
    assert_eq!(
        transfers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        wanted,
        "{transfers:?} in {actions:?}"
    );
    assert!(
        transfers.iter().all(|(_, by)| by.starts_with("operator:")),
        "{transfers:?}"
    );
    // The leader's metrics reflect what just happened.
    let metrics = c
        .client(&[leader], "")
        .call(http::Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    let text = metrics.body.as_str().expect("text exposition").to_owned();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(value("kura_raft_is_leader"), 1.0);
    assert_eq!(value("kura_raft_has_leader"), 1.0);
    let operator = text
        .lines()
        .find(|l| l.starts_with(r#"kura_raft_leader_changes_total{cause="operator"} "#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        operator.is_some_and(|n| n >= 3.0),
        "three operator transfers were seen, labelled by cause:\n{text}"
    );
    assert!(value("kura_raft_applied_index") >= 5.0);
    assert!(value("kura_store_log_fsync_duration_seconds_count") > 0.0);
    assert!(
        text.contains(
            "kura_api_requests_total{endpoint=\"/v1/tokens\",method=\"POST\",status_class=\"2xx\"}"
        ),
        "{text}"
    );

    // `kura status -o json`: every node's document, the same leader in each.
    let out = c.kura(&["status", "-o", "json", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(docs.len(), 3);
    for d in &docs {
        assert_eq!(d["status"]["leader_name"], NAMES[leader], "{d}");
    }
    let table = c.kura(&["status", "-o", "table", "--config", &config]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with(&format!("leader {}", NAMES[leader])),
        "{table}"
    );
    let out = c.kura(&["leader", "transfer", "--to", "nowhere", "--config", &config]);
    assert!(!out.status.success());

    let unknown = c.admin().transfer_leader("nowhere").await;
    assert!(
        matches!(unknown, Err(Error::Api { status: 404, .. })),
        "{unknown:?}"
    );
}

/// Sends raw bytes to `/v1/tokens` on `addr` and returns (status, content type, body).
async fn raw_tokenize(addr: &str, key: &str, body: Vec<u8>) -> (u16, String, serde_json::Value) {
    use kura_sdk::wire::{tokio_spawner, HttpPool};
    let pool = HttpPool::new(tls_connector(), tokio_spawner(), 1 << 20);
    let req = http::Request::post("/v1/tokens")
        .header(http::header::HOST, addr)
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = pool
        .send(addr, req, Duration::from_secs(5))
        .await
        .expect("an answer");
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        resp.status().as_u16(),
        ct,
        serde_json::from_slice(resp.body()).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_with_a_stable_code_and_writes_nothing() {
    let c = ProcCluster::start("");
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("shop").await;
    let follower = (leader + 1) % 3;
    c.client(&[follower], &key)
        .tokenize(&tokenize_req(1))
        .await
        .expect("a good write first");
    let before = c.status(leader).await.unwrap()["last_log_index"].clone();

    let good = |number: &str| {
        serde_json::to_vec(&serde_json::json!({
            "card": {"number": number, "exp_month": 12, "exp_year": 2031}, "kind": "card_on_file", "member_id": "m"
        }))
        .unwrap()
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (vec![b' '; 200 * 1024], key.as_str(), 413, "request_too_large"),
        (b"{not json".to_vec(), key.as_str(), 400, "invalid_json"),
        (br#"{"card":{"number":"4242424242424242","exp_month":12,"exp_year":2031},"kind":"gift"}"#.to_vec(), key.as_str(), 400, "invalid_json"),
        (good("4242424242424241"), key.as_str(), 422, "card_number_luhn"),
        (good("4242-4242-4242-4242"), key.as_str(), 422, "card_number_not_digits"),
        (good("42424242"), key.as_str(), 422, "card_number_length"),
        (good("4242424242424242"), "sk_not_a_key", 401, "unauthorized"),
    ];
    for node in [leader, follower] {
        for (body, bearer, status, code) in &cases {
            let (got, ct, problem) = raw_tokenize(&c.api[node], bearer, body.clone()).await;
            assert_eq!(
                (got, problem["code"].as_str().unwrap_or_default()),
                (*status, *code),
                "node {node}: {problem}"
            );
            assert_eq!(ct, "application/problem+json");
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                !detail.contains("4242"),
                "the detail must not echo the card: {detail}"
            );
        }
    }
    assert_eq!(
        c.status(leader).await.unwrap()["last_log_index"],
        before,
        "refused requests wrote nothing"
    );
    c.client(&[leader], &key)
        .tokenize(&tokenize_req(2))
        .await
        .expect("the node still serves");
}

/// A body far over the limit is refused before it has all arrived; the client, still
/// sending, must get the refusal and not a connection reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_problem_while_the_client_is_still_sending_it() {
    let c = ProcCluster::start("");
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("shop").await;
    let follower = (leader + 1) % 3;
    for node in [leader, follower] {
        for _ in 0..5 {
            let (got, ct, problem) = raw_tokenize(&c.api[node], &key, vec![b' '; 4 << 20]).await;
            assert_eq!(
                (got, ct.as_str()),
                (413, "application/problem+json"),
                "node {node}"
            );
            assert_eq!(
                problem["code"], "request_too_large",
                "node {node}: {problem}"
            );
        }
    }
    c.client(&[follower], &key)
        .tokenize(&tokenize_req(3))
        .await
        .expect("the node still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_on_file_is_registered_once_per_member_listed_and_deleted_by_its_merchant_only() {
    let c = ProcCluster::start("");
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("shop").await;
    let other = c.client(&[0, 1, 2], &c.merchant("other-shop").await);
    let via = |i: usize| c.client(&[i], &key);

    // The same card for the same member, sent to three different nodes: one token.
    let first = via(0).tokenize(&tokenize_req(7)).await.expect("register");
    for i in 1..3 {
        let again = via(i)
            .tokenize(&tokenize_req(7))
            .await
            .expect("register again");
        assert_eq!(
            again.token, first.token,
            "registering the same card again returns the existing token"
        );
    }
    let mut second_card = tokenize_req(8);
    second_card.member_id = Some("member-7".into());
    let second = via(1).tokenize(&second_card).await.expect("second card");
    assert_ne!(second.token, first.token);

    let list = |client: kura_sdk::Client| async move {
        let r = client
            .call(http::Method::GET, "/v1/members/member-7/cards", None)
            .await
            .expect("list");
        let mut tokens: Vec<String> = r.body["cards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["token"].as_str().unwrap().to_owned())
            .collect();
        tokens.sort();
        tokens
    };
    let mut both = vec![first.token.clone(), second.token.clone()];
    both.sort();
    assert_eq!(list(via(2)).await, both);
    assert!(
        list(other.clone()).await.is_empty(),
        "another merchant sees no cards for this member"
    );

    // Another merchant cannot delete it; the owner can, once.
    let path = format!("/v1/members/member-7/cards/{}", first.token);
    assert!(matches!(
        other.call(http::Method::DELETE, &path, None).await,
        Err(Error::Api { status: 404, .. })
    ));
    assert_eq!(
        via(2)
            .call(http::Method::DELETE, &path, None)
            .await
            .expect("delete")
            .status
            .as_u16(),
        204
    );
    assert!(matches!(
        via(0).call(http::Method::DELETE, &path, None).await,
        Err(Error::Api { status: 404, .. })
    ));
    assert!(
        matches!(
            via(0).get_token(&first.token).await,
            Err(Error::Api { status: 404, .. })
        ),
        "gone for good"
    );
    assert_eq!(list(via(0)).await, vec![second.token.clone()]);

    // Registering the deleted card again makes a new token.
    let fresh = via(0)
        .tokenize(&tokenize_req(7))
        .await
        .expect("re-register");
    assert_ne!(fresh.token, first.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_token_used_concurrently_through_two_nodes_succeeds_exactly_once() {
    let c = ProcCluster::start("[api]\none_time_token_ttl_s = 2\n");
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("shop").await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let one_time = |i: u32| tokenize_request(&pan(i), None);
    for round in 0..5u32 {
        let t = c
            .client(&[leader], &key)
            .tokenize(&one_time(round))
            .await
            .expect("one-time token")
            .token;
        let (ca, cb) = (c.client(&[a], &key), c.client(&[b], &key));
        let (ta, tb) = (t.clone(), t.clone());
        let member = format!("member-{round}");
        let (ma, mb) = (member.clone(), member.clone());
        let ra = tokio::spawn(async move { ca.register_card(&ma, &ta).await });
        let rb = tokio::spawn(async move { cb.register_card(&mb, &tb).await });
        let results = [ra.await.unwrap(), rb.await.unwrap()];
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let used = results.iter().filter(|r| matches!(r, Err(Error::Api { status: 409, code, .. }) if code == "token_already_used")).count();
        assert_eq!((ok.len(), used), (1, 1), "round {round}: {results:?}");
        let card = ok[0].token.as_str();
        assert_ne!(card, t, "a new card-on-file token");
        let on_file = c
            .client(&[0, 1, 2], &key)
            .get_token(card)
            .await
            .expect("the card is on file");
        assert_eq!(
            (on_file.kind.as_str(), on_file.last4.as_str()),
            ("card_on_file", &pan(round)[12..])
        );
        // And never again, on any node.
        for i in 0..3 {
            let again = c.client(&[i], &key).register_card(&member, &t).await;
            assert!(
                matches!(again, Err(Error::Api { status: 409, .. })),
                "{again:?}"
            );
        }
    }
    // Expired tokens are refused; another merchant's token does not exist.
    let t = c
        .client(&[leader], &key)
        .tokenize(&one_time(99))
        .await
        .expect("one-time token")
        .token;
    let stranger = c.client(&[0, 1, 2], &c.merchant("other-shop").await);
    let foreign = stranger.register_card("m", &t).await;
    assert!(
        matches!(foreign, Err(Error::Api { status: 404, .. })),
        "{foreign:?}"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let late = c.client(&[a], &key).register_card("m", &t).await;
    assert!(
        matches!(late, Err(Error::Api { status: 410, ref code, .. }) if code == "token_expired"),
        "{late:?}"
    );
}
