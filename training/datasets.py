"""Labelled image sets for training and evaluation, held in memory as raw pixels (N, C, S, S).

Three sources:
- a folder per class (EuroSAT, UCM style), split by its `split.csv` or by the generator in `splits.py`;
- a `split.csv` file (`path,class,split`, paths relative to the CSV's folder);
- the tiles of an rsir index, labelled by the class of the vector polygon that covers each tile's centre.

Pixels stay raw (the model's `scale`, mean and std are applied by the trainer, exactly as core/ does), so a
model trained here sees what the encoder in core/ will feed it. Decoded sets are cached as .npz files.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from core.archive.gdal_open import open_raster
from core.archive.pixels import read_window
from core.archive.sources import SourceSpec, open_source
from core.archive.tiling import TileWindow
from core.errors import RsirError

from .splits import make_split, read_split, shuffled_split


@dataclass
class ImageSet:
    """Raw pixels with labels: (N,) class indices (`class_names[label]`), or for multi-label sets a (N, C) 0/1
    matrix (training/multilabel_data.py); `ids` names each sample."""

    pixels: np.ndarray  # (N, C, S, S) uint8/uint16/float32
    labels: np.ndarray  # (N,) int64, or (N, classes) uint8
    class_names: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, idx) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(self.pixels[idx], self.labels[idx], self.class_names, [self.ids[i] for i in idx])

    def sample(self, n: int, seed: int = 0) -> ImageSet:
        """At most `n` items, a seeded sample stratified by class (single-label sets); all when n <= 0."""
        return self.subset(stratified_sample(np.arange(len(self)), self.labels, n, seed))


def stratified_sample(idx: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most `n` of `idx`, every class keeping its share (rounded), drawn with a seeded generator; sorted."""
    if n <= 0 or len(idx) <= n:
        return np.sort(idx)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        take = max(1, round(n * len(members) / len(idx)))
        out.append(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.concatenate(out))


def _compact(arr: np.ndarray) -> np.ndarray:
    """Store 8-/16-bit integer imagery as such (a quarter/half of float32's memory)."""
    if arr.size and np.array_equal(arr, np.round(arr)) and arr.min() >= 0:
        top = arr.max()
        if top <= 255:
            return arr.astype(np.uint8)
        if top <= 65535:
            return arr.astype(np.uint16)
    return arr.astype(np.float32)


def _read_image(path: str, bands: list[int], size: int) -> np.ndarray:
    ds = open_raster(path)
    if ds.RasterCount < max(bands):
        raise RsirError(f"{path}: has {ds.RasterCount} bands, the dataset asks for bands {bands}")
    return read_window(ds, bands, TileWindow(0, 0, ds.RasterXSize, ds.RasterYSize), size, path)


def _cache_file(cache_dir: str | None, key: dict) -> str | None:
    if not cache_dir:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"images-{digest}.npz")


def _read_images(paths: list[str], bands: list[int], size: int, cache_dir: str | None, threads: int = 4,
                 progress=None) -> np.ndarray:
    """(N, C, size, size) pixels of every path, from the cache when the same files were decoded before."""
    stats = [(p, os.path.getsize(p), int(os.path.getmtime(p))) for p in paths]
    cache = _cache_file(cache_dir, {"files": stats, "bands": bands, "size": size})
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            return z["pixels"]
    with ThreadPoolExecutor(threads) as pool:  # GDAL releases the GIL while decoding
        arrays = []
        for arr in pool.map(lambda p: _read_image(p, bands, size), paths):
            arrays.append(arr)
            if progress:
                progress(len(arrays), len(paths))
    pixels = _compact(np.stack(arrays)) if arrays else np.zeros((0, len(bands), size, size), np.uint8)
    if cache:
        from core.fileio import atomic_path

        os.makedirs(cache_dir, exist_ok=True)
        with atomic_path(cache) as tmp:
            np.savez(tmp, pixels=pixels)
    return pixels


def load_split_csv(csv_path: str, bands: list[int], size: int, cache_dir: str | None = None,
                   splits=("train", "val", "test"), progress=None, root: str | None = None) -> dict[str, ImageSet]:
    """Image sets per split from a `path,class,split` CSV. Its paths are relative to `root`, the dataset folder
    (`rsir split ROOT --out ELSEWHERE` writes them so), or absolute; without a `root` (a config's split_csv
    data) relative to the CSV's own folder."""
    if not os.path.isfile(csv_path):
        raise RsirError(f"{csv_path}: no such split file")
    rows = read_split(csv_path)
    if not rows or not {"path", "class", "split"} <= set(rows[0]):
        raise RsirError(f"{csv_path}: a split file needs the columns path,class,split")
    base = os.path.abspath(root) if root else os.path.dirname(os.path.abspath(csv_path))
    return _from_rows(base, rows, bands, size, cache_dir, splits, progress, csv_path)


def model_band_indices(bands: list) -> list[int]:
    """Bands to read from a dataset's image files for a model whose `rsir.bands` is `bands`: its 1-based indices
    as they are, and for band names their positions (a dataset's files hold the model's bands in its order)."""
    return [b if isinstance(b, int) else i + 1 for i, b in enumerate(bands)]


def load_folder(root: str, bands: list[int], size: int, cache_dir: str | None = None, seed: int = 42,
                splits=("train", "val", "test"), progress=None) -> dict[str, ImageSet]:
    """A folder per class; uses `root/split.csv` when present, else the 70/10/20 per-class split with `seed`."""
    if not os.path.isdir(root):
        raise RsirError(f"{root}: no such dataset folder")
    csv_path = os.path.join(root, "split.csv")
    if os.path.exists(csv_path):
        return load_split_csv(csv_path, bands, size, cache_dir, splits, progress)
    try:
        rows = make_split(root, seed=seed)
    except ValueError as exc:
        raise RsirError(str(exc)) from None
    return _from_rows(root, rows, bands, size, cache_dir, splits, progress)


def _from_rows(root: str, rows: list[dict], bands, size, cache_dir, splits, progress,
               split_file: str | None = None) -> dict[str, ImageSet]:
    class_names = sorted({r["class"] for r in rows})
    unknown = sorted({r["split"] for r in rows} - {"train", "val", "test"})
    if unknown:
        raise RsirError(f"{root}: unknown split names {unknown} (use train, val, test)")
    wanted = [r for r in rows if r["split"] in splits]
    missing = [r["path"] for r in wanted if not os.path.isfile(os.path.join(root, r["path"]))]
    if missing:
        where = (f"; the paths of {split_file} are read relative to {root}" + (
            "" if os.path.dirname(os.path.abspath(split_file)) == root else
            f", not to the split file's folder {os.path.dirname(os.path.abspath(split_file))}")
            if split_file else "")
        raise RsirError(f"{os.path.join(root, missing[0])}: listed in the split but missing "
                        f"({len(missing)} missing in all{where})")
    pixels = _read_images([os.path.join(root, r["path"]) for r in wanted], list(bands), size, cache_dir,
                          progress=progress)
    labels = np.array([class_names.index(r["class"]) for r in wanted], dtype=np.int64)
    which = np.array([r["split"] for r in wanted])
    everything = ImageSet(pixels, labels, class_names, [r["path"] for r in wanted])
    return {s: everything.subset(np.flatnonzero(which == s)) for s in splits}


def load_index_tiles(index_dir: str, vector_path: str, field: str, size: int | None = None,
                     progress=None) -> ImageSet:
    """Every tile of an rsir index whose centre falls in a polygon of `vector_path`; label = that polygon's
    `field`. Tiles outside every polygon are left out. Pixels are read with the index's bands."""
    from core.adapt.labels import labelled_tiles
    from core.index.reader import Index

    index = Index(index_dir)
    size = size or index.model_info.input_size
    picked, pixels, labels, ids = [], [], [], []
    datasets: dict[int, object] = {}
    labelled = labelled_tiles(index, vector_path, field)
    for i, (tid, label) in enumerate(sorted(labelled.items())):
        if progress:
            progress(i + 1, len(labelled))
        tile = index.tile(tid)
        entry = index.sources[tile.source_id]
        if tile.source_id not in datasets:
            datasets[tile.source_id] = open_source(SourceSpec(entry.path, entry.kind))
        win = TileWindow(tile.x, tile.y, tile.w, tile.h)
        pixels.append(read_window(datasets[tile.source_id], list(entry.bands), win, size, entry.path))
        labels.append(label)
        ids.append(f"{os.path.basename(entry.path)}:{tid}")
        picked.append(tid)
    if not picked:
        raise RsirError(f"{vector_path}: no tile of {index_dir} has its centre inside a polygon with a {field!r}")
    class_names = sorted(set(labels))
    return ImageSet(_compact(np.stack(pixels)), np.array([class_names.index(v) for v in labels], np.int64),
                    class_names, ids)


def split_image_set(data: ImageSet, seed: int = 42, train: float = 0.7, val: float = 0.1) -> dict[str, ImageSet]:
    """The per-class 70/10/20 protocol of `splits.py`, applied to an in-memory set (ids sorted, then shuffled)."""
    out = {"train": [], "val": [], "test": []}
    for c in range(len(data.class_names)):
        members = np.flatnonzero(data.labels == c).tolist()
        for split, part in shuffled_split(members, seed, train, val, key=lambda i: data.ids[i]).items():
            out[split] += part
    return {k: data.subset(sorted(v)) for k, v in out.items()}

