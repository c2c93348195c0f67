"""Encoder throughput: onnxruntime (core/encoder) vs torch eager, same model, input size and threads, same run.

    .venv/bin/python bench/encode.py --model models/efficientnet_lite0_imagenet_lsh64.onnx
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.encoder import Encoder


def best_rate(run, images: np.ndarray, batch: int, repeats: int) -> float:
    """Images per second of `run(batch_array)` over `images`, best of `repeats` after one warm-up pass."""
    def one_pass():
        for i in range(0, len(images), batch):
            run(images[i:i + batch])

    one_pass()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - t)
    return len(images) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="ONNX model made by `rsir export --pretrained efficientnet_lite0`")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from training.pretrained import imagenet_lsh_net

    torch.set_num_threads(args.threads)
    enc = Encoder(args.model, device="cpu", threads=args.threads)
    size = enc.info.input_size
    raw = np.random.default_rng(0).uniform(0, 255, (args.images, 3, size, size)).astype(np.float32)
    net = imagenet_lsh_net(bits=enc.info.code_bits).eval()

    def ort_run(x):
        enc.session.run(None, {"input": enc.preprocess(x)})

    def torch_run(x):
        with torch.inference_mode():
            net(torch.from_numpy(enc.preprocess(x)))

    rows = []
    for batch, images in ((1, raw[: args.images // 4]), (64, raw)):
        t_rate = best_rate(torch_run, images, batch, args.repeats)
        o_rate = best_rate(ort_run, images, batch, args.repeats)
        rows.append((batch, t_rate, o_rate))
    print(f"EfficientNet-Lite0 + {enc.info.code_bits}-bit LSH head, {size}x{size} px input, {args.threads} threads, "
          f"best of {args.repeats}")
    print("| batch | torch eager (img/s) | onnxruntime (img/s) | onnxruntime / torch |")
    print("|---|---|---|---|")
    for batch, t_rate, o_rate in rows:
        print(f"| {batch} | {t_rate:.0f} | {o_rate:.0f} | {o_rate / t_rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
