"""Unlabelled adaptation (`rsir adapt`): the numpy NT-Xent gradient equals torch's; the head trained on views of
the index's own tiles is appended to the model, whose outputs on the tiles' pixels are the re-encoded index's
vectors; `rsir learn-labels --undo` goes back."""
from __future__ import annotations

import numpy as np
import torch

from core.adapt.contrastive import nt_xent_grad, train_linear_head
from core.cli import main
from core.index import BuildOptions, Index, build_index
from tests.rasters import mosaic_with_twin, write_raster


def test_nt_xent_gradient_equals_torch():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 5))
    b = a + 0.3 * rng.normal(size=(8, 5))
    w = np.eye(5) + 0.1 * rng.normal(size=(5, 5))
    loss, grad = nt_xent_grad(a, b, w, 0.1, 0.2)
    tw = torch.tensor(w, requires_grad=True)
    za = torch.nn.functional.normalize(torch.tensor(a) @ tw, dim=1)
    zb = torch.nn.functional.normalize(torch.tensor(b) @ tw, dim=1)
    z = torch.cat([za, zb])
    s = z @ z.T / 0.1
    s.fill_diagonal_(-float("inf"))
    target = torch.cat([torch.arange(8) + 8, torch.arange(8)])
    ref = torch.nn.functional.cross_entropy(s, target) + 0.2 * ((tw - torch.eye(5, dtype=tw.dtype)) ** 2).sum()
    ref.backward()
    assert abs(loss - ref.item()) < 1e-9 and np.abs(grad - tw.grad.numpy()).max() < 1e-9


def test_head_pulls_views_together():
    """Views of one image drift apart along a nuisance direction: the trained head makes them closer than the
    other images are."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(300, 8))
    nuisance = np.zeros(8)
    nuisance[0] = 3.0
    views = np.stack([images + rng.normal(size=(300, 1)) * nuisance for _ in range(2)], 1)
    views /= np.linalg.norm(views, axis=2, keepdims=True)

    def gap(w):
        z = views @ w
        z /= np.linalg.norm(z, axis=2, keepdims=True)
        same = (z[:, 0] * z[:, 1]).sum(1).mean()
        other = (z[:, 0] @ z[:, 1].T).mean()
        return same - other

    head = train_linear_head(views, pull=0.01, epochs=200)
    assert head[0, 0] < 0.8 and gap(head) > gap(np.eye(8)) + 0.05  # the nuisance direction shrinks


def test_adapt_reencodes_the_index_and_undo_restores(tmp_path, tiny_model, capsys):
    from core.archive.gdal_open import open_raster
    from core.archive.pixels import read_window
    from core.archive.tiling import TileWindow
    from core.encoder import Encoder

    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    out = str(tmp_path / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=16))
    before = Index(out)
    ids = np.arange(before.n)
    model = str(tmp_path / "adapted.onnx")
    assert main(["adapt", out, "--out", model, "--sample", "200", "--epochs", "3"]) == 0
    assert "re-encoded" in capsys.readouterr().out
    after = Index(out)
    assert after.model.path == model and after.n == before.n
    assert not np.allclose(after.embeddings(ids), before.embeddings(ids))
    pick = [0, 7, 100, 200]
    pixels = np.stack([read_window(open_raster(raster), [1, 2, 3],
                                   TileWindow(after.tile(t).x, after.tile(t).y, 16, 16), 32) for t in pick])
    np.testing.assert_allclose(Encoder(model).encode(pixels)[0], after.embeddings(pick), atol=5e-3)
    assert main(["learn-labels", out, "--undo"]) == 0
    back = Index(out)
    assert back.model.path == before.model.path and np.array_equal(back.embeddings(ids), before.embeddings(ids))
