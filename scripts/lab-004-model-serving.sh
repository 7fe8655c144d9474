#!/usr/bin/env bash
# Lab step 4: ask prediction-service for the intent of document $2 with the model of run $1
# (the run id is the training job id).
set -euo pipefail
# shellcheck source=lib/lab.sh
source "$(dirname "$0")/lib/lab.sh"
lab_tools

if [ "${1:-}" = "" ] || [ "${2:-}" = "" ]; then
  echo "Requires run_id and a document: $0 <run_id> <document>" >&2
  exit 1
fi
# model_id is the run id, which is the training-service job id
model_id=$1
document=$2
echo "model_id is $model_id"
echo "document is $document"
lab_predict "$model_id" "$document"
