#!/usr/bin/env bash
# Start moto (an S3-compatible test server) on loopback, create the test bucket, and print the
# environment the S3 tests read:
#   eval "$(scripts/start-moto.sh)"
#   scripts/start-moto.sh stop
# moto keeps its data in memory: a restart loses the bucket (pause it with SIGSTOP instead).
set -euo pipefail
port="${JOBWARDEN_MOTO_PORT:-55433}"
bucket="${JOBWARDEN_TEST_S3_BUCKET:-jobwarden-test}"
state="${JOBWARDEN_MOTO_DIR:-/tmp/jobwarden-moto-$(id -u)}"
mkdir -p "$state"

if [ "${1:-}" = stop ]; then
  [ -f "$state/pid" ] && kill "$(cat "$state/pid")" 2>/dev/null || true
  rm -f "$state/pid"; exit 0
fi

if ! command -v moto_server >/dev/null 2>&1; then
  echo "start-moto: moto_server not found; installing moto[server] with pip" >&2
  python3 -m pip install --quiet 'moto[server]==5.2.1' >&2
  hash -r
fi

if ! curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then
  nohup moto_server -H 127.0.0.1 -p "$port" >"$state/server.log" 2>&1 &
  echo $! >"$state/pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null || { cat "$state/server.log" >&2; exit 1; }
fi
curl -fsS -X PUT "http://127.0.0.1:$port/$bucket" >/dev/null
cat <<ENV
export JOBWARDEN_TEST_S3_ENDPOINT=http://127.0.0.1:$port
export JOBWARDEN_TEST_S3_BUCKET=$bucket
export JOBWARDEN_MOTO_PID=$(cat "$state/pid" 2>/dev/null || echo "")
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
ENV
