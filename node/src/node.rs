//! Assembles a node: store, Raft, API and Raft listeners, metrics.
//!
//! The same [`run`] serves production (tokio network, redb file, writer thread, OS
//! entropy, wall clock) and simulation (turmoil network, in-memory disk, inline
//! commits, seeded entropy, simulated clock): only [`NodeEnv`] differs.

use crate::api::{self, AppState};
use crate::cluster::{self, Cluster};
use crate::config::NodeConfig;
use crate::crypto::{api_key_hash, Entropy, Kek, KekSet, KeyRing};
use crate::cvc::CvcStore;
use crate::metrics::Metrics;
use crate::net::tls::{NodeTls, TlsSetupError};
use crate::net::{self, Connector, HttpPool, Net, ServeTls};
use crate::runtime::Clock;
use crate::service::{self, Service};
use crate::store::{FsyncObserver, Store, WriterMode};
use std::io;
use std::sync::Arc;

/// Largest response body a node reads from a peer (snapshots are the biggest).
const PEER_BODY_BYTES_MAX: usize = 1 << 30;
/// Largest response body a node reads from an acquirer route (one transaction's answer).
const ACQUIRER_BODY_BYTES_MAX: usize = 1 << 20;

/// What differs between production and simulation.
pub struct NodeEnv {
    pub net: Net,
    pub store: Store,
    pub clock: Clock,
    pub entropy: Arc<Entropy>,
    pub kek: KekSet,
    /// The break-glass admin token, when configured.
    pub admin_token: Option<String>,
    pub metrics: Arc<Metrics>,
    /// `--enable-fault-injection` was given (it also needs `[faults] enabled = true`).
    pub fault_injection: bool,
    /// TLS on every plane; `None` only in the insecure mode.
    pub tls: Option<Arc<NodeTls>>,
    /// TLS to the acquirer routes; `None` only in the insecure mode.
    pub acquirer_tls: Option<rustls::ClientConfig>,
    /// The runtime consensus runs on, apart from the API's; `None` runs everything on
    /// the current runtime (simulations).
    pub consensus: Option<Arc<crate::runtime::Dedicated>>,
}

/// An fsync observer feeding the node's histogram.
/// Observes snapshots built and installed into the metrics.
pub fn snapshot_observer(metrics: &Arc<Metrics>) -> crate::store::SnapshotObserver {
    let m = metrics.clone();
    Arc::new(move |kind, elapsed, bytes| m.snapshot(kind, elapsed, bytes))
}

pub fn fsync_observer(metrics: &Arc<Metrics>) -> FsyncObserver {
    let m = metrics.clone();
    Arc::new(move |d| m.store_log_fsync.observe(d.as_secs_f64()))
}

/// The production environment for `cfg`: files under its data dir, real network.
pub fn production_env(cfg: &NodeConfig) -> io::Result<NodeEnv> {
    crate::files::make_private_dir("data_dir", &cfg.data_dir).map_err(io::Error::other)?;
    let secrets = [Some(("kek_file", &cfg.kek_file))];
    let previous = cfg
        .kek_previous_files
        .iter()
        .map(|p| Some(("kek_previous_files", p)));
    let secrets = secrets.into_iter().chain(previous).chain([
        cfg.admin_token_file
            .as_ref()
            .map(|p| ("admin_token_file", p)),
        cfg.tls.key_file.as_ref().map(|p| ("tls.key_file", p)),
    ]);
    for (key, path) in secrets.flatten() {
        crate::files::check_secret_file(key, path).map_err(io::Error::other)?;
    }
    let previous = cfg
        .kek_previous_files
        .iter()
        .map(|p| Kek::from_file(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let kek = KekSet::new(
        Kek::from_file(&cfg.kek_file).map_err(io::Error::other)?,
        previous,
    );
    let admin_token = match &cfg.admin_token_file {
        Some(path) => Some(read_admin_token(path)?),
        None => None,
    };
    let tls = match cfg.tls.files() {
        Some(files) => Some(Arc::new(
            NodeTls::load(files, admin_token.is_some()).map_err(io::Error::other)?,
        )),
        None => None,
    };
    let acquirer_tls = match tls {
        Some(_) => Some(acquirer_trust(cfg).map_err(io::Error::other)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let db = cfg.data_dir.join("kura.redb");
    let store = Store::open(
        &db,
        WriterMode::Threaded,
        cfg.storage.sync_policy(),
        fsync_observer(&metrics),
    )
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open database {}: {e}", db.display()),
        )
    })?;
    let clock: Clock = Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    });
    Ok(NodeEnv {
        net: Net::tokio(),
        store,
        clock,
        entropy: Arc::new(Entropy::Os),
        kek,
        admin_token,
        metrics,
        fault_injection: false,
        tls,
        acquirer_tls,
        consensus: Some(Arc::new(crate::runtime::Dedicated::new(
            "kura-raft",
            crate::runtime::CONSENSUS_WORKERS,
        )?)),
    })
}

fn read_admin_token(path: &std::path::Path) -> io::Result<String> {
    let token = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read admin_token_file {}: {e}", path.display()),
        )
    })?;
    let token = token.trim().to_owned();
    if token.len() < 16 {
        return Err(io::Error::other(format!(
            "admin_token_file {} must hold a token of at least 16 characters",
            path.display()
        )));
    }
    Ok(token)
}

/// TLS to the acquirer routes: their own CA (`acquirer.ca_file`) or the system's.
fn acquirer_trust(cfg: &NodeConfig) -> Result<rustls::ClientConfig, TlsSetupError> {
    let roots = match &cfg.acquirer.ca_file {
        Some(ca) => kura_sdk::tls::roots_from_file(ca),
        None => kura_sdk::tls::system_roots(),
    }
    .map_err(|e| TlsSetupError::File {
        key: "acquirer.ca_file",
        detail: e.0,
    })?;
    kura_sdk::tls::client_config(roots, None).map_err(|e| TlsSetupError::Rustls(e.0))
}

/// A started node.
pub struct Node {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    /// Stops the consensus runtime when the node goes.
    _consensus: Option<Arc<crate::runtime::Dedicated>>,
}

/// Where consensus runs: its own runtime when there is one, else the current one.
struct OnConsensus {
    rt: Option<Arc<crate::runtime::Dedicated>>,
    entropy: Arc<Entropy>,
}

impl OnConsensus {
    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.rt {
            Some(rt) => rt.spawn(self.entropy.u64(), fut),
            None => crate::runtime::spawn(fut),
        }
    }

    /// Runs `fut` there and waits for its result.
    async fn run<F>(&self, fut: F) -> io::Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(fut).await.map_err(io::Error::other)
    }
}

/// The exit status of a node that stopped itself because its storage failed
/// (`EX_IOERR` of sysexits.h): see `Cluster::stopped`. A supervisor should start it
/// again (the systemd unit does, `Restart=on-failure`).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// Starts Raft and both listeners. Returns once the listeners are bound; serving
/// continues in background tasks until the runtime stops.
pub async fn start(cfg: &NodeConfig, env: NodeEnv) -> io::Result<Node> {
    let me = cfg.me().clone();
    if env.fault_injection && !cfg.faults.enabled {
        return Err(io::Error::other(
            "--enable-fault-injection is refused: the config must also set [faults] enabled = true",
        ));
    }
    let faults_on = env.fault_injection && cfg.faults.enabled;
    if faults_on {
        tracing::warn!("FAULT INJECTION IS ENABLED on this node: for tests only");
    }
    if cfg.storage.unsafe_no_fsync {
        tracing::warn!(
            "storage.unsafe_no_fsync is set: writes are acknowledged before they are on disk, \
             and a crash loses them"
        );
    }
    // Descriptors beyond the planes' connection caps: the log, vault and snapshot files,
    // the connections to peers and acquirers, the runtime's own.
    const FILES_BESIDES_CONNECTIONS: u64 = 512;
    let lim = &cfg.limits;
    let wanted = (lim.api_connections_max + lim.peer_connections_max + lim.admin_connections_max)
        as u64
        + FILES_BESIDES_CONNECTIONS;
    if let Some(have) = crate::files::open_files_limit().filter(|have| *have < wanted) {
        tracing::warn!(
            open_files_limit = have,
            wanted,
            "the open-files limit is below the planes' connection caps (limits.*_connections_max) \
             and the node's own files: a flood of connections could leave it no descriptor for \
             its storage, and a storage write that fails stops the node; raise the limit \
             (LimitNOFILE) or lower the caps"
        );
    }
    if cfg.tls.insecure {
        tracing::warn!(
            "tls.insecure is set: every plane speaks plain HTTP (card numbers and keys in \
             clear on loopback); for local experiments only"
        );
    }
    let consensus = OnConsensus {
        rt: env.consensus.clone(),
        entropy: env.entropy.clone(),
    };
    // A peer that cannot complete a TCP handshake within an election timeout is treated
    // as gone: forwarding to a dead leader must not outlast the election replacing it.
    let connect_timeout = std::time::Duration::from_millis(cfg.raft.election_timeout_max_ms);
    let peer_connector: Arc<dyn Connector> = match &env.tls {
        Some(tls) => Arc::new(kura_sdk::tls::TlsConnector::new(
            env.net.connector.clone(),
            tls.client.clone(),
        )),
        None => env.net.connector.clone(),
    };
    let max_age = cfg.tls.connection_max_age();
    let peer_pool = || {
        Arc::new(
            HttpPool::new(peer_connector.clone(), net::spawner(), PEER_BODY_BYTES_MAX)
                .with_connect_timeout(connect_timeout)
                .with_max_age(max_age)
                .with_idle_max(cfg.limits.header_read_timeout() / 2),
        )
    };
    // Raft's messages have a pool of their own: its connections are opened, and their
    // drivers spawned, by the replication tasks on the consensus runtime.
    let (pool, raft_pool) = (peer_pool(), peer_pool());
    let acquirer_connector: Arc<dyn Connector> = match env.acquirer_tls {
        Some(t) => Arc::new(kura_sdk::tls::TlsConnector::fixed(
            env.net.connector.clone(),
            t,
        )),
        None => env.net.connector.clone(),
    };
    let acquirer_pool = Arc::new(
        HttpPool::new(acquirer_connector, net::spawner(), ACQUIRER_BODY_BYTES_MAX)
            .with_connect_timeout(connect_timeout)
            .with_max_age(max_age),
    );
    // Bound on the consensus runtime, so that its readiness events come through that
    // runtime's I/O driver.
    let raft_listener = {
        let (binder, addr) = (env.net.binder.clone(), me.raft_addr.clone());
        consensus
            .run(async move { binder.bind(&addr).await })
            .await?
            .map_err(|e| bind_err("raft_addr", &me.raft_addr, e))?
    };
    let api_listener = env
        .net
        .binder
        .bind(&me.api_addr)
        .await
        .map_err(|e| bind_err("api_addr", &me.api_addr, e))?;
    let admin_listener = env
        .net
        .binder
        .bind(&me.admin_addr)
        .await
        .map_err(|e| bind_err("admin_addr", &me.admin_addr, e))?;
    if env.tls.is_some() && env.admin_token.is_some() {
        tracing::warn!(
            "admin_token_file is set: the admin plane also accepts the break-glass token \
             without a certificate; every use is logged and counted"
        );
    }
    let faults = env.store.faults();
    // The node's wall clock (a fault switch steps it in tests), and the time commands are
    // stamped with: that clock, unless it is out of bounds of the other nodes' (decision
    // 0030). Measurements of the others go stale after twelve check rounds; a first stamp
    // waits up to four for the first verdict.
    let wall: Clock = if faults_on {
        let (inner, f) = (env.clock.clone(), faults.clone());
        Arc::new(move || inner().saturating_add_signed(f.clock_offset_ms()))
    } else {
        env.clock.clone()
    };
    let clocks = Arc::new(crate::failover::PeerClocks::new(
        wall.clone(),
        cfg.health.max_clock_offset_ms,
        std::time::Duration::from_millis(12 * cfg.health.check_interval_ms),
        std::time::Duration::from_millis(4 * cfg.health.check_interval_ms),
    ));
    let stamp: Clock = {
        let c = clocks.clone();
        Arc::new(move || c.stamp_ms())
    };
    let cluster = {
        let (id, members, raft, store) = (
            cfg.node_id,
            cfg.members(),
            cfg.raft.clone(),
            env.store.clone(),
        );
        let pool = pool.clone();
        consensus
            .run(async move { Cluster::start(id, members, &raft, store, pool, raft_pool).await })
            .await??
    };
    let kek: Arc<dyn crate::crypto::KekProvider> = if faults_on {
        Arc::new(crate::faults::FaultyKek {
            inner: env.kek,
            faults: faults.clone(),
        })
    } else {
        Arc::new(env.kek)
    };
    let keys = Arc::new(KeyRing::new(kek));
    let router = Arc::new(crate::acquirer::router::Router::new(
        cfg.acquirer.clone(),
        acquirer_pool,
        faults_on.then_some(faults.clone()),
        {
            let m = env.metrics.clone();
            Arc::new(move |route: &str, request, elapsed| {
                m.observe_acquirer(route, request, elapsed)
            })
        },
    ));
    let failover = Arc::new(crate::failover::Failover {
        cluster: cluster.clone(),
        health: Arc::new(crate::failover::Health::new(
            cfg.health.clone(),
            cfg.failover.clone(),
            cfg.raft.election_timeout_max_ms,
        )),
        router: router.clone(),
        keys: keys.clone(),
        entropy: env.entropy.clone(),
        metrics: env.metrics.clone(),
        clock: crate::runtime::monotonic_clock(),
        clocks: clocks.clone(),
        transfer_timeout: std::time::Duration::from_millis(cfg.api.write_timeout_ms),
        // On real disks only (a simulation's nodes share a simulated one).
        data_dir: env.consensus.is_some().then(|| cfg.data_dir.clone()),
        faults: faults_on.then_some(faults.clone()),
    });
    if let Some(dir) = failover.data_dir.clone() {
        if cfg.health.storage_min_free_bytes > 0 {
            cluster.store.keep_room(dir, cfg.health.reserve_bytes());
        }
    }
    let cvc = Arc::new(CvcStore::new(
        cfg.api.cvc_entries_max,
        cfg.limits.cvc_share_per_merchant_percent,
    ));
    let svc = Arc::new(Service::new(crate::service::Parts {
        cluster: cluster.clone(),
        keys,
        entropy: env.entropy,
        clock: stamp.clone(),
        metrics: env.metrics.clone(),
        settings: cfg.api.clone(),
        admin_token_sha256: env.admin_token.as_deref().map(api_key_hash),
        cvc: cvc.clone(),
        failover: failover.clone(),
        faults: faults_on.then_some(faults),
        router: router.clone(),
    }));
    let state = Arc::new(AppState {
        svc: svc.clone(),
        pool: pool.clone(),
        limiters: api::limits::Limiters::new(&cfg.limits),
    });
    let bg = Arc::new(Background {
        cluster: cluster.clone(),
        metrics: env.metrics.clone(),
        clock: stamp,
        clocks,
        cvc,
        router,
    });
    let raft_routes = cluster::raft_router(cluster.clone())
        .merge(
            api::peer::router(state.clone()).layer(axum::middleware::from_fn_with_state(
                cluster.clone(),
                cluster::admit_layer,
            )),
        )
        .layer(axum::middleware::from_fn(
            cluster::sender_matches_certificate,
        ));
    crate::runtime::spawn(service::keys::rewrap_loop(svc.clone()));
    crate::runtime::spawn(service::audit::sign_loop(svc.clone()));
    crate::runtime::spawn(service::tokens::purge_loop(svc.clone()));
    crate::runtime::spawn(service::audit::flush_loop(svc.clone()));
    crate::runtime::spawn(service::compare::hash_loop(svc.clone()));
    crate::runtime::spawn(service::compare::compare_loop(svc.clone()));
    crate::runtime::spawn(service::payments::resolver_loop(svc.clone()));
    crate::runtime::spawn(crate::failover::run(failover));
    crate::runtime::spawn(sweep_cvcs(bg.clone()));
    crate::runtime::spawn(check_routes(bg.clone()));
    let planes = planes_tls(env.tls.as_ref(), env.admin_token.is_some(), &svc);
    let lim = &cfg.limits;
    let limits = |plane, max, per_address| net::ServeLimits {
        plane,
        header_read_timeout: lim.header_read_timeout(),
        connections_max: max,
        connections_per_address_max: per_address,
        stats: env.metrics.listener(plane),
    };
    let peer_limits = limits("peer", lim.peer_connections_max, lim.peer_connections_max);
    let api_limits = limits(
        "api",
        lim.api_connections_max,
        lim.api_connections_per_address_max,
    );
    let admin_limits = limits(
        "admin",
        lim.admin_connections_max,
        lim.admin_connections_max,
    );
    let frames = cluster::frames_alternate(cluster.clone(), lim.header_read_timeout());
    consensus.spawn(async move {
        let serving = net::serve_with(
            raft_listener,
            raft_routes,
            planes.peer,
            peer_limits,
            Some(frames),
        );
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "raft listener stopped");
        }
    });
    let api_routes = api::router(state.clone());
    crate::runtime::spawn(async move {
        if let Err(e) = net::serve(api_listener, api_routes, planes.api, api_limits).await {
            tracing::error!(error = %e, "api listener stopped");
        }
    });
    let admin_routes = api::admin_router(state.clone());
    crate::runtime::spawn(async move {
        if let Err(e) = net::serve(admin_listener, admin_routes, planes.admin, admin_limits).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    if let Some(tls) = env.tls.clone() {
        crate::runtime::spawn(reload_tls(
            tls,
            cfg.tls.reload_interval(),
            env.metrics.clone(),
            env.clock.clone(),
        ));
    }
    // On the consensus runtime: a flood of API connections starving the API runtime
    // must not look like a Raft core stuck on its storage.
    consensus.spawn(watch_core(cluster.clone()));
    crate::runtime::spawn(update_metrics(bg));
    env.store.observe_snapshots(snapshot_observer(&env.metrics));
    // On real disks only (a simulation's nodes share a simulated one).
    if env.consensus.is_some() {
        crate::runtime::spawn(measure_data_dir(cfg.data_dir.clone(), env.metrics.clone()));
    }
    if cfg.raft.snapshot_grows_with_vault {
        crate::runtime::spawn(snapshot_when_due(
            cluster.clone(),
            cfg.raft.snapshot_every_entries,
        ));
    }
    tracing::info!(node = %me.name, id = cfg.node_id, role = %me.role, api = %me.api_addr, raft = %me.raft_addr, "node started");
    Ok(Node {
        cluster,
        metrics: env.metrics,
        _consensus: env.consensus,
    })
}

/// Each listener's TLS; all `None` in the insecure mode.
struct Planes {
    api: Option<ServeTls>,
    peer: Option<ServeTls>,
    admin: Option<ServeTls>,
}

/// The client API asks for a client certificate but needs none (a member's vouches for
/// the client address of a request it forwards); the peer plane admits only
/// certificates naming a member; the admin plane admits operators and members (which
/// forward operators' requests), and callers without a certificate only when a
/// break-glass token is configured. Refusals on the peer and admin planes are failed
/// authentications: counted and audited with the source address.
fn planes_tls(tls: Option<&Arc<NodeTls>>, break_glass: bool, st: &Arc<Service>) -> Planes {
    use net::tls::Identity;
    let Some(tls) = tls else {
        return Planes {
            api: None,
            peer: None,
            admin: None,
        };
    };
    // Members as the Raft membership has them now (the config's peers until it is
    // known): a member added later is admitted, a removed one refused.
    let svc = Arc::downgrade(st);
    let is_member = move |id: u64| svc.upgrade().is_some_and(|s| s.is_member(id));
    let peer_member = is_member.clone();
    Planes {
        api: Some(ServeTls {
            config: tls.api.clone(),
            admit: None,
            on_refused: None,
        }),
        peer: Some(ServeTls {
            config: tls.peer.clone(),
            admit: Some(Arc::new(
                move |who| matches!(who, Some(Identity::Node { id }) if peer_member(*id)),
            )),
            on_refused: Some(refused_on("peer", st)),
        }),
        admin: Some(ServeTls {
            config: tls.admin.clone(),
            admit: Some(Arc::new(move |who| match who {
                Some(Identity::Operator { .. }) => true,
                Some(Identity::Node { id }) => is_member(*id),
                None => break_glass,
            })),
            on_refused: Some(refused_on("admin", st)),
        }),
    }
}

/// Counts a client refused at the handshake on `plane` as a failed authentication.
fn refused_on(plane: &'static str, svc: &Arc<Service>) -> net::OnRefused {
    let svc = Arc::downgrade(svc);
    Arc::new(move |reason, peer| {
        let Some(svc) = svc.upgrade() else { return };
        if plane == "admin" {
            svc.metrics().admin_auth_failed(reason);
        }
        svc.note_auth_failure(plane, reason, &api::limits::ip_of(peer));
    })
}

/// What the node's own background loops (routes, CVC sweep, metrics, leader-change
/// records) work with.
struct Background {
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    /// The time commands are stamped with (see `PeerClocks::stamp_ms`).
    clock: Clock,
    clocks: Arc<crate::failover::PeerClocks>,
    cvc: Arc<CvcStore>,
    router: Arc<crate::acquirer::router::Router>,
}

/// Days before expiry from which each reload check warns.
const CERT_EXPIRY_WARN_DAYS: i64 = 30;

/// Picks up renewed certificate files (new connections use them; a file that fails to
/// load keeps the old material and is reported once), exports the node certificate's
/// expiry and warns as it nears.
async fn reload_tls(
    tls: Arc<NodeTls>,
    every: std::time::Duration,
    metrics: Arc<Metrics>,
    clock: crate::runtime::Clock,
) {
    let mut warned_for = 0;
    loop {
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate files changed; new connections use them"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "renewed TLS files cannot be used; keeping the previous ones")
            }
        }
        let not_after = tls.not_after_unix_s();
        for plane in ["api", "peer", "admin"] {
            metrics.set_tls_cert_expiry(plane, not_after);
        }
        let now_s = (clock() / 1000) as i64;
        let days_left = (not_after - now_s) / 86_400;
        if days_left < CERT_EXPIRY_WARN_DAYS && warned_for != not_after {
            warned_for = not_after;
            tracing::warn!(days_left, "the node's TLS certificate expires soon; renew it (kura certs create-node) and replace the files");
        }
        crate::runtime::sleep(every).await;
    }
}

fn bind_err(key: &str, addr: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {key} {addr}: {e}"))
}

/// Checks the acquirer routes' health for the node's lifetime.
async fn check_routes(st: Arc<Background>) {
    if !st.router.configured() {
        return;
    }
    loop {
        st.router.check_health().await;
        for r in st.router.statuses() {
            st.metrics.set_route(&r);
        }
        crate::runtime::sleep(st.router.health_interval()).await;
    }
}

/// How often each node wipes expired and used CVCs.
const CVC_SWEEP_MS: u64 = 1_000;

/// Wipes CVCs whose one-time token expired or was used (on this node, as applied here).
async fn sweep_cvcs(st: Arc<Background>) {
    loop {
        crate::runtime::sleep(std::time::Duration::from_millis(CVC_SWEEP_MS)).await;
        let now = (st.clock)();
        // Unreadable, nothing is swept this round (a CVC still expires with its TTL).
        let _ = st.cluster.vault().read(|v| {
            st.cvc.sweep(now, |token| {
                v.any_token(token)
                    .map(|r| r.used_at_ms.is_none() && r.expires_at_ms.is_some_and(|e| now < e))
            })
        });
        st.metrics.cvc_held.set(st.cvc.len() as i64);
        if let Ok(n) = st.cluster.vault().read(|v| v.audit().len()) {
            st.metrics.audit_records.set(n as i64);
        }
    }
}

/// Tells the cluster its Raft core is alive, on every change the core publishes (at
/// least every heartbeat; see `Cluster::core_frozen`).
async fn watch_core(cluster: Arc<Cluster>) {
    let mut watch = cluster.watch();
    loop {
        cluster.core_seen();
        if !watch.changed().await {
            return;
        }
        crate::runtime::sleep(STATUS_COALESCE).await;
    }
}

/// How long the tasks that follow the Raft status (gauges, leader changes, the core's
/// liveness) wait after a change before reading it: the core publishes several changes
/// per write (appended, flushed, committed, applied, each follower's progress), and
/// waking for each cost about 3% of a leader's CPU at one client. Far below what any
/// of them reacts to (a scrape, an election window).
const STATUS_COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

/// Mirrors Raft state into gauges and counts leader changes.
async fn update_metrics(st: Arc<Background>) {
    let (cluster, m) = (st.cluster.clone(), st.metrics.clone());
    let (mut seen_leader_term, mut logged_term) = (0, 0);
    let mut counted: std::collections::BTreeMap<crate::vault::LeaderChangeCause, u64> =
        Default::default();
    let mut watch = cluster.watch();
    loop {
        let s = cluster.status();
        m.raft_term.set(s.term as i64);
        m.raft_is_leader.set((s.state == "leader") as i64);
        m.raft_has_leader.set(s.leader_id.is_some() as i64);
        m.raft_last_log_index.set(s.last_log_index as i64);
        m.raft_committed_index.set(s.committed_index as i64);
        m.raft_applied_index.set(s.applied_index as i64);
        let followers: Vec<(String, u64, u64)> = if s.state == "leader" {
            s.members
                .iter()
                .filter(|f| f.id != s.node_id)
                .map(|f| {
                    let matched = f.matched_index.unwrap_or(0);
                    (
                        f.name.clone(),
                        matched,
                        s.last_log_index.saturating_sub(matched),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        m.set_followers(&followers);
        if s.leader_id.is_some() && s.term > seen_leader_term {
            seen_leader_term = s.term;
            if s.state == "leader" {
                let cause = cluster
                    .incoming_cause_for(s.term)
                    .unwrap_or(crate::vault::LeaderChangeCause::CrashOrPartition);
                crate::runtime::spawn(record_leader_change(st.clone(), s.term, cause));
            }
        }
        let (change, totals) = cluster
            .vault()
            .read(|v| (v.last_leader_change(), v.leader_changes()))
            .unwrap_or_default();
        // A handoff notice labels only the first recorded change after it.
        if let Some(c) = &change {
            cluster.settle_incoming_cause(c.term);
        }
        if let Some(c) = change.filter(|c| c.term > logged_term) {
            logged_term = c.term;
            tracing::info!(leader = %c.leader_name, term = c.term, cause = %c.cause, "leader changed");
        }
        for (cause, total) in totals {
            let seen = counted.entry(cause).or_default();
            m.leader_changed(cause, total.saturating_sub(*seen));
            *seen = total;
        }
        if !watch.changed().await {
            return;
        }
        crate::runtime::sleep(STATUS_COALESCE).await;
    }
}

/// How often the data directory's size is measured.
const DATA_DIR_MEASURE_S: u64 = 15;

/// A data directory's parts: the `part` label of `kura_store_data_bytes`, and the file
/// or directory it measures.
pub const DATA_DIR_PARTS: [(&str, &str); 4] = [
    ("meta", "kura.redb"),
    ("log", "kura.wal"),
    ("vault", "kura.vault"),
    ("snapshots", "kura.snap"),
];

/// Measures the data directory's parts for `kura_store_data_bytes{part}`.
async fn measure_data_dir(dir: std::path::PathBuf, metrics: Arc<Metrics>) {
    loop {
        let dir2 = dir.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let sizes = DATA_DIR_PARTS
                .map(|(part, name)| (part, crate::files::disk_usage(&dir2.join(name))));
            (sizes, crate::files::filesystem_space(&dir2))
        })
        .await;
        if let Ok((sizes, space)) = measured {
            for (part, bytes) in sizes {
                metrics.set_data_bytes(part, bytes);
            }
            if let Some((avail, size)) = space {
                metrics.filesystem_avail.set(avail as i64);
                metrics.filesystem_size.set(size as i64);
            }
        }
        crate::runtime::sleep(std::time::Duration::from_secs(DATA_DIR_MEASURE_S)).await;
    }
}

/// Starts snapshots as the vault-sized interval comes due (see
/// `RaftSettings::snapshot_grows_with_vault`), one at a time.
async fn snapshot_when_due(cluster: Arc<Cluster>, every_entries: u64) {
    let second = std::time::Duration::from_secs(1);
    // After a restart the vault's size stands in for the last snapshot's; so it does
    // after a snapshot this loop did not start (one installed from the leader: a wiped
    // follower would otherwise count its vault as empty and build one of its own while
    // it still catches up).
    let rows_now = || cluster.vault().rows().unwrap_or(0);
    let mut last_rows = rows_now();
    let mut seen = cluster.status().snapshot_index;
    loop {
        crate::runtime::sleep(second).await;
        let before = cluster.status().snapshot_index;
        if before != seen {
            seen = before;
            last_rows = rows_now();
        }
        if let Some(rows) = cluster.snapshot_if_due(every_entries, last_rows).await {
            last_rows = rows;
            // Let it finish (the snapshot index moves) before judging again.
            for _ in 0..300 {
                crate::runtime::sleep(second).await;
                let now = cluster.status().snapshot_index;
                if now != before {
                    seen = now;
                    break;
                }
            }
        }
    }
}

/// The new leader records its term's leadership change and its cause in the log.
async fn record_leader_change(
    st: Arc<Background>,
    term: u64,
    cause: crate::vault::LeaderChangeCause,
) {
    let me = st.cluster.me();
    let command = |cause, at_ms| crate::vault::Command::RecordLeaderChange {
        leader_node: st.cluster.id(),
        leader_name: me.name.clone(),
        term,
        cause,
        at_ms,
    };
    // A new leader accepts writes only once it has committed an entry of its term. It
    // keeps trying for as long as it leads that term: it hands leadership on only once
    // the record is in (see `failover::decide`).
    let mut attempts = 0;
    loop {
        if st.cluster.status().term != term || !st.cluster.is_leader() {
            return;
        }
        let ready = st
            .cluster
            .leader_caught_up(std::time::Duration::from_millis(500))
            .await;
        // Caught up, the leader has applied every earlier term's record: none at all
        // means it is the cluster's first leader.
        let first = ready.is_ok()
            && cause == crate::vault::LeaderChangeCause::CrashOrPartition
            && matches!(
                st.cluster.vault().read(|v| v.last_leader_change()),
                Ok(None)
            );
        let cause = if first {
            crate::vault::LeaderChangeCause::Formation
        } else {
            cause
        };
        let at_ms = crate::service::leader_stamp(&st.clocks, &st.clock, &st.cluster).await;
        let err = match ready {
            Ok(()) => match st.cluster.write(command(cause, at_ms)).await {
                Ok(_) => return,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        attempts += 1;
        if attempts == RECORD_CHANGE_ATTEMPTS_WARN {
            tracing::warn!(term, attempts, error = %err, "still cannot record the leadership change; retrying");
        }
        crate::runtime::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Failed attempts at recording a leadership change before a warning is logged.
const RECORD_CHANGE_ATTEMPTS_WARN: usize = 20;
