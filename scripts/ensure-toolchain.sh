#!/usr/bin/env bash
# Installs the toolchain pinned in rust-toolchain.toml when it is missing. rustup usually does this
# on first use, but not where RUSTUP_AUTO_INSTALL=0 (as on the CI machines).
set -euo pipefail
cd "$(dirname "$0")/.."
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^$channel"; then
  rustup toolchain install "$channel" --profile minimal -c rustfmt -c clippy
fi
