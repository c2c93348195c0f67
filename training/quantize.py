"""int8 weight quantisation of an exported model (onnxruntime dynamic quantisation), keeping its rsir metadata."""
from __future__ import annotations

import os
import tempfile

from core.fileio import atomic_path


def quantize_int8(onnx_in: str, onnx_out: str) -> dict[str, str]:
    """Write an int8-weight copy of `onnx_in` to `onnx_out` (atomically); returns its metadata. The embedding
    changes slightly, so re-run `rsir eval` on it before shipping it (docs/results.md records the drop)."""
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    src = onnx.load(onnx_in)
    meta = {p.key: p.value for p in src.metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(onnx_in, pre, skip_symbolic_shape=True)  # folds BN etc. so more weights quantise
        q = os.path.join(tmp, "q.onnx")
        quantize_dynamic(pre, q, weight_type=QuantType.QUInt8)
        model = onnx.load(q)
    meta["rsir.quantization"] = "int8 weights (onnxruntime dynamic, QUInt8)"
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(onnx_out) as tmp_out:
        onnx.save(model, tmp_out)
    return meta
