"""Progress where output is redirected (a log file, a pipe, CI): plain lines with counts, rate and time left, no
terminal bar redrawn with carriage returns; every long step says something."""
from __future__ import annotations

import io

from core.cli import main
from core.progress import Progress
from tests.rasters import write_class_folder


def test_progress_writes_lines_not_a_bar_when_not_on_a_terminal():
    out = io.StringIO()
    bar = Progress("encoding", 4, "img", every=0, stream=out)
    bar.postfix(loss=0.5)
    bar.update(2)
    bar.set(4)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("encoding: 2/4 img (50 %), ") and lines[0].endswith(" left; loss 0.500")
    assert lines[-1].startswith("encoding: 4/4 img in 0:00 (")
    assert "\r" not in out.getvalue()
    resumed = io.StringIO()  # a resumed run says where it starts at once, and its rate counts this run's work
    bar = Progress("indexing", unit="tile", every=0, stream=resumed, resumable=True)
    bar.set(600, 1000)
    bar.t0 -= 10.0  # as if 10 s passed
    bar.set(700, 1000)
    first, second = resumed.getvalue().splitlines()
    assert first == "indexing: resuming at 600/1000 tile (60 %)"
    assert second.startswith("indexing: 700/1000 tile (70 %), 10.0 tile/s, 0:30 left")
    quiet = io.StringIO()
    bar = Progress("encoding", 4, quiet=True, every=0, stream=quiet)
    bar.update(4)
    bar.close()
    assert quiet.getvalue() == ""


def test_train_index_and_whiten_report_progress_in_a_log(tiny_model, twin_raster, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSIR_PROGRESS_EVERY", "0")
    data = write_class_folder(str(tmp_path / "data"), n_classes=3, per_class=14, size=32)
    config = tmp_path / "c.toml"
    config.write_text(f'out_dir = "run"\n[data]\nroot = "{data}"\ninput_size = 32\n[model]\nbackbone = "tiny"\n'
                      'pretrained = false\nembedding_dim = 8\n[loss]\nname = "triplet-semi-hard"\n'
                      '[optim]\nepochs = 1\nbatch_size = 8\nthreads = 1\n')
    assert main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    log = captured.err + captured.out
    assert "loading data: 42/42 img" in log and "epoch 1/1: 1/3 batch (33 %)" in log
    assert "epoch 1/1: 3/3 batch in" in log
    assert "\r" not in log
    assert main(["index", twin_raster, "--model", tiny_model, "--out", str(tmp_path / "idx")]) == 0
    log = capsys.readouterr().err
    assert "indexing: 16/16 tile in" in log and "\r" not in log
    assert main(["whiten", tiny_model, data, "--out", str(tmp_path / "w.onnx"), "--itq-codes", "8",
                 "--itq-restarts", "2", "--cache-dir", "", "--force"]) == 0
    captured = capsys.readouterr()
    log = captured.err + captured.out
    assert "encoding the fit images: 27/27 img in" in log and "ITQ seed 2/2: check Hamming mAP@100" in log
    assert "fitting the within-class whitening" in log and "\r" not in log
