//! Why leadership moved, as every node records and counts it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why leadership changed. A new leader records the cause of its term in the log
/// (`Command::RecordLeaderChange`), so every node logs and counts the change alike; the
/// wire and metric form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderChangeCause {
    /// No handoff announced it: the old leader crashed or was cut off.
    CrashOrPartition,
    /// An operator moved leadership (`kura leader transfer`) or drained the leader.
    Operator,
    /// A preferred node (main, then dr) took leadership back once stable.
    Failback,
    /// The leader's storage canary failed.
    UnhealthyStorage,
    /// The leader's key-encryption key provider failed.
    UnhealthyKeys,
    /// Every acquirer route failed from the leader while another node reached one.
    UnhealthyRoutes,
    /// A follower came back with an empty log; a new leader replicates to it afresh.
    FollowerLostLog,
    /// A `never_lead` node led only until an electable node caught up.
    NeverLead,
    /// The cluster's first leader: nothing had been recorded before it.
    Formation,
    /// The leader's wall clock was out of bounds of the other nodes'.
    UnhealthyClock,
}

impl LeaderChangeCause {
    /// Every cause, for labels and tests.
    pub const ALL: [LeaderChangeCause; 10] = [
        LeaderChangeCause::CrashOrPartition,
        LeaderChangeCause::Operator,
        LeaderChangeCause::Failback,
        LeaderChangeCause::UnhealthyStorage,
        LeaderChangeCause::UnhealthyKeys,
        LeaderChangeCause::UnhealthyRoutes,
        LeaderChangeCause::FollowerLostLog,
        LeaderChangeCause::NeverLead,
        LeaderChangeCause::Formation,
        LeaderChangeCause::UnhealthyClock,
    ];

    /// The snake_case name (wire form, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            LeaderChangeCause::CrashOrPartition => "crash_or_partition",
            LeaderChangeCause::Operator => "operator",
            LeaderChangeCause::Failback => "failback",
            LeaderChangeCause::UnhealthyStorage => "unhealthy_storage",
            LeaderChangeCause::UnhealthyKeys => "unhealthy_keys",
            LeaderChangeCause::UnhealthyRoutes => "unhealthy_routes",
            LeaderChangeCause::FollowerLostLog => "follower_lost_log",
            LeaderChangeCause::NeverLead => "never_lead",
            LeaderChangeCause::Formation => "formation",
            LeaderChangeCause::UnhealthyClock => "unhealthy_clock",
        }
    }

    /// The cause named `s`, if any.
    pub fn parse(s: &str) -> Option<LeaderChangeCause> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for LeaderChangeCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A leadership change as its new leader recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChange {
    pub leader_node: u64,
    pub leader_name: String,
    pub term: u64,
    pub cause: LeaderChangeCause,
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_the_name_and_parses_back() {
        for c in LeaderChangeCause::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
            assert_eq!(LeaderChangeCause::parse(c.as_str()), Some(c));
        }
        assert_eq!(LeaderChangeCause::parse("bored"), None);
        let counts: std::collections::BTreeMap<LeaderChangeCause, u64> =
            [(LeaderChangeCause::Failback, 2)].into();
        let json = serde_json::to_string(&counts).unwrap();
        assert_eq!(json, r#"{"failback":2}"#);
        assert_eq!(
            serde_json::from_str::<std::collections::BTreeMap<LeaderChangeCause, u64>>(&json)
                .unwrap(),
            counts
        );
    }
}
