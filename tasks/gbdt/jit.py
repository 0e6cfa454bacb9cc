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
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic as _intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None  # type: ignore[assignment]

_kernels: SimpleNamespace | None = None


def kernels() -> SimpleNamespace | None:
    """Return the compiled kernels, or None when numba is not installed."""
    return _kernels


if numba is not None:
    jit = numba.njit(cache=True, nogil=True)
    _compiled: dict[str, Any] = {}

    def kernel(fn: Any) -> Any:
        """Compile ``fn`` with ``jit`` and list it among the ``kernels()``."""
        compiled = jit(fn)
        _compiled[fn.__name__] = compiled
        return compiled

    intrinsic: Any = _intrinsic  # its stubs do not know the call drops typingctx

    #: Rows ahead of the current one whose data the row kernels prefetch.
    _AHEAD = 16

    @intrinsic
    def _add_pair(typingctx: Any, arr: Any, index: Any, a: Any, b: Any) -> Any:
        """Add (a, b) to ``arr.flat[index : index + 2]`` with one 2-wide vector add.

        ``arr`` is a C-contiguous float64 array; nothing is bounds-checked. LLVM
        does not pair the two scalar adds by itself, and one vector load, add
        and store costs less than two of each (figures: docs/benchmarks.md,
        "Kernel choices in the GBDT code").
        """
        if not (isinstance(arr, types.Array) and arr.layout == "C"):
            return None
        sig = types.void(arr, index, a, b)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            pair = ir.VectorType(ir.DoubleType(), 2)
            ptr = builder.bitcast(builder.gep(data, [args[1]]), pair.as_pointer())
            value = ir.Constant(pair, ir.Undefined)
            value = builder.insert_element(
                value, args[2], ir.Constant(ir.IntType(32), 0)
            )
            value = builder.insert_element(
                value, args[3], ir.Constant(ir.IntType(32), 1)
            )
            builder.store(builder.fadd(builder.load(ptr, align=8), value), ptr, align=8)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _prefetch(typingctx: Any, arr: Any, index: Any) -> Any:
        """Hint the CPU to fetch the cache line of ``arr.flat[index]`` (a C array)."""
        if not (isinstance(arr, types.Array) and arr.layout == "C"):
            return None
        sig = types.void(arr, index)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            byte = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch",
                [byte],
                ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
            )
            ptr = builder.bitcast(builder.gep(data, [args[1]]), byte)
            # read, high temporal locality, data cache
            builder.call(
                fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            )
            return context.get_dummy_value()

        return sig, codegen

    @kernel
    def partition(
        bins: Any,
        missing: Any,
        use_missing: bool,
        order: Any,
        scratch: Any,
        bounds: Any,
        node: Any,
        feature: Any,
        split_bin: Any,
        default_left: Any,
        left: Any,
    ) -> None:  # pragma: no cover - compiled
        """Split the segment of ``order`` of each ``node[j]`` into its two children.

        ``bins`` and ``missing`` are column-major (n_features, n_rows), see
        ``BinnedMatrix.columns``. ``order`` holds the rows grouped by node,
        ascending within a node; ``bounds[n] = (a, b)`` is node n's segment
        ``order[a:b]``. Rows of node ``node[j]`` go to ``left[j]`` (bin <=
        ``split_bin[j]``, or missing and ``default_left[j]``) or ``left[j] + 1``;
        the split is stable, so children stay ascending. Only rows of split nodes
        are read; each row is written to both sides and only one count moves: no
        branch to mispredict. ``scratch`` holds at least the largest segment.
        The split feature's column is read at ascending row ids, mostly adjacent
        bytes, which beats reading the row-major matrix with prefetch for large
        nodes (figures: docs/benchmarks.md, "Kernel choices in the GBDT code").
        """
        for j in range(node.shape[0]):
            a = bounds[node[j], 0]
            e = bounds[node[j], 1]
            f = feature[j]
            to_left = left[j]
            below = split_bin[j]
            go_missing = default_left[j]
            column = bins[f]
            n_left = 0
            n_right = 0
            if use_missing:
                column_missing = missing[f]
                for k in range(a, e):
                    i = order[k]
                    go_left = go_missing if column_missing[i] else column[i] <= below
                    order[a + n_left] = i
                    scratch[n_right] = i
                    n_left += go_left
                    n_right += not go_left
            else:
                for k in range(a, e):
                    i = order[k]
                    go_left = column[i] <= below
                    order[a + n_left] = i
                    scratch[n_right] = i
                    n_left += go_left
                    n_right += not go_left
            mid = a + n_left
            for k in range(n_right):
                order[mid + k] = scratch[k]
            bounds[to_left, 0] = a
            bounds[to_left, 1] = mid
            bounds[to_left + 1, 0] = mid
            bounds[to_left + 1, 1] = e

    @kernel
    def logistic_gradients(
        tanh_half: Any, y: Any, scale: float, hess_eps: float, gh: Any
    ) -> None:  # pragma: no cover - compiled
        """Write each row's quantized logistic gradient and hessian into ``gh``.

        ``tanh_half[i] = tanh(margin_i / 2)`` (numpy's tanh, kept so that p is
        bitwise the objective's); ``p = (1 + tanh_half) / 2``, ``g = p - y``,
        ``h = max(p (1 - p), hess_eps)`` (NaN stays NaN, as ``np.maximum``),
        each rounded to a multiple of ``1 / scale`` as ``histogram.quantize``
        (``scale = 2**e``, ``0 <= e <= 1022``: ``rint(v * scale) / scale`` is
        then ``ldexp(rint(ldexp(v, e)), -e)`` exactly).
        """
        inverse = 1.0 / scale
        for i in range(y.shape[0]):
            p = 0.5 * (1.0 + tanh_half[i])
            g = p - y[i]
            h = p * (1.0 - p)
            if h < hess_eps:
                h = hess_eps
            gh[i, 0] = np.rint(g * scale) * inverse
            gh[i, 1] = np.rint(h * scale) * inverse

    @kernel
    def squared_gradients(
        margin: Any, offset: float, y: Any, scale: float, gh: Any
    ) -> None:  # pragma: no cover - compiled
        """Write each row's quantized ``margin + offset - y`` and unit hessian.

        Rounded as ``logistic_gradients``; ``margin`` is one column (n_rows,).
        """
        inverse = 1.0 / scale
        one = np.rint(scale) * inverse
        for i in range(y.shape[0]):
            g = (margin[i] + offset) - y[i]
            gh[i, 0] = np.rint(g * scale) * inverse
            gh[i, 1] = one

    @kernel
    def histogram_rows(
        bins: Any,
        missing: Any,
        use_missing: bool,
        order: Any,
        bounds: Any,
        gh: Any,
        missing_slot: int,
        out: Any,
        totals: Any,
    ) -> None:  # pragma: no cover - compiled
        """Add rows ``order[a:b]``, ``(a, b) = bounds[s]``, to out[s, feature, bin].

        ``gh[row] = (gradient, hessian)``; totals[s] gets their sums and the row
        count. Rows of one node are visited in ``order`` (ascending: each cell
        sums in row order, as the numpy code). The rows' bins, missing flags and
        gradients are prefetched ``_AHEAD`` rows ahead: below the root a node's
        rows are scattered and each row is a cache miss otherwise (figures:
        docs/benchmarks.md, "Kernel choices in the GBDT code").
        """
        n_features = bins.shape[1]
        width2 = out.shape[2] * 2
        for s in range(bounds.shape[0]):
            a = bounds[s, 0]
            e = bounds[s, 1]
            base = s * n_features * width2
            g_sum = 0.0
            h_sum = 0.0
            for k in range(a, e):
                if k + _AHEAD < e:
                    ahead = np.intp(order[k + _AHEAD])
                    _prefetch(bins, ahead * n_features)
                    _prefetch(bins, ahead * n_features + n_features - 1)
                    _prefetch(gh, 2 * ahead)
                    if use_missing:
                        _prefetch(missing, ahead * n_features)
                        _prefetch(missing, ahead * n_features + n_features - 1)
                i = order[k]
                gi = gh[i, 0]
                hi = gh[i, 1]
                g_sum += gi
                h_sum += hi
                if use_missing:
                    for f in range(n_features):
                        b = missing_slot if missing[i, f] else np.intp(bins[i, f])
                        _add_pair(out, base + f * width2 + 2 * b, gi, hi)
                else:
                    for f in range(n_features):
                        b = np.intp(bins[i, f])
                        _add_pair(out, base + f * width2 + 2 * b, gi, hi)
            totals[s, 0] += g_sum
            totals[s, 1] += h_sum
            totals[s, 2] += e - a

    @kernel
    def add_leaf_values(
        bins: Any,
        missing: Any,
        use_missing: bool,
        order: Any,
        bounds: Any,
        start: Any,
        left: Any,
        right: Any,
        feature: Any,
        split_bin: Any,
        default_left: Any,
        value: Any,
        margin: Any,
        column: int,
    ) -> None:  # pragma: no cover - compiled
        """Add to ``margin[row, column]`` the value of the leaf each row reaches.

        Rows ``order[a:b]``, ``(a, b) = bounds[j]``, start at node ``start[j]``
        and go down as ``descend`` (a float32 value added as float64, as numpy
        adds ``value[leaf].astype(float64)``). All rows of a segment start at
        the same node, so they mostly take the same number of steps (none from
        a leaf, one below the last level built): the walk's branches are
        predicted, where ``descend`` over rows in row order mispredicts them.
        ``bins`` and ``missing`` are column-major, as for ``partition``; a node
        split once into two leaves (the usual last level) reads one column at
        ascending rows and picks one of two values, instead of walking the
        row-major matrix (figures: docs/benchmarks.md, "Kernel choices in the
        GBDT code").
        """
        for j in range(start.shape[0]):
            a = bounds[j, 0]
            e = bounds[j, 1]
            first = start[j]
            if left[first] < 0:
                leaf_value = np.float64(value[first])
                for k in range(a, e):
                    margin[order[k], column] += leaf_value
                continue
            to_left = left[first]
            to_right = right[first]
            if left[to_left] < 0 and left[to_right] < 0:  # one split to two leaves
                column_bins = bins[feature[first]]
                below = split_bin[first]
                go_missing = default_left[first]
                left_value = np.float64(value[to_left])
                right_value = np.float64(value[to_right])
                if use_missing:
                    column_missing = missing[feature[first]]
                    for k in range(a, e):
                        i = order[k]
                        go_left = (
                            go_missing if column_missing[i] else column_bins[i] <= below
                        )
                        margin[i, column] += left_value if go_left else right_value
                else:
                    for k in range(a, e):
                        i = order[k]
                        go_left = column_bins[i] <= below
                        margin[i, column] += left_value if go_left else right_value
                continue
            for k in range(a, e):
                i = order[k]
                node = first
                child = left[node]
                while child >= 0:
                    f = feature[node]
                    if use_missing and missing[f, i]:
                        go_left = default_left[node]
                    else:
                        go_left = bins[f, i] <= split_bin[node]
                    node = child if go_left else right[node]
                    child = left[node]
                margin[i, column] += np.float64(value[node])

    @kernel
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

    @kernel
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

    @kernel
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
        change it. (A plain binary search over all the cuts spends most of its
        time on mispredicted branches; bounded by the bucket it takes a
        fraction of that. Figures: docs/benchmarks.md, "Kernel choices in the
        GBDT code".)
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

    @kernel
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
        other, unlike walking rows to their leaves one by one (figures:
        docs/benchmarks.md, "Kernel choices in the GBDT code").
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

    @kernel
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

    _kernels = SimpleNamespace(**_compiled)
