#!/usr/bin/env bash
# Makes sure a NATS server with JetStream answers on 127.0.0.1:4222 (for trying the events
# publisher locally), and that the `nats-server` binary the event tests start their own servers
# from is installed. Installs the Debian package `nats-server` when missing; starts a server in
# the background (store under target/nats) when none answers. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

answers() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

bin=$(command -v nats-server || true)
[ -z "$bin" ] && [ -x /usr/sbin/nats-server ] && bin=/usr/sbin/nats-server
if [ -z "$bin" ]; then
  echo "installing nats-server (Debian package)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
fi
echo "nats-server: $bin ($("$bin" --version 2>/dev/null || true))"

if answers; then
  echo "nats ready: nats://127.0.0.1:4222"
  exit 0
fi
mkdir -p target/nats
nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$PWD/target/nats" >target/nats/server.log 2>&1 &
for _ in $(seq 1 50); do
  if answers; then
    echo "nats ready: nats://127.0.0.1:4222 (JetStream store target/nats)"
    exit 0
  fi
  sleep 0.2
done
echo "nats-server did not start; see target/nats/server.log" >&2
exit 1
