//! Payments through three real `kura` processes and two `kura acquirer-sim` processes
//! (cafis, cardnet): the API and its idempotency rules, a leader killed while the
//! acquirer call is in flight (exactly one authorisation, 20 rounds), and a route lost
//! mid-load (payments continue on the other; none authorised on both).

use http::Method;
use kura_cluster_tests::procs::{
    acquirer_toml, raw, tokenize_request, try_raw, wait_for, AcquirerSim, ProcCluster, RawResponse,
};
use kura_node::vault::card::luhn_check_digit;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A Luhn-valid Visa PAN unique to `i` (approved by the simulator).
fn pan(i: u32) -> String {
    let body = format!("4{:08}391{:03}", 71_000_000 + i, i % 1000);
    format!("{body}{}", luhn_check_digit(&body))
}

/// A Luhn-valid 16-digit PAN ending in `last4`.
fn with_last4(i: u32, last4: &str) -> String {
    for d in 0..10 {
        let candidate = format!("4{:09}{d}{last4}", 710_000_000 + i);
        if kura_node::vault::card::luhn_valid(&candidate) {
            return candidate;
        }
    }
    unreachable!("one check position always works")
}

async fn post(
    c: &ProcCluster,
    node: usize,
    key: &str,
    path: &str,
    idem: &str,
    body: Value,
) -> RawResponse {
    raw(
        &c.api[node],
        Method::POST,
        path,
        &[
            ("authorization", &format!("Bearer {key}")),
            ("idempotency-key", idem),
        ],
        Some(body),
    )
    .await
}

async fn get(c: &ProcCluster, node: usize, key: &str, path: &str) -> RawResponse {
    raw(
        &c.api[node],
        Method::GET,
        path,
        &[("authorization", &format!("Bearer {key}"))],
        None,
    )
    .await
}

async fn token(c: &ProcCluster, key: &str, number: &str, kind: &str) -> String {
    let req = tokenize_request(number, (kind == "card_on_file").then_some("m1"));
    c.client(&[0, 1, 2], key)
        .tokenize(&req)
        .await
        .expect("tokenize")
        .token
}

async fn cluster(cafis: &AcquirerSim, cardnet: &AcquirerSim, timeout_ms: u64) -> ProcCluster {
    let c = ProcCluster::start(&acquirer_toml(cafis, cardnet, timeout_ms));
    c.init().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_authorise_capture_refund_and_every_post_is_idempotent() {
    let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let c = cluster(&cafis, &cardnet, 3_000).await;
    let sk = c.merchant("pay").await;
    let cof = token(&c, &sk, &pan(1), "card_on_file").await;
    let body = json!({ "token": cof, "amount": 5000, "currency": "JPY", "order_id": "order-1", "capture": false });
    let first = post(&c, 1, &sk, "/v1/payments", "k1", body.clone()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["state"], "authorized");
    assert_eq!(first.body["route"], "cafis");
    let id = first.body["id"].as_str().unwrap().to_owned();
    // The same key and body: the same answer, nothing done again.
    let again = post(&c, 2, &sk, "/v1/payments", "k1", body.clone()).await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    let other = post(
        &c,
        0,
        &sk,
        "/v1/payments",
        "k1",
        json!({ "token": cof, "amount": 1, "currency": "JPY", "order_id": "order-x" }),
    )
    .await;
    assert_eq!(
        (other.status, other.body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let dup_order = post(&c, 0, &sk, "/v1/payments", "k2", body.clone()).await;
    assert_eq!(
        (dup_order.status, dup_order.body["code"].as_str()),
        (409, Some("order_id_taken"))
    );
    let no_key = raw(
        &c.api[0],
        Method::POST,
        "/v1/payments",
        &[("authorization", &format!("Bearer {sk}"))],
        Some(body.clone()),
    )
    .await;
    assert_eq!(no_key.body["code"], "idempotency_key_required");
    let counters = cafis.counters().await;
    let txn = first.body["gateway_txn_id"].as_str().unwrap();
    assert_eq!(counters["authorizations"][txn], 1, "{counters}");
    assert_eq!(counters["total_authorizations"], 1);

    // Capture part, once; refund in parts, never more than captured.
    let cap = post(
        &c,
        1,
        &sk,
        &format!("/v1/payments/{id}/capture"),
        "k3",
        json!({ "amount": 4000 }),
    )
    .await;
    assert_eq!(
        (
            cap.status,
            cap.body["state"].as_str(),
            cap.body["captured_amount"].as_u64()
        ),
        (200, Some("captured"), Some(4000))
    );
    let cap2 = post(
        &c,
        1,
        &sk,
        &format!("/v1/payments/{id}/capture"),
        "k4",
        json!({}),
    )
    .await;
    assert_eq!(cap2.body["code"], "payment_already_captured");
    let void = post(
        &c,
        2,
        &sk,
        &format!("/v1/payments/{id}/void"),
        "k5",
        json!({}),
    )
    .await;
    assert_eq!(void.body["code"], "payment_state_conflict");
    let r1 = post(
        &c,
        0,
        &sk,
        &format!("/v1/payments/{id}/refund"),
        "k6",
        json!({ "amount": 1500 }),
    )
    .await;
    assert_eq!(r1.body["refunded_amount"], 1500);
    let r1_again = post(
        &c,
        2,
        &sk,
        &format!("/v1/payments/{id}/refund"),
        "k6",
        json!({ "amount": 1500 }),
    )
    .await;
    assert_eq!(r1_again.body, r1.body, "a retried refund refunds once");
    let too_much = post(
        &c,
        0,
        &sk,
        &format!("/v1/payments/{id}/refund"),
        "k7",
        json!({ "amount": 2501 }),
    )
    .await;
    assert_eq!(too_much.body["code"], "amount_invalid");
    let rest = post(
        &c,
        0,
        &sk,
        &format!("/v1/payments/{id}/refund"),
        "k8",
        json!({}),
    )
    .await;
    assert_eq!(
        (
            rest.body["state"].as_str(),
            rest.body["refunded_amount"].as_u64()
        ),
        (Some("refunded"), Some(4000))
    );
    let by_id = get(&c, 2, &sk, &format!("/v1/payments/{id}")).await;
    let kinds: Vec<&str> = by_id.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["opened", "authorized", "captured", "refunded", "refunded"]
    );
    let by_order = get(&c, 1, &sk, "/v1/payments?order_id=order-1").await;
    assert_eq!(by_order.body["payments"][0]["id"], json!(id));

    // A one-time token pays once; a test card declines; another merchant sees nothing.
    let ott = token(&c, &sk, &pan(2), "one_time").await;
    let p2 = post(&c, 0, &sk, "/v1/payments", "k9", json!({ "token": ott, "amount": 100, "currency": "JPY", "order_id": "order-2", "capture": true })).await;
    assert_eq!(
        (p2.status, p2.body["state"].as_str()),
        (201, Some("captured"))
    );
    let p2b = post(
        &c,
        0,
        &sk,
        "/v1/payments",
        "k10",
        json!({ "token": ott, "amount": 100, "currency": "JPY", "order_id": "order-3" }),
    )
    .await;
    assert_eq!(p2b.body["code"], "token_already_used");
    let declining = token(&c, &sk, &with_last4(3, "0002"), "card_on_file").await;
    let p3 = post(
        &c,
        1,
        &sk,
        "/v1/payments",
        "k11",
        json!({ "token": declining, "amount": 100, "currency": "JPY", "order_id": "order-4" }),
    )
    .await;
    assert_eq!(
        (p3.status, p3.body["state"].as_str()),
        (201, Some("declined"))
    );
    let other_sk = c.merchant("other").await;
    assert_eq!(
        get(&c, 0, &other_sk, &format!("/v1/payments/{id}"))
            .await
            .status,
        404
    );
    let theirs = post(
        &c,
        0,
        &other_sk,
        "/v1/payments",
        "k1",
        json!({ "token": cof, "amount": 1, "currency": "JPY", "order_id": "o" }),
    )
    .await;
    assert_eq!(
        theirs.body["code"], "token_not_found",
        "keys and tokens are per merchant"
    );

    // Reconciliation report.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rep = get(
        &c,
        2,
        &sk,
        &format!("/v1/reports/payments?from={}&to={}", now - 600, now + 600),
    )
    .await;
    assert_eq!(rep.body["count"], 3, "{}", rep.body);
    assert_eq!(rep.body["by_state"]["refunded"]["refunded_amount"], 4000);
    assert_eq!(rep.body["by_state"]["declined"]["count"], 1);

    // A retry while the first request is still at the acquirer: 409, then the answer.
    cafis.control(1_500, "none").await;
    let slow_tok = token(&c, &sk, &pan(4), "card_on_file").await;
    let slow =
        json!({ "token": slow_tok, "amount": 700, "currency": "JPY", "order_id": "order-slow" });
    let (api, sk2, slow2) = (c.api[1].clone(), sk.clone(), slow.clone());
    let first_slow = tokio::spawn(async move {
        raw(
            &api,
            Method::POST,
            "/v1/payments",
            &[
                ("authorization", &format!("Bearer {sk2}")),
                ("idempotency-key", "k-slow"),
            ],
            Some(slow2),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = post(&c, 2, &sk, "/v1/payments", "k-slow", slow.clone()).await;
    assert_eq!(
        (during.status, during.body["code"].as_str()),
        (409, Some("idempotency_key_in_flight"))
    );
    let done = first_slow.await.unwrap();
    assert_eq!(done.status, 201, "{:?}", done.body);
    let after = post(&c, 0, &sk, "/v1/payments", "k-slow", slow).await;
    assert_eq!(after.body, done.body);
    cafis.control(0, "none").await;

    // 3-D Secure required.
    c.admin_call(
        Method::PATCH,
        "/admin/v1/merchants/pay",
        Some(json!({ "require_three_d_secure": true })),
    )
    .await;
    let no3ds = post(
        &c,
        0,
        &sk,
        "/v1/payments",
        "k12",
        json!({ "token": cof, "amount": 100, "currency": "JPY", "order_id": "order-5" }),
    )
    .await;
    assert_eq!(
        (no3ds.status, no3ds.body["code"].as_str()),
        (422, Some("three_d_secure_required"))
    );
    let with3ds = post(&c, 0, &sk, "/v1/payments", "k13", json!({ "token": cof, "amount": 100, "currency": "JPY", "order_id": "order-5",
        "three_d_secure": { "eci": "05", "authentication_value": "AAABBB", "ds_trans_id": "f25084f0", "version": "2.2.0" } })).await;
    assert_eq!(with3ds.status, 201, "{:?}", with3ds.body);
}

/// Retries `body` with key `idem` through every node until a final answer.
async fn until_final(c: &ProcCluster, sk: &str, idem: &str, body: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for node in 0..3 {
            if !c.running(node) {
                continue;
            }
            let r = try_raw(
                &c.api[node],
                Method::POST,
                "/v1/payments",
                &[
                    ("authorization", &format!("Bearer {sk}")),
                    ("idempotency-key", idem),
                ],
                Some(body.clone()),
            )
            .await;
            if let Some(r) = r {
                if r.status == 201 {
                    return r.body;
                }
                assert!(
                    [202, 409, 503, 504].contains(&r.status),
                    "unexpected answer {}: {:?}",
                    r.status,
                    r.body
                );
            }
        }
        assert!(Instant::now() < deadline, "no final answer for {idem}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_authorisation_charges_exactly_once_over_20_rounds() {
    let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let mut c = cluster(&cafis, &cardnet, 5_000).await;
    let sk = c.merchant("once").await;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..20u32 {
        // The first round as the issue describes it (a 2-second acquirer); the rest fast.
        let (latency, kill_after) = if round == 0 {
            (2_000, 1_000)
        } else {
            (400, 150 + u64::from(round % 5) * 40)
        };
        cafis.control(latency, "none").await;
        let leader = c.wait_leader().await;
        let follower = (leader + 1) % 3;
        let tok = token(&c, &sk, &pan(100 + round), "one_time").await;
        let body = json!({ "token": tok, "amount": 1000 + round, "currency": "JPY", "order_id": format!("r{round}") });
        let idem = format!("round-{round}");
        let (api, sk2, idem2, body2) = (
            c.api[follower].clone(),
            sk.clone(),
            idem.clone(),
            body.clone(),
        );
        let first = tokio::spawn(async move {
            try_raw(
                &api,
                Method::POST,
                "/v1/payments",
                &[
                    ("authorization", &format!("Bearer {sk2}")),
                    ("idempotency-key", &idem2),
                ],
                Some(body2),
            )
            .await
        });
        // Kill the leader while the acquirer call (400 ms) is in flight.
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        c.kill(leader);
        let _ = first.await;
        let last = until_final(&c, &sk, &idem, &body).await;
        let txn = last["gateway_txn_id"].as_str().unwrap();
        let counted = cafis.counters().await["authorizations"][txn]
            .as_u64()
            .unwrap_or(0)
            + cardnet.counters().await["authorizations"][txn]
                .as_u64()
                .unwrap_or(0);
        let state = last["state"].as_str().unwrap().to_owned();
        match state.as_str() {
            "authorized" => assert_eq!(counted, 1, "round {round}: authorised exactly once"),
            "failed" => assert_eq!(counted, 0, "round {round}: failed means never authorised"),
            other => panic!("round {round}: unexpected final state {other}"),
        }
        // Every node agrees, and the retry answers the same again.
        assert_eq!(until_final(&c, &sk, &idem, &body).await, last);
        *outcomes.entry(state).or_default() += 1;
        c.restart(leader);
        c.wait_live(leader).await;
    }
    eprintln!("20 rounds: {outcomes:?}");
    let totals = cafis.counters().await["total_authorizations"]
        .as_u64()
        .unwrap()
        + cardnet.counters().await["total_authorizations"]
            .as_u64()
            .unwrap();
    assert_eq!(
        u64::from(outcomes.get("authorized").copied().unwrap_or(0)),
        totals
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_continue_over_cardnet_when_cafis_dies_and_none_is_authorised_twice() {
    let (mut cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let c = cluster(&cafis, &cardnet, 2_000).await;
    let sk = c.merchant("routes").await;
    cafis.control(50, "none").await;
    let mut txns = Vec::new();
    for i in 0..40u32 {
        if i == 15 {
            cafis.kill();
        }
        let tok = token(&c, &sk, &pan(500 + i), "card_on_file").await;
        let body =
            json!({ "token": tok, "amount": 100, "currency": "JPY", "order_id": format!("o{i}") });
        let p = until_final(&c, &sk, &format!("rk{i}"), &body).await;
        assert_eq!(p["state"], "authorized", "payment {i}: {p}");
        if i >= 20 {
            assert_eq!(p["route"], "cardnet", "payment {i} after cafis died");
        }
        txns.push((
            p["gateway_txn_id"].as_str().unwrap().to_owned(),
            p["route"].as_str().unwrap().to_owned(),
        ));
    }
    let on_cardnet = cardnet.counters().await;
    let mut cafis_total = 0;
    for (txn, route) in &txns {
        let n = on_cardnet["authorizations"][txn].as_u64().unwrap_or(0);
        if route == "cardnet" {
            assert_eq!(n, 1, "{txn} authorised once on cardnet");
        } else {
            assert_eq!(n, 0, "{txn} went to cafis and must not be on cardnet too");
            cafis_total += 1;
        }
    }
    assert!(cafis_total >= 15, "the first payments went to cafis");
    wait_for("cafis reported down", Duration::from_secs(10), || async {
        let m = raw(&c.api[0], Method::GET, "/health/ready", &[], None).await;
        let routes = m.body["health"]["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ch| ch["name"] == "acquirer_routes")
            .cloned()
            .unwrap_or_default();
        eprintln!("routes check: {routes}");
        routes["status"] == "pass" && routes["message"] == "up: cardnet"
    })
    .await;
}
