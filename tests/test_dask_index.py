"""`rsir index --dask` (issue 28) with a real dask.distributed LocalCluster of 2 worker processes: the index equals
the single-process one byte for byte; a killed driver resumes from its committed chunks; a worker lost mid-run
has its chunk recomputed; a bad cluster address is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.cli import main
from core.index import BuildOptions, build_index
from tests.rasters import mosaic_with_twin, write_raster

DATA = ("embeddings.f16", "codes.u8", "float.faiss", "codes.faiss", "tiles.gpkg")


@pytest.fixture()
def archive(tmp_path) -> list[str]:
    a = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    b = write_raster(str(tmp_path / "b.tif"), mosaic_with_twin(seed=3))
    return [a, b]


@pytest.fixture(autouse=True)
def fixed_gpkg_time(monkeypatch):
    # a GeoPackage records when it was written: with the same time, two runs' tiles.gpkg compare byte for byte
    monkeypatch.setenv("OGR_CURRENT_DATE", "2026-01-01T00:00:00Z")


def _same_index(a: str, b: str) -> None:
    ma, mb = (json.load(open(os.path.join(d, "manifest.json"))) for d in (a, b))
    for m in (ma, mb):
        m.pop("created"), m.pop("updated")
    assert ma == mb
    for name in DATA:
        with open(os.path.join(a, ma["data"], name), "rb") as fa, open(os.path.join(b, mb["data"], name), "rb") as fb:
            assert fa.read() == fb.read(), name


def test_local_cluster_index_is_the_single_process_one(tmp_path, archive, tiny_model):
    opts = dict(tile=16, checkpoint_every=40, batch_size=16)
    single = str(tmp_path / "single")
    build_index(archive, tiny_model, single, BuildOptions(**opts))
    notes = []
    spread = str(tmp_path / "dask")
    report = build_index(archive, tiny_model, spread, BuildOptions(**opts, dask="local:2"), notice=notes.append)
    assert report.total_tiles == 512 and report.sources_added == 2
    assert any(n.startswith("Dask: 2 worker(s) at tcp://") for n in notes)
    _same_index(single, spread)
    # appending with --dask extends the index as the single process does
    c = write_raster(str(tmp_path / "c.tif"), mosaic_with_twin(seed=5))
    build_index([c], tiny_model, single, BuildOptions(**opts))
    build_index([c], tiny_model, spread, BuildOptions(**opts, dask="local:2"))
    _same_index(single, spread)


def test_killed_driver_resumes_and_a_lost_worker_is_recomputed(tmp_path, archive, tiny_model, monkeypatch):
    opts = ["--tile", "16", "--checkpoint-every", "40", "--batch-size", "16", "-q", "--model", tiny_model]
    single = str(tmp_path / "single")
    assert main(["index", *archive, "--out", single, *opts]) == 0
    out = str(tmp_path / "dask")
    # the driver is killed (os._exit) once its first chunk is committed
    env = dict(os.environ, RSIR_FAULT_AT="encode:state-saved")
    run = subprocess.run([sys.executable, "-m", "core.cli", "index", *archive, "--out", out, *opts,
                          "--dask", "local:2"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 137, run.stderr
    state = json.load(open(os.path.join(out, ".partial", "state.json")))
    assert state["done_windows"] == 40 and len(state["chunks"]) == 1
    # the rerun resumes there; meanwhile a worker dies in its first chunk, which Dask gives to the other one
    monkeypatch.setenv("RSIR_WORKER_FAULT", str(tmp_path / "worker-died"))
    report = build_index(archive, tiny_model, out, BuildOptions(tile=16, checkpoint_every=40, batch_size=16,
                                                                dask="local:2"))
    assert os.path.exists(tmp_path / "worker-died")  # a worker did die
    assert report.resumed_windows == 40 and report.windows_this_run == 512 - 40
    _same_index(single, out)


def test_bad_cluster_addresses_are_one_line(tmp_path, archive, tiny_model, capsys, monkeypatch):
    from core.index import distributed

    out = str(tmp_path / "idx")
    with pytest.raises(SystemExit):
        main(["index", *archive, "--out", out, "--model", tiny_model, "--dask", "my-cluster"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--dask: my-cluster: give local" in err or "argument --dask: give local" in err, err
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 2)
    assert main(["index", *archive, "--out", out, "--model", tiny_model, "-q", "--dask", "tcp://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Dask scheduler tcp://127.0.0.1:9: none answers there within 2 s" in err[0], err
    assert not os.path.exists(out)  # nothing written


def test_local_workers_start_with_this_installations_python(monkeypatch):
    """Inside QGIS sys.executable is the QGIS program, or whatever python3 comes first on PATH (a pyenv one without
    GDAL): local workers start with sys.exec_prefix's interpreter instead; in a plain run nothing changes."""
    from core.index import distributed

    assert distributed.worker_python() is None  # this test's own interpreter
    own = distributed.worker_python
    for impostor in ("/usr/bin/qgis.bin", "/root/.pyenv/shims/python3"):
        monkeypatch.setattr(sys, "executable", impostor)
        python = own()
        assert python and python.startswith(sys.exec_prefix) and os.path.basename(python).startswith("python")
