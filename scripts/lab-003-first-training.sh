#!/usr/bin/env bash
# Lab step 3: prepare a training snapshot of every commit of dataset $1, train the intent
# classifier on it with MiniAutoML's parameters, follow the job to its end, then show the run
# (GetRunStatus) and a prediction from the new model.
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

version_hash=$(lab_prepare "$dataset_id")
echo "version_hash is $version_hash"

# MiniAutoML's first training, with a smaller batch: the demo data is small.
job_id=$(lab_train "$dataset_id" "$version_hash" \
  '{"LR": "4", "EPOCHS": "15", "BATCH_SIZE": "16", "FC_SIZE": "128"}')
echo "job_id is $job_id"
lab_follow_job "$job_id"

lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/GetRunStatus "{\"run_id\": \"$job_id\"}"
lab_predict "$job_id" "will it rain in london tomorrow"
echo "next: scripts/lab-004-model-serving.sh $job_id \"<a sentence>\""
