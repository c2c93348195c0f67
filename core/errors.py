"""Errors a user can act on. Each message names the file and the problem; the CLI prints it without a traceback."""


class RsirError(Exception):
    """Bad input or state the user can fix (missing file, wrong model, box outside raster, ...)."""


class Cancelled(RsirError):
    """The caller asked to stop (e.g. the QGIS task's cancel button); work done so far is checkpointed."""
