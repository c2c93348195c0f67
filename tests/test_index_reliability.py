"""Crash consistency and one writer at a time (issue 27): a kill at every named step of a run, fresh and append,
leaves an index that serves its previous generation, and the rerun gives exactly an uninterrupted run's index;
a second writer is refused naming the first; failed runs leave nothing that blocks the next."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from core.errors import Cancelled, RsirError
from core.index import BuildOptions, Index, build_index, layout
from core.index import builder as builder_module
from core.index.lock import IndexLock
from tests.rasters import mosaic_with_twin, write_raster
from tests.test_index_search import _snapshot

OPTS = BuildOptions(tile=64, checkpoint_every=8, batch_size=4)


class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, so no `except Exception` cleanup of the builder runs."""


@pytest.fixture()
def rasters(tmp_path):
    first = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=1))   # 16 tiles
    second = write_raster(str(tmp_path / "b.tif"), mosaic_with_twin(seed=2))  # 16 more
    return first, second


def _kill_at(monkeypatch, step: str) -> None:
    def hook(name: str) -> None:
        if name == step:
            raise Killed(step)

    monkeypatch.setattr(builder_module, "FAULT_HOOK", hook)


@pytest.mark.parametrize("step", builder_module.STEPS)
@pytest.mark.parametrize("append", [False, True], ids=["fresh", "append"])
def test_kill_at_each_step_then_rerun_equals_uninterrupted(tmp_path, rasters, tiny_model, monkeypatch, step,
                                                           append):
    first, second = rasters
    reference = str(tmp_path / "reference")
    build_index([first], tiny_model, reference, OPTS)
    build_index([second], tiny_model, reference, OPTS)

    out = str(tmp_path / "idx")
    if append:
        build_index([first], tiny_model, out, OPTS)
    _kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        build_index([second] if append else [first, second], tiny_model, out, OPTS)
    monkeypatch.setattr(builder_module, "FAULT_HOOK", None)

    # in between, readers see one complete generation: the previous one, or the new one once its manifest is in
    installed = builder_module.STEPS.index(step) >= builder_module.STEPS.index("install:manifest-replaced")
    if installed:
        assert Index(out).n == 32
    elif append:
        assert Index(out).n == 16 and Index(out).tile(15).source == os.path.abspath(first)
    else:
        with pytest.raises(RsirError, match="indexing has not finished"):
            Index(out)
    with IndexLock(out):  # the killed writer's lock died with it
        pass

    report = build_index([second] if append else [first, second], tiny_model, out, OPTS)
    assert report.total_tiles == 32
    assert _snapshot(out) == _snapshot(reference)
    m = Index(out).manifest  # no .partial left, and no generation but the current and the previous one
    assert sorted(os.listdir(out)) == sorted({layout.LOCK, layout.MANIFEST, m.data} | ({m.previous} - {None}))


def test_generations_readers_and_cleanup(tmp_path, rasters, tiny_model):
    """An index open before an update goes on answering from its generation, and moves to the new one at the
    next search; two updates later the oldest generation is removed."""
    first, second = rasters
    third = write_raster(str(tmp_path / "c.tif"), mosaic_with_twin(seed=3))
    out = str(tmp_path / "idx")
    build_index([first], tiny_model, out, OPTS)
    reader = Index(out)
    assert reader.manifest.generation == 1 and reader.data_dir.endswith("gen-000001")
    build_index([second], tiny_model, out, OPTS)
    assert reader.n == 16 and len(reader.embeddings(np.arange(16))) == 16  # the old generation still serves
    assert reader.refresh() and reader.n == 32 and not reader.refresh()
    assert sorted(n for n in os.listdir(out) if layout.is_generation(n)) == ["gen-000001", "gen-000002"]
    build_index([third], tiny_model, out, OPTS)
    assert sorted(n for n in os.listdir(out) if layout.is_generation(n)) == ["gen-000002", "gen-000003"]
    from core.queries import query_from_tile
    from core.search import search

    hits = search(reader, query_from_tile(reader, 0), k=3)  # search() moves the open index to generation 3
    assert reader.n == 48 and hits[0].tile_id != 0


def test_format_1_index_is_read_and_upgraded_by_an_append(tmp_path, rasters, tiny_model):
    """An index written before generations (data files in the folder itself) opens; appending to it writes a
    generation, and the old files go at the update after."""
    import json

    first, second = rasters
    out = str(tmp_path / "idx")
    build_index([first], tiny_model, out, OPTS)
    gen = os.path.join(out, "gen-000001")
    for name in (layout.WINDOWS, layout.MODEL_COPY):  # newer than format 1
        os.remove(os.path.join(gen, name))
    for name in layout.DATA_FILES:  # the same index as rsir wrote it before 2026-12-07
        os.replace(os.path.join(gen, name), os.path.join(out, name))
    os.rmdir(gen)
    with open(os.path.join(out, layout.MANIFEST)) as f:
        manifest = json.load(f)
    for key in ("generation", "data", "previous"):
        manifest.pop(key)
    manifest["format"] = 1
    with open(os.path.join(out, layout.MANIFEST), "w") as f:
        json.dump(manifest, f)
    old = Index(out)
    assert old.n == 16 and old.data_dir == os.path.abspath(out)
    build_index([second], tiny_model, out, OPTS)
    new = Index(out)
    assert new.n == 32 and new.manifest.format == 2 and new.manifest.previous == "."
    np.testing.assert_array_equal(new.embeddings(np.arange(16)), old.embeddings(np.arange(16)))
    third = write_raster(str(tmp_path / "c.tif"), mosaic_with_twin(seed=3))
    build_index([third], tiny_model, out, OPTS)
    assert not os.path.exists(os.path.join(out, layout.EMBEDDINGS)) and Index(out).n == 48


def test_second_writer_is_refused_naming_the_holder(tmp_path, rasters, tiny_model):
    first, _ = rasters
    out = str(tmp_path / "idx")
    with IndexLock(out, what="indexing a.tif"):
        with pytest.raises(RsirError, match=rf"another rsir run is writing this index \(pid {os.getpid()} on .*"
                                            r"indexing a.tif\); wait for it"):
            build_index([first], tiny_model, out, OPTS)
    assert build_index([first], tiny_model, out, OPTS).total_tiles == 16


def test_lock_of_a_killed_process_is_free(tmp_path, rasters, tiny_model):
    """A writer killed with SIGKILL holds nothing: the OS dropped its lock; its file's text is only a hint."""
    first, _ = rasters
    out = str(tmp_path / "idx")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.index.lock import IndexLock\n"
                               f"with IndexLock({out!r}, 'test holder'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RsirError, match=f"pid {holder.pid} .*test holder"):
            build_index([first], tiny_model, out, OPTS)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert build_index([first], tiny_model, out, OPTS).total_tiles == 16


def test_two_cli_writers_at_once_one_refuses(tmp_path, tiny_model):
    """Two `rsir index` processes into one fresh folder: one indexes, the other says who holds the folder; the
    index is complete afterwards."""
    big = write_raster(str(tmp_path / "big.tif"), np.tile(mosaic_with_twin(seed=0), (1, 4, 4)))  # 256 tiles
    out = str(tmp_path / "idx")
    cmd = [sys.executable, "-m", "core.cli", "index", big, "--model", tiny_model, "--out", out, "-q",
           "--checkpoint-every", "2", "--batch-size", "2"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    a = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    a_out, a_err = a.communicate()
    results = sorted([(a.returncode, a_err), (b.returncode, b.stderr)])
    if results[1][0] == 0:  # the first finished before the second looked: then the second had nothing to do
        pytest.skip("the first writer finished before the second started")
    assert results[0][0] == 0 and results[1][0] == 1
    assert "another rsir run is writing this index (pid" in results[1][1] and "Traceback" not in results[1][1]
    assert Index(out).n == 256 and not os.path.exists(os.path.join(out, layout.PARTIAL))


def test_restart_really_restarts(tmp_path, rasters, tiny_model):
    first, _ = rasters
    out = str(tmp_path / "idx")
    calls = {"n": 0}

    def cancel_later() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        build_index([first], tiny_model, out, OPTS, cancel=cancel_later)
    report = build_index([first], tiny_model, out, OPTS, restart=True)
    assert report.resumed_windows == 0 and report.windows_this_run == 16


def test_a_file_failing_mid_read_leaves_nothing_to_block_the_next_run(tmp_path, rasters, tiny_model):
    """A GeoTIFF that opens but fails while its pixels are read: one line naming it; no .partial is left when
    nothing was saved, so the next run (without the file) is not refused; an existing index is untouched."""
    first, second = rasters
    data = (np.random.default_rng(0).random((3, 512, 512)) * 255).astype(np.uint8)
    whole = write_raster(str(tmp_path / "whole.tif"), data)
    raw = open(whole, "rb").read()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(raw[: len(raw) * 2 // 3])  # header and strip offsets intact, the last strips cut off
    out = str(tmp_path / "idx")
    build_index([first], tiny_model, out, OPTS)
    before = _snapshot(out)
    with pytest.raises(RsirError, match="broken.tif: reading pixels failed"):
        build_index([str(broken)], tiny_model, out, BuildOptions(tile=64, checkpoint_every=1000, batch_size=4))
    assert not os.path.exists(os.path.join(out, layout.PARTIAL)) and _snapshot(out) == before
    assert build_index([second], tiny_model, out, OPTS).total_tiles == 32
    fresh = str(tmp_path / "fresh")
    with pytest.raises(RsirError, match="broken.tif: reading pixels failed"):
        build_index([str(broken)], tiny_model, fresh, BuildOptions(tile=64, checkpoint_every=1000, batch_size=4))
    assert not os.path.exists(fresh)  # the folder this run created, removed with it


def test_a_write_that_fails_says_so_and_frees_its_fragments(tmp_path, rasters, tiny_model, monkeypatch):
    """Disk full while the next generation is written: one line naming the file and the problem; the half-written
    generation is removed, the saved chunks kept for the rerun, and the index as it was still serves."""
    import errno

    first, second = rasters
    out = str(tmp_path / "idx")
    build_index([first], tiny_model, out, OPTS)

    def full(name: str) -> None:
        if name == "finalize:written":
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(out, ".partial", "final"))

    monkeypatch.setattr(builder_module, "FAULT_HOOK", full)
    with pytest.raises(RsirError, match=r"no space left on the device; the tiles encoded so far are kept in .*"
                                        r"rerun the same command to resume.*the index as it was is untouched"):
        build_index([second], tiny_model, out, OPTS)
    monkeypatch.setattr(builder_module, "FAULT_HOOK", None)
    assert not os.path.exists(os.path.join(out, layout.PARTIAL, "final")) and Index(out).n == 16
    report = build_index([second], tiny_model, out, OPTS)
    assert report.resumed_windows == 16 and report.total_tiles == 32


def test_bad_options_are_refused_before_anything_is_read(tmp_path, rasters, tiny_model):
    first, _ = rasters
    out = str(tmp_path / "idx")
    for opts, message in ((BuildOptions(tile=0), "--tile 0: must be a whole number"),
                          (BuildOptions(batch_size=-1), "--batch-size -1"),
                          (BuildOptions(max_invalid=1.5), "--max-invalid 1.5"),
                          (BuildOptions(scale=float("nan")), "--scale nan"),
                          (BuildOptions(float_factory="NoSuchIndex"), "--float-factory 'NoSuchIndex': not a valid"),
                          (BuildOptions(binary_factory="BNope"), "--binary-factory 'BNope': not a valid")):
        with pytest.raises(RsirError, match=message):
            build_index([first], tiny_model, out, opts)
    assert not os.path.exists(out)
