//! A node under abuse, through real `kura` processes: clients that dribble their
//! request heads and a flood of idle connections are cut off by the header timeout and
//! the per-address connection cap while normal clients are served; request rates are
//! limited per address (the client's own, also through a follower) and per key with
//! `429` and `Retry-After`; secret files open to others are refused; what a node
//! writes is owner-only and it dumps no core.

use http::Method;
use kura_cluster_tests::procs::{
    new_merchant, raw, tls_from, tokenize_request, try_raw_from, wait_for, write_secret, FromIp,
    ProcCluster,
};
use kura_sdk::wire::Connector;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The header-read (and handshake, and idle) timeout these tests configure. Three
/// seconds: 400 handshakes at once on a loaded 2-core machine took close to two, and
/// a handshake cut by its timeout just after the server's flight went out looks, to
/// the client, like a connection closed at once (CI, 1 run).
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const LIMITS: &str =
    "[limits]\nheader_read_timeout_ms = 3000\napi_connections_per_address_max = 300\n";

/// Lets this test process hold a few thousand sockets.
fn raise_open_files() {
    // SAFETY: plain system calls on this process.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Waits until the server closes `io` (a read returns end of stream or fails) while
/// writing one more header line every 200 ms; returns how long after `started` (when
/// the client began to connect: the server's timeout covers the TLS handshake too)
/// that was, or `None` if the connection was still open after `give_up`.
async fn dribble_until_closed(
    io: kura_sdk::wire::BoxIo,
    started: Instant,
    give_up: Duration,
) -> Option<Duration> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let dribble = async move {
        let _ = wr
            .write_all(b"POST /v1/tokens HTTP/1.1\r\nhost: kura\r\n")
            .await;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
                || wr.flush().await.is_err()
            {
                // Writes fail once the server has gone; the read side reports when.
                std::future::pending::<()>().await;
            }
        }
    };
    let closed = async move {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {} // a 408 before the close is fine
            }
        }
    };
    tokio::select! {
        t = closed => Some(t),
        _ = dribble => None,
        _ = tokio::time::sleep(give_up) => None,
    }
}

/// What became of one idle connection of a flood.
#[derive(Debug, PartialEq)]
enum Idle {
    /// The connection could not be made (the listener's backlog was full).
    NotConnected,
    /// The server closed it after this long.
    Closed(Duration),
    /// Still open when the test gave up.
    Open,
}

/// Opens a plain TCP connection from `from` that never sends a byte and waits until the
/// server closes it.
async fn idle_until_closed(from: Ipv4Addr, addr: String, give_up: Duration) -> Idle {
    let Ok(Ok(mut io)) = tokio::time::timeout(give_up, FromIp(from).connect(&addr)).await else {
        return Idle::NotConnected;
    };
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(give_up, io.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Idle::Closed(started.elapsed()),
        _ => Idle::Open,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_and_a_connection_flood_leave_the_api_answering_normal_clients() {
    raise_open_files();
    let c = ProcCluster::start(LIMITS);
    c.init().await;
    let sk = c.merchant("shop").await;
    let leader = c.wait_leader().await;
    let api = c.api[leader].clone();
    let term_before = c.metric(leader, "kura_raft_term").await;

    // 400 slow clients from 127.0.0.2, all at once: each completes TLS, then sends its
    // request head a line at a time, never finishing it. (Connected one after another,
    // the 400 handshakes can outlast the header timeout on a loaded machine, and the
    // first ones are closed before the last arrive.)
    let loris = std::sync::Arc::new(tls_from(Ipv4Addr::new(127, 0, 0, 2)));
    let burst = Instant::now();
    let slow: Vec<_> = (0..400)
        .map(|_| {
            let (loris, api) = (loris.clone(), api.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let io = loris.connect(&api).await;
                let answered = burst.elapsed();
                match io {
                    Ok(io) => {
                        let closed = dribble_until_closed(io, started, HEADER_TIMEOUT * 4).await;
                        (answered, Some(closed.map(|c| (c, started + c - burst))))
                    }
                    Err(_) => (answered, None),
                }
            })
        })
        .collect();

    // 1,000 connections from 127.0.0.3 that never even start TLS.
    let flood: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn(idle_until_closed(
                Ipv4Addr::new(127, 0, 0, 3),
                api.clone(),
                HEADER_TIMEOUT * 4,
            ))
        })
        .collect();

    // Meanwhile a normal client is served, promptly and every time.
    let client = c.client(&[leader], &sk);
    let served_from = Instant::now();
    for i in 0..20 {
        let t = client
            .tokenize(&tokenize_request(&pan("424242424242", i), Some("member-1")))
            .await;
        assert!(t.is_ok(), "normal request {i} under abuse: {t:?}");
    }
    let served_in = served_from.elapsed();
    // Nor did the flood cost the leader its leadership: consensus runs apart from the
    // API's connections (it did, in most runs, before it did).
    let term_after = c.metric(leader, "kura_raft_term").await;
    assert_eq!(
        term_before, term_after,
        "the term moved while the API was flooded: an election"
    );

    // Connections over the per-address cap (300) never got a handshake; the rest were
    // closed by the header timeout, not by anything sooner.
    let (mut refused_at_handshake, mut closed_after) = (0, Vec::new());
    let (mut last_answered, mut first_closed) = (Duration::ZERO, Duration::MAX);
    for h in slow {
        let (answered, held) = h.await.unwrap();
        last_answered = last_answered.max(answered);
        match held {
            None => refused_at_handshake += 1,
            Some(closed) => {
                let (after, at) = closed.expect("a slow client was never closed");
                closed_after.push(after);
                first_closed = first_closed.min(at);
            }
        }
    }
    // The cap admits 300 and refuses the rest at once. When the burst's 400 handshakes
    // took longer than a header timeout (a loaded machine: the test's own process makes
    // them), the first admitted were closed before the last connected, and those took
    // their freed slots: fewer refused, but some still (the cap was reached).
    let burst_in_one_timeout = last_answered < first_closed;
    let expected = if burst_in_one_timeout {
        90..=110
    } else {
        1..=110
    };
    assert!(
        expected.contains(&refused_at_handshake),
        "{refused_at_handshake} of 400 slow clients refused at once (cap 300; the burst \
         was answered within {last_answered:?}, the first admitted closed at {first_closed:?})"
    );
    let earliest = closed_after.iter().min().unwrap();
    let latest = closed_after.iter().max().unwrap();
    assert!(
        *earliest >= HEADER_TIMEOUT - Duration::from_millis(300),
        "a slow client was closed after {earliest:?}, before the header timeout"
    );
    // Timed from the client's connect: under the flood, on two cores, the accept and
    // the watchdog's check (every quarter timeout) may come late; a node that did not
    // close them would leave them open until the test gives up (4x).
    assert!(
        *latest <= HEADER_TIMEOUT * 3,
        "a slow client stayed {latest:?} although it never finished its head"
    );
    let mut flood_outcomes = Vec::new();
    for h in flood {
        flood_outcomes.push(h.await.unwrap());
    }
    let refused = c
        .metric(
            leader,
            "kura_listener_connections_refused_total{plane=\"api\",reason=\"per_address\"}",
        )
        .await;
    let timeouts = c
        .metric(leader, "kura_listener_timeouts_total{plane=\"api\"}")
        .await;
    let still_open = flood_outcomes.iter().filter(|o| **o == Idle::Open).count();
    let not_connected = flood_outcomes
        .iter()
        .filter(|o| **o == Idle::NotConnected)
        .count();
    assert_eq!(still_open, 0, "idle connections of the flood left open: {still_open} ({not_connected} never connected; node: {refused} refused per address, {timeouts} timed out)");

    // Every connection is accounted for: refused at once over the cap, closed by the
    // header timeout once admitted, or never connected (dropped by the kernel's
    // backlog: it never reached the node). 400 slow clients and 1,000 flood
    // connections, less a little for slow clients whose connect failed.
    let accounted = refused + timeouts + not_connected as f64;
    assert!(
        accounted >= 1_390.0,
        "{accounted} of 1,400 abusive connections refused, timed out or never connected \
         ({refused} refused per address, {timeouts} timed out, {not_connected} never connected)"
    );
    // The cap refused the bulk of the flood. Not all of its 700 over-the-cap
    // connections need be refused: on a loaded machine the 1,000 connects spread over
    // more than a header timeout, and a late one is admitted into a slot that an early
    // one's timeout freed (and is closed by the timeout in its turn).
    assert!(
        refused >= 400.0,
        "refused per address: {refused} ({not_connected} never connected)"
    );
    assert!(timeouts >= 500.0, "closed by timeouts: {timeouts}");
    eprintln!(
        "20 normal tokenizations in {served_in:?} under 400 slow clients and a 1,000-connection flood; \
         {refused_at_handshake} slow clients refused at once (burst answered in {last_answered:?}), \
         the rest closed after {earliest:?}..{latest:?}; {refused} refused per address, {timeouts} timed out, \
         {not_connected} flood connections never connected"
    );
}

/// Forms the cluster, creates merchant `shop` and puts `n` cards on file for member
/// `m1`; returns the merchant's client.
async fn shop_with_cards(c: &ProcCluster, prefix: &str, n: u32) -> kura_sdk::Client {
    c.init().await;
    let sk = c.merchant("shop").await;
    let client = c.client(&[0, 1, 2], &sk);
    for i in 0..n {
        client
            .tokenize(&tokenize_request(&pan(prefix, i), Some("m1")))
            .await
            .unwrap();
    }
    client
}

/// A Luhn-valid card number with `prefix` (15 digits) and `n` folded in.
fn pan(prefix: &str, n: u32) -> String {
    let body = format!("{prefix}{:03}", n % 1000);
    let body = &body[body.len() - 15..];
    format!("{body}{}", kura_node::vault::card::luhn_check_digit(body))
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_tokens_from_a_publishable_key_are_limited_per_client_address_also_through_followers(
) {
    let c = ProcCluster::start(
        "[limits]\none_time_tokens_per_address_per_s = 1\none_time_tokens_per_address_burst = 3\n",
    );
    c.init().await;
    let m = c.merchant_with(&new_merchant("web")).await;
    let pk = bearer(m.publishable_key.as_deref().unwrap());
    let sk = bearer(m.secret_key.as_deref().unwrap());
    c.wait_all_applied().await;
    let leader = c.wait_leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let card = |n: u32| {
        let t =
            kura_sdk::TokenizeIn::one_time(kura_sdk::CardIn::new(pan("424242424240", n), 12, 2031));
        serde_json::to_value(t).unwrap()
    };
    let post = |from: Ipv4Addr, node: usize, key: String, body: Value| {
        let api = c.api[node].clone();
        async move {
            try_raw_from(
                Some(from),
                &api,
                Method::POST,
                "/v1/tokens",
                &[("authorization", &key)],
                Some(body),
            )
            .await
            .expect("an answer")
        }
    };
    let shopper = Ipv4Addr::new(127, 0, 0, 4);
    let mut n = 0;
    let mut refused = 0.0;
    // Its burst of three through one follower...
    for _ in 0..3 {
        n += 1;
        let r = post(shopper, followers[0], pk.clone(), card(n)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    // ...and then refused through the other follower too: the leader limits the
    // shopper's own address, which the followers forwarded. The bucket refills at one
    // a second, so on a slow machine one more may pass first; a limit kept per node
    // would let the whole burst of three through again.
    let mut accepted = 0;
    let r = loop {
        n += 1;
        let r = post(shopper, followers[1], pk.clone(), card(n)).await;
        if r.status != 201 || accepted == 3 {
            break r;
        }
        accepted += 1;
    };
    assert!(accepted < 3, "a follower let the burst through again");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (429, Some("rate_limited")),
        "{:?}",
        r.body
    );
    refused += 1.0;
    assert_eq!(r.header("content-type"), "application/problem+json");
    let wait: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Another shopper behind the same followers is not affected, nor is the merchant's
    // server with its secret key from the first shopper's address.
    n += 1;
    let r = post(
        Ipv4Addr::new(127, 0, 0, 5),
        followers[1],
        pk.clone(),
        card(n),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    n += 1;
    let r = post(shopper, followers[0], sk.clone(), card(n)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // A client cannot claim another address: the header is believed only from a node.
    // Each try first spends what the shopper's bucket refilled, then claims a fresh
    // address: believed, it would pass every time; not believed, it is refused unless
    // the bucket refilled in between (a try of five misses only on a very slow machine).
    let mut spoof_refused = None;
    for claimed in 9..14u8 {
        loop {
            n += 1;
            let r = post(shopper, followers[0], pk.clone(), card(n)).await;
            if r.status == 429 {
                refused += 1.0;
                break;
            }
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
        n += 1;
        let claimed = format!("127.0.0.{claimed}");
        let r = try_raw_from(
            Some(shopper),
            &c.api[leader],
            Method::POST,
            "/v1/tokens",
            &[("authorization", &pk), ("kura-forwarded-for", &claimed)],
            Some(card(n)),
        )
        .await
        .expect("an answer");
        if r.status == 429 {
            refused += 1.0;
            spoof_refused = Some(r);
            break;
        }
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let r = spoof_refused.expect("spoofed forwarded addresses believed five times out of five");
    let wait: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    // Once the wait has passed, the shopper may go on.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    n += 1;
    let r = post(shopper, followers[1], pk.clone(), card(n)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let limited = c
        .metric(
            leader,
            "kura_api_rate_limited_total{limit=\"one_time_tokens_address\"}",
        )
        .await;
    assert_eq!(limited, refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_beyond_its_rate_gets_429_and_nothing_is_done() {
    let c =
        ProcCluster::start("[limits]\nrequests_per_key_per_s = 1\nrequests_per_key_burst = 5\n");
    c.init().await;
    let sk = c.merchant("busy").await;
    let other = c.merchant("calm").await;
    let leader = c.wait_leader().await;
    let api = c.api[leader].clone();
    let auth = bearer(&sk);
    // The burst of five passes; then it is refused. The bucket refills at one a
    // second, so on a slow machine one or two more may pass before the refusal.
    let mut accepted = 0;
    let mut refusal = None;
    for n in 0..12 {
        let body = json!({ "card": { "number": pan("555555555554", n), "exp_month": 12, "exp_year": 2031 }, "kind": "card_on_file", "member_id": "m1" });
        let r = raw(
            &api,
            Method::POST,
            "/v1/tokens",
            &[("authorization", &auth)],
            Some(body),
        )
        .await;
        if r.status == 429 {
            refusal = Some(r);
            break;
        }
        assert_eq!(r.status, 201, "{:?}", r.body);
        accepted += 1;
    }
    let r = refusal.expect("twelve requests at once were never refused");
    assert_eq!(r.body["code"], "rate_limited");
    assert!(r.header("retry-after").parse::<u64>().is_ok());
    assert!(accepted >= 5, "refused inside its burst: {accepted}");
    // Another key is not affected.
    let r = raw(
        &api,
        Method::GET,
        "/v1/members/m1/cards",
        &[("authorization", &bearer(&other))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The refused request left nothing: as many cards on file as were accepted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mine = raw(
        &api,
        Method::GET,
        "/v1/members/m1/cards",
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    assert_eq!(
        mine.body["cards"].as_array().map(Vec::len),
        Some(accepted),
        "{:?}",
        mine.body
    );
}

#[tokio::test]
async fn secrets_open_to_others_are_refused_and_what_a_node_writes_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = ProcCluster::prepare("");
    let dir = c.config(0).parent().unwrap().to_path_buf();
    let kek = dir.join("kek.key");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.kura(&["node", "--config", c.config(0).to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kek_file") && err.contains("chmod 600"),
        "{err}"
    );
    let key = dir.join("certs/main.key");
    write_secret(&kek, &format!("{}\n", "ab".repeat(32)));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = c.kura(&["node", "--config", c.config(0).to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tls.key_file"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    for i in 0..3 {
        c.restart(i);
    }
    c.init().await;
    let sk = c.merchant("files").await;
    c.client(&[0], &sk)
        .tokenize(&tokenize_request("4242424242424242", Some("m")))
        .await
        .unwrap();
    c.wait_all_applied().await;
    // Everything under a data directory is owner-only.
    let mut seen = 0;
    let mut stack = vec![c.data_dir(0)];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:03o}", p.display());
        seen += 1;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    assert!(seen > 3, "only {seen} paths under the data dir");
    // No core dumps.
    let pid = c.pid(0).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}

/// A request to try: path, method, extra headers, body, and the field the refusal names.
type Try = (
    String,
    Method,
    Vec<(&'static str, String)>,
    Option<Value>,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_number_typed_into_the_wrong_field_is_refused_and_lands_nowhere() {
    let c = ProcCluster::start("");
    c.init().await;
    let sk = bearer(&c.merchant("shop").await);
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let stray = "4000056655665556";
    let typed = "4000 0566 5566 5556";
    let good_card = json!({ "number": pan("424242424242", 1), "exp_month": 12, "exp_year": 2031 });
    // (route, method, extra headers, body), through a follower and the leader.
    let tries: Vec<Try> = vec![
        (
            "/v1/tokens".into(),
            Method::POST,
            vec![],
            Some(json!({ "card": good_card, "kind": "card_on_file", "member_id": stray })),
            "member_id",
        ),
        (
            format!("/v1/members/{stray}/cards"),
            Method::GET,
            vec![],
            None,
            "path",
        ),
        (
            "/v1/payments".into(),
            Method::POST,
            vec![("idempotency-key", "k1".to_owned())],
            Some(
                json!({ "token": "tok_0000000000000000000000", "amount": 100, "currency": "JPY", "order_id": typed }),
            ),
            "order_id",
        ),
        (
            "/v1/payments".into(),
            Method::POST,
            vec![("idempotency-key", stray.to_owned())],
            Some(
                json!({ "token": "tok_0000000000000000000000", "amount": 100, "currency": "JPY", "order_id": "o1" }),
            ),
            "idempotency-key",
        ),
        (
            format!("/v1/payments?order_id={}", typed.replace(' ', "%20")),
            Method::GET,
            vec![],
            None,
            "query",
        ),
    ];
    for node in [follower, leader] {
        for (path, method, extra, body, field) in &tries {
            let mut headers: Vec<(&str, &str)> = vec![("authorization", &sk)];
            headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
            let r = raw(&c.api[node], method.clone(), path, &headers, body.clone()).await;
            assert_eq!(
                (r.status, r.body["code"].as_str()),
                (422, Some("pan_in_field")),
                "{method} {field} via node {node}: {:?}",
                r.body
            );
            assert!(
                r.body["detail"].as_str().unwrap().contains(field),
                "{:?}",
                r.body
            );
            assert!(!r.body.to_string().contains("5556"), "echoed: {:?}", r.body);
        }
    }
    // The admin plane too: a merchant's name.
    let r = c
        .admin()
        .call(
            Method::POST,
            "/admin/v1/merchants",
            Some(json!({ "merchant_id": "m2", "name": format!("Shop {typed}") })),
        )
        .await;
    assert!(
        matches!(&r, Err(kura_sdk::Error::Api { code, .. }) if code == "pan_in_field"),
        "{r:?}"
    );
    // Writes after the refusals commit, and then no file of the cluster holds the number
    // in either form: not the Raft log, the snapshots, the state, nor a log line.
    c.client(&[leader], sk.trim_start_matches("Bearer "))
        .tokenize(&tokenize_request(&pan("424242424242", 2), Some("m1")))
        .await
        .unwrap();
    c.wait_all_applied().await;
    let dir = c.config(0).parent().unwrap().to_path_buf();
    for f in kura_cluster_tests::procs::files(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        let found = kura_cluster_tests::procs::first_needle_in(
            &bytes,
            [stray.as_bytes(), typed.as_bytes()],
        );
        assert!(
            found.is_none(),
            "{} holds the stray card number",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_rotation_rewraps_every_key_through_the_log_and_the_old_kek_can_then_go() {
    let mut c = ProcCluster::start("");
    let client = shop_with_cards(&c, "411111111111", 5).await;
    let (old_hex, new_hex) = ("ab".repeat(32), "cd".repeat(32));
    let id_of = |hex: &str| {
        let mut b = [0u8; 32];
        hex::decode_to_slice(hex, &mut b).unwrap();
        kura_node::crypto::Kek::from_bytes(b).id()
    };
    let (old_id, new_id) = (id_of(&old_hex), id_of(&new_hex));
    let before = c.admin_call(Method::GET, "/admin/v1/keys", None).await;
    assert_eq!(before["kek"]["current"], old_id.as_str(), "{before}");
    assert_eq!(before["kek"]["rotation_done"], true, "{before}");

    let dir = c.config(0).parent().unwrap().to_path_buf();
    write_secret(&dir.join("kek-2.key"), &format!("{new_hex}\n"));
    let set_kek = |c: &ProcCluster, i: usize, text: &str| {
        let path = c.config(i).to_path_buf();
        let cfg = std::fs::read_to_string(&path).unwrap();
        let start = cfg.find("kek_file").unwrap();
        let end = start + cfg[start..].find('\n').unwrap() + 1;
        let rest = &cfg[end..];
        let rest = match rest.find("kek_previous_files") {
            Some(p) => {
                let e = p + rest[p..].find('\n').unwrap() + 1;
                format!("{}{}", &rest[..p], &rest[e..])
            }
            None => rest.to_owned(),
        };
        std::fs::write(&path, format!("{}{text}{rest}", &cfg[..start])).unwrap();
    };
    let restart = |c: &mut ProcCluster, i: usize| {
        c.kill(i);
        c.restart(i);
    };
    let rotating = "kek_file = \"kek-2.key\"\nkek_previous_files = [\"kek.key\"]\n";
    // One node holds the new KEK: the leader refuses to rotate.
    set_kek(&c, 0, rotating);
    restart(&mut c, 0);
    c.wait_live(0).await;
    c.wait_leader().await;
    let early = c
        .admin()
        .call(Method::POST, "/admin/v1/keys/rotate-kek", None)
        .await;
    assert!(
        matches!(&early, Err(kura_sdk::Error::Api { status: 409, code, .. }) if code == "kek_not_on_all_nodes"),
        "{early:?}"
    );
    // Every node holds it (the old one kept): the rotation goes through.
    for i in [1, 2] {
        set_kek(&c, i, rotating);
        restart(&mut c, i);
        c.wait_live(i).await;
    }
    c.wait_leader().await;
    let mut rotated = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rotated.is_none() && Instant::now() < deadline {
        match c
            .admin()
            .call(Method::POST, "/admin/v1/keys/rotate-kek", None)
            .await
        {
            Ok(r) => rotated = Some(r.body),
            Err(kura_sdk::Error::Api { status: 409, .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("rotate-kek: {e}"),
        }
    }
    let rotated = rotated.expect("the rotation went through within 30 s");
    assert_eq!(rotated["kek"]["current"], new_id.as_str(), "{rotated}");
    assert_eq!(rotated["kek"]["rotation_done"], true, "{rotated}");
    assert_eq!(rotated["kek"]["keys_under_other_keks"], 0, "{rotated}");
    for v in rotated["versions"].as_array().unwrap() {
        assert_eq!(v["kek_id"], new_id.as_str(), "{rotated}");
    }
    // The old KEK goes from every node; every card still opens, new cards are sealed.
    for i in 0..3 {
        set_kek(&c, i, "kek_file = \"kek-2.key\"\n");
        restart(&mut c, i);
    }
    for i in 0..3 {
        c.wait_live(i).await;
    }
    c.wait_leader().await;
    client
        .tokenize(&tokenize_request(&pan("411111111111", 9), Some("m1")))
        .await
        .expect("a new card after the old KEK is gone");
    let verified = c
        .admin_call(Method::POST, "/admin/v1/keys/verify", None)
        .await;
    assert_eq!(
        (
            verified["failures"].as_u64(),
            verified["cards_checked"].as_u64()
        ),
        (Some(0), Some(6)),
        "{verified}"
    );
    let trail = c
        .admin_call(Method::GET, "/admin/v1/audit?limit=1000", None)
        .await;
    let rotation = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "kek.rotate")
        .expect("the rotation is audited");
    assert_eq!(rotation["actor"], "operator:admin", "{rotation}");
    assert!(
        rotation["detail"].as_str().unwrap().contains(&new_id),
        "{rotation}"
    );
    assert_ne!(old_id, new_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_head_is_signed_through_the_log_exported_and_checked_online_and_offline() {
    let mut c = ProcCluster::start("[api]\naudit_sign_interval_s = 1\n");
    let client = shop_with_cards(&c, "511111111111", 3).await;
    let mut verified = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        verified = c
            .admin_call(Method::POST, "/admin/v1/audit/verify", None)
            .await;
        if verified["signatures"]["verified"].as_u64() >= Some(1)
            && verified["signatures"]["unsigned_tail_records"] == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["signatures"]["unsigned_tail_records"], 0,
        "{verified}"
    );
    assert_eq!(
        verified["signatures"]["signed_through_records"].as_u64(),
        verified["records"].as_u64().map(|n| n - 1),
        "the newest record is the signature of all before it: {verified}"
    );

    // An operator exports the signed head; later writes keep it in the chain.
    let config = c.config(0).to_str().unwrap().to_owned();
    let out = c.kura(&["audit", "head", "--config", &config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = c.config(0).parent().unwrap().to_path_buf();
    std::fs::write(dir.join("head.json"), &out.stdout).unwrap();
    client
        .tokenize(&tokenize_request(&pan("511111111111", 7), Some("m1")))
        .await
        .unwrap();
    let out = c.kura(&[
        "audit",
        "verify",
        "--config",
        &config,
        "--signed-head",
        "head.json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"in_chain\": true"), "{text}");
    // A head whose MAC was not made with the cluster's KEK is refused.
    let mut forged = exported.clone();
    forged["signed_head"]["mac"] = json!("00".repeat(32));
    std::fs::write(dir.join("forged.json"), forged.to_string()).unwrap();
    let out = c.kura(&[
        "audit",
        "verify",
        "--config",
        &config,
        "--signed-head",
        "forged.json",
    ]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Offline, on a stopped node's data directory, with the KEK file. Applied state
    // reaches the vault's file within about a second of quiet, and the committed
    // marker (which the offline replay stops at) lazily too: give it two before the
    // SIGKILL, or the newest records are only in the log, not known committed.
    c.wait_all_applied().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(2);
    let data = c.data_dir(2).to_str().unwrap().to_owned();
    let out = c.kura(&[
        "audit",
        "verify",
        "--data-dir",
        &data,
        "--kek-file",
        "kek.key",
        "--signed-head",
        "head.json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 forged"), "{text}");
    assert!(text.contains("in the chain, signature valid"), "{text}");
    let out = c.kura(&[
        "audit",
        "verify",
        "--data-dir",
        &data,
        "--kek-file",
        "kek.key",
        "--signed-head",
        "forged.json",
    ]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_admin_reads_key_checks_and_fault_switches_are_audited() {
    let c = ProcCluster::start_with_faults("[api]\naudit_sign_interval_s = 1\n", &[]);
    c.init().await;
    c.merchant("shop").await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    // Wrong merchant keys from 127.0.0.6, through a follower (the leader counts them
    // under the client's own address).
    for _ in 0..3 {
        let r = try_raw_from(
            Some(Ipv4Addr::new(127, 0, 0, 6)),
            &c.api[follower],
            Method::GET,
            "/v1/members/m1/cards",
            &[("authorization", "Bearer sk_not_a_key")],
            None,
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 401);
    }
    // A client without a certificate on a node's admin plane, from 127.0.0.7.
    let r = try_raw_from(
        Some(Ipv4Addr::new(127, 0, 0, 7)),
        &c.admin[follower],
        Method::GET,
        "/admin/v1/cluster/status",
        &[],
        None,
    )
    .await;
    assert!(
        r.is_none(),
        "the admin plane answered a client without a certificate"
    );
    // Admin reads, a key check and a fault switch.
    c.admin_call(Method::GET, "/admin/v1/merchants/shop", None)
        .await;
    let admin = c.admin();
    admin.merchants().await.unwrap();
    admin.key_status().await.unwrap();
    admin.verify_cards().await.unwrap();
    c.faults(follower, Default::default()).await;

    let follower_name = kura_cluster_tests::procs::NAMES[follower];
    // The three wrong keys are summarised by the leader, in one record or, when a
    // flush fell between them, in several: their counts add up to three.
    let unknown_key_from_6 = |records: &[Value]| -> u64 {
        records
            .iter()
            .filter(|r| {
                r["action"] == "admin.action"
                    && r["actor"].as_str().unwrap_or_default().starts_with("node:")
            })
            .filter_map(|r| {
                let detail = r["detail"].as_str()?;
                let rest = detail
                    .strip_prefix("auth.failed: ")?
                    .split_once("api unknown_key from 127.0.0.6 x")?
                    .1;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().ok()
            })
            .sum()
    };
    let wanted: Vec<(String, String)> = vec![
        (
            format!("node:{follower_name}"),
            "admin bad_certificate from 127.0.0.7 x1".into(),
        ),
        ("operator:admin".into(), "merchant.read: shop".into()),
        ("operator:admin".into(), "merchant.list".into()),
        ("operator:admin".into(), "keys.read".into()),
        ("operator:admin".into(), "keys.verify".into()),
        (
            "operator:admin".into(),
            format!("faults.set: on {follower_name}"),
        ),
    ];
    let mut missing = wanted.clone();
    let mut unknown_keys = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (!missing.is_empty() || unknown_keys < 3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let trail = c
            .admin_call(Method::GET, "/admin/v1/audit?limit=1000", None)
            .await;
        let records = trail["records"].as_array().unwrap().clone();
        unknown_keys = unknown_key_from_6(&records);
        missing.retain(|(actor, detail)| {
            !records.iter().any(|r| {
                r["action"] == "admin.action"
                    && r["actor"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(actor.as_str())
                    && r["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(detail.as_str())
            })
        });
    }
    assert!(missing.is_empty(), "not in the audit trail: {missing:?}");
    assert_eq!(
        unknown_keys, 3,
        "the wrong keys from 127.0.0.6 in the audit trail"
    );
    let failures = c
        .metric(
            leader,
            "kura_api_auth_failures_total{reason=\"unknown_key\"}",
        )
        .await;
    assert_eq!(failures, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_one_time_token_loses_its_sealed_card_in_the_state_and_the_next_snapshot() {
    let mut c = ProcCluster::start(
        // A snapshot every 10 entries, whatever the vault holds: the writes below must
        // bring one on every node.
        "[api]\none_time_token_ttl_s = 2\n[raft]\nsnapshot_every_entries = 10\nsnapshot_grows_with_vault = false\nlog_entries_kept_after_snapshot = 2\n",
    );
    c.init().await;
    let sk = c.merchant("shop").await;
    let client = c.client(&[0, 1, 2], &sk);
    let one_time = client
        .tokenize(&tokenize_request(&pan("601111111111", 1), None))
        .await
        .unwrap()
        .token;
    let on_file = client
        .tokenize(&tokenize_request(&pan("601111111111", 2), Some("m1")))
        .await
        .unwrap()
        .token;
    c.wait_all_applied().await;
    // Read node 3's state offline to learn the sealed bytes, then bring it back.
    // (A follower records the commit index lazily: read until the token is there.)
    let db = c.data_dir(2).join("kura.redb");
    let (mut sealed, mut seen) = (None, Vec::new());
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.kill(2);
        let offline = kura_node::store::offline::read_vault(&db).unwrap();
        seen.push((offline.applied_index, offline.replayed_entries));
        let before = offline.vault;
        sealed = before
            .any_token(&one_time)
            .map(|r| nonzero_end(r.card.ciphertext));
        c.restart(2);
        c.wait_live(2).await;
        if sealed.is_some() {
            break;
        }
    }
    let sealed = sealed.unwrap_or_else(|| {
        panic!("the one-time token never reached node 3's disk; (applied, replayed) seen: {seen:?}")
    });
    assert!(sealed.len() > 16);

    // The token expires after 2 s; the leader's purge destroys its card through the log.
    let mut purged = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !purged && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let trail = c
            .admin_call(Method::GET, "/admin/v1/audit?limit=1000", None)
            .await;
        purged = trail["records"].as_array().unwrap().iter().any(|r| {
            r["action"] == "token.purge_card"
                && r["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("of 1 used or expired")
        });
    }
    assert!(purged, "no purge in the audit trail within 20 s");
    // Its metadata stays readable.
    let meta = client.get_token(&one_time).await.expect("metadata stays");
    assert_eq!(meta.last4.len(), 4);
    // Enough writes for every node to snapshot after the purge.
    for n in 10..30 {
        client
            .tokenize(&tokenize_request(&pan("601111111111", n), Some("m2")))
            .await
            .unwrap();
    }
    c.wait_all_applied().await;
    // Snapshots come due on a one-second check: wait for node 2's first one past the
    // purge (the writes above are all after it) rather than for a fixed time.
    let past_purge = c.status(2).await.expect("node 2 status")["applied_index"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(20);
    wait_for(
        "node 2 to snapshot after the purge",
        Duration::from_secs(30),
        || async {
            c.status(2)
                .await
                .and_then(|s| s["snapshot_index"].as_u64())
                .is_some_and(|i| i > past_purge)
        },
    )
    .await;
    c.kill(2);
    let after = kura_node::store::offline::read_vault(&db).unwrap();
    let r = after.vault.any_token(&one_time).unwrap();
    assert!(
        r.card.ciphertext.is_empty() && r.purged_at_ms.is_some(),
        "{r:?}"
    );
    assert!(!after
        .vault
        .any_token(&on_file)
        .unwrap()
        .card
        .ciphertext
        .is_empty());
    assert!(
        after.applied_index > 0,
        "the vault file holds the applied state"
    );
    // Node 2 compacted its log past the purge with a mark, which removes the snapshot
    // files from before it (the last of them held the card); a file still there was
    // installed from the leader after the purge.
    for f in kura_cluster_tests::procs::files(&c.data_dir(2).join("kura.snap")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            kura_cluster_tests::procs::first_needle_in(&bytes, [sealed.as_slice()]).is_none(),
            "{} still holds the purged card",
            f.display()
        );
    }
    // A snapshot's data built after the purge (a backup's, from node 1) holds the
    // card on file and not the purged one.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("after-purge.kbak");
    let config = c.config(0).to_str().unwrap().to_owned();
    let out = c.kura(&[
        "snapshot",
        "save",
        backup.to_str().unwrap(),
        "--config",
        &config,
    ]);
    assert!(
        out.status.success(),
        "snapshot save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&backup).unwrap();
    assert!(
        kura_cluster_tests::procs::first_needle_in(&bytes, [sealed.as_slice()]).is_none(),
        "the snapshot built after the purge still holds the purged card"
    );
    let cof = nonzero_end(after.vault.any_token(&on_file).unwrap().card.ciphertext);
    assert!(
        kura_cluster_tests::procs::first_needle_in(&bytes, [cof.as_slice()]).is_some(),
        "the control: a live card is found in the snapshot"
    );
}

/// Raw ciphertext as a needle for `first_needle_in`, which wants one that ends in a
/// byte other than zero: cut back to its last such byte (a prefix of at least 16
/// bytes of random ciphertext, as telling as the whole).
fn nonzero_end(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    assert!(bytes.len() >= 16, "ciphertext too short to search for");
    bytes
}
