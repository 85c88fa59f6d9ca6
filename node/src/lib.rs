//! kura-node: the replicated card token vault. See ARCHITECTURE.md for the code map.

pub mod crypto;
pub mod raft_types;
pub mod store;
pub mod vault;
