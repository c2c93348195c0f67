"""Encoding a run's windows, one chunk at a time: the same function runs in the single process (`rsir index`) and
in each Dask worker (`rsir index --dask`), so both give the same vectors, tile for tile.

onnxruntime's CPU kernels give bit-identical outputs for a tile whatever its batch and thread count (checked on
the default model), which is what makes a distributed index byte-identical to a single-process one."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..archive.pixels import invalid_fraction, read_window
from ..archive.sources import SourceSpec, open_source
from ..archive.tiling import TileWindow
from ..archive.values import ValueScaling
from ..encoder import Encoder
from ..errors import RsirError


@dataclass(frozen=True)
class SourceReader:
    """What reading one planned source's windows takes (small and picklable: it travels to workers)."""

    spec: SourceSpec
    bands: tuple[int, ...]
    values: ValueScaling
    input_size: int

    @property
    def path(self) -> str:
        return self.spec.path


@dataclass(frozen=True)
class EncodeSettings:
    """The run's options a chunk's encoding depends on."""

    model: str          # ONNX model path (workers must see it too)
    sha256: str         # the model the driver checked: a worker with another file there refuses
    batch_size: int
    max_invalid: float
    nodata: float | None
    device: str = "cpu"
    threads: int | None = None


@dataclass
class ChunkResult:
    """Encoded tiles of a run of windows, in window order: meta rows are (source number, x, y, w, h)."""

    emb: np.ndarray
    codes: np.ndarray
    meta: np.ndarray
    skipped: dict[int, int]  # source number -> windows skipped as nodata
    processed: int           # windows read (kept + skipped); fewer than asked when cancelled
    cancelled: bool = False


class DatasetCache:
    """One open source at a time: archives can hold tens of thousands of patches."""

    def __init__(self):
        self._open: dict[int, object] = {}

    def get(self, si: int, spec: SourceSpec):
        """Source number `si` (whose spec is `spec`) opened; the one open before is closed."""
        if si not in self._open:
            self._open.clear()
            self._open[si] = open_source(spec)
        return self._open[si]


def encode_windows(windows: list[tuple[int, TileWindow]], readers: Mapping[int, SourceReader], encoder: Encoder,
                   settings: EncodeSettings, datasets: DatasetCache | None = None,
                   cancel: Callable[[], bool] | None = None,
                   progress: Callable[[int], None] | None = None) -> ChunkResult:
    """Read, check and encode `windows` ((source number, window), in run order) in batches of
    `settings.batch_size`; windows with more nodata than `settings.max_invalid` are skipped. `cancel` is asked
    before each batch; `progress(windows read so far)` after each."""
    datasets = datasets or DatasetCache()
    info = encoder.info
    meta, embs, codes = [], [], []
    skipped: dict[int, int] = {}
    processed, cancelled, bs = 0, False, settings.batch_size
    for start in range(0, len(windows), bs):
        if cancel and cancel():
            cancelled = True
            break
        # one tensor per input side (patches of several sizes); tiles keep their archive order
        by_size: dict[int, tuple[list, list]] = {}
        for si, win in windows[start:start + bs]:
            r = readers[si]
            ds = datasets.get(si, r.spec)
            raw = read_window(ds, list(r.bands), win, r.input_size, r.path)
            if invalid_fraction(ds, list(r.bands), win, raw, settings.nodata) > settings.max_invalid:
                skipped[si] = skipped.get(si, 0) + 1
                continue
            batch_pix, batch_meta = by_size.setdefault(r.input_size, ([], []))
            batch_pix.append(r.values.apply(raw))
            batch_meta.append((si, win.x, win.y, win.w, win.h))
        if by_size:
            parts = [(encoder.encode(np.stack(pix), scale=1.0), m) for pix, m in by_size.values()]
            batch_meta = [row for _, m in parts for row in m]
            order = sorted(range(len(batch_meta)), key=lambda i: (batch_meta[i][0], i))
            embs.append(np.concatenate([e for (e, _), _ in parts])[order])
            codes.append(np.concatenate([c for (_, c), _ in parts])[order])
            meta.extend(batch_meta[i] for i in order)
        processed += len(windows[start:start + bs])
        if progress:
            progress(processed)
    return ChunkResult(
        emb=np.concatenate(embs) if embs else np.zeros((0, info.embedding_dim), np.float32),
        codes=np.concatenate(codes) if codes else np.zeros((0, info.effective_code_bits // 8), np.uint8),
        meta=np.asarray(meta, dtype=np.int64).reshape(-1, 5), skipped=skipped, processed=processed,
        cancelled=cancelled)


def _fault_point() -> None:
    """Tests and bench/chaos: RSIR_WORKER_FAULT=FILE kills the first worker that gets here (the file marks that
    one has died), as a machine lost mid-run would be."""
    import os

    marker = os.environ.get("RSIR_WORKER_FAULT")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(137)


_WORKER_ENCODERS: dict[tuple, Encoder] = {}  # per worker process: the model is loaded once, not per chunk


def encode_chunk_task(windows: list[tuple[int, TileWindow]], readers: dict[int, SourceReader],
                      settings: EncodeSettings) -> ChunkResult:
    """A Dask task: one chunk, encoded with the worker's copy of the model."""
    _fault_point()
    key = (settings.model, settings.sha256, settings.device, settings.threads, settings.batch_size)
    if key not in _WORKER_ENCODERS:
        encoder = Encoder(settings.model, device=settings.device, threads=settings.threads,
                          batch_size=settings.batch_size)
        if encoder.info.sha256 != settings.sha256:
            raise RsirError(f"{settings.model}: on this worker it is another file (sha256 "
                            f"{encoder.info.sha256[:12]}, the driver's is {settings.sha256[:12]}); give every "
                            "worker the same model")
        _WORKER_ENCODERS.clear()
        _WORKER_ENCODERS[key] = encoder
    return encode_windows(windows, readers, _WORKER_ENCODERS[key], settings)
