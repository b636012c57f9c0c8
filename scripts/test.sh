#!/usr/bin/env bash
# The whole test suite on a fresh machine: starts (installing if needed) PostgreSQL and a real
# Synapse on loopback, then runs every test against SQLite, PostgreSQL and Synapse.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-postgres.sh
# Tests create a fresh database per test on this server.
export DAARION_TEST_PG_URL="${DAARION_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

# The end-to-end suite needs Synapse loaded with its fixed test registration.
cargo build --quiet --bin daarion-bridge
mkdir -p target/e2e
./target/debug/daarion-bridge -c tests/e2e/config.toml generate-registration -o target/e2e/registration.yaml >/dev/null
scripts/synapse.sh start --registration "$PWD/target/e2e/registration.yaml"
export DAARION_E2E_HOMESERVER="${DAARION_E2E_HOMESERVER:-http://127.0.0.1:8008}"

cargo test --all-targets "$@"
