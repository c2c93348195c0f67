"""Does averaging a model's embedding over several input scales help? EuroSAT test -> train mAP@100 of each scale
alone and of every combination (embeddings L2-normalised per scale, summed; hash logits summed, then signed).

The exported graph has a fixed input side; this copies it with a free side (the network is fully convolutional)
and feeds EuroSAT's 64 px patches resampled to each scale, as `rsir eval` does at the model's own scale.

    .venv/bin/python bench/scale_views.py default_model/eurosat_rgb_lite0_milan128_rot4_wcw.onnx --sizes 88,96,104
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.encoder import Encoder, l2_normalise  # noqa: E402
from training.datasets import load_split_csv  # noqa: E402
from training.evaluate import score  # noqa: E402


def free_side_copy(model_path: str, out_path: str) -> None:
    """`model_path` with its input's height and width made symbolic."""
    m = onnx.load(model_path)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(m, out_path)


def embed(enc: Encoder, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(L2-normalised embeddings, hash logits or None) at whatever side `pixels` has (Encoder.encode insists on
    the model's own side and packs the codes)."""
    names = [enc.info.outputs["embedding"]] + ([enc.info.outputs["code"]] if enc.info.has_hash else [])
    parts = [enc.session.run(names, {enc.input_name: enc.preprocess(pixels[i:i + enc.batch_size])})
             for i in range(0, len(pixels), enc.batch_size)]
    emb = l2_normalise(np.concatenate([p[0] for p in parts]))
    return emb, (np.concatenate([p[1] for p in parts]) if enc.info.has_hash else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--split-csv", default="../shared/data/eurosat_rgb/split.csv")
    ap.add_argument("--sizes", default="88,96,104", help="input sides in px (default: %(default)s)")
    ap.add_argument("--cache", default="cache", help="decoded-image cache folder (default: %(default)s)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        free = os.path.join(tmp, "free_side.onnx")
        free_side_copy(args.model, free)
        enc = Encoder(free, threads=os.cpu_count(), batch_size=128)
        out = {}
        for s in sizes:
            sets = load_split_csv(args.split_csv, enc.info.bands, s, args.cache, ("train", "test"))
            for split, images in sets.items():
                t = time.perf_counter()
                emb, logits = embed(enc, images.pixels)
                out[s, split] = (emb, logits, images.labels, images.class_names)
                print(f"{s} px {split}: {len(images)} images in {time.perf_counter() - t:.0f} s", flush=True)
    print("\n| scales (px) | float mAP@100 | P@1 | Hamming mAP@100 | P@1 |\n|---|---|---|---|---|")
    combos = [c for r in range(1, len(sizes) + 1) for c in itertools.combinations(sizes, r)]
    for combo in combos:
        q_y, db_y, names = out[combo[0], "test"][2], out[combo[0], "train"][2], out[combo[0], "test"][3]
        row = []
        for i, bits in ((0, 0), (1, enc.info.code_bits)):
            if i == 1 and not bits:
                row += ["-", "-"]
                continue
            q, db = (sum(out[s, split][i] for s in combo) for split in ("test", "train"))
            q, db = (l2_normalise(q), l2_normalise(db)) if i == 0 else (np.sign(q), np.sign(db))
            r = score("", "float" if i == 0 else "hash", bits, q, db, q_y, db_y, names, 100)
            row += [f"{r.map_k:.2f}", f"{r.precision[1]:.2f}"]
        print(f"| {' + '.join(map(str, combo))} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
