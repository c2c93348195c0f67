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
            proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines = []
            for line in proc.stdout:
                lines.append(line)
                self.setProgress(min(95.0, self.progress() + 1.0))  # pip says nothing of its total
                if self.isCanceled():
                    proc.kill()
                    break
            proc.wait()
            self.ok, self.log = proc.returncode == 0, "".join(lines)[-4000:]
        except OSError as exc:
            self.log = f"{self.command[0]}: {exc}"
        return self.ok

    def finished(self, ok: bool) -> None:  # main thread
        QgsMessageLog.logMessage(f"{' '.join(self.command)}\n{self.log}", "RSIR", Qgis.Info)
        self.on_done(self)
