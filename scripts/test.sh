#!/usr/bin/env bash
# The full test suite: starts the servers the tests need (PostgreSQL, the moto S3 server),
# then runs every test of the workspace against them. Under CI=true a missing server is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests edit the SQLite store with the sqlite3 CLI and create databases with psql.
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo "test.sh: installing sqlite3 with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >&2
fi
# tests/k8s_deploy.rs renders deploy/ with `kubectl kustomize` (KUBECTL; installed if missing).
# tests/console_browser.rs drives Debian's Chromium with Playwright for Python
# (JOBWARDEN_CHROMIUM, JOBWARDEN_PLAYWRIGHT_PYTHON; installed if missing).
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
ensure_kubectl
ensure_browser
eval "$(scripts/start-postgres.sh)"
eval "$(scripts/start-moto.sh)"
export JOBWARDEN_REQUIRE_SERVERS=1
# Benches are built by clippy --all-targets in .ci/run and run with `cargo bench` (BENCHMARKS.md).
cargo test --workspace --lib --bins --tests "$@"
