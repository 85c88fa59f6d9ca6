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

/// Milliseconds of monotonic time since this call, for timing what lasts: no step of
/// the wall clock moves it (simulated time on simulated hosts).
pub fn monotonic_clock() -> Clock {
    let origin = tokio::time::Instant::now();
    std::sync::Arc::new(move || origin.elapsed().as_millis() as u64)
}

/// Workers of the consensus runtime. One: an entry passes from the API's proposal
/// through the Raft core, the replication tasks, their peer connections and the state
/// machine's worker, and on one worker each hand-off is a task switch instead of a
/// wake-up of another thread. Log writes go to the store's writer thread, and snapshot
/// builds, what an apply leaves past its time budget and the vault's write-outs to the
/// blocking pool; what still waits on the disk here is an apply's read of a vault page
/// not in the page cache, and a read of log entries older than the in-memory tail (a
/// follower far behind). At one client, two workers cost 2.75–2.92 ms of CPU per write
/// across the three nodes and one worker (with small applies in place, `store::sm`)
/// 2.27–2.40 ms.
pub const CONSENSUS_WORKERS: usize = 1;

/// A runtime of its own for consensus: the Raft core, replication, the state machine's
/// tasks and the Raft plane's listener and connections. Every API connection, TLS
/// handshake and handler runs on the process's main runtime, so a flood of handshakes
/// queues behind itself there and never delays a heartbeat or a vote: a node's tasks
/// are polled in turn on a worker, and 300 handshakes ahead of the heartbeat task held
/// it for longer than an election timeout (hardening test, term 1 → 2 in most runs).
///
/// Both runtimes' threads keep the same scheduling priority (decision 0022). A thread
/// of its own is what keeps consensus timely under a flood: it needs a small part of
/// the CPU, the kernel's fair share of one thread among the API's few is well above
/// that, and a thread that mostly sleeps is run soon after it wakes. Running the API
/// threads at nice +5, as kura once did, cost saturated payments about a tenth of
/// their throughput (1,931–2,066 against 2,233–2,364 flows/s at 64 clients): the
/// leader's API threads, which hold a third of its work, queued behind consensus.
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

impl Drop for Dedicated {
    fn drop(&mut self) {
        // Dropped from async code at shutdown: a blocking shutdown would panic there.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Puts the calling thread at the lowest CPU priority (nice 19) and in the idle I/O
/// class, for good: for a thread of its own doing long background work (reading the
/// whole vault to hash it), which should take only the CPU and disk time the node's
/// requests leave. A thread cannot raise its priority back without privilege, so never
/// call it on a pooled thread. Best effort: a kernel or I/O scheduler without idle
/// I/O priorities leaves the disk shared as before.
pub fn lowest_priority_for_this_thread() {
    /// `IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT` (linux/ioprio.h).
    const IOPRIO_IDLE: libc::c_long = 3 << 13;
    /// `IOPRIO_WHO_PROCESS`: a thread id names the one thread.
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: syscalls that take integers only, naming this thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            IOPRIO_IDLE,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_background_thread_runs_at_the_lowest_priority_and_leaves_others_alone() {
        /// `IOPRIO_WHO_PROCESS`, and the class in an I/O priority's top bits.
        const WHO: libc::c_long = 1;
        let read = || {
            // SAFETY: integer-only syscalls naming this thread.
            unsafe {
                let tid = libc::gettid();
                *libc::__errno_location() = 0;
                let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                let io = libc::syscall(libc::SYS_ioprio_get, WHO, libc::c_long::from(tid));
                (nice, io >> 13)
            }
        };
        let before = read();
        let lowered = std::thread::spawn(move || {
            super::lowest_priority_for_this_thread();
            read()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (19, 3), "nice 19, idle I/O class");
        assert_eq!(read(), before, "the calling thread keeps its priority");
    }
}
