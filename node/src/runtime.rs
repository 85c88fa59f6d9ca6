//! The async runtime every task of a node runs on: tokio with a per-node deterministic
//! RNG, the runtime openraft runs on too, so that simulated hosts replay seed for seed.
//! Spawn and sleep through here, never through `tokio::spawn` or `tokio::time::sleep`.

/// The async runtime openraft runs on: tokio with a per-node deterministic RNG, so
/// that simulations replay. Production seeds it from the OS.
pub type Rt = openraft_rt::deterministic_rng::DeterministicRng<openraft::TokioRuntime>;

/// Spawns a task through the Raft runtime, so simulated hosts stay deterministic.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    <Rt as openraft::AsyncRuntime>::spawn(fut)
}

/// Sleeps on the Raft runtime's clock (simulated time on simulated hosts).
pub fn sleep(d: std::time::Duration) -> impl std::future::Future<Output = ()> {
    <Rt as openraft::AsyncRuntime>::sleep(d)
}

/// Unix time in milliseconds: the wall clock in production, simulated time in
/// simulations.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// Workers of the consensus runtime. One: an entry passes from the API's proposal
/// through the Raft core, the replication tasks, their peer connections and the state
/// machine's worker, and on one worker each hand-off is a task switch instead of a
/// wake-up of another thread. Log writes go to the store's writer thread, and snapshot
/// builds, what an apply leaves past its time budget and the vault's write-outs to the
/// blocking pool; what still waits on the disk here is an apply's read of a vault page
/// not in the page cache, and a read of log entries older than the in-memory tail (a follower far
/// behind). At one client, two workers cost 2.75–2.92 ms of CPU per write across the
/// three nodes and one worker (with small applies in place, `store::sm`) 2.27–2.40 ms.
pub const CONSENSUS_WORKERS: usize = 1;

/// A runtime of its own for consensus: the Raft core, replication, the state machine's
/// tasks and the Raft plane's listener and connections. Every API connection, TLS
/// handshake and handler runs on the process's main runtime, so a flood of handshakes
/// queues behind itself there and never delays a heartbeat or a vote: a node's tasks
/// are polled in turn on a worker, and 300 handshakes ahead of the heartbeat task held
/// it for longer than an election timeout (hardening test, term 1 → 2 in most runs).
///
/// Production only: a simulated host runs every task on its one turmoil runtime.
pub struct Dedicated(Option<tokio::runtime::Runtime>);

impl Dedicated {
    /// Starts the runtime with `threads` workers named `name`.
    pub fn new(name: &str, threads: usize) -> std::io::Result<Dedicated> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Dedicated(Some(rt)))
    }

    /// Runs `fut` on this runtime, under the Raft runtime's RNG seeded with `seed`;
    /// what it spawns stays on this runtime.
    pub fn spawn<F>(&self, seed: u64, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .as_ref()
            .expect("runtime is running")
            .spawn(Rt::scope(seed, fut))
    }
}

/// How much lower than consensus the main runtime's threads (API and admin
/// connections, TLS handshakes, handlers) are scheduled: a nice value this much
/// higher. When the machine is short of CPU — a flood of handshakes at the leader —
/// the kernel gives the consensus threads about three times the API threads' share, so
/// heartbeats go out on time and the flood slows only the API.
pub const API_NICE_ABOVE_CONSENSUS: i32 = 5;

/// Lowers the calling thread's scheduling priority by [`API_NICE_ABOVE_CONSENSUS`]
/// (Linux schedules threads one by one, so this touches no other thread). Raising a
/// nice value needs no privilege; if it fails anyway the thread keeps its priority.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 {
            let _ = libc::setpriority(
                libc::PRIO_PROCESS,
                tid,
                (now + API_NICE_ABOVE_CONSENSUS).min(19),
            );
        }
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        // Dropped from async code at shutdown: a blocking shutdown would panic there.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
