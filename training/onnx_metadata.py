"""Writing the rsir.* metadata contract (docs/contracts.md) into an ONNX model; without torch, so exporting,
quantising and whitening share it."""
from __future__ import annotations


def set_metadata(model, meta: dict[str, str]) -> None:
    """Replace an onnx ModelProto's metadata_props with `meta`."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
