//! kura-bench: drives a kura cluster with concurrent closed-loop clients and reports
//! throughput and latency percentiles (HDR histograms).
//!
//! Example, against `kura up`:
//! `kura-bench tokenize --key sk_... --clients 16 --duration-s 10`

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use kura_sdk::{CardInput, Client, ClientConfig, TokenizeRequest};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "kura-bench", about = "Load generator for kura")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed loop: each client tokenizes a card-on-file card, waits for the answer, repeats.
    Tokenize {
        /// API addresses, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
        )]
        endpoints: Vec<String>,
        /// A merchant secret key.
        #[arg(long)]
        key: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: u32,
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
    },
}

struct Outcome {
    latencies_us: Histogram<u64>,
    errors: u64,
}

async fn client_loop(client: Client, id: u32, until: Instant) -> Outcome {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    let mut i = 0u64;
    while Instant::now() < until {
        let req = TokenizeRequest {
            card: CardInput {
                number: "4242424242424242".into(),
                exp_month: 12,
                exp_year: 2035,
                cvc: None,
            },
            kind: "card_on_file".into(),
            member_id: Some(format!("bench-{id}-{i}")),
        };
        let started = Instant::now();
        match client.tokenize(&req).await {
            Ok(_) => h
                .record(started.elapsed().as_micros().max(1) as u64)
                .expect("latency within bounds"),
            Err(_) => errors += 1,
        }
        i += 1;
    }
    Outcome {
        latencies_us: h,
        errors,
    }
}

#[tokio::main]
async fn main() {
    let Cmd::Tokenize {
        endpoints,
        key,
        clients,
        duration_s,
    } = Cli::parse().cmd;
    let until = Instant::now() + Duration::from_secs(duration_s);
    let client = Client::new(ClientConfig::new(endpoints, key));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client_loop(client.clone(), id, until)))
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        let o = t.await.expect("client task");
        all.add(&o.latencies_us).expect("same bounds");
        errors += o.errors;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "tokenize, {clients} clients, {secs:.1} s: {} ok, {errors} errors",
        all.len()
    );
    println!("throughput {:.0} req/s", all.len() as f64 / secs);
    println!(
        "latency ms  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        all.max() as f64 / 1000.0
    );
}
