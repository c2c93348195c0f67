"""Unlabelled adaptation (`rsir adapt`, issue 26): a linear head on the index's model trained by contrast of
augmented views of a sample of the archive's own tiles (core/adapt/contrastive.py), appended to the model with
new PCA-ITQ codes, and the index re-encoded from its stored vectors, as learning from labels does (and undone
the same way). On AID's 15 classes no shipped model trained on it gains 1.4 mAP@100; on the domains the default
was trained on it costs 0.2-0.5 (docs/results.md, "Relevance feedback"): for archives unlike the training data."""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from ..archive.pixels import read_window
from ..archive.sources import SourceSpec
from ..archive.tiling import TileWindow
from ..encoder import Encoder, l2_normalise
from ..errors import RsirError
from ..index.encode_chunks import DatasetCache
from ..index.reader import Index
from .contrastive import train_linear_head
from .from_labels import LabelAdapter, background_ids, fit_codes, install, starting_point
from .linear_maps import Whitening
from .onnx_graph import require_onnx

DEFAULT_SAMPLE = 4000  # tiles whose views train the head (3,458 in the measurement)
DEFAULT_PULL = 0.2
DEFAULT_EPOCHS = 40


def augmented_pixels(index: Index, tile_id: int, n_views: int, rng: np.random.Generator,
                     datasets: DatasetCache) -> list:
    """`n_views` views of one tile as the model reads it: a random sub-window of 40-100 % of its area, a random
    90-degree rotation and flip, brightness x U(0.8, 1.2); each (C, S, S) float32 with the source's values."""
    tile = index.tile(tile_id)
    entry = index.sources[tile.source_id]
    ds, size = datasets.get(tile.source_id, SourceSpec(entry.path, entry.kind)), index.source_input_size(entry)
    out = []
    for _ in range(n_views):
        share = np.sqrt(rng.uniform(0.4, 1.0))
        w, h = max(1, int(round(tile.w * share))), max(1, int(round(tile.h * share)))
        x, y = tile.x + int(rng.integers(0, tile.w - w + 1)), tile.y + int(rng.integers(0, tile.h - h + 1))
        pix = entry.values.apply(read_window(ds, list(entry.bands), TileWindow(x, y, w, h), size, entry.path))
        pix = np.rot90(pix, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            pix = pix[:, :, ::-1]
        out.append(np.ascontiguousarray(pix * rng.uniform(0.8, 1.2), np.float32))
    return out


def view_embeddings(index: Index, model_path: str, ids: np.ndarray, n_views: int = 2, seed: int = 0,
                    progress=None, cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """(len(ids), n_views, D) unit embeddings of augmented views of the tiles `ids`, by the model `model_path`."""
    encoder = Encoder(model_path)
    rng, datasets, out = np.random.default_rng(seed), DatasetCache(), []
    for start in range(0, len(ids), 64):
        if cancel is not None and cancel():
            from ..errors import Cancelled

            raise Cancelled("adapting cancelled; the index is as it was")
        pix = [p for t in ids[start:start + 64] for p in augmented_pixels(index, int(t), n_views, rng, datasets)]
        by_size: dict[int, list[int]] = {}
        for i, p in enumerate(pix):  # patches of several sizes: one batch per input side
            by_size.setdefault(p.shape[-1], []).append(i)
        emb = np.empty((len(pix), encoder.info.embedding_dim), np.float32)
        for rows in by_size.values():
            emb[rows] = encoder.encode(np.stack([pix[i] for i in rows]), scale=1.0)[0]
        out.append(l2_normalise(emb).reshape(-1, n_views, emb.shape[1]))
        if progress:
            progress(min(start + 64, len(ids)), len(ids))
    return np.concatenate(out)


def adapt(index_dir: str, out_model: str, sample: int = DEFAULT_SAMPLE, pull: float = DEFAULT_PULL,
          epochs: int = DEFAULT_EPOCHS, views: int = 2, seed: int = 0, reencode: bool = True, progress=None,
          cancel: Callable[[], bool] | None = None) -> LabelAdapter:
    """Train the head on `sample` tiles of the index (their views encoded by the model the index had before any
    adaptation), write the adapted model to `out_model` and re-encode the index (unless `reencode` is False).
    `progress(done, total)` counts the tiles encoded, then the tiles re-encoded."""
    require_onnx()
    if views < 2 or sample < 2 or epochs < 1 or not pull >= 0:
        raise RsirError("--views and --sample must be 2 or more, --epochs 1 or more, --pull 0 or more")
    index = Index(index_dir)
    base, model = starting_point(index, out_model)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(index.n, size=min(sample, index.n), replace=False))
    if len(ids) < 2:
        raise RsirError(f"{index_dir}: {index.n} tile(s) are too few to adapt to")
    head = train_linear_head(view_embeddings(index, model.path, ids, views, seed, progress, cancel), pull, epochs,
                             seed=seed, cancel=cancel)
    whitening = Whitening(np.zeros(len(head), np.float32), head, 0.0)  # normalise(normalise(e) @ W)
    embeddings = base.embeddings if base is not None else index.embeddings
    codes = fit_codes(whitening, embeddings(background_ids(index.n, rng)), index.code_bits, f"{index_dir}: ")
    adapter = LabelAdapter(whitening, codes, {})
    meta = {"rsir.adapted_from": model.sha256,
            "rsir.adapted_unlabelled": json.dumps({"method": "simclr-linear-head", "tiles": int(len(ids)),
                                                   "views": views, "pull": pull, "epochs": epochs})}
    install(index, base, model, adapter, out_model, meta, dict(base.labels) if base is not None else {}, reencode,
            progress, cancel, what="adapting to the archive")
    return adapter


def default_out(index_dir: str) -> str:
    """Beside the index: <index>-adapted.onnx (-2, -3, ... where taken)."""
    stem = os.path.abspath(index_dir).rstrip(os.sep) + "-adapted"
    path, k = f"{stem}.onnx", 2
    while os.path.exists(path):
        path, k = f"{stem}-{k}.onnx", k + 1
    return path
