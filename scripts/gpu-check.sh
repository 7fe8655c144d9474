#!/usr/bin/env bash
# The encoder's full fine-tuning on the GPU against the CPU: builds automl-train with CUDA,
# runs the same STEPS steps from the same seed on both devices (`automl-train encoder-steps`,
# all-MiniLM-L6-v2 from scripts/fetch-encoder.sh, CLINC sentences), compares the two loss
# curves and prints sentences per second on each. Needs an NVIDIA GPU and its driver.
#
# The curves cannot match bit for bit (different kernels sum in different orders); they must
# agree within TOLERANCE (default 0.02) in mean absolute difference over the steps, and the
# last 20 steps' mean loss must be within 5% of each other.
#
# Environment: STEPS (default 300; the CPU side runs CPU_STEPS, default min(STEPS, 60), the
# same first steps), BATCH_SIZE (32), SEED (42), TOLERANCE, CUDA_COMPUTE_CAP (default 90).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh

steps=${STEPS:-300}
cpu_steps=${CPU_STEPS:-$(( steps < 60 ? steps : 60 ))}
tolerance=${TOLERANCE:-0.02}
export BATCH_SIZE=${BATCH_SIZE:-32} SEED=${SEED:-42} FINETUNE=full

if ! command -v nvidia-smi >/dev/null; then
  log "no nvidia-smi: this check needs an NVIDIA GPU"
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
if ! command -v nvcc >/dev/null; then
  log "no nvcc on PATH: using the CUDA toolkit from PyPI (scripts/cuda-toolkit.sh)"
  eval "$(scripts/cuda-toolkit.sh)"
fi
log "building automl-train with CUDA (compute capability ${CUDA_COMPUTE_CAP:-from nvidia-smi})"
cargo build --release --locked -p automl-text-classification --bin automl-train --features cuda
trainer=target/release/automl-train
ensure_encoder

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 scripts/bench/normalize.py data/clinc/clinc-intents-part2.csv "$work/data"
run() {
  DEVICE=$1 "$trainer" encoder-steps --encoder "$AUTOML_ENCODER_DIR" \
    --examples "$work/data/examples.csv" --labels "$work/data/labels.csv" --steps "$2" | tail -1
}
log "cuda: $steps steps"
run cuda "$steps" >"$work/cuda.json"
log "cpu: $cpu_steps steps"
run cpu "$cpu_steps" >"$work/cpu.json"
python3 - "$work/cuda.json" "$work/cpu.json" "$tolerance" <<'PY'
import json, sys
cuda, cpu = (json.load(open(p)) for p in sys.argv[1:3])
tolerance = float(sys.argv[3])
n = min(len(cuda["losses"]), len(cpu["losses"]))
diff = sum(abs(a - b) for a, b in zip(cuda["losses"][:n], cpu["losses"][:n])) / n
tail = min(20, n)
end_cuda = sum(cuda["losses"][n - tail:n]) / tail
end_cpu = sum(cpu["losses"][n - tail:n]) / tail
print(f"steps compared: {n} (batch {cuda['batch_size']})")
print(f"loss first/last: cuda {cuda['losses'][0]:.4f} -> {cuda['losses'][-1]:.4f} "
      f"(step {len(cuda['losses'])}), cpu {cpu['losses'][0]:.4f} -> {cpu['losses'][n - 1]:.4f} (step {n})")
print(f"mean |cuda - cpu| over {n} steps: {diff:.5f} (tolerance {tolerance})")
print(f"mean of the last {tail} compared steps: cuda {end_cuda:.4f}, cpu {end_cpu:.4f}")
print(f"training sentences/s: cuda {cuda['sentences_per_sec']:.1f}, cpu {cpu['sentences_per_sec']:.1f}, "
      f"ratio {cuda['sentences_per_sec'] / cpu['sentences_per_sec']:.1f}x")
ok = diff <= tolerance and abs(end_cuda - end_cpu) <= 0.05 * max(end_cpu, 1e-9)
print("gpu-check: " + ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
PY
