"""Training checkpoints: `last.pt` (everything needed to resume) and `best.pt` (the model to export).

Both carry the resolved config, class names and normalisation, so `rsir export CHECKPOINT` needs nothing else.

A checkpoint is a pickle, and unpickling can call any function the file names: `load` reads it with torch's
weights-only unpickler (tensors, containers and plain values; numpy scalars of older checkpoints besides), so a
crafted file is refused before anything in it runs, and `save` writes only such values."""
from __future__ import annotations

import copy
import os
import pickle
import re
import warnings

import numpy as np
import torch

from core.errors import RsirError
from core.fileio import atomic_path

from .config import TrainConfig, parse_config
from .models.factory import TrainNet, build_backbone

FORMAT = "rsir.checkpoint/1"


def save(path: str, payload: dict) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact. numpy values become plain
    Python ones, which `load` reads back."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **plain(payload)}, tmp)


def plain(obj):
    """`obj` with numpy scalars as Python numbers and numpy arrays as lists, in dicts, lists and tuples at any
    depth; containers without numpy values inside come back as they are (a state_dict keeps its metadata)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        changed = {k: new for k, v in obj.items() if (new := plain(v)) is not v}
        if not changed:
            return obj
        out = copy.copy(obj)  # keeps the type and attributes (a state_dict's _metadata)
        out.update(changed)
        return out
    if type(obj) in (list, tuple):
        items = [plain(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
    return obj


def _numpy_scalar_globals() -> list:
    """What unpickling a numpy scalar names (checkpoints of older versions stored a few): the scalar is rebuilt
    from its raw bytes and a dtype; nothing else of numpy's is allowed."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy before 1.26 has no numpy._core
        from numpy.core.multiarray import scalar
    dtypes = sorted({type(np.dtype(c)) for c in "?bhilqBHILQefd"}, key=lambda t: t.__name__)
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *dtypes]


def _refusal(path: str, exc: Exception) -> RsirError:
    """One line for torch's weights-only refusal (several paragraphs that end in advice to load unsafely)."""
    msg = str(exc)
    named = re.search(r"GLOBAL ([\w.]+)", msg)
    if named:
        return RsirError(f"{path}: not an rsir training checkpoint: refused, it would call {named.group(1)} when "
                         "loaded (a checkpoint holds only tensors and plain values)")
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", msg, re.S)
    reason = " ".join((found.group(1) if found else msg.strip().split("\n")[0]).split())
    return RsirError(f"{path}: not a readable checkpoint ({reason[:200]})")


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise RsirError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_scalar_globals()):
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused it: nothing in it ran
        raise _refusal(path, exc) from None
    except Exception as exc:  # torch raises several types for a non-checkpoint file
        raise RsirError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise RsirError(f"{path}: not an rsir training checkpoint")
    return ckpt


def config_of(ckpt: dict) -> TrainConfig:
    return parse_config(ckpt["config"], ckpt.get("config_source", "<checkpoint>"))


def model_from_checkpoint(ckpt: dict) -> TrainNet:
    """Rebuild the trained network (no pretrained download/load: the checkpoint has every weight)."""
    cfg = config_of(ckpt)
    backbone = build_backbone(cfg.model.backbone, False, len(cfg.data.bands))
    net = TrainNet(backbone, cfg.model.embedding_dim, ckpt["num_classifier_classes"], cfg.model.hash_bits,
                   multi_label=bool(ckpt.get("multi_label", False)))
    net.load_state_dict(ckpt["model"])
    return net.eval()


def init_source(cfg: TrainConfig) -> dict | None:
    """The checkpoint named by `model.init_from` (None when unset), checked against `cfg`: the same backbone and
    band count, or the weights could not fit; the same normalisation is the caller's to adopt."""
    path = cfg.model.init_from
    if not path:
        return None
    ckpt = load(path)
    src = config_of(ckpt)
    if src.model.backbone != cfg.model.backbone or len(src.data.bands) != len(cfg.data.bands):
        raise RsirError(f"{path}: model.init_from is a {src.model.backbone} on {len(src.data.bands)} bands; "
                        f"{cfg.source} trains a {cfg.model.backbone} on {len(cfg.data.bands)}")
    return ckpt


def init_weights(model: TrainNet, ckpt: dict, path: str = "<checkpoint>", class_names: list | None = None) -> list[str]:
    """Copy every tensor of `ckpt`'s model whose name and shape match into `model` (the backbone always; heads
    when the new run has the same ones; the classifier only for the same `class_names`); returns the names of
    the tensors left as built."""
    own = model.state_dict()
    same_classes = class_names is None or list(class_names) == list(ckpt.get("class_names", []))
    taken = {k: v for k, v in ckpt["model"].items() if k in own and own[k].shape == v.shape
             and (same_classes or not k.startswith("classifier."))}
    missing = [k for k in own if k not in taken]
    if any(k.startswith("backbone.") for k in missing):
        raise RsirError(f"{path}: its backbone weights do not fit this model (e.g. {', '.join(missing[:3])})")
    model.load_state_dict(taken, strict=False)
    return missing
