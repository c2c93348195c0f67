"""Fixtures: real ONNX models exported by training/, synthetic GeoTIFFs written with GDAL."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tests.rasters import mosaic_with_twin, write_raster


def export_tiny(path: str, bits: int = 64, input_size: int = 32, bands=(1, 2, 3), seed: int = 0,
                input_size_range: tuple[int, int] | None = None) -> str:
    """A tiny random CNN + LSH head, exported by training/export.py (parity-checked); with `input_size_range`, a
    resolution-aware model (dynamic input side)."""
    import torch

    from training.export import ExportSpec, export_onnx
    from training.models.retrieval import LSHHead, RetrievalNet
    from training.models.tiny import TinyConvNet

    torch.manual_seed(seed)
    backbone = TinyConvNet(in_channels=len(bands), width=8, seed=seed)
    net = RetrievalNet(backbone, hash_head=LSHHead(backbone.num_features, bits, seed=seed))
    spec = ExportSpec(bands=list(bands), input_size=input_size, scale=255.0, mean=[0.5] * len(bands),
                      std=[0.25] * len(bands), method="test-tiny", train_config={"seed": seed},
                      input_size_range=input_size_range)
    export_onnx(net, spec, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return export_tiny(str(tmp_path_factory.mktemp("models") / "tiny.onnx"))


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> str:
    return export_tiny(str(tmp_path_factory.mktemp("models") / "tiny_other.onnx"), seed=1)


@pytest.fixture(scope="session")
def lite0_model(tmp_path_factory) -> str:
    from training.pretrained import export_imagenet_lsh

    path = str(tmp_path_factory.mktemp("models") / "lite0.onnx")
    export_imagenet_lsh(path, bits=64, input_size=64)
    return path


@pytest.fixture()
def twin_raster(tmp_path) -> str:
    """256 x 256 px, 3-band UTM 18N raster of 16 distinct 64-px tiles; tile (row 3, col 2) copies tile (0, 0)."""
    return write_raster(str(tmp_path / "twin.tif"), mosaic_with_twin())


# QGIS + PyQt double-free some layer objects while the interpreter finalises (after every test has run and the
# report is printed), turning a green run into exit code 134/139. End the process with pytest's own exit status
# once pytest is completely done instead, as QGIS's own test harnesses do; pyproject.toml also sets
# qgis_disable_exit so pytest-qgis does not call exitQgis() first.
_EXIT_STATUS = {"code": 0}


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import sys

    if os.environ.get("RSIR_TEST_NORMAL_EXIT") == "1":  # for debugging the teardown itself
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS["code"])
