"""Indexing on Dask (`rsir index --dask`): the driver (this process) plans the run's chunks of windows; Dask
workers load the model once each, read their windows with GDAL from storage they all see (local paths, NFS,
/vsicurl/ or /vsis3/ URLs) and encode them (core/index/encode_chunks.py, the single process's own code); the
driver commits the chunks in run order through the builder's checkpoints, so the index is the single-process
one, and a killed driver resumes from its committed chunks. Dask recomputes the chunks of a lost worker."""
from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from ..errors import Cancelled, RsirError
from .encode_chunks import ChunkResult, EncodeSettings, SourceReader, encode_chunk_task

LOCAL = re.compile(r"^local(?::(\d+))?$")
REMOTE = re.compile(r"^(tcp|tls|ucx|ws|wss)://[^\s/:]+(:\d+)?/?$")
CONNECT_TIMEOUT_S = 10
WORKER_WAIT_S = 60


def check_address(text: str) -> str:
    """`text` if it names a cluster --dask accepts (local, local:N, tcp://HOST:PORT), else RsirError."""
    m = LOCAL.match(text)
    if m and (m.group(1) is None or 1 <= int(m.group(1)) <= 1024):
        return text
    if REMOTE.match(text):
        return text
    raise RsirError(f"--dask {text}: give local (one worker per core), local:N (N worker processes) or a "
                    "scheduler address such as tcp://HOST:8786")


def local_workers(text: str) -> int | None:
    """N of "local:N" (the cores' count for "local"); None for a remote scheduler."""
    import os

    m = LOCAL.match(text)
    if not m:
        return None
    return int(m.group(1)) if m.group(1) else max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def cluster_client(address: str, notice: Callable[[str], None] | None = None) -> Iterator:
    """A dask.distributed Client on `address`: an embedded LocalCluster of worker processes (one thread each)
    for local[:N], else the scheduler there. Closed (and the local cluster stopped) on exit."""
    check_address(address)
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise RsirError("--dask needs the Python packages dask and distributed (pip install \"dask[distributed]\")"
                        ) from None
    cluster = None
    n = local_workers(address)
    if n is not None:
        python = worker_python()
        if python:
            import multiprocessing

            multiprocessing.set_executable(python)
        try:
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - e.g. "Nanny failed to start": say what the workers run
            import sys

            raise RsirError(f"--dask {address}: the {n} worker processes did not start ({type(exc).__name__}: "
                            f"{exc}); they run {python or sys.executable}, which must import rsir's dependencies "
                            "(GDAL, numpy, onnxruntime, faiss, dask)") from None
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise RsirError(f"Dask scheduler {address}: none answers there within {CONNECT_TIMEOUT_S} s "
                            f"({type(exc).__name__}); start one (dask scheduler), or run the workers on this "
                            "computer (rsir index --dask local:N; in QGIS, Worker processes)") from None
        except Exception as exc:  # noqa: BLE001 - something answered, not a scheduler (a proxy, another service)
            raise RsirError(f"Dask scheduler {address}: what answers there is not a Dask scheduler "
                            f"({type(exc).__name__}); check the address and port") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise RsirError(f"Dask scheduler {address}: it has no workers (waited {WORKER_WAIT_S} s); start some "
                            "with: dask worker " + address) from None
        if notice:
            workers = len(client.scheduler_info().get("workers", {}))
            link = client.dashboard_link if _has_dashboard() else "none (Dask's dashboard needs the package bokeh)"
            notice(f"Dask: {workers} worker(s) at {client.scheduler.address}; dashboard: {link}")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_python() -> str | None:
    """The Python interpreter local worker processes must be started with, where it is not sys.executable: this
    installation's own (sys.exec_prefix), as inside QGIS sys.executable is the QGIS program or whatever python3
    comes first on PATH (a pyenv or conda one, without GDAL). None when sys.executable is that interpreter."""
    import os
    import sys

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (os.path.join(sys.exec_prefix, "bin", version), os.path.join(sys.exec_prefix, "bin", "python3"),
                 os.path.join(sys.exec_prefix, "python.exe")):
        if os.path.exists(cand):
            same = os.path.exists(sys.executable) and os.path.samefile(cand, sys.executable)
            return None if same else cand
    if os.path.basename(sys.executable).lower().startswith("python"):
        return None
    raise RsirError(f"--dask local: no Python interpreter found to start worker processes with ({sys.executable} "
                    "is not one); use a scheduler address instead")


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def encode_on_cluster(address: str, chunks: Iterable[tuple[int, list]], readers: list[SourceReader],
                      settings: EncodeSettings, total: int, done: int, commit: Callable[[ChunkResult], None],
                      progress=None, cancel=None, notice=None) -> None:
    """Encode `chunks` ((first window number, [(source number, window), ...]), in run order) on the cluster and
    `commit` each result in that order. A few chunks per worker are in flight at a time: the driver holds at most
    those results, and a killed driver loses at most those."""
    from dataclasses import replace

    from dask.distributed import KilledWorker

    if local_workers(address) is not None and settings.threads is None:
        settings = replace(settings, threads=1)  # a worker process per core: one onnxruntime thread each
    with cluster_client(address, notice) as client:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        lookahead = 2 * workers + 1
        pending: deque = deque()
        todo = iter(chunks)

        def submit_next() -> None:
            item = next(todo, None)
            if item is None:
                return
            start, windows = item
            needed = {si: readers[si] for si in sorted({si for si, _ in windows})}  # only this chunk's sources
            pending.append((start, client.submit(encode_chunk_task, windows, needed, settings, pure=False,
                                                 retries=1)))

        for _ in range(lookahead):
            submit_next()
        if progress:
            progress(done, total)
        while pending:
            start, future = pending[0]
            while not future.done():
                if cancel and cancel():
                    client.cancel([f for _, f in pending])
                    raise Cancelled(f"indexing cancelled after {done} of {total} tiles; rerun the same command to "
                                    "resume")
                time.sleep(0.05)
            try:
                result = future.result()
            except KilledWorker as exc:
                raise RsirError(f"--dask {address}: workers died encoding the chunk from window {start} ({exc}); "
                                "the chunks before it are saved: rerun the same command to resume") from None
            pending.popleft()
            commit(result)
            done += result.processed
            if progress:
                progress(done, total)
            submit_next()
