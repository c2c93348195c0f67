"""A large index without hours of encoding: the windows of a real raster (its footprints, tiles.gpkg, faiss files
and manifest written by the product's own builder), with random unit embeddings and codes in place of the model's.
Searches, heat maps and the plugin then run over it exactly as over an encoded index; only the hits mean nothing.

    .venv/bin/python bench/synthetic_index.py demo_out/s2_rgb.vrt --tiles 100000 --out cache/synthetic/s2-100k

The stride is chosen so the raster yields about --tiles windows (tile 64 px).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.archive.sources import expand_archive  # noqa: E402
from core.default_model import default_model_path  # noqa: E402
from core.encoder import Encoder, l2_normalise, pack_signs  # noqa: E402
from core.index import builder, layout  # noqa: E402


def build_synthetic(raster: str, out: str, tiles: int, model: str, tile: int = 64, chunk: int = 200_000,
                    seed: int = 0) -> int:
    """Write the index; returns its tile count."""
    spec = expand_archive([raster])[0]
    encoder = Encoder(model)
    probe = builder._plan_source(spec, encoder, builder.BuildOptions(tile=tile), check_values=False)
    w, h = probe.width, probe.height
    stride = max(1, int(math.sqrt((w - tile) * (h - tile) / max(tiles, 1))))
    opts = builder.BuildOptions(tile=tile, stride=stride, scale=probe.values.scale)
    plan = [builder._plan_source(spec, encoder, opts, check_values=False)]
    grid = plan[0].windows
    windows = np.asarray([(w.x, w.y, w.w, w.h) for w in grid], np.int64)
    shutil.rmtree(out, ignore_errors=True)
    partial = layout.path(out, layout.PARTIAL)
    os.makedirs(partial)
    rng = np.random.default_rng(seed)
    state = {"chunks": [], "kept": 0, "skipped": 0, "skipped_by_source": [0]}
    for start in range(0, len(windows), chunk):
        part = windows[start:start + chunk]
        emb = l2_normalise(rng.normal(size=(len(part), encoder.info.embedding_dim)).astype(np.float32))
        codes = pack_signs(rng.normal(size=(len(part), encoder.info.effective_code_bits)))
        meta = np.concatenate([np.zeros((len(part), 1), np.int64), part], axis=1)
        name = f"chunk_{len(state['chunks']):06d}.npz"
        np.savez(os.path.join(partial, name), emb=emb, codes=codes, meta=meta)
        state["chunks"].append(name)
        state["kept"] += len(part)
    generation = builder._finalize(plan, encoder, opts, os.path.abspath(out), None, partial, state)
    builder._install(os.path.abspath(out), partial, generation)
    return len(windows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raster", help="a raster or band-stack spec whose windows the tiles are")
    ap.add_argument("--tiles", type=int, default=100_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=default_model_path(), help="the model the manifest names (its sizes)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    n = build_synthetic(args.raster, args.out, args.tiles, args.model)
    print(f"wrote {args.out}: {n} tiles in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
