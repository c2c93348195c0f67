"""Half-precision storage of a model's weights: large float32 initializers are stored as float16 and cast back to
float32 at the start of the graph. The file shrinks by half (the EuroSAT Lite2 default: 20.2 -> 10.3 MB); the
network still computes in float32 (onnxruntime folds the casts when it loads the model, so it runs as fast), and
only the weights' rounding to 11 significant bits moves the embeddings (cosine >= 0.99996 on EuroSAT test images,
docs/results.md). Without torch, so export, whitening and quantisation share it."""
from __future__ import annotations

import numpy as np

from core.adapt.onnx_graph import set_metadata
from core.fileio import atomic_path

METADATA_KEY = "rsir.weight_storage"
STORAGE = "float16"
SUFFIX = "__float16"
MIN_ELEMENTS = 1024  # biases, norms and small matrices keep float32: they are a few KB and not worth the rounding


def store_half(model, min_elements: int = MIN_ELEMENTS) -> int:
    """Store the float32 initializers of at least `min_elements` values of an onnx ModelProto as float16, each
    followed by a Cast to float32 under its old name (in place). Returns how many were converted."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    kept, casts = [], []
    for tensor in graph.initializer:
        values = numpy_helper.to_array(tensor)
        if tensor.data_type != TensorProto.FLOAT or values.size < min_elements:
            kept.append(tensor)
            continue
        if not np.isfinite(values).all() or np.abs(values).max() > np.finfo(np.float16).max:
            raise ValueError(f"initializer {tensor.name} does not fit float16")
        kept.append(numpy_helper.from_array(values.astype(np.float16), tensor.name + SUFFIX))
        casts.append(helper.make_node("Cast", [tensor.name + SUFFIX], [tensor.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)  # the casts first: the graph stays topologically sorted
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def restore_float(model) -> int:
    """Undo store_half in place: the casts become float32 initializers again (the float16-rounded values), for
    tools that need plain initializers (onnxruntime's int8 quantiser). Returns how many were restored."""
    from onnx import numpy_helper

    graph = model.graph
    stored = {t.name: t for t in graph.initializer if t.name.endswith(SUFFIX)}
    casts = [n for n in graph.node if n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in stored]
    for node in casts:
        half = stored.pop(node.input[0])
        graph.initializer.remove(half)
        graph.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(half).astype(np.float32), node.output[0]))
        graph.node.remove(node)
    return len(casts)


def halve_file(path: str, min_elements: int = MIN_ELEMENTS) -> tuple[int, int, int]:
    """Rewrite the ONNX model at `path` with half-precision weight storage, atomically, recording it in the
    metadata (`rsir.weight_storage`). Returns the file size before and after, in bytes, and how many weight
    tensors were converted (0: none had `min_elements` values, or the file was halved already; left as it is)."""
    import os

    import onnx

    before = os.path.getsize(path)
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(METADATA_KEY) == STORAGE:
        return before, before, 0
    try:
        converted = store_half(model, min_elements)
    except ValueError as exc:
        from core.errors import RsirError

        raise RsirError(f"{path}: {exc}") from None
    if not converted:
        return before, before, 0
    meta[METADATA_KEY] = STORAGE
    set_metadata(model, meta)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return before, os.path.getsize(path), converted


def halve_files(paths: list[str], log=print) -> None:
    """`halve_file` each path, saying what it did."""
    for path in paths:
        before, after, converted = halve_file(path)
        log(f"wrote {path}: {converted} weight tensors stored in float16, {before / 1e6:.1f} -> {after / 1e6:.1f} MB"
            if converted else f"{path}: no weight tensor to store in float16 (none has {MIN_ELEMENTS}+ values, "
                              "or it is stored so already); left as it is")
