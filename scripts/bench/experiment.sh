#!/usr/bin/env bash
# scripts/bench.sh experiment: hyperparameter search end to end with the real trainer.
#
# Starts `automl serve all` (release build, SQLite, embedded S3, two jobs at once) with CLINC
# part2 as dataset 1, trains intent-classification once with its default parameters, then runs
# an experiment over the from-scratch algorithm's LR, FC_SIZE, EMBED_DIM and OPTIMIZER with the
# CLI (`automl experiment create … --watch`): BENCH_TRIALS (default 12) trials, 2 at a time,
# EPOCHS fixed at 20 (the default's own count), BENCH_SEARCH (default tpe) search, the median
# stopping rule, seed BENCH_SEED (default 7). Prints every trial's parameters, epochs,
# val_accuracy (the objective) and test accuracy (the run's held-out split, from its end
# message), the best trial against the default run, the epochs early stopping saved, the wall
# times, and the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/tools.sh

data=${AUTOML_BENCH_DATA:-data/clinc}
trials=${BENCH_TRIALS:-12}
search=${BENCH_SEARCH:-tpe}
seed=${BENCH_SEED:-7}
epochs=20
[ -f "$data/clinc-intents-part2.csv" ] || { log "missing $data/clinc-intents-part2.csv"; exit 1; }

ensure_grpcurl
log "building automl and automl-train (release)"
cargo build --release --locked -p automl --bin automl
cargo build --release --locked -p automl-text-classification --bin automl-train
automl=target/release/automl

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

AUTOML__DATA_DIR="$work/data" AUTOML__S3__EMBEDDED_BIND=127.0.0.1:0 RUST_LOG=warn \
  AUTOML__DATA_MANAGEMENT__PORT=0 AUTOML__METADATA_STORE__PORT=0 \
  AUTOML__PREDICTION_SERVICE__PORT=0 AUTOML__TRAINING_SERVICE__PORT=0 \
  AUTOML__TRAINING_SERVICE__MAX_CONCURRENT_JOBS=2 \
  AUTOML__WEB__HOST=127.0.0.1 AUTOML__WEB__PORT=0 \
  AUTOML__TELEMETRY__METRICS_HOST=127.0.0.1 AUTOML__TELEMETRY__METRICS_PORT=0 \
  "$automl" serve all >"$work/out" 2>"$work/err" &
server_pid=$!
dm='' ts='' ms=''
for _ in $(seq 1 100); do
  dm=$(sed -n 's/^automl: data-management listening on //p' "$work/out")
  ms=$(sed -n 's/^automl: metadata-store listening on //p' "$work/out")
  ts=$(sed -n 's/^automl: training-service listening on //p' "$work/out")
  [ -n "$ts" ] && [ -n "$ms" ] && [ -n "$dm" ] && break
  sleep 0.1
done
[ -n "$ts" ] || { cat "$work/err" >&2; exit 1; }
dm=127.0.0.1:${dm##*:} ts=127.0.0.1:${ts##*:} ms=127.0.0.1:${ms##*:}

log "dataset 1 from $data/clinc-intents-part2.csv"
"$automl" dataset --server "$dm" create --name clinc --file "$data/clinc-intents-part2.csv" >/dev/null
"$automl" dataset --server "$dm" prepare --dataset 1 --wait >/dev/null

now() { date +%s.%N; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
log "the default parameters: automl train --algorithm intent-classification"
start=$(now)
"$automl" train --server "$ts" --metadata-server "$ms" --dataset 1 --version hashAg== --algorithm intent-classification \
  --watch | grep -v '^epoch' >&2
default_wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')

log "the experiment: $trials trials, $search search, median stopping, seed $seed"
start=$(now)
"$automl" experiment --server "$ts" create --dataset 1 --version hashAg== \
  --algorithm intent-classification --name clinc-search --objective val_accuracy \
  --search LR=log:0.0005..0.05 --search FC_SIZE=int:64..512 --search EMBED_DIM=int:32..256 \
  --search OPTIMIZER=cat:sgd,adamw --param EPOCHS=$epochs \
  --max-trials "$trials" --parallel 2 --search-algorithm "$search" --seed "$seed" \
  --median-stop --watch >&2 || true
experiment_wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

call() { grpcurl -plaintext -d "$2" "$ts" "training.TrainingService/$1"; }
call GetExperiment '{"experiment_id":1}' >"$work/experiment.json"
call GetTrainingStatus '{"job_id":1}' >"$work/default.json"
python3 - "$work" <<'PY' >"$work/jobs"
import json, sys
experiment = json.load(open(f"{sys.argv[1]}/experiment.json"))
for trial in experiment.get("trials", []):
    print(trial["jobId"])
PY
: >"$work/statuses.jsonl"
while read -r job; do
  call GetTrainingStatus "{\"job_id\":$job}" | tr -d '\n' >>"$work/statuses.jsonl"
  echo >>"$work/statuses.jsonl"
done <"$work/jobs"

python3 - "$work" "$default_wall" "$experiment_wall" "$epochs" <<'PY'
import json, re, sys
work, default_wall, experiment_wall, planned = sys.argv[1], *sys.argv[2:4], int(sys.argv[4])
experiment = json.load(open(f"{work}/experiment.json"))
default = json.load(open(f"{work}/default.json"))
statuses = {}
for line in open(f"{work}/statuses.jsonl"):
    if line.strip():
        status = json.loads(line)
        statuses[status["jobId"]] = status

def test_accuracy(status):
    found = re.search(r"test accuracy ([0-9.]+)", status.get("message", ""))
    return float(found.group(1)) if found else None

spec = experiment["spec"]
print(f"experiment {experiment['experimentId']}: {experiment.get('status', 'EXPERIMENT_RUNNING')}: "
      f"{experiment.get('message', '')}")
print(f"search {spec.get('searchAlgorithm', 'SEARCH_RANDOM')}, seed {spec.get('seed')}, "
      f"{spec.get('maxTrials')} trials, {spec.get('parallelTrials')} at a time, EPOCHS={planned}")
print(f"{'trial':>5} {'run':>4}  {'parameters':52} {'epochs':>6} {'val_acc':>8} {'test_acc':>8}  state")
trained = saved = 0
for trial in experiment.get("trials", []):
    params = " ".join(f"{k}={v}" for k, v in sorted(trial.get("parameters", {}).items()))
    epochs = trial.get("epochs", 0)
    trained += epochs
    state = trial.get("status", "queuing")
    if trial.get("earlyStoppedEpoch"):
        saved += planned - epochs
        state += f" ({trial.get('message', '')})"
    elif state != "succeed":
        state += f" ({trial.get('message', '')})"
    objective = trial.get("objective")
    test = test_accuracy(statuses.get(trial["jobId"], {}))
    shown = lambda value: "-" if value is None else format(value, ".4f")
    print(f"{trial['trialNumber']:>5} {trial['runId']:>4}  {params:52} {epochs:>6} "
          f"{shown(objective):>8} {shown(test):>8}  {state}")
best = experiment.get("bestTrial")
default_test = test_accuracy(default)
print()
print(f"default parameters (run {default['jobId']}): test accuracy {default_test}, "
      f"wall {default_wall} s")
if best:
    best_test = test_accuracy(statuses.get(best["jobId"], {}))
    print(f"best trial {best['trialNumber']} (run {best['runId']}): val_accuracy "
          f"{best['objective']:.4f}, test accuracy {best_test}")
    if best_test is not None and default_test is not None:
        print(f"best - default test accuracy: {best_test - default_test:+.4f} "
              f"({'at least' if best_test >= default_test else 'BELOW'} the default's)")
total = len(experiment.get("trials", [])) * planned
print(f"epochs trained {trained} of {total} planned; early stopping saved {saved} "
      f"({100 * saved / max(total, 1):.0f} %)")
print(f"experiment wall {experiment_wall} s")
PY
