#!/bin/sh
# Train every loss of configs/eurosat/ in turn (CPU: ~7 min each on 2 cores) and export each best.pt to
# models/eurosat/<loss>.onnx. Rerunning resumes unfinished runs and skips finished ones.
set -e
cd "$(dirname "$0")/../.."
for loss in ${LOSSES:-snca-ce contrastive triplet-batch-hard triplet-semi-hard normalized-softmax nca snca rotation-snca
    rotation-snca-w0.1 rotation-snca-any-w0.1}; do
    if [ -f "models/eurosat/$loss.onnx" ]; then echo "== $loss: done"; continue; fi
    echo "== $loss"
    .venv/bin/rsir train "configs/eurosat/$loss.toml" --export "models/eurosat/$loss.onnx"
done
