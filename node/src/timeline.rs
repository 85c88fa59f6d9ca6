//! Wall-clock marks along a write's path, across the three nodes: where one write's
//! time goes, stage by stage (`kura-bench timeline`, docs/testing.md).
//!
//! Built only with the `timeline` feature, and recording only in a node started with
//! `--timeline DIR`; in every other build [`mark`] is an empty function. Each mark is a
//! stage, a log index, a peer (or a count) and `CLOCK_MONOTONIC` in nanoseconds, which
//! is one clock for every process on a machine, so the marks of the three nodes of a
//! local cluster line up. A thread writes them to `DIR/<node id>.tl` a few times a second,
//! one per line: `stage index peer nanoseconds`. Nothing but indexes and times is
//! recorded: no request data.

/// A point on a write's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The API plane has a request's head (index 0: not known yet).
    Request,
    /// The service proposes the write to Raft (index: the entry's, noted on return).
    Propose,
    /// Entries handed to the log store (index: the last; peer: the first).
    LogAppend,
    /// The writer begins a batch that appends up to this index (peer: its operations).
    WriterStart,
    /// The writer's batch is durable.
    WriterSynced,
    /// An AppendEntries ending at this index is sent to `peer`.
    ReplicaSend,
    /// `peer` answered it.
    ReplicaAck,
    /// A follower received an AppendEntries ending at this index (peer: its entries).
    FollowerReceive,
    /// The follower's Raft answered it.
    FollowerAnswer,
    /// The state machine begins applying entries up to this index (peer: the first).
    ApplyStart,
    /// ...and has applied them.
    ApplyEnd,
    /// The proposal returned to the service.
    Proposed,
    /// The API plane hands a response to the connection (index 0).
    Response,
}

impl Stage {
    pub const ALL: [Stage; 13] = [
        Stage::Request,
        Stage::Propose,
        Stage::LogAppend,
        Stage::WriterStart,
        Stage::WriterSynced,
        Stage::ReplicaSend,
        Stage::ReplicaAck,
        Stage::FollowerReceive,
        Stage::FollowerAnswer,
        Stage::ApplyStart,
        Stage::ApplyEnd,
        Stage::Proposed,
        Stage::Response,
    ];

    /// The stage named `name` in the files.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stage's name in the files.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Request => "request",
            Stage::Propose => "propose",
            Stage::LogAppend => "log_append",
            Stage::WriterStart => "writer_start",
            Stage::WriterSynced => "writer_synced",
            Stage::ReplicaSend => "replica_send",
            Stage::ReplicaAck => "replica_ack",
            Stage::FollowerReceive => "follower_receive",
            Stage::FollowerAnswer => "follower_answer",
            Stage::ApplyStart => "apply_start",
            Stage::ApplyEnd => "apply_end",
            Stage::Proposed => "proposed",
            Stage::Response => "response",
        }
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain system call writing into a timespec this function owns.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(feature = "timeline")]
mod on {
    use super::Stage;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Marks not yet written. Past this many the recorder drops marks rather than
    /// grow: a writer that fell behind by this much no longer measures anything.
    const PENDING_MAX: usize = 1 << 20;

    static ON: AtomicBool = AtomicBool::new(false);
    static PENDING: Mutex<Vec<(Stage, u64, u64, u64)>> = Mutex::new(Vec::new());

    pub fn start(dir: &std::path::Path, node: u64) -> std::io::Result<()> {
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{node}.tl")))?);
        std::thread::Builder::new()
            .name("kura-timeline".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let marks = std::mem::take(&mut *PENDING.lock().expect("timeline lock"));
                for (stage, index, peer, ns) in marks {
                    let _ = writeln!(file, "{} {index} {peer} {ns}", stage.name());
                }
                let _ = file.flush();
            })?;
        ON.store(true, Ordering::Release);
        Ok(())
    }

    pub fn mark_at(stage: Stage, index: u64, peer: u64, ns: u64) {
        if ON.load(Ordering::Acquire) {
            let mut p = PENDING.lock().expect("timeline lock");
            if p.len() < PENDING_MAX {
                p.push((stage, index, peer, ns));
            }
        }
    }

    pub fn on() -> bool {
        ON.load(Ordering::Acquire)
    }
}

/// Starts recording into `DIR/<node id>.tl`.
#[cfg(feature = "timeline")]
pub fn start(dir: &std::path::Path, node: u64) -> std::io::Result<()> {
    on::start(dir, node)
}

/// Starts recording: refused, this build has no timeline.
#[cfg(not(feature = "timeline"))]
pub fn start(_dir: &std::path::Path, _node: u64) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "this kura was built without the `timeline` feature",
    ))
}

/// Marks `stage` now.
#[inline(always)]
pub fn mark(stage: Stage, index: u64, peer: u64) {
    #[cfg(feature = "timeline")]
    if on::on() {
        on::mark_at(stage, index, peer, now_ns());
    }
    #[cfg(not(feature = "timeline"))]
    let _ = (stage, index, peer);
}

/// Marks `stage` at `ns` (from [`started`]), for a stage whose index is known only
/// after it.
#[inline(always)]
pub fn mark_at(stage: Stage, index: u64, peer: u64, ns: u64) {
    #[cfg(feature = "timeline")]
    on::mark_at(stage, index, peer, ns);
    #[cfg(not(feature = "timeline"))]
    let _ = (stage, index, peer, ns);
}

/// The time to pass to [`mark_at`] later: now when recording, else 0 (no clock read).
#[inline(always)]
pub fn started() -> u64 {
    #[cfg(feature = "timeline")]
    if on::on() {
        return now_ns();
    }
    0
}
