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


def push(iface, text: str, level=Qgis.Critical, duration: int = 15) -> None:
    """Show `text` in the message bar (a long one shortened, all of it under "Show more") and log it."""
    short = bar_text(text)
    if short == text:
        iface.messageBar().pushMessage("RSIR", text, level=level, duration=duration)
    else:
        iface.messageBar().pushMessage("RSIR", short, text, level=level, duration=duration)
    QgsMessageLog.logMessage(text, "RSIR", level)
