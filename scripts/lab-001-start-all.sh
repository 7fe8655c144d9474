#!/usr/bin/env bash
# Lab step 1: start `automl serve all` in the background on embedded defaults (SQLite and the
# embedded S3 endpoint, both under the data directory) and wait until every service is SERVING.
# The binary is $AUTOML_BIN when set, else target/debug/automl, built here first (with
# automl-train beside it). The process id goes to <data dir>/lab.pid, its output to lab.log.
set -euo pipefail
# shellcheck source=lib/lab.sh
source "$(dirname "$0")/lib/lab.sh"
lab_tools

pid=$(lab_running_pid)
if [ -n "$pid" ]; then
  echo "automl is already running (pid $pid); scripts/lab-999-tear-down.sh stops it"
  exit 0
fi
if [ -z "${AUTOML_BIN:-}" ]; then
  log "building automl and automl-train"
  cargo build -p automl -p automl-text-classification
  AUTOML_BIN=$AUTOML_ROOT/target/debug/automl
fi

mkdir -p "$AUTOML__DATA_DIR"
export AUTOML__DATA_MANAGEMENT__PORT=$DM_PORT
export AUTOML__PREDICTION_SERVICE__PORT=$PS_PORT
export AUTOML__METADATA_STORE__PORT=$MS_PORT
export AUTOML__TRAINING_SERVICE__PORT=$TS_PORT
export AUTOML__WEB__PORT=$WEB_PORT
export AUTOML__S3__EMBEDDED_BIND=${AUTOML__S3__EMBEDDED_BIND:-127.0.0.1:$MINIO_PORT}

# setsid makes automl a process group leader, so lab-999 can stop it with its trainers.
launcher=()
command -v setsid >/dev/null 2>&1 && launcher=(setsid)
: >"$LAB_LOG"
"${launcher[@]}" "$AUTOML_BIN" serve all </dev/null >>"$LAB_LOG" 2>&1 &
pid=$!
echo "$pid" >"$LAB_PID_FILE"
echo "Started automl serve all (pid $pid), logging to $LAB_LOG"

# Ready when this process has announced all four listeners and each answers SERVING (an
# announcement first, so that another server on the same port cannot pass for this one).
deadline=$((SECONDS + ${LAB_START_TIMEOUT:-120}))
for service in data-management:$DM_PORT prediction-service:$PS_PORT metadata-store:$MS_PORT \
  training-service:$TS_PORT; do
  name=${service%%:*}
  port=${service##*:}
  until grep -q "automl: $name listening on" "$LAB_LOG" &&
    [ "$(lab_grpcurl -max-time 2 "$LAB_HOST:$port" grpc.health.v1.Health/Check 2>/dev/null |
      jq -r .status)" = SERVING ]; do
    if ! lab_alive "$pid"; then
      rm -f "$LAB_PID_FILE"
      echo "automl exited before it was ready; the end of $LAB_LOG:" >&2
      tail -n 30 "$LAB_LOG" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$name is not SERVING on $LAB_HOST:$port after ${LAB_START_TIMEOUT:-120} s" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "$name is SERVING on $LAB_HOST:$port"
done
echo "Embedded S3 endpoint on $AUTOML__S3__EMBEDDED_BIND"
echo "Web console on http://$LAB_HOST:$WEB_PORT"
echo "next: scripts/lab-002-upload-data.sh"
