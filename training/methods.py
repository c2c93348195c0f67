"""A training method = how one batch becomes a loss, plus whatever state the loss keeps between batches
(memory bank, momentum encoder). The trainer only calls `loss`, `after_step` and the state functions."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .augment import rotate90, rotate_by
from .config import LossConfig
from .losses import (
    MemoryBank,
    bit_balance_loss,
    momentum_update,
    multilabel_pairs,
    quantization_loss,
    rotation_loss,
    snca_loss,
    sndl_loss,
    standard_loss,
)
from .registry import loss_spec


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices; binary cross-entropy per label for multi-hot rows (multi-label)."""
    if y.ndim == 2:
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y)


class PMLMethod:
    """A pytorch-metric-learning loss (and miner) on the batch embeddings."""

    needs_classifier = False

    def __init__(self, cfg: LossConfig, num_classes: int, embedding_dim: int):
        self.loss_fn, self.miner = standard_loss(cfg.name, num_classes, embedding_dim)
        if cfg.name.startswith("triplet"):
            self.loss_fn.margin = cfg.margin
            if hasattr(self.miner, "margin"):
                self.miner.margin = cfg.margin
        if cfg.name == "normalized-softmax":
            self.loss_fn.temperature = cfg.temperature
        if cfg.name == "nca":  # exp(-d^2 / (2 sigma)) = exp(cos / sigma) up to a constant: SNCA's temperature
            self.loss_fn.softmax_scale = 1 / (2 * cfg.sigma)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.loss_fn.parameters())  # normalized softmax: the class prototypes

    def to(self, device) -> PMLMethod:
        self.loss_fn.to(device)
        return self

    def prepare(self, model, embed_all=None) -> None:
        pass

    def loss(self, model, x, y, idx) -> tuple[torch.Tensor, dict]:
        emb = model(x).emb
        if y.ndim == 2:  # multi-label: pairs by shared labels (only pair losses take them)
            loss = self.loss_fn(emb, None, multilabel_pairs(y))
            return loss, {"loss": loss.item()}
        pairs = self.miner(emb, y) if self.miner is not None else None
        loss = self.loss_fn(emb, y, pairs)
        return loss, {"loss": loss.item()}

    def after_step(self, model, x, idx) -> None:
        pass

    def state_dict(self) -> dict:
        return {"loss_fn": self.loss_fn.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_fn.load_state_dict(state["loss_fn"])


class BankMethod:
    """SNCA over a memory bank of every training embedding, written by a momentum (EMA) encoder
    (Wu et al. 2018; Kang et al. 2020); optionally + cross-entropy (SNCA-CE), + the rotation term
    (rotation-invariant embedding, Kang et al. 2021), or + cross-entropy + quantisation on relaxed hash codes
    (quantised SNCA hashing in the manner of CDNE, Kang et al., JSTARS 2020). With multi-hot labels: SNDL
    (+ binary cross-entropy: SNDL-BCE, Kang et al., TGRS 2020)."""

    def __init__(self, cfg: LossConfig, labels: torch.Tensor, embedding_dim: int, seed: int):
        self.cfg = cfg
        terms = loss_spec(cfg.name).terms
        self.neighbour_loss = sndl_loss if "sndl" in terms else snca_loss
        self.ce_weight = cfg.ce_weight if "ce" in terms else 0.0
        self.quant_weight = cfg.quant_weight if "quant" in terms else 0.0
        self.rotation_weight = cfg.rotation_weight if "rotation" in terms else 0.0
        self.needs_classifier = self.ce_weight > 0
        self.bank = MemoryBank(len(labels), embedding_dim, labels, momentum=0.0, seed=seed)
        self.ema: nn.Module | None = None
        self.rot_gen = torch.Generator().manual_seed(seed + 7)

    def parameters(self) -> list[nn.Parameter]:
        return []

    def to(self, device) -> BankMethod:
        self.bank.to(device)
        return self

    def prepare(self, model, embed_all=None) -> None:
        """Momentum encoder = a copy of the model; the bank starts as its embeddings of the training set
        (`embed_all` None: the caller loads both from a checkpoint next)."""
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        if embed_all is not None:
            self.bank.memory.copy_(embed_all(self.ema))

    def loss(self, model, x, y, idx) -> tuple[torch.Tensor, dict]:
        out = model(x)
        emb, logits = out.emb, out.logits
        snca = self.neighbour_loss(emb, idx, self.bank, self.cfg.sigma)
        total, stats = snca, {self.neighbour_loss.__name__[:-5]: snca.item()}
        if self.quant_weight:
            q, b = quantization_loss(out.codes), bit_balance_loss(out.codes)
            total = total + self.quant_weight * q + self.cfg.balance_weight * b
            stats["quant"], stats["balance"] = q.item(), b.item()
        if self.ce_weight:
            ce = classification_loss(logits, y)
            total = total + self.ce_weight * ce
            stats["ce"] = ce.item()
        if self.rotation_weight:
            if self.cfg.rotation_angles == "any":  # arbitrary angles: invariance beyond the rot90 augmentation
                rot = model(rotate_by(x, 360 * torch.rand(len(x), generator=self.rot_gen))).emb
            else:
                turns = torch.randint(1, 4, (len(x),), generator=self.rot_gen).to(x.device)
                rot = model(rotate90(x, turns)).emb
            r = rotation_loss(rot, idx, self.bank, self.cfg.sigma)
            total = total + self.rotation_weight * r
            stats["rotation"] = r.item()
        stats["loss"] = total.item()
        return total, stats

    @torch.no_grad()
    def after_step(self, model, x, idx) -> None:
        momentum_update(self.ema, model, self.cfg.momentum)
        self.bank.update(self.ema(x)[0], idx)

    def state_dict(self) -> dict:
        return {"bank": self.bank.state_dict(), "ema": self.ema.state_dict(), "rot_gen": self.rot_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state["bank"])
        self.ema.load_state_dict(state["ema"])
        self.rot_gen.set_state(state["rot_gen"])


class StatelessMethod:
    """The trainer's method protocol for losses with no state of their own (no parameters, memory or momentum
    encoder): everything but `loss` is a no-op."""

    needs_classifier = False

    def parameters(self) -> list[nn.Parameter]:
        return []

    def to(self, device) -> StatelessMethod:
        return self

    def prepare(self, model, embed_all=None) -> None:
        pass

    def after_step(self, model, x, idx) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MiLANMethod(StatelessMethod):
    """MiLAN (Roy et al., GRSL 2020): triplet loss on the relaxed codes (semi-hard mining) + push-to-binary
    (quantisation) + bit balance."""

    def __init__(self, cfg: LossConfig):
        from pytorch_metric_learning import losses, miners

        self.cfg = cfg
        self.loss_fn = losses.TripletMarginLoss(margin=cfg.margin)
        self.miner = miners.TripletMarginMiner(margin=cfg.margin, type_of_triplets="semihard")

    def loss(self, model, x, y, idx) -> tuple[torch.Tensor, dict]:
        out = model(x)
        triplet = self.loss_fn(out.emb, y, self.miner(out.emb, y))
        q, b = quantization_loss(out.codes), bit_balance_loss(out.codes)
        total = triplet + self.cfg.quant_weight * q + self.cfg.balance_weight * b
        return total, {"triplet": triplet.item(), "quant": q.item(), "balance": b.item(), "loss": total.item()}


class ClassifierMethod(StatelessMethod):
    """BCE alone (multi-label classification on the embedding's cosine classifier): the baseline SNDL is
    compared with; retrieval then ranks by the embedding the classifier reads."""

    needs_classifier = True

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def loss(self, model, x, y, idx) -> tuple[torch.Tensor, dict]:
        loss = classification_loss(model(x).logits, y)
        return loss, {"loss": loss.item()}


def make_method(cfg: LossConfig, labels: torch.Tensor, num_classes: int, embedding_dim: int, seed: int):
    """The method the registry names for `cfg.name` (training/registry.py), set up for this run."""
    method = loss_spec(cfg.name).method
    if method == "classifier":
        return ClassifierMethod(cfg)
    if method == "milan":
        return MiLANMethod(cfg)
    if method == "bank":
        return BankMethod(cfg, labels, embedding_dim, seed)
    if method == "pml":
        return PMLMethod(cfg, num_classes, embedding_dim)
    raise ValueError(f"loss {cfg.name!r} runs in the {method} trainer, not this one")
