#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the tests and print `export DATABASE_URL=...`.
#   eval "$(scripts/start-postgres.sh)"       # start (installs postgresql with apt if missing)
#   scripts/start-postgres.sh stop            # stop the cluster started from this checkout
# The cluster lives in $JOBWARDEN_PG_DIR (default: /tmp/jobwarden-pg-<uid>); fsync is off: test data only.
set -euo pipefail
dir="${JOBWARDEN_PG_DIR:-/tmp/jobwarden-pg-$(id -u)}"
port="${JOBWARDEN_PG_PORT:-55432}"

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "start-postgres: PostgreSQL binaries not found; installing with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

as_pg() {
  # The server refuses to run as root; run it as the postgres user when we are root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = stop ]; then
  [ -d "$dir/data" ] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
  exit 0
fi

if [ ! -f "$dir/data/PG_VERSION" ]; then
  rm -rf "$dir"; mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
fi
if ! as_pg "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  as_pg "$bindir/pg_ctl" -D "$dir/data" -w -l "$dir/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
fi
echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
