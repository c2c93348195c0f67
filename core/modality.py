"""Which encoder reads a query: the index's own, or another modality's encoder of the same cross-modal space.

A cross-modal export (`rsir export` of a paired run) writes one ONNX file per modality side by side, all with the
same `rsir.shared_space`. A query drawn on a SAR layer over an optical index is encoded with the SAR encoder and
searched in the optical index's space; the modality comes from the user's choice, else from the query raster's
band count matched against each encoder's `rsir.bands`."""
from __future__ import annotations

import glob
import os

from .encoder import ModelInfo, info_of_session, open_session
from .errors import RsirError


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
        try:
            info = read_model_info(path)
        except RsirError:
            continue  # an unrelated or broken file in the same folder is not ours to judge
        if info.shared_space == model.shared_space and info.modality not in found:
            found[info.modality] = info
    return found


def pick_query_modality(index_model: ModelInfo, encoders: dict[str, ModelInfo], band_count: int,
                        chosen: str | None = None, what: str = "the query raster") -> str:
    """The modality whose encoder reads the query: `chosen` when given, else the one whose band count matches
    (the index's own modality first when it fits)."""
    if chosen and chosen != "auto":
        if chosen not in encoders:
            raise RsirError(f"no {chosen} encoder for this index (have: {', '.join(sorted(encoders))})")
        return chosen
    fits = [m for m, info in encoders.items() if info.channels == band_count]
    if index_model.modality in fits:
        return index_model.modality
    if len(fits) == 1:
        return fits[0]
    wants = ", ".join(f"{m}: {info.channels}" for m, info in sorted(encoders.items()))
    if not fits:
        raise RsirError(f"{what} has {band_count} band(s); no encoder of this index takes that many ({wants}). "
                        "Choose the query modality and the bands by hand")
    raise RsirError(f"{what} has {band_count} band(s), which fits several modalities ({', '.join(fits)}); "
                    "choose the query modality")
