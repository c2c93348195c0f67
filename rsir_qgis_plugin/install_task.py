"""pip install of the plugin's missing packages as a QgsTask. Imports nothing of core (nor faiss, onnxruntime):
it runs exactly when those are missing."""
from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog, QgsTask


class InstallTask(QgsTask):
    """pip install of the missing Python packages, off the main thread (it takes a minute, and QGIS froze)."""

    def __init__(self, command: list[str], on_done):
        super().__init__("RSIR: installing Python packages", QgsTask.CanCancel)
        self.command, self.on_done = command, on_done
        self.ok, self.log = False, ""

    def run(self) -> bool:
        import os
        import subprocess

        from .deps import DEPS_DIR

        os.makedirs(DEPS_DIR, exist_ok=True)
        try:
            lines = []
            # the with-block closes pip's output pipe (left open, it surfaced as a ResourceWarning in QGIS's log)
            with subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                for line in proc.stdout:
                    lines.append(line)
                    self.setProgress(min(95.0, self.progress() + 1.0))  # pip says nothing of its total
                    if self.isCanceled():
                        proc.kill()
                        break
            self.ok, self.log = proc.returncode == 0, "".join(lines)[-4000:]
        except OSError as exc:
            self.log = f"{self.command[0]}: {exc}"
        return self.ok

    def finished(self, ok: bool) -> None:  # main thread
        QgsMessageLog.logMessage(f"{' '.join(self.command)}\n{self.log}", "RSIR", Qgis.Info)
        self.on_done(self)


def offer_optional_install(parent, iface, missing: list[str], required: dict[str, str], why: str, size_mb: int,
                           then, ready_text: str):
    """Ask to install an optional package (the pip command shown is the one run); install it in the background,
    then run `then()` once it imports. Returns the task, or None when the analyst declined."""
    from qgis.core import QgsApplication
    from qgis.PyQt.QtWidgets import QMessageBox

    from . import deps, messages

    command = deps.pip_install_command(missing, required)
    if QMessageBox.question(parent, "RSIR", f"{why} (about {size_mb} MB with what it needs). Install it with\n\n"
                            f"{' '.join(command)}\n\ninto {deps.DEPS_DIR}?") != QMessageBox.Yes:
        return None

    def installed(task):
        import importlib

        importlib.invalidate_caches()
        if task.ok and not deps.missing_modules(required):
            messages.push(iface, ready_text, level=Qgis.Success, duration=5)
            then()
        else:
            messages.push(iface, f"Installing {', '.join(missing)} failed: {task.log[-300:]}")

    task = InstallTask(command, installed)
    QgsApplication.taskManager().addTask(task)
    return task
