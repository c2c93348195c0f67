"""Cross-modal retrieval: one encoder per modality into a common embedding (or hash code) space, and the losses
that align them.

Supervised cross-modal hashing (the loss families of deep cross-modal hashing, e.g. DCMH, Jiang & Li 2017):
- inter-modal triplet: anchors of one modality against positives/negatives of the other (pytorch-metric-learning
  with `ref_emb`), both directions;
- inter-modal pairwise: the negative log-likelihood of the cross-modal similarity matrix, theta_ij = D/2 *
  cos(a_i, b_j) (D = code length or embedding size), per pair log(1 + e^theta_ij) - S_ij theta_ij, S_ij = 1 when
  i and j share the label, averaged over similar and over dissimilar pairs;
- label preservation: one classifier shared by both modalities, cross-entropy on each;
- with hash heads, the quantisation and bit-balance terms of training/losses.py.

Self-supervised (Sumbul, Mueller, Demir, "A Novel Self-Supervised Cross-Modal Image Retrieval Method in Remote
Sensing", ICIP 2022), no labels:
(i) mutual information between modalities, maximised through its InfoNCE bound (partner = positive, every other
    image of the other modality in the batch = negative), both directions;
(ii) the angular distance arccos(a_i . b_i) of each multi-modal tuple, minimised;
(iii) within each modality, each image's most similar other image (by the detached similarities) raised against
    the rest of the batch (an InfoNCE term whose positive is the nearest neighbour).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .losses import bit_balance_loss, quantization_loss
from .models.factory import TrainNet
from .registry import loss_spec


def cross_modal_infonce(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of A must pick b_i among all of B, and b_i must pick a_i among all of A."""
    logits = za @ zb.t() / temperature
    target = torch.arange(len(za), device=za.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def tuple_angular_loss(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """Mean angle (in units of pi) between the two modalities' embeddings of the same footprint."""
    cos = (za * zb).sum(dim=1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.arccos(cos).mean() / math.pi


def intra_modal_neighbour_loss(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log softmax over k != i of s_ik / t, at k = the most similar other image of i (chosen without gradient)."""
    sims = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sims = sims.masked_fill(eye, float("-inf"))
    nearest = sims.detach().argmax(dim=1)
    return F.cross_entropy(sims, nearest)


def inter_modal_pairwise_loss(za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the cross-modal similarity matrix (DCMH form), theta_ij = D/2 * cos(a_i, b_j):
    DCMH's 1/2 u . v for D-bit +-1 codes, where u . v = D cos. The per-pair terms log(1 + e^theta) - S theta are
    averaged over similar and dissimilar pairs separately and the two means added: with instance labels each row
    has one similar pair among B, which the plain mean would drown."""
    theta = za @ zb.t() * (za.shape[1] / 2)
    same = labels[:, None] == labels[None, :]
    nll = F.softplus(theta) - same.float() * theta
    pos = nll[same].mean()
    return pos + nll[~same].mean() if (~same).any() else pos


def split_embedding(za: torch.Tensor, zb: torch.Tensor, class_dims: int):
    """((class part of A, of B), (place part of A, of B)), each part unit-norm; with class_dims 0 both parts are
    the whole embedding. Trained apart, the class part pulls a class together (hub tiles, alone) while the place
    part keeps the places of a class apart: the concatenation ranks by class first and by place within it."""
    if not class_dims:
        return (za, zb), (za, zb)
    cut = [(F.normalize(z[:, :class_dims], dim=1), F.normalize(z[:, class_dims:], dim=1)) for z in (za, zb)]
    return (cut[0][0], cut[1][0]), (cut[0][1], cut[1][1])


class InterModalTriplet:
    """Triplets across modalities with semi-hard mining (pytorch-metric-learning, `ref_emb`), A->B and B->A."""

    def __init__(self, margin: float):
        from pytorch_metric_learning import losses, miners

        self.loss = losses.TripletMarginLoss(margin=margin)
        self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")

    def __call__(self, za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ref = labels.clone()  # pytorch-metric-learning drops the diagonal when ref_labels *is* labels: the partner
        ab = self.loss(za, labels, self.miner(za, labels, zb, ref), zb, ref)
        ba = self.loss(zb, labels, self.miner(zb, labels, za, ref), za, ref)
        return (ab + ba) / 2


class CrossModalNet(nn.Module):
    """Two TrainNets (one backbone and head per modality) into one space; the classifier, if any, is shared."""

    def __init__(self, nets: dict[str, TrainNet]):
        super().__init__()
        if len(nets) != 2:
            raise ValueError("a cross-modal model has exactly two modalities")
        self.modalities = list(nets)
        self.nets = nn.ModuleDict(nets)
        a, b = self.modalities
        if self.nets[a].classifier is not None:
            self.nets[b].classifier = self.nets[a].classifier

    def forward(self, xa: torch.Tensor, xb: torch.Tensor):
        a, b = self.modalities
        return self.nets[a](xa), self.nets[b](xb)


class CrossModalMethod:
    """The weighted sum of the terms above for one batch of pairs; `name` picks the supervised or the
    self-supervised family."""

    def __init__(self, cfg):
        self.cfg = cfg
        terms = loss_spec(cfg.name).terms
        self.supervised = "supervised" in terms
        # the self-supervised terms tell each place from the others: a class-level loss alone lets a few "hub"
        # tiles of a class answer every query of it
        self.self_supervised = "ssl" in terms or not self.supervised
        self.triplet = InterModalTriplet(cfg.margin) if self.supervised else None

    @property
    def needs_classifier(self) -> bool:
        return self.supervised and self.cfg.ce_weight > 0

    def loss(self, model: CrossModalNet, xa, xb, y) -> tuple[torch.Tensor, dict]:
        oa, ob = model(xa, xb)
        c, t = self.cfg, self.cfg.temperature
        (ca, cb), (pa, pb) = split_embedding(oa.emb, ob.emb, c.class_dims)
        terms = {}
        if self.supervised:
            terms["triplet"] = (c.triplet_weight, self.triplet(ca, cb, y))
            terms["pairwise"] = (c.pairwise_weight, inter_modal_pairwise_loss(ca, cb, y))
            if oa.logits is not None:
                terms["ce"] = (c.ce_weight, (F.cross_entropy(oa.logits, y) + F.cross_entropy(ob.logits, y)) / 2)
        if self.self_supervised:
            terms["infonce"] = (c.infonce_weight, cross_modal_infonce(pa, pb, t))
            terms["angular"] = (c.angular_weight, tuple_angular_loss(pa, pb))
            intra = (intra_modal_neighbour_loss(pa, t) + intra_modal_neighbour_loss(pb, t)) / 2
            terms["intra"] = (c.intra_weight, intra)
        if oa.codes is not None:
            codes = torch.cat([oa.codes, ob.codes])
            terms["quant"] = (c.quant_weight, quantization_loss(codes))
            terms["balance"] = (c.balance_weight, bit_balance_loss(codes))
        total = sum(w * v for w, v in terms.values() if w)
        stats = {k: float(v.detach()) for k, (w, v) in terms.items() if w}
        stats["loss"] = float(total.detach())
        return total, stats
