//! kura-node: the replicated card token vault. See ARCHITECTURE.md for the code map.

pub mod acquirer;
pub mod api;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod cvc;
pub mod failover;
pub mod faults;
pub mod files;
pub mod limits;
pub mod member;
pub mod metrics;
pub mod net;
pub mod node;
pub mod raft_types;
pub mod runtime;
pub mod service;
pub mod setting;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod timeline;
pub mod vault;
