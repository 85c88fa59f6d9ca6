//! Fault switches for tests: stall or slow storage writes, fail the KEK provider, block
//! the acquirer routes on one node, step its wall clock, panic its Raft core, hold a
//! comparison's hash open. Off unless the node was started with
//! `--enable-fault-injection` *and* its config sets `[faults] enabled = true`; the
//! admin endpoint that flips them answers
//! `403 fault_injection_disabled` otherwise.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How often a stalled writer looks whether the stall was lifted.
pub const STALL_POLL_MS: u64 = 10;

/// The switches one node's components consult. All off by default.
#[derive(Debug, Default)]
pub struct FaultSwitches {
    storage_stalled: AtomicBool,
    storage_delay_ms: AtomicU64,
    kek_failing: AtomicBool,
    routes_blocked: AtomicBool,
    clock_offset_ms: AtomicI64,
    raft_core_panics: AtomicBool,
    command_level: AtomicU32,
    hash_paused: AtomicBool,
}

/// The switches as the admin endpoint shows and sets them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultState {
    /// Storage commits wait until this is cleared.
    pub storage_stalled: bool,
    /// Every storage commit is delayed this long.
    pub storage_delay_ms: u64,
    /// The KEK provider fails every operation.
    pub kek_failing: bool,
    /// Calls to the acquirer routes fail as unreachable.
    pub routes_blocked: bool,
    /// The node's wall clock reads this far ahead (negative: behind), as after a step.
    pub clock_offset_ms: i64,
    /// The next Raft log append panics inside the Raft core (see
    /// [`FaultSwitches::panic_raft_core_if_set`]).
    pub raft_core_panics: bool,
    /// The command level the node reports to the others (0: its own), as a node still
    /// running an older build would (see [`crate::vault::COMMAND_LEVEL`]).
    pub command_level: u32,
    /// A comparison's hash of this node's vault waits, its read held open, until this is
    /// cleared (or the hash is given up).
    pub hash_paused: bool,
}

impl FaultSwitches {
    /// Sets every switch.
    pub fn set(&self, s: &FaultState) {
        self.storage_stalled
            .store(s.storage_stalled, Ordering::Relaxed);
        self.storage_delay_ms
            .store(s.storage_delay_ms, Ordering::Relaxed);
        self.kek_failing.store(s.kek_failing, Ordering::Relaxed);
        self.routes_blocked
            .store(s.routes_blocked, Ordering::Relaxed);
        self.clock_offset_ms
            .store(s.clock_offset_ms, Ordering::Relaxed);
        self.raft_core_panics
            .store(s.raft_core_panics, Ordering::Relaxed);
        self.command_level.store(s.command_level, Ordering::Relaxed);
        self.hash_paused.store(s.hash_paused, Ordering::Relaxed);
    }

    /// The current switches.
    pub fn get(&self) -> FaultState {
        FaultState {
            storage_stalled: self.storage_stalled.load(Ordering::Relaxed),
            storage_delay_ms: self.storage_delay_ms.load(Ordering::Relaxed),
            kek_failing: self.kek_failing.load(Ordering::Relaxed),
            routes_blocked: self.routes_blocked.load(Ordering::Relaxed),
            clock_offset_ms: self.clock_offset_ms.load(Ordering::Relaxed),
            raft_core_panics: self.raft_core_panics.load(Ordering::Relaxed),
            command_level: self.command_level.load(Ordering::Relaxed),
            hash_paused: self.hash_paused.load(Ordering::Relaxed),
        }
    }

    /// The command level the node reports: its build's, unless a switch fakes an older.
    pub fn command_level(&self) -> u32 {
        match self.command_level.load(Ordering::Relaxed) {
            0 => crate::vault::COMMAND_LEVEL,
            faked => faked,
        }
    }

    /// Panics when the switch is set: called by the Raft log's append, which openraft's
    /// core runs on its own task, so the core dies as it does on one of openraft's
    /// assertions — the path [`crate::cluster::Cluster::stopped`] must turn into the
    /// node stopping. The switch clears first, so a core that somehow went on would not
    /// panic again.
    pub fn panic_raft_core_if_set(&self) {
        // A load first: this runs on every append, and the switch is almost never set.
        if self.raft_core_panics.load(Ordering::Relaxed)
            && self.raft_core_panics.swap(false, Ordering::Relaxed)
        {
            panic!("fault injection: the Raft core panics at a log append");
        }
    }

    /// Blocks the calling (writer) thread as the storage switches say.
    pub fn before_storage_commit(&self) {
        let delay = self.storage_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        while self.storage_stalled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(STALL_POLL_MS));
        }
    }

    /// As [`Self::before_storage_commit`], waiting on the runtime's clock (simulated
    /// time on simulated hosts) instead of blocking a thread.
    pub async fn before_storage_commit_async(&self) {
        let delay = self.storage_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            crate::runtime::sleep(Duration::from_millis(delay)).await;
        }
        while self.storage_stalled.load(Ordering::Relaxed) {
            crate::runtime::sleep(Duration::from_millis(STALL_POLL_MS)).await;
        }
    }

    /// Blocks the calling (hashing) thread while a comparison's hash is paused, until
    /// the switch is cleared or `stop` is set (the hash given up).
    pub fn while_hash_paused(&self, stop: &AtomicBool) {
        while self.hash_paused.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(STALL_POLL_MS));
        }
    }

    /// True while the KEK provider should fail.
    pub fn kek_failing(&self) -> bool {
        self.kek_failing.load(Ordering::Relaxed)
    }

    /// How far the node's wall clock is stepped (ms).
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// True while the acquirer routes should be unreachable.
    pub fn routes_blocked(&self) -> bool {
        self.routes_blocked.load(Ordering::Relaxed)
    }
}

/// A KEK provider that fails while `kek_failing` is set, and otherwise defers to `inner`.
#[derive(Debug)]
pub struct FaultyKek<P> {
    pub inner: P,
    pub faults: std::sync::Arc<FaultSwitches>,
}

impl<P> FaultyKek<P> {
    /// The provider's failure while `kek_failing` is set.
    fn fail_if_switched(&self) -> Result<(), crate::crypto::KeyError> {
        if self.faults.kek_failing() {
            return Err(crate::crypto::KeyError::Unavailable(
                "fault injected".into(),
            ));
        }
        Ok(())
    }
}

impl<P: crate::crypto::KekProvider> crate::crypto::KekProvider for FaultyKek<P> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn id(&self) -> String {
        self.inner.id()
    }

    fn ids(&self) -> Vec<String> {
        self.inner.ids()
    }

    fn mac(&self, kek_id: &str, msg: &[u8]) -> Result<[u8; 32], crate::crypto::KeyError> {
        self.fail_if_switched()?;
        self.inner.mac(kek_id, msg)
    }

    fn open_with(
        &self,
        kek_id: &str,
        sealed: &[u8],
        aad: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::crypto::KeyError> {
        self.fail_if_switched()?;
        self.inner.open_with(kek_id, sealed, aad)
    }

    fn seal(
        &self,
        msg: &[u8],
        aad: &str,
        entropy: &crate::crypto::Entropy,
    ) -> Result<Vec<u8>, crate::crypto::KeyError> {
        self.fail_if_switched()?;
        self.inner.seal(msg, aad, entropy)
    }

    fn open(
        &self,
        sealed: &[u8],
        aad: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::crypto::KeyError> {
        self.fail_if_switched()?;
        self.inner.open(sealed, aad)
    }
}
