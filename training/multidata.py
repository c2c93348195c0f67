"""Training over several labelled datasets at once (`data.kind = multi`).

Each dataset keeps its own image size (EuroSAT's 64 px Sentinel-2 patches read at 96, AID's 150 px aerial scenes
at 150) and its own classes, namespaced "name:class" so that a River of one is not the River of the other. A batch
holds images of one dataset only (one size per tensor); an epoch is every dataset's batches in a seeded shuffle,
a dataset with `max_per_epoch` contributing a fresh draw of that many images each epoch (`batches.MultiBatches`).
Sample ids are global: dataset d's image i is `offset[d] + i`, so memory banks and momentum encoders work unchanged.
"""
from __future__ import annotations

import numpy as np

from core.errors import RsirError

from .config import DataConfig, DataSetConfig
from .datasets import ImageSet, load_folder, load_split_csv

SPLITS = ("train", "val", "test")


def namespaced(data: dict[str, ImageSet], name: str, exclude: list[str], where: str) -> dict[str, ImageSet]:
    """The splits of one dataset without the `exclude`d classes, class names prefixed "name:"."""
    classes = data["train"].class_names
    unknown = sorted(set(exclude) - set(classes))
    if unknown:
        raise RsirError(f"{where}: exclude_classes names classes it does not have: {unknown} (it has "
                        f"{', '.join(classes)})")
    keep = [c for c in classes if c not in exclude]
    if not keep:
        raise RsirError(f"{where}: every class is excluded")
    new_index = np.array([keep.index(c) if c in keep else -1 for c in classes], np.int64)
    out = {}
    for split, s in data.items():
        rows = np.flatnonzero(new_index[s.labels] >= 0)
        sub = s.subset(rows)
        out[split] = ImageSet(sub.pixels, new_index[sub.labels], [f"{name}:{c}" for c in keep], sub.ids)
    return out


def load_sets(d: DataConfig, cache_dir: str | None, progress=None) -> list[tuple[DataSetConfig, dict[str, ImageSet]]]:
    """Every `[[data.sets]]` dataset at its own input size, excluded classes dropped, classes namespaced."""
    out, base = [], 0
    for s in d.sets:
        size = s.input_size or d.input_size
        # one count over all the datasets: each one's images follow the last one's
        step = (lambda done, total, b=base: progress(b + done, b + total)) if progress else None
        if s.kind == "folder":
            data = load_folder(s.root, d.bands, size, cache_dir, d.split_seed, progress=step)
        else:
            data = load_split_csv(s.root, d.bands, size, cache_dir, progress=step)
        base += sum(len(v) for v in data.values())
        if data["train"].multi_label:
            raise RsirError(f"{s.root}: multi-dataset training takes single-label datasets")
        out.append((s, namespaced(data, s.name, s.exclude_classes, s.root)))
    return out


def combined_classes(sets: list[tuple[DataSetConfig, dict[str, ImageSet]]]) -> tuple[list[str], list[int]]:
    """All datasets' namespaced class names in set order, and each set's first global class index."""
    names, starts = [], []
    for _, data in sets:
        starts.append(len(names))
        names += data["train"].class_names
    return names, starts


def global_labels(data: ImageSet, start: int, class_names: list[str]) -> ImageSet:
    """`data` with its labels moved to the combined class list (they start at `start`)."""
    return ImageSet(data.pixels, data.labels + start, class_names, data.ids)
