"""Labelled image sets as the commands that score or post-process an exported model read them (`rsir eval`,
`rsir whiten`, the int8 calibration of `rsir export`): a dataset given on the command line, read at the model's
input size, or the data of a training config, each dataset at the size it was trained at."""
from __future__ import annotations

import os

import numpy as np

from core.archive.pixels import resample_array
from core.encoder import ModelInfo
from core.errors import RsirError

from .config import TrainConfig
from .datasets import ImageSet, load_folder, load_split_csv, model_band_indices


def labelled_sets(dataset: str, info: ModelInfo, splits, split: str | None = None, split_seed: int = 42,
                  cache_dir: str | None = None, bigearthnet: bool = False) -> dict[str, ImageSet]:
    """The named splits of `dataset` (a folder per class, a split CSV, a multi-label table, or with
    `bigearthnet` a BigEarthNet folder; `split`: a split CSV or label table to use instead of the dataset's own,
    its paths relative to the dataset folder or absolute), read with the model's bands at its input size."""
    from .multilabel_data import is_label_table, load_bigearthnet, load_label_table

    bands = model_band_indices(info.bands)
    splits = tuple(dict.fromkeys(splits))
    table = split or dataset
    if os.path.isfile(table) and is_label_table(table):
        return load_label_table(table, bands, info.input_size, cache_dir, split_seed, splits)
    if split or os.path.isfile(dataset):
        # a split given beside a dataset folder lists paths relative to that folder, as `rsir split` writes them
        root = dataset if split and os.path.isdir(dataset) else None
        return load_split_csv(table, bands, info.input_size, cache_dir, splits, root=root)
    if bigearthnet:
        return load_bigearthnet(dataset, [str(b) for b in info.bands], info.input_size, split_seed, splits)
    return load_folder(dataset, bands, info.input_size, cache_dir, split_seed, splits)


def config_sets(cfg: TrainConfig, splits, cache_dir: str | None = None) -> list[dict[str, ImageSet]]:
    """The named splits of a training config's data, one dict per dataset: a multi-dataset config's datasets each
    at its own training size, classes namespaced "dataset:class"."""
    from .multidata import load_sets
    from .trainer import load_data

    if cfg.data.kind == "paired":
        raise RsirError(f"{cfg.source}: paired (cross-modal) data has no class splits to read here")
    if cache_dir is not None:
        cfg.data.cache_dir = cache_dir
    if cfg.data.kind == "multi":
        return [{s: data[s] for s in splits} for _, data in load_sets(cfg.data, cfg.data.cache_dir or None)]
    data = load_data(cfg)
    return [{s: data[s] for s in splits}]


def sample_rows(pixels: np.ndarray, n: int) -> np.ndarray:
    """`n` random rows (seed 0, kept in order) of `pixels`: the calibration images of an int8 copy."""
    pick = np.random.default_rng(0).choice(len(pixels), min(n, len(pixels)), replace=False)
    return pixels[np.sort(pick)]


def calibration_images(sets: list[ImageSet], n: int, size: int) -> np.ndarray:
    """About `n` images drawn evenly from `sets` (seed 0), all at `size` pixels a side (resampled as tiles are):
    int8 activation ranges for a model that reads several datasets at several sizes."""
    per_set = max(1, n // len(sets))
    out = []
    for s in sets:
        rows = sample_rows(s.pixels, per_set)
        if rows.shape[-1] != size:
            rows = np.stack([resample_array(r, size) for r in rows])
        out.append(rows.astype(np.float32))
    return np.concatenate(out)
