//! The systems under test and their requests: kura through its SDK, etcd through its
//! JSON gateway (`/v3/kv/put`, `/v3/kv/range`) over the SDK's own HTTP/1.1 connection
//! pool, so both see the same client transport.

use crate::harness::Op;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use kura_cluster_tests::procs::free_port;
use kura_node::certs::{self, Algorithm};
use kura_node::net::tls::Identity;
use kura_node::vault::card::luhn_check_digit;
use kura_sdk::tls::TlsConnector;
use kura_sdk::wire::{tokio_spawner, HttpPool, TcpConnector};
use kura_sdk::{CardInput, Client, TokenizeRequest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Per-request deadline for both systems.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A valid (Luhn) 16-digit test card number for `n`.
pub fn pan(n: u64) -> String {
    let body = format!("424242{:09}", n % 1_000_000_000);
    format!("{body}{}", luhn_check_digit(&body))
}

/// The card-on-file tokenization of client `client`'s `seq`-th card. The member id is
/// padded to its 64-character maximum so that the request is a realistic size; its
/// sequence number is split by a letter, because a run of 12 or more digits that
/// passes Luhn would be refused as a card number in the wrong field (`pan_in_field`).
pub fn tokenize_request(client: u32, seq: u64) -> TokenizeRequest {
    card_on_file("bench", client, seq, pan(card_number(client, seq)))
}

/// The order id of a payments run's flow; its idempotency keys add `-a` and `-c`.
/// Letters keep the numbers apart: digits joined by single dashes would read as a
/// card number to the node's guard (`pan_in_field`) once there are twelve of them.
fn pay_order(run: &str, client: u32, seq: u64) -> String {
    format!("{run}-c{client}s{seq}")
}

/// The card a payments run `run` tokenizes for client `client`'s `seq`-th flow: a card
/// the simulator approves, on file for a member of that run only. A card already on
/// file for the member would come back as it is, without a write; so would a flow
/// whose order and idempotency keys an earlier run used (a replay): neither is a flow.
pub fn pay_card(run: &str, client: u32, seq: u64) -> TokenizeRequest {
    card_on_file(run, client, seq, approved_pan(card_number(client, seq)))
}

/// Client `client`'s `seq`-th card number (before [`pan`] makes it a card's).
fn card_number(client: u32, seq: u64) -> u64 {
    u64::from(client) * 10_000_000 + seq
}

/// Client `client`'s `seq`-th card, on file for a member of `family`.
fn card_on_file(family: &str, client: u32, seq: u64, pan: String) -> TokenizeRequest {
    let member = format!(
        "{family}-{client:04}-s{:06}s{:06}-",
        seq / 1_000_000,
        seq % 1_000_000
    );
    TokenizeRequest::card_on_file(CardInput::new(pan, 12, 2035), format!("{member:x<64}"))
}

/// The acquirer simulator's test cards, by their last four digits (docs/operations.md):
/// declined, or held without an answer (a payment in doubt). Never approved.
const SIMULATOR_TEST_CARD_ENDINGS: [&str; 3] = ["0002", "9995", "0119"];

/// The first card number from `n` on that the simulator approves: a payments workload
/// measures the flow that succeeds, not three flows in ten thousand that wait out a
/// held authorisation.
pub fn approved_pan(mut n: u64) -> String {
    loop {
        let p = pan(n);
        if !SIMULATOR_TEST_CARD_ENDINGS.iter().any(|e| p.ends_with(e)) {
            return p;
        }
        n += 1;
    }
}

/// Bytes of one tokenize request body (etcd's values are made this size).
pub fn tokenize_body_bytes() -> usize {
    serde_json::to_vec(&tokenize_request(0, 0))
        .expect("json")
        .len()
}

/// kura: tokenize a card on file.
#[derive(Clone)]
pub struct KuraTokenize(pub Client);

impl Op for KuraTokenize {
    async fn call(&self, client: u32, seq: u64) -> Result<(), String> {
        self.0
            .tokenize(&tokenize_request(client, seq))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// kura: read one of `tokens`' metadata (linearizable).
#[derive(Clone)]
pub struct KuraRead {
    pub client: Client,
    pub tokens: Arc<Vec<String>>,
}

impl Op for KuraRead {
    async fn call(&self, client: u32, seq: u64) -> Result<(), String> {
        let i = spread(client, seq, self.tokens.len());
        self.client
            .get_token(&self.tokens[i])
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// kura: tokenize, authorise through an acquirer simulator, capture.
#[derive(Clone)]
pub struct KuraPay {
    pub client: Client,
    /// Makes members, order ids and idempotency keys unique across runs on one
    /// cluster: each run needs its own (at most 20 characters, starting with a letter
    /// and with letters between its numbers, like `b1234567r2n64`).
    pub run: String,
}

impl Op for KuraPay {
    async fn call(&self, client: u32, seq: u64) -> Result<(), String> {
        let err = |e: kura_sdk::Error| e.to_string();
        let token = self
            .client
            .tokenize(&pay_card(&self.run, client, seq))
            .await
            .map_err(err)?
            .token;
        let order = pay_order(&self.run, client, seq);
        let req = kura_sdk::AuthorizeIn {
            token,
            amount: 1200,
            currency: "JPY".into(),
            order_id: order.clone(),
            capture: false,
            three_d_secure: None,
        };
        let paid = self
            .client
            .authorize(&req, &format!("{order}-a"))
            .await
            .map_err(err)?;
        self.client
            .capture(&paid.id, Some(1200), &format!("{order}-c"))
            .await
            .map_err(err)?;
        Ok(())
    }
}

/// Spreads reads over `len` items, differently per client.
fn spread(client: u32, seq: u64, len: usize) -> usize {
    ((u64::from(client).wrapping_mul(7_919) + seq.wrapping_mul(104_729)) % len as u64) as usize
}

/// An etcd client over the JSON gateway of one member, over TLS 1.3, with etcd's
/// authentication token once the cluster has one (as kura's API plane: server TLS and
/// a credential on every request).
#[derive(Clone)]
pub struct Etcd {
    pool: Arc<HttpPool>,
    pub addr: String,
    token: Option<String>,
}

impl Etcd {
    pub fn new(addr: String, tls: &rustls::ClientConfig, token: Option<String>) -> Etcd {
        Etcd {
            pool: Arc::new(HttpPool::new(
                Arc::new(TlsConnector::fixed(Arc::new(TcpConnector), tls.clone())),
                tokio_spawner(),
                16 << 20,
            )),
            addr,
            token,
        }
    }

    /// POSTs `body` to a `/v3/...` path; the JSON answer of a 200.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = self
            .pool
            .send(&self.addr, req, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!(
                "etcd {path}: {} {}",
                resp.status(),
                String::from_utf8_lossy(resp.body())
            ));
        }
        serde_json::from_slice(resp.body()).map_err(|e| format!("etcd {path}: {e}"))
    }

    pub async fn put(&self, key: &str, value: &str) -> Result<(), String> {
        self.post(
            "/v3/kv/put",
            &json!({ "key": B64.encode(key), "value": value }),
        )
        .await
        .map(|_| ())
    }
}

/// etcd: put a value the size of a kura tokenize request (base64 in the JSON body).
#[derive(Clone)]
pub struct EtcdPut {
    pub etcd: Etcd,
    pub value_b64: Arc<String>,
}

impl EtcdPut {
    pub fn new(etcd: Etcd, value_bytes: usize) -> EtcdPut {
        let value: Vec<u8> = (0..value_bytes).map(|i| b'a' + (i % 26) as u8).collect();
        EtcdPut {
            etcd,
            value_b64: Arc::new(B64.encode(value)),
        }
    }
}

impl Op for EtcdPut {
    async fn call(&self, client: u32, seq: u64) -> Result<(), String> {
        self.etcd
            .put(&format!("bench/{client:04}/{seq:012}"), &self.value_b64)
            .await
    }
}

/// etcd: a linearizable range read of one of `keys` (etcd's default consistency).
#[derive(Clone)]
pub struct EtcdRange {
    pub etcd: Etcd,
    pub keys: Arc<Vec<String>>,
}

impl Op for EtcdRange {
    async fn call(&self, client: u32, seq: u64) -> Result<(), String> {
        let key = &self.keys[spread(client, seq, self.keys.len())];
        let r = self
            .etcd
            .post("/v3/kv/range", &json!({ "key": B64.encode(key) }))
            .await?;
        if r["kvs"].as_array().is_some_and(|k| k.len() == 1) {
            Ok(())
        } else {
            Err(format!("etcd range {key}: no value: {r}"))
        }
    }
}

/// Three etcd members on loopback, each with its own data directory under `dir`, with
/// TLS on client and peer links, client certificates required on the peer links, and
/// (after [`EtcdCluster::enable_auth`]) a token required on every client request —
/// kura's API plane, too, is server TLS and a bearer key; wrk cannot present a client
/// certificate. Certificates come from a CA made for the run. Dropping it kills them.
pub struct EtcdCluster {
    pub client_addrs: Vec<String>,
    children: Vec<Child>,
    tls: rustls::ClientConfig,
    token: Option<String>,
}

/// Writes a CA and `<stem>.crt`/`.key` for 127.0.0.1 (server and client use) under
/// `dir`; returns the CA's PEM.
fn etcd_certs(dir: &Path, stems: &[String]) -> Result<String, String> {
    let now = kura_node::certs::OffsetDateTime::now_utc();
    let ca = certs::new_ca("etcd bench CA", Algorithm::P256, now, 30)?;
    certs::write(dir, "etcd-ca", &ca)?;
    for (i, stem) in stems.iter().enumerate() {
        let leaf = certs::new_leaf(
            &ca.cert_pem,
            &ca.key_pem,
            Some(&Identity::Node { id: i as u64 }),
            &["127.0.0.1".to_owned()],
            Algorithm::P256,
            now,
            30,
        )?;
        certs::write(dir, stem, &leaf)?;
    }
    Ok(ca.cert_pem)
}

impl EtcdCluster {
    pub async fn start(dir: &Path) -> Result<EtcdCluster, String> {
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial = (0..3)
            .map(|i| format!("m{i}=https://127.0.0.1:{}", peer[i]))
            .collect::<Vec<_>>()
            .join(",");
        let stems: Vec<String> = (0..3).map(|i| format!("etcd-m{i}")).collect();
        etcd_certs(dir, &stems)?;
        let f = |name: &str| dir.join(name).display().to_string();
        let tls = kura_sdk::tls::client_config(
            kura_sdk::tls::roots_from_file(&dir.join("etcd-ca.crt")).map_err(|e| e.0)?,
            None,
        )
        .map_err(|e| e.0)?;
        let mut children = Vec::new();
        for i in 0..3 {
            let (crt, key) = (f(&format!("etcd-m{i}.crt")), f(&format!("etcd-m{i}.key")));
            let data: PathBuf = dir.join(format!("etcd-m{i}"));
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))
                .map_err(|e| e.to_string())?;
            let child = Command::new("etcd")
                .arg(format!("--name=m{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!(
                    "--listen-client-urls=https://127.0.0.1:{}",
                    client[i]
                ))
                .arg(format!(
                    "--advertise-client-urls=https://127.0.0.1:{}",
                    client[i]
                ))
                .arg(format!("--listen-peer-urls=https://127.0.0.1:{}", peer[i]))
                .arg(format!(
                    "--initial-advertise-peer-urls=https://127.0.0.1:{}",
                    peer[i]
                ))
                .arg(format!("--cert-file={crt}"))
                .arg(format!("--key-file={key}"))
                // No `--trusted-ca-file`: with it etcd requires client certificates.
                .arg(format!("--peer-cert-file={crt}"))
                .arg(format!("--peer-key-file={key}"))
                .arg(format!("--peer-trusted-ca-file={}", f("etcd-ca.crt")))
                .arg("--peer-client-cert-auth")
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=kura-bench")
                // Simple tokens (a random string looked up per request, as kura's keys);
                // an hour, so that none expires between cells.
                .arg("--auth-token=simple")
                .arg("--auth-token-ttl=3600")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start etcd (is etcd-server installed?): {e}"))?;
            children.push(child);
        }
        let c = EtcdCluster {
            client_addrs: client.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            children,
            tls,
            token: None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while c.leader().await.is_none() {
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("etcd-m0.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "etcd formed no cluster within 30 s; the end of m0's log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(c)
    }

    /// A client of the member at `addr`.
    pub fn client(&self, addr: String) -> Etcd {
        Etcd::new(addr, &self.tls, self.token.clone())
    }

    /// Turns on etcd's authentication (a root user with the root role) and logs in:
    /// every later request carries the token. Returns it.
    pub async fn enable_auth(&mut self) -> Result<String, String> {
        let leader = self.leader().await.ok_or("etcd has no leader")?;
        let c = self.client(leader);
        let password = format!("bench-{}", std::process::id());
        // The root role may already exist; the rest must succeed.
        let _ = c
            .post("/v3/auth/role/add", &json!({ "name": "root" }))
            .await;
        c.post(
            "/v3/auth/user/add",
            &json!({ "name": "root", "password": password }),
        )
        .await?;
        c.post(
            "/v3/auth/user/grant",
            &json!({ "user": "root", "role": "root" }),
        )
        .await?;
        c.post("/v3/auth/enable", &json!({})).await?;
        let r = c
            .post(
                "/v3/auth/authenticate",
                &json!({ "name": "root", "password": password }),
            )
            .await?;
        let token = r["token"]
            .as_str()
            .ok_or_else(|| format!("etcd gave no token: {r}"))?
            .to_owned();
        self.token = Some(token.clone());
        Ok(token)
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The client address of the member that leads, once every member agrees on one.
    pub async fn leader(&self) -> Option<String> {
        let mut leader = None;
        for addr in &self.client_addrs {
            let s = self
                .client(addr.clone())
                .post("/v3/maintenance/status", &json!({}))
                .await
                .ok()?;
            let (me, lead) = (s["header"]["member_id"].as_str()?, s["leader"].as_str()?);
            if lead == "0" {
                return None;
            }
            if me == lead {
                leader = Some(addr.clone());
            }
        }
        leader
    }

    /// etcd's version, as `etcd --version` prints it.
    pub fn version() -> String {
        Command::new("etcd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "etcd (version unknown)".into())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(r: &TokenizeRequest) -> String {
        serde_json::to_value(r).unwrap()["member_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn each_payments_run_tokenizes_for_members_of_its_own() {
        let (a, b) = (pay_card("b123n16", 3, 7), pay_card("b123n64", 3, 7));
        assert_ne!(member(&a), member(&b));
        assert_ne!(member(&a), member(&tokenize_request(3, 7)));
        assert_eq!(member(&a), member(&pay_card("b123n16", 3, 7)));
        assert_eq!(member(&a).len(), 64);
    }

    #[test]
    fn no_id_of_a_payments_run_reads_as_a_card_number() {
        use kura_node::api::fields::holds_pan;
        for run in ["b4194303r3n64", "load4194303p"] {
            for client in [0, 9, 63, 255] {
                for seq in (0..200_000).step_by(997) {
                    let order = pay_order(run, client, seq);
                    for id in [
                        member(&pay_card(run, client, seq)),
                        format!("{order}-a"),
                        format!("{order}-c"),
                        order,
                    ] {
                        assert!(!holds_pan(&id), "{id}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_payments_workload_never_uses_a_simulator_test_card() {
        let mut skipped = 0;
        for n in 0..100_000 {
            let p = approved_pan(n);
            assert!(
                !SIMULATOR_TEST_CARD_ENDINGS.iter().any(|e| p.ends_with(e)),
                "{p}"
            );
            if p != pan(n) {
                skipped += 1;
            }
        }
        // Three endings in ten thousand numbers each.
        assert!((20..=40).contains(&skipped), "{skipped}");
    }
}
