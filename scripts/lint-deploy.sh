#!/usr/bin/env bash
# Lints what installs jobwarden on a cluster (run by .ci/run; tools from scripts/tools.sh):
#   - the Dockerfile with hadolint (.hadolint.yaml), and the README's build command is the
#     Dockerfile's;
#   - deploy/ with yamllint (.yamllint.yaml);
#   - each overlay, alone and with the optional components, rendered offline by
#     `kubectl kustomize`, then checked by checkov (.checkov.yaml says which checks are skipped
#     and why).
# The rendered manifests are parsed as the Kubernetes types, and their RBAC compared with the
# calls the code makes, by `cargo test -p jobwarden --test k8s_deploy` (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
ensure_kubectl
ensure_linters
ensure_checkov

echo "lint-deploy: hadolint $("$HADOLINT" --version | head -1)" >&2
"$HADOLINT" --config .hadolint.yaml Dockerfile

# The image is built as the README says.
build="$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' Dockerfile)"
[ -n "$build" ] || { echo "lint-deploy: no 'RUN cargo build' line in Dockerfile" >&2; exit 1; }
grep -qF -- "$build" README.md || {
  echo "lint-deploy: README.md does not show the Dockerfile's build: $build" >&2; exit 1; }

echo "lint-deploy: $("$YAMLLINT" --version)" >&2
"$YAMLLINT" --strict -c .yamllint.yaml deploy/

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# render NAME OVERLAY [COMPONENT...]: kubectl kustomize of the overlay with the components,
# into $out/rendered/NAME.yaml.
render() {
  local name="$1" overlay="$2"; shift 2
  local dir="$out/$name"
  mkdir -p "$dir" "$out/rendered"
  {
    echo "resources:"
    echo "  - $(realpath --relative-to="$dir" "deploy/overlays/$overlay")"
    if [ $# -gt 0 ]; then
      echo "components:"
      for c in "$@"; do echo "  - $(realpath --relative-to="$dir" "deploy/components/$c")"; done
    fi
  } >"$dir/kustomization.yaml"
  "$KUBECTL" kustomize "$dir" >"$out/rendered/$name.yaml"
  echo "lint-deploy: rendered $overlay${*:+ + $*}: $(grep -c '^kind:' "$out/rendered/$name.yaml") objects" >&2
}
render namespaced namespaced
render cluster cluster
render namespaced-all namespaced secret-cleanup servicemonitor cert-manager
render cluster-all cluster secret-cleanup servicemonitor cert-manager

echo "lint-deploy: checkov $("$CHECKOV" --version)" >&2
echo "lint-deploy: checks skipped, each with its reason in .checkov.yaml:" \
  "$(sed -n 's/^  - \(CKV[A-Z0-9_]*\)$/\1/p' .checkov.yaml | tr '\n' ' ')" >&2
"$CHECKOV" --config-file .checkov.yaml --directory "$out/rendered"
echo "lint-deploy: ok" >&2
