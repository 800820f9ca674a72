"""The tile grid over the HR image.

Tiles have a *core* (the region a tile owns: every HR pixel lies in exactly one core)
and a *padded* region (core + overlap/2 on each side, clipped to the image) that is cut
out and fitted.  The grid is centred on the image and always covers it whole.  Tile ids
run row-major from 0: id = j * nx + i with i along x (the original tool's order for a
north-up image, where its RA index ran along x).

Coordinates: 0-based HR pixels of the large image; pixel k spans [k - 0.5, k + 0.5).
"""
from __future__ import annotations

import dataclasses
import math
from typing import List

import numpy as np


@dataclasses.dataclass
class Tile:
    tile_id: int
    ix: int
    iy: int
    core: List[float]     # [x0, x1, y0, y1] pixel edges (half-open) of the owned region
    padded: List[int]     # [x0, x1, y0, y1] integer pixel slice bounds of the cutout (stop exclusive)

    def owns(self, x, y):
        """True where the large-image pixel position (x, y) lies in this tile's core."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        return (x >= self.core[0]) & (x < self.core[1]) & (y >= self.core[2]) & (y < self.core[3])

    @property
    def centre(self):
        """(x, y) of the core centre, large-image 0-based pixels."""
        return 0.5 * (self.core[0] + self.core[1]), 0.5 * (self.core[2] + self.core[3])


def make_grid(shape, pixel_scale_arcsec: float, size_arcsec, overlap_arcsec) -> List[Tile]:
    """Tiles covering an image of `shape` (ny, nx) with cores of `size_arcsec` [x, y]."""
    ny, nx = shape
    tiles = []
    axes = []
    for n_pix, size, over in ((nx, size_arcsec[0], overlap_arcsec[0]), (ny, size_arcsec[1], overlap_arcsec[1])):
        step = size / pixel_scale_arcsec
        count = max(1, math.ceil(n_pix / step - 1e-9))
        start = -0.5 - (count * step - n_pix) / 2.0    # centre the grid on the image
        pad = over / 2.0 / pixel_scale_arcsec
        edges = []
        for k in range(count):
            lo = -0.5 if k == 0 else start + k * step
            hi = n_pix - 0.5 if k == count - 1 else start + (k + 1) * step
            p_lo = max(0, int(math.floor(lo - pad + 0.5)))
            p_hi = min(n_pix, int(math.ceil(hi + pad - 0.5)))
            edges.append((lo, hi, p_lo, p_hi))
        axes.append(edges)
    for j, (y0, y1, py0, py1) in enumerate(axes[1]):
        for i, (x0, x1, px0, px1) in enumerate(axes[0]):
            tiles.append(Tile(j * len(axes[0]) + i, i, j, [x0, x1, y0, y1], [px0, px1, py0, py1]))
    return tiles


def tile_from_dict(d) -> Tile:
    return Tile(int(d["tile_id"]), int(d["ix"]), int(d["iy"]), list(d["core"]), list(d["padded"]))
