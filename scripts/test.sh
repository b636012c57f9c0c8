#!/usr/bin/env bash
# The whole test suite on a fresh machine. Starts (installing if needed) PostgreSQL and NATS; the
# end-to-end tests start a real Synapse on loopback themselves through scripts/synapse.sh.
# Every suite runs against SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-toolchain.sh
scripts/ensure-postgres.sh
# Tests create a fresh database per test on this server.
export DAARION_TEST_PG_URL="${DAARION_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

# Drop the throwaway databases earlier runs left behind (each test makes its own).
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "select datname from pg_database where datname ~ '^daarion_(test|e2e|bench)_'" |
  while read -r db; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$db\" with (force)" >/dev/null
  done

# The event tests start their own NATS servers (JetStream) from the nats-server binary.
scripts/ensure-nats.sh

# The replica e2e tests run two bridge processes behind their own haproxy (Debian package).
scripts/ensure-haproxy.sh

# The E2EE client of the encryption e2e tests (matrix-sdk; a crate of its own, see its Cargo.toml).
CARGO_TARGET_DIR="$PWD/target/e2ee-client" cargo build --locked --manifest-path tests/e2ee-client/Cargo.toml
export DAARION_E2EE_CLIENT="$PWD/target/e2ee-client/debug/e2ee-client"

# The e2e tests start Synapse (scripts/synapse.sh) and leave it up for each other; it is
# stopped when the suite ends, so no homeserver outlives the run that started it.
trap 'scripts/synapse.sh stop >/dev/null 2>&1 || true' EXIT

# The nats runtime tests run the example worker (examples/nats_worker.rs) as real processes;
# built with the tests, so that it shares their dependencies' features (and build).
cargo build --tests --examples
export DAARION_NATS_WORKER="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/nats_worker"

# Benches are built by clippy --all-targets in CI and run on purpose (cargo bench), not here.
cargo test --lib --bins --tests "$@"
