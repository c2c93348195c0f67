"""Every training loss by name (`[loss] name`): which method runs it, its terms, and what it needs from the
config and the data. The config check, the trainer, the method factory and the docs read this one table.

Methods (training/methods.py, training/crossmodal.py):
- "pml": a pytorch-metric-learning loss (and miner) on the batch embeddings;
- "bank": SNCA / SNDL over a memory bank written by a momentum encoder, plus the spec's `terms`;
- "milan": MiLAN deep hashing; "classifier": a classifier head alone; "crossmodal": a pair of encoders.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import RsirError

LABELS = ("single", "multi", "either", "paired")  # the data a loss trains on


@dataclass(frozen=True)
class LossSpec:
    name: str
    method: str
    labels: str = "single"  # single-label classes, multi-label sets, either, or co-registered pairs
    hash_bits: bool = False  # trains hash codes: needs model.hash_bits
    terms: frozenset = frozenset()  # extra terms of the method: ce, quant, rotation, sndl, supervised
    summary: str = ""

    @property
    def multi_label_ok(self) -> bool:
        return self.labels in ("multi", "either")


LOSSES: dict[str, LossSpec] = {s.name: s for s in (
    LossSpec("contrastive", "pml", labels="either", summary="pairs, positive margin 0, negative margin 0.5"),
    LossSpec("triplet-batch-hard", "pml", summary="hardest positive and negative in the batch"),
    LossSpec("triplet-semi-hard", "pml", summary="semi-hard negatives"),
    LossSpec("normalized-softmax", "pml", summary="class prototypes at a temperature"),
    LossSpec("nca", "pml", summary="in-batch NCA at SNCA's temperature"),
    LossSpec("snca", "bank", summary="NCA over a memory bank of all training embeddings"),
    LossSpec("snca-ce", "bank", terms=frozenset({"ce"}), summary="SNCA + cross-entropy"),
    LossSpec("rotation-snca", "bank", terms=frozenset({"rotation"}), summary="SNCA + the rotation term"),
    LossSpec("milan", "milan", hash_bits=True, summary="triplet on relaxed codes + quantisation + bit balance"),
    LossSpec("snca-hash", "bank", hash_bits=True, terms=frozenset({"ce", "quant"}),
             summary="SNCA + cross-entropy on relaxed codes + quantisation + bit balance"),
    LossSpec("sndl", "bank", labels="multi", terms=frozenset({"sndl"}), summary="SNCA with shared-label weights"),
    LossSpec("sndl-bce", "bank", labels="multi", terms=frozenset({"sndl", "ce"}), summary="SNDL + BCE"),
    LossSpec("bce", "classifier", labels="multi", summary="a sigmoid classifier head alone"),
    LossSpec("crossmodal-supervised", "crossmodal", labels="paired", terms=frozenset({"supervised"}),
             summary="inter-modal triplet + pairwise likelihood + shared classifier"),
    LossSpec("crossmodal-ssl", "crossmodal", labels="paired",
             summary="InfoNCE across modalities + tuple angle + intra-modal neighbours"),
    LossSpec("crossmodal-supervised-ssl", "crossmodal", labels="paired", terms=frozenset({"supervised", "ssl"}),
             summary="both: class terms, and InfoNCE / angle / neighbours that keep each place apart"),
)}


def loss_spec(name: str, where: str = "<config>") -> LossSpec:
    """The spec of loss `name`; RsirError naming the known ones otherwise."""
    if name not in LOSSES:
        raise RsirError(f"{where}: loss.name {name!r} is not one of {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_names(**wanted) -> tuple[str, ...]:
    """Names of the losses whose spec has every given attribute value, e.g. `loss_names(hash_bits=True)`."""
    return tuple(n for n, s in LOSSES.items() if all(getattr(s, k) == v for k, v in wanted.items()))
