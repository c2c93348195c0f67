"""Appending linear maps to an rsir ONNX model (contract 1, docs/contracts.md): a whitening on its embedding
output, new hash codes in place of its code output, and metadata. Needs the `onnx` package, imported only here
and only when a model is written (the plugin installs it on first use of Learn from marks)."""
from __future__ import annotations

import json

from ..errors import RsirError
from ..fileio import atomic_path
from .linear_maps import CodeProjection, Whitening


def require_onnx():
    """The onnx module, or a one-line error saying how to get it."""
    try:
        import onnx
    except ImportError:
        raise RsirError("writing an adapted model needs the Python package onnx (pip install onnx; in QGIS, the "
                        "RSIR plugin offers to install it)") from None
    return onnx


def set_metadata(model, meta: dict[str, str]) -> None:
    """Replace an onnx ModelProto's metadata_props with `meta`."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]


def _prune(graph) -> None:
    """Drop the nodes and initializers no graph output depends on (a replaced hash head)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    if len(keep) < len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)


def _names(graph) -> set[str]:
    return ({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
            | {i.name for i in graph.input})


def _fresh_tag(graph, *bases: str) -> str:
    """"" or "_2", "_3", ...: a suffix that makes every `base` + suffix a new name in `graph` (a model adapted
    twice, e.g. whitened, then fitted to an analyst's labels, holds the first one's names)."""
    taken = _names(graph)
    k = 1
    while any(f"{b}{'' if k == 1 else f'_{k}'}" in taken for b in bases):
        k += 1
    return "" if k == 1 else f"_{k}"


def _replace_codes(graph, outputs: dict, projection: CodeProjection) -> None:
    """Point the code output at (embedding - mean) @ matrix; the model's own hash head is dropped unless the
    embedding is computed from it (MiLAN's is: normalise(tanh(hash logits)))."""
    from onnx import TensorProto, helper, numpy_helper

    code = outputs.get("code", "hash_logits")
    batch = graph.output[[o.name for o in graph.output].index(outputs["embedding"])].type.tensor_type.shape.dim[0]
    if code in [o.name for o in graph.output]:
        _rename(graph, code, f"{code}_replaced{_fresh_tag(graph, f'{code}_replaced')}")
        graph.output.remove(graph.output[[o.name for o in graph.output].index(code)])
    t = _fresh_tag(graph, "rsir_codes_mean", "rsir_codes_matrix", "rsir_codes_centred")
    graph.initializer.extend([numpy_helper.from_array(projection.mean, f"rsir_codes_mean{t}"),
                              numpy_helper.from_array(projection.matrix, f"rsir_codes_matrix{t}")])
    graph.node.extend([
        helper.make_node("Sub", [outputs["embedding"], f"rsir_codes_mean{t}"], [f"rsir_codes_centred{t}"]),
        helper.make_node("MatMul", [f"rsir_codes_centred{t}", f"rsir_codes_matrix{t}"], [code]),
    ])
    out = helper.make_tensor_value_info(code, TensorProto.FLOAT, [None, projection.matrix.shape[1]])
    out.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.output.append(out)
    outputs["code"] = code
    _prune(graph)


def append_to_onnx(model_path: str, out_path: str, whitening: Whitening | None, metadata: dict[str, str],
                   codes: CodeProjection | None = None) -> None:
    """Write `model_path` with the whitening appended to its embedding output (same output name; None: the
    embedding is only L2-normalised, for codes alone), its code output replaced by `codes` if given, and
    `metadata` added, atomically: a failed write leaves no file at `out_path`."""
    onnx = require_onnx()
    from onnx import helper, numpy_helper

    model = onnx.load(model_path)
    meta = {p.key: p.value for p in model.metadata_props}
    outputs = json.loads(meta["rsir.outputs"])
    name = outputs["embedding"]
    graph = model.graph
    t = _fresh_tag(graph, f"{name}_unwhitened", "rsir_whiten_mean", "rsir_whiten_projection", "rsir_whiten_unit",
                   "rsir_whiten_centred", "rsir_whiten_projected")
    raw = f"{name}_unwhitened{t}"
    _rename(graph, name, raw)
    if whitening is None:  # the codes are fitted on the unit embedding: give them that
        graph.node.append(helper.make_node("LpNormalization", [raw], [name], axis=1, p=2))
    else:
        graph.initializer.extend([numpy_helper.from_array(whitening.mean, f"rsir_whiten_mean{t}"),
                                  numpy_helper.from_array(whitening.projection, f"rsir_whiten_projection{t}")])
        graph.node.extend([
            helper.make_node("LpNormalization", [raw], [f"rsir_whiten_unit{t}"], axis=1, p=2),
            helper.make_node("Sub", [f"rsir_whiten_unit{t}", f"rsir_whiten_mean{t}"], [f"rsir_whiten_centred{t}"]),
            helper.make_node("MatMul", [f"rsir_whiten_centred{t}", f"rsir_whiten_projection{t}"],
                             [f"rsir_whiten_projected{t}"]),
            helper.make_node("LpNormalization", [f"rsir_whiten_projected{t}"], [name], axis=1, p=2),
        ])
    if codes is not None:
        _replace_codes(graph, outputs, codes)
        meta.update({"rsir.outputs": json.dumps(outputs), "rsir.code_bits": str(codes.matrix.shape[1]),
                     "rsir.model_type": "embedding+hash"})
    meta.update(metadata)
    set_metadata(model, meta)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, tmp)
