//! The token vault through three real `kura` processes: merchant isolation on every
//! endpoint that takes a token, publishable keys and CORS, numeric tokens, CVCs held only
//! in memory across a failover, data key rotation under load with a leader kill, and the
//! audit trail's tamper check on a copy of the store.

use http::Method;
use kura_cluster_tests::procs::{
    copy_dir, files, first_needle_in, needle_offsets, new_merchant, raw, tokenize_request,
    wait_for, ProcCluster, RawResponse,
};
use kura_node::vault::card::{luhn_check_digit, luhn_valid};
use kura_sdk::{CardIn, CreateMerchantIn, KeyRole, TokenFormat, TokenizeIn, UpdateMerchantIn};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A Luhn-valid Visa PAN unique to `i`, with a digit pattern that will not occur by chance.
fn pan(i: u32) -> String {
    let body = format!("4{:08}573{:03}", 52_000_000 + i, i % 1000);
    format!("{body}{}", luhn_check_digit(&body))
}

/// A Luhn-valid 15-digit American Express PAN unique to `i`.
fn amex(i: u32) -> String {
    let body = format!("37{:06}8461{:02}", 310_000 + i, i % 100);
    format!("{body}{}", luhn_check_digit(&body))
}

fn card(number: &str, cvc: Option<&str>) -> CardIn {
    let c = CardIn::new(number, 12, 2031);
    match cvc {
        Some(cvc) => c.with_cvc(cvc),
        None => c,
    }
}

/// A one-time token request, as the JSON body a raw request sends.
fn one_time(number: &str, cvc: Option<&str>) -> Value {
    serde_json::to_value(TokenizeIn::one_time(card(number, cvc))).unwrap()
}

/// A card-on-file token request, as the JSON body a raw request sends.
fn on_file(number: &str, member: &str) -> Value {
    serde_json::to_value(TokenizeIn::card_on_file(card(number, None), member)).unwrap()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn call(
    c: &ProcCluster,
    node: usize,
    key: &str,
    m: Method,
    path: &str,
    body: Option<Value>,
) -> RawResponse {
    raw(
        &c.api[node],
        m,
        path,
        &[("authorization", &bearer(key))],
        body,
    )
    .await
}

/// Creates a token through `node` and returns its id.
/// `kura compare` with `config`: whether it succeeded, and what it printed.
fn kura_compare(c: &ProcCluster, config: &str) -> (bool, String) {
    let out = c.kura(&["compare", "--config", config]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn tokenize(c: &ProcCluster, node: usize, key: &str, body: Value) -> String {
    let r = call(c, node, key, Method::POST, "/v1/tokens", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["token"].as_str().unwrap().to_owned()
}

/// Asserts none of `needles` occurs in any file under the cluster's directory (data
/// directories, databases, snapshots, node logs).
fn assert_nowhere_on_disk(c: &ProcCluster, needles: &[Vec<u8>], what: &str) {
    let all = files(c.dir.path());
    assert!(all.iter().filter(|p| p.ends_with("kura.redb")).count() == 3);
    assert!(all
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "log")));
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        if let Some(n) = first_needle_in(&bytes, needles.iter().map(Vec::as_slice)) {
            panic!(
                "{what} {:?} found in {}",
                String::from_utf8_lossy(n),
                f.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answers_404_to_every_other_merchant_on_every_endpoint_that_takes_one() {
    let c = ProcCluster::start("");
    c.init().await;
    let a = c.merchant_with(&new_merchant("shop-a")).await;
    let b = c.merchant_with(&new_merchant("shop-b")).await;
    let (a_sk, b_sk) = (
        a.secret_key.as_deref().unwrap(),
        b.secret_key.as_deref().unwrap(),
    );
    let b_pk = b.publishable_key.as_deref().unwrap();
    let ott = tokenize(&c, 0, a_sk, one_time(&pan(1), None)).await;
    let cof = tokenize(&c, 1, a_sk, on_file(&pan(2), "m1")).await;
    let missing = "tok_0000000000000000000042".to_owned();

    type Endpoint = (Method, fn(&str) -> String, fn(&str) -> Option<Value>);
    let endpoints: [Endpoint; 3] = [
        (Method::GET, |t| format!("/v1/tokens/{t}"), |_| None),
        (
            Method::POST,
            |_| "/v1/members/m1/cards".into(),
            |t| Some(json!({ "token": t })),
        ),
        (
            Method::DELETE,
            |t| format!("/v1/members/m1/cards/{t}"),
            |_| None,
        ),
    ];
    for node in 0..3 {
        for (m, path, body) in &endpoints {
            for token in [&ott, &cof] {
                let theirs = call(&c, node, b_sk, m.clone(), &path(token), body(token)).await;
                let nobody = call(&c, node, b_sk, m.clone(), &path(&missing), body(&missing)).await;
                assert_eq!(
                    theirs.status,
                    404,
                    "{m} {} via node {node}: {:?}",
                    path(token),
                    theirs.body
                );
                assert_eq!(
                    theirs.body,
                    nobody.body,
                    "{m} {}: same answer as no token",
                    path(token)
                );
                assert_eq!(theirs.body["code"], "token_not_found");
                let with_pk = call(&c, node, b_pk, m.clone(), &path(token), body(token)).await;
                let pk_nobody =
                    call(&c, node, b_pk, m.clone(), &path(&missing), body(&missing)).await;
                assert_eq!(
                    (with_pk.status, &with_pk.body),
                    (pk_nobody.status, &pk_nobody.body)
                );
            }
        }
    }
    // Nothing B tried touched A's tokens.
    let got = call(&c, 2, a_sk, Method::GET, &format!("/v1/tokens/{ott}"), None).await;
    assert_eq!(got.status, 200);
    assert!(got.body.get("used_at").is_none(), "{:?}", got.body);
    let listed = call(&c, 2, a_sk, Method::GET, "/v1/members/m1/cards", None).await;
    assert_eq!(listed.body["cards"][0]["token"], json!(cof));
    let used = call(
        &c,
        1,
        a_sk,
        Method::POST,
        "/v1/members/m1/cards",
        Some(json!({ "token": ott })),
    )
    .await;
    assert_eq!(used.status, 201, "{:?}", used.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishable_key_makes_only_one_time_tokens_and_only_from_allowed_origins() {
    let c = ProcCluster::start("");
    c.init().await;
    let shop = "https://shop.example";
    let web = CreateMerchantIn {
        allowed_origins: vec![shop.to_owned()],
        ..new_merchant("web")
    };
    let m = c.merchant_with(&web).await;
    let (sk, pk) = (
        m.secret_key.as_deref().unwrap(),
        m.publishable_key.as_deref().unwrap(),
    );
    assert!(sk.starts_with("sk_") && pk.starts_with("pk_"));
    // A preflight is answered from the node's own state (it carries no credentials to
    // forward), so it sees the merchant once that node has applied it.
    c.wait_all_applied().await;
    for node in 0..3 {
        let api = c.api[node].clone();
        let pre = |origin: &'static str| {
            let api = api.clone();
            async move {
                let headers = [
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ];
                raw(&api, Method::OPTIONS, "/v1/tokens", &headers, None).await
            }
        };
        let ok = pre(shop).await;
        assert_eq!(ok.status, 204, "preflight via node {node}: {:?}", ok.body);
        assert_eq!(ok.header("access-control-allow-origin"), shop);
        assert!(ok
            .header("access-control-allow-headers")
            .contains("authorization"));
        let evil = pre("https://evil.example").await;
        assert_eq!(
            (evil.status, evil.body["code"].as_str()),
            (403, Some("origin_not_allowed"))
        );
        assert_eq!(evil.header("access-control-allow-origin"), "");
    }
    let from = |origin: &'static str, key: &str, body: Value, node: usize| {
        let auth = bearer(key);
        let api = c.api[node].clone();
        async move {
            raw(
                &api,
                Method::POST,
                "/v1/tokens",
                &[("authorization", &auth), ("origin", origin)],
                Some(body),
            )
            .await
        }
    };
    let made = from(shop, pk, one_time(&pan(10), Some("123")), 1).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    assert_eq!(made.header("access-control-allow-origin"), shop);
    assert_eq!(made.body["cvc"], "available");
    let token = made.body["token"].as_str().unwrap().to_owned();
    let refused = from(shop, pk, on_file(&pan(11), "m1"), 2).await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (403, Some("publishable_key_not_allowed"))
    );
    let foreign = from("https://evil.example", pk, one_time(&pan(12), None), 0).await;
    assert_eq!(
        (foreign.status, foreign.body["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let read = call(&c, 0, pk, Method::GET, &format!("/v1/tokens/{token}"), None).await;
    assert_eq!(
        (read.status, read.body["code"].as_str()),
        (403, Some("secret_key_required"))
    );
    let listed = call(&c, 0, pk, Method::GET, "/v1/members/m1/cards", None).await;
    assert_eq!(listed.status, 403);
    // The secret key reads it; the client API serves no admin route to any key (the
    // admin plane is a listener of its own).
    assert_eq!(
        call(&c, 2, sk, Method::GET, &format!("/v1/tokens/{token}"), None)
            .await
            .status,
        200
    );
    for key in [sk, pk] {
        let admin = call(&c, 0, key, Method::GET, "/admin/v1/merchants", None).await;
        assert_eq!(admin.status, 404);
    }
    // Rotating the publishable key retires the old one at once; the secret key is untouched.
    let rotated = c
        .admin()
        .rotate_merchant_key("web", KeyRole::Publishable)
        .await
        .unwrap();
    let pk2 = rotated.publishable_key.as_deref().unwrap();
    assert_eq!(
        from(shop, pk, one_time(&pan(13), None), 1).await.status,
        401
    );
    assert_eq!(
        from(shop, pk2, one_time(&pan(13), None), 1).await.status,
        201
    );
    assert_eq!(
        call(&c, 1, sk, Method::GET, &format!("/v1/tokens/{token}"), None)
            .await
            .status,
        200
    );
    // Origins are checked when set, and can be changed.
    let origins = |o: &[&str]| UpdateMerchantIn {
        allowed_origins: Some(o.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let bad = c
        .admin()
        .update_merchant("web", &origins(&["ftp://x"]))
        .await;
    assert!(
        matches!(bad, Err(kura_sdk::Error::Api { status: 400, ref code, .. }) if code == "allowed_origin_invalid"),
        "{bad:?}"
    );
    c.admin()
        .update_merchant("web", &origins(&[]))
        .await
        .unwrap();
    assert_eq!(
        from(shop, pk2, one_time(&pan(14), None), 1).await.status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_tokens_keep_the_length_and_last_four_and_never_pass_luhn() {
    let c = ProcCluster::start("");
    c.init().await;
    let num = CreateMerchantIn {
        token_format: TokenFormat::Numeric,
        ..new_merchant("num")
    };
    let m = c.merchant_with(&num).await;
    let sk = m.secret_key.as_deref().unwrap();
    let opaque = c.merchant("opq").await;
    for i in 0..20 {
        let (visa, am) = (pan(100 + i), amex(i));
        let ott = tokenize(&c, (i % 3) as usize, sk, one_time(&am, Some("1234"))).await;
        let cof = tokenize(&c, (i % 3) as usize, sk, on_file(&visa, &format!("m{i}"))).await;
        for (t, p) in [(&ott, &am), (&cof, &visa)] {
            assert_eq!(t.len(), p.len(), "{t}");
            assert_eq!(&t[t.len() - 4..], &p[p.len() - 4..]);
            assert!(
                t.bytes().all(|b| b.is_ascii_digit()) && !luhn_valid(t),
                "{t}"
            );
            assert_ne!(t, p);
        }
        // A numeric token is never accepted as a card number.
        let as_card = call(
            &c,
            0,
            sk,
            Method::POST,
            "/v1/tokens",
            Some(one_time(&cof, None)),
        )
        .await;
        assert_eq!(
            (as_card.status, as_card.body["code"].as_str()),
            (422, Some("card_number_luhn"))
        );
        // Used for a card on file, the new token is numeric too.
        let used = call(
            &c,
            1,
            sk,
            Method::POST,
            &format!("/v1/members/x{i}/cards"),
            Some(json!({ "token": ott })),
        )
        .await;
        assert_eq!(used.status, 201, "{:?}", used.body);
        let new = used.body["token"].as_str().unwrap();
        assert!(
            new.len() == 15 && new.ends_with(&am[11..]) && !luhn_valid(new),
            "{new}"
        );
        assert_eq!(
            call(
                &c,
                2,
                &opaque,
                Method::GET,
                &format!("/v1/tokens/{new}"),
                None
            )
            .await
            .status,
            404
        );
    }
    let o = tokenize(&c, 0, &opaque, one_time(&pan(7), None)).await;
    assert!(o.starts_with("tok_"), "{o}");
}

/// Sums a metric's samples in a node's `/metrics`.
async fn metric(c: &ProcCluster, node: usize, name: &str) -> Option<f64> {
    use kura_sdk::wire::{tokio_spawner, HttpPool};
    let pool = HttpPool::new(
        kura_cluster_tests::procs::tls_connector(),
        tokio_spawner(),
        1 << 22,
    );
    let req = http::Request::get("/metrics")
        .header(http::header::HOST, &c.api[node])
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = pool
        .send(&c.api[node], req, Duration::from_secs(5))
        .await
        .ok()?;
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cvc_lives_in_memory_only_survives_a_leader_kill_and_is_wiped_when_used() {
    let mut c = ProcCluster::start(
        "[raft]\nsnapshot_every_entries = 10\nlog_entries_kept_after_snapshot = 2\n",
    );
    c.init().await;
    let sk = c.merchant("cvc-shop").await;
    // Distinctive CVCs, sent as JSON strings: if any were stored they would be stored quoted.
    let cvcs: Vec<String> = (0..12).map(|i| format!("{}", 731 + i * 17)).collect();
    let mut tokens = Vec::new();
    for (i, cvc) in cvcs.iter().enumerate() {
        tokens.push(tokenize(&c, i % 3, &sk, one_time(&pan(200 + i as u32), Some(cvc))).await);
    }
    let amex_cvc = "8642";
    let amex_token = tokenize(&c, 0, &sk, one_time(&amex(5), Some(amex_cvc))).await;
    let bad = call(
        &c,
        0,
        &sk,
        Method::POST,
        "/v1/tokens",
        Some(one_time(&amex(6), Some("123"))),
    )
    .await;
    assert_eq!(
        (bad.status, bad.body["code"].as_str()),
        (422, Some("card_cvc_invalid"))
    );
    let with_cvc = TokenizeIn::card_on_file(card(&pan(299), Some("123")), "m");
    let cof = call(
        &c,
        0,
        &sk,
        Method::POST,
        "/v1/tokens",
        Some(serde_json::to_value(with_cvc).unwrap()),
    )
    .await;
    assert_eq!(
        (cof.status, cof.body["code"].as_str()),
        (422, Some("cvc_not_allowed"))
    );
    for node in 0..3 {
        wait_for(
            "every node holds every CVC",
            Duration::from_secs(10),
            || async { metric(&c, node, "kura_cvc_held").await == Some(13.0) },
        )
        .await;
    }

    let leader = c.wait_leader().await;
    c.kill(leader);
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    for t in tokens.iter().chain([&amex_token]) {
        let got = call(
            &c,
            new_leader,
            &sk,
            Method::GET,
            &format!("/v1/tokens/{t}"),
            None,
        )
        .await;
        assert_eq!(
            got.body["cvc"], "available",
            "after failover: {:?}",
            got.body
        );
    }
    // Using a token wipes its CVC on every node that holds it.
    let used = call(
        &c,
        new_leader,
        &sk,
        Method::POST,
        "/v1/members/m1/cards",
        Some(json!({ "token": tokens[0] })),
    )
    .await;
    assert_eq!(used.status, 201, "{:?}", used.body);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &node in &survivors {
        wait_for(
            "the used token's CVC is wiped",
            Duration::from_secs(10),
            || async { metric(&c, node, "kura_cvc_held").await == Some(12.0) },
        )
        .await;
    }
    let after = call(
        &c,
        new_leader,
        &sk,
        Method::GET,
        &format!("/v1/tokens/{}", tokens[0]),
        None,
    )
    .await;
    assert_eq!(after.body["cvc"], "unavailable");

    // A node restarted from disk has no CVC at all: it was never there.
    c.restart(leader);
    c.wait_live(leader).await;
    assert_eq!(metric(&c, leader, "kura_cvc_held").await, Some(0.0));
    for i in 0..3 {
        c.kill(i);
    }
    let mut needles: Vec<Vec<u8>> = cvcs
        .iter()
        .chain([&amex_cvc.to_owned()])
        .map(|v| format!("\"{v}\"").into_bytes())
        .collect();
    needles.push(b"\"cvc\":\"".to_vec());
    assert_nowhere_on_disk(&c, &needles, "CVC");
    let pans: Vec<Vec<u8>> = (0..12)
        .map(|i| pan(200 + i).into_bytes())
        .chain([amex(5).into_bytes()])
        .collect();
    assert_nowhere_on_disk(&c, &pans, "PAN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_load_through_a_leader_kill_and_every_card_still_decrypts() {
    let mut c = ProcCluster::start(
        "[raft]\nsnapshot_every_entries = 50\nlog_entries_kept_after_snapshot = 10\n",
    );
    c.init().await;
    let sk = c.merchant("rot").await;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU32::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = c.client(&[0, 1, 2], &sk);
        let (stop, next, acked) = (stop.clone(), next.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let req = tokenize_request(&pan(1000 + i), Some(&format!("w{w}-{i}")));
                if let Ok(t) = client.tokenize(&req).await {
                    acked.lock().unwrap().push(t.token);
                }
            }
        }));
    }
    let count = || acked.lock().unwrap().len();
    wait_for(
        "some tokens under key 1",
        Duration::from_secs(30),
        || async { count() >= 60 },
    )
    .await;
    let rotated = c
        .admin_call(Method::POST, "/admin/v1/keys/rotate", None)
        .await;
    assert_eq!(rotated["current_version"], 2, "{rotated}");
    let at_rotation = count();
    wait_for("writes under key 2", Duration::from_secs(30), || async {
        count() >= at_rotation + 40
    })
    .await;
    let leader = c.wait_leader().await;
    c.kill(leader);
    let _ = c.wait_leader().await;
    let rotated = c
        .admin_call(Method::POST, "/admin/v1/keys/rotate", None)
        .await;
    assert_eq!(rotated["current_version"], 3, "{rotated}");
    c.restart(leader);
    let at_kill = count();
    wait_for("writes after the kill", Duration::from_secs(30), || async {
        count() >= at_kill + 40
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    wait_for(
        "the re-wrap moves every card to key 3",
        Duration::from_secs(60),
        || async {
            let k = c.admin_call(Method::GET, "/admin/v1/keys", None).await;
            k["rewrap"]["pending_cards"] == 0
        },
    )
    .await;
    let acked = acked.lock().unwrap().clone();
    let verified = c
        .admin_call(Method::POST, "/admin/v1/keys/verify", None)
        .await;
    assert_eq!(verified["failures"], 0, "{verified}");
    // Writes cut off by the kill may have been applied without an answer: at least every
    // acknowledged card is there, and every card is under key 3.
    let stored = verified["cards_checked"].as_u64().unwrap();
    assert!(stored >= acked.len() as u64, "{verified}");
    assert_eq!(
        verified["cards_by_version"],
        json!({ "3": stored }),
        "{verified}"
    );
    for v in [1, 2] {
        let r = c
            .admin_call(Method::POST, &format!("/admin/v1/keys/{v}/retire"), None)
            .await;
        assert_eq!(r["versions"][v - 1]["state"], "retired", "{r}");
    }
    let current = c
        .admin()
        .call(Method::POST, "/admin/v1/keys/3/retire", None)
        .await;
    assert!(
        matches!(current, Err(kura_sdk::Error::Api { status: 409, ref code, .. }) if code == "data_key_current")
    );
    // Every acknowledged token is there, readable on every node, and still opens.
    let client = c.client(&[0, 1, 2], &sk);
    for t in &acked {
        client
            .get_token(t)
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
    }
    let verified = c
        .admin_call(Method::POST, "/admin/v1/keys/verify", None)
        .await;
    assert_eq!(
        (
            verified["failures"].as_u64(),
            verified["cards_checked"].as_u64()
        ),
        (Some(0), Some(stored)),
        "after retiring keys 1 and 2"
    );
    let trail = c
        .admin_call(Method::GET, "/admin/v1/audit?limit=1000", None)
        .await;
    let actions: Vec<&str> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    for want in [
        "data_key.install",
        "data_key.rewrap",
        "data_key.retire",
        "merchant.create",
        "token.create",
    ] {
        assert!(
            actions.contains(&want),
            "{want} missing from the audit trail"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_first_tampered_record_in_a_copy_of_the_store() {
    // The tampering below edits the snapshot in the file, so snapshots must come every
    // 10 entries as configured, not on the vault-sized interval kura picks by default.
    let mut c = ProcCluster::start(
        "[raft]\nsnapshot_every_entries = 10\nsnapshot_grows_with_vault = false\nlog_entries_kept_after_snapshot = 2\n",
    );
    c.init().await;
    let sk = c.merchant("aud").await;
    let mut tokens = Vec::new();
    for i in 0..30 {
        tokens.push(
            tokenize(
                &c,
                (i % 3) as usize,
                &sk,
                on_file(&pan(3000 + i), &format!("m{i}")),
            )
            .await,
        );
    }
    let online = c
        .admin_call(Method::POST, "/admin/v1/audit/verify", None)
        .await;
    assert_eq!(online["ok"], true, "{online}");
    let page = c
        .admin_call(Method::GET, "/admin/v1/audit?from_seq=5&limit=3", None)
        .await;
    assert_eq!(page["records"].as_array().unwrap().len(), 3);
    assert_eq!(page["records"][0]["seq"], 5);
    assert_eq!(page["next_from_seq"], 8);
    assert!(!page.to_string().contains(&pan(3000)));
    let out = c.kura(&["audit", "verify", "--config", c.config(0).to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Stop a follower and work on a copy of its store.
    let leader = c.wait_leader().await;
    let node = (leader + 1) % 3;
    wait_for(
        "the follower applied everything",
        Duration::from_secs(10),
        || async {
            let s = c.status(node).await.unwrap();
            s["applied_index"] == c.status(leader).await.unwrap()["applied_index"]
        },
    )
    .await;
    // Applied state reaches the vault's file within about a second of quiet (the log
    // holds it before that): give it two, so the records below are in the file.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(node);
    let copy = c.dir.path().join("copy");
    copy_dir(&c.data_dir(node), &copy);
    let verify =
        |c: &ProcCluster| c.kura(&["audit", "verify", "--data-dir", copy.to_str().unwrap()]);
    let clean = verify(&c);
    let text = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert!(
        clean.status.success() && text.contains("audit trail chain OK"),
        "{text}{}",
        String::from_utf8_lossy(&clean.stderr)
    );

    // Change the outcome of one token's creation record in the vault's file, keeping
    // its length, as anyone who can write the file could: the audit chain must catch
    // it.
    let victim = &tokens[3];
    let record = c
        .admin_call(Method::GET, "/admin/v1/audit?limit=1000", None)
        .await["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["token"] == json!(victim) && r["action"] == "token.create")
        .cloned()
        .expect("the token's audit record");
    let seq = record["seq"].as_u64().unwrap();
    let vaults = files(&copy.join("kura.vault"));
    assert_eq!(vaults.len(), 1, "one vault generation: {vaults:?}");
    let mut bytes = std::fs::read(&vaults[0]).unwrap();
    // The record as stored (MessagePack by position): the token, then its outcome.
    let mut needle = victim.as_bytes().to_vec();
    needle.extend_from_slice(b"\xa2ok");
    // Every copy: pages redb has freed may still hold an older one.
    let found = needle_offsets(&bytes, &needle);
    assert!(!found.is_empty(), "the vault's file holds the record");
    for at in found {
        bytes[at + needle.len() - 2..at + needle.len()].copy_from_slice(b"OK");
    }
    std::fs::write(&vaults[0], &bytes).unwrap();
    let tampered = verify(&c);
    let text = String::from_utf8_lossy(&tampered.stdout).into_owned();
    assert!(!tampered.status.success(), "verify must fail: {text}");
    assert!(
        text.contains(&format!("BROKEN at record {seq}:")),
        "{text}{}",
        String::from_utf8_lossy(&tampered.stderr)
    );

    // The online scrub: the leader's vault passes; the stopped node, given the
    // tampered file and started again, fails it, naming the record.
    let name = |i: usize| ["main", "dr", "bk"][i];
    let config = c.config(0).to_str().unwrap().to_owned();
    let scrub = |c: &ProcCluster, i: usize| c.kura(&["scrub", name(i), "--config", &config]);
    let passed = scrub(&c, leader);
    let text = String::from_utf8_lossy(&passed.stdout).into_owned();
    assert!(
        passed.status.success() && text.contains("passed"),
        "{text}{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    let own = files(&c.data_dir(node).join("kura.vault"));
    assert_eq!(own.len(), 1, "one vault generation: {own:?}");
    std::fs::write(&own[0], &bytes).unwrap();
    c.restart(node);
    c.wait_live(node).await;
    let failed = scrub(&c, node);
    let text = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(!failed.status.success(), "the scrub must fail: {text}");
    assert!(
        text.contains(&format!("audit record {seq} breaks the chain")),
        "{text}{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let status = c.admin_call_on(node, Method::GET, "/admin/v1/scrub").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(
        c.metric(node, "kura_vault_scrubs_total{outcome=\"failed\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_changed_on_disk_passes_its_own_scrub_and_kura_compare_names_it() {
    let mut c = ProcCluster::start("");
    c.init().await;
    let mut shop = new_merchant("ledger");
    shop.name = "Ledger Lane Stores".into();
    let sk = c.merchant_with(&shop).await.secret_key.unwrap();
    for i in 0..20 {
        tokenize(
            &c,
            (i % 3) as usize,
            &sk,
            on_file(&pan(4000 + i), &format!("m{i}")),
        )
        .await;
    }
    let name = |i: usize| ["main", "dr", "bk"][i];
    let config = c.config(0).to_str().unwrap().to_owned();
    let compare = |c: &ProcCluster| kura_compare(c, &config);
    let (ok, text) = compare(&c);
    assert!(
        ok && text.contains("every member's vault is the same"),
        "{text}"
    );
    assert_eq!(text.matches(" hashed ").count(), 3, "{text}");

    // One letter of the merchant's name changed in a follower's vault file, as a
    // failing disk or a stray write could: the row still decodes.
    let leader = c.wait_leader().await;
    let node = (leader + 1) % 3;
    c.wait_all_applied().await;
    // Applied state reaches the vault's file within about a second of quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(node);
    let vaults = files(&c.data_dir(node).join("kura.vault"));
    assert_eq!(vaults.len(), 1, "one vault generation: {vaults:?}");
    let mut bytes = std::fs::read(&vaults[0]).unwrap();
    let needle = b"Ledger Lane Stores";
    let found = needle_offsets(&bytes, needle);
    assert!(!found.is_empty(), "the vault's file holds the name");
    for at in found {
        bytes[at + needle.len() - 3] = b'l';
    }
    std::fs::write(&vaults[0], &bytes).unwrap();
    c.restart(node);
    c.wait_live(node).await;
    c.wait_all_applied().await;

    // Its own scrub cannot see it: the vault is consistent with itself.
    let scrub = c.kura(&["scrub", name(node), "--config", &config]);
    assert!(
        scrub.status.success(),
        "{}{}",
        String::from_utf8_lossy(&scrub.stdout),
        String::from_utf8_lossy(&scrub.stderr)
    );
    // The comparison names it, and the leader counts it.
    let (ok, text) = compare(&c);
    assert!(!ok, "the comparison must fail: {text}");
    assert!(
        text.contains("DIFFER") && text.contains(&format!("the vault of {} differs", name(node))),
        "{text}"
    );
    let odd = text
        .lines()
        .find(|l| l.starts_with(name(node)))
        .expect("its line");
    assert!(odd.contains("DIFFERS"), "{text}");
    assert_eq!(text.matches(" hashed ").count(), 2, "{text}");
    assert_eq!(
        c.metric(leader, "kura_vault_compares_total{outcome=\"differed\"}")
            .await,
        1.0
    );

    // What the runbook says to do: its data directory moved aside, started empty.
    c.kill(node);
    std::fs::rename(c.data_dir(node), c.data_dir(node).with_extension("differs")).unwrap();
    std::fs::create_dir_all(c.data_dir(node)).unwrap();
    c.restart(node);
    c.wait_live(node).await;
    c.wait_all_applied().await;
    let (ok, text) = compare(&c);
    assert!(
        ok && text.contains("every member's vault is the same"),
        "{text}"
    );
}

/// bk reports command level 1, as a build from before the comparison marker would (a
/// fault switch, set before the cluster forms): a rolling upgrade not finished. The
/// leader does not propose the marker (level 2), which bk could not apply: `kura
/// compare` ends incomplete, the marker not written, saying why (the write was
/// refused `cluster_upgrading`), while cards are still taken.
/// Once bk reports its own build's level, the next health poll raises the cluster's,
/// and the comparison runs and agrees (decision 0036).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_waits_until_every_member_runs_a_build_that_applies_it() {
    let c = ProcCluster::start_with_faults("", &[]);
    let older = kura_sdk::Faults {
        command_level: 1,
        ..Default::default()
    };
    wait_for("bk to listen", Duration::from_secs(20), || async {
        c.status(2).await.is_some()
    })
    .await;
    c.faults(2, older).await;
    c.init().await;
    c.wait_leader().await;
    let sk = c.merchant("upgrade").await;
    for i in 0..3 {
        tokenize(&c, i, &sk, on_file(&pan(7000 + i as u32), &format!("m{i}"))).await;
    }
    let config = c.config(0).to_str().unwrap().to_owned();
    let compare = |c: &ProcCluster| kura_compare(c, &config);
    // Long enough for every member to be heard many times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, text) = compare(&c);
    assert!(
        !ok && text.contains("the marker was not written")
            && text.contains("a build that applies command level 2"),
        "{text}"
    );
    tokenize(&c, 1, &sk, on_file(&pan(7010), "m10")).await;
    let status = c.kura(&["status", "--config", &config]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("command levels differ (main 2, dr 2, bk 1)"),
        "kura status shows the upgrade under way: {status}"
    );

    c.faults(2, kura_sdk::Faults::default()).await;
    let mut last = String::new();
    wait_for("the comparison to run", Duration::from_secs(10), || {
        let (ok, text) = compare(&c);
        last = text;
        async move { ok }
    })
    .await;
    assert!(last.contains("every member's vault is the same"), "{last}");
    let status = c.kura(&["status", "--config", &config]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("command levels differ"));
}
