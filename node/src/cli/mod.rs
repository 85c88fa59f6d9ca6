//! The `kura` command line.

pub mod certs;
mod client;
pub mod member;
pub mod snapshot;
pub mod up;

pub use certs::CertsCmd;
pub use client::{
    admin_client, ca_trust, config_trust, fetch_statuses, init, local_endpoints, wait_until,
    OPERATOR_CERT_ENV, OPERATOR_KEY_ENV,
};

use crate::config::{LogFormat, NodeConfig};
use clap::{Parser, Subcommand};

use kura_sdk::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use std::time::Duration;

/// kura: a replicated payment-card token vault.
#[derive(Debug, Parser)]
#[command(name = "kura", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KURA_COMMIT"), ")"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How `kura status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `kura leader ...`.
#[derive(Debug, Subcommand)]
pub enum LeaderCmd {
    /// Hand leadership to the named member (caught up and allowed to lead); returns once
    /// it leads. Counted as an `operator` leader change.
    Transfer {
        /// The member to lead (main, dr or bk).
        #[arg(long)]
        to: String,
    },
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run one node from its TOML config file (see ops/main.toml, ops/dr.toml, ops/bk.toml).
    Node {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Override the log format from the config (`text` or `json`).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Allow the fault-injection admin endpoint (tests only; the config must also set
        /// `[faults] enabled = true`).
        #[arg(long)]
        enable_fault_injection: bool,
        /// Record wall-clock marks along each write's path into DIR/<node id>.tl (a build
        /// with the `timeline` feature only; `kura-bench timeline`).
        #[arg(long, value_name = "DIR", hide = true)]
        timeline: Option<PathBuf>,
    },
    /// Form the cluster from the config's peers, once. Idempotent; refuses if any peer
    /// already belongs to a cluster or holds data.
    Init {
        /// Any member's config file (the node it names forms the cluster).
        #[arg(long)]
        config: PathBuf,
    },
    /// Show members, roles, the leader, term, log indices and per-follower lag.
    Status {
        /// A config file whose peers to ask.
        #[arg(long, conflicts_with = "endpoints")]
        config: Option<PathBuf>,
        /// API addresses to ask, comma-separated (default: the local `kura up` cluster).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// The CA to trust with `--endpoints` (default for the local cluster:
        /// kura-data/ca/ca.crt when it exists; none means plain HTTP).
        #[arg(long, conflicts_with = "config")]
        ca_file: Option<PathBuf>,
        /// `table` (default) or `json` (every node's status document, for scripts).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The same as `-o json`.
        #[arg(long, conflicts_with = "output")]
        json: bool,
    },
    /// The cluster's members: list, add, remove, replace.
    Member {
        /// Any member's config file (for the admin endpoints and operator certificate).
        #[arg(long, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: member::MemberCmd,
    },
    /// Backups: save one from the leader, verify one offline, restore one as a new
    /// cluster.
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot::SnapshotCmd,
    },
    /// Disaster recovery: make this stopped node's data (every entry of its log
    /// applied) a new one-member cluster, when every other member is lost for good.
    /// Refused while any other member answers; recorded in the audit trail; the old
    /// data directory is kept beside it.
    ForceNewCluster {
        /// The surviving node's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Move leadership: `kura leader transfer --to NAME`.
    Leader {
        /// Any member's config file (for the admin endpoints and operator certificate).
        #[arg(long, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: LeaderCmd,
    },
    /// Start a local three-node cluster (main, dr, bk) on loopback and print how to use it.
    Up {
        /// Where configs, keys, databases and logs go.
        #[arg(long, default_value = "kura-data")]
        data_dir: PathBuf,
        /// API ports are base..base+2, Raft ports base+100..base+102.
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Plain HTTP on every plane instead of TLS (loopback only; for experiments).
        /// Applies when the configs are first written.
        #[arg(long)]
        insecure: bool,
    },
    /// Manage merchants through the admin API.
    Merchant {
        /// Any member's config file (for the endpoints and the admin token).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: MerchantCmd,
    },
    /// Manage data keys: status, rotation, retirement.
    Keys {
        /// Any member's config file (for the endpoints and the admin token).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Move leadership away from a node, mark it not ready and keep it from standing
    /// for election; returns when it is safe to stop.
    Drain {
        /// The member's name (main, dr, bk).
        name: String,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Undo `kura drain`.
    Undrain {
        name: String,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a node's whole vault (every index both ways, every count, every payment,
    /// the audit chain) and wait for the outcome; exits non-zero on a violation.
    Scrub {
        /// The member's name (default: the config's own node).
        name: Option<String>,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Compare the members' vaults: a marker goes through the log, every member hashes
    /// its whole vault as it stands just after it, and any member whose hash differs
    /// from the rest is named. Waits for the outcome; exits non-zero unless every
    /// member's vault is the same.
    Compare {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run a standalone acquirer simulator (test cards, latency and failure injection;
    /// see docs/operations.md).
    AcquirerSim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: String,
        /// Its TLS certificate (PEM); with `--key-file`.
        #[arg(long, requires = "key_file", conflicts_with = "insecure")]
        cert_file: Option<PathBuf>,
        /// Its TLS private key (PEM).
        #[arg(long, requires = "cert_file")]
        key_file: Option<PathBuf>,
        /// Plain HTTP (a loopback address only; for experiments).
        #[arg(long, required_unless_present = "cert_file")]
        insecure: bool,
    },
    /// Read and verify the hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Create and list TLS certificates: the cluster CA, node certificates, operators'
    /// client certificates. Keys are written 0600; no file is ever overwritten.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

/// The main node's config written by `kura up`.
pub const DEFAULT_CONFIG: &str = "kura-data/main.toml";

/// Data key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Show every data key version, its state and card count, and the re-wrap progress.
    Status,
    /// Make a new data key version current; a background re-wrap moves cards to it.
    Rotate,
    /// Re-wrap every data key under the nodes' current key-encryption key (after giving
    /// every node a new `kek_file`, the old one kept in `kek_previous_files`).
    RotateKek,
    /// Open every stored card under its data key on the leader and report failures.
    Verify,
    /// Destroy an old data key version once no card uses it.
    Retire {
        #[arg(long)]
        version: u32,
    },
}

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Print audit records as JSON lines.
    List {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// How many records (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Recompute the chain and name the first broken record. With `--data-dir`, reads a
    /// stopped node's database (or a copy) directly; otherwise asks the leader.
    Verify {
        /// A node's data directory (holding kura.redb), read offline.
        #[arg(long, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// A signed head exported earlier with `kura audit head`: the chain must still
        /// hold it.
        #[arg(long)]
        signed_head: Option<PathBuf>,
        /// Offline only: KEK files (current and previous) to check the signatures with.
        #[arg(long = "kek-file", requires = "data_dir")]
        kek_files: Vec<PathBuf>,
    },
    /// Print the chain's head signed now (JSON), to keep outside the cluster.
    Head {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Merchant subcommands.
#[derive(Debug, Subcommand)]
pub enum MerchantCmd {
    /// Create a merchant and print its secret and publishable keys (shown once).
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// Browser origins allowed to tokenize with the publishable key (repeatable).
        #[arg(long = "allowed-origin")]
        allowed_origins: Vec<String>,
        /// `opaque` (tok_...) or `numeric` (as long as the card number, keeps its last four).
        #[arg(long, default_value = "opaque")]
        token_format: String,
    },
    /// List merchants.
    List,
    /// Change a merchant's allowed origins or token format.
    Update {
        #[arg(long)]
        id: String,
        /// Replaces the allowed origins (repeatable; give none with --clear-origins).
        #[arg(long = "allowed-origin")]
        allowed_origins: Vec<String>,
        /// Removes every allowed origin.
        #[arg(long, conflicts_with = "allowed_origins")]
        clear_origins: bool,
        #[arg(long)]
        token_format: Option<String>,
    },
    /// Issue a new key; the old one stops working at once.
    RotateKey {
        #[arg(long)]
        id: String,
        /// Rotate the publishable key instead of the secret key.
        #[arg(long)]
        publishable: bool,
    },
}

/// `kura merchant ...`.
pub async fn merchant(config: &Path, cmd: MerchantCmd) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let client = admin_client(&cfg, config)?;
    let (method, path, body) = match cmd {
        MerchantCmd::Create {
            id,
            name,
            allowed_origins,
            token_format,
        } => (
            http::Method::POST,
            "/admin/v1/merchants".to_owned(),
            Some(
                json!({ "merchant_id": id, "name": name, "allowed_origins": allowed_origins, "token_format": token_format }),
            ),
        ),
        MerchantCmd::List => (http::Method::GET, "/admin/v1/merchants".to_owned(), None),
        MerchantCmd::Update {
            id,
            allowed_origins,
            clear_origins,
            token_format,
        } => {
            let mut body = json!({});
            if clear_origins || !allowed_origins.is_empty() {
                body["allowed_origins"] = json!(allowed_origins);
            }
            if let Some(f) = token_format {
                body["token_format"] = json!(f);
            }
            (
                http::Method::PATCH,
                format!("/admin/v1/merchants/{id}"),
                Some(body),
            )
        }
        MerchantCmd::RotateKey { id, publishable } => (
            http::Method::POST,
            format!("/admin/v1/merchants/{id}/rotate-key"),
            Some(json!({ "key": if publishable { "publishable" } else { "secret" } })),
        ),
    };
    print_call(&client, method, &path, body).await
}

async fn print_call(
    client: &Client,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(), String> {
    let r = client
        .call(method, path, body)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string_pretty(&r.body).expect("json"));
    Ok(())
}

/// How long `kura drain` waits for the node to give up leadership.
const DRAIN_WAIT_S: u64 = 60;

/// `kura drain NAME` / `kura undrain NAME`.
/// `kura leader transfer --to NAME`: asks the admin plane to move leadership and
/// reports who leads after it.
pub async fn leader(config: &Path, cmd: LeaderCmd) -> Result<(), String> {
    let LeaderCmd::Transfer { to } = cmd;
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let client = admin_client(&cfg, config)?;
    let body = json!({ "to": to });
    let r = client
        .call(http::Method::POST, "/admin/v1/leader/transfer", Some(body))
        .await
        .map_err(|e| e.to_string())?;
    let leader = r.body["leader"].as_str().unwrap_or(&to).to_owned();
    println!("{leader} leads");
    Ok(())
}

pub async fn drain(config: &Path, name: &str, drained: bool) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let client = admin_client(&cfg, config)?;
    let verb = if drained { "drain" } else { "undrain" };
    client
        .call(
            http::Method::POST,
            &format!("/admin/v1/nodes/{name}/{verb}"),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    if !drained {
        println!("{name} is undrained: it reports ready once caught up and may lead again");
        return Ok(());
    }
    let endpoints = cfg.api_endpoints();
    let tls = config_trust(&cfg)?;
    wait_until(
        "the drained node to give up leadership and report not ready",
        Duration::from_secs(DRAIN_WAIT_S),
        || async {
            let statuses = fetch_statuses(&endpoints, tls.as_ref()).await;
            let node = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .find(|s| s["name"] == name);
            let others_lead = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .any(|s| s["state"] == "leader" && s["name"] != name);
            node.is_none_or(|s| s["state"] != "leader" && s["health"]["ready"] == false)
                && others_lead
        },
    )
    .await?;
    println!(
        "{name} is drained: another node leads and {name} reports not ready; it is safe to stop it"
    );
    Ok(())
}

/// `kura keys ...`.
pub async fn keys(config: &Path, cmd: KeysCmd) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let client = admin_client(&cfg, config)?;
    let (method, path) = match cmd {
        KeysCmd::Status => (http::Method::GET, "/admin/v1/keys".to_owned()),
        KeysCmd::Rotate => (http::Method::POST, "/admin/v1/keys/rotate".to_owned()),
        KeysCmd::RotateKek => (http::Method::POST, "/admin/v1/keys/rotate-kek".to_owned()),
        KeysCmd::Verify => (http::Method::POST, "/admin/v1/keys/verify".to_owned()),
        KeysCmd::Retire { version } => (
            http::Method::POST,
            format!("/admin/v1/keys/{version}/retire"),
        ),
    };
    print_call(&client, method, &path, None).await
}

/// `kura audit ...`. Returns `Ok(false)` when verification found a broken chain.
pub async fn audit(cmd: AuditCmd) -> Result<bool, String> {
    match cmd {
        AuditCmd::List {
            config,
            from_seq,
            limit,
        } => {
            let cfg = NodeConfig::load(&config).map_err(|e| e.to_string())?;
            let r = admin_client(&cfg, &config)?
                .call(
                    http::Method::GET,
                    &format!("/admin/v1/audit?from_seq={from_seq}&limit={limit}"),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            for rec in r.body["records"].as_array().into_iter().flatten() {
                println!("{rec}");
            }
            Ok(true)
        }
        AuditCmd::Verify {
            data_dir: Some(dir),
            signed_head,
            kek_files,
            ..
        } => verify_offline(&dir, signed_head.as_deref(), &kek_files),
        AuditCmd::Verify {
            data_dir: None,
            config,
            signed_head,
            ..
        } => {
            let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let cfg = NodeConfig::load(&config).map_err(|e| e.to_string())?;
            let body = match signed_head {
                Some(p) => Some(serde_json::json!({ "signed_head": read_signed_head(&p)? })),
                None => None,
            };
            let r = admin_client(&cfg, &config)?
                .call(http::Method::POST, "/admin/v1/audit/verify", body)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&r.body).expect("json"));
            Ok(r.body["ok"] == true)
        }
        AuditCmd::Head { config } => {
            let cfg = NodeConfig::load(&config).map_err(|e| e.to_string())?;
            let r = admin_client(&cfg, &config)?
                .call(http::Method::GET, "/admin/v1/audit/head", None)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&r.body).expect("json"));
            Ok(true)
        }
    }
}

/// Reads a signed head as `kura audit head` printed it (or just its `signed_head`).
fn read_signed_head(path: &Path) -> Result<crate::vault::audit::SignedHead, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let inner = v.get("signed_head").cloned().unwrap_or(v);
    serde_json::from_value(inner)
        .map_err(|e| format!("{} is not a signed head: {e}", path.display()))
}

fn verify_offline(
    dir: &Path,
    signed_head: Option<&Path>,
    kek_files: &[PathBuf],
) -> Result<bool, String> {
    use crate::vault::audit::MacCheck;
    let db = dir.join("kura.redb");
    let offline = crate::store::offline::read_vault(&db).map_err(|e| e.to_string())?;
    let audit = offline.vault.audit();
    let keks = kek_files
        .iter()
        .map(|p| crate::crypto::Kek::from_file(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let kek = (!keks.is_empty()).then(|| {
        let mut keks = keks.into_iter();
        let first = keks.next().expect("not empty");
        crate::crypto::KekSet::new(first, keks.collect())
    });
    match audit.verify() {
        Ok(n) => {
            println!(
                "audit trail chain OK: {n} records (vault file applied to log index {}, {} entries replayed), head {}",
                offline.applied_index,
                offline.replayed_entries,
                audit.head()
            );
            let mut ok = true;
            match &kek {
                Some(kek) => {
                    let sigs = audit.check_signatures(|s| crate::service::audit::check_mac(kek, s));
                    println!(
                        "signatures: {} verified, {} under KEKs not given, {} forged {:?}; signed through record {}, {} records after it",
                        sigs.verified,
                        sigs.unverifiable,
                        sigs.invalid.len(),
                        sigs.invalid,
                        sigs.signed_through_records,
                        sigs.unsigned_tail_records
                    );
                    ok &= sigs.invalid.is_empty();
                }
                None => println!("signatures not checked (give --kek-file to check them)"),
            }
            if let Some(p) = signed_head {
                let s = read_signed_head(p)?;
                let held = s.records > 0
                    && audit.hash_at(s.records - 1).as_deref() == Some(s.head.as_str());
                let mac = kek
                    .as_ref()
                    .map(|k| crate::service::audit::check_mac(k, &s));
                println!(
                    "exported head of {} records: {}{}",
                    s.records,
                    if held {
                        "in the chain"
                    } else {
                        "NOT in the chain"
                    },
                    match mac {
                        Some(MacCheck::Valid) => ", signature valid",
                        Some(MacCheck::Invalid) => ", signature FORGED",
                        Some(MacCheck::UnknownKek) => ", signed under a KEK not given",
                        None => "",
                    }
                );
                ok &= held && mac != Some(MacCheck::Invalid);
            }
            Ok(ok)
        }
        Err(b) => {
            println!(
                "audit trail BROKEN at record {}: {} ({} records in all)",
                b.seq,
                b.reason,
                audit.len()
            );
            Ok(false)
        }
    }
}

/// The CA `kura up` writes, used by `kura status` when given neither a config nor a CA.
pub const LOCAL_CA_FILE: &str = "kura-data/ca/ca.crt";

/// `kura status`.
pub async fn status(
    config: Option<&Path>,
    endpoints: Vec<String>,
    ca_file: Option<&Path>,
    as_json: bool,
) -> Result<bool, String> {
    let (endpoints, ca) = match (config, endpoints.is_empty()) {
        (Some(c), _) => {
            let cfg = NodeConfig::load(c).map_err(|e| e.to_string())?;
            (cfg.api_endpoints(), cfg.tls.ca_file.clone())
        }
        (None, false) => (endpoints, ca_file.map(Path::to_path_buf)),
        (None, true) => {
            let local = Path::new(LOCAL_CA_FILE);
            let ca = ca_file.or(local.exists().then_some(local));
            (local_endpoints(7001), ca.map(Path::to_path_buf))
        }
    };
    let tls = ca.as_deref().map(ca_trust).transpose()?;
    let statuses = fetch_statuses(&endpoints, tls.as_ref()).await;
    if as_json {
        let v: Vec<Value> = statuses
            .iter()
            .map(|(ep, s)| json!({ "endpoint": ep, "status": s }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}{}", render_status(&statuses), render_routes(&statuses));
    }
    Ok(statuses
        .iter()
        .any(|(_, s)| s.as_ref().is_some_and(|s| s["state"] == "leader")))
}

/// `ready`, `not ready`, or why not: `unhealthy_storage`, `drained`, `no leader`.
fn health_cell(h: &Value) -> String {
    if h["ready"] == true {
        return "ready".into();
    }
    if let Some(cause) = h["unhealthy_cause"].as_str() {
        return cause.into();
    }
    if h["drained"] == true {
        return "drained".into();
    }
    let failing: Vec<&str> = h["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "fail")
        .filter_map(|c| c["name"].as_str())
        .collect();
    if failing.is_empty() {
        "not ready".into()
    } else {
        format!("not ready ({})", failing.join(", "))
    }
}

/// One line per node with its view of the acquirer routes, if any are configured.
fn render_routes(statuses: &[(String, Option<Value>)]) -> String {
    let mut out = String::new();
    for s in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
        let routes = s["acquirer_routes"].as_array().cloned().unwrap_or_default();
        if routes.is_empty() {
            continue;
        }
        let cells: Vec<String> = routes
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({} requests, {} errors, last {} ms)",
                    r["name"].as_str().unwrap_or("?"),
                    if r["up"] == true { "up" } else { "DOWN" },
                    r["requests"],
                    r["errors"],
                    r["last_latency_ms"]
                        .as_f64()
                        .map_or("-".to_string(), |ms| format!("{ms:.1}"))
                )
            })
            .collect();
        out += &format!(
            "routes from {:<6} {}\n",
            s["name"].as_str().unwrap_or("?"),
            cells.join("; ")
        );
    }
    out
}

fn render_status(statuses: &[(String, Option<Value>)]) -> String {
    let leader = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .find(|s| s["state"] == "leader");
    let any = statuses.iter().find_map(|(_, s)| s.as_ref());
    let mut out = String::new();
    // The public status no longer names the cluster (the admin plane does).
    let cluster = any
        .and_then(|s| s["cluster_id"].as_str())
        .map_or(String::new(), |id| format!("cluster {id}  "));
    match leader {
        Some(l) => {
            out += &format!(
                "{cluster}leader {} (id {})  term {}\n",
                l["name"].as_str().unwrap_or("?"),
                l["node_id"],
                l["term"]
            )
        }
        None => out += &format!("{cluster}NO LEADER\n"),
    }
    out += &format!(
        "{:<6} {:>3}  {:<5} {:<10} {:<22} {:>9} {:>9} {:>9} {:>6}  {}\n",
        "NAME", "ID", "ROLE", "STATE", "API", "LAST_LOG", "COMMITTED", "APPLIED", "LAG", "HEALTH"
    );
    for (ep, s) in statuses {
        let Some(s) = s else {
            out += &format!(
                "{:<6} {:>3}  {:<5} {:<10} {:<22}\n",
                "?", "?", "?", "unreachable", ep
            );
            continue;
        };
        let lag = leader
            .and_then(|l| l["members"].as_array())
            .and_then(|ms| ms.iter().find(|m| m["id"] == s["node_id"]))
            .and_then(|m| m["lag_entries"].as_u64())
            .map_or("-".to_string(), |x| x.to_string());
        out += &format!(
            "{:<6} {:>3}  {:<5} {:<10} {:<22} {:>9} {:>9} {:>9} {:>6}  {}\n",
            s["name"].as_str().unwrap_or("?"),
            s["node_id"].to_string(),
            s["role"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            ep,
            s["last_log_index"].to_string(),
            s["committed_index"].to_string(),
            s["applied_index"].to_string(),
            lag,
            health_cell(&s["health"])
        );
    }
    out += &levels_note(statuses);
    out
}

/// A line when the nodes' builds apply different command levels (a rolling upgrade
/// under way): what each applies, and that newer commands wait (decision 0036).
fn levels_note(statuses: &[(String, Option<Value>)]) -> String {
    let levels: Vec<(String, u64)> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_owned(),
                s["health"]["command_level"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let lowest = levels.iter().map(|(_, l)| *l).min();
    let highest = levels.iter().map(|(_, l)| *l).max();
    if lowest == highest {
        return String::new();
    }
    let each: Vec<String> = levels.iter().map(|(n, l)| format!("{n} {l}")).collect();
    format!(
        "command levels differ ({}): commands of a level some member does not apply wait \
         until every member runs a build that does (an upgrade under way)\n",
        each.join(", ")
    )
}

/// How often `kura compare` asks for the outcome.
const COMPARE_POLL: Duration = Duration::from_millis(500);

/// Comparisons `kura compare` starts before it gives up on a leadership that keeps
/// moving.
const COMPARE_ATTEMPTS: u32 = 3;

/// Starts a comparison on the leader (or follows the one running) and waits for its
/// outcome; `None` when leadership moved meanwhile (the new leader does not know it).
async fn compare_once(client: &kura_sdk::Client) -> Result<Option<kura_types::Compare>, String> {
    let check = match client.start_compare().await {
        Ok(c) => {
            println!(
                "comparing the members' vaults (comparison {})",
                c.check.as_deref().unwrap_or("?")
            );
            c.check
        }
        Err(kura_sdk::Error::Api {
            code: kura_types::ProblemCode::CompareRunning,
            ..
        }) => {
            println!("a comparison is running already; waiting for it");
            None
        }
        Err(e) => return Err(e.to_string()),
    };
    loop {
        tokio::time::sleep(COMPARE_POLL).await;
        let c = client.compare().await.map_err(|e| e.to_string())?;
        if (check.is_some() && c.check != check) || c.state == kura_types::CompareState::Never {
            return Ok(None);
        }
        if c.state != kura_types::CompareState::Running {
            return Ok(Some(c));
        }
    }
}

/// `kura compare`: starts a comparison of the members' vaults on the leader (or follows
/// the one running), waits for its outcome and prints each member's hash.
pub async fn compare(config: &Path) -> Result<(), String> {
    use kura_types::{CompareState, MemberDigestState};
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let client = admin_client(&cfg, config)?;
    let mut attempts = 0;
    let c = loop {
        attempts += 1;
        match compare_once(&client).await? {
            Some(c) => break c,
            None if attempts < COMPARE_ATTEMPTS => {
                println!("leadership moved during the comparison; starting it again")
            }
            None => {
                return Err(format!(
                    "leadership moved during each of {COMPARE_ATTEMPTS} comparisons; run kura compare again"
                ))
            }
        }
    };
    if let Some(index) = c.index {
        println!("marker at log index {index}");
    }
    println!(
        "{:<8} {:<12} {:>10} {:>8}  sha256",
        "member", "state", "rows", "seconds"
    );
    for m in &c.members {
        let state = match m.state {
            MemberDigestState::Hashed if m.differs => "DIFFERS",
            MemberDigestState::Hashed => "hashed",
            MemberDigestState::Pending => "pending",
            MemberDigestState::Missed => "missed",
            MemberDigestState::Unreadable => "unreadable",
            MemberDigestState::Unreachable => "unreachable",
        };
        println!(
            "{:<8} {:<12} {:>10} {:>8}  {}",
            m.name,
            state,
            m.rows.map_or("-".into(), |r| r.to_string()),
            m.seconds.map_or("-".into(), |s| format!("{s:.2}")),
            m.sha256.as_deref().unwrap_or("-")
        );
    }
    for m in &c.members {
        if let Some(d) = &m.detail {
            println!("{}: {d}", m.name);
        }
    }
    match c.state {
        CompareState::Agreed => {
            println!("every member's vault is the same");
            Ok(())
        }
        CompareState::Differed => Err(format!(
            "the members' vaults DIFFER: {} (see docs/runbook.md, KuraVaultsDiffer)",
            c.detail.as_deref().unwrap_or("(no detail)")
        )),
        _ => Err(format!(
            "the comparison is incomplete: {}",
            c.detail.as_deref().unwrap_or("(no detail)")
        )),
    }
}

/// How often `kura scrub` asks for the outcome.
const SCRUB_POLL: Duration = Duration::from_millis(500);

/// `kura scrub [NAME]`: starts a full check of a node's vault (or follows the one
/// running) and waits for its outcome.
pub async fn scrub(config: &Path, name: Option<&str>) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let member = match name {
        None => cfg.me().member.clone(),
        Some(n) => cfg
            .members()
            .into_values()
            .find(|m| m.name == n)
            .ok_or_else(|| format!("no member named {n} in {}", config.display()))?,
    };
    let client = client::admin_client_for(&cfg, config, vec![member.admin_addr.clone()])?;
    match client.start_scrub().await {
        Ok(s) => println!(
            "scrubbing {}'s vault (applied index {})",
            member.name,
            s.applied_index.unwrap_or(0)
        ),
        Err(kura_sdk::Error::Api {
            code: kura_types::ProblemCode::ScrubRunning,
            ..
        }) => println!(
            "a scrub of {}'s vault is running already; waiting for it",
            member.name
        ),
        Err(e) => return Err(e.to_string()),
    }
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(SCRUB_POLL).await;
        let s = client.scrub().await.map_err(|e| e.to_string())?;
        match s.state {
            kura_types::ScrubState::Running => continue,
            kura_types::ScrubState::Passed => {
                println!(
                    "{}'s vault passed: every invariant holds ({:.1} s)",
                    member.name,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            kura_types::ScrubState::Failed | kura_types::ScrubState::Never => {
                return Err(format!(
                    "{}'s vault FAILED its scrub: {}",
                    member.name,
                    s.violation.as_deref().unwrap_or("(no detail)")
                ))
            }
        }
    }
}
