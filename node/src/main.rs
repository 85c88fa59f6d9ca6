//! The `kura` binary.

use clap::Parser;
use kura_node::cli::{self, Cli, Cmd};
use kura_node::config::{LogFormat, NodeConfig};
use kura_node::crypto::Entropy;
use kura_node::runtime::Rt;
use std::process::ExitCode;

/// mimalloc rather than glibc's allocator: under a 256-client write load glibc's malloc
/// and free took about 17% of the leader's CPU (`perf`), and mimalloc raised that
/// load's throughput by about 15% (docs/decisions/0005-mimalloc.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on its
/// arenas, and a fault on one zeroes 2 MiB at once: at 64 clients' payments those
/// faults took about 4% of the nodes' CPU, and the thread that met one waited while
/// the rest of the write path queued behind it. Without them, payments' p99 fell from
/// 63–78 ms to 47–54 ms in interleaved runs (docs/decisions/0021). Best effort: a
/// kernel without the switch keeps its default.
fn no_transparent_huge_pages() {
    // SAFETY: a plain system call on this process with valid arguments.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run_node(
    config: std::path::PathBuf,
    log_format: Option<LogFormat>,
    enable_fault_injection: bool,
    timeline: Option<std::path::PathBuf>,
) -> Result<(), String> {
    no_transparent_huge_pages();
    kura_node::files::harden_process()?;
    let cfg = NodeConfig::load(&config).map_err(|e| e.to_string())?;
    if let Some(dir) = timeline {
        kura_node::timeline::start(&dir, cfg.node_id)
            .map_err(|e| format!("--timeline {}: {e}", dir.display()))?;
    }
    init_logging(log_format.unwrap_or(cfg.log.format), &cfg.log.level);
    let mut env = kura_node::node::production_env(&cfg).map_err(|e| e.to_string())?;
    env.fault_injection = enable_fault_injection;
    // Each node draws its Raft randomness from the OS: equal seeds would split votes forever.
    let seed = Entropy::Os.u64();
    Rt::scope(seed, async move {
        let node = kura_node::node::start(&cfg, env)
            .await
            .map_err(|e| e.to_string())?;
        tokio::select! {
            () = shutdown_signal() => {}
            why = node.cluster.stopped() => {
                // Crash-only: what is durable is the log and the vault's last durable
                // commit, and a start replays the one over the other. Exiting at once,
                // rather than shutting down, also leaves no task waiting on the storage
                // that failed.
                tracing::error!(
                    "this node stops: {why}. Start it again (once its storage is sound, if storage failed: free space, a healthy disk); it replays its log and catches up. The other nodes go on without it"
                );
                std::process::exit(kura_node::node::EXIT_STORAGE_FAILED);
            }
        }
        tracing::info!("shutting down");
        node.cluster.shutdown().await;
        Ok(())
    })
    .await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let rt = builder.build().expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Node {
                config,
                log_format,
                enable_fault_injection,
                timeline,
            } => run_node(config, log_format, enable_fault_injection, timeline).await,
            Cmd::Init { config } => cli::init(&config).await,
            Cmd::Status {
                config,
                endpoints,
                ca_file,
                output,
                json,
            } => match cli::status(
                config.as_deref(),
                endpoints,
                ca_file.as_deref(),
                json || output == cli::Output::Json,
            )
            .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err("no leader found".into()),
                Err(e) => Err(e),
            },
            Cmd::Up {
                data_dir,
                base_port,
                insecure,
            } => kura_node::cli::up::up(&data_dir, base_port, insecure).await,
            Cmd::Merchant { config, cmd } => cli::merchant(&config, cmd).await,
            Cmd::Keys { config, cmd } => cli::keys(&config, cmd).await,
            Cmd::Drain { name, config } => cli::drain(&config, &name, true).await,
            Cmd::Leader { config, cmd } => cli::leader(&config, cmd).await,
            Cmd::Member { config, cmd } => cli::member::run(&config, cmd).await,
            Cmd::Snapshot { cmd } => match cli::snapshot::run(cmd).await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the backup failed its checks".into()),
                Err(e) => Err(e),
            },
            Cmd::ForceNewCluster { config } => cli::snapshot::force_new_cluster(&config).await,
            Cmd::AcquirerSim {
                listen,
                cert_file,
                key_file,
                insecure,
            } => {
                init_logging(LogFormat::Text, "info");
                if insecure && !kura_node::config::is_loopback(&listen) {
                    return Err(format!(
                        "--insecure allows a loopback address only, not {listen}"
                    ));
                }
                let tls = cert_file.as_deref().zip(key_file.as_deref());
                // Connections are spawned through the Raft runtime, which wants a seed.
                let seed = Entropy::Os.u64();
                Rt::scope(seed, kura_node::acquirer::sim::run(&listen, tls))
                    .await
                    .map_err(|e| format!("acquirer simulator on {listen}: {e}"))
            }
            Cmd::Undrain { name, config } => cli::drain(&config, &name, false).await,
            Cmd::Scrub { name, config } => cli::scrub(&config, name.as_deref()).await,
            Cmd::Compare { config } => cli::compare(&config).await,
            Cmd::Certs { cmd } => kura_node::cli::certs::run(cmd).map_err(|e| e.to_string()),
            Cmd::Audit { cmd } => match cli::audit(cmd).await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the audit trail does not verify".into()),
                Err(e) => Err(e),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kura: {e}");
            ExitCode::FAILURE
        }
    }
}
