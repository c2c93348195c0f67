#!/bin/sh
# Multi-label comparison on EuroSAT mosaics (docs/results.md "Multi-label"): make the mosaics once, train each
# loss (CPU, 2 cores) and export best.pt to models/eurosat_mosaics/<loss>.onnx, then score each with rsir eval.
# Rerunning resumes unfinished runs and skips finished ones.
set -e
cd "$(dirname "$0")/../.."
[ -f cache/eurosat_mosaics/labels.csv ] || .venv/bin/rsir mosaics ../shared/data/eurosat_rgb/split.csv --out cache/eurosat_mosaics
for loss in ${LOSSES:-contrastive bce sndl sndl-bce}; do
    if [ ! -f "models/eurosat_mosaics/$loss.onnx" ]; then
        echo "== train $loss"
        .venv/bin/rsir train "configs/eurosat_mosaics/$loss.toml" --export "models/eurosat_mosaics/$loss.onnx" -q
    fi
    echo "== eval $loss"
    .venv/bin/rsir eval "models/eurosat_mosaics/$loss.onnx" cache/eurosat_mosaics/labels.csv --bits 64 \
        --out "runs/eurosat_mosaics/eval-$loss" --threads 2 $([ "$loss" = contrastive ] || echo --no-baselines)
done
