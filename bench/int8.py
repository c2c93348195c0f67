"""Encoder throughput of models and their int8 copies against a baseline model, same images, threads and run.

    .venv/bin/python bench/int8.py models/eurosat/default96.onnx models/eurosat/default96.int8.onnx \
        models/eurosat/default96.int8-dynamic.onnx

The first model is the baseline; every model goes through core/'s Encoder (preprocessing included).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.encode import best_rate  # noqa: E402
from core.encoder import Encoder  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="ONNX models; the first is the baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dataset", help="a folder per class (e.g. ../shared/data/eurosat_rgb): time and compare on "
                                      "its test images instead of random pixels")
    ap.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache of training/ ('' = none)")
    args = ap.parse_args()

    encoders = [Encoder(m, device="cpu", threads=args.threads) for m in args.models]
    pick = np.random.default_rng(0)
    by_size: dict[int, np.ndarray] = {}
    rows = None  # the test images picked, the same at every size

    def inputs(info) -> np.ndarray:
        """The same images for every model, read at that model's input size (as the tiler reads tiles)."""
        nonlocal rows
        size = info.input_size
        if size not in by_size:
            if args.dataset:
                from training.datasets import load_folder

                test = load_folder(args.dataset, list(info.bands), size, args.cache_dir or None)["test"].pixels
                if rows is None:
                    rows = pick.choice(len(test), args.images, replace=False)
                by_size[size] = test[rows].astype(np.float32)
            else:
                by_size[size] = pick.uniform(0, 255, (args.images, info.channels, size, size)).astype(np.float32)
        return by_size[size]

    base_info = encoders[0].info
    emb0 = encoders[0].encode(inputs(base_info))[0]
    print(f"{args.threads} threads, best of {args.repeats}, "
          f"{'test images of ' + args.dataset if args.dataset else 'random pixels'} at each model's input size; "
          f"cosine = mean cosine of each model's embedding with the baseline's on the same {args.images} inputs "
          f"(only for copies of the baseline's checkpoint)")
    print("| model | px | views | quantisation | MB | batch 1 (img/s) | batch 64 (img/s) | x baseline (batch 1 / 64) "
          "| cosine |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for path, enc in zip(args.models, encoders):
        raw = inputs(enc.info)
        rates = [best_rate(lambda x: enc.encode(x), raw[:n], batch, args.repeats)
                 for batch, n in ((1, args.images // 4), (64, args.images))]
        base = base or rates
        meta = enc.session.get_modelmeta().custom_metadata_map
        # a copy: the same training run, input and embedding (the fast copy drops the general branch, and
        # another general branch gives another embedding from the same run)
        same = (meta.get("rsir.train_config_sha256") == base_info.metadata.get("rsir.train_config_sha256")
                and enc.info.input_size == base_info.input_size and enc.info.embedding_dim == base_info.embedding_dim
                and meta.get("rsir.general_branch") == base_info.metadata.get("rsir.general_branch"))
        cos = f"{float(np.mean(np.sum(enc.encode(raw)[0] * emb0, axis=1))):.4f}" if same else "-"
        quant = meta.get("rsir.quantization", "float32").split(" (")[0]
        if "rsir.weight_storage" in meta:
            quant += f", {meta['rsir.weight_storage']} weights"
        print(f"| {os.path.basename(path)} | {enc.info.input_size} | {enc.info.views} | {quant} | "
              f"{os.path.getsize(path) / 1e6:.1f} | {rates[0]:.0f} | {rates[1]:.0f} | "
              f"{rates[0] / base[0]:.2f}x / {rates[1] / base[1]:.2f}x | {cos} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
