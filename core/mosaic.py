"""A PNG contact sheet: the query (red frame, first cell) then its hits in rank order (left to right, top to
bottom), each with its rank drawn in the corner. Colours are stretched jointly so query and hits compare fairly."""
from __future__ import annotations

import os

import numpy as np
from osgeo import gdal

from .archive.pixels import read_window
from .archive.sources import SourceSpec, open_source
from .archive.tiling import TileWindow
from .fileio import atomic_path

# 3x5 bitmap digits, rows top to bottom, 3 bits each (MSB = left column).
_DIGITS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 2, 2, 2), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
}


def _draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int = 3) -> None:
    """Draw `text` (digits) in white on a black box at (x, y) of an (H, W, 3) uint8 image."""
    w = len(text) * 4 * scale + scale
    img[y:y + 7 * scale, x:x + w] = 0
    for i, ch in enumerate(text):
        for r, bits in enumerate(_DIGITS[ch]):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    y0, x0 = y + scale + r * scale, x + scale + (i * 4 + c) * scale
                    img[y0:y0 + scale, x0:x0 + scale] = 255


def _to_rgb(tiles: list[np.ndarray]) -> list[np.ndarray]:
    """(C, S, S) raw tiles -> (S, S, 3) uint8 with a shared 2-98 % stretch per band."""
    rgb = [t[:3] if t.shape[0] >= 3 else np.repeat(t[:1], 3, axis=0) for t in tiles]
    stack = np.stack(rgb).astype(np.float32)
    lo = np.percentile(stack, 2, axis=(0, 2, 3), keepdims=True)[0]
    hi = np.percentile(stack, 98, axis=(0, 2, 3), keepdims=True)[0]
    out = []
    for t in rgb:
        v = np.clip((t - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
        out.append((v * 255).astype(np.uint8).transpose(1, 2, 0))
    return out


def read_tile_pixels(source: str, kind: str, bands: list[int], win: TileWindow, size: int) -> np.ndarray:
    return read_window(open_source(SourceSpec(source, kind)), bands, win, size, source)


def write_mosaic(path: str, query_pixels: np.ndarray | None, hit_pixels: list[np.ndarray], cols: int = 6,
                 cell: int = 128, gap: int = 6) -> str:
    """Write the contact sheet PNG atomically; `query_pixels` may be None (tile queries show hits only)."""
    tiles = ([query_pixels] if query_pixels is not None else []) + list(hit_pixels)
    if not tiles:
        raise ValueError("nothing to draw")
    images = _to_rgb(tiles)
    rows = (len(images) + cols - 1) // cols
    sheet = np.full((rows * (cell + gap) + gap, min(cols, len(images)) * (cell + gap) + gap, 3), 40, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = gap + r * (cell + gap), gap + c * (cell + gap)
        reps = max(1, cell // img.shape[0])
        big = np.kron(img, np.ones((reps, reps, 1), np.uint8))[:cell, :cell]
        is_query = query_pixels is not None and i == 0
        if is_query:  # red frame
            sheet[y - gap // 2:y + cell + gap // 2, x - gap // 2:x + cell + gap // 2] = (220, 30, 30)
        sheet[y:y + big.shape[0], x:x + big.shape[1]] = big
        if not is_query:
            _draw_text(sheet, str(i if query_pixels is not None else i + 1), x + 2, y + 2)
    mem = gdal.GetDriverByName("MEM").Create("", sheet.shape[1], sheet.shape[0], 3, gdal.GDT_Byte)
    for b in range(3):
        mem.GetRasterBand(b + 1).WriteArray(sheet[:, :, b])
    with atomic_path(path) as tmp:
        gdal.GetDriverByName("PNG").CreateCopy(tmp, mem)
        if os.path.exists(tmp + ".aux.xml"):  # the PNG driver's side-car would be left behind by the rename
            os.remove(tmp + ".aux.xml")
    return path
