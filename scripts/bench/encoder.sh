#!/usr/bin/env bash
# scripts/bench.sh encoder: sentence-encoder throughput, the pretrained all-MiniLM-L6-v2
# (scripts/fetch-encoder.sh) in candle (`automl-train encoder-bench`, release build, CPU) against
# the same model in PyTorch with transformers (scripts/bench/encoder_reference.py, CPU, in the
# virtualenv .venv/bench shared with scripts/bench/train.sh).
#
# Both sides encode the utterances of data/clinc/clinc-intents-part1.csv, one per line, in order,
# in batches of each size (padding to the longest sentence of the batch, truncation at 128
# tokens, mean pooling, L2 normalisation), pass after pass, for at least BENCH_SECONDS per batch
# size after one warm-up batch, and print one JSON line per batch size. The table gives candle's
# and PyTorch's sentences per second and their ratio for each batch size, with the load average
# before and after (other work on the machine skews both sides, PyTorch's threads more).
#
# Environment: BENCH_SECONDS (per batch size, default 10), BENCH_BATCH_SIZES (default 32,1),
# BENCH_THREADS (compute threads of both sides: RAYON_NUM_THREADS for candle, OMP_NUM_THREADS for
# PyTorch; default: the number of CPUs, `nproc`), AUTOML_TRAIN_BIN (an automl-train binary to
# use; then nothing is built), AUTOML_CACHE_DIR (where the encoder is cached, default
# ~/.cache/automl).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/tools.sh

data=data/clinc/clinc-intents-part1.csv
venv=.venv/bench
seconds=${BENCH_SECONDS:-10}
batch_sizes=${BENCH_BATCH_SIZES:-32,1}
threads=${BENCH_THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads

[ -f "$data" ] || { log "missing $data"; exit 1; }

if [ -n "${AUTOML_TRAIN_BIN:-}" ]; then
  trainer=$AUTOML_TRAIN_BIN
else
  log "building automl-train (release)"
  cargo build --release --locked -p automl-text-classification --bin automl-train
  trainer=target/release/automl-train
fi

ensure_encoder
encoder=$AUTOML_ENCODER_DIR

if ! "$venv/bin/python" -c 'import torch, numpy, transformers' 2>/dev/null; then
  log "installing PyTorch 2.15.0 and transformers 5.24.0 (CPU use) into $venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.15.0 numpy transformers==5.24.0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The utterances (first CSV field, unquoted), one per line.
python3 - "$data" "$work/sentences.txt" <<'PY'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as src, \
        open(sys.argv[2], "w", encoding="utf-8") as dst:
    for row in csv.reader(src):
        if row and row[0].strip():
            dst.write(" ".join(row[0].split()) + "\n")
PY
log "$(wc -l <"$work/sentences.txt") sentences from $data; encoder $encoder"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(loadavg)
log "load average before: $load_before"

log "candle: $trainer encoder-bench (batch sizes $batch_sizes, ${seconds}s each, $threads threads)"
"$trainer" encoder-bench --encoder "$encoder" --sentences "$work/sentences.txt" \
  --batch-sizes "$batch_sizes" --seconds "$seconds" | tee "$work/candle.jsonl" >&2
load_between=$(loadavg)

log "pytorch: scripts/bench/encoder_reference.py ($threads threads)"
"$venv/bin/python" scripts/bench/encoder_reference.py "$encoder" "$work/sentences.txt" \
  --batch-sizes "$batch_sizes" --seconds "$seconds" | tee "$work/torch.jsonl" >&2

load_after=$(loadavg)
log "load average after: $load_after"

python3 - "$work" "$seconds" "$load_before" "$load_between" "$load_after" <<'PY'
import json, os, sys

work, seconds, before, between, after = sys.argv[1:]


def lines(name):
    """The JSON objects among the lines of WORK/NAME (other output is skipped)."""
    out = []
    with open(os.path.join(work, name), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def split(objs):
    check = next((o for o in objs if "check" in o), None)
    runs = {o["batch"]: o for o in objs if "batch" in o and "sentences_per_sec" in o}
    return check, runs


candle_check, candle = split(lines("candle.jsonl"))
torch_check, torch = split(lines("torch.jsonl"))
if not candle and not torch:
    sys.exit("no results from either side")


def describe(runs, name):
    if not runs:
        return f"{name}: no results"
    run = next(iter(runs.values()))
    framework = run.get("framework")
    return f"{name}: {framework + ', ' if framework else ''}{run.get('threads', '?')} threads"


sentences = sum(1 for _ in open(os.path.join(work, "sentences.txt"), encoding="utf-8"))
print(f"sentence encoder all-MiniLM-L6-v2: {sentences} sentences of clinc-intents-part1, "
      f"at least {seconds}s per batch size")
print(f"{describe(candle, 'candle')}; {describe(torch, 'pytorch')}")
for name, check in (("candle", candle_check), ("pytorch", torch_check)):
    if check:
        values = ", ".join(f"{v:.6f}" for v in check["check"])
        print(f"check {name:8} [{values}] cosine {check['cosine']:.4f}")
if candle_check and torch_check:
    diff = max(abs(a - b) for a, b in zip(candle_check["check"], torch_check["check"]))
    print(f"check max |candle - pytorch| {diff:.2e}, cosine difference "
          f"{abs(candle_check['cosine'] - torch_check['cosine']):.2e}")

print(f"{'batch':>6} {'candle sent/s':>14} {'pytorch sent/s':>15} {'candle/pytorch':>15}")
for batch in sorted(set(candle) | set(torch), reverse=True):
    c = candle.get(batch, {}).get("sentences_per_sec")
    t = torch.get(batch, {}).get("sentences_per_sec")
    cs = f"{c:.1f}" if c is not None else "-"
    ts = f"{t:.1f}" if t is not None else "-"
    ratio = f"{c / t:.2f}x" if c is not None and t else "-"
    print(f"{batch:>6} {cs:>14} {ts:>15} {ratio:>15}")
print(f"load average (1, 5, 15 min): before {before}, between the sides {between}, after {after}")
PY
