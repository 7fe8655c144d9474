#!/usr/bin/env bash
# Checks the deployment files offline: there is no cluster and no Docker engine here, so nothing
# is deployed or built, but every file is rendered, validated and linted.
# - k8s (and the GPU overlay) render with `kubectl kustomize`, and every object validates against
#   the schemas of each Kubernetes version in $KUBERNETES_VERSIONS (the oldest the backend's
#   client supports, and a current one) with unknown fields as errors;
# - services.dockerfile passes hadolint, and names only paths, packages, binaries and features
#   that exist in this repository;
# - docker-compose.yml validates against the compose specification;
# - every shell script under scripts/ passes shellcheck.
set -euo pipefail
# The checks below pipe into loops that record failures: run those loops in this shell.
shopt -s lastpipe
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh

KUBERNETES_VERSIONS=${KUBERNETES_VERSIONS:-1.33.0 1.37.0}
ensure_kubectl
ensure_kubernetes_validate
ensure_hadolint
ensure_check_jsonschema
ensure_shellcheck
ensure_jq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for kustomization in k8s k8s/overlays/gpu; do
  rendered=$work/${kustomization//\//_}.yaml
  kubectl kustomize "$kustomization" >"$rendered"
  objects=$(grep -c '^kind:' "$rendered")
  if [ "$objects" -lt 20 ]; then
    echo "$kustomization renders only $objects objects" >&2
    exit 1
  fi
  for version in $KUBERNETES_VERSIONS; do
    log "kubectl kustomize $kustomization | kubernetes-validate -k $version --strict"
    kubernetes-validate --kubernetes-version "$version" --strict --quiet "$rendered"
    echo "$objects objects valid"
  done
done

log "hadolint services.dockerfile"
hadolint services.dockerfile

log "services.dockerfile names only what exists"
# The Dockerfile's instructions (comments dropped, continuation lines joined), and what cargo
# knows about the workspace.
dockerfile=$(grep -v '^[[:space:]]*#' services.dockerfile | sed -e ':a' -e '/\\$/N; s/\\\n//; ta')
metadata=$(cargo metadata --no-deps --format-version 1)
missing=0
expect() { # expect WHAT NAME LIST
  if ! grep -qx -- "$2" <<<"$3"; then
    echo "services.dockerfile: $1 $2 does not exist" >&2
    missing=1
  fi
}
packages=$(jq -r '.packages[].name' <<<"$metadata")
binaries=$(jq -r '.packages[].targets[] | select(.kind | index("bin")) | .name' <<<"$metadata")
features=$(jq -r '.packages[].features | keys[]' <<<"$metadata")
while read -r source; do
  [ -e "$source" ] || { echo "services.dockerfile: COPY source $source does not exist" >&2; missing=1; }
  grep -qx "!$source/\?" .dockerignore ||
    { echo "services.dockerfile: COPY source $source is excluded by .dockerignore" >&2; missing=1; }
done < <(grep -E '^COPY ' <<<"$dockerfile" | grep -v -- '--from=' | awk '{for (i = 2; i < NF; i++) print $i}')
# expect_each WHAT LIST: every name on stdin must be in LIST.
expect_each() {
  local name
  while read -r name; do expect "$1" "$name" "$2"; done
}
grep -oE -- '-p [a-z0-9-]+' <<<"$dockerfile" | awk '{print $2}' | sort -u |
  expect_each package "$packages"
grep -oE -- '--bin [a-z0-9-]+|target/release/[a-z0-9-]+|/out/[a-z0-9-]+' <<<"$dockerfile" |
  sed -E 's#^(--bin |target/release/|/out/)##' | sort -u | expect_each binary "$binaries"
grep -oE -- '--features [a-z0-9-]+' <<<"$dockerfile" | awk '{print $2}' | sort -u |
  expect_each feature "$features"
grep -E '^(ENTRYPOINT|HEALTHCHECK)' <<<"$dockerfile" | grep -oE '\["[a-z0-9-]+"' | tr -d '["' |
  expect_each binary "$binaries"
[ "$missing" = 0 ]
echo "COPY sources, packages, binaries and features exist"

log "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

log "shellcheck scripts/*.sh scripts/lib/*.sh scripts/bench/*.sh"
shellcheck -x -P SCRIPTDIR scripts/*.sh scripts/lib/*.sh scripts/bench/*.sh
