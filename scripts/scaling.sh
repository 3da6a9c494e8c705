#!/usr/bin/env bash
# The runs behind reports/scaling.png and the conv-stem comparison of docs/experiments.md: today's recipe
# (cpu-vit-224B-aug, plain FSQ) and the recommended one (cpu-best-224B, StandardizedFSQ) at several image budgets, and
# the conv stem under the recommended recipe. Finished runs are skipped, so this resumes where it stopped. Run it
# alone: on 2 cores anything beside a training run stalls it (docs/experiments.md).
#   bash scripts/scaling.sh SHARD_DIR   # SHARD_DIR from compressor.tools.make_shards
set -euo pipefail
SHARDS="${1:?frame shards from compressor.tools.make_shards}"
PROXY=configs/experiments/proxy.yaml
TODAY="configs/cpu-vit-224B-aug.yaml $PROXY"
BEST="configs/cpu-best-224B.yaml $PROXY"
# The conv stem and its conv upsampling head, with the recipe's quantizer and augmentation.
CONV="configs/cpu-best-224B.yaml configs/cpu-convstem-224B.yaml $PROXY"
CONV_SET="model.quantizer.class_path=compressor.codec.quantizers.StandardizedFSQ data.augment=true"
run() {  # NAME IMAGES "CONFIGS" [key=value ...]
  local name=$1 images=$2 configs=$3; shift 3
  python -m compressor.tools.experiments run "$name" --images "$images" --shards "$SHARDS" --config $configs \
    --set trainer.val_check_interval=$((images >= 48000 ? 500 : 250)) "$@"
}
# 12k-image points of both recipes are `baseline` and `fsq-standardized` of ablations.sh; 180k of the recommended
# recipe is cpu-best-180k (docs/experiments.md).
run std+convstem 12000 "$CONV" $CONV_SET
run best-48k 48000 "$BEST"
run today-48k 48000 "$TODAY"
run today-6k 6000 "$TODAY"
run best-12k 12000 "$BEST"  # fsq-standardized again, with the EMA statistics fix (calibrate_ema)
run best-6k 6000 "$BEST"
