"""Which encoder reads a query: the index's own, or another modality's encoder of the same cross-modal space.

A cross-modal export (`rsir export` of a paired run) writes one ONNX file per modality side by side, all with the
same `rsir.shared_space`. A query drawn on a SAR layer over an optical index is encoded with the SAR encoder and
searched in the optical index's space. The modality comes from what is known (`choose_query_modality`): the
user's choice, the index's own sources, a modality tag or sensor hints in the raster's metadata, and only then its
band count, which cannot tell a Pauli RGB radar composite from an RGB photo: an ambiguous choice is said."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from .encoder import ModelInfo, info_of_session, open_session
from .errors import RsirError
from .onnx_metadata import read_metadata_props


def read_model_info(path: str) -> ModelInfo:
    """The rsir metadata of an ONNX model (onnxruntime reads it; no inference session is kept)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return info_of_session(path, open_session(path, opts, ["CPUExecutionProvider"]))


def modality_models(model: ModelInfo) -> dict[str, ModelInfo]:
    """{modality: model} of the encoders sharing `model`'s space found beside it (itself included)."""
    found = {model.modality: model}
    if not model.shared_space:
        return found
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(model.path)), "*.onnx"))):
        if os.path.abspath(path) == os.path.abspath(model.path):
            continue
        try:  # the metadata alone first: an inference session per file in the folder took seconds
            if read_metadata_props(path).get("rsir.shared_space", "") != model.shared_space:
                continue
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        try:
            info = read_model_info(path)
        except RsirError:
            continue  # an unrelated or broken file in the same folder is not ours to judge
        if info.shared_space == model.shared_space and info.modality not in found:
            found[info.modality] = info
    return found


MODALITY_TAG = "RSIR_MODALITY"  # gdal_edit.py -mo RSIR_MODALITY=sar scene.tif: the raster says what it is
# words in a raster's GDAL metadata (keys and values, any domain-less item) that name its sensor family
SENSOR_HINTS = {
    "sar": re.compile(r"\b(SAR|SENTINEL-?1|S1[AB]?_|POLARI[SZ]ATION|SIGMA0|GAMMA0|BETA0|BACKSCATTER|PAULI|"
                      r"RADARSAT|TERRASAR|ALOS|PALSAR|ICEYE|CAPELLA)", re.I),
    "optical": re.compile(r"\b(SENTINEL-?2|S2[AB]?_|LANDSAT|REFLECTANCE|ORTHOPHOTO|PLANETSCOPE|SPOT|PLEIADES|"
                          r"WORLDVIEW)", re.I),
}


@dataclass(frozen=True)
class ModalityChoice:
    """The encoder family a query is read with, how that was decided, and what to tell the user (None: nothing,
    the choice was certain)."""

    modality: str
    reason: str
    warning: str | None = None


def raster_modality_hint(ds) -> tuple[str | None, str]:
    """(modality, where it was read) from a raster's own metadata: the RSIR_MODALITY tag, else the one sensor
    family its metadata names; (None, "") when it says nothing or names several."""
    items = dict(ds.GetMetadata() or {})
    for key, value in items.items():
        if key.upper() == MODALITY_TAG:
            return value.strip().lower(), f"its {MODALITY_TAG} tag"
    text = " ".join(f"{k}={v}" for k, v in items.items())  # not the file name: "..._pauli_..._optique.tif" exists
    found = [m for m, pattern in SENSOR_HINTS.items() if pattern.search(text)]
    if len(found) == 1:
        return found[0], "its metadata"
    return None, ""


def choose_query_modality(index, encoders: dict[str, ModelInfo], ds, path: str, chosen: str | None = None,
                          what: str | None = None, how_to_choose: str = "choose the query modality") -> ModalityChoice:
    """The modality whose encoder reads the query raster `path` (opened as `ds`) over `index`: the user's choice;
    the index's own when the raster is one of its sources or on one's pixel grid; the raster's RSIR_MODALITY tag
    or sensor hints; its band count when exactly one encoder takes that many; else the index's own with a warning
    that says so and how to change it (`how_to_choose`: the CLI option or the dock's field)."""
    what = what or os.path.basename(path)
    own = index.model_info.modality
    if chosen and chosen != "auto":
        if chosen not in encoders:
            raise RsirError(f"no {chosen} encoder for this index (have: {', '.join(sorted(encoders))})")
        return ModalityChoice(chosen, "chosen")
    if len(encoders) == 1:
        return ModalityChoice(own, "the index has one encoder")
    if index.same_grid_sources(ds, path):
        return ModalityChoice(own, "an indexed source")
    hint, where = raster_modality_hint(ds)
    if hint is not None:
        if hint not in encoders:
            raise RsirError(f"{what}: {where} says {hint}, but this index has encoders for "
                            f"{', '.join(sorted(encoders))}; {how_to_choose}")
        return ModalityChoice(hint, where)
    bands = ds.RasterCount
    fits = [m for m, info in sorted(encoders.items()) if info.channels == bands]
    wants = ", ".join(f"{m}: {info.channels}" for m, info in sorted(encoders.items()))
    if not fits:
        raise RsirError(f"{what} has {bands} band(s); no encoder of this index takes that many ({wants}). "
                        f"{how_to_choose[:1].upper()}{how_to_choose[1:]} and the bands by hand")
    if len(fits) == 1:
        return ModalityChoice(fits[0], f"its {bands} band(s)")
    pick = own if own in fits else fits[0]
    others = ", ".join(m for m in fits if m != pick)
    return ModalityChoice(pick, "guessed", f"{what} is not a source of this index and its {bands} bands fit the "
                          f"{' and '.join(fits)} encoders: read as {pick} (the index's own); if it is {others}, "
                          f"{how_to_choose} (or tag it: gdal_edit.py -mo {MODALITY_TAG}={others.split(', ')[0]})")


def choose_for_path(index, encoders: dict[str, ModelInfo], path: str, chosen: str | None = None,
                    how_to_choose: str = "choose the query modality") -> ModalityChoice:
    """`choose_query_modality` for a raster, band-stack spec or image file given by path."""
    if len(encoders) == 1 and chosen in (None, "auto", index.model_info.modality):
        return ModalityChoice(index.model_info.modality, "the index has one encoder")  # nothing to open
    from .archive.sources import SourceSpec, expand_archive, open_source

    spec = expand_archive([path])[0]
    ds = open_source(SourceSpec(spec.path, spec.kind))
    return choose_query_modality(index, encoders, ds, spec.path, chosen, how_to_choose=how_to_choose)
