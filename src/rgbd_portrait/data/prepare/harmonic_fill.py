"""Smooth filling of unknown pixels by solving Laplace's equation (a sparse linear system)."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

_NEIGHBOUR_OFFSETS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def harmonic_fill(values: np.ndarray, *, known: np.ndarray, region: np.ndarray, outside_value: float) -> np.ndarray:
    """Fill `region & ~known` so each filled pixel is the mean of its 4 neighbours.

    Boundary conditions: `known` pixels keep `values`; pixels outside both masks hold `outside_value`; the
    image border is free (zero normal derivative), since what continues past a crop is unknown. Every
    connected part of the filled area must touch a known or outside pixel. Returns a float32 copy of
    `values` with the fill.
    """
    unknown = region & ~known
    filled = values.astype(np.float32).copy()
    count = int(unknown.sum())
    if count == 0:
        return filled
    height, width = unknown.shape
    index = np.full(unknown.shape, -1, dtype=np.int64)
    index[unknown] = np.arange(count)
    ys, xs = np.nonzero(unknown)
    rows = [index[ys, xs]]
    cols = [index[ys, xs]]
    degree = np.zeros(count)
    right_side = np.zeros(count)
    off_diagonal = []
    for dy, dx in _NEIGHBOUR_OFFSETS:
        neighbour_y, neighbour_x = ys + dy, xs + dx
        in_image = (neighbour_y >= 0) & (neighbour_y < height) & (neighbour_x >= 0) & (neighbour_x < width)
        own = index[ys[in_image], xs[in_image]]
        neighbour_y, neighbour_x = neighbour_y[in_image], neighbour_x[in_image]
        np.add.at(degree, own, 1.0)
        neighbour_index = index[neighbour_y, neighbour_x]
        solved = neighbour_index >= 0
        rows.append(own[solved])
        cols.append(neighbour_index[solved])
        off_diagonal.append(np.full(int(solved.sum()), -1.0))
        is_known = known[neighbour_y, neighbour_x] & ~solved
        np.add.at(right_side, own[is_known], values[neighbour_y[is_known], neighbour_x[is_known]])
        is_outside = ~solved & ~is_known
        np.add.at(right_side, own[is_outside], outside_value)
    data = np.concatenate([degree, *off_diagonal])
    matrix = sparse.csr_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(count, count))
    solution = spsolve(matrix, right_side)
    if not np.all(np.isfinite(solution)):
        raise ValueError("harmonic fill has a region that touches no known or outside pixel")
    filled[unknown] = solution
    return filled
