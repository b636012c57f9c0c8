#!/usr/bin/env bash
# The whole test suite on a fresh machine. Starts (installing if needed) PostgreSQL; the
# end-to-end tests start a real Synapse on loopback themselves through scripts/synapse.sh.
# Every suite runs against SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-postgres.sh
# Tests create a fresh database per test on this server.
export DAARION_TEST_PG_URL="${DAARION_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

cargo test --all-targets "$@"
