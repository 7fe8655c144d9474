#!/usr/bin/env bash
# scripts/bench.sh train: the intent classifier, candle (automl-train, release build, CPU) against
# a PyTorch reference of the same model, tokenizer, split, initial weights and hyperparameters
# (scripts/bench/reference.py, CPU, in its own virtualenv .venv/bench).
#
# Trains on clinc-intents-part2.csv and evaluates on clinc-intents-part1.csv (both normalized
# into the snapshot format first), then prints accuracy on all rows and on the in-scope intents
# (without `oos`), wall time, training examples per second, and the candle/PyTorch ratio.
#
# Then the algorithms as a user gets them, each with its defaults (no parameters):
# intent-classification, and intent-classification-encoder (all-MiniLM-L6-v2 from
# scripts/fetch-encoder.sh, FINETUNE=head) — in-scope accuracy on part1 and wall time — and
# the encoder's FINETUNE=full for BENCH_FULL_EPOCHS epochs (default 1; 0 skips it).
#
# Environment: EPOCHS LR BATCH_SIZE FC_SIZE EMBED_DIM SEED (defaults 15 4 64 128 64 42: the
# MiniAutoML values, for the candle/PyTorch comparison), AUTOML_BENCH_DATA (default data/clinc),
# BENCH_THREADS (compute threads of both sides: RAYON_NUM_THREADS for candle, OMP_NUM_THREADS for
# PyTorch; default: each library's own default, one per core), BENCH_DEFAULTS=0 skips the
# defaults part.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/tools.sh

data=${AUTOML_BENCH_DATA:-data/clinc}
venv=.venv/bench
export EPOCHS=${EPOCHS:-15} LR=${LR:-4} BATCH_SIZE=${BATCH_SIZE:-64} FC_SIZE=${FC_SIZE:-128}
export EMBED_DIM=${EMBED_DIM:-64} SEED=${SEED:-42} DEVICE=cpu EXCLUDE_LABEL=oos
if [ -n "${BENCH_THREADS:-}" ]; then
  export RAYON_NUM_THREADS=$BENCH_THREADS OMP_NUM_THREADS=$BENCH_THREADS
fi

for part in 1 2; do
  [ -f "$data/clinc-intents-part$part.csv" ] || { log "missing $data/clinc-intents-part$part.csv"; exit 1; }
done

log "building automl-train (release)"
cargo build --release --locked -p automl-text-classification --bin automl-train
trainer=target/release/automl-train

if ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
  log "installing PyTorch 2.15.0 (CPU use) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.15.0 numpy
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 scripts/bench/normalize.py "$data/clinc-intents-part2.csv" "$work/train"
python3 scripts/bench/normalize.py "$data/clinc-intents-part1.csv" "$work/eval"

now() { date +%s.%N; }
# Other work on the machine skews both sides (PyTorch's threads more): say how busy it was.
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

log "candle: automl-train --examples … --out …, then evaluate"
start=$(now)
"$trainer" --examples "$work/train/examples.csv" --labels "$work/train/labels.csv" \
  --out "$work/model" | tee "$work/candle.log" >&2
"$trainer" evaluate --model "$work/model" --examples "$work/eval/examples.csv" \
  --labels "$work/eval/labels.csv" --exclude-label oos >"$work/candle-eval.json"
end=$(now)
echo "{\"start\": $start, \"end\": $end}" >"$work/candle-wall.json"
sed -n 's/^summary //p' "$work/candle.log" >"$work/candle.json"

log "pytorch: scripts/bench/reference.py"
start=$(now)
"$venv/bin/python" scripts/bench/reference.py "$work/train" "$work/eval" >"$work/torch.json"
end=$(now)
echo "{\"start\": $start, \"end\": $end}" >"$work/torch-wall.json"

log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
load = lambda name: json.load(open(os.path.join(work, name)))
candle, candle_eval, candle_wall = load("candle.json"), load("candle-eval.json"), load("candle-wall.json")
torch, torch_wall = load("torch.json"), load("torch-wall.json")
p = os.environ
print(f"intent classifier: train clinc-intents-part2 ({candle['train_examples']} train / "
      f"{candle['validation_examples']} validation / {candle['test_examples']} test), "
      f"evaluate clinc-intents-part1 ({candle_eval['examples']} rows, "
      f"{candle_eval['in_scope_examples']} in scope)")
print(f"EPOCHS={p['EPOCHS']} LR={p['LR']} BATCH_SIZE={p['BATCH_SIZE']} FC_SIZE={p['FC_SIZE']} "
      f"EMBED_DIM={p['EMBED_DIM']} SEED={p['SEED']}, vocab {candle['vocab']} (pytorch {torch['vocab']}), "
      f"{torch['framework']} with {torch['threads']} threads")
rows = [
    ("test accuracy (split of part2)", candle["test_accuracy"], torch["test_accuracy"], ".4f"),
    ("accuracy part1, all rows", candle_eval["accuracy"], torch["eval_accuracy"], ".4f"),
    ("accuracy part1, in scope", candle_eval["in_scope_accuracy"], torch["eval_in_scope_accuracy"], ".4f"),
    ("training seconds", candle["train_seconds"], torch["train_seconds"], ".2f"),
    ("seconds to load, train, test", candle["wall_seconds"], torch["wall_seconds"], ".2f"),
    ("wall seconds (processes)", candle_wall["end"] - candle_wall["start"],
     torch_wall["end"] - torch_wall["start"], ".2f"),
    ("training examples/s", candle["examples_per_sec"], torch["examples_per_sec"], ".0f"),
]
print(f"{'':34} {'candle':>10} {'pytorch':>10}")
for name, a, b, fmt in rows:
    print(f"{name:34} {a:>10{fmt}} {b:>10{fmt}}")
print(f"candle/pytorch examples/s ratio: {candle['examples_per_sec'] / torch['examples_per_sec']:.2f}x")
PY

[ "${BENCH_DEFAULTS:-1}" = 0 ] && exit 0

ensure_encoder
# Every training parameter unset: what a job with no parameters trains.
unset EPOCHS LR BATCH_SIZE FC_SIZE EMBED_DIM SEED
results=$work/defaults.tsv
: >"$results"
# default_run NAME ALGORITHM [VAR=VALUE…]: trains with the defaults (plus the given settings),
# evaluates on part1, appends a row to $results.
default_run() {
  local name=$1 algorithm=$2 start end
  shift 2
  log "defaults: $name"
  start=$(now)
  env "$@" "$trainer" --algorithm "$algorithm" --encoder "$AUTOML_ENCODER_DIR" \
    --examples "$work/train/examples.csv" --labels "$work/train/labels.csv" \
    --out "$work/$name" | tee "$work/$name.log" >&2
  "$trainer" evaluate --model "$work/$name" --encoder "$AUTOML_ENCODER_DIR" \
    --examples "$work/eval/examples.csv" --labels "$work/eval/labels.csv" \
    --exclude-label oos >"$work/$name-eval.json"
  end=$(now)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$(sed -n 's/^summary //p' "$work/$name.log")" \
    "$(cat "$work/$name-eval.json")" "$start" "$end" >>"$results"
}
log "load average before the defaults: $(cut -d' ' -f1-3 /proc/loadavg)"
default_run bag intent-classification
default_run encoder-head intent-classification-encoder
if [ "${BENCH_FULL_EPOCHS:-1}" != 0 ]; then
  default_run encoder-full intent-classification-encoder FINETUNE=full EPOCHS="${BENCH_FULL_EPOCHS:-1}"
fi
log "load average after the defaults: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" <<'PY'
import json, sys
print()
print("defaults (no parameters): train clinc-intents-part2, evaluate clinc-intents-part1")
print(f"{'model':14} {'in-scope acc':>12} {'all rows':>9} {'test split':>10} {'train s':>8} {'wall s':>8} {'predict/s':>9}")
for line in open(sys.argv[1]):
    name, summary, evaluation, start, end = line.rstrip("\n").split("\t")
    summary, evaluation = json.loads(summary), json.loads(evaluation)
    print(f"{name:14} {evaluation['in_scope_accuracy']:>12.4f} {evaluation['accuracy']:>9.4f} "
          f"{summary['test_accuracy']:>10.4f} {summary['train_seconds']:>8.1f} "
          f"{float(end) - float(start):>8.1f} {evaluation['predictions_per_sec']:>9.0f}")
PY
