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
