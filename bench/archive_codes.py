"""What fitting an index's codes on its archive costs, next to encoding the same tiles (core/index/archive_codes.py).

    .venv/bin/python bench/archive_codes.py [--model default_model/lite2_multidomain_general448v2.onnx]

Fits PCA-ITQ on N synthetic embeddings of the model's width (float16, as the index stores them) and recodes all N,
for N = 10k, 100k, 1M; the baseline, measured in the same run, is the model encoding 256 tiles of 96 px (its
default read of a EuroSAT-size tile), scaled to N tiles. The table gives seconds and the fit's share of a build.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.default_model import default_model_path  # noqa: E402
from core.encoder import Encoder  # noqa: E402
from core.index import archive_codes  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = ap.parse_args()
    enc = Encoder(args.model, batch_size=64)
    bits, dim = enc.info.effective_code_bits, enc.info.embedding_dim
    pixels = np.random.default_rng(0).uniform(0, 255, (256, enc.info.channels, 96, 96)).astype(np.float32)
    enc.encode(pixels[:64])  # warm-up
    t0 = time.perf_counter()
    enc.encode(pixels)
    per_tile = (time.perf_counter() - t0) / len(pixels)
    print(f"model {os.path.basename(args.model)}: {dim}-d, {bits}-bit codes; encoding {1 / per_tile:.0f} tiles/s "
          f"(96 px, batch 64)\n")
    print("| tiles | fit (s) | recode (s) | encoding them (s, baseline) | fit + recode / encoding |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for n in args.sizes:
        emb = rng.normal(size=(n, dim)).astype(np.float16)
        t0 = time.perf_counter()
        fitted = archive_codes.fit(emb, bits)
        fit_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            archive_codes.recode(emb, os.path.join(tmp, "codes.u8"), fitted)
            recode_s = time.perf_counter() - t0
        encode_s = n * per_tile
        print(f"| {n:,} | {fit_s:.1f} | {recode_s:.1f} | {encode_s:,.0f} | {(fit_s + recode_s) / encode_s:.2%} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
