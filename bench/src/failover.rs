//! `kura-bench failover`: under a steady write load, take the leader away again and again
//! — SIGKILL, a stalled storage (fault injection), a drain — and measure the write gap
//! clients see: from the last acknowledgement before the event to the first after it.
//! Every acknowledged token is read back at the end: none may be lost.

use crate::report;
use crate::systems::tokenize_request;
use kura_cluster_tests::load::{missing, Writers};
use kura_cluster_tests::procs::{ProcCluster, NAMES};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Args {
    /// Events of each kind.
    pub rounds: u32,
    /// Writer tasks; each pauses `think` between writes.
    pub writers: u32,
    pub think: Duration,
    pub results: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Kill,
    Stall,
    Drain,
}

impl Event {
    fn describe(self) -> &'static str {
        match self {
            Event::Kill => "leader SIGKILLed (restarted after the gap)",
            Event::Stall => "leader's storage stalled (fault injection; cleared after the gap)",
            Event::Drain => "leader drained by the operator (undrained after the gap)",
        }
    }
}

/// True when a running node other than `l` says it leads.
async fn leads_instead(c: &ProcCluster, l: usize) -> bool {
    for i in (0..3).filter(|&i| i != l && c.running(i)) {
        if c.status(i).await.is_some_and(|s| s["state"] == "leader") {
            return true;
        }
    }
    false
}

/// Waits until all three nodes answer, one leads, and writes have flowed for a second.
async fn settle(c: &ProcCluster, w: &Writers) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = 0;
        let mut leaders = 0;
        for i in 0..3 {
            if let Some(s) = c.status(i).await {
                up += 1;
                leaders += usize::from(s["state"] == "leader");
            }
        }
        let flowing = w
            .last_ack()
            .is_some_and(|t| t.elapsed() < Duration::from_millis(200));
        if up == 3 && leaders == 1 && flowing {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster did not settle within 60 s (up {up}, leaders {leaders}, writes flowing {flowing})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_drained(c: &ProcCluster, node: usize, drained: bool) -> Result<(), String> {
    c.admin()
        .set_drained(NAMES[node], drained)
        .await
        .map(|_| ())
        .map_err(|e| format!("drain {} ({drained}): {e}", NAMES[node]))
}

async fn one(c: &mut ProcCluster, w: &Writers, event: Event) -> Result<Duration, String> {
    settle(c, w).await?;
    let l = c.wait_leader().await;
    let at = Instant::now();
    match event {
        Event::Kill => c.kill(l),
        Event::Stall => {
            let stall = kura_sdk::Faults {
                storage_stalled: true,
                ..Default::default()
            };
            c.faults(l, stall).await
        }
        Event::Drain => set_drained(c, l, true).await?,
    }
    // The event's gap ends once another node leads and writes flow through it.
    let deadline = at + Duration::from_secs(60);
    let moved = loop {
        if leads_instead(c, l).await {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{event:?}: leadership did not leave node {l} within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    while w
        .last_ack()
        .is_none_or(|t| t < moved + Duration::from_millis(500))
    {
        if Instant::now() > deadline {
            return Err(format!(
                "{event:?}: no write acknowledged after the new leader took over"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gap = w
        .longest_gap(at, Instant::now())
        .ok_or("no write acknowledged before the event")?;
    match event {
        Event::Kill => c.restart(l),
        Event::Stall => c.faults(l, Default::default()).await,
        Event::Drain => set_drained(c, l, false).await?,
    }
    Ok(gap)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    // Nearest rank: with 30 events p99 is the largest, as it should be.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub async fn run(args: Args) -> Result<(), String> {
    let mut c = ProcCluster::start_with_faults(
        &format!(
            "[failover]\nfailback_stabilization_s = 2\n{}",
            crate::harness::BENCH_LIMITS
        ),
        &[],
    );
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("failover").await;
    let client = c.client(&[0, 1, 2], &key);
    let w = Writers::start(&client, args.writers, args.think, tokenize_request);
    let started = Instant::now();
    let mut results = Vec::new();
    for event in [Event::Kill, Event::Stall, Event::Drain] {
        let mut gaps = Vec::new();
        for i in 0..args.rounds {
            let gap = one(&mut c, &w, event).await?;
            eprintln!(
                "{event:?} {}/{}: write gap {} ms",
                i + 1,
                args.rounds,
                gap.as_millis()
            );
            gaps.push(gap);
        }
        gaps.sort();
        results.push((event, gaps));
    }
    let elapsed = started.elapsed();
    let done = w.finish().await;
    let (acked, errors) = (done.tokens, done.failed);
    eprintln!("reading back {} acknowledged tokens", acked.len());
    let lost = missing(&client, acked.clone()).await;

    let mut t = report::header("kura failover under load", c.dir.path());
    let _ = writeln!(
        t,
        "- Three `kura` processes on loopback (release build, defaults, fsync on, `failback_stabilization_s = 2`, fault injection enabled, request limits in place with rates above the benchmark's (`BENCH_LIMITS`)), {} writers tokenizing cards on file through the SDK, each pausing {} ms between writes.\n\
         - Write gap: the longest time without any acknowledged write (across all writers) from the last acknowledgement before the event until another node leads and writes have flowed through it for 0.5 s. After each event the cluster is let settle (all nodes up, one leader — main again by failback —, writes flowing for 1 s) before the next.\n\
         - {} writes acknowledged over {:.0} s, {} failed or ambiguous (requests caught in flight by the event), **{} lost** (every acknowledged token read back, linearizably, at the end).\n\n\
         | event | n | gap p50 ms | gap p99 ms | gap max ms |\n|---|---:|---:|---:|---:|",
        args.writers,
        args.think.as_millis(),
        acked.len(),
        elapsed.as_secs_f64(),
        errors,
        lost.len()
    );
    for (event, gaps) in &results {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            event.describe(),
            gaps.len(),
            quantile(gaps, 0.5).as_millis(),
            quantile(gaps, 0.99).as_millis(),
            gaps.last().map_or(0, Duration::as_millis)
        );
    }
    let p99 = |e: Event| {
        results
            .iter()
            .find(|(x, _)| *x == e)
            .map_or(Duration::MAX, |(_, g)| quantile(g, 0.99))
    };
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        t,
        "\n## Targets\n\n| target | measured | |\n|---|---:|---|\n\
         | crash failover write gap p99 ≤ 1 s | {} ms | {} |\n\
         | stalled-storage failover write gap p99 ≤ 3 s | {} ms | {} |\n\
         | no acknowledged write lost | {} lost | {} |",
        p99(Event::Kill).as_millis(),
        verdict(p99(Event::Kill) <= Duration::from_secs(1)),
        p99(Event::Stall).as_millis(),
        verdict(p99(Event::Stall) <= Duration::from_secs(3)),
        lost.len(),
        verdict(lost.is_empty())
    );
    report::publish(&args.results, "failover", &t)?;
    if !lost.is_empty() {
        return Err(format!(
            "{} acknowledged writes were lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    Ok(())
}
