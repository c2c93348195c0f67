"""How a source's raw values reach the model: (raw + add_offset) / scale, then the model's own mean/std. One
resolver of which scale and offset apply (indexing and queries), and the one place that applies them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ValueScaling:
    """(raw + add_offset) / scale. `add_offset` is ESA's convention: Sentinel-2 products of processing baseline
    04.00 and later store DN = 10000 x reflectance + 1000 and give RADIO_ADD_OFFSET = -1000."""

    scale: float
    add_offset: float = 0.0

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """float32 model-range values of raw pixels."""
        return (np.asarray(raw, np.float32) + np.float32(self.add_offset)) / np.float32(self.scale)

    def describe(self) -> str:
        """"raw / 3000" or "(raw-1000) / 10000"."""
        return f"{f'(raw{self.add_offset:+g})' if self.add_offset else 'raw'} / {self.scale:g}"


def first_given(*values):
    """The first value that is not None (0 is a value: an offset of 0 given for a source is kept)."""
    return next((v for v in values if v is not None), None)


def resolve_values(*candidates: tuple[float | None, float | None], default_scale: float) -> ValueScaling:
    """The scale and offset that apply, from (scale, add_offset) pairs most specific first (e.g. the user's option,
    the source's own spec, what the index recorded): the first scale given (None or 0: not given), the first
    offset given (None: not given), else `default_scale` (the model's) and 0."""
    scale = next((float(s) for s, _ in candidates if s), float(default_scale))
    offset = first_given(*(o for _, o in candidates))
    return ValueScaling(scale, float(offset or 0.0))
