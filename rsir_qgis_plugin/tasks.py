"""Batch indexing as a QgsTask: progress and cancel in QGIS's task manager; layers added in finished()."""
from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog, QgsTask

from . import layers
from .engine import builder, errors, from_labels


class _WorkTask(QgsTask):
    """A task whose `work()` runs off the main thread; an error or a cancel becomes `error` (one line for the
    user), never an exception in QGIS."""

    failure = ""  # said before an unexpected exception's own text

    def work(self) -> None:
        raise NotImplementedError

    def run(self) -> bool:  # worker thread: no GUI, no layers
        try:
            self.work()
            return True
        except errors.Cancelled as exc:
            self.was_cancelled, self.error = True, str(exc)
        except errors.RsirError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never crash QGIS
            self.error = f"{self.failure}{type(exc).__name__}: {exc}"
        return False

    def progress_to(self, done: int, total: int) -> None:
        self.setProgress(100.0 * done / max(total, 1))


class IndexTask(_WorkTask):
    """Runs core's resumable builder off the main thread. A cancelled run keeps its checkpoints: starting the same
    task again resumes it."""

    def __init__(self, sources: list[str], model: str, out_dir: str, options=None, add_layer: bool = True,
                 on_done=None, restart: bool = False):
        super().__init__(f"RSIR: indexing {len(sources)} source(s) into {out_dir}", QgsTask.CanCancel)
        self.sources, self.model, self.out_dir = list(sources), model, out_dir
        self.options = options or builder.BuildOptions()
        self.add_layer = add_layer
        self.restart = restart  # discard an unfinished run in the folder (another run's, e.g. a killed CLI run)
        self.on_done = on_done
        self.report = None
        self.error: str | None = None
        self.was_cancelled = False

    def work(self) -> None:
        self.report = builder.build_index(self.sources, self.model, self.out_dir, self.options,
                                          progress=self.progress_to, cancel=self.isCanceled, restart=self.restart,
                                          notice=lambda message: QgsMessageLog.logMessage(message, "RSIR", Qgis.Info))

    def finished(self, ok: bool) -> None:  # main thread
        if ok and self.report.tiles_path:
            if self.add_layer:
                layers.add_index_tiles(self.report.index_dir, self.report.tiles_path)
            else:
                layers.follow_index(self.report.index_dir, self.report.tiles_path)
        if not ok:
            QgsMessageLog.logMessage(self.error or "indexing stopped", "RSIR", Qgis.Warning)
        if self.on_done:
            self.on_done(self, ok)

    def summary(self) -> str:
        if self.report is None:
            return self.error or "indexing did not run"
        r = self.report
        return (f"indexed {r.tiles_added} tiles ({r.skipped} skipped as nodata) in {r.seconds:.1f} s; "
                f"index now holds {r.total_tiles} tiles")


class SearchTask(QgsTask):
    """One query off the main thread: reading and encoding it, ranking, the heat map and the tile VRTs all happen in
    `run()` (the map keeps drawing); `finished()` hands the result object to `on_done` on the main thread, which
    adds the layers. `superseded` marks a task whose result a newer query has made moot."""

    def __init__(self, session, make_result, request, on_done, description: str = "RSIR: searching"):
        super().__init__(description, QgsTask.CanCancel)
        self.session, self.make_result, self.request, self.on_done = session, make_result, request, on_done
        self.result = None
        self.error: str | None = None
        self.details: str = ""
        self.superseded = False
        self.seconds = 0.0
        import time

        self.requested = time.perf_counter()  # the analyst waits from here, also while an earlier search runs
        self.layers: list = []

    def run(self) -> bool:  # worker thread: no GUI, no layers
        import time
        import traceback

        t0 = time.perf_counter()
        try:
            self.result = self.make_result(self.session, self.request)
            if not self.superseded:
                from .layers import result_layers

                self.layers = result_layers(self.result)
            return True
        except errors.RsirError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never crash QGIS
            self.error = f"search failed: {type(exc).__name__}: {exc} (details in the RSIR log)"
            self.details = traceback.format_exc()
        finally:
            self.seconds = time.perf_counter() - t0
        return False

    def finished(self, ok: bool) -> None:  # main thread
        if self.details:
            QgsMessageLog.logMessage(self.details, "RSIR", Qgis.Critical)
        self.on_done(self)



class _AdaptTask(_WorkTask):
    """Learning from marks, or undoing it: the index re-encoded from its stored vectors as its next generation
    (core/adapt/from_labels.py), off the main thread. Cancel (or a crash) leaves the index as it was; rerunning
    costs seconds, as no image is read."""

    failure = "Learning from marks failed: "

    def __init__(self, title: str, index_dir: str, on_done):
        super().__init__(title, QgsTask.CanCancel)
        self.index_dir, self.on_done = index_dir, on_done
        self.error: str | None = None
        self.was_cancelled = False
        self.done_text = self.log_text = ""

    def finished(self, ok: bool) -> None:  # main thread
        if not ok:
            QgsMessageLog.logMessage(self.error or "stopped", "RSIR", Qgis.Warning)
        self.on_done(self, ok)


class LearnTask(_AdaptTask):
    def __init__(self, index_dir: str, options, marks: dict[int, bool], on_done):
        super().__init__(f"RSIR: learning from marks ({options.class_name})", index_dir, on_done)
        self.options, self.marks = options, dict(marks)
        self.adapter = None

    def work(self) -> None:
        o = self.options
        labelled = from_labels.marks_as_labels(self.marks, o.class_name) if self.marks else None
        self.adapter = from_labels.learn(self.index_dir, o.out_model, o.label_files, labelled=labelled,
                                         shrinkage=o.shrinkage, progress=self.progress_to, cancel=self.isCanceled)
        self.done_text = f"Learned from {self.adapter.describe()}. Search again to use it."
        self.log_text = f"{self.index_dir}: re-encoded with {o.out_model}"


class UndoLearningTask(_AdaptTask):
    def __init__(self, index_dir: str, on_done):
        super().__init__("RSIR: undoing learning from marks", index_dir, on_done)

    def work(self) -> None:
        model = from_labels.undo(self.index_dir, progress=self.progress_to, cancel=self.isCanceled)
        self.done_text = "The index is back to its model from before learning. Search again to use it."
        self.log_text = f"{self.index_dir}: back to {model}"


class AdaptTask(_AdaptTask):
    def __init__(self, index_dir: str, out_model: str, on_done):
        super().__init__("RSIR: adapting to the archive (no labels)", index_dir, on_done)
        self.out_model = out_model

    def work(self) -> None:
        from .engine import self_supervised

        self_supervised.adapt(self.index_dir, self.out_model, progress=self.progress_to, cancel=self.isCanceled)
        self.done_text = "Adapted to this archive. Search again to use it."
        self.log_text = f"{self.index_dir}: re-encoded with {self.out_model}"
