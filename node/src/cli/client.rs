//! What every `kura` subcommand that talks to a cluster shares: the admin-plane client
//! (operator certificate or break-glass token), trust in the cluster's CA, status reads,
//! forming the cluster, and waiting for a condition.

use crate::config::NodeConfig;
use kura_sdk::tls::TlsConnector;
use kura_sdk::wire::{Connector, HttpPool, TcpConnector};
use kura_sdk::{Client, ClientConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default API endpoints of `kura up`.
pub fn local_endpoints(base_port: u16) -> Vec<String> {
    (0..3)
        .map(|i| format!("127.0.0.1:{}", base_port + i))
        .collect()
}

fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read admin_token_file {}: {e}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// Environment variables naming the operator certificate and key the CLI presents.
pub const OPERATOR_CERT_ENV: &str = "KURA_OPERATOR_CERT";
pub const OPERATOR_KEY_ENV: &str = "KURA_OPERATOR_KEY";

/// The operator certificate the CLI presents on the admin plane: `$KURA_OPERATOR_CERT`
/// and `$KURA_OPERATOR_KEY`, else `operators/admin.crt` and `.key` beside the config
/// (what `kura up` writes).
fn operator_files(config: &Path) -> Option<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (
        std::env::var_os(OPERATOR_CERT_ENV),
        std::env::var_os(OPERATOR_KEY_ENV),
    ) {
        return Some((c.into(), k.into()));
    }
    let dir = config.parent()?.join("operators");
    let (c, k) = (dir.join("admin.crt"), dir.join("admin.key"));
    (c.exists() && k.exists()).then_some((c, k))
}

/// A client of the admin plane of the cluster `cfg` (read from `config`) belongs to:
/// TLS with an operator certificate; a break-glass token only when the config names one
/// and no certificate is at hand; the token over plain HTTP in the insecure mode.
pub fn admin_client(cfg: &NodeConfig, config: &Path) -> Result<Client, String> {
    admin_client_for(cfg, config, cfg.admin_endpoints())
}

pub(crate) fn admin_client_for(
    cfg: &NodeConfig,
    config: &Path,
    endpoints: Vec<String>,
) -> Result<Client, String> {
    admin_config_for(cfg, config, endpoints).map(Client::new)
}

/// The client settings [`admin_client_for`] uses (TLS with the operator certificate, or
/// the break-glass token).
pub(crate) fn admin_config_for(
    cfg: &NodeConfig,
    config: &Path,
    endpoints: Vec<String>,
) -> Result<ClientConfig, String> {
    let Some(ca) = &cfg.tls.ca_file else {
        let token = match &cfg.admin_token_file {
            Some(p) => read_token(p)?,
            None => String::new(),
        };
        return Ok(ClientConfig::new(endpoints, token));
    };
    let c = match (operator_files(config), &cfg.admin_token_file) {
        (Some((crt, key)), _) => ClientConfig::new(endpoints, "").with_client_cert(ca, &crt, &key),
        (None, Some(token)) => ClientConfig::new(endpoints, read_token(token)?).with_ca_file(ca),
        (None, None) => {
            return Err(format!(
                "no operator certificate: set {OPERATOR_CERT_ENV} and {OPERATOR_KEY_ENV} \
                 (see `kura certs create-operator`), or put operators/admin.crt and .key beside the config"
            ))
        }
    };
    c.map_err(|e| e.0)
}

/// `kura init`: asks the config's own node to form the cluster.
pub async fn init(config: &Path) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let client = admin_client_for(&cfg, config, vec![cfg.me().admin_addr.clone()])?;
    let r = client
        .call(http::Method::POST, "/admin/v1/init", None)
        .await
        .map_err(|e| e.to_string())?;
    let id = r.body["cluster_id"].as_str().unwrap_or("?");
    if r.body["already_initialized"].as_bool() == Some(true) {
        println!("cluster {id} was already initialized; nothing to do");
    } else {
        println!("cluster {id} formed with {} members", cfg.peers.len());
    }
    Ok(())
}

/// TLS trusting the CA in `ca_file`, for the CLI's plain status reads.
pub fn ca_trust(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = kura_sdk::tls::roots_from_file(ca_file).map_err(|e| e.0)?;
    Ok(Arc::new(
        kura_sdk::tls::client_config(roots, None).map_err(|e| e.0)?,
    ))
}

/// TLS trusting the CA of `cfg`'s cluster; `None` in the insecure mode.
pub fn config_trust(cfg: &NodeConfig) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    cfg.tls.ca_file.as_deref().map(ca_trust).transpose()
}

/// Fetches `/v1/cluster/status` from every endpoint (unreachable ones are `None`), over
/// TLS when `tls` is given.
pub async fn fetch_statuses(
    endpoints: &[String],
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Vec<(String, Option<Value>)> {
    let tcp: Arc<dyn Connector> = Arc::new(TcpConnector);
    let connector: Arc<dyn Connector> = match tls {
        Some(t) => Arc::new(TlsConnector::fixed(tcp, (**t).clone())),
        None => tcp,
    };
    let pool = HttpPool::new(connector, kura_sdk::wire::tokio_spawner(), 1 << 20);
    let mut out = Vec::new();
    for ep in endpoints {
        let req = http::Request::get("/v1/cluster/status")
            .header(http::header::HOST, ep.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("valid request");
        let v = match pool.send(ep, req, Duration::from_secs(2)).await {
            Ok(r) if r.status().is_success() => serde_json::from_slice(r.body()).ok(),
            _ => None,
        };
        out.push((ep.clone(), v));
    }
    out
}

/// Polls `probe` every 50 ms until it holds; an error naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out after {timeout:?} waiting for {what}"))
}
