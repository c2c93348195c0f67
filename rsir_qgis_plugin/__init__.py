"""QGIS plugin entry point. Imports nothing heavy here: dependencies are checked first (see deps.py)."""


def classFactory(iface):  # noqa: N802 - QGIS's name
    from .plugin import RsirPlugin

    return RsirPlugin(iface)
