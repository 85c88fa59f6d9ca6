//! Payments through three real `kura` processes and two `kura acquirer-sim` processes
//! (cafis, cardnet): the API and its idempotency rules, a leader killed while the
//! acquirer call is in flight (exactly one authorisation, 20 rounds), and a route lost
//! mid-load (payments continue on the other; none authorised on both).

use http::Method;
use kura_cluster_tests::procs::{
    acquirer_toml, raw, tokenize_request, try_raw, wait_for, AcquirerSim, ProcCluster,
};
use kura_node::vault::card::luhn_check_digit;
use kura_sdk::{AuthorizeIn, Client, Error, PaymentState, ProblemCode, ThreeDs, UpdateMerchantIn};
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

/// A client of node `node` only, with the merchant key `key`.
fn at(c: &ProcCluster, node: usize, key: &str) -> Client {
    c.client(&[node], key)
}

/// An authorisation of `amount` yen with `token` for `order`.
fn pay(token: &str, amount: u64, order: &str) -> AuthorizeIn {
    AuthorizeIn {
        token: token.to_owned(),
        amount,
        currency: "JPY".into(),
        order_id: order.to_owned(),
        capture: false,
        three_d_secure: None,
    }
}

/// The status and code of a refused call.
fn refused<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, ProblemCode) {
    match r {
        Err(Error::Api { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
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
    use ProblemCode as P;
    let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let c = cluster(&cafis, &cardnet, 3_000).await;
    let sk = c.merchant("pay").await;
    let cof = token(&c, &sk, &pan(1), "card_on_file").await;
    let order1 = pay(&cof, 5000, "order-1");
    let first = at(&c, 1, &sk).authorize(&order1, "k1").await.unwrap();
    assert_eq!(
        (first.state, first.route.as_str()),
        (PaymentState::Authorized, "cafis")
    );
    let id = first.id.clone();
    // The same key and body, through another node: the same answer, nothing done again.
    let again = at(&c, 2, &sk).authorize(&order1, "k1").await.unwrap();
    assert_eq!(again, first);
    let other = at(&c, 0, &sk)
        .authorize(&pay(&cof, 1, "order-x"), "k1")
        .await;
    assert_eq!(refused(other), (422, P::IdempotencyKeyReused));
    let dup_order = at(&c, 0, &sk).authorize(&order1, "k2").await;
    assert_eq!(refused(dup_order), (409, P::OrderIdTaken));
    // Without a key (the SDK always sends one): refused before anything is done.
    let no_key = raw(
        &c.api[0],
        Method::POST,
        "/v1/payments",
        &[("authorization", &format!("Bearer {sk}"))],
        Some(serde_json::to_value(&order1).unwrap()),
    )
    .await;
    assert_eq!(no_key.body["code"], "idempotency_key_required");
    let counters = cafis.counters().await;
    let txn = first.gateway_txn_id.as_str();
    assert_eq!(counters["authorizations"][txn], 1, "{counters}");
    assert_eq!(counters["total_authorizations"], 1);

    // Capture part, once; refund in parts, never more than captured.
    let cap = at(&c, 1, &sk).capture(&id, Some(4000), "k3").await.unwrap();
    assert_eq!(
        (cap.state, cap.captured_amount),
        (PaymentState::Captured, 4000)
    );
    let cap2 = at(&c, 1, &sk).capture(&id, None, "k4").await;
    assert_eq!(refused(cap2), (409, P::PaymentAlreadyCaptured));
    let void = at(&c, 2, &sk).void(&id, "k5").await;
    assert_eq!(refused(void), (409, P::PaymentStateConflict));
    let r1 = at(&c, 0, &sk).refund(&id, Some(1500), "k6").await.unwrap();
    assert_eq!(r1.refunded_amount, 1500);
    let r1_again = at(&c, 2, &sk).refund(&id, Some(1500), "k6").await.unwrap();
    assert_eq!(r1_again, r1, "a retried refund refunds once");
    let too_much = at(&c, 0, &sk).refund(&id, Some(2501), "k7").await;
    assert_eq!(refused(too_much), (422, P::AmountInvalid));
    let rest = at(&c, 0, &sk).refund(&id, None, "k8").await.unwrap();
    assert_eq!(
        (rest.state, rest.refunded_amount),
        (PaymentState::Refunded, 4000)
    );
    let by_id = at(&c, 2, &sk).payment(&id).await.unwrap();
    let kinds: Vec<&str> = by_id.history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["opened", "authorized", "captured", "refunded", "refunded"]
    );
    let by_order = at(&c, 1, &sk).payment_by_order("order-1").await.unwrap();
    assert_eq!(by_order.map(|p| p.id), Some(id.clone()));
    assert_eq!(
        at(&c, 1, &sk).payment_by_order("order-none").await.unwrap(),
        None
    );

    // A one-time token pays once; a test card declines; another merchant sees nothing.
    let ott = token(&c, &sk, &pan(2), "one_time").await;
    let captured = AuthorizeIn {
        capture: true,
        ..pay(&ott, 100, "order-2")
    };
    let p2 = at(&c, 0, &sk).authorize(&captured, "k9").await.unwrap();
    assert_eq!(p2.state, PaymentState::Captured);
    let p2b = at(&c, 0, &sk)
        .authorize(&pay(&ott, 100, "order-3"), "k10")
        .await;
    assert_eq!(refused(p2b), (409, P::TokenAlreadyUsed));
    let declining = token(&c, &sk, &with_last4(3, "0002"), "card_on_file").await;
    let p3 = at(&c, 1, &sk)
        .authorize(&pay(&declining, 100, "order-4"), "k11")
        .await
        .unwrap();
    assert_eq!(p3.state, PaymentState::Declined);
    let other_sk = c.merchant("other").await;
    assert_eq!(
        refused(at(&c, 0, &other_sk).payment(&id).await),
        (404, P::PaymentNotFound)
    );
    let theirs = at(&c, 0, &other_sk)
        .authorize(&pay(&cof, 1, "o"), "k1")
        .await;
    assert_eq!(
        refused(theirs),
        (404, P::TokenNotFound),
        "keys and tokens are per merchant"
    );

    // Reconciliation report.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rep = at(&c, 2, &sk)
        .payment_report(now - 600, now + 600)
        .await
        .unwrap();
    assert_eq!(rep.count, 3, "{rep:?}");
    assert_eq!(rep.by_state["refunded"].refunded_amount, 4000);
    assert_eq!(rep.by_state["declined"].count, 1);

    // A retry while the first request is still at the acquirer: 409, then the answer.
    // (Raw requests: the SDK itself waits out `idempotency_key_in_flight`.)
    cafis.control(1_500, "none").await;
    let slow_tok = token(&c, &sk, &pan(4), "card_on_file").await;
    let slow = serde_json::to_value(pay(&slow_tok, 700, "order-slow")).unwrap();
    let keyed = |key: &'static str| {
        let auth = format!("Bearer {sk}");
        move |node: &str, body: Value| {
            let (node, auth) = (node.to_owned(), auth.clone());
            async move {
                raw(
                    &node,
                    Method::POST,
                    "/v1/payments",
                    &[("authorization", &auth), ("idempotency-key", key)],
                    Some(body),
                )
                .await
            }
        }
    };
    let send = keyed("k-slow");
    let first_slow = tokio::spawn(send(&c.api[1], slow.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = send(&c.api[2], slow.clone()).await;
    assert_eq!(
        (during.status, during.body["code"].as_str()),
        (409, Some("idempotency_key_in_flight"))
    );
    let done = first_slow.await.unwrap();
    assert_eq!(done.status, 201, "{:?}", done.body);
    let after = send(&c.api[0], slow).await;
    assert_eq!(after.body, done.body);
    cafis.control(0, "none").await;

    // 3-D Secure required.
    let require = UpdateMerchantIn {
        require_three_d_secure: Some(true),
        ..Default::default()
    };
    c.admin().update_merchant("pay", &require).await.unwrap();
    let no3ds = at(&c, 0, &sk)
        .authorize(&pay(&cof, 100, "order-5"), "k12")
        .await;
    assert_eq!(refused(no3ds), (422, P::ThreeDSecureRequired));
    let with3ds = AuthorizeIn {
        three_d_secure: Some(ThreeDs {
            eci: "05".into(),
            authentication_value: "AAABBB".into(),
            ds_trans_id: "f25084f0".into(),
            version: "2.2.0".into(),
        }),
        ..pay(&cof, 100, "order-5")
    };
    let p5 = at(&c, 0, &sk).authorize(&with3ds, "k13").await.unwrap();
    assert_eq!(p5.state, PaymentState::Authorized);
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
