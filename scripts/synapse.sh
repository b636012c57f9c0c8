#!/usr/bin/env bash
# A throwaway real Synapse on loopback, for the end-to-end tests and a newcomer's try-out.
#
#   scripts/synapse.sh start [--registration PATH]...   install if needed, (re)start, wait until up
#   scripts/synapse.sh stop | status
#   scripts/synapse.sh register USER PASSWORD           create a local user, print its access token
#
# Environment: DAARION_SYNAPSE_VENV (default ~/.cache/daarion-bridge/synapse-venv),
# DAARION_SYNAPSE_DIR (default <repo>/target/synapse), DAARION_SYNAPSE_PORT (default 8008).
# Server name `localhost`; open registration without verification; rate limits raised for tests.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${DAARION_SYNAPSE_VENV:-$HOME/.cache/daarion-bridge/synapse-venv}
dir=${DAARION_SYNAPSE_DIR:-$repo/target/synapse}
port=${DAARION_SYNAPSE_PORT:-8008}
url="http://127.0.0.1:$port"
pidfile="$dir/homeserver.pid"

log() { echo "synapse.sh: $*" >&2; }

up() { curl -sf -o /dev/null --max-time 2 "$url/_matrix/client/versions"; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import synapse' 2>/dev/null; then
    return
  fi
  log "installing matrix-synapse into $venv (about 30 s)…"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check matrix-synapse
}

write_config() {
  local regs=("$@")
  mkdir -p "$dir/media"
  if [ ! -f "$dir/localhost.signing.key" ]; then
    "$venv/bin/python" -m synapse._scripts.generate_signing_key -o "$dir/localhost.signing.key"
  fi
  cat >"$dir/log.yaml" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $dir/homeserver.log
    encoding: utf8
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
YAML
  {
    cat <<YAML
server_name: localhost
pid_file: $pidfile
public_baseurl: $url/
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: $dir/homeserver.db
log_config: $dir/log.yaml
media_store_path: $dir/media
signing_key_path: $dir/localhost.signing.key
report_stats: false
suppress_key_server_warning: true
trusted_key_servers: []
federation_domain_whitelist: []
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "daarion-test-only-shared-secret"
macaroon_secret_key: "daarion-test-only-macaroon-secret"
form_secret: "daarion-test-only-form-secret"
presence:
  enabled: false
url_preview_enabled: false
# Tests are bursty: lift the client rate limits.
rc_message: {per_second: 1000, burst_count: 10000}
rc_registration: {per_second: 1000, burst_count: 10000}
rc_registration_token_validity: {per_second: 1000, burst_count: 10000}
rc_login:
  address: {per_second: 1000, burst_count: 10000}
  account: {per_second: 1000, burst_count: 10000}
  failed_attempts: {per_second: 1000, burst_count: 10000}
rc_joins:
  local: {per_second: 1000, burst_count: 10000}
  remote: {per_second: 1000, burst_count: 10000}
rc_joins_per_room: {per_second: 1000, burst_count: 10000}
rc_invites:
  per_room: {per_second: 1000, burst_count: 10000}
  per_user: {per_second: 1000, burst_count: 10000}
  per_issuer: {per_second: 1000, burst_count: 10000}
rc_3pid_validation: {per_second: 1000, burst_count: 10000}
rc_admin_redaction: {per_second: 1000, burst_count: 10000}
rc_room_creation: {per_second: 1000, burst_count: 10000}
rc_presence:
  per_user: {per_second: 1000, burst_count: 10000}
rc_delayed_event_mgmt: {per_second: 1000, burst_count: 10000}
rc_reports: {per_second: 1000, burst_count: 10000}
# End-to-end encryption of appservice users: to-device events (MSC2409/MSC4203), device lists and
# one-time key counts (MSC3202) in transactions.
experimental_features:
  msc2409_to_device_messages_enabled: true
  msc3202_transaction_extensions: true
YAML
    if [ ${#regs[@]} -gt 0 ]; then
      echo "app_service_config_files:"
      for r in "${regs[@]}"; do echo "  - $r"; done
    fi
  } >"$dir/homeserver.yaml"
}

fingerprint() {
  # What the running server loaded: the registration paths and their contents.
  local regs=("$@")
  {
    printf '%s\n' "${regs[@]}"
    for r in "${regs[@]}"; do cat "$r"; done
  } | sha256sum | cut -d' ' -f1
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

free_port() {
  # Called after `stop`, so whatever still holds the port is not the Synapse our pid file names.
  # A throwaway test Synapse (a `target/synapse` state dir) may: one of another checkout, or an
  # orphan of a checkout that was deleted and cloned again at this very path (its pid file went
  # with the old tree). Stop those; anything else on the port is left alone and reported.
  if up; then
    local pid
    for pid in $(pgrep -f "synapse.app.homeserver -c .*target/synapse/homeserver.yaml" || true); do
      log "stopping a throwaway Synapse that holds port $port (pid $pid): $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
      kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
      up || return 0
      sleep 0.1
    done
    log "port $port is still taken by something else; set DAARION_SYNAPSE_PORT"
    exit 1
  fi
}

start() {
  local regs=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --registration)
        [ $# -ge 2 ] || { log "--registration needs a path"; exit 2; }
        regs+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")")
        shift 2
        ;;
      *) log "unknown argument: $1"; exit 2 ;;
    esac
  done
  for r in "${regs[@]}"; do
    [ -f "$r" ] || { log "registration file not found: $r"; exit 1; }
  done
  install
  mkdir -p "$dir"
  local want
  want=$(fingerprint "${regs[@]}")
  if running && up && [ "$(cat "$dir/registrations.sha256" 2>/dev/null)" = "$want" ]; then
    echo "synapse ready: $url (server_name localhost)"
    return
  fi
  stop
  free_port
  write_config "${regs[@]}"
  echo "$want" >"$dir/registrations.sha256"
  "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --daemonize
  for _ in $(seq 1 240); do
    if up; then
      echo "synapse ready: $url (server_name localhost)"
      return
    fi
    sleep 0.25
  done
  log "Synapse did not answer on $url; last log lines:"
  tail -n 40 "$dir/homeserver.log" >&2 || true
  exit 1
}

register() {
  local user=$1 password=$2 body response session
  body=$(printf '{"username":"%s","password":"%s","inhibit_login":false}' "$user" "$password")
  response=$(curl -s -X POST -H 'Content-Type: application/json' -d "$body" "$url/_matrix/client/v3/register")
  session=$(printf '%s' "$response" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("session",""))')
  if [ -n "$session" ]; then
    body=$(printf '{"username":"%s","password":"%s","inhibit_login":false,"auth":{"type":"m.login.dummy","session":"%s"}}' "$user" "$password" "$session")
    response=$(curl -s -X POST -H 'Content-Type: application/json' -d "$body" "$url/_matrix/client/v3/register")
  fi
  if printf '%s' "$response" | grep -q '"M_USER_IN_USE"'; then
    body=$(printf '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"%s"},"password":"%s"}' "$user" "$password")
    response=$(curl -s -X POST -H 'Content-Type: application/json' -d "$body" "$url/_matrix/client/v3/login")
  fi
  printf '%s' "$response" | python3 -c 'import json,sys; r=json.load(sys.stdin); t=r.get("access_token"); print(t) if t else sys.exit("register failed: %s" % r)'
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop; echo "synapse stopped" ;;
  status) if running && up; then echo "synapse running: $url"; else echo "synapse not running"; exit 1; fi ;;
  register) [ $# -eq 3 ] || { log "usage: register USER PASSWORD"; exit 2; }; register "$2" "$3" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
