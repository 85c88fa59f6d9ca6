//! The planes' trust through three real `kura` processes: the peer plane admits only a
//! member's certificate from the cluster CA, and a member's certificate speaks only for
//! its own node; the client API refuses plain HTTP; the admin plane names every
//! operator (audited as `operator:<name>`), lets auditors only read, and takes a
//! break-glass token only where one is configured.

use kura_cluster_tests::procs::{
    client_tls_as, operator_config_as, tokenize_request, wait_for, ProcCluster,
};
use kura_node::cluster::{frames, Encoding};
use kura_node::net::tls::{Identity, OperatorRole};
use kura_node::raft_types::{SnapshotMeta, TypeConfig, Vote};
use kura_sdk::tls::TlsConnector;
use kura_sdk::wire::{tokio_spawner, Connector, HttpPool, TcpConnector, WireError};
use kura_sdk::{Client, ClientConfig, Error};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A term far beyond the cluster's: a node that accepted any of these would move to it.
const FORGED_TERM: u64 = 99;
/// The node the forged requests claim to come from.
const CLAIMED: u64 = 3;

/// The Raft RPCs, each claiming to come from node 3, in `enc`.
fn forged_rpcs(enc: Encoding) -> Vec<(&'static str, Vec<u8>)> {
    let vote = Vote::new_committed(FORGED_TERM, CLAIMED);
    let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote,
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    };
    let ballot: VoteRequest<TypeConfig> = VoteRequest::new(Vote::new(FORGED_TERM, CLAIMED), None);
    let transfer: TransferLeaderRequest<TypeConfig> =
        TransferLeaderRequest::new(vote, CLAIMED, None);
    vec![
        ("/raft/append", enc.encode(&append)),
        ("/raft/vote", enc.encode(&ballot)),
        ("/raft/pre-vote", enc.encode(&ballot)),
        ("/raft/transfer-leader", enc.encode(&transfer)),
    ]
}

/// Every peer route with a well-formed body claiming to come from node 3, and the Raft
/// RPCs again in MessagePack (what members send each other).
fn forged_requests() -> Vec<(&'static str, Option<&'static str>, Vec<u8>)> {
    let msgpack = Encoding::MsgPack;
    let json = forged_json()
        .into_iter()
        .map(|(path, body)| (path, None, body));
    let packed = forged_rpcs(msgpack)
        .into_iter()
        .map(|(path, body)| (path, Some(msgpack.content_type()), body));
    json.chain(packed).collect()
}

fn forged_json() -> Vec<(&'static str, Vec<u8>)> {
    let snapshot = kura_node::cluster::SnapshotDone {
        vote: Vote::new_committed(FORGED_TERM, CLAIMED),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
        },
        transfer: "3-1-0-0".into(),
        len: 0,
    };
    let mut all = forged_rpcs(Encoding::Json);
    all.extend([
        (
            "/raft/snapshot/done",
            serde_json::to_vec(&snapshot).unwrap(),
        ),
        (
            "/peer/v1/cvc",
            br#"{"token":"tok_forged","expires_at_ms":99999999999999,"sealed":"00"}"#.to_vec(),
        ),
        ("/raft/handoff-cause", b"storage 99".to_vec()),
    ]);
    all
}

/// Posts `body` to `path` on `addr` as node `from`, with the cluster's id (as a member
/// would): the status, or the transport error.
async fn post(
    pool: &HttpPool,
    addr: &str,
    path: &str,
    from: u64,
    cluster_id: &str,
    (content_type, body): (Option<&str>, Vec<u8>),
) -> Result<u16, WireError> {
    let mut req = http::Request::post(path)
        .header(http::header::HOST, addr)
        .header("kura-node-id", from)
        .header("kura-cluster-id", cluster_id);
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    pool.send(addr, req, Duration::from_secs(5))
        .await
        .map(|r| r.status().as_u16())
}

/// A client presenting a certificate the cluster CA signed for a plain server (as a
/// merchant's or an acquirer's could be): no `kura://` identity in it.
fn identityless_tls() -> rustls::ClientConfig {
    let dir = tempfile::tempdir().unwrap();
    kura_cluster_tests::procs::write_test_certs(dir.path(), "plain", None);
    kura_sdk::tls::client_config(
        kura_sdk::tls::roots_from_file(&dir.path().join("ca.crt")).unwrap(),
        Some((
            kura_sdk::tls::load_certs(&dir.path().join("plain.crt")).unwrap(),
            kura_sdk::tls::load_key(&dir.path().join("plain.key")).unwrap(),
        )),
    )
    .unwrap()
}

fn pool_as(tls: rustls::ClientConfig) -> HttpPool {
    HttpPool::new(
        Arc::new(TlsConnector::fixed(Arc::new(TcpConnector), tls)),
        tokio_spawner(),
        1 << 20,
    )
}

/// What a node's state looks like from outside, for before/after comparisons.
fn fingerprint(s: &Value) -> Value {
    serde_json::json!({
        "term": s["term"],
        "leader": s["leader_id"],
        "last_log_index": s["last_log_index"],
        "committed_index": s["committed_index"],
        "applied_index": s["applied_index"],
        "snapshot_index": s["snapshot_index"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_plane_admits_only_members_and_each_speaks_only_for_itself() {
    let c = ProcCluster::start("");
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("planes").await;
    c.client(&[0, 1, 2], &key)
        .tokenize(&tokenize_request("4242424242424242", Some("m-1")))
        .await
        .expect("a write before the attacks");
    c.wait_all_applied().await;
    let cluster_id = c.admin_status(leader).await.unwrap()["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_owned();
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(fingerprint(&c.status(i).await.unwrap()));
    }

    // A control: node 2's certificate, speaking as node 2, reaches the peer plane.
    let node2 = pool_as(client_tls_as(Some(&Identity::Node { id: 2 }), false));
    let health = http::Request::get("/peer/v1/health")
        .header(http::header::HOST, &c.raft[0])
        .header("kura-node-id", 2)
        .header("kura-cluster-id", &cluster_id)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let ok = node2.send(&c.raft[0], health, Duration::from_secs(5)).await;
    assert!(
        ok.as_ref().is_ok_and(|r| r.status().is_success()),
        "the control request failed: {:?}",
        ok.map(|r| r.status())
    );

    // Callers the handshake (or the identity check right after it) turns away: no
    // request of theirs gets an answer.
    let strangers = [
        ("no certificate", client_tls_as(None, false)),
        (
            "node 3's name from another CA",
            client_tls_as(Some(&Identity::Node { id: CLAIMED }), true),
        ),
        (
            "an operator's certificate",
            client_tls_as(
                Some(&Identity::Operator {
                    name: "alice".into(),
                    role: OperatorRole::Admin,
                }),
                false,
            ),
        ),
        (
            "a certificate from the cluster CA that names no kura identity",
            identityless_tls(),
        ),
    ];
    for (who, tls) in strangers {
        let pool = pool_as(tls);
        for node in 0..3 {
            for (path, ct, body) in forged_requests() {
                let r = post(&pool, &c.raft[node], path, CLAIMED, &cluster_id, (ct, body)).await;
                assert!(
                    r.is_err(),
                    "{who}: {path} on node {node} got an answer: {r:?}"
                );
            }
        }
    }
    // A node's certificate from the cluster CA whose id is not a member (one removed,
    // say) is told so before its request is read — `403 not_a_member`, so that a
    // request it forwards is known not to have been done — and nothing is done.
    let outsider = pool_as(client_tls_as(Some(&Identity::Node { id: 7 }), false));
    for node in 0..3 {
        for (path, body) in forged_json() {
            let req = http::Request::post(path)
                .header(http::header::HOST, &c.raft[node])
                .header("kura-node-id", 7)
                .header("kura-cluster-id", &cluster_id)
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let r = outsider
                .send(&c.raft[node], req, Duration::from_secs(5))
                .await;
            let r = r.unwrap_or_else(|e| panic!("{path} on node {node}: no answer: {e}"));
            let problem: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(
                (r.status().as_u16(), problem["code"].as_str()),
                (403, Some("not_a_member")),
                "{path} on node {node}: {problem}"
            );
        }
    }

    // Node 2's own certificate cannot speak as node 3: neither by the header nor by the
    // vote inside the request.
    for node in 0..3 {
        for (path, ct, body) in forged_requests() {
            let r = post(
                &node2,
                &c.raft[node],
                path,
                CLAIMED,
                &cluster_id,
                (ct, body),
            )
            .await;
            assert_eq!(
                r.ok(),
                Some(403),
                "node 2 as node 3: {path} ({ct:?}) on node {node}"
            );
        }
        for (path, ct, body) in forged_requests()
            .into_iter()
            .filter(|(p, _, _)| p.starts_with("/raft/") && *p != "/raft/handoff-cause")
        {
            let r = post(&node2, &c.raft[node], path, 2, &cluster_id, (ct, body)).await;
            assert_eq!(
                r.ok(),
                Some(403),
                "node 2 with a vote for node 3: {path} ({ct:?}) on node {node}"
            );
        }
    }

    // The same over framed AppendEntries: the hello must name the certificate's node,
    // and every request's vote too; either refusal ends the connection.
    let node2_tls = TlsConnector::fixed(
        Arc::new(TcpConnector),
        client_tls_as(Some(&Identity::Node { id: 2 }), false),
    );
    for node in 0..3 {
        let addr = &c.raft[node];
        for (hello_as, vote_as) in [(CLAIMED, CLAIMED), (2, CLAIMED)] {
            let mut io = node2_tls.connect(addr).await.unwrap();
            io.write_all(frames::PREFACE).await.unwrap();
            let hello = frames::Hello {
                node: hello_as,
                cluster: cluster_id.clone(),
            };
            frames::write_frame(&mut io, &hello).await.unwrap();
            let admitted: Result<(), String> =
                frames::read_frame(&mut io, frames::ANSWER_BYTES_MAX)
                    .await
                    .unwrap();
            if hello_as == CLAIMED {
                assert!(admitted.is_err(), "a framed hello as node 3 on node {node}");
                continue;
            }
            admitted.unwrap_or_else(|e| panic!("node 2's framed hello on node {node}: {e}"));
            let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
                vote: Vote::new_committed(FORGED_TERM, vote_as),
                prev_log_id: None,
                leader_commit: None,
                entries: vec![],
            };
            frames::write_frame(&mut io, &append).await.unwrap();
            let answer: frames::Answer = frames::read_frame(&mut io, frames::ANSWER_BYTES_MAX)
                .await
                .unwrap();
            assert!(
                answer.is_err(),
                "a framed append for node 3 on node {node}: {answer:?}"
            );
        }
    }

    // A Raft request in an encoding kura does not read is refused as such.
    let ballot: VoteRequest<TypeConfig> = VoteRequest::new(Vote::new(FORGED_TERM, 2), None);
    for node in 0..3 {
        let body = (
            Some("application/cbor"),
            serde_json::to_vec(&ballot).unwrap(),
        );
        let r = post(&node2, &c.raft[node], "/raft/vote", 2, &cluster_id, body).await;
        assert_eq!(r.ok(), Some(415), "an unknown encoding on node {node}");
    }

    // Nothing moved: same terms, leader, logs and state on every node.
    for (i, was) in before.iter().enumerate() {
        assert_eq!(
            &fingerprint(&c.status(i).await.unwrap()),
            was,
            "node {i} changed"
        );
    }
    c.client(&[0, 1, 2], &key)
        .tokenize(&tokenize_request("4242424242424242", Some("m-2")))
        .await
        .expect("writes continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_and_the_peer_plane_refuse_plain_http() {
    let c = ProcCluster::start("");
    c.wait_live(0).await;
    let plain = HttpPool::new(Arc::new(TcpConnector), tokio_spawner(), 1 << 20);
    for addr in [&c.api[0], &c.raft[0]] {
        let req = http::Request::get("/health/live")
            .header(http::header::HOST, addr.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = plain.send(addr, req, Duration::from_secs(5)).await;
        assert!(r.is_err(), "plain HTTP to {addr} got an answer: {r:?}");
    }
}

/// The audit records' actors, in order.
async fn actors(c: &ProcCluster) -> Vec<(String, String)> {
    let page = c
        .admin_call(http::Method::GET, "/admin/v1/audit?limit=1000", None)
        .await;
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn one_shot(mut cfg: ClientConfig) -> Client {
    cfg.attempts_max = 1;
    Client::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_plane_names_each_operator_and_auditors_change_nothing() {
    let c = ProcCluster::start("");
    c.init().await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;

    // Alice, an admin, creates a merchant through a follower: the follower forwards her
    // request to the leader, and the audit trail names her.
    let alice = one_shot(operator_config_as(
        vec![c.admin[follower].clone()],
        "alice",
        OperatorRole::Admin,
    ));
    let made = alice
        .call(
            http::Method::POST,
            "/admin/v1/merchants",
            Some(serde_json::json!({ "merchant_id": "by-alice", "name": "Alice's" })),
        )
        .await
        .expect("alice creates a merchant");
    assert_eq!(made.status.as_u16(), 201);
    assert!(
        actors(&c)
            .await
            .contains(&("merchant.create".to_owned(), "operator:alice".to_owned())),
        "{:?}",
        actors(&c).await
    );

    // Carol, an auditor, reads status, merchants, keys and the audit trail, and may
    // recompute the chain; every change is refused before it runs.
    let carol = one_shot(operator_config_as(
        c.admin.clone(),
        "carol",
        OperatorRole::Auditor,
    ));
    for path in [
        "/admin/v1/merchants",
        "/admin/v1/keys",
        "/admin/v1/audit",
        "/admin/v1/cluster/status",
    ] {
        let r = carol.call(http::Method::GET, path, None).await;
        assert!(r.is_ok(), "auditor reads {path}: {r:?}");
    }
    let verify = carol
        .call(http::Method::POST, "/admin/v1/audit/verify", None)
        .await
        .expect("auditor verifies the chain");
    assert_eq!(verify.body["ok"], true);
    let before = actors(&c).await.len();
    for (method, path) in [
        (http::Method::POST, "/admin/v1/keys/rotate"),
        (http::Method::POST, "/admin/v1/keys/verify"),
        (
            http::Method::POST,
            "/admin/v1/merchants/by-alice/rotate-key",
        ),
        (http::Method::POST, "/admin/v1/nodes/dr/drain"),
    ] {
        match carol.call(method, path, None).await {
            Err(Error::Api {
                status: 403, code, ..
            }) => {
                assert_eq!(code, "operator_role_forbidden", "{path}")
            }
            other => panic!("an auditor's {path} must be refused, got {other:?}"),
        }
    }
    assert_eq!(
        actors(&c).await.len(),
        before,
        "an auditor's request wrote nothing"
    );

    // Without an operator certificate nobody gets an answer: no certificate (with a
    // merchant's key as bearer), or an operator certificate from another CA.
    let key = c.merchant("shop").await;
    let strangers = [
        ClientConfig::new(c.admin.clone(), &key)
            .with_tls(client_tls_as(None, false))
            .unwrap(),
        ClientConfig::new(c.admin.clone(), "")
            .with_tls(client_tls_as(
                Some(&Identity::Operator {
                    name: "mallory".into(),
                    role: OperatorRole::Admin,
                }),
                true,
            ))
            .unwrap(),
    ];
    for cfg in strangers {
        let r = one_shot(cfg)
            .call(http::Method::GET, "/admin/v1/merchants", None)
            .await;
        assert!(
            matches!(r, Err(Error::Unavailable { .. } | Error::Ambiguous(_))),
            "{r:?}"
        );
    }

    // A member's certificate without an operator to speak for is refused and counted.
    let failures = "kura_admin_auth_failures_total{reason=\"forwarded_without_operator\"}";
    let counted = c.metric(0, failures).await;
    let node2 = ClientConfig::new(vec![c.admin[0].clone()], "")
        .with_tls(client_tls_as(Some(&Identity::Node { id: 2 }), false))
        .unwrap();
    match one_shot(node2)
        .call(http::Method::GET, "/admin/v1/merchants", None)
        .await
    {
        Err(Error::Api { status: 401, .. }) => {}
        other => panic!("a node certificate alone must not be an operator: {other:?}"),
    }
    assert_eq!(c.metric(0, failures).await, counted + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_token_works_only_where_configured_and_every_use_is_on_record() {
    let token = "break-glass-token-for-tests-0001";
    let c = ProcCluster::start_with_break_glass(token);
    c.init().await;
    c.wait_leader().await;
    let glass = |bearer: &str| {
        one_shot(
            ClientConfig::new(c.admin.clone(), bearer)
                .with_tls(client_tls_as(None, false))
                .unwrap(),
        )
    };
    let uses = "kura_admin_break_glass_uses_total";
    let used_before = c.metric(0, uses).await + c.metric(1, uses).await + c.metric(2, uses).await;
    let made = glass(token)
        .call(
            http::Method::POST,
            "/admin/v1/merchants",
            Some(serde_json::json!({ "merchant_id": "glass", "name": "Glass" })),
        )
        .await
        .expect("the break-glass token creates a merchant");
    assert_eq!(made.status.as_u16(), 201);
    assert!(actors(&c)
        .await
        .contains(&("merchant.create".to_owned(), "break-glass".to_owned())));
    wait_for("the use counted", Duration::from_secs(5), || async {
        c.metric(0, uses).await + c.metric(1, uses).await + c.metric(2, uses).await > used_before
    })
    .await;
    match glass("not-the-token-at-all-0000000000")
        .call(http::Method::GET, "/admin/v1/merchants", None)
        .await
    {
        Err(Error::Api { status: 401, .. }) => {}
        other => panic!("a wrong token must be refused: {other:?}"),
    }
}

/// When the certificate `addr` serves expires (Unix seconds), seen by a new TLS client
/// (with node 2's certificate, so the peer plane answers too).
async fn served_not_after(addr: &str) -> Option<i64> {
    let tls = client_tls_as(Some(&Identity::Node { id: 2 }), false);
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = kura_sdk::tls::server_name(addr).ok()?;
    let s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .ok()?;
    let cert = s.get_ref().1.peer_certificates()?.first()?.clone();
    Some(
        kura_node::net::tls::describe(&cert)?
            .not_after
            .unix_timestamp(),
    )
}

fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_in_place_is_served_without_a_restart_and_a_broken_one_is_not() {
    let c = ProcCluster::start("");
    c.init().await;
    c.wait_leader().await;
    let day = 86_400;
    let first = served_not_after(&c.api[0])
        .await
        .expect("node 0 serves TLS");

    // The operator renews main's certificate (10 days instead of 30): key, then cert.
    let renewed = kura_cluster_tests::procs::test_node_cert(1, 10);
    let certs = c.dir.path().join("certs");
    replace(&certs.join("main.key"), renewed.key_pem.as_bytes());
    replace(&certs.join("main.crt"), renewed.cert_pem.as_bytes());
    for addr in [&c.api[0], &c.raft[0], &c.admin[0]] {
        wait_for(
            "the renewed certificate served",
            Duration::from_secs(10),
            || async {
                served_not_after(addr)
                    .await
                    .is_some_and(|t| t < first - 15 * day)
            },
        )
        .await;
    }
    let renewed_at = served_not_after(&c.api[0]).await.unwrap();

    // A broken file is refused: the renewed material stays in use, and the cluster works.
    replace(
        &certs.join("main.crt"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served_not_after(&c.api[0]).await, Some(renewed_at));
    let key = c.merchant("after-rotation").await;
    c.client(&[0], &key)
        .tokenize(&tokenize_request("4242424242424242", Some("m-1")))
        .await
        .expect("writes through main after its rotation");
    let log = std::fs::read_to_string(c.log_path(0)).unwrap();
    assert!(
        log.contains("renewed TLS files cannot be used"),
        "the broken file is reported"
    );
}
