"""Ragged arrays: flat values plus per-row lengths, and their padded ``(rows, longest, ...)`` form.

Every sentence-level array in structkd is stored flat (sentences stacked) with per-sentence
lengths; these helpers hold the offset arithmetic and the vectorised padding, so that no caller
loops over sentences in Python.
"""

from __future__ import annotations

import numpy as np


def offsets(lengths: np.ndarray) -> np.ndarray:
    """``(n_rows + 1,)`` int64 ``[0, cumsum(lengths)]``: row i is ``offsets[i]:offsets[i+1]``."""
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def row(values: np.ndarray, offs: np.ndarray, i: int) -> np.ndarray:
    """Row ``i`` of flat ``values`` delimited by ``offs`` (a view)."""
    return values[int(offs[i]) : int(offs[i + 1])]


def scatter_index(
    lengths: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, position, flat source) of every item of rows of ``lengths`` starting at ``starts``."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    rows = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, pos, np.repeat(np.asarray(starts, np.int64), lengths) + pos


def pad(
    values: np.ndarray,
    lengths: np.ndarray,
    starts: np.ndarray,
    *,
    width: int,
    fill: float = 0,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Rows of ``values`` (leading axis ragged) padded into ``(n_rows, width, *item_shape)``.

    Args:
        values: ``(n_items, *item_shape)`` flat rows.
        lengths: ``(n_rows,)`` items per row.  starts: ``(n_rows,)`` first item of each row.
        width: padded length (at least ``lengths.max()``).
        fill: value at padded positions.  dtype: dtype of the result.
    """
    rows, pos, src = scatter_index(lengths, starts)
    out = np.full((len(lengths), width, *values.shape[1:]), fill, dtype)
    out[rows, pos] = values[src]
    return out


def mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """``(n_rows, width)`` bool, True at the first ``lengths[i]`` positions of row i."""
    return np.arange(width)[None, :] < np.asarray(lengths)[:, None]
