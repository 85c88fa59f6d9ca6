//! A configuration value refused, naming its key and the rule it breaks. Every
//! settings table's `validate()` answers with one, so a node that will not start says
//! in one sentence which key to fix.

/// A configuration value refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {rule}")]
pub struct InvalidSetting {
    /// The key, as the configuration file spells it (`raft.heartbeat_interval_ms`).
    pub key: String,
    /// What it must be (`must be greater than 0`).
    pub rule: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, rule: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            key: key.into(),
            rule: rule.into(),
        }
    }
}
