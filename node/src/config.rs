//! The node's TOML configuration. Every error is one sentence naming the key.

use crate::api::ApiSettings;
use crate::cluster::RaftSettings;
use crate::raft_types::{Member, NodeId, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One member of the cluster as the config lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    /// Never stand for election (a `bk` node that only keeps a copy and votes).
    #[serde(default)]
    pub never_lead: bool,
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
    /// File holding the admin API token.
    pub admin_token_file: PathBuf,
    /// Every voter, this node included.
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub health: crate::health::HealthSettings,
    #[serde(default)]
    pub failover: crate::health::FailoverSettings,
    #[serde(default)]
    pub faults: FaultSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub acquirer: crate::acquirer::router::AcquirerSettings,
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

/// A configuration problem, as one sentence.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    /// Reads, parses and validates `path`; relative paths inside are relative to the file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let mut cfg = NodeConfig::parse(&text)
            .map_err(|ConfigError(m)| ConfigError(format!("{}: {m}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data_dir,
            &mut cfg.kek_file,
            &mut cfg.admin_token_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError(one_line(&e)))?;
        cfg.validate().map_err(ConfigError)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.peers.is_empty() {
            return Err("peers must list every member, this node included".into());
        }
        let ids: BTreeSet<_> = self.peers.iter().map(|p| p.id).collect();
        let names: BTreeSet<_> = self.peers.iter().map(|p| p.name.as_str()).collect();
        if ids.len() != self.peers.len() {
            return Err("peers[].id must be unique".into());
        }
        if names.len() != self.peers.len() {
            return Err("peers[].name must be unique".into());
        }
        if !ids.contains(&self.node_id) {
            return Err(format!(
                "node_id {} does not appear in peers[].id",
                self.node_id
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            check_addr(&format!("peers[{i}].api_addr"), &p.api_addr)?;
            check_addr(&format!("peers[{i}].raft_addr"), &p.raft_addr)?;
            if p.name.is_empty() {
                return Err(format!("peers[{i}].name must not be empty"));
            }
        }
        if self.peers.iter().all(|p| p.never_lead) {
            return Err(
                "at least one of peers[] must be allowed to lead (never_lead = false)".into(),
            );
        }
        self.raft.validate()?;
        self.health
            .validate(&self.failover, self.raft.election_timeout_max_ms)?;
        self.acquirer.validate()?;
        self.api.validate()
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
            .map(|p| {
                (
                    p.id,
                    Member {
                        name: p.name.clone(),
                        role: p.role,
                        api_addr: p.api_addr.clone(),
                        raft_addr: p.raft_addr.clone(),
                        never_lead: p.never_lead,
                    },
                )
            })
            .collect()
    }

    /// Every member's API address.
    pub fn api_endpoints(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.api_addr.clone()).collect()
    }
}

fn check_addr(key: &str, addr: &str) -> Result<(), String> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("{key} must be host:port, got {addr:?}"))
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
[[peers]]
id = 2
name = "dr"
role = "dr"
api_addr = "127.0.0.1:7002"
raft_addr = "127.0.0.1:7102"
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
        NodeConfig::parse(text).unwrap_err().0
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
        let addr = err(&GOOD.replace("127.0.0.1:7102", "nowhere"));
        assert!(addr.contains("peers[1].raft_addr"), "{addr}");
        let absent = err(&GOOD.replace("node_id = 1", "node_id = 9"));
        assert!(absent.contains("node_id 9"), "{absent}");
        let timing = err(&format!("{GOOD}\n[raft]\nelection_timeout_min_ms = 400\n"));
        assert!(timing.contains("raft.election_timeout_max_ms"), "{timing}");
        for m in [missing, unknown, wrong_type, role, addr, absent, timing] {
            assert!(!m.contains('\n'), "not one line: {m}");
        }
    }
}
