//! `kura-bench scale`: load a large number of card-on-file tokens, then report what they
//! cost — database size and resident memory per node, tokenize latency against the empty
//! vault, what a comparison of the members' vaults takes and does to that latency — and
//! how long a wiped follower takes to catch up by snapshot.

use crate::harness::{self, Plan, Summary};
use crate::report;
use crate::systems::{tokenize_request, KuraTokenize};
use kura_cluster_tests::procs::{ProcCluster, NAMES};
use kura_node::files::disk_usage;
use kura_node::node::DATA_DIR_PARTS;
use kura_sdk::Client;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Args {
    pub tokens: u64,
    /// Concurrent loaders.
    pub clients: u32,
    /// Open-loop rate of the latency probes before and after loading.
    pub probe_rate: f64,
    pub results: PathBuf,
}

/// What the loaders have had answered so far.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Tokenizes `n` cards on file with `clients` loaders, counting the answers in `counts`.
async fn load(client: &Client, n: u64, clients: u32, counts: Arc<Counts>) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let (client, next, counts) = (client.clone(), next.clone(), counts.clone());
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        return;
                    }
                    match client.tokenize(&tokenize_request(w, seq)).await {
                        Ok(_) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
                    };
                    if seq > 0 && seq.is_multiple_of(50_000) {
                        eprintln!(
                            "  {seq} tokens in {:.0} s ({:.0}/s)",
                            started.elapsed().as_secs_f64(),
                            seq as f64 / started.elapsed().as_secs_f64()
                        );
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("loader");
    }
}

/// The count and sum of node `i`'s `kura_raft_snapshot_duration_seconds{kind}`.
pub(crate) async fn snapshot_metrics(c: &ProcCluster, i: usize, kind: &str) -> (f64, f64) {
    let name =
        |part: &str| format!("kura_raft_snapshot_duration_seconds_{part}{{kind=\"{kind}\"}}");
    (
        c.metric(i, &name("count")).await,
        c.metric(i, &name("sum")).await,
    )
}

/// The cluster as the vault grew: taken each time another tenth of the tokens is
/// acknowledged.
struct Grown {
    tokens: u64,
    secs: f64,
    rss: Vec<Option<u64>>,
    disk: Vec<u64>,
}

impl Grown {
    /// `(RSS, disk)`, each as `main / dr / bk`.
    fn cells(&self) -> (String, String) {
        (
            per_node(&self.rss, |b| b.map_or_else(|| "?".into(), mib)),
            per_node(&self.disk, |b| mib(*b)),
        )
    }
}

/// Samples the cluster at every tenth of `n` acknowledged tokens until the loaders are
/// done: how the load rate, memory and disk move as the vault outgrows its caches.
async fn watch_growth(c: &ProcCluster, n: u64, counts: &Counts) -> Vec<Grown> {
    let started = Instant::now();
    let mut grown = Vec::new();
    let mut next = 1;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ok = counts.ok.load(Ordering::Relaxed);
        let done = ok + counts.failed.load(Ordering::Relaxed) >= n;
        let new = grown.last().is_none_or(|g: &Grown| g.tokens != ok);
        if new && (ok >= n * next / 10 || done) {
            let g = Grown {
                tokens: ok,
                secs: started.elapsed().as_secs_f64(),
                rss: (0..3).map(|i| rss_bytes(c, i)).collect(),
                disk: (0..3).map(|i| dir_bytes(c, i)).collect(),
            };
            let (rss, disk) = g.cells();
            eprintln!(
                "  {ok} acknowledged at {:.0} s: RSS {rss}, disk {disk}",
                g.secs
            );
            grown.push(g);
            while next <= 10 && ok >= n * next / 10 {
                next += 1;
            }
        }
        if done {
            return grown;
        }
    }
}

/// `a / b / c`, one value per node.
fn per_node<T>(v: &[T], show: impl Fn(&T) -> String) -> String {
    v.iter().map(show).collect::<Vec<_>>().join(" / ")
}

/// The report's table of [`Grown`] samples.
fn growth_table(grown: &[Grown]) -> String {
    let mut t = String::from(
        "\n## As the vault grew\n\nSampled during the load each time another tenth of the tokens was acknowledged; the rate is over the tenth that ends at the row.\n\n\
         | tokens acknowledged | after | rate over the tenth | RSS main / dr / bk | disk main / dr / bk |\n|---:|---:|---:|---|---|\n",
    );
    let mut prev = (0u64, 0f64);
    for g in grown {
        let rate = (g.tokens - prev.0) as f64 / (g.secs - prev.1).max(1e-9);
        let (rss, disk) = g.cells();
        let _ = writeln!(
            t,
            "| {} | {:.0} s | {rate:.0}/s | {rss} | {disk} |",
            g.tokens, g.secs
        );
        prev = (g.tokens, g.secs);
    }
    t
}

/// Latency probes per vault state: one 10-second run is at the mercy of a single
/// stall (a snapshot build, a neighbour on the host), so the report takes the median.
const PROBE_RUNS: usize = 3;

/// Runs the probe [`PROBE_RUNS`] times; returns the run with the median p99, and every
/// run's p99.
async fn probe_median(client: &Client, rate: f64) -> (Summary, Vec<f64>) {
    let mut runs = Vec::with_capacity(PROBE_RUNS);
    for _ in 0..PROBE_RUNS {
        runs.push(probe(client, rate).await);
    }
    let p99s: Vec<f64> = runs.iter().map(|s| s.ms(0.99)).collect();
    runs.sort_by(|a, b| a.ms(0.99).total_cmp(&b.ms(0.99)));
    let median = runs.swap_remove(PROBE_RUNS / 2);
    (median, p99s)
}

async fn probe(client: &Client, rate: f64) -> Summary {
    let s = harness::run(
        KuraTokenize(client.clone()),
        Plan {
            clients: 16,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            rate: Some(rate),
        },
    )
    .await;
    eprintln!("  tokenize probe at {rate:.0}/s: {}", s.line());
    s
}

/// Disk space under node `i`'s data directory (allocated blocks, as `du` counts: redb
/// reserves file space it has not written yet, and a file's length would count that
/// hole).
fn dir_bytes(c: &ProcCluster, i: usize) -> u64 {
    disk_usage(&c.data_dir(i))
}

/// The disk space of each of [`DATA_DIR_PARTS`] in node `i`'s data directory.
fn part_bytes(c: &ProcCluster, i: usize) -> [u64; 4] {
    DATA_DIR_PARTS.map(|(_, name)| disk_usage(&c.data_dir(i).join(name)))
}

/// A comparison of the members' vaults on the full vault, with the latency probe
/// running while the members hash: what the hourly check costs at this size.
struct Compared {
    outcome: kura_sdk::types::Compare,
    /// From the request to the leader's verdict.
    secs: f64,
    /// The probe runs from the request on, one after another until the verdict: the
    /// run with the median p99, and every run's p99.
    during: Summary,
    during_p99s: Vec<f64>,
}

impl Compared {
    /// The report's paragraph.
    fn text(&self, rate: f64, full_p99: f64) -> String {
        let members: Vec<String> = self
            .outcome
            .members
            .iter()
            .map(|m| {
                format!(
                    "{} {}{}{}",
                    m.name,
                    format!("{:?}", m.state).to_lowercase(),
                    m.rows.map_or_else(String::new, |r| format!(", {r} rows")),
                    m.seconds
                        .map_or_else(String::new, |s| format!(" in {s:.1} s")),
                )
            })
            .collect();
        format!(
            "Comparison of the members' vaults (`kura compare`, hourly by default) on the full vault: **{}** in {:.1} s from the request to the leader's verdict ({}). The tokenize probe at {rate:.0}/s ran from the request on, run after run until the verdict ({} runs, p99 {}): the median run p50 {:.2} ms, p99 **{:.2} ms** ({} the full vault's median p99 without it), max {:.2} ms.",
            format!("{:?}", self.outcome.state).to_lowercase(),
            self.secs,
            members.join("; "),
            self.during_p99s.len(),
            ms_list(&self.during_p99s),
            self.during.ms(0.5),
            self.during.ms(0.99),
            report::ratio(self.during.ms(0.99), full_p99),
            self.during.max_ms(),
        )
    }
}

/// Starts a comparison of the members' vaults and waits for its verdict, probing
/// tokenize latency meanwhile.
async fn compare_under_probe(
    admin: &Client,
    client: &Client,
    rate: f64,
) -> Result<Compared, String> {
    let started = Instant::now();
    let first = admin
        .start_compare()
        .await
        .map_err(|e| format!("start a comparison: {e}"))?;
    let check = first.check.clone();
    let decided = std::sync::atomic::AtomicBool::new(false);
    let wait = async {
        let deadline = started + Duration::from_secs(1800);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match admin.compare().await {
                Ok(c) if c.check == check && c.state != kura_sdk::types::CompareState::Running => {
                    decided.store(true, Ordering::Relaxed);
                    return Ok((c, started.elapsed().as_secs_f64()));
                }
                Ok(_) | Err(_) if Instant::now() > deadline => {
                    decided.store(true, Ordering::Relaxed);
                    return Err("no verdict within 30 minutes".to_string());
                }
                _ => {}
            }
        }
    };
    let probes = async {
        let mut runs = Vec::new();
        while runs.is_empty() || !decided.load(Ordering::Relaxed) {
            runs.push(probe(client, rate).await);
        }
        runs
    };
    let (verdict, mut runs) = tokio::join!(wait, probes);
    let (outcome, secs) = verdict?;
    eprintln!("  compared in {secs:.1} s: {:?}", outcome.state);
    let during_p99s: Vec<f64> = runs.iter().map(|s| s.ms(0.99)).collect();
    runs.sort_by(|a, b| a.ms(0.99).total_cmp(&b.ms(0.99)));
    let during = runs.swap_remove(runs.len() / 2);
    Ok(Compared {
        outcome,
        secs,
        during,
        during_p99s,
    })
}

fn rss_bytes(c: &ProcCluster, i: usize) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid(i)?)).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `1.23 / 4.56 / 7.89 ms`.
fn ms_list(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|m| format!("{m:.2}")).collect();
    format!("{} ms", parts.join(" / "))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1048576.0)
}

async fn applied(c: &ProcCluster, i: usize) -> Option<u64> {
    c.status(i).await.and_then(|s| s["applied_index"].as_u64())
}

pub async fn run(args: Args) -> Result<(), String> {
    let mut c = ProcCluster::start(crate::harness::BENCH_LIMITS);
    c.init().await;
    c.wait_leader().await;
    let key = c.merchant("scale").await;
    let client = c.client(&[0, 1, 2], &key);
    eprintln!("empty vault:");
    let (empty, empty_p99s) = probe_median(&client, args.probe_rate).await;
    let empty_sizes: Vec<u64> = (0..3).map(|i| dir_bytes(&c, i)).collect();
    let empty_rss: Vec<Option<u64>> = (0..3).map(|i| rss_bytes(&c, i)).collect();
    let parts_empty: Vec<[u64; 4]> = (0..3).map(|i| part_bytes(&c, i)).collect();

    eprintln!(
        "loading {} tokens with {} clients:",
        args.tokens, args.clients
    );
    let started = Instant::now();
    let counts = Arc::new(Counts::default());
    let ((), grown) = tokio::join!(
        load(&client, args.tokens, args.clients, counts.clone()),
        watch_growth(&c, args.tokens, &counts)
    );
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let load_secs = started.elapsed().as_secs_f64();
    eprintln!("  {ok} acknowledged, {failed} failed, {load_secs:.0} s");
    eprintln!("full vault:");
    let (full, full_p99s) = probe_median(&client, args.probe_rate).await;
    let sizes: Vec<u64> = (0..3).map(|i| dir_bytes(&c, i)).collect();
    let rss: Vec<Option<u64>> = (0..3).map(|i| rss_bytes(&c, i)).collect();
    let parts: Vec<[u64; 4]> = (0..3).map(|i| part_bytes(&c, i)).collect();
    eprintln!("comparing the members' vaults:");
    let compared = compare_under_probe(&c.admin(), &client, args.probe_rate).await?;

    // Wipe a follower and time its catch-up: the leader's log is purged far past its
    // (empty) log, so it can only catch up from a snapshot.
    let leader = c.wait_leader().await;
    let f = (0..3).find(|&i| i != leader).expect("a follower");
    let target = applied(&c, leader).await.ok_or("leader status")?;
    // What the leader builds and sends meanwhile, as its metrics count them.
    let snapshot_kinds = ["build", "send", "send_while_built"];
    let mut before = Vec::new();
    for kind in snapshot_kinds {
        before.push(snapshot_metrics(&c, leader, kind).await);
    }
    c.kill(f);
    std::fs::remove_dir_all(c.data_dir(f)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(c.data_dir(f)).map_err(|e| e.to_string())?;
    let wiped = Instant::now();
    c.restart(f);
    // A light write load meanwhile, as in service: the leader learns that the follower
    // lost its log when an append is refused (heartbeats carry no entries to refuse).
    let deadline = wiped + Duration::from_secs(600);
    let mut seq = 0;
    while applied(&c, f).await.is_none_or(|a| a < target) {
        if Instant::now() > deadline {
            return Err(format!("{} did not catch up within 600 s", NAMES[f]));
        }
        let _ = client.tokenize(&tokenize_request(9_998, seq)).await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up = wiped.elapsed();
    // Where the catch-up went: the follower's install (after the last chunk: switching to
    // the vault it wrote while the chunks arrived) against the rest (the leader noticing,
    // sending while the follower writes, waiting).
    let installs = c
        .metric(
            f,
            "kura_raft_snapshot_duration_seconds_count{kind=\"install\"}",
        )
        .await;
    let install_s = c
        .metric(
            f,
            "kura_raft_snapshot_duration_seconds_sum{kind=\"install\"}",
        )
        .await;
    let installed_bytes = c
        .metric(f, "kura_raft_snapshot_size_bytes{kind=\"install\"}")
        .await;
    // What the leader built (a fresh snapshot for the follower, when its latest lagged
    // the vault) and sent meanwhile.
    let mut since = Vec::new();
    for (kind, (count, sum)) in snapshot_kinds.into_iter().zip(before) {
        let (count_now, sum_now) = snapshot_metrics(&c, leader, kind).await;
        since.push((count_now - count, sum_now - sum));
    }
    let [(builds, build_s), (sends, send_s), (streamed, streamed_s)] = since[..] else {
        unreachable!("three kinds");
    };
    // A snapshot sent as it is built overlaps its build; one sent whole follows it. A
    // send lasts until the follower answers, its install included.
    let busy = if streamed > 0.0 {
        build_s.max(streamed_s) + send_s
    } else {
        build_s + send_s
    };
    let caught_up_size = dir_bytes(&c, f);
    eprintln!(
        "wiped {} caught up to index {target} in {:.1} s",
        NAMES[f],
        catch_up.as_secs_f64()
    );

    let mut t = report::header("kura at scale", c.dir.path());
    let _ = writeln!(
        t,
        "- Three `kura` processes on loopback (release build, defaults, fsync on). {ok} card-on-file tokens acknowledged ({failed} failed) by {} clients in {load_secs:.0} s ({:.0}/s on average).\n\
         - Latency probe: tokenize, open loop at {:.0}/s over 16 connections, 2 s warm-up, 10 s measured; {PROBE_RUNS} runs per vault state, the table shows the run with the median p99.\n\
         - Disk: space allocated on the filesystem (as `du` counts it), not file lengths.\n\n\
         | node | disk empty | disk full | per token | RSS empty | RSS full |\n|---|---:|---:|---:|---:|---:|",
        args.clients,
        ok as f64 / load_secs,
        args.probe_rate
    );
    for i in 0..3 {
        let _ = writeln!(
            t,
            "| {}{} | {} | {} | {} B | {} | {} |",
            NAMES[i],
            if i == leader { " (leader)" } else { "" },
            mib(empty_sizes[i]),
            mib(sizes[i]),
            sizes[i].saturating_sub(empty_sizes[i]) / ok.max(1),
            empty_rss[i].map_or_else(|| "?".into(), mib),
            rss[i].map_or_else(|| "?".into(), mib)
        );
    }
    let _ = write!(t, "\n| data dir part, per token |");
    for name in NAMES {
        let _ = write!(t, " {name} |");
    }
    let _ = writeln!(t, "\n|---|---:|---:|---:|");
    for (p, (part, dir)) in DATA_DIR_PARTS.iter().enumerate() {
        let _ = write!(t, "| {part} (`{dir}`) |");
        for i in 0..3 {
            let grown = parts[i][p].saturating_sub(parts_empty[i][p]);
            let _ = write!(t, " {} B ({}) |", grown / ok.max(1), mib(parts[i][p]));
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(
        t,
        "\n| tokenize at {:.0}/s | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|\n\
         | empty vault | {:.2} | {:.2} | {:.2} | {:.2} |\n\
         | {ok} tokens | {:.2} | {:.2} | {:.2} | {:.2} |\n\
         | full / empty | {} | {} | {} | |\n\n\
         p99 of each probe run, empty: {}; full: {}.\n\n\
         Wiped follower ({}): data directory deleted, node restarted; it reached the leader's applied index ({target}) by snapshot in **{:.1} s** (the snapshot it installed holds {}: {:.0} MB/s of vault data); its data directory is then {}. Of that time, the leader built {} snapshot(s) in {:.1} s (a fresh one when its latest lagged the vault); it sent {} snapshot(s) to the follower as they were built, in {:.1} s, and {} whole, in {:.1} s (a send lasts from its first chunk to the follower's answer, which comes after its install); the install took {} call(s) and {:.1} s after the last chunk (switching to the vault it wrote while the chunks arrived); the rest ({:.1} s) is noticing the follower and replaying the entries written meanwhile.",
        args.probe_rate,
        empty.ms(0.5),
        empty.ms(0.99),
        empty.ms(0.999),
        empty.max_ms(),
        full.ms(0.5),
        full.ms(0.99),
        full.ms(0.999),
        full.max_ms(),
        report::ratio(full.ms(0.5), empty.ms(0.5)),
        report::ratio(full.ms(0.99), empty.ms(0.99)),
        report::ratio(full.ms(0.999), empty.ms(0.999)),
        ms_list(&empty_p99s),
        ms_list(&full_p99s),
        NAMES[f],
        catch_up.as_secs_f64(),
        mib(installed_bytes as u64),
        installed_bytes / 1e6 / catch_up.as_secs_f64(),
        mib(caught_up_size),
        builds,
        build_s,
        streamed,
        streamed_s,
        sends,
        send_s,
        installs,
        install_s,
        (catch_up.as_secs_f64() - busy).max(0.0)
    );
    let _ = writeln!(t, "\n\n{}", compared.text(args.probe_rate, full.ms(0.99)));
    t.push_str(&growth_table(&grown));
    report::publish(&args.results, "scale", &t)
}
