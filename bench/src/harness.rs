//! The load harness every system shares: N concurrent clients, closed loop (each sends
//! its next request when the last is answered: maximum throughput) or open loop (each
//! request has a scheduled start at a fixed aggregate rate and its latency counts from
//! that schedule, so a slow answer cannot hide the requests it delayed — no coordinated
//! omission). Latencies go into HDR histograms (1 µs to 60 s, 3 significant digits).

use hdrhistogram::Histogram;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// One kind of request against one system.
pub trait Op: Clone + Send + Sync + 'static {
    /// Client `client`'s `seq`-th request. `Err` is a failed request: counted, not timed.
    fn call(&self, client: u32, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// How to drive the clients.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub clients: u32,
    /// Requests before this much time are sent but not recorded.
    pub warmup: Duration,
    pub measure: Duration,
    /// `Some(rate)`: open loop at `rate` requests per second across all clients.
    pub rate: Option<f64>,
}

/// What a run measured.
pub struct Summary {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latency_us: Histogram<u64>,
    /// Every answered request's latency (µs) by the second of the window it started
    /// in: whether a tail is spread over the run or comes from a few seconds of it.
    pub by_second: Vec<Vec<u32>>,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    /// Requests started in it and answered.
    pub ok: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Summary {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// Latency at quantile `q` in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency_us, q)
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    /// The run second by second (seconds in which nothing started and was answered are
    /// left out).
    pub fn seconds(&self) -> Vec<Second> {
        self.by_second
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| {
                let mut v = v.clone();
                v.sort_unstable();
                // Nearest rank: the least value at or under which a share `q` falls.
                let at = |q: f64| {
                    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
                    v[rank - 1] as f64 / 1000.0
                };
                Second {
                    ok: v.len(),
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                }
            })
            .collect()
    }

    /// The median and the largest of the seconds' p99s: far apart when a few seconds
    /// hold the run's tail (a stall), close when the tail is spread over the run.
    pub fn second_p99s(&self) -> Option<(f64, f64)> {
        let mut p99s: Vec<f64> = self.seconds().iter().map(|s| s.p99_ms).collect();
        if p99s.is_empty() {
            return None;
        }
        p99s.sort_by(f64::total_cmp);
        Some((p99s[p99s.len() / 2], p99s[p99s.len() - 1]))
    }

    /// One line per second.
    pub fn timeline(&self) -> String {
        self.seconds()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "second {:>3}  {:>7} started  p50 {:>7.2} ms  p99 {:>7.2} ms\n",
                    i + 1,
                    s.ok,
                    s.p50_ms,
                    s.p99_ms
                )
            })
            .collect()
    }

    /// One human line.
    pub fn line(&self) -> String {
        format!(
            "{:>9.0} ok/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  ({} ok, {} errors{})",
            self.throughput(),
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
            self.ok,
            self.errors,
            self.first_error
                .as_ref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        )
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Records `d` in a histogram of [`histogram`]'s bounds, in microseconds.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().clamp(1, 60_000_000) as u64);
}

/// The value at quantile `q` of a histogram in microseconds, in milliseconds.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `op` with `plan` and merges every client's histogram.
pub async fn run<O: Op>(op: O, plan: Plan) -> Summary {
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + plan.warmup;
    let until = measure_from + plan.measure;
    let tasks: Vec<_> = (0..plan.clients)
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                match plan.rate {
                    None => closed(op, client, start, measure_from, until).await,
                    Some(rate) => {
                        // Client i sends at start + (i / N + k) * N / rate: together, the
                        // rate, evenly spread.
                        let every = Duration::from_secs_f64(plan.clients as f64 / rate);
                        let offset = every.mul_f64(client as f64 / plan.clients as f64);
                        open(op, client, start + offset, every, measure_from, until).await
                    }
                }
            })
        })
        .collect();
    let mut all = Summary {
        ok: 0,
        errors: 0,
        first_error: None,
        seconds: plan.measure.as_secs_f64(),
        latency_us: histogram(),
        by_second: Vec::new(),
    };
    for t in tasks {
        let part = t.await.expect("client task");
        all.ok += part.ok;
        all.errors += part.errors;
        all.first_error = all.first_error.or(part.first_error);
        all.latency_us.add(&part.latency_us).expect("same bounds");
        if all.by_second.len() < part.by_second.len() {
            all.by_second.resize(part.by_second.len(), Vec::new());
        }
        for (to, from) in all.by_second.iter_mut().zip(part.by_second) {
            to.extend(from);
        }
    }
    all
}

fn empty() -> Summary {
    Summary {
        ok: 0,
        errors: 0,
        first_error: None,
        seconds: 0.0,
        latency_us: histogram(),
        by_second: Vec::new(),
    }
}

impl Summary {
    fn count(&mut self, started: Instant, measure_from: Instant, r: Result<(), String>) {
        if started < measure_from {
            return;
        }
        match r {
            Ok(()) => {
                self.ok += 1;
                let took = started.elapsed();
                record(&mut self.latency_us, took);
                let second = (started - measure_from).as_secs() as usize;
                if self.by_second.len() <= second {
                    self.by_second.resize(second + 1, Vec::new());
                }
                self.by_second[second].push(took.as_micros().min(u32::MAX as u128) as u32);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

async fn closed<O: Op>(
    op: O,
    client: u32,
    start: Instant,
    measure_from: Instant,
    until: Instant,
) -> Summary {
    let mut s = empty();
    tokio::time::sleep_until(start).await;
    let mut seq = 0;
    loop {
        let started = Instant::now();
        if started >= until {
            return s;
        }
        let r = op.call(client, seq).await;
        // Only requests answered inside the window count: the throughput is what the
        // window saw.
        if Instant::now() <= until {
            s.count(started, measure_from, r);
        }
        seq += 1;
    }
}

async fn open<O: Op>(
    op: O,
    client: u32,
    first: Instant,
    every: Duration,
    measure_from: Instant,
    until: Instant,
) -> Summary {
    let mut s = empty();
    let mut seq = 0u64;
    loop {
        let scheduled = first + every.mul_f64(seq as f64);
        if scheduled >= until {
            return s;
        }
        // Late (the last answer was slow): send at once, and the wait counts.
        tokio::time::sleep_until(scheduled).await;
        let r = op.call(client, seq).await;
        s.count(scheduled, measure_from, r);
        seq += 1;
    }
}

/// The `[limits]` every benchmark cluster runs with. The limits are in place and
/// checked on every request (GCRA lookups per address and per key), but their rates
/// are set far above what one benchmark key from one address sends, because a load
/// generator is one merchant key on one address doing what no merchant's does; the
/// connection caps and timeouts keep their defaults.
pub const BENCH_LIMITS: &str = "[limits]\nrequests_per_key_per_s = 10000000\nrequests_per_key_burst = 10000000\nrequests_per_address_per_s = 10000000\nrequests_per_address_burst = 10000000\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers after `delay`; every `stall_every`-th request after `stall` instead.
    #[derive(Clone)]
    struct Sleepy {
        delay: Duration,
        stall: Duration,
        stall_every: u64,
    }

    impl Op for Sleepy {
        async fn call(&self, _client: u32, seq: u64) -> Result<(), String> {
            let d = if seq > 0 && seq.is_multiple_of(self.stall_every) {
                self.stall
            } else {
                self.delay
            };
            tokio::time::sleep(d).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_shows_in_the_second_it_happened_not_in_the_others() {
        // 10 ms a request, one client: 100 a second; the 400th and the 800th take 300 ms
        // (in the fifth second and the ninth).
        let op = Sleepy {
            delay: Duration::from_millis(10),
            stall: Duration::from_millis(300),
            stall_every: 400,
        };
        let s = run(op, plan(None)).await;
        let seconds = s.seconds();
        assert_eq!(seconds.len(), 10, "{}", s.timeline());
        for (i, sec) in seconds.iter().enumerate() {
            if i == 4 || i == 8 {
                assert!(sec.p99_ms >= 300.0, "second {i}: {}", s.timeline());
                assert!(sec.ok < 80, "second {i}: {}", s.timeline());
            } else {
                assert!(sec.p99_ms < 11.0, "second {i}: {}", s.timeline());
            }
        }
        let (median, worst) = s.second_p99s().unwrap();
        assert!(median < 11.0 && worst >= 300.0, "{median} {worst}");
        // Every answered request is in one second or another.
        let counted: usize = seconds.iter().map(|s| s.ok).sum();
        assert_eq!(counted as u64, s.ok);
    }

    fn plan(rate: Option<f64>) -> Plan {
        Plan {
            clients: 1,
            warmup: Duration::ZERO,
            measure: Duration::from_secs(10),
            rate,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_loop_charges_a_stall_to_every_request_it_delayed() {
        let op = Sleepy {
            delay: Duration::from_millis(1),
            stall: Duration::from_millis(1000),
            stall_every: 500,
        };
        // Closed loop: one slow request per stall, the rest fast.
        let closed = run(op.clone(), plan(None)).await;
        assert!(closed.ms(0.99) < 2.0, "closed p99 {}", closed.ms(0.99));
        // Open loop at 100/s: the requests scheduled during each 1 s stall wait for it,
        // so about a tenth of all requests see hundreds of milliseconds.
        let open = run(op, plan(Some(100.0))).await;
        assert!(open.ms(0.95) > 100.0, "open p95 {}", open.ms(0.95));
        assert!(open.ok >= 900 && open.ok <= 1000, "{}", open.ok);
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_loop_keeps_its_rate_and_the_closed_loop_saturates() {
        let op = Sleepy {
            delay: Duration::from_millis(10),
            stall: Duration::from_millis(10),
            stall_every: u64::MAX,
        };
        let open = run(
            op.clone(),
            Plan {
                clients: 4,
                ..plan(Some(50.0))
            },
        )
        .await;
        assert!(
            (open.throughput() - 50.0).abs() < 2.0,
            "{}",
            open.throughput()
        );
        let closed = run(
            op,
            Plan {
                clients: 4,
                ..plan(None)
            },
        )
        .await;
        assert!(
            (closed.throughput() - 400.0).abs() < 10.0,
            "{}",
            closed.throughput()
        );
    }
}
