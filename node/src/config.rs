//! The node's TOML configuration. Every error is one sentence naming the key.

use crate::api::ApiSettings;
use crate::cluster::RaftSettings;
use crate::member::{Member, NodeId};
use crate::setting::InvalidSetting;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One member of the cluster as the config lists it: its id, and the [`Member`] the
/// cluster knows (`name`, `role`, `api_addr`, `raft_addr`, `admin_addr` — keep the
/// admin plane off the public network — and `never_lead`). Reads as a `Member`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerConfig {
    pub id: NodeId,
    #[serde(flatten)]
    pub member: Member,
}

impl std::ops::Deref for PeerConfig {
    type Target = Member;
    fn deref(&self) -> &Member {
        &self.member
    }
}

impl std::ops::DerefMut for PeerConfig {
    fn deref_mut(&mut self) -> &mut Member {
        &mut self.member
    }
}

/// A peer entry is `id` plus a `Member`'s fields, and nothing else: a misspelt key is
/// refused, as everywhere in the config. (serde's `flatten` would accept any key, and
/// `Member` itself must accept fields newer nodes add to the Raft membership.)
impl<'de> Deserialize<'de> for PeerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PeerConfig, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let id = table
            .remove("id")
            .ok_or_else(|| D::Error::missing_field("id"))?;
        let id: NodeId = serde_json::from_value(id).map_err(D::Error::custom)?;
        let known = serde_json::to_value(Member::default()).expect("a member serializes");
        if let Some(k) = table.keys().find(|k| known.get(k.as_str()).is_none()) {
            return Err(D::Error::custom(format!("unknown field `{k}` in peers[]")));
        }
        let member =
            serde_json::from_value(serde_json::Value::Object(table)).map_err(D::Error::custom)?;
        Ok(PeerConfig { id, member })
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `kura_node=debug,info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// A node's configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must appear in `peers`.
    pub node_id: NodeId,
    /// Where the database and state live.
    pub data_dir: PathBuf,
    /// File holding the 64-hex-character key-encryption key.
    pub kek_file: PathBuf,
    /// Files of previous key-encryption keys, kept while `kura keys rotate-kek` moves
    /// the data keys off them (remove them once `kura keys status` shows none left).
    #[serde(default)]
    pub kek_previous_files: Vec<PathBuf>,
    /// File holding a break-glass admin token. With TLS, operators authenticate with
    /// their certificates and no token is accepted unless this is set (every use is
    /// logged, counted and audited as `break-glass`); in the insecure mode it is the
    /// admin plane's only credential.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Every voter, this node included.
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub health: crate::failover::HealthSettings,
    #[serde(default)]
    pub failover: crate::failover::FailoverSettings,
    #[serde(default)]
    pub faults: FaultSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub acquirer: crate::acquirer::router::AcquirerSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    /// Connection caps, timeouts and request rates.
    #[serde(default)]
    pub limits: crate::limits::LimitSettings,
}

/// TLS on every plane. Either all three files are set, or `insecure = true` (plain HTTP,
/// loopback addresses only, for local experiments); anything in between refuses to start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed,
    /// and a node trusts it for the peers and leader it calls.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate (PEM, from `kura certs create-node`).
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Speak plain HTTP on every plane. Only for experiments on one machine: every
    /// address must be a loopback address, and the node warns at start.
    pub insecure: bool,
    /// How often the certificate files are checked for a renewal.
    pub reload_interval_s: u64,
    /// Outbound connections (to peers, the leader, the acquirer) are retired at this
    /// age, so a renewed certificate or a removed CA takes effect on them too.
    pub connection_max_age_s: u64,
}

/// Default `tls.reload_interval_s`.
pub const TLS_RELOAD_INTERVAL_S_DEFAULT: u64 = 10;
/// Default `tls.connection_max_age_s`.
pub const TLS_CONNECTION_MAX_AGE_S_DEFAULT: u64 = 300;

impl TlsSettings {
    /// The files, when TLS is on; `None` in insecure mode. Call after validation.
    pub fn files(&self) -> Option<crate::net::tls::TlsFiles> {
        Some(crate::net::tls::TlsFiles {
            ca_file: self.ca_file.clone()?,
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
        })
    }

    /// How often to look for renewed files.
    pub fn reload_interval(&self) -> std::time::Duration {
        let s = match self.reload_interval_s {
            0 => TLS_RELOAD_INTERVAL_S_DEFAULT,
            s => s,
        };
        std::time::Duration::from_secs(s)
    }

    /// The age at which outbound connections are retired.
    pub fn connection_max_age(&self) -> std::time::Duration {
        let s = match self.connection_max_age_s {
            0 => TLS_CONNECTION_MAX_AGE_S_DEFAULT,
            s => s,
        };
        std::time::Duration::from_secs(s)
    }

    fn validate(&self, addrs: &[(String, &str)]) -> Result<(), InvalidSetting> {
        let set = [
            ("tls.ca_file", self.ca_file.is_some()),
            ("tls.cert_file", self.cert_file.is_some()),
            ("tls.key_file", self.key_file.is_some()),
        ];
        if self.insecure {
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(InvalidSetting::new(
                    *key,
                    "is set but tls.insecure = true turns TLS off; remove one of them",
                ));
            }
            if let Some((key, addr)) = addrs.iter().find(|(_, a)| !is_loopback(a)) {
                return Err(InvalidSetting::new(
                    key.as_str(),
                    format!("is {addr:?}, but tls.insecure = true allows loopback addresses only"),
                ));
            }
            return Ok(());
        }
        match set.iter().find(|(_, on)| !*on) {
            Some((key, _)) if set.iter().any(|(_, on)| *on) => Err(InvalidSetting::new(
                *key,
                "is missing: TLS needs tls.ca_file, tls.cert_file and tls.key_file together",
            )),
            Some(_) => Err(InvalidSetting::new(
                "[tls]",
                "is not configured: set tls.ca_file, tls.cert_file and tls.key_file \
                 (see `kura certs`), or tls.insecure = true for a loopback-only experiment",
            )),
            None => Ok(()),
        }
    }
}

/// True for `127.x.x.x:port`, `[::1]:port` and `localhost:port`.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Fault injection (tests only). Takes effect only if the node is also started with
/// `--enable-fault-injection`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    pub enabled: bool,
}

/// How the database writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Acknowledge writes without syncing them to disk (like etcd's
    /// `--unsafe-no-fsync`). A crash then loses acknowledged writes: for benchmarks
    /// that want to see the cost of fsync, never for data you keep.
    pub unsafe_no_fsync: bool,
}

impl StorageSettings {
    /// The store's sync policy.
    pub fn sync_policy(&self) -> crate::store::SyncPolicy {
        if self.unsafe_no_fsync {
            crate::store::SyncPolicy::UnsafeNoFsync
        } else {
            crate::store::SyncPolicy::Fsync
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or not the configuration's shape (one line with its location).
    #[error("{0}")]
    Syntax(String),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    /// A problem in the file at `path`.
    #[error("{}: {inner}", path.display())]
    In {
        path: PathBuf,
        inner: Box<ConfigError>,
    },
}

impl NodeConfig {
    /// Reads, parses and validates `path`; relative paths inside are relative to the file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let mut cfg = NodeConfig::parse(&text).map_err(|e| ConfigError::In {
            path: path.to_owned(),
            inner: Box::new(e),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in cfg.kek_previous_files.iter_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let tls = &mut cfg.tls;
        for p in [
            Some(&mut cfg.data_dir),
            Some(&mut cfg.kek_file),
            cfg.admin_token_file.as_mut(),
            tls.ca_file.as_mut(),
            tls.cert_file.as_mut(),
            tls.key_file.as_mut(),
            cfg.acquirer.ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(one_line(&e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), InvalidSetting> {
        if self.peers.is_empty() {
            return Err(InvalidSetting::new(
                "peers",
                "must list every member, this node included",
            ));
        }
        let ids: BTreeSet<_> = self.peers.iter().map(|p| p.id).collect();
        let names: BTreeSet<_> = self.peers.iter().map(|p| p.name.as_str()).collect();
        if ids.len() != self.peers.len() {
            return Err(InvalidSetting::new("peers[].id", "must be unique"));
        }
        if names.len() != self.peers.len() {
            return Err(InvalidSetting::new("peers[].name", "must be unique"));
        }
        if !ids.contains(&self.node_id) {
            return Err(InvalidSetting::new(
                "node_id",
                format!("{} does not appear in peers[].id", self.node_id),
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            check_addr(&format!("peers[{i}].api_addr"), &p.api_addr)?;
            check_addr(&format!("peers[{i}].raft_addr"), &p.raft_addr)?;
            check_addr(&format!("peers[{i}].admin_addr"), &p.admin_addr)?;
            if p.name.is_empty() {
                return Err(InvalidSetting::new(
                    format!("peers[{i}].name"),
                    "must not be empty",
                ));
            }
        }
        if self.peers.iter().all(|p| p.never_lead) {
            return Err(InvalidSetting::new(
                "peers[].never_lead",
                "must be false for at least one member: some member must be allowed to lead",
            ));
        }
        self.raft.validate()?;
        self.health
            .validate(&self.failover, self.raft.election_timeout_max_ms)?;
        self.acquirer.validate()?;
        self.api.validate()?;
        self.limits.validate()?;
        let addrs: Vec<(String, &str)> = self
            .peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                [
                    (format!("peers[{i}].api_addr"), p.api_addr.as_str()),
                    (format!("peers[{i}].raft_addr"), p.raft_addr.as_str()),
                    (format!("peers[{i}].admin_addr"), p.admin_addr.as_str()),
                ]
            })
            .collect();
        self.tls.validate(&addrs)?;
        if self.tls.insecure && self.admin_token_file.is_none() {
            return Err(InvalidSetting::new("admin_token_file", "is required with tls.insecure = true: without certificates it is the admin plane's only credential"));
        }
        Ok(())
    }

    /// This node's own peer entry.
    pub fn me(&self) -> &PeerConfig {
        self.peers
            .iter()
            .find(|p| p.id == self.node_id)
            .expect("validated")
    }

    /// Members as the cluster layer wants them.
    pub fn members(&self) -> BTreeMap<NodeId, Member> {
        self.peers
            .iter()
            .map(|p| (p.id, p.member.clone()))
            .collect()
    }

    /// Every member's API address.
    pub fn api_endpoints(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.api_addr.clone()).collect()
    }

    /// Every member's admin address.
    pub fn admin_endpoints(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.admin_addr.clone()).collect()
    }
}

fn check_addr(key: &str, addr: &str) -> Result<(), InvalidSetting> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting::new(
            key,
            format!("must be host:port, got {addr:?}"),
        ))
    }
}

/// toml errors span several lines with a source excerpt; keep the message and location.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().trim_end_matches('.').to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
data_dir = "data/main"
kek_file = "kek.key"
admin_token_file = "admin.token"
[[peers]]
id = 1
name = "main"
role = "main"
api_addr = "127.0.0.1:7001"
raft_addr = "127.0.0.1:7101"
admin_addr = "127.0.0.1:7301"
[[peers]]
id = 2
name = "dr"
role = "dr"
api_addr = "127.0.0.1:7002"
raft_addr = "127.0.0.1:7102"
admin_addr = "127.0.0.1:7302"
[tls]
insecure = true
"#;

    #[test]
    fn parses_a_minimal_config_with_defaults() {
        let c = NodeConfig::parse(GOOD).unwrap();
        assert_eq!(c.me().name, "main");
        assert_eq!(c.raft.election_timeout_max_ms, 300);
        assert_eq!(c.api.one_time_token_ttl_s, 1800);
        assert_eq!(c.members().len(), 2);
    }

    fn err(text: &str) -> String {
        NodeConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn each_mistake_is_one_sentence_naming_the_key() {
        let missing = err(&GOOD.replace("node_id = 1\n", ""));
        assert!(missing.contains("node_id"), "{missing}");
        let unknown = err(&GOOD.replace("node_id = 1", "node_id = 1\nnode_idd = 2"));
        assert!(unknown.contains("node_idd"), "{unknown}");
        let wrong_type = err(&GOOD.replace("node_id = 1", "node_id = \"one\""));
        assert!(
            wrong_type.contains("integer") || wrong_type.contains("u64"),
            "{wrong_type}"
        );
        let role = err(&GOOD.replace("role = \"dr\"", "role = \"backup\""));
        assert!(
            role.contains("backup") || role.contains("variant"),
            "{role}"
        );
        let misspelt = err(&GOOD.replace(
            "admin_addr = \"127.0.0.1:7302\"",
            "admin_adr = \"127.0.0.1:7302\"",
        ));
        assert!(misspelt.contains("admin_adr"), "{misspelt}");
        let no_id = err(&GOOD.replace("id = 2\n", ""));
        assert!(no_id.contains("`id`"), "{no_id}");
        let addr = err(&GOOD.replace("127.0.0.1:7102", "nowhere"));
        assert!(addr.contains("peers[1].raft_addr"), "{addr}");
        let absent = err(&GOOD.replace("node_id = 1", "node_id = 9"));
        assert!(absent.contains("node_id 9"), "{absent}");
        let timing = err(&format!("{GOOD}\n[raft]\nelection_timeout_min_ms = 400\n"));
        assert!(timing.contains("raft.election_timeout_max_ms"), "{timing}");
        for m in [
            missing, unknown, wrong_type, role, misspelt, no_id, addr, absent, timing,
        ] {
            assert!(!m.contains('\n'), "not one line: {m}");
        }
    }

    #[test]
    fn the_example_configs_in_ops_parse() {
        let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        for name in ["main", "dr", "bk"] {
            let text = std::fs::read_to_string(ops.join(format!("{name}.toml"))).unwrap();
            let cfg = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("ops/{name}.toml: {e}"));
            assert_eq!(cfg.me().name, name);
            assert!(cfg.tls.files().is_some(), "ops/{name}.toml must use TLS");
        }
    }

    #[test]
    fn tls_half_set_or_insecure_off_loopback_refuses_with_the_key_named() {
        let secure = GOOD.replace(
            "insecure = true",
            "ca_file = \"ca.crt\"\ncert_file = \"main.crt\"\nkey_file = \"main.key\"",
        );
        assert!(NodeConfig::parse(&secure).unwrap().tls.files().is_some());
        let no_key = err(&secure.replace("key_file = \"main.key\"", ""));
        assert!(no_key.contains("tls.key_file is missing"), "{no_key}");
        let no_ca = err(&secure.replace("ca_file = \"ca.crt\"", ""));
        assert!(no_ca.contains("tls.ca_file is missing"), "{no_ca}");
        let nothing = err(&GOOD.replace("[tls]\ninsecure = true\n", ""));
        assert!(nothing.contains("tls.insecure"), "{nothing}");
        let both = err(&format!("{GOOD}ca_file = \"ca.crt\"\n"));
        assert!(both.contains("tls.ca_file is set"), "{both}");
        let public = err(&GOOD.replace("127.0.0.1:7102", "10.0.0.2:7102"));
        assert!(
            public.contains("loopback") && public.contains("peers[1].raft_addr"),
            "{public}"
        );
        let tokenless = err(&GOOD.replace("admin_token_file = \"admin.token\"\n", ""));
        assert!(tokenless.contains("admin_token_file"), "{tokenless}");
        let secure_without_token = secure.replace("admin_token_file = \"admin.token\"\n", "");
        assert!(NodeConfig::parse(&secure_without_token)
            .unwrap()
            .admin_token_file
            .is_none());
        assert!(is_loopback("[::1]:7001") && is_loopback("localhost:1"));
        assert!(!is_loopback("127.example.com:1") && !is_loopback("[::2]:1"));
        for m in [no_key, no_ca, nothing, both, public, tokenless] {
            assert!(!m.contains('\n'), "not one line: {m}");
        }
    }
}
