"""Evaluate a function of integer count columns once per distinct tuple of counts.

Many examples and pairs share the same counts (a run of t trials has at most ~t^3 distinct
(hits_in, n_in, hits_out, n_out) tuples, in practice a few thousand), so intervals and p-values are
computed on the distinct tuples and spread back.
"""

from __future__ import annotations

import math

import numpy as np

#: Largest product of the count ranges for which a tuple of counts is packed into one int64 key.
MAX_PACKED_KEY = 2**62


def per_distinct(fn, *columns):
    """Return fn(*distinct columns) spread back to every entry, for fn returning one array or a tuple of arrays.

    columns: broadcastable integer arrays; the results have their broadcast shape. Non-integer or
    empty input is passed to fn as it is.
    """
    shape = np.broadcast(*columns).shape
    flat = [np.asarray(c).ravel() for c in np.broadcast_arrays(*columns)]
    if flat[0].size == 0 or not all(np.issubdtype(c.dtype, np.integer) for c in flat):
        return fn(*columns)
    flat = [c.astype(np.int64) for c in flat]
    lows = [int(c.min()) for c in flat]
    spans = [int(c.max()) - low + 1 for c, low in zip(flat, lows)]
    if math.prod(spans) < MAX_PACKED_KEY:
        key = np.zeros(flat[0].size, dtype=np.int64)
        for c, low, span in zip(flat, lows, spans):
            key = key * span + (c - low)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    else:
        _, first, inverse = np.unique(np.stack(flat, axis=1), axis=0, return_index=True, return_inverse=True)
    result = fn(*(c[first] for c in flat))
    inverse = inverse.ravel()
    if isinstance(result, tuple):
        return tuple(np.asarray(r)[inverse].reshape(shape) for r in result)
    return np.asarray(result)[inverse].reshape(shape)
