"""Train/val/test splits of folder-per-class datasets, with the protocol of ../shared/data/eurosat_rgb/split.csv
(Kang et al.): per class, file names sorted, shuffled with random.Random(seed), first 70 % train, next 10 % val,
the rest test. Written as CSV rows `path,class,split` with paths relative to the dataset root."""
from __future__ import annotations

import csv
import os
import random

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def shuffled_split(items: list, seed: int = 42, train: float = 0.7, val: float = 0.1, key=None) -> dict[str, list]:
    """The protocol's step for one group: items sorted (by `key`), shuffled with random.Random(seed), first 70 %
    train, next 10 % val, the rest test."""
    order = sorted(items, key=key)
    random.Random(seed).shuffle(order)
    n_train, n_val = int(len(order) * train), int(len(order) * val)
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def make_split(root: str, seed: int = 42, train: float = 0.7, val: float = 0.1) -> list[dict]:
    """Rows {"path", "class", "split"} for every image of every class folder under `root`."""
    rows = []
    for cls in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        names = [n for n in os.listdir(os.path.join(root, cls)) if n.lower().endswith(IMAGE_EXTENSIONS)]
        for split, part in shuffled_split(names, seed, train, val).items():
            rows += [{"path": f"{cls}/{name}", "class": cls, "split": split} for name in part]
    if not rows:
        raise ValueError(f"{root}: no class folders with images")
    return rows


def write_split(rows: list[dict], path: str) -> None:
    """Write the CSV atomically (a reader never sees half a split)."""
    from core.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "class", "split"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_split(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_dataset_split(root: str, seed: int = 42, out: str | None = None) -> tuple[str, list[dict]]:
    """Write the protocol's split of the folder-per-class dataset `root` to `out` (default ROOT/split.csv);
    returns the path and the rows."""
    from core.errors import RsirError

    if not os.path.isdir(root):
        raise RsirError(f"{root}: no such dataset folder")
    try:
        rows = make_split(root, seed=seed)
    except ValueError as exc:
        raise RsirError(str(exc)) from None
    out = out or os.path.join(root, "split.csv")
    write_split(rows, out)
    return out, rows
