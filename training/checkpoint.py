"""Training checkpoints: `last.pt` (everything needed to resume) and `best.pt` (the model to export).

Both carry the resolved config, class names and normalisation, so `rsir export CHECKPOINT` needs nothing else."""
from __future__ import annotations

import os

import torch

from core.errors import RsirError
from core.fileio import atomic_path

from .config import TrainConfig, parse_config
from .models.factory import TrainNet, build_backbone

FORMAT = "rsir.checkpoint/1"


def save(path: str, payload: dict) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise RsirError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
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
