"""Compiled (numba) kernels of the silo's and coordinator's hot loops.

Each kernel mirrors a numpy implementation elsewhere in this package and gives
bitwise equal results: rows are visited in increasing order (as ``flatnonzero``
and ``bincount`` do), sums run left to right (as ``cumsum`` does) and gains use
the same float64 operations in the same order. Without numba, ``kernels()``
returns None and callers use their numpy code.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None  # type: ignore[assignment]

_kernels: SimpleNamespace | None = None


def kernels() -> SimpleNamespace | None:
    """Return the compiled kernels, or None when numba is not installed."""
    return _kernels


if numba is not None:
    jit = numba.njit(cache=True, nogil=True)

    @jit
    def route(
        bins: Any,
        missing: Any,
        use_missing: bool,
        pos: Any,
        feature: Any,
        split_bin: Any,
        default_left: Any,
        left: Any,
    ) -> None:  # pragma: no cover - compiled
        """Move rows of split nodes to a child; ``feature[node] < 0``: not split."""
        size = feature.shape[0]
        for i in range(pos.shape[0]):
            node = pos[i]
            if node >= size:
                continue
            f = feature[node]
            if f < 0:
                continue
            if use_missing and missing[i, f]:
                go_left = default_left[node]
            else:
                go_left = bins[i, f] <= split_bin[node]
            pos[i] = left[node] if go_left else left[node] + 1

    @jit
    def histogram(
        bins: Any,
        missing: Any,
        use_missing: bool,
        pos: Any,
        lut: Any,
        g: Any,
        h: Any,
        missing_slot: int,
        out: Any,
        totals: Any,
    ) -> None:  # pragma: no cover - compiled
        """Add rows of ``lut``'s nodes to out[slot, feature, bin, 0|1] and totals."""
        n_features = bins.shape[1]
        size = lut.shape[0]
        for i in range(pos.shape[0]):
            p = pos[i]
            if p >= size:
                continue
            s = lut[p]
            if s < 0:
                continue
            gi = g[i]
            hi = h[i]
            totals[s, 0] += gi
            totals[s, 1] += hi
            totals[s, 2] += 1.0
            if use_missing:
                for f in range(n_features):
                    b = missing_slot if missing[i, f] else bins[i, f]
                    out[s, f, b, 0] += gi
                    out[s, f, b, 1] += hi
            else:
                for f in range(n_features):
                    b = bins[i, f]
                    out[s, f, b, 0] += gi
                    out[s, f, b, 1] += hi

    @jit
    def descend(
        bins: Any,
        missing: Any,
        use_missing: bool,
        start: Any,
        left: Any,
        right: Any,
        feature: Any,
        split_bin: Any,
        default_left: Any,
        out: Any,
    ) -> None:  # pragma: no cover - compiled
        """Write the leaf each binned row reaches from its ``start`` node."""
        for i in range(start.shape[0]):
            node = start[i]
            child = left[node]
            while child >= 0:
                f = feature[node]
                go_left = bins[i, f] <= split_bin[node]
                if use_missing:
                    go_left = (go_left and not missing[i, f]) or (
                        missing[i, f] and default_left[node]
                    )
                other = right[node]  # loaded either way: no branch
                node = child if go_left else other
                child = left[node]
            out[i] = node

    @jit
    def bin_tables(
        cuts: Any, offsets: Any, n_buckets: int
    ) -> tuple[Any, Any, Any]:  # pragma: no cover - compiled
        """Return (lows, scales, starts): equal-width buckets over each feature's cuts.

        ``starts[j, t]`` counts the cuts at or below the lower edge of bucket t,
        ``starts[j, n_buckets]`` all of them: a first guess of a value's bin.
        """
        m = offsets.shape[0] - 1
        lows = np.empty(m)
        scales = np.zeros(m)
        starts = np.empty((m, n_buckets + 1), np.int32)
        for j in range(m):
            lo = offsets[j]
            count = offsets[j + 1] - lo
            low = np.float64(cuts[lo])
            high = np.float64(cuts[lo + count - 1])
            lows[j] = low
            if high > low:
                scales[j] = n_buckets / (high - low)
            b = 0
            for t in range(n_buckets):
                edge = low + t / scales[j] if scales[j] > 0.0 else low
                while b < count and np.float64(cuts[lo + b]) <= edge:
                    b += 1
                starts[j, t] = b
            starts[j, n_buckets] = count
        return lows, scales, starts

    @jit
    def bin_rows(
        X: Any,
        cuts: Any,
        offsets: Any,
        lows: Any,
        scales: Any,
        starts: Any,
        bins: Any,
        missing: Any,
    ) -> bool:  # pragma: no cover - compiled
        """Bin rows as ``binning.bin_column``; return whether any value was NaN.

        ``bins[i, j]`` is ``searchsorted(cuts_j, X[i, j], "right")`` clamped to
        the last bin; NaN gives bin 0 and ``missing[i, j]``. The value's bucket
        (``bin_tables``) bounds a binary search, then the answer is checked
        against its neighbouring cuts, so rounding at bucket edges cannot
        change it. (A plain binary search over 256 cuts costs about 50 ns a
        value here, mostly mispredicted branches; this about a third of that.)
        """
        n_buckets = starts.shape[1] - 1
        any_missing = False
        n, m = X.shape
        for i in range(n):
            for j in range(m):
                x = X[i, j]
                if np.isnan(x):
                    bins[i, j] = 0
                    missing[i, j] = True
                    any_missing = True
                    continue
                lo = offsets[j]
                count = offsets[j + 1] - lo
                u = (np.float64(x) - lows[j]) * scales[j]
                if u >= n_buckets:  # also +inf: clamp before converting
                    t = n_buckets - 1
                elif u > 0.0:
                    t = int(u)
                else:
                    t = 0
                a = starts[j, t]
                e = starts[j, t + 1]
                while a < e:
                    mid = (a + e) >> 1
                    if cuts[lo + mid] <= x:
                        a = mid + 1
                    else:
                        e = mid
                b = a
                while b < count and cuts[lo + b] <= x:
                    b += 1
                while b > 0 and cuts[lo + b - 1] > x:
                    b -= 1
                last = count - 1
                bins[i, j] = b if b < last else last
        return any_missing

    @jit
    def leaves(
        X: Any,
        left: Any,
        right: Any,
        feature: Any,
        threshold: Any,
        default_left: Any,
        depth: int,
        out: Any,
    ) -> None:  # pragma: no cover - compiled
        """Write each row's leaf: left iff x < threshold (float32), NaN by default.

        Rows go down in blocks, one level at a time for the whole block (``depth``
        levels, the tree's): the steps of different rows do not wait on each
        other, about twice as fast as walking rows to their leaves one by one.
        """
        n = X.shape[0]
        block = 64
        nodes = np.zeros(block, np.int32)
        for start in range(0, n, block):
            size = min(block, n - start)
            for k in range(size):
                nodes[k] = 0
            for _ in range(depth):
                for k in range(size):
                    node = nodes[k]
                    child = left[node]
                    if child >= 0:
                        x = X[start + k, feature[node]]
                        go_left = (x < threshold[node]) | (
                            np.isnan(x) & default_left[node]
                        )
                        other = right[node]  # loaded either way: no branch
                        nodes[k] = child if go_left else other
            for k in range(size):
                out[start + k] = nodes[k]

    @jit
    def gain(
        g: float, h: float, reg_lambda: float, reg_alpha: float, mcw: float
    ) -> float:  # pragma: no cover - compiled
        """Return ``split.node_gain`` of one node."""
        if not (h >= mcw and h > 0.0):
            return 0.0
        if reg_alpha > 0.0:
            a = abs(g) - reg_alpha
            if a < 0.0:
                a = 0.0
            sign = 1.0 if g > 0.0 else (-1.0 if g < 0.0 else 0.0)
            t = sign * a
        else:
            t = g
        return (t * t) / (h + reg_lambda)

    @jit
    def best_splits(
        sums: Any,
        totals: Any,
        n_bins: Any,
        reg_lambda: float,
        reg_alpha: float,
        mcw: float,
        best: Any,
        found: Any,
    ) -> None:  # pragma: no cover - compiled
        """Best split per node, as ``split.find_splits`` scans and breaks ties.

        ``sums[i, f, k] = (G, H)`` of bin k; ``best[i] = (feature, bin,
        default_left)``, ``found[i] = (gain, GL, HL, GR, HR)``; gain is -inf
        where no split is valid.
        """
        m, n_features, width, _ = sums.shape
        stride = width - 1
        for i in range(m):
            g_total = totals[i, 0]
            h_total = totals[i, 1]
            parent = gain(g_total, h_total, reg_lambda, reg_alpha, mcw)
            top = -np.inf
            bf = 0
            bk = 0
            bd = 0
            for f in range(n_features):
                miss_g = sums[i, f, stride, 0]
                miss_h = sums[i, f, stride, 1]
                limit = min(stride, n_bins[f])
                # With nothing missing, "missing goes left" (d = 1) has the very
                # sums of d = 0, so it never wins the strict ">" below: skip it.
                directions = 2 if (miss_g != 0.0 or miss_h != 0.0) else 1
                lg = 0.0
                lh = 0.0
                for k in range(limit):
                    lg += sums[i, f, k, 0]
                    lh += sums[i, f, k, 1]
                    for d in range(directions):
                        gl = lg + miss_g if d == 1 else lg
                        hl = lh + miss_h if d == 1 else lh
                        gr = g_total - gl
                        hr = h_total - hl
                        if not (hl >= mcw and hr >= mcw and hl > 0.0 and hr > 0.0):
                            continue
                        value = (
                            gain(gl, hl, reg_lambda, reg_alpha, mcw)
                            + gain(gr, hr, reg_lambda, reg_alpha, mcw)
                            - parent
                        )
                        if value > top:
                            top = value
                            bf = f
                            bk = k
                            bd = d
            best[i, 0] = bf
            best[i, 1] = bk
            best[i, 2] = bd
            found[i, 0] = top
            if top > -np.inf:
                gl = 0.0
                hl = 0.0
                for k in range(bk + 1):
                    gl += sums[i, bf, k, 0]
                    hl += sums[i, bf, k, 1]
                if bd == 1:
                    gl += sums[i, bf, stride, 0]
                    hl += sums[i, bf, stride, 1]
                found[i, 1] = gl
                found[i, 2] = hl
                found[i, 3] = g_total - gl
                found[i, 4] = h_total - hl

    _kernels = SimpleNamespace(
        route=route,
        bin_tables=bin_tables,
        bin_rows=bin_rows,
        histogram=histogram,
        descend=descend,
        leaves=leaves,
        best_splits=best_splits,
    )
