"""Hash codes fitted on the archive itself: PCA-ITQ (Gong & Lazebnik 2011, faiss's ITQTransform) of the index's own
stored embeddings, instead of the codes the model learned on its training data.

Why: a model's hash head (or the ITQ fitted when it was whitened) splits the space its training data fills; an
analyst's archive fills another part of it. On AID's 15 classes no default trained on, the shipped default's
256-bit codes score 61.3 mAP@100 where its float embedding scores 69.7; the same number of bits fitted on the
archive's embeddings scores 67.5, and on every other row of the generalization suite they do better too
(docs/results.md, "Archive codes"). Fitting takes seconds (at most SAMPLE tiles) and reads no image.

The index keeps the fitted map in its generation folder (layout.CODE_FIT) and says so in the manifest
(code_source "archive-itq"); every code of the index is the map applied to its stored embedding, and a query's code
is the map applied to its embedding (`Index.query_codes`), so the model's own code output is not used."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..encoder import l2_normalise, pack_signs
from ..fileio import atomic_path

SOURCE = "archive-itq"  # the manifest's code_source for codes fitted on the index's embeddings
SAMPLE = 100_000        # most tiles the map is fitted on (a seeded sample of the index)
MIN_TILES_PER_BIT = 2   # fewer tiles than 2 x bits: keep the model's codes (300 tiles for 256 bits lose 1 on EuroSAT)
SEED = 0


def fits_width(bits: int, dim: int) -> bool:
    """Whether `bits`-bit codes can be fitted on `dim`-d embeddings at all: whole bytes, and no more bits than
    dimensions (PCA-ITQ gives at most one bit per dimension; a model with wider codes keeps its own)."""
    return bits <= dim and bits % 8 == 0


def applies(n: int, bits: int, dim: int) -> bool:
    """Whether `bits`-bit codes can be fitted on n tiles of `dim`-d embeddings: `fits_width`, and enough tiles."""
    return n >= MIN_TILES_PER_BIT * bits and fits_width(bits, dim)


@dataclass(frozen=True)
class ArchiveCodes:
    """Codes = signs of (unit embedding - mean) @ matrix; `fitted_on`: the tiles the map was fitted on."""

    mean: np.ndarray    # (D,) float32
    matrix: np.ndarray  # (D, bits) float32
    fitted_on: int

    @property
    def bits(self) -> int:
        return self.matrix.shape[1]

    def codes(self, embeddings: np.ndarray) -> np.ndarray:
        """Packed codes (N, bits/8) of embeddings (N, D), normalised here as the index stores them."""
        return pack_signs((l2_normalise(np.asarray(embeddings, np.float32)) - self.mean) @ self.matrix)

    def save(self, path: str) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, matrix=self.matrix, fitted_on=self.fitted_on)


def load(path: str) -> ArchiveCodes:
    with np.load(path) as z:
        return ArchiveCodes(z["mean"].astype(np.float32), z["matrix"].astype(np.float32), int(z["fitted_on"]))


def fit(embeddings: np.ndarray, bits: int) -> ArchiveCodes:
    """PCA to `bits` dimensions and the ITQ rotation of a seeded sample (at most SAMPLE rows) of `embeddings`
    (N, D; e.g. the index's float16 table, memory-mapped), as one affine map."""
    from ..adapt.linear_maps import fit_itq

    n = len(embeddings)
    rows = np.sort(np.random.default_rng(SEED).choice(n, size=min(SAMPLE, n), replace=False))
    sample = l2_normalise(np.asarray(embeddings[rows], np.float32))
    projection = fit_itq(sample, bits)
    return ArchiveCodes(projection.mean, projection.matrix, len(rows))


def recode(embeddings: np.ndarray, codes_path: str, archive: ArchiveCodes, chunk: int = 65536,
           cancel: Callable[[], bool] | None = None) -> None:
    """Write the packed codes of every row of `embeddings` (N, D) to `codes_path` (the generation's code table)."""
    with open(codes_path + ".tmp", "wb") as f:
        for start in range(0, len(embeddings), chunk):
            if cancel is not None and cancel():
                from ..errors import Cancelled

                raise Cancelled("fitting the archive's codes cancelled")
            f.write(archive.codes(embeddings[start:start + chunk]).tobytes())
    os.replace(codes_path + ".tmp", codes_path)
