#!/usr/bin/env bash
# Screenshots of the web console's main pages with headless Chromium, for the README: run it
# after the lab (scripts/lab-001 … lab-005), while `automl serve all` still runs. An experiment
# page is included when an experiment exists. Writes PNGs into docs/screenshots (or $1).
#
#   scripts/screenshots.sh                 # the console at http://localhost:$WEB_PORT (8080)
#   WEB_PORT=18080 scripts/screenshots.sh /tmp/shots
#
# The console must not require a sign-in (the lab runs without authentication).
set -euo pipefail
# shellcheck source=lib/lab.sh
source "$(dirname "$0")/lib/lab.sh"
lab_tools
ensure_chromium

out=${1:-docs/screenshots}
web=http://$LAB_HOST:$WEB_PORT
mkdir -p "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

# shot NAME PATH [WIDTH HEIGHT]: the page after its scripts ran (charts drawn, live data loaded).
shot() {
  local name=$1 path=$2 width=${3:-1280} height=${4:-900}
  chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$profile" --window-size="$width,$height" --virtual-time-budget=5000 \
    --screenshot="$out/$name.png" "$web$path" >/dev/null 2>&1
  [ -s "$out/$name.png" ] || { echo "no screenshot of $web$path" >&2; return 1; }
  log "$out/$name.png: $path"
}

curl -fsS "$web/healthz" >/dev/null || {
  echo "the console does not answer at $web (start the lab: scripts/lab-001-start-all.sh)" >&2
  exit 1
}
runs=$(lab_grpc "$MS_PORT" metadata_store.MetadataStoreService/ListRuns '{}' | jq -r '.runs[]?.runId')
first=$(head -n 1 <<<"$runs")
second=$(sed -n 2p <<<"$runs")
if [ -z "$first" ]; then
  echo "no runs yet: run the lab first (scripts/lab-002 … lab-005)" >&2
  exit 1
fi

shot runs /runs
shot run "/runs/$first"
if [ -n "$second" ]; then
  shot compare "/compare?run=$first&run=$second"
fi
shot job "/jobs/$first"
shot datasets /datasets/1
shot models /models
experiment=$(lab_grpc "$TS_PORT" training.TrainingService/ListExperiments '{}' |
  jq -r '.experiments[0]?.experimentId // empty')
if [ -n "$experiment" ]; then
  shot experiment "/experiments/$experiment"
fi
# A phone-width screen.
shot run-phone "/runs/$first" 390 844
