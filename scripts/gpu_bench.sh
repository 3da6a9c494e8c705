#!/usr/bin/env bash
# The one-command GPU benchmark, for a machine with CUDA PyTorch and no network:
#   bash scripts/gpu_bench.sh [OUTPUT_DIR]          # default reports/bench-gpu; about 3-4 minutes
# It resolves configs with train.py's LightningCLI parser, so it needs the [train] extra beside torch. Where the image
# lacks them, bring their wheels in wheels/, fetched once on a machine with package access:
#   pip download -d wheels einops==0.8.2 pytorch-msssim==1.0.0 pytorch-lightning==2.6.6 "jsonargparse[signatures]==4.53.0"
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root, where compressor/ and configs/ are
OUT="${1:-reports/bench-gpu}"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import einops, pytorch_msssim, pytorch_lightning, jsonargparse" 2>/dev/null; then
    "$PY" -m pip install --no-index --find-links wheels einops pytorch-msssim pytorch-lightning "jsonargparse[signatures]"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
"$PY" -m compressor.tools.bench_train --device cuda --output "$OUT"
