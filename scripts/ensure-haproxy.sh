#!/usr/bin/env bash
# Makes sure the `haproxy` binary that the replica e2e tests and the fail-over soak start their
# own load balancers from is installed: the Debian package `haproxy`, with sudo only when not
# root. Never starts the system service: each test runs its own haproxy, with its own config
# file, on a loopback port, and stops it. Idempotent.
set -euo pipefail

bin=$(command -v haproxy || true)
[ -z "$bin" ] && [ -x /usr/sbin/haproxy ] && bin=/usr/sbin/haproxy
if [ -z "$bin" ]; then
  echo "installing haproxy (Debian package)…"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # invoke-rc.d asks /usr/sbin/policy-rc.d whether the package may start its service; 101 says
  # no. Put one there for the install when the machine has none, and take it away after.
  policy=/usr/sbin/policy-rc.d
  added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    added=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq haproxy >/dev/null
  if [ -n "$added" ]; then $sudo rm -f "$policy"; fi
  bin=$(command -v haproxy || echo /usr/sbin/haproxy)
fi
echo "haproxy: $bin ($("$bin" -v 2>/dev/null | head -n 1 || true))"
