//! A steady write load for failover tests and benchmarks: background writers tokenizing
//! cards on file through the SDK, recording when each write was acknowledged, and a
//! check that every acknowledged token can still be read.

use kura_sdk::{Client, TokenizeRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Background writers; see [`Writers::start`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Instant, String)>>>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the writers did, once stopped.
pub struct Finished {
    /// Every acknowledged token, in order of acknowledgement.
    pub tokens: Vec<String>,
    /// Writes that failed or whose outcome is unknown.
    pub failed: u64,
    /// The longest stretch without an acknowledgement, first to last.
    pub longest_gap: Duration,
}

impl Writers {
    /// Starts `n` writers through `client`. Writer `w` sends `request(w, seq)` for
    /// seq = 0, 1, …, pausing `think` after each answer.
    pub fn start(
        client: &Client,
        n: u32,
        think: Duration,
        request: fn(u32, u64) -> TokenizeRequest,
    ) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|w| {
                let (client, stop, acked, failed) =
                    (client.clone(), stop.clone(), acked.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match client.tokenize(&request(w, seq)).await {
                            Ok(t) => acked.lock().expect("acked").push((Instant::now(), t.token)),
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        seq += 1;
                        if !think.is_zero() {
                            tokio::time::sleep(think).await;
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            failed,
            tasks,
        }
    }

    /// Writes acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// When the latest write was acknowledged.
    pub fn last_ack(&self) -> Option<Instant> {
        self.acked.lock().expect("acked").last().map(|(t, _)| *t)
    }

    /// The longest stretch without an acknowledgement from the last one at or before
    /// `at` to `until`: the write gap clients saw around an event.
    pub fn longest_gap(&self, at: Instant, until: Instant) -> Option<Duration> {
        let mut times: Vec<Instant> = self
            .acked
            .lock()
            .expect("acked")
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t <= until)
            .collect();
        times.sort();
        let first = times.iter().rposition(|t| *t <= at)?;
        widest(&times[first..])
    }

    /// Stops the writers and waits for them.
    pub async fn finish(self) -> Finished {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer");
        }
        let mut acked = std::mem::take(&mut *self.acked.lock().expect("acked"));
        acked.sort();
        let times: Vec<Instant> = acked.iter().map(|(t, _)| *t).collect();
        let longest_gap = widest(&times).unwrap_or_default();
        Finished {
            tokens: acked.into_iter().map(|(_, t)| t).collect(),
            failed: self.failed.load(Ordering::Relaxed),
            longest_gap,
        }
    }
}

/// The widest gap between consecutive `times` (sorted); `None` with fewer than two.
fn widest(times: &[Instant]) -> Option<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).max()
}

/// The acknowledged `tokens` that the cluster no longer has (a linearizable read through
/// `client` answers 404), read by 32 readers at once. Panics if a token stays unreadable
/// for another reason after 20 tries.
pub async fn missing(client: &Client, tokens: Vec<String>) -> Vec<String> {
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, tokens, next, lost) =
                (client.clone(), tokens.clone(), next.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(t) = tokens.get(i) else { return };
                    let mut tries = 0;
                    loop {
                        match client.get_token(t).await {
                            Ok(_) => break,
                            Err(kura_sdk::Error::Api { status: 404, .. }) => {
                                lost.lock().expect("lost").push(t.clone());
                                break;
                            }
                            Err(_) if tries < 20 => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("reading {t} back: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("reader");
    }
    let lost = lost.lock().expect("lost").clone();
    lost
}
