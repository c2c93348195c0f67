"""Metric-learning losses for retrieval.

Standard losses and miners come from pytorch-metric-learning (`standard_loss`); written here are the ones it
lacks: SNCA with a memory bank (Wu et al. 2018; momentum-encoder bank as in Kang et al. 2020), SNCA-CE, the
rotation term of rotation-invariant embedding (Kang et al. 2021) and its multi-label form SNDL (Kang et al. 2020).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def standard_loss(name: str, num_classes: int | None = None, embedding_dim: int | None = None):
    """(loss, miner or None) from pytorch-metric-learning for the standard methods of the issue."""
    from pytorch_metric_learning import losses, miners

    if name == "contrastive":  # Hadsell et al. 2006
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), None
    if name == "triplet-batch-hard":  # Schroff et al. 2015, hardest positive/negative per anchor
        return losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()
    if name == "triplet-semi-hard":
        return losses.TripletMarginLoss(margin=0.2), miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    if name == "normalized-softmax":  # Zhai & Wu 2018, class prototypes
        if num_classes is None or embedding_dim is None:
            raise ValueError("normalized-softmax needs num_classes and embedding_dim")
        return losses.NormalizedSoftmaxLoss(num_classes, embedding_dim, temperature=0.05), None
    if name == "nca":  # Goldberger et al. 2005, within the batch
        return losses.NCALoss(softmax_scale=1.0), None
    raise ValueError(f"unknown loss {name!r}")


class MemoryBank(nn.Module):
    """L2-normalised embeddings of every training sample, indexed by dataset position, with their labels."""

    def __init__(self, num_samples: int, dim: int, labels: torch.Tensor, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("memory", F.normalize(torch.randn(num_samples, dim, generator=gen), dim=1))
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long))
        self.momentum = momentum

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, indices: torch.Tensor) -> None:
        """memory[i] <- normalise(m * memory[i] + (1 - m) * e); m = 0 writes a momentum encoder's output as is."""
        mixed = self.momentum * self.memory[indices] + (1 - self.momentum) * embeddings.detach()
        self.memory[indices] = F.normalize(mixed, dim=1)


def _bank_log_p(embeddings: torch.Tensor, indices: torch.Tensor, bank: MemoryBank,
                sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_ij over the memory bank with p_ij = exp(s_ij / sigma) / sum_{k != i} exp(s_ik / sigma), the batch's
    row numbers); each image's own slot has p = 0."""
    sims = embeddings @ bank.memory.t() / sigma
    rows = torch.arange(len(indices), device=sims.device)
    sims = sims.clone()
    sims[rows, indices] = float("-inf")  # k != i
    return sims - torch.logsumexp(sims, dim=1, keepdim=True), rows


def snca_loss(embeddings: torch.Tensor, indices: torch.Tensor, bank: MemoryBank, sigma: float = 0.05) -> torch.Tensor:
    """SNCA: p_ij = exp(s_ij / sigma) / sum_{k != i} exp(s_ik / sigma) over the memory bank;
    loss = mean_i -log sum_{j != i, y_j = y_i} p_ij."""
    log_p, rows = _bank_log_p(embeddings, indices, bank, sigma)
    same = bank.labels[None, :] == bank.labels[indices][:, None]
    same[rows, indices] = False
    log_p_same = torch.logsumexp(log_p.masked_fill(~same, float("-inf")), dim=1)
    return -log_p_same.mean()


def snca_ce_loss(embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                 bank: MemoryBank, sigma: float = 0.05, ce_weight: float = 1.0) -> torch.Tensor:
    """SNCA-CE (Kang et al., TGRS 2020): SNCA over the memory bank plus cross-entropy of a classifier head."""
    return snca_loss(embeddings, indices, bank, sigma) + ce_weight * F.cross_entropy(logits, labels)


def sndl_weights(query_labels: torch.Tensor, bank_labels: torch.Tensor) -> torch.Tensor:
    """SNDL's neighbour weights (Kang et al., TGRS 2020, GRN): w_ij = share of the C label positions on which the
    multi-hot vectors of i and j agree, (y_i' . y_j' + C) / (2C) with y' = 2y - 1. 1 for equal label sets, growing
    with every shared label (and every shared absence)."""
    q = query_labels.float() * 2 - 1
    b = bank_labels.float() * 2 - 1
    c = q.shape[1]
    return (q @ b.t() + c) / (2 * c)


def sndl_loss(embeddings: torch.Tensor, indices: torch.Tensor, bank: MemoryBank, sigma: float = 0.05) -> torch.Tensor:
    """SNDL: SNCA's p_ij over the memory bank (k != i), loss = mean_i -log sum_{j != i} w_ij p_ij with the
    multi-label weights of `sndl_weights` (bank.labels is the (N, C) multi-hot matrix)."""
    log_p, rows = _bank_log_p(embeddings, indices, bank, sigma)
    w = sndl_weights(bank.labels[indices], bank.labels)
    w[rows, indices] = 0.0
    return -torch.logsumexp(log_p + torch.log(w.clamp_min(1e-12)), dim=1).mean()


def rotation_loss(rotated_embeddings: torch.Tensor, indices: torch.Tensor, bank: MemoryBank,
                  sigma: float = 0.05) -> torch.Tensor:
    """Rotation term: each rotated copy must pick out its own image's memory slot among all others,
    -log exp(r_i . m_i / sigma) / sum_k exp(r_i . m_k / sigma), averaged (pulls rotations onto the original)."""
    sims = rotated_embeddings @ bank.memory.t() / sigma
    return F.cross_entropy(sims, indices)


def multilabel_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pair indices (a1, p, a2, n) of a batch of multi-hot labels for pytorch-metric-learning's pair losses:
    positive = the two images share at least one label, negative = they share none."""
    shared = labels.float() @ labels.float().t()
    upper = torch.triu(torch.ones_like(shared, dtype=torch.bool), diagonal=1)
    a1, p = torch.nonzero(upper & (shared > 0), as_tuple=True)
    a2, n = torch.nonzero(upper & (shared == 0), as_tuple=True)
    return a1, p, a2, n


def quantization_loss(codes: torch.Tensor) -> torch.Tensor:
    """Push-to-binary term on tanh-relaxed codes: mean over bits and samples of (|b| - 1)^2 (0 when all are +-1)."""
    return (codes.abs() - 1).pow(2).mean()


def bit_balance_loss(codes: torch.Tensor) -> torch.Tensor:
    """Bit balance: mean over bits of (batch mean of b)^2 (0 when every bit is +1 on half the batch)."""
    return codes.mean(dim=0).pow(2).mean()


@torch.no_grad()
def momentum_update(target: nn.Module, source: nn.Module, m: float = 0.999) -> None:
    """EMA of parameters (target <- m * target + (1 - m) * source); buffers are copied."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(m).add_(s.detach(), alpha=1 - m)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)
