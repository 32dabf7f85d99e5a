#!/usr/bin/env bash
# The GPU benchmark of docs/benchmarks.md: ours (train and eval steps, batch 32 / 64 / 128, float32
# and bfloat16: clips/s, compile time, peak device memory, MFU) beside the authors' PyTorch
# model (batch 32, float32 and autocast). Under 8 minutes on one H100 / H200.
#
#   scripts/gpu_benchmark.sh [OUTPUT_DIR]        (default: gpu_benchmark)
#
# Writes OUTPUT_DIR/results.jsonl (one JSON line per setting, both models),
# OUTPUT_DIR/summary.md (the tables and the ratios docs/benchmarks.md quotes), OUTPUT_DIR/*.log
# (each command's stderr) and OUTPUT_DIR/environment.txt.
#
# What the host needs: jax with CUDA (jax[cuda12] or [cuda13]), flax, optax, absl, numpy,
# torch (for the reference only), and two small pure-Python packages that GPU images often
# lack, ml-collections and einops (the reference's). Neither TensorFlow nor clu is needed:
# the benchmark's train and eval paths never import them (tests/test_export.py checks it).
# Bring the wheels along where the host has no index:
#     pip download --no-deps -d wheels ml-collections einops     # on a machine with one
#     pip install --no-index --no-deps wheels/*.whl              # on the GPU host
# (or, without installing: PYTHONPATH=$(ls -d $PWD/wheels/*.whl | paste -sd:), as pure-Python
# wheels import from the zip).
#
# The reference code is not part of this project. Get it with
#     git clone https://github.com/zengqunzhao/Former-DFER /tmp/Former-DFER
# and pass it as FORMER_DFER_REFERENCE=/tmp/Former-DFER; without it the reference rows are
# skipped (and said so in the summary).
#
# Environment (defaults in brackets): PYTHON [python], FORMER_DFER_REFERENCE [unset],
# BATCH_SIZES [32,64,128], DTYPES [bfloat16,float32], STEPS [20], WARMUP [3],
# REFERENCE_BATCH [32], REFERENCE_STEPS [20], CONFIG [configs/dfew.py],
# EXTRA_FLAGS [none: extra --config.* overrides for ours, e.g. for a CPU smoke test],
# BUDGET_S [450: sections not started by then are skipped, so the whole stays < 8 min].
set -uo pipefail

cd "$(dirname "$0")/.."
out=${1:-gpu_benchmark}
mkdir -p "$out"
results=$out/results.jsonl
: >"$results"
PY=${PYTHON:-python}
BATCH_SIZES=${BATCH_SIZES:-32,64,128}
DTYPES=${DTYPES:-bfloat16,float32}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
REFERENCE_BATCH=${REFERENCE_BATCH:-32}
REFERENCE_STEPS=${REFERENCE_STEPS:-20}
CONFIG=${CONFIG:-configs/dfew.py}
BUDGET_S=${BUDGET_S:-450}
read -r -a extra <<<"${EXTRA_FLAGS:-}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null ||
    echo 'nvidia-smi: not available'
  "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__); print(jax.devices())'
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
    2>&1 | tail -1
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
} >"$out/environment.txt" 2>&1
cat "$out/environment.txt"

skipped=()
# section NAME COMMAND...: runs COMMAND (JSON lines to results.jsonl, stderr to NAME.log)
# unless the budget is spent; a failing section is reported and the next one runs.
section() {
  local name=$1
  shift
  if ((SECONDS >= BUDGET_S)); then
    skipped+=("$name (budget of ${BUDGET_S}s spent)")
    return
  fi
  echo "[${SECONDS}s] $name" >&2
  "$@" 2>"$out/$name.log" | grep --line-buffered '^{' | tee -a "$results"
  local status=${PIPESTATUS[0]}
  if ((status != 0)); then
    skipped+=("$name (exit status $status, see $out/$name.log)")
  fi
}

ours() {  # ours WHAT DTYPE
  "$PY" -m former_dfer_jax.benchmark --what="$1" --config="$CONFIG" \
    --config.model.compute_dtype="$2" --batch_size="$BATCH_SIZES" \
    --steps="$STEPS" --warmup="$WARMUP" "${extra[@]}"
}

reference() {  # reference WHAT
  "$PY" scripts/torch_reference_benchmark.py --reference_dir="$FORMER_DFER_REFERENCE" \
    --what="$1" --batch_size="$REFERENCE_BATCH" --precision=float32,autocast \
    --steps="$REFERENCE_STEPS" --warmup="$WARMUP"
}

IFS=, read -r -a dtypes <<<"$DTYPES"
# The most important rows first: if the budget runs out, the float32 eval goes.
section "ours_train_${dtypes[0]}" ours train "${dtypes[0]}"
if [[ -n ${FORMER_DFER_REFERENCE:-} ]]; then
  section reference_train reference train
else
  skipped+=('reference (FORMER_DFER_REFERENCE not set)')
fi
for dtype in "${dtypes[@]:1}"; do
  section "ours_train_$dtype" ours train "$dtype"
done
for dtype in "${dtypes[@]}"; do
  section "ours_eval_$dtype" ours eval "$dtype"
done
if [[ -n ${FORMER_DFER_REFERENCE:-} ]]; then
  section reference_eval reference eval
fi

printf '%s\n' "${skipped[@]}" >"$out/skipped.txt"
"$PY" scripts/summarize_benchmark.py "$results" --skipped="$out/skipped.txt" \
  >"$out/summary.md"
cat "$out/summary.md"
echo "[${SECONDS}s] done: $out" >&2
