#!/usr/bin/env bash
# The proxy-budget ablations of reports/experiments/table.md: each run changes one thing from cpu-vit-224B-aug and
# trains for the same 12,000 images; "recipe-*" runs combine the changes that won. Finished runs are skipped, so
# this resumes where it stopped.
#   bash scripts/ablations.sh SHARD_DIR [OLD_SHARD_DIR]   # SHARD_DIR from compressor.tools.make_shards
set -euo pipefail
SHARDS="${1:?frame shards from compressor.tools.make_shards}"
OLD="${2:-}"  # the 12 training clips of the first data set (+ the same val shards), for the data ablation
IMAGES="${IMAGES:-12000}"
BASE="configs/cpu-vit-224B-aug.yaml configs/experiments/proxy.yaml"
run() { python -m compressor.tools.experiments run "$1" --images "$IMAGES" --shards "${SHARDS_OVERRIDE:-$SHARDS}" --config $BASE "${@:2}"; }
run baseline
run loss-mse --set model.loss.l1_weight=0 model.loss.ms_ssim_weight=0
run fsq-standardized --set model.quantizer.class_path=compressor.codec.quantizers.StandardizedFSQ
run head-refine --set model.decoder.class_path=compressor.codec.decoders.ViTRefineDecoder
# fsq-standardized won (+0.84 dB), so the next changes are made on top of it.
STD="model.quantizer.class_path=compressor.codec.quantizers.StandardizedFSQ"
run std+head-refine --set $STD model.decoder.class_path=compressor.codec.decoders.ViTRefineDecoder
run std+lr-2e-3-warmup-100 --set $STD model.lr=2e-3 model.warmup_steps=100
run std+balance-enc2-dec7 --set $STD model.encoder.init_args.depth=2 model.decoder.init_args.depth=7
# The data ablation on the baseline recipe (plain FSQ has no statistics for the EMA fix to change, so it compares
# with `baseline` as measured): the first data set's 12 training clips instead of the 21.
[ -n "$OLD" ] && SHARDS_OVERRIDE="$OLD" run data-old-12-clips
# Not run yet: std+loss-mse. The scaling runs are in scaling.sh.
