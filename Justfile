# Developer and operator entry points. `just` is optional (`cargo install just`):
# every recipe is one plain command you can run without it.

# Start a local three-node cluster (main, dr, bk) on loopback.
up:
    cargo run --release --bin kura -- up

# The whole test suite (what CI runs).
test:
    ./scripts/test

# The HTTP API against its own OpenAPI description (schemathesis), as the test command
# runs it; another seed explores more: just api-fuzz SEED=7
api-fuzz SEED="1":
    cargo build -p kura-node --bin kura && KURA_API_FUZZ_SEED={{SEED}} ./scripts/api-fuzz target/debug/kura

# The named fault scenarios of the turmoil simulation (each fault alone, and fsync off).
sim:
    RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target-sim cargo test --profile sim -p kura-cluster-tests --features sim --lib --test chaos_scenarios -- --nocapture

# The chaos sweep. `just chaos SEEDS=2000 FROM=1` (defaults 500 and 1), one process
# per seed on every core; prints progress (seeds done, violations, failover
# p50/p99/max) and every failing seed with its fault schedule and replay command.
# Add --unsafe-no-fsync to watch the oracle catch lost writes.
# Chaos sweep: just chaos SEEDS=N [FROM=S] [--unsafe-no-fsync]
chaos *ARGS:
    ./scripts/chaos {{ARGS}}

# Replay one chaos seed byte for byte, printing its trace: just chaos-replay 42
chaos-replay SEED *ARGS:
    ./scripts/chaos replay {{SEED}} {{ARGS}}

# kura against etcd 3.4 (installed from Debian when missing) on this machine: throughput
# at 1/16/64/256 clients (wrk), latency at 50% of etcd's saturation, payments, the fsync
# floor, what TLS costs and what the disk adds at one client. Writes
# bench/results/vs-etcd-<date>.md. About 20 minutes.
bench-vs-etcd *ARGS:
    ./scripts/bench vs-etcd {{ARGS}}

# Failover under a steady write load: 30 leader SIGKILLs, 30 stalled leader storages, 30
# drains; client-observed write gaps; every acknowledged write read back. About 6 minutes.
bench-failover *ARGS:
    ./scripts/bench failover {{ARGS}}

# One million cards on file: size and memory per node, tokenize latency full vs empty,
# a wiped follower's catch-up by snapshot.
bench-scale *ARGS:
    ./scripts/bench scale {{ARGS}}

# Where one write's time goes: one client against a cluster whose nodes mark each step of
# a write's path (a second kura built with the `timeline` feature, in target/timeline),
# lined up across the nodes. Writes bench/results/timeline-<date>.md.
bench-timeline *ARGS:
    ./scripts/bench timeline {{ARGS}}
