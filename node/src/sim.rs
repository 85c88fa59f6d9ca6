//! Running real kura nodes on turmoil hosts (feature `sim`): the same `node::start`
//! with a simulated network, disk, clock and entropy.

use crate::acquirer::sim::Ledger;
use crate::certs::{self, Issued, NewKey};
use crate::cluster::{Cluster, ClusterStatus};
use crate::config::{NodeConfig, PeerConfig};
use crate::crypto::{Entropy, Kek};
use crate::faults::FaultSwitches;
use crate::metrics::Metrics;
use crate::net::tls::{Identity, NodeTls, OperatorRole, Pem};
use crate::net::Net;
use crate::node::{fsync_observer, NodeEnv};
use crate::runtime::Clock;
use crate::store::{SimDisk, Store};
use crate::{
    member::{Member, Role},
    runtime::Rt,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// API port of simulated nodes.
pub const API_PORT: u16 = 7001;
/// Raft port of simulated nodes.
pub const RAFT_PORT: u16 = 7101;
/// The admin plane port on every simulated host.
pub const ADMIN_PORT: u16 = 7301;
/// Where simulated time starts (2026-11-22): the simulation's certificates are valid
/// from an hour before it.
pub const SIM_EPOCH_UNIX_S: u64 = 1_795_392_000;
/// Days the simulation's certificates are valid (a run lasts minutes).
const SIM_CERT_DAYS: i64 = 30;
/// Port of the simulated acquirers (hosts `cafis` and `cardnet`).
pub const ACQUIRER_PORT: u16 = 7201;
/// The two acquirer routes' names, which are also their hosts' names.
pub const ROUTES: [&str; 2] = ["cafis", "cardnet"];

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
        member: Member {
            name: name.into(),
            role,
            api_addr: format!("{name}:{API_PORT}"),
            raft_addr: format!("{name}:{RAFT_PORT}"),
            admin_addr: format!("{name}:{ADMIN_PORT}"),
            never_lead: false,
        },
    })
    .collect()
}

/// The slot of simulated host `host`: 1 for main, 2 for dr, 3 for bk.
pub fn host_slot(host: &str) -> Option<u64> {
    members()
        .iter()
        .find(|m| m.member.name == host)
        .map(|m| m.id)
}

/// A node config for simulated host `id` (1 = main, 2 = dr, 3 = bk).
pub fn config(id: u64) -> NodeConfig {
    NodeConfig {
        node_id: id,
        data_dir: "/sim".into(),
        kek_file: "/sim/kek".into(),
        kek_previous_files: Vec::new(),
        admin_token_file: None,
        peers: members(),
        raft: Default::default(),
        // The leader compares the members' vaults every 2 s of the run, through every
        // fault: a comparison that finds them different is a violation (the probe's).
        api: crate::service::ApiSettings {
            compare_interval_s: 2,
            ..Default::default()
        },
        log: Default::default(),
        health: Default::default(),
        failover: Default::default(),
        faults: crate::config::FaultSettings { enabled: true },
        storage: Default::default(),
        acquirer: crate::acquirer::router::AcquirerSettings {
            routes: ROUTES
                .iter()
                .map(|r| crate::acquirer::router::RouteConfig {
                    name: (*r).into(),
                    addr: format!("{r}:{ACQUIRER_PORT}"),
                })
                .collect(),
            ..Default::default()
        },
        // TLS on every simulated link, with material made in memory (see `SimPki`).
        tls: Default::default(),
        limits: Default::default(),
    }
}

/// rustls's clock on a simulated host: turmoil's time since its epoch.
#[derive(Debug)]
struct SimTime;

impl rustls::time_provider::TimeProvider for SimTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        turmoil::since_epoch().map(rustls::pki_types::UnixTime::since_unix_epoch)
    }
}

fn sim_time() -> crate::net::tls::Time {
    Some(Arc::new(SimTime))
}

/// The simulation's certificates, made before the run from its seed (Ed25519 keys
/// derived from it, so every byte is the same for the same seed): a cluster CA, a
/// certificate per node and per acquirer route (named by host), and the checker's
/// operator certificate.
pub struct SimPki {
    seed: u64,
    ca: Issued,
    routes: BTreeMap<&'static str, Issued>,
    operator: Issued,
}

impl SimPki {
    /// The certificates of the run with `seed`.
    pub fn new(seed: u64) -> SimPki {
        let ca = certs::new_ca(
            "kura simulation CA",
            sim_key(seed, "ca"),
            sim_now(),
            SIM_CERT_DAYS,
        )
        .expect("CA");
        let routes = ROUTES
            .iter()
            .map(|r| (*r, issue(&ca, seed, None, r, r)))
            .collect();
        let checker = Identity::Operator {
            name: "chaos".into(),
            role: OperatorRole::Admin,
        };
        let operator = issue(&ca, seed, Some(&checker), "checker", "operator");
        SimPki {
            seed,
            ca,
            routes,
            operator,
        }
    }

    fn pem(&self, leaf: &Issued) -> Pem {
        Pem::from_text(&self.ca.cert_pem, &leaf.cert_pem, &leaf.key_pem).expect("simulation PEM")
    }

    /// The TLS of node `id` on host `host` (a replacement machine gets a new id on the
    /// host it replaces).
    fn node_tls(&self, id: u64, host: &str) -> NodeTls {
        // The first members' keys keep the labels they always had.
        let label = match members()
            .iter()
            .find(|m| m.id == id && m.member.name == host)
        {
            Some(_) => host.to_owned(),
            None => format!("{host}-{id}"),
        };
        let leaf = issue(
            &self.ca,
            self.seed,
            Some(&Identity::Node { id }),
            host,
            &label,
        );
        NodeTls::from_pem(self.pem(&leaf), false, sim_time()).expect("node TLS")
    }

    fn acquirer_server(&self, route: &str) -> rustls::ServerConfig {
        let Pem { chain, key, .. } = self.pem(&self.routes[route]);
        crate::net::tls::server_only_with(chain, key, &sim_time()).expect("acquirer TLS")
    }

    /// A client trusting the simulation's CA, presenting no certificate.
    pub fn client(&self) -> rustls::ClientConfig {
        let Pem { roots, .. } = self.pem(&self.operator);
        kura_sdk::tls::client_config_at(roots, None, sim_time()).expect("client TLS")
    }

    /// The checker's operator client for the admin plane.
    pub fn operator_client(&self) -> rustls::ClientConfig {
        let Pem { roots, chain, key } = self.pem(&self.operator);
        kura_sdk::tls::client_config_at(roots, Some((chain, key)), sim_time())
            .expect("operator TLS")
    }
}

/// The simulation's clock when its certificates are issued.
fn sim_now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(SIM_EPOCH_UNIX_S as i64).expect("epoch")
}

/// A key derived from the run's seed and `label`.
fn sim_key(seed: u64, label: &str) -> NewKey {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    h.update(label.as_bytes());
    NewKey::Ed25519Seed(h.finalize().into())
}

/// A certificate for `host` from `ca`, naming `who`, its key derived from the seed and
/// `label`.
fn issue(ca: &Issued, seed: u64, who: Option<&Identity>, host: &str, label: &str) -> Issued {
    certs::new_leaf(
        &ca.cert_pem,
        &ca.key_pem,
        who,
        &[host.to_owned()],
        sim_key(seed, label),
        sim_now(),
        SIM_CERT_DAYS,
    )
    .expect("simulation certificate")
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

/// What a simulation can see of its nodes from outside the hosts: each running node's
/// Raft view, applied vault and fault switches, and every invariant violation the
/// nodes' state machines found after applying a command. Cheap to clone.
///
/// Nodes are known by their host's slot (1 = main, 2 = dr, 3 = bk), whatever Raft id
/// the machine on that host has: a replaced machine joins with a new id on the host of
/// the one it replaces.
#[derive(Clone, Default)]
pub struct Probe {
    inner: Arc<Mutex<ProbeInner>>,
}

/// What the probe holds of one running node.
type Seen = (Arc<Cluster>, Arc<FaultSwitches>, Arc<Metrics>);

#[derive(Default)]
struct ProbeInner {
    nodes: BTreeMap<u64, Seen>,
    violations: Vec<String>,
    /// Comparisons of the members' vaults run by nodes since forgotten, by node and
    /// outcome.
    compared_before: BTreeMap<(u64, &'static str), u64>,
}

/// Comparisons node `m` ran that ended `outcome`.
fn compared(m: &Metrics, outcome: &str) -> u64 {
    m.vault_compares
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: outcome.into(),
        })
        .get()
}

impl ProbeInner {
    /// Comparisons every node has run (those forgotten too), by node and outcome.
    fn compared(&self) -> BTreeMap<(u64, &'static str), u64> {
        let mut out = self.compared_before.clone();
        for (id, (_, _, m)) in &self.nodes {
            for o in crate::metrics::COMPARE_OUTCOMES {
                *out.entry((*id, o)).or_default() += compared(m, o);
            }
        }
        out
    }
}

/// One node's applied state, for comparing replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDigest {
    pub applied_index: u64,
    /// SHA-256 of the applied vault's canonical JSON.
    pub sha256: String,
}

impl Probe {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeInner> {
        self.inner.lock().expect("probe lock")
    }

    /// Forgets node `id` (call when its host crashes: the node is gone).
    pub fn forget(&self, id: u64) {
        let mut p = self.lock();
        if let Some((_, _, m)) = p.nodes.remove(&id) {
            for o in crate::metrics::COMPARE_OUTCOMES {
                *p.compared_before.entry((id, o)).or_default() += compared(&m, o);
            }
        }
    }

    /// The Raft view of node `id`, if it is running.
    pub fn status(&self, id: u64) -> Option<ClusterStatus> {
        let c = self.lock().nodes.get(&id)?.0.clone();
        Some(c.status())
    }

    /// The applied state of node `id`, if it is running.
    pub fn digest(&self, id: u64) -> Option<AppliedDigest> {
        let c = self.lock().nodes.get(&id)?.0.clone();
        let vault = c.vault();
        let applied_index = vault.applied_index();
        // A node whose storage fails has no digest to compare (its reads are void).
        let sha256 = vault
            .read(|v| crate::vault::tables::digest(v.tables()))
            .ok()?;
        Some(AppliedDigest {
            applied_index,
            sha256,
        })
    }

    /// The full invariant check of node `id`'s applied vault, if it is running.
    pub fn validate(&self, id: u64) -> Option<Result<(), crate::vault::Violation>> {
        let c = self.lock().nodes.get(&id)?.0.clone();
        Some(
            c.vault()
                .read(|v| v.validate())
                .unwrap_or_else(|e| Err(crate::vault::Violation::new(e.to_string()))),
        )
    }

    /// The last leader change node `id` has applied: (term, leader node id).
    pub fn last_leader_change(&self, id: u64) -> Option<(u64, u64)> {
        let c = self.lock().nodes.get(&id)?.0.clone();
        c.vault()
            .read(|v| v.last_leader_change().map(|l| (l.term, l.leader_node)))
            .ok()
            .flatten()
    }

    /// The fault switches of node `id` (storage stall, KEK failure, routes blocked).
    pub fn faults(&self, id: u64) -> Option<Arc<FaultSwitches>> {
        Some(self.lock().nodes.get(&id)?.1.clone())
    }

    /// Every invariant violation found so far, as `node <id> index <i>: <what>`, and
    /// every comparison of the members' vaults that found them different.
    pub fn violations(&self) -> Vec<String> {
        let p = self.lock();
        let mut out = p.violations.clone();
        for ((id, outcome), n) in p.compared() {
            if outcome == "differed" && n > 0 {
                out.push(format!(
                    "node {id}: {n} comparison(s) of the members' vaults found them different"
                ));
            }
        }
        out
    }

    /// Comparisons of the members' vaults every node has run that ended `outcome`
    /// (`agreed`, `differed`, `incomplete`).
    pub fn comparisons(&self, outcome: &str) -> u64 {
        self.lock()
            .compared()
            .into_iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    fn register(
        &self,
        id: u64,
        cluster: Arc<Cluster>,
        faults: Arc<FaultSwitches>,
        metrics: Arc<Metrics>,
    ) {
        self.lock().nodes.insert(id, (cluster, faults, metrics));
    }

    fn report(&self, id: u64, index: u64, what: String) {
        self.lock()
            .violations
            .push(format!("node {id} index {index}: {what}"));
    }
}

/// How far beyond `health.max_clock_offset_ms` the replicated clock may run ahead of
/// simulated time: a measurement's round trip is bounded by the health poll's timeout.
const CLOCK_SLACK_MS: u64 = 1_000;

/// How often (in log entries) the per-command payment check scans every payment.
const FULL_PAYMENT_CHECK_EVERY: u64 = 64;

/// Runs node `cfg` on the current turmoil host until the host crashes. `disk` must be
/// created outside the host closure so that it survives restarts. The node registers
/// with `probe`, and checks the payment invariants after every command it applies
/// (what the command wrote; everything every `FULL_PAYMENT_CHECK_EVERY` entries).
pub async fn run_node(
    cfg: NodeConfig,
    disk: SimDisk,
    seed: u64,
    probe: Probe,
    pki: Arc<SimPki>,
) -> turmoil::Result {
    Rt::scope(seed, async move {
        let id = cfg.node_id;
        let host = cfg
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.member.name.clone())
            .ok_or("the node is not among its configured peers")?;
        let slot = host_slot(&host).ok_or("the node's host is not main, dr or bk")?;
        let metrics = Arc::new(Metrics::new());
        let p2 = probe.clone();
        // Stamps come from a clock within the bound of the others' (or their time):
        // whatever a node's clock did, the replicated clock never runs ahead of
        // simulated time by more than the bound and a second for the round trips.
        let clock_slack_ms = cfg.health.max_clock_offset_ms + CLOCK_SLACK_MS;
        let clock_reported = std::sync::atomic::AtomicBool::new(false);
        let store = Store::open_sim(&disk, cfg.storage.sync_policy(), fsync_observer(&metrics))?
            .with_apply_check(Arc::new(move |index, vault, touched| {
                let now = turmoil::since_epoch().map_or(u64::MAX, |d| d.as_millis() as u64);
                let clock = vault.clock_ms();
                // Once per boot: every later apply would say the same.
                if clock > now.saturating_add(clock_slack_ms)
                    && !clock_reported.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    p2.report(
                        slot,
                        index,
                        format!(
                            "the replicated clock reads {} ms ahead of simulated time",
                            clock - now
                        ),
                    );
                }
                // What each command wrote, every time; the whole payment table (its
                // counts too) every `FULL_PAYMENT_CHECK_EVERY` entries. A full scan
                // after every command made the sweep's cost grow with the square of
                // a run's payments.
                let checked = if index % FULL_PAYMENT_CHECK_EVERY == 0 {
                    vault.validate_payments()
                } else {
                    vault.validate_payments_touched(touched)
                };
                if let Err(e) = checked {
                    p2.report(slot, index, e.detail);
                }
            }));
        let faults = store.faults();
        let clock: Clock = Arc::new(|| turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64));
        let env = NodeEnv {
            net: Net::turmoil(),
            store,
            clock,
            entropy: Arc::new(Entropy::seeded(seed)),
            kek: crate::crypto::KekSet::new(Kek::from_bytes([7u8; 32]), Vec::new()),
            fault_injection: cfg.faults.enabled,
            admin_token: None,
            metrics: metrics.clone(),
            tls: Some(Arc::new(pki.node_tls(id, &host))),
            acquirer_tls: Some(pki.client()),
            consensus: None,
        };
        let node = crate::node::start(&cfg, env).await?;
        probe.register(slot, node.cluster.clone(), faults, metrics);
        std::future::pending::<()>().await;
        Ok(())
    })
    .await
}

/// Runs an acquirer simulator on the current turmoil host over `ledger`, which must be
/// created outside the host closure so that its books survive the host's crashes.
pub async fn run_acquirer(
    ledger: Ledger,
    seed: u64,
    pki: Arc<SimPki>,
    route: &'static str,
) -> turmoil::Result {
    Rt::scope(seed, async move {
        let listener = Net::turmoil()
            .binder
            .bind(&format!("0.0.0.0:{ACQUIRER_PORT}"))
            .await?;
        let tls = crate::net::ServeTls {
            config: Arc::new(std::sync::RwLock::new(Arc::new(pki.acquirer_server(route)))),
            admit: None,
            on_refused: None,
        };
        crate::net::serve(
            listener,
            crate::acquirer::sim::router_with(ledger),
            Some(tls),
            crate::net::ServeLimits::unexported("acquirer"),
        )
        .await?;
        Ok(())
    })
    .await
}
