#!/usr/bin/env bash
# Lab step 2: upload the demo data (data/demo/intents-part1.csv and part2) into the datasets
# bucket through data-management's UploadData, then create a TEXT_INTENT dataset from part 1.
# Prints the DatasetSummary.
set -euo pipefail
# shellcheck source=lib/lab.sh
source "$(dirname "$0")/lib/lab.sh"
lab_tools

echo "Upload raw data to the object store to get a data url"
part1=$(lab_upload "$LAB_DEMO_DATA/intents-part1.csv" upload/demo-intents-part1.csv)
echo "$part1"
lab_upload "$LAB_DEMO_DATA/intents-part2.csv" upload/demo-intents-part2.csv
part1_path=$(jq -r .path <<<"$part1")

echo
echo "Creating intent dataset"
summary=$(lab_grpc "$DM_PORT" data_management.DataManagementService/CreateDataset "{
  \"name\": \"demo-intents\",
  \"dataset_type\": \"TEXT_INTENT\",
  \"bucket\": \"$MINIO_DM_BUCKET\",
  \"path\": \"$part1_path\",
  \"tags\": [{\"tag_key\": \"category\", \"tag_value\": \"demo\"}]
}")
echo "$summary"
dataset_id=$(jq -r '.datasetId // .dataset_id' <<<"$summary")
echo "dataset_id is $dataset_id"
echo "next: scripts/lab-003-first-training.sh $dataset_id"
