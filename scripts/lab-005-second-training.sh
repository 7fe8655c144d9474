#!/usr/bin/env bash
# Lab step 5: commit more data to dataset $1 (part 2 of the demo data, which adds the intent
# `translate`), train again on all commits with other parameters, then compare this run with
# the dataset's previous one: GetRunStatus of both, and the same document through both models.
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

# Part 2 as lab-002 uploaded it (uploaded again: the same key, and its path as the server
# stores it, under the caller's tenant when authentication is on).
part2_path=$(lab_upload "$LAB_DEMO_DATA/intents-part2.csv" upload/demo-intents-part2.csv |
  jq -r .path)

echo "Adding a commit to dataset $dataset_id"
lab_grpc "$DM_PORT" data_management.DataManagementService/UpdateDataset "{
  \"dataset_id\": \"$dataset_id\",
  \"commit_message\": \"demo-intents-part2\",
  \"bucket\": \"$MINIO_DM_BUCKET\",
  \"path\": \"$part2_path\",
  \"tags\": [{\"tag_key\": \"category\", \"tag_value\": \"demo\"}]
}"

# The run to compare with: the dataset's latest run so far.
previous=$(lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/ListRuns \
  "{\"dataset_id\": \"$dataset_id\"}" | jq -r '[.runs[]?.runId // empty] | last // empty')

version_hash=$(lab_prepare "$dataset_id")
echo "version_hash is $version_hash"

# Other parameters: AdamW instead of clipped SGD, a wider hidden layer.
job_id=$(lab_train "$dataset_id" "$version_hash" \
  '{"OPTIMIZER": "adamw", "LR": "0.005", "EPOCHS": "15", "BATCH_SIZE": "32", "FC_SIZE": "256"}')
echo "job_id is $job_id"
lab_follow_job "$job_id"
lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/GetRunStatus "{\"run_id\": \"$job_id\"}"

document="how do i say thank you in french"
echo
echo "Comparing run ${previous:-(none)} with run $job_id"
printf '%-5s %-10s %-7s %-24s %s\n' run version epochs result parameters
for run in $previous $job_id; do
  status=$(lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/GetRunStatus "{\"run_id\": \"$run\"}")
  job=$(lab_grpc "$TS_PORT" training.TrainingService/GetTrainingStatus "{\"job_id\": $run}")
  printf '%-5s %-10s %-7s %-24s %s\n' "$run" \
    "$(jq -r '.runInfo.tracing.versionHash // .runInfo.tracing.version_hash' <<<"$status")" \
    "$(jq -r '.runInfo.epochs | length' <<<"$status")" \
    "$(jq -r '.runInfo.message' <<<"$status")" \
    "$(jq -r '.metadata.parameters | to_entries | map("\(.key)=\(.value)") | join(" ")' <<<"$job")"
done
echo
echo "\"$document\":"
for run in $previous $job_id; do
  lab_predict "$run" "$document" |
    jq -r --arg run "$run" '"  run \($run): \(.label) (score \(.score))"'
done
