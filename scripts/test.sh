#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, clippy with -D warnings, and every
# test; the storage suites run on SQLite and on the local Postgres (127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh

ensure_grpcurl
ensure_postgres
export AUTOML_TEST_POSTGRES_URL=${AUTOML_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (storage tests on SQLite and $AUTOML_TEST_POSTGRES_URL)"
cargo test --workspace --locked --no-fail-fast
