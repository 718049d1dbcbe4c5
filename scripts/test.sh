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

# Every test binary is built once, then run in three groups (arguments go to each `cargo test`):
# - WAITING: long tests that mostly wait on real clocks and bound no lateness (kill -9 at random
#   points, the browser): in the background, beside
# - the rest of the suite;
# - TIMED: the tests that bound each ladder step on real processes (200 ms after its due time),
#   last and alone, so that no other test's load is in their figures.
# Every group runs; the script fails when any group failed.
WAITING=(fault_kill9 console_browser)
TIMED=(e2e_ladder e2e_restart fault_store)
cargo test --workspace --lib --bins --tests --no-run "$@"

targets() { for t in "$@"; do printf -- '--test\n%s\n' "$t"; done; }
shopt -s nullglob
rest=()
for f in crates/*/tests/*.rs crates/*/tests/*/main.rs; do
  name="$(basename "${f%/main.rs}" .rs)"
  case " ${WAITING[*]} ${TIMED[*]} " in *" $name "*) ;; *) rest+=("$name") ;; esac
done
for name in "${WAITING[@]}" "${TIMED[@]}"; do
  ls crates/*/tests/"$name".rs >/dev/null 2>&1 || { echo "test.sh: no test target $name" >&2; exit 2; }
done

waiting_log="$(mktemp)"
waiting_pid=""
trap '[ -z "$waiting_pid" ] || kill "$waiting_pid" 2>/dev/null; rm -f "$waiting_log"' EXIT
mapfile -t waiting_args < <(targets "${WAITING[@]}")
cargo test -p jobwarden "${waiting_args[@]}" "$@" >"$waiting_log" 2>&1 &
waiting_pid=$!
failed=()
mapfile -t rest_args < <(targets "${rest[@]}")
cargo test --workspace --lib --bins "${rest_args[@]}" "$@" || failed+=(rest)
wait "$waiting_pid" || failed+=("${WAITING[*]}")
waiting_pid=""
echo "===== test.sh: ${WAITING[*]} (ran in the background) =====" >&2
cat "$waiting_log"
mapfile -t timed_args < <(targets "${TIMED[@]}")
cargo test -p jobwarden "${timed_args[@]}" "$@" || failed+=("${TIMED[*]}")
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'test.sh: failed: %s\n' "${failed[@]}" >&2
  exit 101
fi
