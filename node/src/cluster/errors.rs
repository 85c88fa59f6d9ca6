//! Why a cluster operation failed.

use crate::member::NodeId;

/// Why the cluster could not be formed, or a peer's cluster id adopted.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    #[error("this node has Raft data but no cluster id; refusing to {0}")]
    DataWithoutId(&'static str),
    #[error("peer {name} ({addr}) unreachable: {detail}")]
    PeerUnreachable {
        name: String,
        addr: String,
        detail: String,
    },
    #[error("peer at {addr} says it is node {says}, config says {expected}")]
    WrongPeer {
        addr: String,
        says: NodeId,
        expected: NodeId,
    },
    #[error("peer {name} already belongs to cluster {theirs}")]
    PeerInOtherCluster { name: String, theirs: String },
    #[error("peer {0} has Raft data but no cluster id")]
    PeerDataWithoutId(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft initialize failed: {0}")]
    Raft(String),
}

/// A handoff notice that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoticeError {
    #[error("the term in a handoff notice is not a number: {0:?}")]
    Term(String),
    #[error("not a leader-change cause")]
    Cause,
}

/// Why leadership did not move as asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("node {to} did not take the handoff notice: {answer}")]
    NoticeRefused { to: NodeId, answer: String },
    #[error(transparent)]
    Notice(#[from] NoticeError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("the Raft node stopped")]
    Stopped,
    #[error("node {leader} took leadership instead of node {to}")]
    OtherLeader { leader: NodeId, to: NodeId },
    #[error("node {to} did not take leadership within {timeout:?}")]
    Timeout {
        to: NodeId,
        timeout: std::time::Duration,
    },
}

/// A snapshot frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("snapshot frame too short")]
    Short,
    #[error("snapshot frame truncated")]
    Truncated,
    #[error("snapshot header: {0}")]
    Header(String),
}
