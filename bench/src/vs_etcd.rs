//! `kura-bench vs-etcd`: etcd first (its saturation sets the open-loop rate), then kura,
//! on the same machine with the same harness and fsync on for both; a Markdown report.

use crate::harness::{self, Op, Plan, Summary};
use crate::report::{self, ratio};
use crate::systems::{
    tokenize_body_bytes, EtcdCluster, EtcdPut, EtcdRange, KuraPay, KuraRead, KuraTokenize,
};
use kura_cluster_tests::procs::{acquirer_toml, AcquirerSim, ProcCluster};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Args {
    pub clients: Vec<u32>,
    pub warmup: Duration,
    pub measure: Duration,
    /// Connections of the open-loop runs.
    pub open_clients: u32,
    pub results: PathBuf,
}

/// Everything one system measured.
#[derive(Default)]
struct Side {
    writes: Vec<(u32, Summary)>,
    reads: Vec<(u32, Summary)>,
    open_write: Option<Summary>,
    open_read: Option<Summary>,
}

impl Side {
    fn saturation(runs: &[(u32, Summary)]) -> f64 {
        runs.iter().map(|(_, s)| s.throughput()).fold(0.0, f64::max)
    }
}

async fn measure<O: Op>(
    label: &str,
    op: O,
    clients: u32,
    args: &Args,
    rate: Option<f64>,
) -> Summary {
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
    let how = rate.map_or_else(
        || format!("{clients:>3} clients"),
        |r| format!("{r:.0}/s open"),
    );
    eprintln!("  {label:<22} {how:<13} {}", s.line());
    s
}

pub async fn run(args: Args) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fsync = report::fsync_floor(dir.path()).map_err(|e| format!("fsync probe: {e}"))?;
    eprintln!("{}", fsync.line());
    let value_bytes = tokenize_body_bytes();

    eprintln!("etcd ({}):", EtcdCluster::version());
    let mut etcd = Side::default();
    {
        let cluster = EtcdCluster::start(dir.path()).await?;
        let leader = cluster.client(cluster.leader().await.ok_or("etcd has no leader")?);
        let put = EtcdPut::new(leader.clone(), value_bytes);
        for &n in &args.clients {
            etcd.writes
                .push((n, measure("put", put.clone(), n, &args, None).await));
        }
        let keys: Vec<String> = (0..1000).map(|i| format!("read/{i:06}")).collect();
        for k in &keys {
            leader.put(k, &put.value_b64).await?;
        }
        let range = EtcdRange {
            etcd: leader,
            keys: Arc::new(keys),
        };
        for &n in &args.clients {
            etcd.reads.push((
                n,
                measure("range (linearizable)", range.clone(), n, &args, None).await,
            ));
        }
        let (w, r) = (
            Side::saturation(&etcd.writes) / 2.0,
            Side::saturation(&etcd.reads) / 2.0,
        );
        etcd.open_write = Some(measure("put", put, args.open_clients, &args, Some(w)).await);
        etcd.open_read = Some(
            measure(
                "range (linearizable)",
                range,
                args.open_clients,
                &args,
                Some(r),
            )
            .await,
        );
    }
    let write_rate = Side::saturation(&etcd.writes) / 2.0;
    let read_rate = Side::saturation(&etcd.reads) / 2.0;

    eprintln!("kura:");
    let mut kura = Side::default();
    let mut pays = Vec::new();
    {
        let (cafis, cardnet) = (AcquirerSim::start().await, AcquirerSim::start().await);
        let c = ProcCluster::start(&format!(
            "{}{}",
            acquirer_toml(&cafis, &cardnet, 2_000),
            crate::harness::BENCH_LIMITS
        ));
        c.init().await;
        c.wait_leader().await;
        let key = c.merchant("bench").await;
        let client = c.client(&[0, 1, 2], &key);
        let tokenize = KuraTokenize(client.clone());
        for &n in &args.clients {
            kura.writes.push((
                n,
                measure("tokenize", tokenize.clone(), n, &args, None).await,
            ));
        }
        let mut tokens = Vec::new();
        for i in 0..1000 {
            let t = client
                .tokenize(&crate::systems::tokenize_request(9_999, i))
                .await
                .map_err(|e| format!("preloading tokens: {e}"))?;
            tokens.push(t.token);
        }
        let read = KuraRead {
            client: client.clone(),
            tokens: Arc::new(tokens),
        };
        for &n in &args.clients {
            kura.reads.push((
                n,
                measure("token read (linearizable)", read.clone(), n, &args, None).await,
            ));
        }
        kura.open_write = Some(
            measure(
                "tokenize",
                tokenize,
                args.open_clients,
                &args,
                Some(write_rate),
            )
            .await,
        );
        kura.open_read = Some(
            measure(
                "token read (linearizable)",
                read,
                args.open_clients,
                &args,
                Some(read_rate),
            )
            .await,
        );
        let pay = KuraPay {
            client,
            run: format!("b{}", std::process::id()),
        };
        for n in [16, 64] {
            pays.push((
                n,
                measure("tokenize+auth+capture", pay.clone(), n, &args, None).await,
            ));
        }
    }

    let tls_cost = tls_cost(&args).await;
    let mut text = render(&args, &fsync, value_bytes, &etcd, &kura, &pays, dir.path());
    render_tls_cost(&mut text, &tls_cost);
    report::publish(&args.results, "vs-etcd", &text)
}

/// kura with TLS against the same build in its insecure mode: fresh clusters, the
/// lowest and highest client counts, the two modes alternating (TLS, insecure, TLS,
/// insecure) so that drift on the machine falls on both.
struct TlsCost {
    /// (round, clients, TLS, insecure)
    pairs: Vec<(u32, u32, Summary, Summary)>,
}

/// Rounds of the TLS-cost comparison.
const TLS_COST_ROUNDS: u32 = 2;

async fn tls_cost(args: &Args) -> TlsCost {
    let counts = [
        *args.clients.first().unwrap_or(&1),
        *args.clients.last().unwrap_or(&256),
    ];
    let mut pairs = Vec::new();
    for round in 1..=TLS_COST_ROUNDS {
        let mut tls = Vec::new();
        let mut plain = Vec::new();
        for insecure in [false, true] {
            let label = if insecure { "insecure" } else { "TLS" };
            eprintln!("kura {label} (TLS cost, round {round}):");
            let c = if insecure {
                ProcCluster::start_insecure(crate::harness::BENCH_LIMITS)
            } else {
                ProcCluster::start(crate::harness::BENCH_LIMITS)
            };
            c.init().await;
            c.wait_leader().await;
            let key = c.merchant("bench").await;
            let tokenize = KuraTokenize(c.client(&[0, 1, 2], &key));
            for n in counts {
                let s = measure("tokenize", tokenize.clone(), n, args, None).await;
                if insecure {
                    plain.push(s);
                } else {
                    tls.push(s);
                }
            }
        }
        for ((n, t), p) in counts.iter().zip(tls).zip(plain) {
            pairs.push((round, *n, t, p));
        }
    }
    TlsCost { pairs }
}

fn render_tls_cost(t: &mut String, cost: &TlsCost) {
    let _ = writeln!(
        t,
        "\n## What TLS costs kura (fresh clusters, TLS and insecure alternating)\n\n| round | clients | TLS ops/s | insecure ops/s | TLS/insecure | TLS p99 ms | insecure p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (round, n, tls, plain) in &cost.pairs {
        let _ = writeln!(
            t,
            "| {round} | {n} | {:.0} | {:.0} | {} | {:.2} | {:.2} |",
            tls.throughput(),
            plain.throughput(),
            ratio(tls.throughput(), plain.throughput()),
            tls.ms(0.99),
            plain.ms(0.99)
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
}

fn render(
    args: &Args,
    fsync: &report::Fsync,
    value_bytes: usize,
    etcd: &Side,
    kura: &Side,
    pays: &[(u32, Summary)],
    dir: &std::path::Path,
) -> String {
    let mut t = report::header("kura vs etcd", dir);
    let _ = writeln!(
        t,
        "- etcd: {}, three members on loopback, defaults (fsync on), TLS on client and peer links with client certificates required (`--client-cert-auth`, `--peer-client-cert-auth`); kura: three nodes on loopback, release build, defaults (fsync on), TLS 1.3 on every plane (mutual on the peer plane).\n\
         - Both driven by `kura-bench` with one harness and one HTTP/1.1 client pool, talking to the leader (kura's SDK follows the leader; etcd's leader member is looked up first). Each cell: {:.0} s warm-up, then {:.0} s measured.\n\
         - kura writes tokenize a card on file ({value_bytes}-byte JSON body); etcd writes `put` a {value_bytes}-byte value through the JSON gateway. Reads: kura token metadata, etcd `range`, both linearizable.\n\
         - {}\n",
        EtcdCluster::version(),
        args.warmup.as_secs_f64(),
        args.measure.as_secs_f64(),
        fsync.line()
    );
    for (title, k, e) in [
        ("Write throughput (closed loop)", &kura.writes, &etcd.writes),
        (
            "Linearizable read throughput (closed loop)",
            &kura.reads,
            &etcd.reads,
        ),
    ] {
        let _ = writeln!(
            t,
            "## {title}\n\n| clients | kura ops/s | etcd ops/s | kura/etcd | kura p99 ms | etcd p99 ms | errors kura/etcd |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        for ((n, ks), (_, es)) in k.iter().zip(e) {
            let _ = writeln!(
                t,
                "| {n} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {}/{} |",
                ks.throughput(),
                es.throughput(),
                ratio(ks.throughput(), es.throughput()),
                ks.ms(0.99),
                es.ms(0.99),
                ks.errors,
                es.errors
            );
        }
        t.push('\n');
    }
    let _ = writeln!(
        t,
        "## Latency at 50% of etcd's saturation (open loop, {} connections, no coordinated omission)\n\n| workload | offered/s | system | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---|---:|---:|---:|---:|---:|",
        args.open_clients
    );
    let rows = [
        (
            "write",
            Side::saturation(&etcd.writes) / 2.0,
            &kura.open_write,
            &etcd.open_write,
        ),
        (
            "read",
            Side::saturation(&etcd.reads) / 2.0,
            &kura.open_read,
            &etcd.open_read,
        ),
    ];
    for (w, rate, k, e) in &rows {
        for (name, s) in [("kura", k), ("etcd", e)] {
            if let Some(s) = s {
                let _ = writeln!(
                    t,
                    "| {w} | {rate:.0} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    s.throughput(),
                    s.ms(0.5),
                    s.ms(0.99),
                    s.ms(0.999),
                    s.max_ms()
                );
            }
        }
        if let (Some(k), Some(e)) = (k, e) {
            let _ = writeln!(
                t,
                "| {w} | | **kura/etcd** | | {} | {} | {} | |",
                ratio(k.ms(0.5), e.ms(0.5)),
                ratio(k.ms(0.99), e.ms(0.99)),
                ratio(k.ms(0.999), e.ms(0.999))
            );
        }
    }
    let _ = writeln!(
        t,
        "\n## Payments (kura only: tokenize, authorise through the acquirer simulator, capture)\n\n| clients | flows/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---:|---:|---:|---:|---:|---:|"
    );
    for (n, s) in pays {
        let _ = writeln!(
            t,
            "| {n} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            s.throughput(),
            s.ms(0.5),
            s.ms(0.99),
            s.ms(0.999),
            s.errors
        );
    }
    let at = |runs: &[(u32, Summary)], n: u32| {
        runs.iter()
            .find(|(c, _)| *c == n)
            .map_or(0.0, |(_, s)| s.throughput())
    };
    let (lo, hi) = (
        *args.clients.first().unwrap_or(&1),
        *args.clients.last().unwrap_or(&256),
    );
    let w_hi = at(&kura.writes, hi) / at(&etcd.writes, hi).max(1e-9);
    let w_lo = at(&kura.writes, lo) / at(&etcd.writes, lo).max(1e-9);
    let p99 = match (&kura.open_write, &etcd.open_write) {
        (Some(k), Some(e)) => k.ms(0.99) / e.ms(0.99).max(1e-9),
        _ => f64::NAN,
    };
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        t,
        "\n## Targets\n\n| target | measured | |\n|---|---:|---|\n\
         | write throughput at {hi} clients ≥ 1.5× etcd | {w_hi:.2}× | {} |\n\
         | write throughput at {lo} client ≥ 1.0× etcd | {w_lo:.2}× | {} |\n\
         | write p99 ≤ 0.7× etcd's at the same offered load | {p99:.2}× | {} |",
        verdict(w_hi >= 1.5),
        verdict(w_lo >= 1.0),
        verdict(p99 <= 0.7)
    );
    t
}
