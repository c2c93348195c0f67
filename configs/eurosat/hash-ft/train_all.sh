#!/bin/sh
# Deep hashing fine-tuned from the 96 px float model (docs/results.md, "Deep hashing from the 96 px model"): trains
# the 96 px semi-hard triplet model first if its run is missing, then MiLAN at 16, 32, 64 and 128 bits and quantised
# SNCA hashing at 16, 32, 64 and 128 bits started from it, exporting models/eurosat-hash-ft/<method>-<K>.onnx.
# Rerunning resumes unfinished runs, skips finished ones.
set -e
cd "$(dirname "$0")/../../.."
.venv/bin/rsir train configs/eurosat/best-triplet-semi-hard-96px-9ep.toml \
    --export models/eurosat/best-triplet-semi-hard-96px-9ep.onnx
mkdir -p models/eurosat-hash-ft
for run in milan-32 milan-64 milan-16 milan-128 snca-hash-32 snca-hash-64 snca-hash-16 snca-hash-128; do
    .venv/bin/rsir train "configs/eurosat/hash-ft/$run.toml" --export "models/eurosat-hash-ft/$run.onnx"
done
