"""The plugin object QGIS loads: checks dependencies, then adds the dock, its action and the Processing provider."""
from __future__ import annotations

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox, QPushButton

from . import deps


class RsirPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.dock = None
        self.provider = None
        self.action = None
        self.missing: list[str] = []
        self.install_task = None
        self.install_item = None  # the message-bar warning with the Install… button

    def initProcessing(self) -> None:  # noqa: N802 - QGIS's name
        """The Processing provider alone: what qgis_process (scripts, batch servers, CI) loads, with no GUI; the
        desktop calls it too, before initGui."""
        if self.provider is not None or deps.missing_modules():
            return
        from .processing_provider import RsirProvider

        self.provider = RsirProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS's name
        import os

        icon = QIcon(os.path.join(os.path.dirname(os.path.abspath(__file__)), "icon.png"))
        self.action = QAction(icon, "RSIR image retrieval", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.triggered.connect(self.toggle_dock)
        self.iface.addPluginToRasterMenu("&RSIR", self.action)
        self.iface.addToolBarIcon(self.action)
        self.missing = deps.missing_modules()
        if self.missing:
            self._offer_install()
            return
        self._start()

    def _start(self) -> None:
        from .dock import RsirDock

        self.initProcessing()
        self.dock = RsirDock(self.iface, self.iface.mainWindow())
        # connected first: in a running QGIS (plugin enabled or upgraded) adding the dock shows it at once, and the
        # toolbar button stayed off beside an open dock
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.action.setChecked(self.dock.isVisible())

    def _offer_install(self) -> None:
        text = deps.missing_message(self.missing)
        bar = self.iface.messageBar()
        item = bar.createMessage("RSIR", text)
        button = QPushButton("Install…")
        # clicked(bool) would arrive as `ask` = False: the command must be shown and confirmed first
        button.clicked.connect(lambda _checked=False: self.install_dependencies(ask=True))
        item.layout().addWidget(button)
        bar.pushWidget(item, Qgis.Warning)
        self.install_item = item

    def install_dependencies(self, ask: bool = True):
        """Run pip (the command shown is the one run) in a task with progress in QGIS's task manager; the dock
        starts when the packages import."""
        from .install_task import InstallTask

        command = deps.pip_install_command(self.missing)
        if ask and QMessageBox.question(self.iface.mainWindow(), "RSIR", "Install the missing packages with\n\n"
                                        f"{' '.join(command)}\n\ninto {deps.DEPS_DIR}?") != QMessageBox.Yes:
            return None
        self.install_task = InstallTask(command, self._installed)
        QgsApplication.taskManager().addTask(self.install_task)
        self.iface.messageBar().pushMessage("RSIR", "Installing the Python packages in the background (see the "
                                            "task manager)…", level=Qgis.Info, duration=5)
        return self.install_task

    def _installed(self, task) -> None:
        import importlib

        importlib.invalidate_caches()
        self.missing = deps.missing_modules()
        if task.ok and not self.missing:
            if self.install_item is not None:  # "needs packages" is no longer true
                try:
                    self.iface.messageBar().popWidget(self.install_item)
                except RuntimeError:  # closed by the user meanwhile
                    pass
                self.install_item = None
            self.iface.messageBar().pushMessage("RSIR", "Dependencies installed.", level=Qgis.Success)
            self._start()
        else:
            self.iface.messageBar().pushMessage("RSIR", f"Installing failed; still missing {self.missing}. "
                                                f"pip said: {task.log[-300:]}", level=Qgis.Critical)

    def toggle_dock(self, checked: bool) -> None:
        if self.dock is None:
            self.action.setChecked(False)
            if self.missing:  # the warning again, with its Install… button (the first one may have been closed)
                self._offer_install()
            return
        self.dock.setVisible(checked)

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.dock is not None:
            self.dock.release()  # our map tools unset, the canvas's signal disconnected
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
        if self.action is not None:
            self.iface.removePluginRasterMenu("&RSIR", self.action)
            self.iface.removeToolBarIcon(self.action)
