"""Labels that become a model (issue 26): an analyst's label layers (exported marks, or any polygons with a class
field) over an index fit a within-class whitening of the index's stored embeddings, with new PCA-ITQ codes of the
whitened embedding; the whitening and codes are appended to the index's model (a new ONNX file), and the index is
re-encoded by applying the same map to its stored embeddings - no image is read again, seconds for 100k tiles.

Why this and not fine-tuning: on AID's 15 unseen classes, whitening fitted on the marks of 10 relevance-feedback
queries lifts mAP@100 of those classes' queries from 64.5 to 74.7 and of the 5 other classes from 47.4 to 53.2,
where a learned linear map near the identity gained 0-2 (docs/results.md, "Relevance feedback")."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from core.encoder import pack_signs
from core.errors import RsirError
from core.index.builder import rewrite_vectors
from core.index.reader import Index

from .datasets import labelled_tiles
from .whitening import CodeProjection, Whitening, append_to_onnx, fit_itq, fit_within_class

DEFAULT_SHRINKAGE = 0.3
ITQ_SAMPLE = 100_000  # index tiles the codes are fitted on


@dataclass
class LabelAdapter:
    whitening: Whitening
    codes: CodeProjection
    classes: dict[str, int]  # class -> labelled tiles

    def transform(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit embeddings, packed codes) the adapted model gives for the base model's `embeddings`."""
        white = self.whitening.apply(embeddings)
        return white.astype(np.float32), pack_signs(self.codes.logits(white))


def labelled_ids(index: Index, label_paths: list[str], field: str = "class") -> tuple[np.ndarray, list[str]]:
    """(tile ids, their labels) of every tile of `index` whose centre lies in a labelled polygon of one of
    `label_paths`; a tile labelled in several files takes the last file's label."""
    labels: dict[int, str] = {}
    for path in label_paths:
        if not os.path.exists(path):
            raise RsirError(f"{path}: no such label file")
        labels.update(labelled_tiles(index, path, field))
    if not labels:
        raise RsirError(f"{', '.join(label_paths)}: no tile of {index.dir} has its centre in a labelled polygon")
    ids = np.array(sorted(labels), np.int64)
    return ids, [labels[int(t)] for t in ids]


def fit(embeddings: np.ndarray, labels: list[str], background: np.ndarray, bits: int,
        shrinkage: float = DEFAULT_SHRINKAGE) -> LabelAdapter:
    """The adapter of labelled unit `embeddings` (their `labels`), its codes fitted on `background` (a sample of
    the archive's embeddings) with at most `bits` bits (PCA-ITQ has at most one bit per dimension)."""
    names = sorted(set(labels))
    if len(names) < 2:
        raise RsirError(f"the labels name one class ({names[0]!r}); mark tiles that are not it too (class "
                        "\"other\"), or give labels of several classes")
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


def learn_from_labels(index_dir: str, label_paths: list[str], out_model: str, field: str = "class",
                      shrinkage: float = DEFAULT_SHRINKAGE, reencode: bool = True, progress=None) -> LabelAdapter:
    """Fit the adapter on the labelled tiles of the index, write the adapted model to `out_model` and (unless
    `reencode` is False) install the index's re-encoded vectors as its next generation, with that model."""
    index = Index(index_dir)
    base = index.model.path
    if not os.path.exists(base):
        raise RsirError(f"{base}: the index's model is not there any more; the adapted model is built on it")
    if index.model_info.shared_space:
        raise RsirError(f"{index_dir}: a cross-modal index; its encoders share one space, and adapting one of them "
                        "would leave the others behind")
    ids, labels = labelled_ids(index, label_paths, field)
    adapter = fit_adapter(index, ids, labels, shrinkage)
    meta = {"rsir.adapted_from": index.model.sha256,
            "rsir.adapted_labels": json.dumps({"files": [os.path.abspath(p) for p in label_paths],
                                              "classes": adapter.classes, "shrinkage": shrinkage})}
    append_to_onnx(base, out_model, adapter.whitening, meta, codes=adapter.codes)
    if reencode:
        rewrite_vectors(index_dir, out_model, adapter.transform, progress=progress)
    return adapter

