"""The generalization suite (training/generalization.py) on a constructed case: two synthetic datasets and a model
whose embedding is each image's mean colour, so which classes it separates, and at what input side it reads each
dataset, are known in advance."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core.encoder import Encoder
from tests.rasters import write_raster
from training.datasets import stratified_sample
from training.export import ExportSpec, export_onnx
from training.generalization import Contender, Suite, SuiteDataset, SuiteTask, suite_table, trained_classes

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "twin": (200, 40, 40)}


class MeanColour(torch.nn.Module):
    """Embedding = the mean of each band over the image: any input side works."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _folder(root: str, classes: list[str], size: int, per_class: int = 10) -> str:
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c))
        for i in range(per_class):
            img = np.array(COLOURS[c], np.float64)[:, None, None] + rng.normal(0, 3, (3, size, size))
            write_raster(os.path.join(root, c, f"{i:02d}.tif"), np.clip(img, 0, 255).astype(np.uint8), epsg=None)
    return root


@pytest.fixture(scope="module")
def suite_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("suite")
    alpha = _folder(str(base / "alpha"), ["red", "green", "blue"], 32)
    # "twin" looks exactly like "red": the two cannot be told apart by colour
    beta = _folder(str(base / "beta"), ["red", "blue", "twin"], 48)
    spec = ExportSpec(bands=[1, 2, 3], input_size=32, scale=255.0, mean=[0.5] * 3, std=[0.25] * 3,
                      method="mean-colour", class_names=["beta:blue", "beta:red"], input_size_range=(24, 40))
    model = str(base / "mean_colour.onnx")
    export_onnx(MeanColour(), spec, model)
    return alpha, beta, model, str(base / "cache")


def test_suite_scores_a_constructed_case_exactly(suite_data):
    alpha, beta, model, cache = suite_data
    tasks = [SuiteTask("alpha", "alpha"),
             SuiteTask("beta all", "beta"),
             SuiteTask("beta distinct", "beta", classes=("red", "blue"), unseen=True),
             SuiteTask("beta twins", "beta", classes=("red", "twin"), unseen=True, max_queries=2, max_database=6)]
    suite = Suite([SuiteDataset("alpha", alpha), SuiteDataset("beta", beta)], tasks, cache, log=lambda _: None)
    rows = {r.task: r for r in suite.run([Contender("mean colour", model)])}

    # the 70/10/20 split of 10 images a class: 7 train, 2 test each
    assert (rows["alpha"].queries, rows["alpha"].database) == (6, 21)
    assert rows["alpha"].float_map == pytest.approx(100.0) and rows["alpha"].hash_map <= 100.0
    assert rows["beta distinct"].float_map == pytest.approx(100.0)
    # red and twin are the same colour: half of each query's 7 nearest are the other class
    assert 40.0 < rows["beta twins"].float_map < 90.0
    assert (rows["beta twins"].queries, rows["beta twins"].database) == (2, 6)
    assert rows["beta all"].float_map < 100.0
    # a resolution-aware model reads each dataset at its own image side, clamped to its range 24-40
    assert rows["alpha"].size == 32 and rows["beta all"].size == 40
    # trained on beta:red and beta:blue: flagged on the beta tasks holding those classes, not on alpha
    assert rows["beta distinct"].trained_on_task and rows["beta twins"].trained_on_task
    assert not rows["alpha"].trained_on_task
    table = suite_table(list(rows.values()), tasks)
    assert "| mean colour (32/40 px) | 100.00 |" in table and "100.00 †" in table

    # a forced size and PCA-ITQ codes (the untrained baselines' hash); cached embeddings give the same numbers
    again = {r.task: r for r in suite.run([Contender("at 24 px", model, size=24, hash="itq")])}
    assert again["alpha"].size == 24 and again["alpha"].float_map == pytest.approx(100.0)
    assert again["alpha"].hash_bits == 3
    cached = {r.task: r for r in suite.run([Contender("mean colour", model)])}
    assert cached["beta twins"].float_map == rows["beta twins"].float_map
    assert len([n for n in os.listdir(cache) if n.startswith("emb-")]) == 4  # 2 datasets x 2 sizes


def test_reranking_the_whole_database_is_float_search_and_archive_codes_fall_back(suite_data):
    """--rerank R >= the database: hash candidates re-ranked by cosine are the float ranking. The mean-colour model
    has 3 sign bits, too few for codes fitted on the archive: its own are scored, as `rsir index` keeps them."""
    alpha, beta, model, cache = suite_data
    tasks = [SuiteTask("alpha", "alpha"), SuiteTask("beta all", "beta")]
    suite = Suite([SuiteDataset("alpha", alpha), SuiteDataset("beta", beta)], tasks, cache, log=lambda _: None,
                  rerank=1000)
    own, fitted = (suite.run([Contender(codes, model, hash=codes)]) for codes in ("model", "archive"))
    for a, b in zip(own, fitted):
        assert a.reranked_map == pytest.approx(a.float_map) and a.hash_map == b.hash_map
    assert "| alpha float | hash | re-ranked |" in suite_table(own, tasks)


def test_reranked_map_keeps_the_hash_candidates():
    """Two queries, four items: the code finds items 0 and 1 first; re-ranking 2 of them puts the more similar one
    first, but cannot reach item 3 (most similar, far in Hamming distance)."""
    from training.generalization import reranked_map

    q_e = np.array([[1.0, 0.0]], np.float32)
    db_e = np.array([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], np.float32)
    q_pm = np.array([[1, 1]], np.float32)
    db_pm = np.array([[1, 1], [1, 1], [-1, -1], [-1, 1]], np.float32)
    q_y, db_y = np.array([0]), np.array([1, 0, 1, 0])
    # candidates {0, 1} re-ranked: 1 (relevant), 0; then nothing: AP@2 over 2 relevant = (1/1) / 2
    assert reranked_map(q_e, db_e, q_pm, db_pm, q_y, db_y, rerank=2, k=2) == pytest.approx(50.0)
    # all four re-ranked: 3, 1 first: both relevant
    assert reranked_map(q_e, db_e, q_pm, db_pm, q_y, db_y, rerank=4, k=2) == pytest.approx(100.0)


def test_trained_classes_reads_namespaced_and_plain_names(suite_data):
    info = Encoder(suite_data[2]).info
    assert trained_classes(info, "beta", ["red", "blue", "twin"]) == {"red", "blue"}
    assert trained_classes(info, "alpha", ["red", "green", "blue"]) == set()
    info.class_names = ["red", "green"]  # a single-dataset model: plain names of this dataset
    assert trained_classes(info, "alpha", ["red", "green", "blue"]) == {"red", "green"}
    assert trained_classes(info, "beta", ["red", "blue", "twin"]) == set()


def test_stratified_sample_keeps_class_shares_and_is_seeded():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = np.arange(100)
    pick = stratified_sample(idx, labels, 10, seed=3)
    assert np.bincount(labels[pick]).tolist() == [5, 3, 2]
    assert np.array_equal(pick, stratified_sample(idx, labels, 10, seed=3))
    assert not np.array_equal(pick, stratified_sample(idx, labels, 10, seed=4))
    assert np.array_equal(stratified_sample(idx, labels, 0), idx)
