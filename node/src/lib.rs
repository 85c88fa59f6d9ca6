//! kura-node: the replicated card token vault. See ARCHITECTURE.md for the code map.

pub mod cluster;
pub mod crypto;
pub mod net;
pub mod raft_types;
pub mod store;
pub mod vault;
