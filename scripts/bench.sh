#!/usr/bin/env bash
# Benchmarks (not part of the tests).
# Usage: scripts/bench.sh metadata|dataset|predict|predict-encoder|overhead|schedule|console|train|encoder|labels|experiment
#
#   metadata   LogEpoch throughput and p50/p99 latency with 1, 16 and 64 concurrent callers on
#              one channel, plus the wall time of 1,000 sequential LogEpoch calls, against a
#              release-built metadata-store on SQLite and on Postgres (127.0.0.1:5432).
#   dataset    data-management: ingest throughput of generated 10 MB, 100 MB and 1 GB TEXT_INTENT
#              files as a ratio to a plain PUT of the same bytes to the same S3 endpoint (the
#              mean of one PUT before and one after each ingest), the
#              server's peak RSS during ingest and snapshot build, PrepareTrainingDataset→READY
#              time, p50/p99 of GetDatasetSummary and FetchTrainingDataset (SQLite, embedded S3).
#   predict    prediction-service: a model trained by automl-train on clinc part2 through the
#              real flow (dataset, snapshot, trainer, artifact), then Predict at 1, 16 and 64
#              concurrent callers against the warm model and, in the same run, against a
#              trivial tonic echo RPC (the ceiling): one connection each, the same load
#              generator, each level's BENCH_SECONDS split into BENCH_ROUNDS (default 4) rounds
#              that alternate which goes first; rates, p50/p99 and the load average before and
#              after; the server's CPU time per Predict beside the echo server's per echo
#              (their threads' time on a CPU); cold-load time and the server's RSS; model
#              compute per request, warm and with 8 MiB written before each document (so its
#              weights come from beyond the L2 cache, as in a loaded server). The load
#              generator runs on one thread; the server is restarted for each of
#              BENCH_SERVER_THREADS (default 1,2) runtime worker threads, and the echo runs
#              on as many.
#   predict-encoder
#              the same for intent-classification-encoder: all-MiniLM-L6-v2 imported
#              (scripts/fetch-encoder.sh, `automl pretrained import`), run 1 a head trained with
#              the defaults and run 2 a second head (HIDDEN=256, on the cached embeddings); the
#              server's RSS before any model and after the first Predict on run 1 and on run 2,
#              beside the encoder's and the heads' weights (two heads on one encoder hold one
#              encoder); Predict load against run 1; its compute per document at batch 1.
#   overhead   the throughput cost of metrics and tracing: Predict (the model of `predict`) and
#              LogEpoch (SQLite) at 1, 16 and 64 concurrent callers against pairs of servers,
#              in each one with the defaults and one with AUTOML__TELEMETRY__INSTRUMENT=false
#              and METRICS_ENABLED=false, both at the default log level (info), in alternating
#              rounds (on/off, off/on, …; BENCH_ROUNDS, default 4, of BENCH_SECONDS each),
#              round r on pair r mod BENCH_PAIRS.
#   schedule   training-service: time from Train to the trainer's start when the snapshot is
#              READY, and jobs per second through the queue with 1,000 queued jobs of a trivial
#              trainer (a script that records its start and exits); then the fairness run:
#              BENCH_TENANTS (default 20) tenants with tokens of their own each submit
#              BENCH_TENANT_JOBS (default 20) jobs of a trainer that sleeps 50 ms (so the queue
#              backs up), one tenant after another; jobs/s and the spread of the tenants' median
#              waits beside a FIFO queue's with the same time per job, with the load average.
#   console    the web console's server time: `automl serve all` on SQLite, metadata-store
#              filled through gRPC with 10,000 runs of 3 epochs and one run of 1,000 epochs;
#              p50/p99/max of GET /runs (first page, sorted by best val_accuracy, page 100) and
#              of the 1,000-epoch and a 3-epoch run page, at 1 and 4 callers, beside GET
#              /healthz and the gRPC calls behind the pages; every page checked before it is
#              timed; the load average before and after each (BENCH_SECONDS per case and level,
#              default 2 here). Goal: every page's p99 under 50 ms.
#   train      the intent classifier: automl-train (candle, CPU) against a PyTorch reference
#              of the same model and data split; accuracy, wall time, examples/s
#              (scripts/bench/train.sh says more).
#   encoder    the pretrained sentence encoder all-MiniLM-L6-v2: sentences/s of candle
#              (automl-train encoder-bench, CPU) against PyTorch with transformers, batch sizes
#              32 and 1 (scripts/bench/encoder.sh says more).
#   labels     data-management's bound on labels: a generated TEXT_INTENT file of BENCH_LABELS
#              (default 1,000,000) rows, each with a label of its own, uploaded and committed
#              with the CLI; checks the commit is refused naming data_management.max_labels and
#              prints the server's peak RSS (VmHWM, which must stay under 100 MiB) and the load
#              average. An S3 endpoint in a process of its own, as in `dataset`.
#   experiment hyperparameter search end to end: CLINC part2 through `automl serve all`, one run
#              with the default parameters, then a 12-trial experiment (TPE, median stopping)
#              over LR, FC_SIZE, EMBED_DIM and OPTIMIZER with the real trainer; each trial's
#              val and test accuracy, the best against the default, the epochs early stopping
#              saved, wall times (scripts/bench/experiment.sh says more).
#
# Environment: BENCH_SECONDS (per level, default 5), BENCH_CALLERS, BENCH_PAIRS and BENCH_AA
# (overhead: the levels, default 1,16,64; how many on/off pairs of servers, default 3; set to 1
# to run both servers of each pair uninstrumented, the noise floor), BENCH_MEGABYTES
# (dataset input sizes, default 10,100,1000), AUTOML_BENCH_POSTGRES_URL (admin URL, default
# postgres://postgres@127.0.0.1:5432/postgres; set it to "skip" to bench SQLite only).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh

what=${1:-}
bench=$what
case "$what" in
  metadata|dataset|predict|overhead|schedule|console|labels) ;;
  predict-encoder) bench=predict ;;
  train) exec scripts/bench/train.sh ;;
  encoder) exec scripts/bench/encoder.sh ;;
  experiment) exec scripts/bench/experiment.sh ;;
  *)
    echo "usage: scripts/bench.sh metadata|dataset|predict|predict-encoder|overhead|schedule|console|train|encoder|labels|experiment" >&2
    exit 2
    ;;
esac

seconds=${BENCH_SECONDS:-5}
BENCH_SERVER_THREADS=${BENCH_SERVER_THREADS:-1,2}
pg_admin=${AUTOML_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

log "building release binaries"
cargo build --release --locked -p automl --bin automl
# (labels drives the CLI and needs no bench executable.)
[ "$bench" = labels ] || cargo bench --locked -p automl --bench "$bench" --no-run
# The newest bench executable of that name (cargo leaves older builds and .d files beside it).
bench_bin=
for candidate in target/release/deps/"$bench"-*; do
  [[ $candidate == *.d ]] && continue
  if [ -z "$bench_bin" ] || [ "$candidate" -nt "$bench_bin" ]; then
    bench_bin=$candidate
  fi
done

work=$(mktemp -d)
server_pid=
extra_pids=()
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  for pid in ${extra_pids[@]+"${extra_pids[@]}"}; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts SERVICE with the given database URL in DIR; sets $addr, $s3 and $server_pid.
start_server() {
  local service=$1 url=$2 dir=$3 section=${1//-/_}
  : >"$work/out"
  env AUTOML__DATA_DIR="$dir" AUTOML__DATABASE__URL="$url" \
    "AUTOML__${section^^}__HOST=127.0.0.1" "AUTOML__${section^^}__PORT=0" \
    AUTOML__S3__EMBEDDED_BIND=127.0.0.1:0 RUST_LOG=warn \
    AUTOML__WEB__HOST=127.0.0.1 AUTOML__WEB__PORT=0 \
    AUTOML__TELEMETRY__METRICS_HOST=127.0.0.1 AUTOML__TELEMETRY__METRICS_PORT=0 \
    target/release/automl serve "$service" >"$work/out" 2>"$work/err" &
  # (AUTOML__S3__ENDPOINT from the caller's environment, when set, replaces the embedded one.)
  server_pid=$!
  for _ in $(seq 1 100); do
    addr=$(sed -n "s/^automl: $service listening on //p" "$work/out")
    s3=$(sed -n 's/^automl: embedded s3 listening on //p' "$work/out")
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  cat "$work/err" >&2
  return 1
}

stop_server() {
  kill "$server_pid" && wait "$server_pid" || true
  server_pid=
}

bench_metadata() {
  log "metadata-store on SQLite"
  start_server metadata-store "" "$work/sqlite"
  "$bench_bin" --addr "$addr" --label sqlite --seconds "$seconds"
  stop_server

  if [ "$pg_admin" != skip ]; then
    ensure_postgres
    db="automl_bench_$$"
    psql -q "$pg_admin" -c "CREATE DATABASE $db"
    log "metadata-store on Postgres"
    start_server metadata-store "${pg_admin%/*}/$db" "$work/postgres"
    "$bench_bin" --addr "$addr" --label postgres --seconds "$seconds"
    stop_server
    psql -q "$pg_admin" -c "DROP DATABASE $db WITH (FORCE)"
  fi
}

bench_dataset() {
  # The S3 endpoint runs in a process of its own (the embedded endpoint of a metadata-store),
  # so the RSS measured is data-management's alone.
  log "S3 endpoint process"
  start_server metadata-store "" "$work/s3host"
  local s3_pid=$server_pid s3_addr=$s3
  mv "$work/out" "$work/s3host.out"
  log "data-management on SQLite against http://$s3_addr"
  AUTOML__S3__ENDPOINT="http://$s3_addr" start_server data-management "" "$work/dataset"
  "$bench_bin" --addr "$addr" --s3 "http://$s3_addr" --pid "$server_pid" \
    --megabytes "${BENCH_MEGABYTES:-10,100,1000}"
  stop_server
  server_pid=$s3_pid
  stop_server
}

# A /proc/PID/status field (VmRSS, VmHWM) in MiB.
proc_mib() {
  awk -v field="$2:" '$1 == field { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

bench_labels() {
  local rows=${BENCH_LABELS:-1000000} limit=100 csv="$work/labels.csv"
  log "S3 endpoint process"
  start_server metadata-store "" "$work/s3host"
  local s3_pid=$server_pid s3_addr=$s3
  mv "$work/out" "$work/s3host.out"
  log "data-management on SQLite against http://$s3_addr"
  AUTOML__S3__ENDPOINT="http://$s3_addr" start_server data-management "" "$work/labels"
  log "generating $rows rows, each with a label of its own"
  awk -v n="$rows" 'BEGIN { for (i = 0; i < n; i++) printf "utterance %d,label_%d\n", i, i }' >"$csv"
  local idle load_before load_after started answer elapsed peak
  idle=$(proc_mib "$server_pid" VmRSS)
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  started=$(date +%s%N)
  if answer=$(target/release/automl dataset --server "$addr" create --name labels --file "$csv" 2>&1); then
    log "accepted, not refused: $answer"
    echo "peak RSS $(proc_mib "$server_pid" VmHWM) MiB"
    return 1
  fi
  elapsed=$((($(date +%s%N) - started) / 1000000))
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  peak=$(proc_mib "$server_pid" VmHWM)
  answer=$(tr '\r' '\n' <<<"$answer" | grep 'data_management.max_labels') || {
    log "refused, but not for its labels"
    return 1
  }
  echo "refused: ${answer#automl: }"
  echo "$(du -m "$csv" | cut -f1) MB, $rows distinct labels: upload + refused commit in $elapsed ms"
  echo "data-management RSS: $idle MiB idle, peak (VmHWM) $peak MiB (limit ${limit} MiB)"
  echo "load average: $load_before before, $load_after after"
  stop_server
  server_pid=$s3_pid
  stop_server
  awk -v peak="$peak" -v limit="$limit" 'BEGIN { exit !(peak < limit) }' || {
    log "peak RSS $peak MiB is not under $limit MiB"
    return 1
  }
}

# Starts `automl serve all` on $work/predict (kept across restarts) with NAME=VALUE settings on
# top of the bench defaults; sets $dm, $ms, $ps, $s3 and $server_pid.
start_model_server() {
  : >"$work/out"
  env "$@" AUTOML__DATA_DIR="$work/predict" AUTOML__S3__EMBEDDED_BIND=127.0.0.1:0 RUST_LOG=warn \
    AUTOML__DATA_MANAGEMENT__PORT=0 AUTOML__METADATA_STORE__PORT=0 AUTOML__PREDICTION_SERVICE__PORT=0 \
    AUTOML__WEB__HOST=127.0.0.1 AUTOML__WEB__PORT=0 \
    AUTOML__TELEMETRY__METRICS_HOST=127.0.0.1 AUTOML__TELEMETRY__METRICS_PORT=0 \
    target/release/automl serve all >"$work/out" 2>"$work/err" &
  server_pid=$!
  dm='' ms='' ps=''
  for _ in $(seq 1 100); do
    dm=$(sed -n 's/^automl: data-management listening on //p' "$work/out")
    ms=$(sed -n 's/^automl: metadata-store listening on //p' "$work/out")
    ps=$(sed -n 's/^automl: prediction-service listening on //p' "$work/out")
    s3=$(sed -n 's/^automl: embedded s3 listening on //p' "$work/out")
    [ -n "$ps" ] && break
    sleep 0.1
  done
  [ -n "$ps" ] || { cat "$work/err" >&2; return 1; }
  dm=127.0.0.1:${dm##*:} ms=127.0.0.1:${ms##*:} ps=127.0.0.1:${ps##*:}
}

# Starts `automl serve all` with the clinc part2 dataset, its snapshot READY; sets $dm, $ms, $ps,
# $s3 and $server_pid.
serve_all_with_dataset() {
  cargo build --release --locked -p automl-text-classification --bin automl-train
  local data=data/clinc
  start_model_server
  log "dataset from $data/clinc-intents-part2.csv"
  target/release/automl dataset --server "$dm" create --name clinc --file "$data/clinc-intents-part2.csv" >/dev/null
  target/release/automl dataset --server "$dm" prepare --dataset 1 --wait
}

# train_run JOB_ID NAME=VALUE…: runs automl-train by hand as job JOB_ID on snapshot 1 of
# `serve_all_with_dataset`, with the algorithm's NAME=VALUE settings.
train_run() {
  local job=$1
  shift
  env JOB_ID="$job" METADATA_STORE_SERVER="$ms" \
    TRAINING_DATASET_ID=1 TRAINING_DATASET_VERSION_HASH=hashAg== MODEL_BUCKET=mini-automl-models \
    MODEL_NAME=intent MINIO_SERVER="$s3" MINIO_SERVER_ACCESS_KEY=automl \
    MINIO_SERVER_SECRET_KEY=automl-secret-key TRAINING_DATA_BUCKET=mini-automl-dm \
    TRAINING_DATA_PATH=versionedDatasets/1/hashAg== "$@" target/release/automl-train
}

# Starts `automl serve all` with the clinc part2 dataset and run 1 trained on it by
# automl-train; sets $dm, $ms, $ps, $s3 and $server_pid.
serve_all_with_model() {
  serve_all_with_dataset
  log "training run 1 with automl-train (EPOCHS=${BENCH_EPOCHS:-10})"
  train_run 1 ALGORITHM_NAME=intent-classification EPOCHS="${BENCH_EPOCHS:-10}" LR=4 BATCH_SIZE=64 \
    FC_SIZE=128 | tail -n 2
}

bench_predict() {
  serve_all_with_model
  # The load generator runs on one thread; on these 2 cores a server runtime with a worker per
  # core shares them with it. Each level of BENCH_SERVER_THREADS (default 1,2) restarts the
  # server with that many runtime workers (TOKIO_WORKER_THREADS) and serves the echo ceiling on
  # as many, so both sides of every ratio run the same runtime.
  local threads
  for threads in ${BENCH_SERVER_THREADS//,/ }; do
    stop_server
    start_model_server TOKIO_WORKER_THREADS="$threads"
    log "Predict load against $ps: server and echo runtimes with $threads worker thread(s)"
    "$bench_bin" --addr "$ps" --run 1 --s3 "http://$s3" --documents data/clinc/clinc-intents-part1.csv \
      --seconds "$seconds" --rounds "${BENCH_ROUNDS:-4}" --echo-threads "$threads" --pid "$server_pid"
  done
  stop_server
}

bench_predict_encoder() {
  ensure_encoder
  serve_all_with_dataset
  log "importing $AUTOML_ENCODER_DIR into http://$s3"
  local imported pretrained
  imported=$(AUTOML__S3__ENDPOINT="http://$s3" target/release/automl pretrained import \
    --dir "$AUTOML_ENCODER_DIR")
  pretrained=$(sed -n 's/^imported //p' <<<"$imported")
  [ -n "$pretrained" ] || { printf '%s\n' "$imported" >&2; return 1; }
  local encoder=(ALGORITHM_NAME=intent-classification-encoder PRETRAINED_MODEL="$pretrained")
  log "training run 1: $pretrained, the defaults (FINETUNE=head)"
  # Every line but the epochs: the embedding pass (cached for run 2), accuracy, uploads.
  train_run 1 "${encoder[@]}" | grep -v '^epoch '
  log "training run 2: a second head, HIDDEN=256"
  train_run 2 "${encoder[@]}" HIDDEN=256 | grep -v '^epoch '
  log "RSS of pid $server_pid around the first Predicts; Predict load against $ps"
  "$bench_bin" --addr "$ps" --run 1 --s3 "http://$s3" --documents data/clinc/clinc-intents-part1.csv \
    --encoder "$AUTOML_ENCODER_DIR" --pid "$server_pid" --load-runs 2 --seconds "$seconds"
  stop_server
}

# Starts `automl serve SERVICE` as NAME with NAME=VALUE settings on top of the bench defaults,
# in the background; sets $addr and adds the process to $extra_pids.
start_extra() {
  local name=$1 service=$2 section=${2//-/_}
  shift 2
  env AUTOML__DATA_DIR="$work/$name" AUTOML__S3__EMBEDDED_BIND=127.0.0.1:0 RUST_LOG=info \
    "AUTOML__${section^^}__HOST=127.0.0.1" "AUTOML__${section^^}__PORT=0" \
    AUTOML__WEB__HOST=127.0.0.1 AUTOML__WEB__PORT=0 \
    AUTOML__TELEMETRY__METRICS_HOST=127.0.0.1 AUTOML__TELEMETRY__METRICS_PORT=0 "$@" \
    target/release/automl serve "$service" >"$work/$name.out" 2>"$work/$name.err" &
  extra_pids+=("$!")
  addr=
  for _ in $(seq 1 100); do
    addr=$(sed -n "s/^automl: $service listening on //p" "$work/$name.out")
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  cat "$work/$name.err" >&2
  return 1
}

bench_overhead() {
  serve_all_with_model
  local on=(AUTOML__TELEMETRY__INSTRUMENT=true AUTOML__TELEMETRY__METRICS_ENABLED=true)
  local off=(AUTOML__TELEMETRY__INSTRUMENT=false AUTOML__TELEMETRY__METRICS_ENABLED=false)
  # BENCH_AA=1: both servers of each pair uninstrumented, to see the method's own noise.
  if [ -n "${BENCH_AA:-}" ]; then
    on=("${off[@]}")
    log "A/A: both sides of every pair uninstrumented"
  fi
  local predict=() stores=() predict_pids=() store_pids=() pair side settings
  # BENCH_PAIRS pairs of each (on, off), loaded in turn. Every prediction-service resolves run 1
  # through the metadata-store of `serve all` and downloads it from its S3 endpoint; each
  # metadata-store has a SQLite database of its own.
  for pair in $(seq 1 "${BENCH_PAIRS:-3}"); do
    for side in on off; do
      if [ "$side" = on ]; then settings=("${on[@]}"); else settings=("${off[@]}"); fi
      start_extra "predict-$side-$pair" prediction-service "${settings[@]}" \
        AUTOML__PREDICTION_SERVICE__METADATA_STORE="http://$ms" AUTOML__S3__ENDPOINT="http://$s3"
      predict+=("$addr") predict_pids+=("${extra_pids[-1]}")
      start_extra "store-$side-$pair" metadata-store "${settings[@]}"
      stores+=("$addr") store_pids+=("${extra_pids[-1]}")
    done
  done
  log "Predict (${predict[*]}) and LogEpoch (${stores[*]}), pairs on then off"
  "$bench_bin" --predict "$(IFS=,; echo "${predict[*]}")" --run 1 \
    --documents data/clinc/clinc-intents-part1.csv \
    --metadata "$(IFS=,; echo "${stores[*]}")" \
    --pids "$(IFS=,; echo "${predict_pids[*]},${store_pids[*]}")" \
    --seconds "$seconds" --rounds "${BENCH_ROUNDS:-4}" --callers "${BENCH_CALLERS:-1,16,64}"
  stop_server
}

# Starts `automl serve all` in DIR with the trivial trainer as algorithm `trivial`, and any
# further VAR=value settings; sets $dm and $ts (data-management's and training-service's
# host:port) and $server_pid.
start_serve_all() {
  local dir=$1
  shift
  : >"$work/out"
  env AUTOML__DATA_DIR="$dir" AUTOML__S3__EMBEDDED_BIND=127.0.0.1:0 RUST_LOG=warn \
    AUTOML__DATA_MANAGEMENT__PORT=0 AUTOML__METADATA_STORE__PORT=0 \
    AUTOML__PREDICTION_SERVICE__PORT=0 AUTOML__TRAINING_SERVICE__PORT=0 \
    AUTOML__TRAINING_SERVICE__ALGORITHMS__TRIVIAL__COMMAND="$work/trivial-trainer.sh" "$@" \
    target/release/automl serve all >"$work/out" 2>"$work/err" &
  server_pid=$!
  dm='' ts=''
  for _ in $(seq 1 100); do
    dm=$(sed -n 's/^automl: data-management listening on //p' "$work/out")
    ts=$(sed -n 's/^automl: training-service listening on //p' "$work/out")
    [ -n "$ts" ] && break
    sleep 0.1
  done
  [ -n "$ts" ] || { cat "$work/err" >&2; return 1; }
  dm=127.0.0.1:${dm##*:} ts=127.0.0.1:${ts##*:}
}

bench_schedule() {
  local dir="$work/schedule" trivial="$work/trivial-trainer.sh" trace="$work/trace"
  # shellcheck disable=SC2016 # the variables belong to the script written, not to this one
  printf '#!/bin/sh\necho "$JOB_ID $(date +%%s%%N)" >> "$TRACE"\n[ -z "$SLEEP" ] || sleep "$SLEEP"\n' >"$trivial"
  chmod +x "$trivial"
  start_serve_all "$dir"
  printf 'hello,greeting\n' >"$work/tiny.csv"
  target/release/automl dataset --server "$dm" create --name tiny --file "$work/tiny.csv" >/dev/null
  target/release/automl dataset --server "$dm" prepare --dataset 1 --wait >/dev/null
  "$bench_bin" --addr "$ts" --trace "$trace"
  stop_server
  bench_fairness
}

# The fairness run: BENCH_TENANTS (default 20) tenants, each with its own token and dataset,
# submit BENCH_TENANT_JOBS (default 20) jobs each, one tenant after the other.
bench_fairness() {
  local dir="$work/fairness" trace="$work/fair-trace"
  local tenants=${BENCH_TENANTS:-20} jobs=${BENCH_TENANT_JOBS:-20}
  mkdir -p "$dir"
  : >"$work/tokens"
  for i in $(seq 1 "$tenants"); do
    echo "team-$i $(target/release/automl token --data-dir "$dir" create --tenant "team-$i" 2>/dev/null)" >>"$work/tokens"
  done
  start_serve_all "$dir" AUTOML__AUTH__ENABLED=true \
    AUTOML__AUTH__INTERNAL_SECRET="bench-internal-secret-$RANDOM$RANDOM"
  local tenant token dataset
  : >"$work/tenants"
  while read -r tenant token; do
    dataset=$(AUTOML_TOKEN=$token target/release/automl dataset --server "$dm" create \
      --name tiny --file "$work/tiny.csv" 2>/dev/null |
      sed -n 's/.*"datasetId": "\([^"]*\)".*/\1/p')
    AUTOML_TOKEN=$token target/release/automl dataset --server "$dm" prepare \
      --dataset "$dataset" --wait >/dev/null
    echo "$tenant $token $dataset" >>"$work/tenants"
  done <"$work/tokens"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$bench_bin" --addr "$ts" --trace "$trace" --tenants "$work/tenants" --jobs-per-tenant "$jobs"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  stop_server
}

# The web console against `automl serve all` on SQLite (no trainer runs: the runs are logged
# to metadata-store directly by the bench).
bench_console() {
  : >"$work/out"
  AUTOML__DATA_DIR="$work/console" AUTOML__S3__EMBEDDED_BIND=127.0.0.1:0 RUST_LOG=warn \
    AUTOML__DATA_MANAGEMENT__PORT=0 AUTOML__METADATA_STORE__PORT=0 \
    AUTOML__PREDICTION_SERVICE__PORT=0 AUTOML__TRAINING_SERVICE__PORT=0 \
    AUTOML__WEB__HOST=127.0.0.1 AUTOML__WEB__PORT=0 \
    AUTOML__TELEMETRY__METRICS_HOST=127.0.0.1 AUTOML__TELEMETRY__METRICS_PORT=0 \
    target/release/automl serve all >"$work/out" 2>"$work/err" &
  server_pid=$!
  local web='' ms='' ts=''
  for _ in $(seq 1 100); do
    web=$(sed -n 's/^automl: web listening on //p' "$work/out")
    ms=$(sed -n 's/^automl: metadata-store listening on //p' "$work/out")
    ts=$(sed -n 's/^automl: training-service listening on //p' "$work/out")
    [ -n "$web" ] && [ -n "$ms" ] && [ -n "$ts" ] && break
    sleep 0.1
  done
  [ -n "$web" ] && [ -n "$ms" ] && [ -n "$ts" ] || { cat "$work/err" >&2; return 1; }
  ms=127.0.0.1:${ms##*:}
  log "console at http://$web, metadata-store at $ms; logging the runs"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
  "$bench_bin" --web "$web" --metadata "$ms" --seconds "${BENCH_SECONDS:-2}"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  stop_server
}

"bench_${what//-/_}"
