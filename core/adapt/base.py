"""The index's vectors and model as they were before an analyst's labels adapted it (IDX/base/): every learning
run fits on them, with every label given so far, so learning twice does not stack one adaptation on another, and
Undo learning puts them back. Kept by hard links to the generation they came from (no copy where the file system
allows), dropped when indexing adds tiles they lack."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from ..encoder import l2_normalise
from ..fileio import atomic_path
from ..index import layout
from ..index.builder import keep_model_copy
from ..index.manifest import ModelRef

INFO = "base.json"


@dataclass
class LearningBase:
    dir: str
    model: ModelRef            # the model the index had before learning
    tiles: int
    labels: dict[int, str] = field(default_factory=dict)  # every tile label learned from so far
    code_source: str = "hash"  # the manifest's code_source then: codes fitted on the archive come back refitted

    @property
    def model_file(self) -> str:
        """The file of the model from before learning (`ModelRef.file`: its own path, else the copy kept here)."""
        return self.model.file(os.path.join(self.dir, layout.MODEL_COPY))

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Unit float32 embeddings of tiles `ids`, as the model before learning gave them."""
        width = os.path.getsize(os.path.join(self.dir, layout.EMBEDDINGS)) // 2 // self.tiles
        table = np.memmap(os.path.join(self.dir, layout.EMBEDDINGS), np.float16, "r", shape=(self.tiles, width))
        return l2_normalise(np.asarray(table[np.asarray(ids)], np.float32))

    def save(self) -> None:
        """Write base.json (atomically: the folder counts as kept only once it is there)."""
        m = self.model
        with atomic_path(os.path.join(self.dir, INFO)) as tmp, open(tmp, "w") as f:
            json.dump({"model": {"path": m.path, "sha256": m.sha256, "metadata": m.metadata}, "tiles": self.tiles,
                       "labels": {str(t): v for t, v in sorted(self.labels.items())},
                       "code_source": self.code_source}, f)


def read_base(index_dir: str) -> LearningBase | None:
    """The kept vectors from before learning, or None (never learned, or dropped)."""
    folder = layout.path(index_dir, layout.BASE)
    try:
        with open(os.path.join(folder, INFO)) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    m = d["model"]
    return LearningBase(folder, ModelRef(m["path"], m["sha256"], m["metadata"]), int(d["tiles"]),
                        {int(t): v for t, v in d.get("labels", {}).items()}, d.get("code_source", "hash"))


def keep_base(index) -> LearningBase:
    """Keep the open generation's tables of `index` (a core.index.reader.Index) as the vectors from before learning;
    the caller holds the index's lock."""
    folder = layout.path(index.dir, layout.BASE)
    shutil.rmtree(folder, ignore_errors=True)  # a kill before base.json was written: start again
    os.makedirs(folder)
    for name in (layout.EMBEDDINGS, layout.CODES):
        src, dst = index.data_path(name), os.path.join(folder, name)
        try:
            os.link(src, dst)  # the generation's files are never modified, only removed: a link is a copy
        except OSError:
            shutil.copyfile(src, dst)
    keep_model_copy(folder, index.model_file)  # undo needs it after the generation that holds one is gone
    base = LearningBase(folder, index.model, index.n, code_source=index.manifest.code_source)
    base.save()
    return base


def drop_base(index_dir: str) -> None:
    shutil.rmtree(layout.path(index_dir, layout.BASE), ignore_errors=True)
