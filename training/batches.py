"""The trainer's batches: scaled, augmented, normalised pixels of in-memory image sets, and each epoch's order.

`SetBatches` serves one split of one dataset; `MultiBatches` several datasets' training splits behind one index
space (dataset d's item i is `offsets[d] + i`), every batch from one dataset so that it has one image size.
"""
from __future__ import annotations

import numpy as np
import torch

from .augment import augment
from .datasets import ImageSet


class SetBatches:
    """One dataset's split: batches (`get`), labels, whole-set embeddings (`embed_all`) and epoch order."""

    def __init__(self, data: ImageSet, scale: float, mean, std, device):
        self.pixels = torch.from_numpy(data.pixels)
        self.labels = torch.from_numpy(data.labels)
        self.scale = float(scale)
        self.mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx: torch.Tensor, aug=None, gen=None) -> torch.Tensor:
        x = self.pixels[idx].float() / self.scale
        if aug is not None:
            x = augment(x, aug, gen)
        return ((x - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def embed_all(self, model, batch: int = 256) -> torch.Tensor:
        was = model.training
        model.eval()
        out = [model(self.get(torch.arange(i, min(i + batch, len(self)))))[0] for i in range(0, len(self), batch)]
        model.train(was)
        return torch.cat(out)

    def steps_per_epoch(self, batch: int) -> int:
        return len(self) // batch

    def epoch_batches(self, gen: torch.Generator, batch: int) -> list[torch.Tensor]:
        """This epoch's batches: a seeded permutation cut into full batches (the last partial one dropped)."""
        order = torch.randperm(len(self), generator=gen)
        return [order[i * batch:(i + 1) * batch] for i in range(len(self) // batch)]


class MultiBatches:
    """Several datasets' training splits behind one index space (dataset d's item i = offsets[d] + i)."""

    def __init__(self, parts: list[SetBatches], caps: list[int]):
        self.parts, self.caps = parts, caps
        self.offsets = np.cumsum([0] + [len(p) for p in parts])[:-1].tolist()
        self.labels = torch.cat([p.labels for p in parts])

    def __len__(self) -> int:
        return int(sum(len(p) for p in self.parts))

    def _part(self, idx: torch.Tensor) -> tuple[SetBatches, torch.Tensor]:
        d = int(np.searchsorted(self.offsets, int(idx[0]), side="right") - 1)
        local = idx - self.offsets[d]
        if bool((local < 0).any() or (local >= len(self.parts[d])).any()):
            raise ValueError("a batch must hold items of one dataset")
        return self.parts[d], local

    def get(self, idx: torch.Tensor, aug=None, gen=None) -> torch.Tensor:
        part, local = self._part(idx)
        return part.get(local, aug, gen)

    @torch.no_grad()
    def embed_all(self, model, batch: int = 256) -> torch.Tensor:
        return torch.cat([p.embed_all(model, batch) for p in self.parts])

    def steps_per_epoch(self, batch: int) -> int:
        return sum((min(cap, len(p)) if cap else len(p)) // batch for p, cap in zip(self.parts, self.caps))

    def epoch_batches(self, gen: torch.Generator, batch: int) -> list[torch.Tensor]:
        """Each dataset's full batches (at most `cap` of its images, a fresh draw each epoch), shuffled together."""
        batches = []
        for part, off, cap in zip(self.parts, self.offsets, self.caps):
            order = torch.randperm(len(part), generator=gen)
            if cap:
                order = order[:cap]
            batches += [order[i * batch:(i + 1) * batch] + off for i in range(len(order) // batch)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


class NeighbourBatches:
    """Batches of which a share is one random tile's nearest tiles on the ground (by position), the rest drawn at
    random: the same-place terms then have neighbouring places as negatives, the ones a place must beat in an index.
    Every item is a seed once per epoch, in a seeded order."""

    def __init__(self, positions: np.ndarray, share: float):
        self.positions = np.asarray(positions, np.float64)
        self.share = share

    def epoch_batches(self, gen: torch.Generator, batch: int) -> list[torch.Tensor]:
        n = len(self.positions)
        near = max(1, min(batch, round(batch * self.share)))
        seeds = torch.randperm(n, generator=gen)[: n // batch].tolist()
        out = []
        for s in seeds:
            dist = ((self.positions - self.positions[s]) ** 2).sum(axis=1)
            chosen = np.argsort(dist, kind="stable")[:near]
            rest = np.setdiff1d(np.arange(n), chosen)
            extra = rest[torch.randperm(len(rest), generator=gen)[: batch - near].numpy()]
            out.append(torch.from_numpy(np.concatenate([chosen, extra]).astype(np.int64)))
        return out
