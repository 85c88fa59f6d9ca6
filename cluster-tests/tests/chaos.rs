//! The chaos sweep: many seeds of [`kura_cluster_tests::chaos`], each in its own child
//! process (a fresh process per seed is what makes a failing seed replay exactly), a
//! few of them twice to prove that a seed replays byte for byte.
//!
//! ```text
//! chaos                      # CI: replay check, then KURA_CHAOS_SEEDS (500) seeds
//! chaos --seeds N [--from S] [--jobs J] [--unsafe-no-fsync]
//! chaos --seed S [--trace]   # one seed, in this process, with its report
//! ```

use kura_cluster_tests::chaos::{self, Fault, Params, Report};
use serde_json::{json, Value};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

struct Opts {
    seeds: u64,
    from: u64,
    jobs: u64,
    unsafe_no_fsync: bool,
    replay_check: u64,
}

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn params(seed: u64, unsafe_no_fsync: bool) -> Params {
    let mut p = Params::from_seed(seed);
    p.unsafe_no_fsync = unsafe_no_fsync;
    p
}

/// Runs one seed here and prints its result as one JSON line (the child's side).
fn child(seed: u64, unsafe_no_fsync: bool) -> ExitCode {
    let r = chaos::run(params(seed, unsafe_no_fsync));
    // Machines replaced, and how many of those replacements a node crash interrupted.
    let replaced: Vec<_> = r
        .replacements
        .iter()
        .filter_map(|x| Some((x.asked_ms, x.promoted_ms?)))
        .collect();
    let through_crash = replaced
        .iter()
        .filter(|(from, to)| {
            r.fired.iter().any(|(at, f, _)| {
                (from..=to).contains(&at)
                    && matches!(
                        f,
                        Fault::Crash { .. } | Fault::CrashTwo { .. } | Fault::PowerLoss { .. }
                    )
            })
        })
        .count();
    let line = json!({
        "seed": seed,
        "hash": r.trace_hash,
        "violations": r.violations.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "failure": if r.violations.is_empty() { String::new() } else { r.describe_failure() },
        "failover_ms": r.failover_ms,
        "ops": r.ops,
        "sim_ms": r.sim_ms,
        "replaced": replaced.len(),
        "replaced_through_crash": through_crash,
        "log_unsynced_at_crash": r.log_unsynced_at_crash,
        "log_torn_at_crash": r.log_torn_at_crash,
        "db_unsynced_at_crash": r.db_unsynced_at_crash,
        "db_mixed_at_crash": r.db_mixed_at_crash,
        "cuts_in_metadata_sync": r.cuts_in_metadata_sync,
        "cuts_in_vault_sync": r.cuts_in_vault_sync,
        "compares_agreed": r.compares_agreed,
        "compares_incomplete": r.compares_incomplete,
    });
    println!("RESULT {line}");
    ExitCode::SUCCESS
}

/// Runs `seed` in a child process and returns its result line.
fn spawn(seed: u64, unsafe_no_fsync: bool) -> Value {
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.args(["--child", &seed.to_string()])
        .env_remove("RUST_LOG");
    if unsafe_no_fsync {
        cmd.arg("--unsafe-no-fsync");
    }
    let failed = |why: String| {
        json!({"seed": seed, "hash": "", "violations": [why.clone()],
               "failure": format!("seed {seed}: {why}\nreplay: {}",
                                  chaos::replay_command(seed, unsafe_no_fsync)),
               "failover_ms": [], "ops": 0, "sim_ms": 0})
    };
    let started = Instant::now();
    let mut result = match cmd.output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(15).collect();
                failed(format!(
                    "the run crashed ({}): {}",
                    out.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ))
            }),
        Err(e) => failed(format!("could not start the run: {e}")),
    };
    result["wall_ms"] = json!(started.elapsed().as_millis() as u64);
    result
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn failover_line(gaps: &[u64]) -> String {
    let mut s = gaps.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return "no leader crashes yet".into();
    }
    format!(
        "leader crash -> first acknowledged write: p50 {} ms, p99 {} ms, max {} ms ({} crashes)",
        percentile(&s, 0.50),
        percentile(&s, 0.99),
        s[s.len() - 1],
        s.len()
    )
}

/// Runs the first `n` seeds twice each in fresh processes and compares trace hashes.
fn replay_check(opts: &Opts) -> bool {
    let mut ok = true;
    for seed in opts.from..opts.from + opts.replay_check {
        let (a, b) = (
            spawn(seed, opts.unsafe_no_fsync),
            spawn(seed, opts.unsafe_no_fsync),
        );
        let same = a["hash"] == b["hash"] && a["hash"] != "";
        println!(
            "replay seed {seed}: {} {}",
            a["hash"].as_str().unwrap_or("-"),
            if same {
                "== (replays byte for byte)"
            } else {
                "!= DIFFERENT"
            }
        );
        ok &= same;
    }
    ok
}

fn sweep(opts: &Opts) -> bool {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(opts.from));
    let end = opts.from + opts.seeds;
    let (tx, rx) = mpsc::channel::<Value>();
    let workers: Vec<_> = (0..opts.jobs)
        .map(|_| {
            let (next, tx, fsync_off) = (next.clone(), tx.clone(), opts.unsafe_no_fsync);
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end || tx.send(spawn(seed, fsync_off)).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    let (mut done, mut gaps, mut failures, mut ops) = (0u64, Vec::new(), Vec::new(), 0u64);
    let (mut replaced, mut through_crash) = (0u64, 0u64);
    let (mut unsynced_at_crash, mut torn_at_crash) = (0u64, 0u64);
    let (mut db_unsynced_at_crash, mut db_mixed_at_crash) = (0u64, 0u64);
    let (mut cuts_in_metadata_sync, mut cuts_in_vault_sync) = (0u64, 0u64);
    let (mut agreed, mut incomplete) = (0u64, 0u64);
    let mut slowest: Vec<(u64, u64)> = Vec::new();
    // (wall ms, seed, simulated ms): what the sweep's time goes to.
    let mut longest: Vec<(u64, u64, u64)> = Vec::new();
    let mut last_print = Instant::now();
    for r in rx {
        done += 1;
        longest.push((
            r["wall_ms"].as_u64().unwrap_or(0),
            r["seed"].as_u64().unwrap_or(0),
            r["sim_ms"].as_u64().unwrap_or(0),
        ));
        ops += r["ops"].as_u64().unwrap_or(0);
        replaced += r["replaced"].as_u64().unwrap_or(0);
        through_crash += r["replaced_through_crash"].as_u64().unwrap_or(0);
        unsynced_at_crash += r["log_unsynced_at_crash"].as_u64().unwrap_or(0);
        torn_at_crash += r["log_torn_at_crash"].as_u64().unwrap_or(0);
        db_unsynced_at_crash += r["db_unsynced_at_crash"].as_u64().unwrap_or(0);
        db_mixed_at_crash += r["db_mixed_at_crash"].as_u64().unwrap_or(0);
        cuts_in_metadata_sync += r["cuts_in_metadata_sync"].as_u64().unwrap_or(0);
        cuts_in_vault_sync += r["cuts_in_vault_sync"].as_u64().unwrap_or(0);
        agreed += r["compares_agreed"].as_u64().unwrap_or(0);
        incomplete += r["compares_incomplete"].as_u64().unwrap_or(0);
        let seed = r["seed"].as_u64().unwrap_or(0);
        for g in r["failover_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
        {
            gaps.push(g);
            slowest.push((g, seed));
        }
        if r["violations"].as_array().is_some_and(|v| !v.is_empty()) {
            eprintln!("\n{}\n", r["failure"].as_str().unwrap_or_default());
            failures.push(r["seed"].as_u64().unwrap_or(0));
        }
        if done == opts.seeds || done % 25 == 0 || last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            println!(
                "chaos: {done}/{} seeds, {} with violations, {ops} client operations, {:.1} s/seed; {}",
                opts.seeds,
                failures.len(),
                started.elapsed().as_secs_f64() * opts.jobs as f64 / done as f64,
                failover_line(&gaps)
            );
        }
    }
    for w in workers {
        let _ = w.join();
    }
    failures.sort_unstable();
    println!(
        "\nchaos sweep: seeds {}..{} ({} seeds) in {:.0} s on {} jobs, {} with violations{}",
        opts.from,
        end - 1,
        opts.seeds,
        started.elapsed().as_secs_f64(),
        opts.jobs,
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(": {failures:?}")
        }
    );
    println!("{}", failover_line(&gaps));
    println!(
        "membership: {replaced} machines replaced (remove, new machine, add, promote), \
         {through_crash} of them while a node crashed"
    );
    println!(
        "power cuts: {unsynced_at_crash} found log writes not yet synced, {torn_at_crash} left \
         one in part (a record the next open had to judge: cut, not refused); \
         {cuts_in_vault_sync} came during a durable commit of the vault and \
         {cuts_in_metadata_sync} during a save of a node's metadata, {db_unsynced_at_crash} found \
         database writes not yet synced, {db_mixed_at_crash} left a database file with some \
         of its changed sectors on the disk and some not"
    );
    println!(
        "vault comparisons: {agreed} agreed, {incomplete} incomplete (a member not heard); \
         one that finds the vaults different is a violation"
    );
    longest.sort_unstable_by(|a, b| b.cmp(a));
    let mut walls: Vec<u64> = longest.iter().map(|l| l.0).collect();
    walls.sort_unstable();
    println!(
        "seconds per seed: p50 {:.1}, p90 {:.1}, max {:.1}; longest: {}",
        percentile(&walls, 0.5) as f64 / 1e3,
        percentile(&walls, 0.9) as f64 / 1e3,
        walls.last().copied().unwrap_or(0) as f64 / 1e3,
        longest
            .iter()
            .take(5)
            .map(|(w, s, sim)| format!(
                "seed {s} {:.1} s ({} s simulated)",
                *w as f64 / 1e3,
                sim / 1000
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    if !slowest.is_empty() {
        println!(
            "slowest failovers (replay to see why): {}",
            slowest
                .iter()
                .take(5)
                .map(|(g, s)| format!("seed {s} {g} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    failures.is_empty()
}

fn single(seed: u64, unsafe_no_fsync: bool, show_trace: bool) -> ExitCode {
    // The nodes' own logs, when asked for (`RUST_LOG=warn scripts/chaos replay S`).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let r: Report = chaos::run(params(seed, unsafe_no_fsync));
    if show_trace {
        for line in &r.trace {
            println!("{line}");
        }
    }
    println!(
        "seed {seed}: {} operations ({} acknowledged writes), {} ms simulated, trace {}",
        r.ops, r.acked_writes, r.sim_ms, r.trace_hash
    );
    println!(
        "power cuts: {} found log writes not yet synced, {} left one in part; {} came during \
         a durable commit of the vault and {} during a save of a node's metadata, {} found \
         database writes not yet synced, {} left a database file mixed",
        r.log_unsynced_at_crash,
        r.log_torn_at_crash,
        r.cuts_in_vault_sync,
        r.cuts_in_metadata_sync,
        r.db_unsynced_at_crash,
        r.db_mixed_at_crash
    );
    println!(
        "vault comparisons: {} agreed, {} incomplete",
        r.compares_agreed, r.compares_incomplete
    );
    println!("fault schedule:\n{}", r.params.describe_schedule());
    println!("{}", failover_line(&r.failover_ms));
    for x in &r.replacements {
        println!(
            "replaced {} (node {} -> node {}): asked at {} ms, removed at {:?} ms, promoted at {:?} ms",
            chaos::NODES[(x.slot - 1) as usize],
            x.old_id,
            x.new_id,
            x.asked_ms,
            x.removed_ms,
            x.promoted_ms
        );
    }
    if let Some(f) = &r.final_leadership {
        println!(
            "at the end: node {} leads term {} (since {} ms); leader changes recorded per node: {:?}",
            f.leader, f.term, f.since_ms, f.recorded
        );
    }
    if r.violations.is_empty() {
        println!("no violations");
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", r.describe_failure());
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unsafe_no_fsync = args.iter().any(|a| a == "--unsafe-no-fsync");
    if let Some(seed) = arg_value(&args, "--child") {
        return child(seed, unsafe_no_fsync);
    }
    if let Some(seed) = arg_value(&args, "--seed") {
        return single(seed, unsafe_no_fsync, args.iter().any(|a| a == "--trace"));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let opts = Opts {
        seeds: arg_value(&args, "--seeds")
            .or_else(|| env_u64("KURA_CHAOS_SEEDS"))
            .unwrap_or(500),
        from: arg_value(&args, "--from")
            .or_else(|| env_u64("KURA_CHAOS_FROM"))
            .unwrap_or(1),
        jobs: arg_value(&args, "--jobs")
            .or_else(|| env_u64("KURA_CHAOS_JOBS"))
            .unwrap_or(cores),
        unsafe_no_fsync,
        replay_check: arg_value(&args, "--replay-check").unwrap_or(3),
    };
    let replays = replay_check(&opts);
    let clean = sweep(&opts);
    if replays && clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
