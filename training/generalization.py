"""The generalization suite: how a model retrieves on data it was not tuned on, next to untrained ImageNet
features of the same family at fixed sizes (`bench/generalization.py` runs it on EuroSAT and AID).

A suite is a list of datasets (a folder per class with its `split.csv`), of tasks over them (queries = the test
split, database = the train split, optionally restricted to some classes and subsampled), and of contenders (ONNX
models). Each contender encodes each dataset once, at the model's own size or, for a resolution-aware model, at
the dataset's image size clamped to its range (what `core/` does for a patch folder); every task then ranks its
queries against its database exactly (`evaluate.score`: mAP@k with min(k, R) normalisation, ties in random but
seeded order). Float = cosine of the embeddings; hash = Hamming distance, ties by cosine (as core.search ranks),
of the model's own codes, of codes fitted on the task's database as `rsir index` fits them on an archive, or for
untrained models of 128-bit PCA-ITQ codes fitted on the task's database; optionally hash re-ranked (--rerank).

A model trained on a class of a task (its `rsir.class_names`, namespaced "dataset:class" by multi-dataset
training) is flagged on that task's row: it is not an unseen-class result there.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.archive.gdal_open import open_raster
from core.encoder import Encoder, ModelInfo, l2_normalise
from core.errors import RsirError
from core.fileio import atomic_path
from core.index import archive_codes
from core.metrics import average_precision_at_k

from .datasets import _read_images, stratified_sample
from .evaluate import pm1, score, tie_order
from .hash_baselines import itq_codes
from .splits import make_split, read_split

HASH_BITS = 128  # code length of the untrained baselines' PCA-ITQ codes
TIE_WEIGHT = 0.9  # of the cosine beside the +-1 code dot product: orders Hamming ties, never crosses a distance


@dataclass(frozen=True)
class SuiteDataset:
    """A labelled folder (a sub-folder per class; its `split.csv` if present, else the 70/10/20 protocol). `name`
    is what multi-dataset training namespaces its classes with ("aid:Beach")."""

    name: str
    root: str

    def rows(self) -> list[dict]:
        csv_path = os.path.join(self.root, "split.csv")
        if os.path.isfile(csv_path):
            return read_split(csv_path)
        if not os.path.isdir(self.root):
            raise RsirError(f"{self.root}: no such dataset folder")
        return make_split(self.root)


@dataclass(frozen=True)
class SuiteTask:
    """Queries (`queries` split) searched against a database (`database` split) of one dataset, restricted to
    `classes` (empty: all); at most `max_queries` / `max_database` items, a seeded sample stratified by class."""

    name: str
    dataset: str
    classes: tuple[str, ...] = ()
    unseen: bool = False  # the point of the task is classes no contender may have trained on
    max_queries: int = 0
    max_database: int = 0
    queries: str = "test"
    database: str = "train"


@dataclass(frozen=True)
class Contender:
    """A model to score: `size` forces one input side (None: the model's own rule); `hash` "model" uses its codes
    (`rsir index --model-codes`), "archive" codes fitted on each task's database as `rsir index` fits them on an
    archive (core/index/archive_codes.py; the model's own where they do not apply), "itq" 128-bit PCA-ITQ codes
    of its float features fitted on each task's database (untrained baselines)."""

    label: str
    model: str
    size: int | None = None
    hash: str = "model"
    code_bits: int | None = None  # "archive": bits of the fitted codes (`rsir index --code-bits`; None: the model's)


@dataclass
class SuiteRow:
    contender: str
    task: str
    size: int
    float_map: float
    hash_map: float
    hash_bits: int
    queries: int
    database: int
    trained_on_task: bool = False  # the model was trained on some of the task's classes
    reranked_map: float | None = None  # hash search with the suite's `rerank` nearest ranked again by cosine


@dataclass
class _Items:
    """The images of one dataset a suite needs: paths, class names, splits."""

    paths: list[str]
    classes: list[str]
    splits: list[str]
    class_names: list[str] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        return np.array([self.class_names.index(c) for c in self.classes], np.int64)


def native_size(path: str) -> int:
    """The larger side of an image file in pixels: the size a resolution-aware model encodes it near."""
    ds = open_raster(path)
    return max(ds.RasterXSize, ds.RasterYSize)


def trained_classes(info: ModelInfo, dataset: str, class_names: list[str]) -> set[str]:
    """The classes of `dataset` a model was trained on: its namespaced names "dataset:class", or, for a model
    trained on one dataset with plain names, all of them when they are all classes of this dataset."""
    names = info.class_names
    spaced = {n.split(":", 1)[1] for n in names if n.startswith(f"{dataset}:")}
    plain = [n for n in names if ":" not in n]
    if plain and set(plain) <= set(class_names):
        spaced |= set(plain)
    return spaced


class Suite:
    """Runs contenders over tasks; embeddings are cached per (model file, size, image list) in `cache_dir`."""

    def __init__(self, datasets: list[SuiteDataset], tasks: list[SuiteTask], cache_dir: str, k: int = 100,
                 threads: int | None = None, log: Callable[[str], None] = print, seed: int = 0, rerank: int = 0):
        self.datasets = {d.name: d for d in datasets}
        unknown = sorted({t.dataset for t in tasks} - set(self.datasets))
        if unknown:
            raise RsirError(f"tasks name datasets that are not in the suite: {unknown}")
        self.tasks, self.cache_dir, self.k, self.threads, self.log = tasks, cache_dir, k, threads, log
        self._items: dict[str, _Items] = {}
        self._picks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._native: dict[str, int] = {}
        self.seed = seed
        self.rerank = rerank  # also score hash search with this many candidates re-ranked by cosine (0: not)

    def items(self, name: str) -> _Items:
        """The dataset's images that some task uses (its splits and classes), in split-file order."""
        if name not in self._items:
            ds = self.datasets[name]
            rows = ds.rows()
            class_names = sorted({r["class"] for r in rows})
            tasks = [t for t in self.tasks if t.dataset == name]
            for t in tasks:
                missing = sorted(set(t.classes) - set(class_names))
                if missing:
                    raise RsirError(f"{ds.root}: task {t.name!r} names classes it lacks: {missing}")
            wanted = {t.queries for t in tasks} | {t.database for t in tasks}
            rows = [r for r in rows if r["split"] in wanted]
            self._items[name] = _Items([os.path.join(ds.root, r["path"]) for r in rows], [r["class"] for r in rows],
                                       [r["split"] for r in rows], class_names)
        return self._items[name]

    def picks(self, task: SuiteTask) -> tuple[np.ndarray, np.ndarray]:
        """(query rows, database rows) of a task into its dataset's items."""
        if task.name not in self._picks:
            it = self.items(task.dataset)
            labels = it.labels()
            inside = (np.isin(np.array(it.classes), task.classes) if task.classes
                      else np.ones(len(labels), bool))
            splits = np.array(it.splits)
            q = stratified_sample(np.flatnonzero(inside & (splits == task.queries)), labels, task.max_queries,
                                  self.seed)
            db = stratified_sample(np.flatnonzero(inside & (splits == task.database)), labels, task.max_database,
                                   self.seed + 1)
            if not len(q) or not len(db):
                raise RsirError(f"task {task.name!r}: no {task.queries if not len(q) else task.database} images")
            self._picks[task.name] = (q, db)
        return self._picks[task.name]

    def native(self, name: str) -> int:
        if name not in self._native:
            self._native[name] = native_size(self.items(name).paths[0])
        return self._native[name]

    def _needed(self, name: str) -> np.ndarray:
        """Rows of the dataset any task reads (queries or database), sorted."""
        rows = [np.concatenate(self.picks(t)) for t in self.tasks if t.dataset == name]
        return np.unique(np.concatenate(rows))

    def _embed(self, contender: Contender, enc: Encoder, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, codes) of the dataset rows `_needed`, aligned with them; cached on disk."""
        it, rows = self.items(name), self._needed(name)
        paths = [it.paths[i] for i in rows]
        key = hashlib.sha256(json.dumps({"model": enc.info.sha256, "size": size, "paths": paths}).encode())
        cache = os.path.join(self.cache_dir, f"emb-{key.hexdigest()[:20]}.npz")
        if os.path.exists(cache):
            with np.load(cache) as z:
                return z["emb"], z["codes"]
        pixels = _read_images(paths, list(range(1, enc.info.channels + 1)), size,
                              os.path.join(self.cache_dir, "pixels"))
        self.log(f"  encoding {len(paths)} {name} images at {size} px with {contender.label}")
        emb, codes = enc.encode(pixels)
        os.makedirs(self.cache_dir, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, emb=emb, codes=codes)
        return emb, codes

    def run(self, contenders: list[Contender]) -> list[SuiteRow]:
        labels = [c.label for c in contenders]
        if len(set(labels)) != len(labels):
            raise RsirError(f"contender labels must differ (they name the table's rows): {labels}")
        out = []
        for c in contenders:
            enc = Encoder(c.model, threads=self.threads, batch_size=64)
            self.log(f"{c.label}: {os.path.basename(c.model)}")
            for name in dict.fromkeys(t.dataset for t in self.tasks):
                size = c.size or enc.info.encode_size(self.native(name))
                emb, codes = self._embed(c, enc, name, size)
                where = {row: i for i, row in enumerate(self._needed(name))}
                it = self.items(name)
                labels = it.labels()
                trained = trained_classes(enc.info, name, it.class_names)
                for t in (t for t in self.tasks if t.dataset == name):
                    q, db = self.picks(t)
                    qi, dbi = [where[r] for r in q], [where[r] for r in db]
                    row = self._score(c, enc.info, t, emb[qi], emb[dbi], codes[qi], codes[dbi], labels[q],
                                      labels[db], it.class_names, size)
                    row.trained_on_task = bool(trained & (set(t.classes) or set(it.class_names)))
                    out.append(row)
                    self.log(f"  {t.name}: float {row.float_map:.2f}, hash {row.hash_map:.2f} ({row.hash_bits} bits)"
                             + ("  [trained on these classes]" if row.trained_on_task and t.unseen else ""))
        return out

    def _score(self, c: Contender, info: ModelInfo, task: SuiteTask, q_e, db_e, q_c, db_c, q_y, db_y,
               class_names, size) -> SuiteRow:
        k = min(self.k, len(db_e))
        q_e, db_e = l2_normalise(q_e), l2_normalise(db_e)
        f = score("float", "float", 0, q_e, db_e, q_y, db_y, class_names, k)
        bits = info.effective_code_bits
        if c.hash == "itq":
            bits = min(HASH_BITS, db_e.shape[1])
            db_c, q_c = itq_codes(db_e, db_e, q_e, bits=bits)
        elif c.hash == "archive" and archive_codes.applies(len(db_e), c.code_bits or bits, db_e.shape[1]):
            bits = c.code_bits or bits
            fitted = archive_codes.fit(db_e, bits)
            db_c, q_c = fitted.codes(db_e), fitted.codes(q_e)
        # Hamming distance, ties by cosine as core.search orders them: the cosine (|.| <= 1) weighs less than one
        # bit (a step of 2 in the +-1 dot product)
        h = score("hash", "hash", bits, np.hstack([pm1(q_c, bits), TIE_WEIGHT * q_e]),
                  np.hstack([pm1(db_c, bits), db_e]), q_y, db_y, class_names, k)
        row = SuiteRow(c.label, task.name, size, f.map_k, h.map_k, bits, len(q_y), len(db_y))
        if self.rerank:
            row.reranked_map = reranked_map(q_e, db_e, pm1(q_c, bits), pm1(db_c, bits), q_y, db_y, self.rerank, k)
        return row


def reranked_map(q_e: np.ndarray, db_e: np.ndarray, q_pm: np.ndarray, db_pm: np.ndarray, q_y: np.ndarray,
                 db_y: np.ndarray, rerank: int, k: int, chunk: int = 256) -> float:
    """mAP@k of hash search re-ranked as `rsir search --hash --rerank R` ranks (core.search.nearest_ids): the R
    nearest by Hamming distance (ties by cosine), ranked again by cosine; single-label data, ties in the seeded
    order `score` uses."""
    perm = tie_order(len(db_e))
    db_e, db_pm, db_y = db_e[perm], db_pm[perm], db_y[perm]
    aps = []
    for i in range(0, len(q_e), chunk):
        cos = q_e[i:i + chunk] @ db_e.T
        by_code = q_pm[i:i + chunk] @ db_pm.T + TIE_WEIGHT * cos
        candidates = np.argsort(-by_code, axis=1, kind="stable")[:, :min(rerank, len(db_e))]
        order = np.take_along_axis(candidates, np.argsort(-np.take_along_axis(cos, candidates, axis=1), axis=1,
                                                          kind="stable"), axis=1)[:, :k]
        rel = db_y[order] == q_y[i:i + chunk, None]
        n_rel = (db_y[None, :] == q_y[i:i + chunk, None]).sum(axis=1)
        aps.append(average_precision_at_k(rel, n_rel, k))
    return float(100 * np.concatenate(aps).mean())


def suite_table(rows: list[SuiteRow], tasks: list[SuiteTask]) -> str:
    """Markdown: a row per contender, float / hash (/ re-ranked hash, where scored) mAP@100 per task; a model
    trained on an unseen task's classes gets a dagger there."""
    names = list(dict.fromkeys(r.contender for r in rows))
    by = {(r.contender, r.task): r for r in rows}
    reranked = any(r.reranked_map is not None for r in rows)
    head = "| model | " + " | ".join(f"{t.name} float | hash" + (" | re-ranked" if reranked else "")
                                     for t in tasks) + " |"
    lines = [head, "|---|" + ("---|---|---|" if reranked else "---|---|") * len(tasks)]
    for n in names:
        cells = []
        for t in tasks:
            r = by.get((n, t.name))
            if r is None:
                cells += ["-"] * (3 if reranked else 2)
                continue
            mark = " †" if r.trained_on_task and t.unseen else ""
            cells += [f"{r.float_map:.2f}{mark}", f"{r.hash_map:.2f}"]
            if reranked:
                cells.append("-" if r.reranked_map is None else f"{r.reranked_map:.2f}")
        sizes = sorted({by[(n, t.name)].size for t in tasks if (n, t.name) in by})
        name = n if n.endswith(" px") else f"{n} ({'/'.join(map(str, sizes))} px)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_sizes_note(rows: list[SuiteRow], tasks: list[SuiteTask]) -> str:
    """One line per task: how many queries and database images it ranked (subsampling made visible)."""
    seen = {}
    for r in rows:
        seen.setdefault(r.task, (r.queries, r.database))
    return "\n".join(f"- {t.name}: {seen[t.name][0]} queries ({t.queries}) against {seen[t.name][1]} "
                     f"({t.database}){', classes: ' + ', '.join(t.classes) if t.classes else ''}"
                     for t in tasks if t.name in seen)
