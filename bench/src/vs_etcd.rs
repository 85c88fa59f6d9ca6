//! `kura-bench vs-etcd`: kura and etcd on the same machine, fsync and TLS on for both.
//! Closed-loop throughput is driven by `wrk`, the two systems interleaved cell by cell
//! (kura, etcd, kura, etcd, …) and compared pair by pair; open-loop latency and
//! payments by `kura-bench`'s own harness, whose CPU share is reported. A Markdown
//! report.

use crate::harness::{self, Op, Plan, Summary};
use crate::report::{self, ratio};
use crate::scale::snapshot_metrics;
use crate::systems::{
    tokenize_body_bytes, EtcdCluster, EtcdPut, EtcdRange, KuraPay, KuraRead, KuraTokenize,
};
use crate::wrk::{self, Cell, Script, Scripts};
use base64::Engine as _;
use kura_cluster_tests::procs::{acquirer_toml, AcquirerSim, ProcCluster, NAMES};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone)]
pub struct Args {
    pub clients: Vec<u32>,
    pub warmup: Duration,
    pub measure: Duration,
    /// Connections of the open-loop runs.
    pub open_clients: u32,
    pub results: PathBuf,
}

/// Runs `op` through kura-bench's harness and measures kura-bench's own CPU meanwhile.
async fn measure<O: Op>(
    label: &str,
    op: O,
    clients: u32,
    args: &Args,
    rate: Option<f64>,
) -> Measured {
    let me = std::process::id();
    let before = wrk::cpu_seconds(me);
    let started = std::time::Instant::now();
    let s = harness::run(
        op,
        Plan {
            clients,
            warmup: args.warmup,
            measure: args.measure,
            rate,
        },
    )
    .await;
    let bench_share =
        (wrk::cpu_seconds(me) - before) / (started.elapsed().as_secs_f64() * wrk::cores());
    let how = rate.map_or_else(
        || format!("{clients:>3} clients"),
        |r| format!("{r:.0}/s open"),
    );
    eprintln!(
        "  {label:<28} {how:<13} {}; kura-bench {:.0}% of the machine",
        s.line(),
        100.0 * bench_share
    );
    Measured {
        summary: s,
        bench_share,
    }
}

/// Rounds of each interleaved pair (kura, etcd, kura, etcd, …).
const ROUNDS: u32 = 3;

/// One client count's pairs.
struct Pairs {
    clients: u32,
    /// (kura, etcd), in the order they ran.
    cells: Vec<(Cell, Cell)>,
}

impl Pairs {
    fn ratios(&self) -> Vec<f64> {
        self.cells
            .iter()
            .map(|(k, e)| k.throughput() / e.throughput().max(1e-9))
            .collect()
    }

    /// Median, lowest and highest kura/etcd ratio over the pairs.
    fn ratio_spread(&self) -> (f64, f64, f64) {
        median_spread(self.ratios())
    }

    fn median(&self, f: impl Fn(&(Cell, Cell)) -> f64) -> f64 {
        median_spread(self.cells.iter().map(f).collect()).0
    }
}

/// Median (the upper one of an even count), lowest and highest of `v`.
fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// Payments runs per client count: the same workload moved by ±10–30% between runs of
/// one build on the two-core machine (785, 1,344 and 1,027 flows/s at 64 clients in
/// three reports), so one run is not a figure.
const PAY_ROUNDS: u32 = 3;

/// A system under test: where wrk sends requests, and its processes.
struct Target<'a> {
    url: &'a str,
    pids: &'a [u32],
}

/// A wrk cell: a warm-up run (discarded), then the measured one.
async fn wrk_cell(
    scripts: &Scripts,
    label: &str,
    script: Script,
    target: &Target<'_>,
    n: u32,
    args: &Args,
    script_args: &[String],
) -> Result<Cell, String> {
    let (url, pids) = (target.url, target.pids);
    if !args.warmup.is_zero() {
        scripts
            .run(script, url, n, args.warmup, script_args, pids)
            .await?;
    }
    let c = scripts
        .run(script, url, n, args.measure, script_args, pids)
        .await?;
    eprintln!("  {label:<28} {n:>3} clients  {}", c.line());
    Ok(c)
}

/// Sequence numbers of the cards and keys each wrk cell writes, apart from every other
/// cell's.
struct Sequences(std::cell::Cell<u64>);

impl Sequences {
    fn next(&self) -> String {
        self.0.set(self.0.get() + 1);
        (self.0.get() * 10_000_000).to_string()
    }
}

/// One system's side of an interleaved comparison: what wrk runs, against whom, and
/// the script's arguments for each cell.
struct Side<'a, F: FnMut() -> Vec<String>> {
    label: &'a str,
    script: Script,
    target: &'a Target<'a>,
    args: F,
}

/// kura and etcd interleaved, cell by cell ([`ROUNDS`] pairs per client count).
async fn interleaved(
    scripts: &Scripts,
    args: &Args,
    mut kura: Side<'_, impl FnMut() -> Vec<String>>,
    mut etcd: Side<'_, impl FnMut() -> Vec<String>>,
) -> Result<Vec<Pairs>, String> {
    let mut out = Vec::new();
    for &n in &args.clients {
        let mut cells = Vec::new();
        for _ in 0..ROUNDS {
            let k = wrk_cell(
                scripts,
                kura.label,
                kura.script,
                kura.target,
                n,
                args,
                &(kura.args)(),
            )
            .await?;
            let e = wrk_cell(
                scripts,
                etcd.label,
                etcd.script,
                etcd.target,
                n,
                args,
                &(etcd.args)(),
            )
            .await?;
            cells.push((k, e));
        }
        out.push(Pairs { clients: n, cells });
    }
    Ok(out)
}

pub async fn run(args: Args) -> Result<(), String> {
    let wrk_version = wrk::version()
        .ok_or("wrk is not installed (scripts/bench vs-etcd installs Debian's package)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fsync = report::fsync_floor(dir.path()).map_err(|e| format!("fsync probe: {e}"))?;
    let rtt_ms = report::loopback_rtt_ms().map_err(|e| format!("loopback probe: {e}"))?;
    eprintln!("{}; loopback round trip p50 {rtt_ms:.3} ms", fsync.line());
    let skeleton = crate::skeleton::measure(dir.path())?;
    eprintln!("{}", skeleton.line());
    let scripts = Scripts::write(dir.path())?;
    let value_bytes = tokenize_body_bytes();
    let seqs = Sequences(std::cell::Cell::new(0));

    let etcd_dir = dir.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).map_err(|e| e.to_string())?;
    let mut etcd = EtcdCluster::start(&etcd_dir).await?;
    let etcd_token = etcd.enable_auth().await?;
    let etcd_leader_addr = etcd.leader().await.ok_or("etcd has no leader")?;
    let etcd_leader = etcd.client(etcd_leader_addr.clone());
    let etcd_url = format!("https://{etcd_leader_addr}");
    let etcd_pids = etcd.pids();

    let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
    let c = ProcCluster::start(&format!(
        "{}{}",
        acquirer_toml(&cafis, &cardnet, 2_000),
        crate::harness::BENCH_LIMITS
    ));
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("bench").await;
    let client = c.client(&[0, 1, 2], &key);
    let kura_url = c.api_url(leader);
    let kura_pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
    let kura = Target {
        url: &kura_url,
        pids: &kura_pids,
    };
    let etcd_target = Target {
        url: &etcd_url,
        pids: &etcd_pids,
    };
    let (head, mid, tail) = tokenize_template();
    let value_b64 = EtcdPut::new(etcd_leader.clone(), value_bytes).value_b64;

    eprintln!("closed loop, wrk ({wrk_version}), kura and etcd interleaved:");
    let writes = interleaved(
        &scripts,
        &args,
        Side {
            label: "kura tokenize",
            script: Script::KuraTokenize,
            target: &kura,
            args: || {
                vec![
                    key.clone(),
                    seqs.next(),
                    head.clone(),
                    mid.clone(),
                    tail.clone(),
                ]
            },
        },
        Side {
            label: "etcd put",
            script: Script::EtcdPut,
            target: &etcd_target,
            args: || vec![etcd_token.clone(), seqs.next(), value_b64.to_string()],
        },
    )
    .await?;

    let mut tokens = Vec::new();
    for i in 0..1000 {
        let t = client
            .tokenize(&crate::systems::tokenize_request(9_999, i))
            .await
            .map_err(|e| format!("preloading tokens: {e}"))?;
        tokens.push(t.token);
    }
    let token_file = scripts.file("tokens.txt");
    std::fs::write(&token_file, tokens.join("\n")).map_err(|e| e.to_string())?;
    let keys: Vec<String> = (0..1000).map(|i| format!("read/{i:06}")).collect();
    for k in &keys {
        etcd_leader.put(k, &value_b64).await?;
    }
    let key_file = scripts.file("keys.txt");
    let keys_b64: Vec<String> = keys.iter().map(|k| B64.encode(k)).collect();
    std::fs::write(&key_file, keys_b64.join("\n")).map_err(|e| e.to_string())?;
    let reads = interleaved(
        &scripts,
        &args,
        Side {
            label: "kura token read",
            script: Script::KuraRead,
            target: &kura,
            args: || vec![key.clone(), token_file.display().to_string()],
        },
        Side {
            label: "etcd range",
            script: Script::EtcdRange,
            target: &etcd_target,
            args: || vec![etcd_token.clone(), key_file.display().to_string()],
        },
    )
    .await?;

    // Open loop at half of etcd's saturation, by kura-bench's own harness (wrk's
    // closed loop would hide queueing), kura and etcd one after the other.
    let saturation = |p: &[Pairs]| {
        p.iter()
            .map(|x| x.median(|(_, e)| e.throughput()))
            .fold(0.0, f64::max)
    };
    let (write_rate, read_rate) = (saturation(&writes) / 2.0, saturation(&reads) / 2.0);
    eprintln!("open loop, kura-bench:");
    let put = EtcdPut::new(etcd_leader.clone(), value_bytes);
    let range = EtcdRange {
        etcd: etcd_leader.clone(),
        keys: Arc::new(keys),
    };
    let tokenize = KuraTokenize(client.clone());
    let read = KuraRead {
        client: client.clone(),
        tokens: Arc::new(tokens),
    };
    let n = args.open_clients;
    let open = OpenLoop {
        write: (
            measure("kura tokenize", tokenize, n, &args, Some(write_rate)).await,
            measure("etcd put", put, n, &args, Some(write_rate)).await,
        ),
        read: (
            measure("kura token read", read, n, &args, Some(read_rate)).await,
            measure("etcd range", range, n, &args, Some(read_rate)).await,
        ),
        write_rate,
        read_rate,
    };
    let sim_pids: Vec<u32> = [cafis.pid(), cardnet.pid()].into_iter().flatten().collect();
    let mut pays = Vec::new();
    for (round, n) in (1..=PAY_ROUNDS).flat_map(|r| [(r, 16), (r, 64)]) {
        let (nodes, sims) = (
            wrk::cpu_seconds_of(&kura_pids),
            wrk::cpu_seconds_of(&sim_pids),
        );
        let events = NodeEvents::of(&c).await;
        // A run of its own: new members, orders and keys (no replays of a run before).
        let pay = KuraPay {
            client: client.clone(),
            run: format!("b{}r{round}n{n}", std::process::id()),
        };
        let m = measure("tokenize+auth+capture", pay, n, &args, None).await;
        // The harness's warm-up is in the CPU times but not in the flows it counts: spread
        // over the whole run's time at the measured rate.
        let run_s = (args.warmup + args.measure).as_secs_f64();
        let flows = m.summary.throughput() * run_s;
        pays.push(PayRun {
            round,
            clients: n,
            node_cpu_ms_per_flow: 1000.0 * (wrk::cpu_seconds_of(&kura_pids) - nodes)
                / flows.max(1.0),
            sims_share: (wrk::cpu_seconds_of(&sim_pids) - sims) / (run_s * wrk::cores()),
            run: m,
            events: NodeEvents::of(&c).await.since(&events),
        });
    }
    drop(c);
    drop(etcd);

    let tls_cost = tls_cost(&args, &scripts, &seqs).await?;
    let disk = disk_share(&args, &scripts, &seqs).await?;
    let probes = Probes {
        fsync,
        rtt_ms,
        skeleton,
        wrk: wrk_version,
    };
    let mut text = render(
        &args,
        &probes,
        value_bytes,
        &writes,
        &reads,
        &open,
        &pays,
        dir.path(),
    );
    render_tls_cost(&mut text, &tls_cost);
    render_disk_share(&mut text, &disk, probes.floor_ms(), probes.skeleton.p50_ms);
    report::publish(&args.results, "vs-etcd", &text)
}

/// The tokenize body with the card number and member id cut out, for the wrk script.
pub(crate) fn tokenize_template() -> (String, String, String) {
    let body = serde_json::to_string(&kura_sdk::TokenizeIn::card_on_file(
        kura_sdk::CardIn::new("@PAN@", 12, 2035),
        "@MEMBER@",
    ))
    .expect("json");
    let (head, rest) = body.split_once("@PAN@").expect("card number placeholder");
    let (mid, tail) = rest.split_once("@MEMBER@").expect("member placeholder");
    (head.to_owned(), mid.to_owned(), tail.to_owned())
}

/// A payments run, with what the nodes and the acquirer simulators spent on it.
struct PayRun {
    round: u32,
    clients: u32,
    run: Measured,
    /// The three nodes' CPU time per flow, in milliseconds.
    node_cpu_ms_per_flow: f64,
    /// The simulators' share of the machine's CPU.
    sims_share: f64,
    /// What the nodes did besides the flows meanwhile.
    events: NodeEvents,
}

/// Events that stall or slow a node, as the three nodes' metrics count them: snapshots
/// built and installed (and the seconds they took) and leader changes.
#[derive(Debug, Clone, Copy, Default)]
struct NodeEvents {
    builds: f64,
    build_s: f64,
    marks: f64,
    installs: f64,
    leader_changes: f64,
}

impl NodeEvents {
    async fn of(c: &ProcCluster) -> NodeEvents {
        let mut e = NodeEvents::default();
        for i in 0..NAMES.len() {
            let (builds, build_s) = snapshot_metrics(c, i, "build").await;
            e.builds += builds;
            e.build_s += build_s;
            e.marks += snapshot_metrics(c, i, "mark").await.0;
            e.installs += snapshot_metrics(c, i, "install").await.0;
        }
        // Every node counts the changes it sees; main's count stands for the cluster's.
        e.leader_changes = c.metric(0, "kura_raft_leader_changes_total").await;
        e
    }

    fn since(&self, before: &NodeEvents) -> NodeEvents {
        NodeEvents {
            builds: self.builds - before.builds,
            build_s: self.build_s - before.build_s,
            marks: self.marks - before.marks,
            installs: self.installs - before.installs,
            leader_changes: self.leader_changes - before.leader_changes,
        }
    }

    /// The cell: snapshot files built (their seconds), compaction marks, snapshots
    /// installed, leader changes.
    fn cell(&self) -> String {
        format!(
            "{:.0} ({:.1} s) / {:.0} / {:.0} / {:.0}",
            self.builds, self.build_s, self.marks, self.installs, self.leader_changes
        )
    }
}

/// A kura-bench run with its own CPU share.
struct Measured {
    summary: Summary,
    /// kura-bench's share of the machine's CPU during the run.
    bench_share: f64,
}

struct OpenLoop {
    /// (kura, etcd)
    write: (Measured, Measured),
    read: (Measured, Measured),
    write_rate: f64,
    read_rate: f64,
}

struct Probes {
    fsync: report::Fsync,
    rtt_ms: f64,
    skeleton: crate::skeleton::Skeleton,
    wrk: String,
}

impl Probes {
    /// About the fastest a replicated durable write can be: the disk's fsync and one
    /// loopback round trip.
    fn floor_ms(&self) -> f64 {
        self.fsync.p50_ms + self.rtt_ms
    }
}

/// kura with TLS against the same build in its insecure mode: fresh clusters, the
/// lowest and highest client counts, driven by wrk, the two modes alternating in an
/// ABBA order (TLS first in odd rounds, insecure first in even ones) so that drift on
/// the machine during the comparison falls on both alike.
struct TlsCost {
    /// (round, clients, TLS, insecure)
    pairs: Vec<(u32, u32, Cell, Cell)>,
}

/// Rounds of the TLS-cost comparison: even, so that each mode goes first equally
/// often. A 256-client cell varies by ±5–10% from run to run on the two-core machine;
/// with two rounds the cost read 8.9–21.4%, and with three, TLS always first, 4.8–18.6%
/// over five runs, while back-to-back `kura up` pairs read anything from TLS 12%
/// slower to TLS 11% faster.
const TLS_COST_ROUNDS: u32 = 4;

/// The two modes of a round in the order they run (`true`: the changed one — insecure,
/// or fsync off): each goes first in every other round.
fn alternating(round: u32) -> [bool; 2] {
    if round % 2 == 1 {
        [false, true]
    } else {
        [true, false]
    }
}

async fn tls_cost(args: &Args, scripts: &Scripts, seqs: &Sequences) -> Result<TlsCost, String> {
    let counts = [
        *args.clients.first().unwrap_or(&1),
        *args.clients.last().unwrap_or(&256),
    ];
    let mut pairs = Vec::new();
    for round in 1..=TLS_COST_ROUNDS {
        let mut tls = Vec::new();
        let mut plain = Vec::new();
        for insecure in alternating(round) {
            let label = if insecure { "insecure" } else { "TLS" };
            eprintln!("kura {label} (TLS cost, round {round}):");
            let c = if insecure {
                ProcCluster::start_insecure(crate::harness::BENCH_LIMITS)
            } else {
                ProcCluster::start(crate::harness::BENCH_LIMITS)
            };
            let cells = tokenize_cells(c, "kura tokenize", &counts, args, scripts, seqs).await?;
            if insecure {
                plain = cells;
            } else {
                tls = cells;
            }
        }
        for ((n, t), p) in counts.iter().zip(tls).zip(plain) {
            pairs.push((round, *n, t, p));
        }
    }
    Ok(TlsCost { pairs })
}

/// The tokenize cell at each of `counts` clients against the leader of the fresh
/// cluster `c`, with a merchant of its own; the cluster stops when they are done.
async fn tokenize_cells(
    c: ProcCluster,
    label: &str,
    counts: &[u32],
    args: &Args,
    scripts: &Scripts,
    seqs: &Sequences,
) -> Result<Vec<Cell>, String> {
    c.init().await;
    let leader = c.wait_leader().await;
    let key = c.merchant("bench").await;
    let url = c.api_url(leader);
    let pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
    let (head, mid, tail) = tokenize_template();
    let mut cells = Vec::new();
    for &n in counts {
        let script_args = [
            key.clone(),
            seqs.next(),
            head.clone(),
            mid.clone(),
            tail.clone(),
        ];
        let target = Target {
            url: &url,
            pids: &pids,
        };
        let cell = wrk_cell(
            scripts,
            label,
            Script::KuraTokenize,
            &target,
            n,
            args,
            &script_args,
        )
        .await?;
        cells.push(cell);
    }
    Ok(cells)
}

fn render_tls_cost(t: &mut String, cost: &TlsCost) {
    let _ = writeln!(
        t,
        "\n## What TLS costs kura (fresh clusters, wrk, TLS and insecure alternating, each first in every other round)\n\nwrk speaks TLS too in the TLS cells, on the same two cores; its CPU and kura's CPU per request (the three nodes' CPU time over the cell, per successful request) are shown for both modes.\n\n| round | clients | TLS ops/s | insecure ops/s | TLS/insecure | TLS p99 ms | insecure p99 ms | wrk CPU TLS / insecure | kura CPU per request TLS / insecure (ms) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    // kura's CPU seconds and the requests it served in a cell.
    let spent = |c: &Cell| (c.system_cpu_s, c.throughput() * c.seconds);
    let ms_per_request = |(cpu, requests): (f64, f64)| 1000.0 * cpu / requests.max(1e-9);
    for (round, n, tls, plain) in &cost.pairs {
        let _ = writeln!(
            t,
            "| {round} | {n} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.0}% / {:.0}% | {:.3} / {:.3} |",
            tls.throughput(),
            plain.throughput(),
            ratio(tls.throughput(), plain.throughput()),
            tls.ms(tls.p99_us),
            plain.ms(plain.p99_us),
            100.0 * tls.wrk_share(),
            100.0 * plain.wrk_share(),
            ms_per_request(spent(tls)),
            ms_per_request(spent(plain)),
        );
    }
    let hi = cost.pairs.iter().map(|p| p.1).max().unwrap_or(0);
    let (t_sum, p_sum) = cost
        .pairs
        .iter()
        .filter(|p| p.1 == hi)
        .fold((0.0, 0.0), |(a, b), p| {
            (a + p.2.throughput(), b + p.3.throughput())
        });
    let cost_pct = 100.0 * (1.0 - t_sum / p_sum.max(1e-9));
    let _ = writeln!(
        t,
        "\n| target | measured | |\n|---|---:|---|\n| TLS costs ≤ 15% of throughput at {hi} clients | {cost_pct:.1}% | {} |",
        if cost_pct <= 15.0 { "met" } else { "**not met**" }
    );
    // Summed over the rounds' cells at `hi` clients.
    let (tls_cpu, tls_ops, plain_cpu, plain_ops) =
        cost.pairs
            .iter()
            .filter(|p| p.1 == hi)
            .fold((0.0, 0.0, 0.0, 0.0), |(a, b, c, d), p| {
                let ((tc, to), (pc, po)) = (spent(&p.2), spent(&p.3));
                (a + tc, b + to, c + pc, d + po)
            });
    let more = ms_per_request((tls_cpu, tls_ops))
        / ms_per_request((plain_cpu, plain_ops)).max(1e-12)
        - 1.0;
    let _ = writeln!(
        t,
        "\nkura's own CPU per request at {hi} clients, over the rounds: {:.1}% more with TLS than without (not a target; the throughput cost above also holds wrk's TLS, which shares the cores).",
        100.0 * more
    );
}

/// Rounds of the one-client comparison of fsync on and off: odd, so that the median is
/// a round's own figure; the mode that goes first alternates.
const DISK_ROUNDS: u32 = 3;

/// One client's writes on fresh clusters with fsync on and off (`unsafe_no_fsync`).
struct DiskShare {
    clients: u32,
    /// (round, fsync on, fsync off)
    pairs: Vec<(u32, Cell, Cell)>,
}

/// What the disk adds to a write at the lowest client count: the same wrk cell on fresh
/// clusters with fsync on and with it off, alternating. Without the disk what is left is
/// the write's path — TLS, HTTP, the Raft round trip and the thread and process
/// hand-offs on either side — which no disk makes faster.
async fn disk_share(args: &Args, scripts: &Scripts, seqs: &Sequences) -> Result<DiskShare, String> {
    let clients = *args.clients.first().unwrap_or(&1);
    let mut pairs = Vec::new();
    for round in 1..=DISK_ROUNDS {
        let (mut on, mut off) = (None, None);
        for no_fsync in alternating(round) {
            let label = if no_fsync { "fsync off" } else { "fsync on" };
            eprintln!("kura {label} (the disk's share, round {round}):");
            let storage = if no_fsync {
                "[storage]\nunsafe_no_fsync = true\n"
            } else {
                ""
            };
            let c = ProcCluster::start(&format!("{}{storage}", crate::harness::BENCH_LIMITS));
            let cell = tokenize_cells(
                c,
                &format!("kura tokenize, {label}"),
                &[clients],
                args,
                scripts,
                seqs,
            )
            .await?
            .pop();
            if no_fsync {
                off = cell;
            } else {
                on = cell;
            }
        }
        if let (Some(on), Some(off)) = (on, off) {
            pairs.push((round, on, off));
        }
    }
    Ok(DiskShare { clients, pairs })
}

/// `floor_ms`: the fsync floor and loopback round trip the one-client target is made of;
/// `skeleton_ms`: the replication skeleton's p50, the least any implementation takes.
fn render_disk_share(t: &mut String, d: &DiskShare, floor_ms: f64, skeleton_ms: f64) {
    let n = d.clients;
    let _ = writeln!(
        t,
        "\n## What the disk adds at {n} client (fresh clusters, wrk, fsync on and off alternating)\n\nThe same tokenize cell on a fresh cluster with fsync on, and on one with `[storage] unsafe_no_fsync = true`; each goes first in every other round. With fsync off a write still crosses TLS, HTTP, the Raft round trip to a follower and every thread and process hand-off on both nodes: that p50 is what the write's path costs without any disk.\n\n| round | p50 fsync on (ms) | p50 fsync off (ms) | the disk's share | ops/s on / off |\n|---:|---:|---:|---:|---:|"
    );
    for (round, on, off) in &d.pairs {
        let (a, b) = (on.ms(on.p50_us), off.ms(off.p50_us));
        let _ = writeln!(
            t,
            "| {round} | {a:.2} | {b:.2} | {:.2} ms | {:.0} / {:.0} |",
            a - b,
            on.throughput(),
            off.throughput()
        );
    }
    let (on, _, _) = median_spread(d.pairs.iter().map(|p| p.1.ms(p.1.p50_us)).collect());
    let (off, lo, hi) = median_spread(d.pairs.iter().map(|p| p.2.ms(p.2.p50_us)).collect());
    let target = 1.5 * floor_ms;
    let _ = writeln!(
        t,
        "\nMedian p50 {on:.2} ms with fsync on and **{off:.2} ms with it off** ({lo:.2}–{hi:.2}); the one-client target above is {target:.2} ms. {}",
        if off > target {
            "The path alone, without any disk, is slower than the target: no disk, and no change to how kura writes to it, can meet it on this machine; only a shorter path can."
        } else {
            "The path alone is within the target: the disk's share decides it."
        }
    );
    let _ = writeln!(
        t,
        "\nThe replication skeleton (above: the hops and the followers' `fdatasync` of a replicated write and nothing else) takes {skeleton_ms:.2} ms at p50; kura's write with fsync takes {:.2}× that, {:.2} ms more. {}",
        on / skeleton_ms,
        on - skeleton_ms,
        if skeleton_ms > target {
            "**The skeleton alone is slower than the target**: no implementation of a replicated durable write, however little it does on the way, can meet the target on this machine."
        } else {
            "The skeleton is within the target: an implementation that adds little enough to it could meet it."
        }
    );
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &Args,
    probes: &Probes,
    value_bytes: usize,
    writes: &[Pairs],
    reads: &[Pairs],
    open: &OpenLoop,
    pays: &[PayRun],
    dir: &std::path::Path,
) -> String {
    let mut t = report::header("kura vs etcd", dir);
    let floor = probes.floor_ms();
    let _ = writeln!(
        t,
        "- etcd: {}, three members on loopback, defaults (fsync on), TLS on client and peer links, client certificates required on the peer links, authentication on (simple tokens: a token on every client request); kura: three nodes on loopback, release build, defaults (fsync on), TLS 1.3 on every plane (mutual on the peer plane), a bearer key on every API request.\n\
         - Closed-loop throughput: `{}`, one thread, Lua scripts in `bench/lua/` making each request's body, against each system's leader; kura and etcd **interleaved** (kura, etcd, kura, etcd: {ROUNDS} pairs per client count), both clusters up throughout. Each cell: {:.0} s warm-up run, then {:.0} s measured. wrk's own CPU is measured (`wait4`) and reported as a share of the machine ({} cores), beside the system's (its processes' CPU time over the cell).\n\
         - Open-loop latency and payments: `kura-bench`'s harness (HDR histograms, no coordinated omission); its own CPU share is reported.\n\
         - kura writes tokenize a new card on file per request ({value_bytes}-byte JSON body); etcd writes `put` a new key with a {value_bytes}-byte value through the JSON gateway. Reads: kura token metadata, etcd `range`, both linearizable.\n\
         - {}; loopback TCP round trip p50 {:.3} ms: the fastest a replicated durable write can be is about their sum, {floor:.2} ms.\n\
         - The {}.\n",
        EtcdCluster::version(),
        probes.wrk,
        args.warmup.as_secs_f64(),
        args.measure.as_secs_f64(),
        wrk::cores(),
        probes.fsync.line(),
        probes.rtt_ms,
        probes.skeleton.line(),
    );
    for (title, pairs) in [
        ("Write throughput (closed loop, wrk)", writes),
        ("Linearizable read throughput (closed loop, wrk)", reads),
    ] {
        let _ = writeln!(
            t,
            "## {title}\n\n| clients | pair | kura ops/s | etcd ops/s | kura/etcd | kura p50 / p99 ms | etcd p50 / p99 ms | wrk CPU kura / etcd cell | system CPU kura / etcd | errors kura/etcd |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for p in pairs {
            for (i, (k, e)) in p.cells.iter().enumerate() {
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.0} | {:.0} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0}% / {:.0}% | {:.0}% / {:.0}% | {}/{} |",
                    p.clients,
                    i + 1,
                    k.throughput(),
                    e.throughput(),
                    ratio(k.throughput(), e.throughput()),
                    k.ms(k.p50_us),
                    k.ms(k.p99_us),
                    e.ms(e.p50_us),
                    e.ms(e.p99_us),
                    100.0 * k.wrk_share(),
                    100.0 * e.wrk_share(),
                    100.0 * k.system_share(),
                    100.0 * e.system_share(),
                    k.errors,
                    e.errors
                );
            }
        }
        let _ = writeln!(
            t,
            "\n| clients | kura ops/s (median) | etcd ops/s (median) | kura/etcd median (lowest–highest pair) |\n|---:|---:|---:|---:|"
        );
        for p in pairs {
            let (m, lo, hi) = p.ratio_spread();
            let _ = writeln!(
                t,
                "| {} | {:.0} | {:.0} | {m:.2}× ({lo:.2}–{hi:.2}) |",
                p.clients,
                p.median(|(k, _)| k.throughput()),
                p.median(|(_, e)| e.throughput()),
            );
        }
        t.push('\n');
    }
    let _ = writeln!(
        t,
        "## Latency at 50% of etcd's saturation (open loop, kura-bench, {} connections, no coordinated omission)\n\n| workload | offered/s | system | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | kura-bench CPU |\n|---|---:|---|---:|---:|---:|---:|---:|---:|",
        args.open_clients
    );
    for (w, rate, (k, e)) in [
        ("write", open.write_rate, &open.write),
        ("read", open.read_rate, &open.read),
    ] {
        for (name, m) in [("kura", k), ("etcd", e)] {
            let s = &m.summary;
            let _ = writeln!(
                t,
                "| {w} | {rate:.0} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% |",
                s.throughput(),
                s.ms(0.5),
                s.ms(0.99),
                s.ms(0.999),
                s.max_ms(),
                100.0 * m.bench_share
            );
        }
        let (k, e) = (&k.summary, &e.summary);
        let _ = writeln!(
            t,
            "| {w} | | **kura/etcd** | | {} | {} | {} | | |",
            ratio(k.ms(0.5), e.ms(0.5)),
            ratio(k.ms(0.99), e.ms(0.99)),
            ratio(k.ms(0.999), e.ms(0.999))
        );
    }
    let _ = writeln!(
        t,
        "\n## Payments (kura only, kura-bench: tokenize, authorise through the acquirer simulator, capture)\n\nA flow is four Raft writes (the token, the payment's intent, the acquirer's answer, the capture), three API requests and one call to the acquirer. The nodes' CPU is their processes' CPU time over the run (warm-up included) per flow at the measured rate; the machine has {:.0} cores for the three nodes, kura-bench and the two simulators together. The 16- and 64-client runs alternate, {PAY_ROUNDS} rounds, each run with members, orders and keys of its own. *p99 by second* takes the p99 of the flows started in each second of the run: its median over the seconds, and the worst second. Far apart, the run's tail comes from a few seconds of it (a stall); close, it is spread over the run. *Node events* are what the three nodes' metrics counted during the run: snapshot files built (with the seconds their builds took, summed over the nodes), log compaction marks recorded (a scheduled snapshot that copies nothing, decision 0020), snapshots installed, and leader changes.\n\n| round | clients | flows/s | p50 ms | p99 ms | p99.9 ms | p99 by second: median / worst (ms) | errors | node CPU per flow (ms, three nodes) | node events: built (s) / marks / installed / leader changes | kura-bench CPU | acquirer simulators CPU |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        wrk::cores()
    );
    for p in pays {
        let s = &p.run.summary;
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {} | {:.0}% | {:.0}% |",
            p.round,
            p.clients,
            s.throughput(),
            s.ms(0.5),
            s.ms(0.99),
            s.ms(0.999),
            s.second_p99s()
                .map(|(m, w)| format!("{m:.1} / {w:.1}"))
                .unwrap_or_else(|| "–".into()),
            s.errors,
            p.node_cpu_ms_per_flow,
            p.events.cell(),
            100.0 * p.run.bench_share,
            100.0 * p.sims_share
        );
    }
    // Median over the rounds, lowest–highest in brackets.
    let pay_at = |n: u32, f: &dyn Fn(&PayRun) -> f64| {
        median_spread(pays.iter().filter(|p| p.clients == n).map(f).collect())
    };
    let _ = writeln!(
        t,
        "\n| clients | flows/s (median) | p99 ms (median) | node CPU per flow (ms, median) |\n|---:|---:|---:|---:|"
    );
    for n in [16, 64] {
        let rate = pay_at(n, &|p| p.run.summary.throughput());
        let p99 = pay_at(n, &|p| p.run.summary.ms(0.99));
        let cpu = pay_at(n, &|p| p.node_cpu_ms_per_flow);
        let _ = writeln!(
            t,
            "| {n} | {:.0} ({:.0}–{:.0}) | {:.1} ({:.1}–{:.1}) | {:.2} ({:.2}–{:.2}) |",
            rate.0, rate.1, rate.2, p99.0, p99.1, p99.2, cpu.0, cpu.1, cpu.2
        );
    }
    let at = |n: u32| writes.iter().find(|p| p.clients == n);
    let (lo, hi) = (
        *args.clients.first().unwrap_or(&1),
        *args.clients.last().unwrap_or(&256),
    );
    let w_hi = at(hi).map_or(f64::NAN, |p| p.ratio_spread().0);
    let w_lo = at(lo).map_or(f64::NAN, |p| p.ratio_spread().0);
    let p50_lo = at(lo).map_or(f64::NAN, |p| p.median(|(k, _)| k.ms(k.p50_us)));
    let p99 = open.write.0.summary.ms(0.99) / open.write.1.summary.ms(0.99).max(1e-9);
    let (pay_rate, pay_p99) = (
        pay_at(64, &|p| p.run.summary.throughput()).0,
        pay_at(64, &|p| p.run.summary.ms(0.99)).0,
    );
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        t,
        "\n## Targets\n\n| target | measured | |\n|---|---:|---|\n\
         | write throughput at {hi} clients ≥ 2.0× etcd (median pair) | {w_hi:.2}× | {} |\n\
         | write throughput at {lo} client ≥ 1.5× etcd (median pair) | {w_lo:.2}× | {} |\n\
         | write p50 at {lo} client ≤ 1.5× (fsync p50 + loopback round trip) = {:.2} ms | {p50_lo:.2} ms ({:.2}×; the replication skeleton {:.2} ms) | {} |\n\
         | write p99 ≤ 0.7× etcd's at the same offered load | {p99:.2}× | {} |\n\
         | payments at 64 clients ≥ 2,000 flows/s with p99 ≤ 50 ms (medians of the rounds) | {pay_rate:.0}/s, p99 {pay_p99:.1} ms | {} |",
        verdict(w_hi >= 2.0),
        verdict(w_lo >= 1.5),
        1.5 * floor,
        p50_lo / floor,
        probes.skeleton.p50_ms,
        verdict(p50_lo <= 1.5 * floor),
        verdict(p99 <= 0.7),
        verdict(pay_rate >= 2000.0 && pay_p99 <= 50.0),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_spread_gives_the_middle_the_lowest_and_the_highest() {
        assert_eq!(
            median_spread(vec![1344.0, 785.0, 1027.0]),
            (1027.0, 785.0, 1344.0)
        );
        assert_eq!(median_spread(vec![2.0, 1.0]), (2.0, 1.0, 2.0));
        assert!(median_spread(Vec::new()).0.is_nan());
    }

    #[test]
    fn each_alternating_round_runs_both_modes_and_each_goes_first_equally_often() {
        let firsts: Vec<bool> = (1..=TLS_COST_ROUNDS)
            .map(|round| {
                let order = alternating(round);
                assert_ne!(order[0], order[1], "round {round} runs both modes");
                order[0]
            })
            .collect();
        let insecure_first = firsts.iter().filter(|f| **f).count();
        assert_eq!(2 * insecure_first, firsts.len(), "{firsts:?}");
        // Consecutive rounds swap the order (ABBA), so linear drift cancels.
        assert!(firsts.windows(2).all(|w| w[0] != w[1]), "{firsts:?}");
    }

    fn cell_with_p50(p50_us: u64) -> Cell {
        Cell {
            requests: 1000,
            errors: 0,
            seconds: 1.0,
            p50_us,
            p99_us: 2 * p50_us,
            p999_us: 3 * p50_us,
            max_us: 4 * p50_us,
            wrk_cpu_s: 0.1,
            system_cpu_s: 0.5,
        }
    }

    #[test]
    fn the_disk_share_reports_the_median_path_and_whether_it_alone_misses_the_target() {
        let d = DiskShare {
            clients: 1,
            pairs: vec![
                (1, cell_with_p50(800), cell_with_p50(550)),
                (2, cell_with_p50(900), cell_with_p50(600)),
                (3, cell_with_p50(850), cell_with_p50(500)),
            ],
        };
        let mut slow = String::new();
        render_disk_share(&mut slow, &d, 0.25, 0.40);
        assert!(slow.contains("| 2 | 0.90 | 0.60 | 0.30 ms |"), "{slow}");
        assert!(
            slow.contains(
                "Median p50 0.85 ms with fsync on and **0.55 ms with it off** (0.50–0.60)"
            ),
            "{slow}"
        );
        assert!(slow.contains("target above is 0.38 ms"), "{slow}");
        assert!(slow.contains("slower than the target"), "{slow}");
        assert!(
            slow.contains(
                "takes 0.40 ms at p50; kura's write with fsync takes 2.12× that, 0.45 ms more"
            ),
            "{slow}"
        );
        assert!(
            slow.contains("The skeleton alone is slower than the target"),
            "{slow}"
        );
        let mut fast = String::new();
        render_disk_share(&mut fast, &d, 0.5, 0.30);
        assert!(
            fast.contains("The path alone is within the target"),
            "{fast}"
        );
        assert!(!fast.contains("slower than the target"), "{fast}");
        assert!(fast.contains("The skeleton is within the target"), "{fast}");
    }
}
