//! Three real `kura` processes on loopback, each with its own data directory.

use kura_node::certs::{self, Algorithm};
use kura_node::net::tls::{Identity, OperatorRole};
use kura_sdk::{Client, ClientConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names of the three nodes, in id order.
pub const NAMES: [&str; 3] = ["main", "dr", "bk"];

/// The `kura` binary: `$KURA_BIN`, or the one in this test's target directory
/// (built once per test process, with the same profile, if it is missing).
pub fn kura_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("KURA_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test exe path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_path_buf();
        let bin = dir.join("kura");
        if !bin.exists() {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-p", "kura-node", "--bin", "kura"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            if let Some(target) = dir.parent() {
                cmd.env("CARGO_TARGET_DIR", target);
            }
            assert!(
                cmd.status().expect("cargo build").success(),
                "building the kura binary failed"
            );
        }
        assert!(
            bin.exists(),
            "no kura binary at {}; set KURA_BIN",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A port for a node to listen on. Ports come from a per-process counter below the
/// kernel's ephemeral range (32768 and up), so neither a parallel test nor any outgoing
/// connection can be handed the same port before the node binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 400) * 30;
    loop {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The test process's certificate authority: generated once, in memory, with an
/// Ed25519 key (quick to make); every cluster and acquirer simulator of the process
/// gets certificates from it, so any client of the process can trust them all.
struct TestCa {
    cert_pem: String,
    key_pem: String,
    trust: Arc<rustls::ClientConfig>,
}

fn test_ca() -> &'static TestCa {
    static CA: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let now = time_now();
        let ca = certs::new_ca("kura test CA", Algorithm::Ed25519, now, 30).expect("test CA");
        let roots = kura_sdk::tls::load_certs_pem(ca.cert_pem.as_bytes()).expect("CA pem");
        let mut store = rustls::RootCertStore::empty();
        store.add(roots[0].clone()).expect("CA cert");
        TestCa {
            trust: Arc::new(kura_sdk::tls::client_config(store, None).expect("client config")),
            cert_pem: ca.cert_pem,
            key_pem: ca.key_pem,
        }
    })
}

fn time_now() -> kura_node::certs::OffsetDateTime {
    kura_node::certs::OffsetDateTime::now_utc()
}

/// Writes the test CA as `<dir>/ca.crt` and a certificate for 127.0.0.1 as
/// `<dir>/<stem>.crt` and `.key`: a node's when `node` is given, else a plain server's.
pub fn write_test_certs(dir: &Path, stem: &str, node: Option<u64>) {
    let ca = test_ca();
    std::fs::create_dir_all(dir).unwrap();
    if !dir.join("ca.crt").exists() {
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
    }
    let who = node.map(|id| Identity::Node { id });
    let leaf = certs::new_leaf(
        &ca.cert_pem,
        &ca.key_pem,
        who.as_ref(),
        &["127.0.0.1".to_owned()],
        Algorithm::Ed25519,
        time_now(),
        30,
    )
    .expect("test certificate");
    certs::write(dir, stem, &leaf).expect("write test certificate");
}

/// Writes a secret file owner-only, as a node requires.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Client settings for `endpoints` with `bearer`, over TLS trusting the test CA.
pub fn client_config(endpoints: Vec<String>, bearer: &str) -> ClientConfig {
    ClientConfig::new(endpoints, bearer)
        .with_tls((*test_ca().trust).clone())
        .expect("tls")
}

/// A TLS client trusting the test CA and presenting a certificate for `identity` (none
/// when `None`), issued by the test CA or, with `other_ca`, by a CA nobody trusts.
pub fn client_tls_as(identity: Option<&Identity>, other_ca: bool) -> rustls::ClientConfig {
    let ca = test_ca();
    let roots = kura_sdk::tls::load_certs_pem(ca.cert_pem.as_bytes()).unwrap();
    let mut store = rustls::RootCertStore::empty();
    store.add(roots[0].clone()).unwrap();
    let Some(who) = identity else {
        return kura_sdk::tls::client_config(store, None).unwrap();
    };
    let stranger;
    let (issuer_crt, issuer_key) = if other_ca {
        stranger =
            certs::new_ca("not the cluster's CA", Algorithm::Ed25519, time_now(), 30).unwrap();
        (&stranger.cert_pem, &stranger.key_pem)
    } else {
        (&ca.cert_pem, &ca.key_pem)
    };
    let leaf = certs::new_leaf(
        issuer_crt,
        issuer_key,
        Some(who),
        &[],
        Algorithm::Ed25519,
        time_now(),
        30,
    )
    .unwrap();
    let chain = kura_sdk::tls::load_certs_pem(leaf.cert_pem.as_bytes()).unwrap();
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    kura_sdk::tls::client_config(store, Some((chain, key))).unwrap()
}

/// Writes an operator's certificate from the test CA as `<dir>/<name>.crt` and `.key`.
pub fn write_operator_cert(dir: &Path, name: &str, role: OperatorRole) {
    let ca = test_ca();
    let who = certs::operator(name, role).unwrap();
    let leaf = certs::new_leaf(
        &ca.cert_pem,
        &ca.key_pem,
        Some(&who),
        &[],
        Algorithm::Ed25519,
        time_now(),
        30,
    )
    .unwrap();
    certs::write(dir, name, &leaf).unwrap();
}

/// Client settings for admin `endpoints`, as the operator `admin` (role admin).
pub fn operator_config(endpoints: Vec<String>) -> ClientConfig {
    operator_config_as(endpoints, "admin", OperatorRole::Admin)
}

/// Client settings for admin `endpoints`, as operator `name` with `role`.
pub fn operator_config_as(endpoints: Vec<String>, name: &str, role: OperatorRole) -> ClientConfig {
    let who = Identity::Operator {
        name: name.to_owned(),
        role,
    };
    ClientConfig::new(endpoints, "")
        .with_tls(client_tls_as(Some(&who), false))
        .expect("tls")
}

/// A connector speaking TLS to anything the test CA signed.
pub fn tls_connector() -> Arc<dyn kura_sdk::wire::Connector> {
    Arc::new(kura_sdk::tls::TlsConnector::fixed(
        Arc::new(kura_sdk::wire::TcpConnector),
        (*test_ca().trust).clone(),
    ))
}

/// The `[tls]` table of node `name` whose certificates are in the config's directory;
/// renewed files are picked up within a second.
fn tls_toml(name: &str) -> String {
    format!(
        "[tls]\nca_file = \"certs/ca.crt\"\ncert_file = \"certs/{name}.crt\"\nkey_file = \"certs/{name}.key\"\nreload_interval_s = 1\n"
    )
}

/// A certificate for node `id` on 127.0.0.1 from the test CA, valid for `days`.
pub fn test_node_cert(id: u64, days: i64) -> certs::Issued {
    let ca = test_ca();
    certs::new_leaf(
        &ca.cert_pem,
        &ca.key_pem,
        Some(&Identity::Node { id }),
        &["127.0.0.1".to_owned()],
        Algorithm::Ed25519,
        time_now(),
        days,
    )
    .expect("test certificate")
}

/// A running three-node cluster. Dropping it kills every node.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub api: Vec<String>,
    /// Each node's peer listener (`raft_addr`).
    pub raft: Vec<String>,
    /// Each node's admin plane (`admin_addr`).
    pub admin: Vec<String>,
    children: Vec<Option<Child>>,
    configs: Vec<PathBuf>,
    /// Each node's name (main, dr, bk, then any added with [`ProcCluster::add_node`]).
    pub names: Vec<String>,
    /// Text appended to every config (for nodes added later).
    extra_toml: String,
    /// Extra arguments to `kura node` (e.g. `--enable-fault-injection`).
    pub node_args: Vec<String>,
    /// Plain HTTP everywhere (`tls.insecure`), for measuring what TLS costs.
    insecure: bool,
}

/// Client-side logs for debugging, once per process: RUST_LOG=kura_sdk=debug.
fn client_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The admin token of an insecure test cluster (its only admin credential).
const INSECURE_ADMIN_TOKEN: &str = "adm_insecure_test_token_0001";

impl ProcCluster {
    /// Writes configs (with `extra_toml` appended to each, e.g. a `[raft]` table) and starts all three.
    pub fn start(extra_toml: &str) -> ProcCluster {
        client_logs();
        let mut c = ProcCluster::prepare(extra_toml);
        for i in 0..3 {
            c.restart(i);
        }
        c
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.names[i])
    }

    /// Writes the config and certificate of a new node `name` (id: its index + 1) that
    /// lists every current node and itself as peers, and starts it with an empty data
    /// directory. It belongs to no cluster until the leader adds it. Returns its index.
    pub fn add_node(&mut self, name: &str, role: &str, never_lead: bool) -> usize {
        let i = self.names.len();
        self.names.push(name.to_owned());
        self.api.push(format!("127.0.0.1:{}", free_port()));
        self.raft.push(format!("127.0.0.1:{}", free_port()));
        self.admin.push(format!("127.0.0.1:{}", free_port()));
        write_test_certs(&self.dir.path().join("certs"), name, Some(i as u64 + 1));
        let mut text = format!(
            "node_id = {}\ndata_dir = \"{name}\"\nkek_file = \"kek.key\"\n",
            i + 1
        );
        for j in 0..=i {
            let (peer, peer_role, nl) = if j == i {
                (name, role, never_lead)
            } else {
                (
                    self.names[j].as_str(),
                    NAMES.get(j).copied().unwrap_or("bk"),
                    false,
                )
            };
            text += &format!(
                "[[peers]]\nid = {}\nname = \"{peer}\"\nrole = \"{peer_role}\"\napi_addr = \"{}\"\nraft_addr = \"{}\"\nadmin_addr = \"{}\"\nnever_lead = {nl}\n",
                j + 1,
                self.api[j],
                self.raft[j],
                self.admin[j],
            );
        }
        text += &tls_toml(name);
        text += &self.extra_toml;
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        self.configs.push(path);
        self.children.push(None);
        self.restart(i);
        i
    }

    /// Writes configs and keys without starting any node.
    pub fn prepare(raft_toml: &str) -> ProcCluster {
        ProcCluster::prepare_opts(raft_toml, &[])
    }

    /// Like [`ProcCluster::prepare`], with `never_lead = true` on the given nodes.
    pub fn prepare_opts(raft_toml: &str, never_lead: &[usize]) -> ProcCluster {
        ProcCluster::prepare_full(raft_toml, never_lead, None)
    }

    /// Starts three nodes in the explicit insecure mode (plain HTTP on loopback, the
    /// admin plane on a token): only to measure what TLS costs.
    pub fn start_insecure(extra_toml: &str) -> ProcCluster {
        let mut c = ProcCluster::prepare_full(extra_toml, &[], Some(INSECURE_ADMIN_TOKEN));
        c.insecure = true;
        for (i, path) in c.configs.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap();
            let secure = tls_toml(NAMES[i]);
            assert!(text.contains(&secure));
            let text = text.replace(&secure, "[tls]\ninsecure = true\n");
            std::fs::write(path, text).unwrap();
        }
        for i in 0..3 {
            c.restart(i);
        }
        c
    }

    /// The base URL of node `i`'s client API: `https`, or `http` in the insecure mode.
    pub fn api_url(&self, i: usize) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.api[i])
    }

    /// Client settings for this cluster's client API.
    fn client_cfg(&self, endpoints: Vec<String>, bearer: &str) -> ClientConfig {
        if self.insecure {
            ClientConfig::new(endpoints, bearer)
        } else {
            client_config(endpoints, bearer)
        }
    }

    /// Client settings for this cluster's admin plane, as its operator.
    fn admin_cfg(&self, endpoints: Vec<String>) -> ClientConfig {
        if self.insecure {
            ClientConfig::new(endpoints, INSECURE_ADMIN_TOKEN)
        } else {
            operator_config(endpoints)
        }
    }

    /// Starts three nodes that also take `token` as a break-glass admin token.
    pub fn start_with_break_glass(token: &str) -> ProcCluster {
        let mut c = ProcCluster::prepare_full("", &[], Some(token));
        for i in 0..3 {
            c.restart(i);
        }
        c
    }

    fn prepare_full(
        raft_toml: &str,
        never_lead: &[usize],
        break_glass: Option<&str>,
    ) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let api: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let raft: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let admin: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        write_secret(
            &dir.path().join("kek.key"),
            &format!("{}\n", "ab".repeat(32)),
        );
        // The operator the CLI presents (it looks beside the config).
        write_operator_cert(&dir.path().join("operators"), "admin", OperatorRole::Admin);
        let mut configs = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            write_test_certs(&dir.path().join("certs"), name, Some(i as u64 + 1));
            let mut text = format!(
                "node_id = {}\ndata_dir = \"{name}\"\nkek_file = \"kek.key\"\n",
                i + 1
            );
            if let Some(token) = break_glass {
                write_secret(&dir.path().join("break-glass.token"), token);
                text += "admin_token_file = \"break-glass.token\"\n";
            }
            for (j, peer) in NAMES.iter().enumerate() {
                text += &format!(
                    "[[peers]]\nid = {}\nname = \"{peer}\"\nrole = \"{peer}\"\napi_addr = \"{}\"\nraft_addr = \"{}\"\nadmin_addr = \"{}\"\nnever_lead = {}\n",
                    j + 1,
                    api[j],
                    raft[j],
                    admin[j],
                    never_lead.contains(&j)
                );
            }
            text += &tls_toml(name);
            text += raft_toml;
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, text).unwrap();
            configs.push(path);
        }
        ProcCluster {
            dir,
            api,
            raft,
            admin,
            children: vec![None, None, None],
            configs,
            names: NAMES.iter().map(|n| n.to_string()).collect(),
            extra_toml: raft_toml.to_owned(),
            node_args: Vec::new(),
            insecure: false,
        }
    }

    /// Starts three nodes with fault injection enabled (flag and config), `extra_toml`
    /// appended to each config.
    pub fn start_with_faults(extra_toml: &str, never_lead: &[usize]) -> ProcCluster {
        client_logs();
        let mut c = ProcCluster::prepare_opts(
            &format!("{extra_toml}\n[faults]\nenabled = true\n"),
            never_lead,
        );
        c.node_args = vec!["--enable-fault-injection".into()];
        for i in 0..3 {
            c.restart(i);
        }
        c
    }

    /// Sets node `i`'s fault switches (omitted ones cleared).
    pub async fn faults(&self, i: usize, state: kura_sdk::Faults) {
        let mut cfg = self.admin_cfg(vec![self.admin[i].clone()]);
        cfg.attempts_max = 1;
        Client::new(cfg)
            .set_faults(&state)
            .await
            .unwrap_or_else(|e| panic!("set faults on node {i}: {e}"));
    }

    /// Sends SIGSTOP (`stop = true`) or SIGCONT to node `i`.
    pub fn pause(&self, i: usize, stop: bool) {
        let pid = self.children[i].as_ref().expect("running").id() as i32;
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a child process we spawned and still own.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// The log file of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.names[i]))
    }

    /// Starts node `i` (again).
    pub fn restart(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = Command::new(kura_bin())
            .args(["node", "--config"])
            .arg(&self.configs[i])
            .args(&self.node_args)
            .env(
                "RUST_LOG",
                std::env::var("KURA_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn kura node");
        self.children[i] = Some(child);
    }

    /// Waits up to `within` for node `i` to exit by itself; its exit status. The node
    /// counts as stopped after (it can be started again).
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let child = self.children[i].as_mut().expect("node is running");
            if let Some(status) = child.try_wait().expect("wait for node") {
                self.children[i] = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} still runs after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An admin client over all three nodes' admin planes, as the test operator.
    pub fn admin(&self) -> Client {
        Client::new(self.admin_cfg(self.admin.clone()))
    }

    /// `/admin/v1/cluster/status` of node `i` (with the cluster id), if it answers.
    pub async fn admin_status(&self, i: usize) -> Option<Value> {
        let mut cfg = self.admin_cfg(vec![self.admin[i].clone()]);
        cfg.attempts_max = 1;
        cfg.attempt_timeout = Duration::from_secs(2);
        Client::new(cfg)
            .call(http::Method::GET, "/admin/v1/cluster/status", None)
            .await
            .ok()
            .map(|r| r.body)
    }

    /// A merchant client over the given nodes.
    pub fn client(&self, nodes: &[usize], key: &str) -> Client {
        Client::new(self.client_cfg(nodes.iter().map(|&i| self.api[i].clone()).collect(), key))
    }

    /// A merchant client of node `i` alone that makes one attempt per call: what that
    /// node answers, unretried.
    pub fn client_once(&self, i: usize, key: &str) -> Client {
        let mut cfg = self.client_cfg(vec![self.api[i].clone()], key);
        cfg.attempts_max = 1;
        Client::new(cfg)
    }

    /// `/v1/cluster/status` of node `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let mut cfg = self.client_cfg(vec![self.api[i].clone()], "");
        cfg.attempts_max = 1;
        cfg.attempt_timeout = Duration::from_secs(2);
        Client::new(cfg)
            .call(http::Method::GET, "/v1/cluster/status", None)
            .await
            .ok()
            .map(|r| r.body)
    }

    /// The sum of the samples on node `i`'s `/metrics` whose line starts with `prefix`
    /// (a metric name, with or without some of its labels).
    pub async fn metric(&self, i: usize, prefix: &str) -> f64 {
        let text = self
            .client(&[i], "")
            .call(http::Method::GET, "/metrics", None)
            .await
            .expect("metrics")
            .body
            .as_str()
            .unwrap_or_default()
            .to_owned();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits up to 30 s until node `i` has applied `target`; returns its status then.
    pub async fn wait_applied(&self, i: usize, target: u64, what: &str) -> Value {
        wait_for(what, Duration::from_secs(30), || async {
            self.status(i)
                .await
                .is_some_and(|s| s["applied_index"].as_u64().unwrap_or(0) >= target)
        })
        .await;
        self.status(i).await.expect("status")
    }

    /// Waits up to 30 s until node `i` has purged its log past `index`.
    pub async fn wait_purged(&self, i: usize, index: u64, what: &str) {
        wait_for(what, Duration::from_secs(30), || async {
            self.status(i)
                .await
                .is_some_and(|s| s["purged_index"].as_u64().unwrap_or(0) > index)
        })
        .await;
    }

    /// Waits until every running node has applied everything the leader had committed
    /// when called: what a node answers from its own state then reflects every write
    /// acknowledged before.
    pub async fn wait_all_applied(&self) {
        let leader = self.wait_leader().await;
        let committed = self.status(leader).await.expect("leader status")["committed_index"]
            .as_u64()
            .unwrap_or(0);
        for i in (0..3).filter(|&i| self.running(i)) {
            self.wait_applied(i, committed, &format!("node {i} to apply {committed}"))
                .await;
        }
    }

    /// Waits until node `i` answers.
    pub async fn wait_live(&self, i: usize) {
        wait_for("node to answer", Duration::from_secs(30), || async {
            self.status(i).await.is_some()
        })
        .await;
    }

    /// Forms the cluster through node 0.
    pub async fn init(&self) {
        for i in 0..3 {
            self.wait_live(i).await;
        }
        let mut cfg = self.admin_cfg(vec![self.admin[0].clone()]);
        cfg.attempts_max = 3;
        let r = Client::new(cfg)
            .call(http::Method::POST, "/admin/v1/init", None)
            .await
            .expect("init");
        assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
    }

    /// Waits for a leader among the running nodes and returns its index.
    pub async fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for i in 0..3 {
                if self.children[i].is_some()
                    && self.status(i).await.is_some_and(|s| s["state"] == "leader")
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 30 s");
    }

    /// Waits until node `i` has adopted the cluster id (it has joined).
    pub async fn wait_for_replicated_cluster_id(&self, i: usize) {
        wait_for("cluster id on node", Duration::from_secs(30), || async {
            self.admin_status(i)
                .await
                .is_some_and(|s| s["cluster_id"].is_string())
        })
        .await;
    }

    /// Runs the `kura` binary with `args` in the cluster's directory.
    pub fn kura(&self, args: &[&str]) -> std::process::Output {
        Command::new(kura_bin())
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run kura")
    }

    /// The config file of node `i`.
    pub fn config(&self, i: usize) -> &std::path::Path {
        &self.configs[i]
    }

    /// The process id of node `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// True when node `i` is running.
    pub fn running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// An admin call that must succeed; returns the body.
    pub async fn admin_call(&self, method: http::Method, path: &str, body: Option<Value>) -> Value {
        self.admin()
            .call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("admin call {path}: {e}"))
            .body
    }

    /// An admin call on node `i` only (node-local routes); panics on an error.
    pub async fn admin_call_on(&self, i: usize, method: http::Method, path: &str) -> Value {
        Client::new(self.admin_cfg(vec![self.admin[i].clone()]))
            .call(method, path, None)
            .await
            .unwrap_or_else(|e| panic!("admin call {path} on node {i}: {e}"))
            .body
    }

    /// Creates merchant `m` and returns it, keys included.
    pub async fn merchant_with(&self, m: &kura_sdk::CreateMerchantIn) -> kura_sdk::Merchant {
        self.admin()
            .create_merchant(m)
            .await
            .unwrap_or_else(|e| panic!("create merchant {}: {e}", m.merchant_id))
    }

    /// Creates merchant `id` and returns its secret key.
    pub async fn merchant(&self, id: &str) -> String {
        self.merchant_with(&new_merchant(id))
            .await
            .secret_key
            .expect("secret key")
    }
}

/// A tmpfs of a fixed size mounted on a directory (a disk that can fill), unmounted
/// when dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir` (created). `None` unless this process runs
    /// as root, which mounting needs; a failed mount as root panics.
    pub fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs {
            dir: dir.to_owned(),
        })
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        kura_node::files::filesystem_space(&self.dir)
            .expect("statvfs")
            .0
    }

    /// Writes zeros into `name` on it until `leave` bytes are free, or until it is
    /// full (`leave` 0).
    pub fn fill(&self, name: &str, leave: u64) {
        fill(&self.dir, name, leave);
    }
}

/// Writes zeros into `dir/name` until the file system holding `dir` has `leave` bytes
/// free, or until it is full (`leave` 0).
fn fill(dir: &Path, name: &str, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    let chunk = vec![0u8; 1 << 20];
    loop {
        let free = kura_node::files::filesystem_space(dir).expect("statvfs").0;
        if free <= leave {
            return;
        }
        let n = chunk.len().min((free - leave) as usize);
        if f.write_all(&chunk[..n]).is_err() {
            return; // full
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a node may still hold files open on it.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Runs `cmd` with `args`; panics with its stderr unless it succeeds.
fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An ext4 file system on a block device that can start failing, mounted on a
/// directory: a loop device over a sparse image kept on a tmpfs of its own. Filling
/// that tmpfs (`fail`) leaves the image no room for the blocks the file system has not
/// written yet, so the device answers those writes with I/O errors, as a dying disk
/// does: `fdatasync` reports the error and ext4 aborts its journal, leaving the file
/// system read-only. `repair` frees the room, checks the file system (replaying its
/// journal) and mounts it again: what survives is what reached the device.
pub struct LoopDisk {
    dir: PathBuf,
    backing: PathBuf,
    device: String,
}

impl LoopDisk {
    /// Makes a file system on a sparse image of twice `mib` MiB kept on a tmpfs of `mib`
    /// MiB (room for what the test writes) and mounts it on `dir` (created, mode 0700). `None` unless this process runs as root
    /// on a kernel with loop devices; a failure past that panics.
    pub fn mount(dir: &Path, mib: u64) -> Option<LoopDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/loop-control").exists() {
            return None;
        }
        let backing = dir.with_extension("device");
        let tmpfs = Tmpfs::mount(&backing, mib)?;
        std::mem::forget(tmpfs); // unmounted by this disk's drop, after the loop device
        let image = backing.join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len((2 * mib) << 20))
            .unwrap();
        run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        );
        let device = run(
            "losetup",
            &["-f".as_ref(), "--show".as_ref(), image.as_os_str()],
        );
        let disk = LoopDisk {
            dir: dir.to_owned(),
            backing,
            device,
        };
        std::fs::create_dir_all(dir).unwrap();
        disk.mount_fs();
        Some(disk)
    }

    fn mount_fs(&self) {
        run("mount", &[self.device.as_ref(), self.dir.as_os_str()]);
        let _ = std::fs::remove_dir(self.dir.join("lost+found"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// From now on the device fails every write to a block the file system has not
    /// written before.
    pub fn fail(&self) {
        fill(&self.backing, "no-room", 0);
    }

    /// The device works again: the room freed, the file system unmounted (nothing may
    /// hold it open), checked and repaired (`e2fsck -fy`: the journal replayed) and
    /// mounted again.
    pub fn repair(&self) {
        run("umount", &[self.dir.as_os_str()]);
        std::fs::remove_file(self.backing.join("no-room")).unwrap();
        // e2fsck exits 1 when it corrected the file system: not a failure here.
        let status = Command::new("e2fsck")
            .args(["-f", "-y", &self.device])
            .output()
            .expect("run e2fsck");
        assert!(
            matches!(status.status.code(), Some(0 | 1)),
            "e2fsck could not repair {}: {}",
            self.device,
            String::from_utf8_lossy(&status.stdout)
        );
        self.mount_fs();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        drop(Tmpfs {
            dir: self.backing.clone(),
        });
    }
}

impl Drop for ProcCluster {
    /// Kills every node. With `KURA_KEEP_TEST_DIRS=1` the data and logs stay on disk.
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if std::env::var_os("KURA_KEEP_TEST_DIRS").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("kept test cluster files in {}", kept.display());
        }
    }
}

/// Polls `probe` every 50 ms until it holds; panics after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = kura_node::cli::wait_until(what, timeout, probe).await {
        panic!("{e}");
    }
}

/// A response as raw parts.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl RawResponse {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// Sends one request to `addr` with exactly the given headers (no retries, no redirects).
pub async fn raw(
    addr: &str,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> RawResponse {
    try_raw(addr, method, path, headers, body)
        .await
        .expect("an answer")
}

/// Like [`raw`], but `None` when no answer came.
pub async fn try_raw(
    addr: &str,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Option<RawResponse> {
    try_raw_from(None, addr, method, path, headers, body).await
}

/// Opens TCP connections from a given loopback source address (any of 127.0.0.0/8),
/// so that a test can act as several clients.
pub struct FromIp(pub std::net::Ipv4Addr);

impl kura_sdk::wire::Connector for FromIp {
    fn connect<'a>(
        &'a self,
        addr: &'a str,
    ) -> kura_sdk::wire::BoxFut<'a, std::io::Result<kura_sdk::wire::BoxIo>> {
        Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from((self.0, 0)))?;
            let target = tokio::net::lookup_host(addr)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let s = socket.connect(target).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as kura_sdk::wire::BoxIo)
        })
    }
}

/// TLS connections trusting the test CA, from source address `ip`.
pub fn tls_from(ip: std::net::Ipv4Addr) -> kura_sdk::tls::TlsConnector {
    kura_sdk::tls::TlsConnector::fixed(Arc::new(FromIp(ip)), (*test_ca().trust).clone())
}

/// Like [`try_raw`], from source address `from` (the default one when `None`).
pub async fn try_raw_from(
    from: Option<std::net::Ipv4Addr>,
    addr: &str,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Option<RawResponse> {
    use kura_sdk::wire::{tokio_spawner, HttpPool};
    let connector: Arc<dyn kura_sdk::wire::Connector> = match from {
        None => tls_connector(),
        Some(ip) => Arc::new(tls_from(ip)),
    };
    let pool = HttpPool::new(connector, tokio_spawner(), 1 << 20);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let bytes = body.map_or_else(Vec::new, |b| serde_json::to_vec(&b).unwrap());
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
        .unwrap();
    let resp = pool.send(addr, req, Duration::from_secs(10)).await.ok()?;
    Some(RawResponse {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    })
}

/// A `kura acquirer-sim` process, serving TLS with a certificate from the test CA.
/// Dropping it kills it.
pub struct AcquirerSim {
    pub addr: String,
    child: Option<Child>,
    certs: tempfile::TempDir,
}

impl AcquirerSim {
    /// Starts a simulator on a fresh loopback port and waits until it answers.
    pub async fn start() -> AcquirerSim {
        let certs = tempfile::tempdir().unwrap();
        write_test_certs(certs.path(), "acquirer", None);
        let mut s = AcquirerSim {
            addr: format!("127.0.0.1:{}", free_port()),
            child: None,
            certs,
        };
        s.restart().await;
        s
    }

    /// The simulator's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again on the same address (its memory starts empty).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(kura_bin())
            .args(["acquirer-sim", "--listen", &self.addr, "--cert-file"])
            .arg(self.certs.path().join("acquirer.crt"))
            .arg("--key-file")
            .arg(self.certs.path().join("acquirer.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn acquirer-sim");
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_for("the acquirer simulator", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move {
                try_raw(&addr, http::Method::GET, "/health", &[], None)
                    .await
                    .is_some_and(|r| r.status == 200)
            }
        })
        .await;
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sets its latency and failure mode.
    pub async fn control(&self, latency_ms: u64, fail: &str) {
        let r = raw(
            &self.addr,
            http::Method::POST,
            "/control",
            &[],
            Some(json!({ "latency_ms": latency_ms, "fail": fail })),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }

    /// Its counters: `authorizations` per transaction id, totals.
    pub async fn counters(&self) -> Value {
        raw(
            &self.addr,
            http::Method::GET,
            "/control/counters",
            &[],
            None,
        )
        .await
        .body
    }
}

impl Drop for AcquirerSim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[acquirer]` config table for two routes.
pub fn acquirer_toml(
    cafis: &AcquirerSim,
    cardnet: &AcquirerSim,
    request_timeout_ms: u64,
) -> String {
    format!(
        "[acquirer]\nca_file = \"certs/ca.crt\"\nrequest_timeout_ms = {request_timeout_ms}\nhealth_interval_ms = 200\n\
         [[acquirer.routes]]\nname = \"cafis\"\naddr = \"{}\"\n\
         [[acquirer.routes]]\nname = \"cardnet\"\naddr = \"{}\"\n",
        cafis.addr, cardnet.addr
    )
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The first of `needles` that occurs in the file contents `bytes`, if any. The zeros
/// at the end of `bytes` are skipped, once: a log segment is preallocated (64 MiB of
/// zeros past its last record), and scanning them byte by byte for every needle would
/// take a debug build minutes. A needle must end with a byte that is not zero, so none
/// can end in them.
pub fn first_needle_in<'a>(
    bytes: &[u8],
    needles: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'a [u8]> {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let written = &bytes[..end];
    needles.into_iter().find(|n| {
        assert!(
            n.last().is_some_and(|b| *b != 0),
            "a needle must end with a byte that is not zero"
        );
        written.windows(n.len()).any(|w| w == *n)
    })
}

/// Where every copy of `needle` in `bytes` starts: a store's file may hold several (redb
/// keeps older pages until they are reused), and a test that edits a value on disk
/// must edit each.
pub fn needle_offsets(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Copies the directory tree at `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A merchant named after its id, with the defaults.
pub fn new_merchant(id: &str) -> kura_sdk::CreateMerchantIn {
    kura_sdk::CreateMerchantIn {
        merchant_id: id.to_owned(),
        name: id.to_owned(),
        allowed_origins: Vec::new(),
        token_format: kura_sdk::TokenFormat::Opaque,
        require_three_d_secure: false,
    }
}

/// A tokenization of `number` (expiring 12/2031): card-on-file for `member`, or a
/// one-time token without one.
pub fn tokenize_request(number: &str, member: Option<&str>) -> kura_sdk::TokenizeIn {
    let card = kura_sdk::CardIn::new(number, 12, 2031);
    match member {
        Some(m) => kura_sdk::TokenizeIn::card_on_file(card, m),
        None => kura_sdk::TokenizeIn::one_time(card),
    }
}
