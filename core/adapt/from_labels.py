"""Labels that become a model (issue 26): an analyst's labels over an index (marks, exported label layers, any
polygons with a class field) fit a within-class whitening of the index's stored embeddings, with new PCA-ITQ codes
of the whitened embedding; both are appended to the index's model (a new ONNX file), and the index is re-encoded
by applying the same map to its stored embeddings - no image is read again, seconds for 100k tiles.

Why this and not fine-tuning: on AID's 15 unseen classes, whitening fitted on the marks of 10 relevance-feedback
queries lifted mAP@100 of those classes' queries from 64.5 to 72.6 and of the 5 other classes from 47.4 to 52.8,
where a learned linear map near the identity gained 0-2 (docs/results.md, "Relevance feedback")."""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..encoder import pack_signs
from ..errors import RsirError
from ..index.builder import rewrite_vectors
from ..index.reader import Index
from .labels import labelled_ids
from .linear_maps import CodeProjection, Whitening, fit_itq, fit_within_class
from .onnx_graph import append_to_onnx, require_onnx

DEFAULT_SHRINKAGE = 0.3
ITQ_SAMPLE = 100_000  # index tiles the codes are fitted on
OTHER = "other"  # the class of tiles marked not relevant (core/mark_labels.py writes it)


@dataclass
class LabelAdapter:
    whitening: Whitening
    codes: CodeProjection
    classes: dict[str, int]  # class -> labelled tiles

    def transform(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit embeddings, packed codes) the adapted model gives for the base model's `embeddings`."""
        white = self.whitening.apply(embeddings)
        return white.astype(np.float32), pack_signs(self.codes.logits(white))

    def describe(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(self.classes.items()))
        return f"{sum(self.classes.values())} labelled tiles ({counts})"


def fit(embeddings: np.ndarray, labels: list[str], background: np.ndarray, bits: int,
        shrinkage: float = DEFAULT_SHRINKAGE) -> LabelAdapter:
    """The adapter of labelled unit `embeddings` (their `labels`), its codes fitted on `background` (a sample of
    the archive's embeddings) with at most `bits` bits (PCA-ITQ has at most one bit per dimension)."""
    names = sorted(set(labels))
    if len(names) < 2:
        raise RsirError(f"the labels name one class ({names[0]!r}); mark tiles that are not it too (class "
                        f"\"{OTHER}\"), or give labels of several classes")
    small = [n for n, c in Counter(labels).items() if c < 2]
    if len(small) == len(names):
        raise RsirError("every class has a single labelled tile; a class's spread needs two or more")
    y = np.array([names.index(v) for v in labels])
    whitening = fit_within_class(embeddings, y, shrinkage)
    white = whitening.apply(background)
    bits = min(bits, white.shape[1] // 8 * 8)
    if len(white) < bits:
        raise RsirError(f"{len(white)} tiles are too few to fit {bits}-bit codes")
    return LabelAdapter(whitening, fit_itq(white, bits), {n: int(np.sum(y == i)) for i, n in enumerate(names)})


def fit_adapter(index: Index, ids: np.ndarray, labels: list[str], shrinkage: float = DEFAULT_SHRINKAGE,
                seed: int = 0) -> LabelAdapter:
    """`fit` on the index's stored embeddings: the labelled tiles, and up to ITQ_SAMPLE tiles for the codes."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(index.n, size=min(ITQ_SAMPLE, index.n), replace=False))
    return fit(index.embeddings(ids), labels, index.embeddings(sample), index.code_bits, shrinkage)


def marks_as_labels(marks: dict[int, bool], class_name: str) -> dict[int, str]:
    """{tile id: label} of relevance marks: `class_name` for the relevant tiles, "other" for the rest."""
    name = class_name.strip()
    if not name or name == OTHER:
        raise RsirError(f'name the class the relevant marks show (not "{OTHER}": that is the not-relevant class)')
    return {int(t): (name if ok else OTHER) for t, ok in marks.items()}


def learn(index_dir: str, out_model: str, label_paths: list[str] = (), field: str = "class",
          labelled: dict[int, str] | None = None, shrinkage: float = DEFAULT_SHRINKAGE, reencode: bool = True,
          progress=None, cancel: Callable[[], bool] | None = None) -> LabelAdapter:
    """Fit the adapter on the index's tiles labelled by `label_paths` and `labelled` ({tile id: label}, e.g.
    `marks_as_labels`; these win over the files), write the adapted model to `out_model` and (unless `reencode`
    is False) install the index's re-encoded vectors as its next generation, with that model. A cancel or a kill
    leaves the index as it was."""
    require_onnx()  # before the work, not after it
    index = Index(index_dir)
    base = index.model.path
    if not os.path.exists(base):
        raise RsirError(f"{base}: the index's model is not there any more; the adapted model is built on it")
    if os.path.abspath(out_model) == os.path.abspath(base):
        raise RsirError(f"{out_model}: is the index's model; write the adapted model to a new file")
    if index.model_info.shared_space:
        raise RsirError(f"{index_dir}: a cross-modal index; its encoders share one space, and adapting one of them "
                        "would leave the others behind")
    merged: dict[int, str] = {}
    if label_paths:
        ids, labels = labelled_ids(index, list(label_paths), field)
        merged.update(zip(ids.tolist(), labels))
    merged.update(labelled or {})
    if not merged:
        raise RsirError("no labelled tiles: mark some hits, or give label files")
    ids = np.array(sorted(merged), np.int64)
    adapter = fit_adapter(index, ids, [merged[int(t)] for t in ids], shrinkage)
    meta = {"rsir.adapted_from": index.model.sha256,
            "rsir.adapted_labels": json.dumps({"files": [os.path.abspath(p) for p in label_paths],
                                              "marked_tiles": len(labelled or {}), "classes": adapter.classes,
                                              "shrinkage": shrinkage})}
    append_to_onnx(base, out_model, adapter.whitening, meta, codes=adapter.codes)
    if reencode:
        rewrite_vectors(index_dir, out_model, adapter.transform, progress=progress, cancel=cancel)
    return adapter
