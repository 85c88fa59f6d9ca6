# Developer and operator entry points. `just` is optional: every recipe is one
# plain command you can run without it.

# Start a local three-node cluster (main, dr, bk) on loopback.
up:
    cargo run --release --bin kura -- up

# The whole test suite (what CI runs).
test:
    ./scripts/test

# Only the turmoil simulations.
sim:
    RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target-sim cargo test -p kura-cluster-tests --features sim --test sim_smoke -- --nocapture

# Cluster status of the local cluster.
status:
    cargo run --release --bin kura -- status
