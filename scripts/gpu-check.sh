#!/usr/bin/env bash
# Every GPU check in one go, where torch sees a GPU (about 5 minutes on one GPU):
#   the CUDA tests (training on the GPU in fp32 / bf16 / fp16 against the CPU, the adapter
#   benchmark's GPU path), the demo fine-tuning on the GPU in bf16, and the adapter benchmark
#   on MiniLM on the GPU. Results go to $OUT (default gpu-check/).
#   PYTHON=... picks the interpreter (one with a CUDA build of torch and deeplora[dev]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
$PY - <<'PYCODE'
import torch
assert torch.cuda.is_available(), "torch sees no GPU: run this where one is"
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PYCODE
$PY -m pytest -q -p no:cacheprovider -k "cuda or gpu" \
    tests/finetune/test_hardware.py tests/bench/test_bench_adapters.py 2>&1 | tee "$OUT/pytest.txt"
$PY -m deeplora.cli finetune --demo --device cuda --precision bf16 --no-progress \
    --out "$OUT/finetune-demo-bf16" --overwrite 2>&1 | tee "$OUT/finetune-demo-bf16.txt"
$PY -m deeplora.cli bench adapters --models minilm --device cuda \
    --json "$OUT/adapters-minilm-cuda.json" 2>&1 | tee "$OUT/adapters-minilm-cuda.txt"
echo "gpu-check: done; results in $OUT/"
