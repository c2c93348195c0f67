"""rsir core library: archive -> tiles -> encoder -> codes -> index -> hits.

Uses relative imports only, so the QGIS plugin can ship a copy of this package inside its zip.
"""
__version__ = "0.1.0"
