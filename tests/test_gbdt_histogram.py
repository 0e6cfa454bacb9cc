"""Histograms: direct build, kernels, subtraction, federated sum, silo payloads."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from tasks.gbdt.binning import BinnedMatrix, bin_matrix
from tasks.gbdt.histogram import (
    NodeHistograms,
    NodeRows,
    build_histograms,
    gradient_exponent,
    numba_available,
    quantize,
    subtract,
    sum_histograms,
)
from tasks.gbdt.learner import federated_cuts
from tasks.gbdt.objective import BinaryLogistic
from tasks.gbdt.silo_state import NodeSplit, SiloTreeState, TreeRows


def make_binned(
    n: int = 600, f: int = 4, seed: int = 0
) -> tuple[BinnedMatrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[rng.random((n, f)) < 0.1] = np.nan
    cuts = federated_cuts([X], 16)
    return bin_matrix(X, cuts), X


def brute_force(
    binned: BinnedMatrix, g, h, positions, nodes
) -> tuple[np.ndarray, np.ndarray]:
    stride = binned.stride
    out_g = np.zeros((len(nodes), binned.n_features, stride + 1))
    out_h = np.zeros_like(out_g)
    for slot, node in enumerate(nodes):
        for i in np.flatnonzero(positions == node):
            for f in range(binned.n_features):
                missing = binned.missing is not None and binned.missing[i, f]
                b = stride if missing else binned.bins[i, f]
                out_g[slot, f, b] += g[i]
                out_h[slot, f, b] += h[i]
    return out_g, out_h


BACKENDS = ["numpy"] + (["numba"] if numba_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_build_equals_brute_force(backend: str) -> None:
    binned, _ = make_binned()
    rng = np.random.default_rng(1)
    g, h = rng.normal(size=binned.n_rows), rng.random(binned.n_rows)
    positions = rng.integers(3, 7, binned.n_rows).astype(np.int32)
    nodes = np.array([5, 3])
    sums, totals = build_histograms(binned, g, h, positions, nodes, backend)
    hg, hh = sums[..., 0], sums[..., 1]
    want_g, want_h = brute_force(binned, g, h, positions, [5, 3])
    np.testing.assert_allclose(hg, want_g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hh, want_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        totals[:, 0], [g[positions == 5].sum(), g[positions == 3].sum()]
    )
    np.testing.assert_array_equal(
        totals[:, 2], [(positions == 5).sum(), (positions == 3).sum()]
    )


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_and_numpy_kernels_are_bitwise_equal() -> None:
    binned, _ = make_binned(n=2000, seed=3)
    rng = np.random.default_rng(2)
    g, h = rng.normal(size=binned.n_rows), rng.random(binned.n_rows)
    positions = rng.integers(0, 4, binned.n_rows).astype(np.int32)
    a = build_histograms(binned, g, h, positions, np.array([0, 1, 3]), "numpy")
    b = build_histograms(binned, g, h, positions, np.array([0, 1, 3]), "numba")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subtraction_equals_direct_build(backend: str) -> None:
    binned, _ = make_binned(n=1500, seed=4)
    rng = np.random.default_rng(5)
    # dyadic gradients: every partial sum is exact, so equality must be exact
    g = rng.integers(-64, 64, binned.n_rows) / 64.0
    h = rng.integers(1, 64, binned.n_rows) / 64.0
    parent = np.zeros(binned.n_rows, np.int32)
    child = np.where(rng.random(binned.n_rows) < 0.3, 1, 2).astype(np.int32)
    whole = build_histograms(binned, g, h, parent, np.array([0]), backend)
    small = build_histograms(binned, g, h, child, np.array([1]), backend)
    direct = build_histograms(binned, g, h, child, np.array([2]), backend)
    derived = [subtract(w[0], c[0]) for w, c in zip(whole, small, strict=True)]
    for d, want in zip(derived, direct, strict=True):
        np.testing.assert_array_equal(d, want[0])
    into = np.full_like(whole[0][0], np.nan)
    assert subtract(whole[0][0], small[0][0], out=into) is into
    np.testing.assert_array_equal(into, direct[0][0])
    # float gradients: equal up to rounding; on the silos' grid, exactly equal
    g, h = rng.normal(size=binned.n_rows), rng.random(binned.n_rows)
    exponent = gradient_exponent(binned.n_rows, 4.0)
    for gg, hh, exact in (
        (g, h, False),
        (quantize(g, exponent), quantize(h, exponent), True),
    ):
        whole = build_histograms(binned, gg, hh, parent, np.array([0]), backend)
        small = build_histograms(binned, gg, hh, child, np.array([1]), backend)
        direct = build_histograms(binned, gg, hh, child, np.array([2]), backend)
        derived = [subtract(w[0], c[0]) for w, c in zip(whole, small, strict=True)]
        for d, want in zip(derived, direct, strict=True):
            if exact:
                np.testing.assert_array_equal(d, want[0])
            else:
                np.testing.assert_allclose(d, want[0], rtol=1e-9, atol=1e-12)


def test_quantized_sums_do_not_depend_on_order() -> None:
    rng = np.random.default_rng(9)
    n = 50_000
    g = rng.normal(size=n) * rng.choice([1e-8, 1e-3, 1.0], n)
    exponent = gradient_exponent(n, float(np.abs(g).max()))
    q = quantize(g, exponent)
    assert np.max(np.abs(q - g)) <= 2.0**-exponent
    sums = {float(np.sum(q[rng.permutation(n)])) for _ in range(5)}
    sums.add(float(sum(np.sum(part) for part in np.array_split(q, 7))))
    assert len(sums) == 1
    raw = {float(np.sum(g[rng.permutation(n)])) for _ in range(5)}
    assert len(raw) > 1  # without the grid, order shows in the last bits


@pytest.mark.parametrize("backend", BACKENDS)
def test_histograms_added_into_another_silos_equal_their_sum(backend: str) -> None:
    binned, _ = make_binned(n=1200, seed=6)
    rng = np.random.default_rng(7)
    exponent = gradient_exponent(2 * binned.n_rows, 4.0)
    g = [quantize(rng.normal(size=binned.n_rows), exponent) for _ in range(2)]
    h = [quantize(rng.random(binned.n_rows), exponent) for _ in range(2)]
    pos = [rng.integers(0, 4, binned.n_rows).astype(np.int32) for _ in range(2)]
    nodes = np.array([1, 3])
    apart = [
        build_histograms(binned, g[i], h[i], pos[i], nodes, backend) for i in range(2)
    ]
    shared = build_histograms(binned, g[0], h[0], pos[0], nodes, backend)
    same = build_histograms(binned, g[1], h[1], pos[1], nodes, backend, shared)
    assert same[0] is shared[0] and same[1] is shared[1]  # added in place
    np.testing.assert_array_equal(shared[0], apart[0][0] + apart[1][0])
    np.testing.assert_array_equal(shared[1], apart[0][1] + apart[1][1])
    with pytest.raises(ValueError, match="do not fit"):
        build_histograms(binned, g[0], h[0], pos[0], np.array([1]), backend, shared)


def test_sum_refuses_mismatched_or_empty_input() -> None:
    grad = np.zeros((1, 2, 5))
    a = NodeHistograms.from_parts(np.array([[0, 0]]), grad, grad, np.zeros((1, 3)))
    b = NodeHistograms.from_parts(np.array([[0, 1]]), grad, grad, np.zeros((1, 3)))
    c = NodeHistograms.from_parts(
        np.array([[0, 0]]), np.zeros((1, 2, 6)), np.zeros((1, 2, 6)), np.zeros((1, 3))
    )
    with pytest.raises(InconsistentUpdatesError):
        sum_histograms([a, b])
    with pytest.raises(InconsistentUpdatesError):
        sum_histograms([a, c])
    with pytest.raises(EmptyAggregationError):
        sum_histograms([])
    summed = sum_histograms([a, a])
    assert summed.grad.shape == grad.shape


def silo_payloads(n: int) -> list[tuple[int, ...]]:
    """Shapes of everything a silo returns during one round with n rows."""
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(float)
    cuts = [np.float32([-1.0, 0.0, 1.0, 9.0])] * 3
    obj = BinaryLogistic()
    state = SiloTreeState.create("s", TreeRows(X, y, ("a", "b", "c")), cuts, obj)
    shapes = [state.label_stats().shape]
    state.set_intercept(obj.intercept(state.label_stats(), None))
    root = state.start_round(40)
    shapes += [root.grad.shape, root.hess.shape, root.totals.shape, root.nodes.shape]
    level = state.level([NodeSplit(0, 0, 0, 1, False, 1)], [(0, 1)])
    shapes += [level.grad.shape, level.totals.shape]
    return shapes


def test_silo_payloads_never_scale_with_rows() -> None:
    assert silo_payloads(100) == silo_payloads(1000)


def test_freed_silo_state_refuses_work() -> None:
    X = np.zeros((4, 1), np.float32)
    state = SiloTreeState.create(
        "s", TreeRows(X, np.zeros(4), ("a",)), [np.float32([1.0])], BinaryLogistic()
    )
    state.free()
    with pytest.raises(RuntimeError, match="freed"):
        state.start_round(40)


def test_silo_histograms_of_interleaved_trees_and_into_another_silos() -> None:
    from tasks.gbdt.objective import make_objective

    obj = make_objective("multi:softprob", 3)
    cuts = [np.float32([-1.0, 0.0, 1.0, 9.0])] * 3

    def state(seed: int) -> SiloTreeState:
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(300, 3)).astype(np.float32)
        y = rng.integers(0, 3, 300).astype(float)
        s = SiloTreeState.create("s", TreeRows(X, y, ("a", "b", "c")), cuts, obj)
        s.set_intercept(obj.intercept(s.label_stats(), None))
        s.start_round(40)
        return s

    splits = [NodeSplit(t, 0, t, 1, False, 1) for t in range(2)]
    sorted_nodes = [(0, 1), (0, 2), (1, 1), (1, 2)]
    mixed = [(0, 1), (1, 1), (0, 2), (1, 2)]  # a tree's nodes not side by side
    a = state(1).level(splits, sorted_nodes)
    b = state(1).level(splits, mixed)
    order = [sorted_nodes.index(n) for n in mixed]
    np.testing.assert_array_equal(b.sums, a.sums[order])
    np.testing.assert_array_equal(b.totals, a.totals[order])
    # A second silo adds its rows into the first one's histograms (pool workers).
    other = state(2).level(splits, mixed)
    both = state(2).level(splits, mixed, into=state(1).level(splits, mixed))
    np.testing.assert_array_equal(both.sums, b.sums + other.sums)
    np.testing.assert_array_equal(both.totals, b.totals + other.totals)
    refused = state(2)
    with pytest.raises(ValueError, match="other nodes"):
        refused.level(splits, sorted_nodes, into=b)
    # The rows did not move: the same level afterwards gives the same histograms.
    again = refused.level(splits, mixed)
    np.testing.assert_array_equal(again.sums, other.sums)
    np.testing.assert_array_equal(again.totals, other.totals)


def node_of_rows(rows: NodeRows) -> np.ndarray:
    """Return every row's node, as the numpy backend keeps positions."""
    out = np.empty(rows.order.shape[0], np.int32)
    for n in np.flatnonzero(rows.current):
        a, b = rows.bounds[n]
        out[rows.order[a:b]] = n
    return out


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("nan", [True, False])
def test_grouped_rows_equal_the_scan_of_positions(nan: bool) -> None:
    from tasks.gbdt.model import Tree

    # Prepare: two levels of splits, applied to grouped rows and to positions.
    binned, X = make_binned(n=900, f=5, seed=3)
    if not nan:
        binned = bin_matrix(np.nan_to_num(X), federated_cuts([np.nan_to_num(X)], 16))
    rng = np.random.default_rng(4)
    n = binned.n_rows
    g, h = rng.normal(size=n), rng.random(n)  # not quantized: order must match
    rows, scratch = NodeRows(n), np.empty(n, np.int32)
    positions = np.zeros(n, np.int32)
    levels = [  # (node, feature, bin, default_left, left)
        [(0, 1, 7, True, 1)],
        [(1, 2, 5, False, 3), (2, 0, 9, True, 5)],
    ]
    for level in levels:
        node, feature, split_bin, default_left, left = map(
            np.array, zip(*level, strict=True)
        )
        rows.split(
            binned, node, feature, split_bin, default_left.astype(bool), left, scratch
        )
        for nd, f, b, dl, lf in level:
            at = positions == nd
            miss = binned.missing[:, f] if binned.missing is not None else False
            go_left = np.where(miss, dl, binned.bins[:, f] <= b)
            positions[at] = np.where(go_left, lf, lf + 1)[at]
    # Execute / Assert: histograms (added into given ones) and positions agree.
    np.testing.assert_array_equal(node_of_rows(rows), positions)
    nodes = np.array([6, 3, 4, 9])  # 9 was never reached: no rows
    start = np.random.default_rng(5).normal(size=(4, 5, binned.stride + 1, 2))
    start_totals = np.ones((4, 3))
    sums, totals = start.copy(), start_totals.copy()
    rows.add_histograms(binned, np.stack([g, h], 1), nodes, sums, totals)
    ref = build_histograms(
        binned, g, h, positions, nodes, "numba", (start.copy(), start_totals.copy())
    )
    np.testing.assert_array_equal(sums, ref[0])
    np.testing.assert_allclose(totals, ref[1], rtol=1e-12)  # summed per node first
    direct = build_histograms(binned, g, h, positions, nodes, "numpy")
    np.testing.assert_allclose(sums - start, direct[0], atol=1e-9)
    # Leaf values: the tree splits node 4 one level further (not applied here).
    n_nodes = 9
    tree_left = np.full(n_nodes, -1, np.int32)
    tree_right = np.full(n_nodes, -1, np.int32)
    for nd, lf in [(0, 1), (1, 3), (2, 5), (4, 7)]:
        tree_left[nd], tree_right[nd] = lf, lf + 1
    feature = np.array([1, 2, 0, 0, 3, 0, 0, 0, 0], np.int32)
    split_bin = np.array([7, 5, 9, -1, 4, -1, -1, -1, -1], np.int32)
    tree = Tree(
        left=tree_left,
        right=tree_right,
        parent=np.zeros(n_nodes, np.int32),
        feature=feature,
        split_bin=split_bin,
        threshold=np.zeros(n_nodes, np.float32),
        default_left=np.array([1, 0, 1, 0, 1, 0, 0, 0, 0], bool),
        value=rng.normal(size=n_nodes).astype(np.float32),
        gain=np.zeros(n_nodes, np.float32),
        cover=np.zeros(n_nodes, np.float32),
    )
    margin = rng.normal(size=(n, 2))
    expected = margin.copy()
    expected[:, 1] += tree.value[
        tree.descend_binned(binned, positions, "numpy")
    ].astype(np.float64)
    rows.add_leaf_values(binned, tree, margin, 1)
    np.testing.assert_array_equal(margin, expected)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_silo_state_numba_equals_numpy_level_by_level() -> None:
    from tasks.gbdt.objective import make_objective

    # Prepare: the same multi-class silo on both backends, with missing values.
    obj = make_objective("multi:softprob", 3)
    rng = np.random.default_rng(7)
    X = rng.normal(size=(500, 4)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    y = rng.integers(0, 3, 500).astype(float)
    cuts = federated_cuts([X], 8)
    states = []
    for backend in ("numpy", "numba"):
        s = SiloTreeState.create("s", TreeRows(X, y, tuple("abcd")), cuts, obj, backend)
        s.set_intercept(obj.intercept(s.label_stats(), None))
        states.append(s)
    # Execute / Assert: roots, two levels and the margins after the round agree.
    exp = gradient_exponent(500, 2.0)
    a, b = (s.start_round(exp) for s in states)
    np.testing.assert_array_equal(a.sums, b.sums)
    splits = [NodeSplit(t, 0, t, 3, t == 1, 1) for t in range(3)]
    nodes = [(t, 2) for t in range(3)]
    a, b = (s.level(splits, nodes) for s in states)
    np.testing.assert_array_equal(a.sums, b.sums)
    np.testing.assert_array_equal(a.totals, b.totals)
    splits = [NodeSplit(0, 1, 3, 2, True, 3), NodeSplit(2, 2, 1, 4, False, 3)]
    nodes = [(2, 4), (0, 4), (0, 3)]
    a, b = (s.level(splits, nodes) for s in states)
    np.testing.assert_array_equal(a.sums, b.sums)
    np.testing.assert_array_equal(a.totals, b.totals)


def test_column_copy_is_made_once_and_matches_the_rows() -> None:
    # Prepare: a matrix with missing values and one without.
    binned, X = make_binned(n=50, f=3, seed=8)
    dense = bin_matrix(np.nan_to_num(X), federated_cuts([np.nan_to_num(X)], 8))
    # Execute
    bins, missing = binned.columns()
    # Assert: C-order transposes, kept for the next call; no mask without NaN.
    assert bins.flags.c_contiguous and missing is not None
    np.testing.assert_array_equal(bins, binned.bins.T)
    np.testing.assert_array_equal(missing, binned.missing.T)
    assert binned.columns()[0] is bins
    assert dense.columns()[1] is None
    assert binned == BinnedMatrix(binned.bins, binned.missing, binned.n_bins)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("nan", [True, False])
def test_leaf_values_of_a_deep_tree_from_the_root(nan: bool) -> None:
    from tasks.gbdt.model import Tree

    # Prepare: no split applied, a tree two levels deep (the walk, not one step).
    binned, X = make_binned(n=700, f=4, seed=9)
    if not nan:
        binned = bin_matrix(np.nan_to_num(X), federated_cuts([np.nan_to_num(X)], 16))
    n, n_nodes = binned.n_rows, 7
    rng = np.random.default_rng(10)
    tree = Tree(
        left=np.array([1, 3, 5, -1, -1, -1, -1], np.int32),
        right=np.array([2, 4, 6, -1, -1, -1, -1], np.int32),
        parent=np.zeros(n_nodes, np.int32),
        feature=np.array([2, 0, 3, 0, 0, 0, 0], np.int32),
        split_bin=np.array([6, 8, 3, -1, -1, -1, -1], np.int32),
        threshold=np.zeros(n_nodes, np.float32),
        default_left=np.array([0, 1, 1, 0, 0, 0, 0], bool),
        value=rng.normal(size=n_nodes).astype(np.float32),
        gain=np.zeros(n_nodes, np.float32),
        cover=np.zeros(n_nodes, np.float32),
    )
    margin = rng.normal(size=(n, 1))
    expected = margin.copy()
    leaf = tree.descend_binned(binned, np.zeros(n, np.int64), "numpy")
    expected[:, 0] += tree.value[leaf].astype(np.float64)
    # Execute
    NodeRows(n).add_leaf_values(binned, tree, margin, 0)
    # Assert
    np.testing.assert_array_equal(margin, expected)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("name", ["binary:logistic", "reg:squarederror"])
@pytest.mark.parametrize("exponent", [3, 20, 40])
def test_fused_gradients_equal_objective_then_quantize(
    name: str, exponent: int
) -> None:
    from tasks.gbdt.objective import make_objective

    # Prepare: labels and margins on a coarse grid (ties for rint at exponent
    # 3), extreme margins (hessian floor), both backends and a clipped silo.
    obj = make_objective(name)
    rng = np.random.default_rng(11)
    n = 400
    X = rng.normal(size=(n, 3)).astype(np.float32)
    if name == "binary:logistic":
        y = rng.integers(0, 2, n).astype(float)
    else:
        y = rng.integers(-40, 40, n) / 16.0
    margin = np.concatenate([rng.integers(-64, 64, n - 4) / 16.0, [-60, 60, 40, 0]])
    cuts = federated_cuts([X], 8)
    states = {}
    for key in ("numpy", "numba", "clipped"):
        backend = "numpy" if key == "numpy" else "numba"
        data = TreeRows(X, y, ("a", "b", "c"))
        own = make_objective(name)
        if key == "numba":  # the fused pass must not call the objective
            setattr(own, "gradients", None)  # noqa: B010
        s = SiloTreeState.create("s", data, cuts, own, backend)  # type: ignore[arg-type]
        s.set_intercept(obj.intercept(s.label_stats(), 0.5))
        s._margin[:, 0] += margin  # type: ignore[index]
        if key == "clipped":
            s.gradient_clip = (0.25, 0.2)
        states[key] = s
    # Execute
    roots = {key: s.start_round(exponent) for key, s in states.items()}
    # Assert: every row's pair is the numpy objective's, quantized, bit for bit.
    m = states["numpy"]._margin + states["numpy"]._offsets  # type: ignore[operator]
    g, h = obj.gradients(y, m)
    expected = np.stack([quantize(g[:, 0], exponent), quantize(h[:, 0], exponent)], 1)
    if exponent == 3 and name == "reg:squarederror":
        assert np.any(np.ldexp(g, exponent) % 1 == 0.5)  # ties to even were met
    for key in ("numpy", "numba"):
        gh = states[key]._gh
        assert gh is not None
        assert gh.tobytes() == expected[None].tobytes()
    np.testing.assert_array_equal(roots["numba"].sums, roots["numpy"].sums)
    clipped = states["clipped"]._gh
    assert clipped is not None
    assert np.abs(clipped[0, :, 0]).max() <= 0.25 < np.abs(expected[:, 0]).max()
