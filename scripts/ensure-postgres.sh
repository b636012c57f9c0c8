#!/usr/bin/env bash
# Makes sure a PostgreSQL server accepts `postgres` on 127.0.0.1:5432 without a password (what
# the test suite and benchmark use). Starts an installed cluster, or installs PostgreSQL from
# Debian's packages when it is missing. Idempotent.
set -euo pipefail

ready() { psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

if command -v psql >/dev/null 2>&1 && ready; then
  echo "postgres ready: postgres://postgres@127.0.0.1:5432/postgres"
  exit 0
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian packages)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
if [ -z "$version" ]; then
  echo "no PostgreSQL cluster found under /etc/postgresql" >&2
  exit 1
fi
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
  pg_createcluster "$version" main >/dev/null
fi
hba="/etc/postgresql/$version/main/pg_hba.conf"
# Loopback trust for tests only: this is a throwaway local server.
if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
fi
conf="/etc/postgresql/$version/main/postgresql.conf"
grep -qE "^listen_addresses" "$conf" || echo "listen_addresses = 'localhost'" >>"$conf"

if pg_lsclusters -h | awk '$2=="main"{print $4}' | grep -qx online; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
else
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

for _ in $(seq 1 60); do
  if ready; then
    echo "postgres ready: postgres://postgres@127.0.0.1:5432/postgres"
    exit 0
  fi
  sleep 0.5
done
echo "PostgreSQL did not become ready; see /var/log/postgresql/" >&2
exit 1
