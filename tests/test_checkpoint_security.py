"""Checkpoints are read with torch's weights-only unpickler (issue 27): a crafted `.pt` whose unpickling would run
code is refused with one line naming the file before anything in it runs, through `training.checkpoint.load` and
through `rsir export`; checkpoints our trainer writes (and those of older versions, numpy scalars included) load."""
from __future__ import annotations

import builtins
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from core.cli import main
from core.errors import RsirError
from tests.rasters import write_class_folder
from training import checkpoint
from training.config import parse_config
from training.trainer import train

SHIPPED_RUN = os.path.join(os.path.dirname(__file__), "..", "runs", "multidomain", "lite2-eurosat-aid15", "best.pt")


class _ShellPayload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _ExecPayload:
    """Unpickling this runs Python source that creates `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def _write(kind: str, path: str, marker: str) -> None:
    """A file that looks like an rsir checkpoint and carries a payload."""
    if kind == "torch-shell":
        torch.save({"format": checkpoint.FORMAT, "model": {}, "x": _ShellPayload(marker)}, path)
    elif kind == "torch-exec":
        torch.save({"format": checkpoint.FORMAT, "model": {}, "x": _ExecPayload(marker)}, path)
    else:  # torch.load's legacy (non-zip) format: a bare pickle stream
        with open(path, "wb") as f:
            pickle.dump({"format": checkpoint.FORMAT, "x": _ShellPayload(marker)}, f, protocol=2)


PAYLOADS = {"torch-shell": _ShellPayload, "torch-exec": _ExecPayload, "bare-pickle": _ShellPayload}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_a_crafted_checkpoint_is_refused_before_its_code_runs(tmp_path, capsys, kind):
    # the payload is live: plain unpickling runs it
    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(PAYLOADS[kind](str(control))))
    assert control.exists()

    marker = tmp_path / "payload-ran"
    bad = tmp_path / "crafted.pt"
    _write(kind, str(bad), str(marker))
    with pytest.raises(RsirError) as err:
        checkpoint.load(str(bad))
    msg = str(err.value)
    assert not marker.exists()
    assert msg.startswith(f"{bad}: not an rsir training checkpoint: refused, it would call ") and "\n" not in msg
    assert f"would call {'posix.system' if kind != 'torch-exec' else 'exec'} when loaded" in msg

    out = tmp_path / "x.onnx"
    code = main(["export", str(bad), "--out", str(out)])
    err_text = capsys.readouterr().err.strip()
    assert code == 1 and not marker.exists() and not out.exists()
    assert err_text.splitlines() == [f"rsir export: error: {msg}"]
    assert "weights_only" not in err_text  # none of torch's advice to load it unsafely


def test_a_refused_init_from_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "init.pt"
    _write("torch-shell", str(bad), str(marker))
    cfg = parse_config({"out_dir": str(tmp_path / "run"), "data": {"kind": "folder", "root": str(tmp_path)},
                        "model": {"backbone": "tiny", "pretrained": False, "init_from": str(bad)}})
    with pytest.raises(RsirError, match="not an rsir training checkpoint: refused"):
        checkpoint.init_source(cfg)
    assert not marker.exists()


def _only_plain(obj, where="ckpt") -> list[str]:
    """Paths of values that are not tensors, containers or plain Python values."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _only_plain(v, f"{where}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _only_plain(v, f"{where}[{i}]")]
    ok = obj is None or isinstance(obj, (torch.Tensor, str, bool, int, float, torch.Size))
    return [] if ok and not isinstance(obj, np.generic) else [f"{where}: {type(obj).__name__}"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[str, dict]:
    base = tmp_path_factory.mktemp("ckpt")
    root = write_class_folder(str(base / "classes"), n_classes=2, per_class=10, size=32)
    raw = {"out_dir": str(base / "run"), "seed": 0,
           "data": {"kind": "folder", "root": root, "input_size": 32},
           "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 8, "hash_bits": 0},
           "loss": {"name": "snca-ce", "momentum": 0.9, "sigma": 0.1},
           "optim": {"epochs": 1, "batch_size": 8, "lr": 0.01, "threads": 1}}
    train(parse_config(raw), quiet=True)
    return str(base / "run"), raw


def test_checkpoints_written_by_training_round_trip(tiny_run):
    run, raw = tiny_run
    for name in ("best.pt", "last.pt"):
        ckpt = checkpoint.load(os.path.join(run, name))
        assert ckpt["format"] == checkpoint.FORMAT and ckpt["epoch"] == 1
        assert _only_plain(ckpt) == []
    net = checkpoint.model_from_checkpoint(checkpoint.load(os.path.join(run, "best.pt")))
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).emb.shape == (2, 8)
    # a rerun reads last.pt the same way to resume (here: nothing left to train)
    assert train(parse_config(raw), quiet=True).epochs_run == 0


def test_save_writes_numpy_values_as_plain_ones_and_old_numpy_scalars_still_load(tmp_path):
    state = OrderedDict(w=torch.arange(3.0))
    state._metadata = {"": {"version": 2}}
    path = str(tmp_path / "np.pt")
    checkpoint.save(path, {"model": state, "val_map100": np.float64(12.5), "mean": list(np.float32([0.25, 0.5])),
                           "counts": np.arange(2), "pair": (np.int64(3), "a")})
    ckpt = checkpoint.load(path)
    assert _only_plain(ckpt) == []
    assert ckpt["val_map100"] == 12.5 and ckpt["mean"] == [0.25, 0.5] and ckpt["counts"] == [0, 1]
    assert ckpt["pair"] == (3, "a") and torch.equal(ckpt["model"]["w"], torch.arange(3.0))
    assert checkpoint.plain(state) is state  # nothing to convert: the state_dict (and its metadata) as it was
    mixed = checkpoint.plain({"model": OrderedDict(state, extra=np.float32(1.0)), "n": 1})
    assert mixed["model"]["extra"] == 1.0 and type(mixed["model"]["extra"]) is float

    # what an older version may have written: numpy scalars straight from torch.save
    old = str(tmp_path / "old.pt")
    torch.save({"format": checkpoint.FORMAT, "val_map100": np.float64(7.0), "n": np.int32(4), "ok": np.bool_(1),
                "mean": [np.float32(0.5)]}, old)
    ckpt = checkpoint.load(old)
    assert ckpt["val_map100"] == 7.0 and ckpt["n"] == 4 and bool(ckpt["ok"]) and ckpt["mean"] == [0.5]
    # but not a numpy array (ndarray reconstruction is not allowed)
    torch.save({"format": checkpoint.FORMAT, "a": np.zeros(2)}, old)
    with pytest.raises(RsirError, match=r"old\.pt: not an rsir training checkpoint: refused"):
        checkpoint.load(old)


@pytest.mark.skipif(not os.path.isfile(SHIPPED_RUN), reason="runs/ (a local training run) is not here")
def test_a_real_training_run_checkpoint_loads():
    ckpt = checkpoint.load(SHIPPED_RUN)
    assert ckpt["format"] == checkpoint.FORMAT and _only_plain(ckpt) == []
    assert checkpoint.model_from_checkpoint(ckpt) is not None
