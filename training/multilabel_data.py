"""Multi-label image sets: an image -> label-set table (CSV or JSON), BigEarthNet patch folders, and a generator
of 2x2 mosaics of EuroSAT patches (label set = the classes of the four patches).

An `ImageSet` is multi-label when its `labels` are a (N, C) 0/1 matrix instead of (N,) class indices.

Table formats (paths relative to the table's folder):
- CSV with the columns `path,labels[,split]`, labels separated by `;`;
- JSON: `{"path": ["label", ...], ...}` or `[{"path": ..., "labels": [...], "split": ...}, ...]`.
Without a split column every image is assigned train/val/test 70/10/20 by `random.Random(seed)` over the
sorted paths (multi-label sets have no single class to stratify by).
"""
from __future__ import annotations

import csv
import glob
import json
import os
import random

import numpy as np

from core.errors import RsirError

from .datasets import ImageSet, _compact, _read_images
from .splits import shuffled_split

LABEL_SEPARATOR = ";"
SPLITS = ("train", "val", "test")


def multi_hot(label_sets: list[list[str]], class_names: list[str]) -> np.ndarray:
    """(N, C) uint8 matrix with 1 where image n carries class c."""
    pos = {c: i for i, c in enumerate(class_names)}
    out = np.zeros((len(label_sets), len(class_names)), np.uint8)
    for n, labels in enumerate(label_sets):
        out[n, [pos[c] for c in labels]] = 1
    return out


def assign_splits(rows: list[dict], seed: int = 42, train: float = 0.7, val: float = 0.1) -> None:
    """Give rows without a `split` one: sorted by path, shuffled with `seed`, first 70 % train, next 10 % val."""
    todo = [r for r in rows if not r.get("split")]
    for split, part in shuffled_split(todo, seed, train, val, key=lambda r: r["path"]).items():
        for r in part:
            r["split"] = split


def read_label_table(path: str) -> list[dict]:
    """Rows {"path", "labels": [str], "split": str or ""} of a CSV or JSON label table."""
    if not os.path.isfile(path):
        raise RsirError(f"{path}: no such label table")
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise RsirError(f"{path}: not valid JSON ({exc})") from None
        items = [{"path": p, "labels": v} for p, v in data.items()] if isinstance(data, dict) else data
        rows = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "path" not in item or not isinstance(item.get("labels"), list):
                raise RsirError(f"{path}: entry {i} needs a path and a list of labels")
            rows.append({"path": str(item["path"]), "labels": [str(v) for v in item["labels"]],
                         "split": str(item.get("split", ""))})
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "labels"} <= set(reader.fieldnames):
            raise RsirError(f"{path}: a multi-label CSV needs the columns path,labels[,split] "
                            f"(labels separated by '{LABEL_SEPARATOR}')")
        return [{"path": r["path"], "labels": [v.strip() for v in r["labels"].split(LABEL_SEPARATOR) if v.strip()],
                 "split": (r.get("split") or "").strip()} for r in reader]


def is_label_table(path: str) -> bool:
    """True for a JSON table, or a CSV whose header has a `labels` column (single-label CSVs have `class`)."""
    if path.lower().endswith(".json"):
        return True
    if not os.path.isfile(path):
        return False
    with open(path, newline="", encoding="utf-8") as f:
        return "labels" in (next(csv.reader(f), None) or [])


def _sets_from_rows(root: str, rows: list[dict], pixels_of, splits, seed: int) -> dict[str, ImageSet]:
    empty = [r["path"] for r in rows if not r["labels"]]
    if empty:
        raise RsirError(f"{os.path.join(root, empty[0])}: has no labels ({len(empty)} unlabelled in all)")
    assign_splits(rows, seed)
    unknown = sorted({r["split"] for r in rows} - set(SPLITS))
    if unknown:
        raise RsirError(f"{root}: unknown split names {unknown} (use train, val, test)")
    class_names = sorted({c for r in rows for c in r["labels"]})
    wanted = [r for r in rows if r["split"] in splits]
    labels = multi_hot([r["labels"] for r in wanted], class_names)
    everything = ImageSet(pixels_of(wanted), labels, class_names, [r["path"] for r in wanted])
    which = np.array([r["split"] for r in wanted])
    return {s: everything.subset(np.flatnonzero(which == s)) for s in splits}


def load_label_table(path: str, bands: list[int], size: int, cache_dir: str | None = None, seed: int = 42,
                     splits=SPLITS, progress=None) -> dict[str, ImageSet]:
    """Multi-label image sets per split from a CSV/JSON label table."""
    root = os.path.dirname(os.path.abspath(path))
    rows = read_label_table(path)
    if not rows:
        raise RsirError(f"{path}: the label table lists no images")
    missing = [r["path"] for r in rows if not os.path.isfile(os.path.join(root, r["path"]))]
    if missing:
        raise RsirError(f"{os.path.join(root, missing[0])}: listed in {path} but missing ({len(missing)} in all)")

    def pixels_of(wanted):
        return _read_images([os.path.join(root, r["path"]) for r in wanted], list(bands), size, cache_dir,
                            progress=progress)

    return _sets_from_rows(root, rows, pixels_of, splits, seed)


def load_bigearthnet(root: str, bands: list[str], size: int, seed: int = 42, splits=SPLITS) -> dict[str, ImageSet]:
    """BigEarthNet(-S1/-S2) patches: every folder under `root` holding `<name>_labels_metadata.json` and one
    GeoTIFF per band (`<name>_B04.tif`, `<name>_VV.tif`, ...). `bands` names the band files, in input order;
    bands of other resolutions are resampled to `size` like tiles are."""
    from core.archive.gdal_open import open_raster
    from core.archive.pixels import read_window
    from core.archive.tiling import TileWindow

    metas = sorted(glob.glob(os.path.join(root, "**", "*_labels_metadata.json"), recursive=True))
    if not metas:
        raise RsirError(f"{root}: no BigEarthNet patch folders (*_labels_metadata.json) found")
    rows, arrays = [], {}
    for meta_path in metas:
        name = os.path.basename(meta_path)[: -len("_labels_metadata.json")]
        folder = os.path.dirname(meta_path)
        with open(meta_path, encoding="utf-8") as f:
            labels = json.load(f).get("labels")
        if not isinstance(labels, list):
            raise RsirError(f"{meta_path}: no 'labels' list")
        planes = []
        for band in bands:
            tif = os.path.join(folder, f"{name}_{band}.tif")
            if not os.path.isfile(tif):
                raise RsirError(f"{tif}: band {band} of patch {name} is missing")
            ds = open_raster(tif)
            planes.append(read_window(ds, [1], TileWindow(0, 0, ds.RasterXSize, ds.RasterYSize), size, tif)[0])
        rel = os.path.relpath(folder, root)
        arrays[rel] = np.stack(planes)
        rows.append({"path": rel, "labels": labels, "split": ""})
    return _sets_from_rows(root, rows, lambda wanted: _compact(np.stack([arrays[r["path"]] for r in wanted])),
                           splits, seed)


def make_eurosat_mosaics(split_csv: str, out_dir: str, counts: dict[str, int], seed: int = 42,
                         max_classes: int = 3, progress=None) -> str:
    """Write 2x2 mosaics of single-label patches and `out_dir/labels.csv` (path,labels,split); return its path.

    Each mosaic draws 1..max_classes distinct classes (uniformly), puts one patch of each in a random cell and
    fills the other cells from the same classes; its label set is those classes. Patches of a mosaic come from
    the same split of `split_csv` (so test mosaics share no patch with train mosaics)."""
    from osgeo import gdal

    from .splits import read_split

    rows = read_split(split_csv)
    root = os.path.dirname(os.path.abspath(split_csv))
    by = {}
    for r in rows:
        by.setdefault(r["split"], {}).setdefault(r["class"], []).append(os.path.join(root, r["path"]))
    rng = random.Random(seed)
    out_rows = []
    mem = gdal.GetDriverByName("MEM")
    png = gdal.GetDriverByName("PNG")
    done, total = 0, sum(counts.values())
    for split, n in counts.items():
        pools = by.get(split)
        if not pools:
            raise RsirError(f"{split_csv}: no images in split {split!r}")
        classes = sorted(pools)
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        for i in range(n):
            chosen = rng.sample(classes, rng.randint(1, min(max_classes, len(classes))))
            cells = chosen + [rng.choice(chosen) for _ in range(4 - len(chosen))]
            rng.shuffle(cells)
            patches = [open_patch(rng.choice(pools[c])) for c in cells]
            s = patches[0].shape[1]
            img = np.zeros((patches[0].shape[0], 2 * s, 2 * s), np.uint8)
            for cell, p in enumerate(patches):
                img[:, (cell // 2) * s:(cell // 2 + 1) * s, (cell % 2) * s:(cell % 2 + 1) * s] = p
            ds = mem.Create("", 2 * s, 2 * s, img.shape[0], gdal.GDT_Byte)
            for b in range(img.shape[0]):
                ds.GetRasterBand(b + 1).WriteArray(img[b])
            rel = f"{split}/{i:06d}.png"
            png.CreateCopy(os.path.join(out_dir, rel), ds)
            out_rows.append({"path": rel, "labels": LABEL_SEPARATOR.join(sorted(chosen)), "split": split})
            done += 1
            if progress:
                progress(done, total)
    from core.fileio import atomic_path

    table = os.path.join(out_dir, "labels.csv")
    with atomic_path(table) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "labels", "split"])
        writer.writeheader()
        writer.writerows(out_rows)
    for aux in glob.glob(os.path.join(out_dir, "*", "*.aux.xml")):
        os.remove(aux)
    return table


def open_patch(path: str) -> np.ndarray:
    """(C, H, W) uint8 pixels of an image file."""
    from core.archive.gdal_open import open_raster

    ds = open_raster(path)
    return ds.ReadAsArray().reshape(ds.RasterCount, ds.RasterYSize, ds.RasterXSize).astype(np.uint8)
