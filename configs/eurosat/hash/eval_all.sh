#!/bin/sh
# Evaluate every exported hashing model of models/eurosat-hash/ (test -> train, Hamming and float mAP@100) into
# runs/eurosat-hash-eval/<name>/, then print the docs/results.md table. Models already evaluated are skipped.
set -e
cd "$(dirname "$0")/../../.."
for model in models/eurosat-hash/*.onnx; do
    name=$(basename "$model" .onnx)
    [ -f "runs/eurosat-hash-eval/$name/results.json" ] && continue
    .venv/bin/rsir eval "$model" ../shared/data/eurosat_rgb --no-baselines --out "runs/eurosat-hash-eval/$name" | tail -1
done
.venv/bin/python bench/collate_hashing.py --evals runs/eurosat-hash-eval \
    --baselines runs/eurosat-hash-eval/baselines-3ep="3 epochs" --baselines runs/eurosat-hash-eval/baselines="10 epochs"
