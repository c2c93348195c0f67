"""Losses on tiny tensors against direct formulas, and their gradients moving the right way."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import MemoryBank, momentum_update, rotation_loss, snca_ce_loss, snca_loss, standard_loss


def _bank():
    labels = torch.tensor([0, 0, 1, 1, 2])
    bank = MemoryBank(5, 3, labels)
    bank.memory.copy_(F.normalize(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0.2],
                                                [0, 0, 1]]), dim=1))
    return bank


def test_snca_equals_direct_formula():
    bank, sigma = _bank(), 0.5
    emb = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.1]]), dim=1)
    idx = torch.tensor([0, 3])
    got = snca_loss(emb, idx, bank, sigma)
    total = 0.0
    for e, i in zip(emb, idx.tolist()):
        s = [math.exp(float(e @ bank.memory[k]) / sigma) for k in range(5)]
        denom = sum(s[k] for k in range(5) if k != i)
        same = sum(s[j] for j in range(5) if j != i and bank.labels[j] == bank.labels[i])
        total += -math.log(same / denom)
    assert float(got) == pytest.approx(total / 2, rel=1e-5)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1])
    assert float(snca_ce_loss(emb, logits, labels, idx, bank, sigma)) == pytest.approx(
        total / 2 + float(F.cross_entropy(logits, labels)), rel=1e-5)


def test_rotation_term_equals_direct_formula_and_bank_update():
    bank, sigma = _bank(), 0.25
    rot = F.normalize(torch.tensor([[0.8, 0.3, 0.1]]), dim=1)
    got = rotation_loss(rot, torch.tensor([1]), bank, sigma)
    s = [math.exp(float(rot[0] @ bank.memory[k]) / sigma) for k in range(5)]
    assert float(got) == pytest.approx(-math.log(s[1] / sum(s)), rel=1e-5)
    new = torch.tensor([[0.0, 0.0, 1.0]])
    before = bank.memory[0].clone()
    bank.update(new, torch.tensor([0]))
    assert torch.allclose(bank.memory[0], F.normalize(0.5 * before + 0.5 * new[0], dim=0))


def test_snca_training_pulls_same_class_together():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    table = torch.nn.Parameter(torch.randn(6, 4))
    bank = MemoryBank(6, 4, labels, momentum=0.0)
    opt = torch.optim.SGD([table], lr=0.5)
    idx = torch.arange(6)
    losses = []
    for _ in range(60):
        emb = F.normalize(table, dim=1)
        loss = snca_loss(emb, idx, bank, sigma=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bank.update(F.normalize(table, dim=1), idx)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.5
    emb = F.normalize(table.detach(), dim=1)
    sims = emb @ emb.t()
    assert sims[0, 1] > sims[0, 3] and sims[3, 4] > sims[3, 0]


def test_contrastive_from_pml_equals_hadsell_formula():
    loss_fn, miner = standard_loss("contrastive")
    assert miner is None
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    d = torch.cdist(emb, emb)
    pos = [d[0, 1]]  # pml's defaults: plain Euclidean distance, margins 0 (positive) / 0.5 (negative)
    neg = [torch.relu(0.5 - d[i, 2]) for i in (0, 1)]
    # pml averages the non-zero pair losses of each kind, then sums the two kinds
    expect = sum(pos) / len(pos) + sum(n for n in neg) / max(1, sum(float(n) > 0 for n in neg))
    assert float(loss_fn(emb, labels)) == pytest.approx(float(expect), rel=1e-5)
    for name in ("triplet-batch-hard", "triplet-semi-hard", "nca"):
        fn, _ = standard_loss(name)
        assert fn is not None
    with pytest.raises(ValueError):
        standard_loss("normalized-softmax")


def test_momentum_update_is_an_ema():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wa = a.weight.detach().clone()
    momentum_update(a, b, m=0.9)
    assert torch.allclose(a.weight, 0.9 * wa + 0.1 * b.weight)
