"""Messages in QGIS's message bar: one line there, the whole text under "Show more" and in the RSIR log."""
from __future__ import annotations

import re

from qgis.core import Qgis, QgsMessageLog


def bar_text(text: str, limit: int = 120) -> str:
    """`text` for the one-line message bar: folders dropped from file paths (the whole text stays under "Show
    more" and in the log), and a text still too long cut after a sentence or clause, with an ellipsis."""
    short = re.sub(r"(?<![\w.])(?:/[^/\s]+)+/([^/\s]+)", r"\1", text)
    if len(short) <= limit:
        return short
    cut = max(short.rfind(sep, 0, limit) for sep in (". ", "; "))
    return (short[:cut] if cut > 40 else short[:limit].rsplit(" ", 1)[0]) + " …"


_shown: list = []  # RSIR's items still in the message bar, oldest first


def clear_ours(iface) -> None:
    """Take RSIR's earlier messages off the bar. QGIS stacks messages and only counts down the one on top, so an
    old error came back each time a newer message closed, long after it was fixed."""
    bar = iface.messageBar()
    while _shown:
        item = _shown.pop()
        try:
            bar.popWidget(item)
        except RuntimeError:  # QGIS already deleted it (its time ran out)
            pass


def push(iface, text: str, level=Qgis.Critical, duration: int = 15) -> None:
    """Show `text` in the message bar (a long one shortened, all of it under "Show more") and log it; it replaces
    RSIR's earlier messages there."""
    clear_ours(iface)
    short = bar_text(text)
    if short == text:
        iface.messageBar().pushMessage("RSIR", text, level=level, duration=duration)
    else:
        iface.messageBar().pushMessage("RSIR", short, text, level=level, duration=duration)
    item = iface.messageBar().currentItem()
    if item is not None:
        _shown.append(item)
    QgsMessageLog.logMessage(text, "RSIR", level)
