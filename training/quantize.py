"""int8 copies of an exported model, keeping its rsir metadata.

Static quantisation (weights per channel and activations, ranges calibrated on a few hundred of the training
images, QDQ format) is the default: on CPU it is about twice as fast as the float model and keeps its embeddings
(docs/results.md). Dynamic quantisation (weights only) needs no images but turns convolutions into ConvInteger,
which onnxruntime runs several times slower than float, and loses more accuracy."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from core.adapt.onnx_graph import set_metadata
from core.fileio import atomic_path

from . import weight_storage


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over raw pixels, preprocessed as core/'s encoder does."""

    def __init__(self, model_path: str, raw: np.ndarray, batch: int = 32):
        from core.encoder import Encoder

        enc = Encoder(model_path, device="cpu")
        self._name = enc.input_name
        self._batches = iter([enc.preprocess(raw[i:i + batch]) for i in range(0, len(raw), batch)])

    def get_next(self) -> dict | None:
        x = next(self._batches, None)
        return None if x is None else {self._name: x}


def quantize_int8(onnx_in: str, onnx_out: str, calibration: np.ndarray | None = None) -> dict[str, str]:
    """Write an int8 copy of `onnx_in` to `onnx_out` (atomically); returns its metadata. `calibration`: raw pixels
    (N, C, S, S) as the model reads them (a few hundred training images): static quantisation; None: dynamic
    (weights only). The embedding changes slightly, so re-run `rsir eval` on the copy before shipping it."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    src = onnx.load(onnx_in)
    meta = {p.key: p.value for p in src.metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        if meta.pop(weight_storage.METADATA_KEY, None):  # the quantiser wants float32 initializers
            weight_storage.restore_float(src)
            onnx_in = os.path.join(tmp, "float32.onnx")
            onnx.save(src, onnx_in)
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(onnx_in, pre, skip_symbolic_shape=True)  # folds BN etc. so more weights quantise
        q = os.path.join(tmp, "q.onnx")
        if calibration is None:
            quantize_dynamic(pre, q, weight_type=QuantType.QUInt8)
            meta["rsir.quantization"] = "int8 weights (onnxruntime dynamic, QUInt8)"
        else:
            quantize_static(pre, q, _Calibration(onnx_in, calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            meta["rsir.quantization"] = (f"int8 weights and activations (onnxruntime static QDQ, per channel, "
                                         f"calibrated on {len(calibration)} images)")
        model = onnx.load(q)
    set_metadata(model, meta)
    with atomic_path(onnx_out) as tmp_out:
        onnx.save(model, tmp_out)
    return meta
