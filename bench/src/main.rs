//! kura-bench: load generator and benchmark reports for kura (and etcd, for comparison).
//! `scripts/bench <command>` builds everything in release and runs it; see
//! `kura-bench --help`.

mod failover;
mod harness;
mod report;
mod scale;
mod skeleton;
mod systems;
mod timeline;
mod vs_etcd;
mod wrk;

use clap::{Parser, Subcommand, ValueEnum};
use harness::Plan;
use kura_sdk::{Client, ClientConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kura-bench", about = "Load generator and benchmarks for kura")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// kura and etcd on this machine: closed-loop throughput at each client count (wrk,
    /// the two interleaved pair by pair), open-loop latency at 50% of etcd's
    /// saturation, payments, the fsync floor, what TLS costs and what the disk adds at
    /// one client; writes a Markdown report.
    VsEtcd {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<u32>,
        #[arg(long, default_value_t = 2)]
        warmup_s: u64,
        #[arg(long, default_value_t = 8)]
        measure_s: u64,
        /// Connections of the open-loop (fixed-rate) runs.
        #[arg(long, default_value_t = 64)]
        open_clients: u32,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// Failover under a steady write load: SIGKILL the leader, stall its storage, drain
    /// it, ROUNDS times each; client-observed write gaps, and no acknowledged write lost.
    Failover {
        #[arg(long, default_value_t = 30)]
        rounds: u32,
        #[arg(long, default_value_t = 16)]
        writers: u32,
        /// Pause of each writer between writes.
        #[arg(long, default_value_t = 10)]
        think_ms: u64,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// Load TOKENS cards on file; database size and memory per node, tokenize latency
    /// against the empty vault, a comparison of the members' vaults (with tokenize
    /// latency while they hash), and a wiped follower's catch-up by snapshot.
    Scale {
        #[arg(long, default_value_t = 1_000_000)]
        tokens: u64,
        #[arg(long, default_value_t = 64)]
        clients: u32,
        /// Open-loop rate of the latency probes.
        #[arg(long, default_value_t = 500.0)]
        probe_rate: f64,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// Load against a running cluster (for example `kura up`).
    Load {
        #[arg(value_enum)]
        workload: Workload,
        /// API addresses, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
        )]
        endpoints: Vec<String>,
        /// A merchant secret key.
        #[arg(long, env = "KURA_BENCH_KEY")]
        key: String,
        #[arg(long, default_value_t = 16)]
        clients: u32,
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Open loop at this many requests per second (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// The cluster's CA certificate (default: `kura up`'s, kura-data/ca/ca.crt).
        #[arg(
            long,
            default_value = "kura-data/ca/ca.crt",
            conflicts_with = "insecure"
        )]
        ca_file: PathBuf,
        /// Plain HTTP, for a cluster in the insecure mode (`kura up --insecure`).
        #[arg(long)]
        insecure: bool,
        /// Also print the run second by second (requests started, p50, p99).
        #[arg(long)]
        timeline: bool,
    },
    /// The fsync latency of the disk holding DIR and the replication skeleton writing
    /// there: the floors of one durable write and of one replicated durable write.
    Fsync {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Where one write's time goes: one client (wrk) against a fresh cluster whose nodes
    /// record marks along each write's path, lined up step by step across the nodes.
    /// KURA_BIN must be built with kura-node's `timeline` feature (`scripts/bench
    /// timeline` builds one); writes a Markdown report.
    Timeline {
        #[arg(long, default_value_t = 2)]
        warmup_s: u64,
        #[arg(long, default_value_t = 8)]
        measure_s: u64,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// One role of the replication skeleton, in its own process (`vs-etcd` starts them).
    #[command(hide = true)]
    Skeleton {
        /// `follower` (ARG: its file) or `leader` (ARG: the followers' addresses).
        role: String,
        arg: String,
        #[arg(long)]
        no_fsync: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// Tokenize a card on file.
    Tokenize,
    /// Tokenize, authorise, capture.
    Pay,
}

#[tokio::main]
async fn main() {
    let result = match Cli::parse().cmd {
        Cmd::VsEtcd {
            clients,
            warmup_s,
            measure_s,
            open_clients,
            results,
        } => {
            vs_etcd::run(vs_etcd::Args {
                clients,
                warmup: Duration::from_secs(warmup_s),
                measure: Duration::from_secs(measure_s),
                open_clients,
                results,
            })
            .await
        }
        Cmd::Failover {
            rounds,
            writers,
            think_ms,
            results,
        } => {
            failover::run(failover::Args {
                rounds,
                writers,
                think: Duration::from_millis(think_ms),
                results,
            })
            .await
        }
        Cmd::Scale {
            tokens,
            clients,
            probe_rate,
            results,
        } => {
            scale::run(scale::Args {
                tokens,
                clients,
                probe_rate,
                results,
            })
            .await
        }
        Cmd::Load {
            workload,
            endpoints,
            key,
            clients,
            duration_s,
            rate,
            ca_file,
            insecure,
            timeline,
        } => {
            let cfg = ClientConfig::new(endpoints, key);
            let cfg = if insecure {
                Ok(cfg)
            } else {
                cfg.with_ca_file(&ca_file).map_err(|e| e.0)
            };
            match cfg {
                Ok(cfg) => {
                    load(
                        Client::new(cfg),
                        workload,
                        clients,
                        duration_s,
                        rate,
                        timeline,
                    )
                    .await
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Timeline {
            warmup_s,
            measure_s,
            results,
        } => {
            timeline::run(timeline::Args {
                warmup: Duration::from_secs(warmup_s),
                measure: Duration::from_secs(measure_s),
                results,
            })
            .await
        }
        Cmd::Skeleton {
            role,
            arg,
            no_fsync,
        } => skeleton::serve(&role, &arg, no_fsync),
        Cmd::Fsync { dir } => report::fsync_floor(&dir)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                println!("{}", f.line());
                skeleton::measure(&dir).map(|s| println!("{}", s.line()))
            }),
    };
    if let Err(e) = result {
        eprintln!("kura-bench: {e}");
        std::process::exit(1);
    }
}

/// `kura-bench load`: one workload against a running cluster.
async fn load(
    client: Client,
    workload: Workload,
    clients: u32,
    duration_s: u64,
    rate: Option<f64>,
    timeline: bool,
) -> Result<(), String> {
    let plan = Plan {
        clients,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(duration_s),
        rate,
    };
    let s = match workload {
        Workload::Tokenize => harness::run(systems::KuraTokenize(client), plan).await,
        Workload::Pay => {
            let run = format!("load{}p", std::process::id());
            harness::run(systems::KuraPay { client, run }, plan).await
        }
    };
    println!("{}", s.line());
    if timeline {
        print!("{}", s.timeline());
    }
    Ok(())
}
