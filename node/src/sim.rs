//! Running real kura nodes on turmoil hosts (feature `sim`): the same `node::start`
//! with a simulated network, disk, clock and entropy.

use crate::api::Clock;
use crate::config::{NodeConfig, PeerConfig};
use crate::crypto::{Entropy, Kek};
use crate::metrics::Metrics;
use crate::net::Net;
use crate::node::{fsync_observer, NodeEnv};
use crate::raft_types::{Role, Rt};
use crate::store::{SimDisk, Store};
use std::sync::Arc;

/// API port of simulated nodes.
pub const API_PORT: u16 = 7001;
/// Raft port of simulated nodes.
pub const RAFT_PORT: u16 = 7101;
/// The admin token simulated nodes accept.
pub const ADMIN_TOKEN: &str = "adm_simulation_token_0000";

/// The three simulated members: main, dr, bk on hosts of the same names.
pub fn members() -> Vec<PeerConfig> {
    [
        (1, "main", Role::Main),
        (2, "dr", Role::Dr),
        (3, "bk", Role::Bk),
    ]
    .into_iter()
    .map(|(id, name, role)| PeerConfig {
        id,
        name: name.into(),
        role,
        api_addr: format!("{name}:{API_PORT}"),
        raft_addr: format!("{name}:{RAFT_PORT}"),
        never_lead: false,
    })
    .collect()
}

/// A node config for simulated host `id` (1 = main, 2 = dr, 3 = bk).
pub fn config(id: u64) -> NodeConfig {
    NodeConfig {
        node_id: id,
        data_dir: "/sim".into(),
        kek_file: "/sim/kek".into(),
        admin_token_file: "/sim/admin".into(),
        peers: members(),
        raft: Default::default(),
        api: Default::default(),
        log: Default::default(),
        health: Default::default(),
        failover: Default::default(),
        faults: Default::default(),
        acquirer: Default::default(),
    }
}

/// Derives a per-node, per-boot seed from the run seed.
pub fn node_seed(run_seed: u64, node_id: u64, boot: u64) -> u64 {
    let mut z = run_seed
        ^ node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ boot.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs node `cfg` on the current turmoil host until the host crashes. `disk` must be
/// created outside the host closure so that it survives restarts.
pub async fn run_node(cfg: NodeConfig, disk: SimDisk, seed: u64) -> turmoil::Result {
    Rt::scope(seed, async move {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open_sim(&disk, fsync_observer(&metrics))?;
        let clock: Clock = Arc::new(|| turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64));
        let env = NodeEnv {
            net: Net::turmoil(),
            store,
            clock,
            entropy: Arc::new(Entropy::seeded(seed)),
            kek: Kek::from_bytes([7u8; 32]),
            fault_injection: false,
            admin_token: ADMIN_TOKEN.into(),
            metrics,
        };
        let _node = crate::node::start(&cfg, env).await?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .await
}
