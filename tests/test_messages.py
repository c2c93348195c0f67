"""RSIR's messages in a real QgsMessageBar: a newer one replaces RSIR's older ones, so a fixed error does not come
back when a later message closes (QGIS stacks messages and only counts down the one on top)."""
from __future__ import annotations

from qgis.core import Qgis
from qgis.gui import QgsMessageBar

from rsir_qgis_plugin import messages


class _Iface:
    """The one call of QGIS's iface that messages.py makes."""

    def __init__(self, bar: QgsMessageBar):
        self.bar = bar

    def messageBar(self) -> QgsMessageBar:  # noqa: N802 - QGIS's name
        return self.bar


def test_a_newer_message_replaces_the_older_ones(qgis_app):
    bar = QgsMessageBar()
    other = bar.createMessage("another plugin", "its own message")
    bar.pushWidget(other, Qgis.Info, 0)
    iface = _Iface(bar)
    messages.push(iface, "/data/s2.vrt: 100 % of its pixels are far above the model's range. " * 3)
    assert len(bar.items()) == 2 and bar.currentItem().level() == Qgis.Critical
    assert "s2.vrt: 100 %" in bar.currentItem().text() and "/data/" not in bar.currentItem().text()
    messages.push(iface, "indexed 961 tiles", level=Qgis.Success, duration=10)
    assert {i.level() for i in bar.items()} == {Qgis.Info, Qgis.Success}  # the error is gone, the other kept
    assert len(bar.items()) == 2
    messages.clear_ours(iface)
    assert [i.text() for i in bar.items()] == ["its own message"]
    messages.clear_ours(iface)  # nothing of ours left: nothing to do
    assert len(bar.items()) == 1
