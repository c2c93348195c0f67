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
