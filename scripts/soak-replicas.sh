#!/usr/bin/env bash
# The fail-over soak of issue #27, by hand (not part of scripts/test.sh or CI): a real Synapse,
# two bridge replicas on one PostgreSQL database behind haproxy, realistic traffic for 10
# minutes (plaintext group rooms and DM, and an encrypted DM from a matrix-sdk client) with the
# leader killed (kill -9) every 2 minutes; prints fail-over times, events lost/doubled, answers
# doubled and the encrypted answers' trust (docs/performance.md, "Replicas: fail-over soak"), and writes
# them to target/e2e/soak-replicas.json. Arguments go to the driver (examples/soak_replicas.rs):
#
#   scripts/soak-replicas.sh [--minutes 10] [--kill-every 120] [--first-kill 60] [--seed 27]
#
# Synapse, PostgreSQL and the bridge port follow the e2e suite's variables (DAARION_SYNAPSE_PORT,
# DAARION_E2E_HOMESERVER, DAARION_E2E_BRIDGE_PORT, DAARION_TEST_PG_URL).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-postgres.sh
scripts/ensure-haproxy.sh
export DAARION_TEST_PG_URL="${DAARION_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

cargo build --bin daarion-bridge --example soak_replicas
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export DAARION_BRIDGE_BIN="$target_dir/debug/daarion-bridge"
# Dana's E2EE client (matrix-sdk), built apart as scripts/test.sh does.
CARGO_TARGET_DIR="$PWD/target/e2ee-client" cargo build --locked --manifest-path tests/e2ee-client/Cargo.toml
export DAARION_E2EE_CLIENT="${DAARION_E2EE_CLIENT:-$PWD/target/e2ee-client/debug/e2ee-client}"

# The driver starts Synapse (scripts/synapse.sh) through the e2e harness; stop it at the end.
trap 'scripts/synapse.sh stop >/dev/null 2>&1 || true' EXIT
"$target_dir/debug/examples/soak_replicas" "$@"
