"""Histograms: direct build, kernels, subtraction, federated sum, silo payloads."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from fedsilo.tasks.gbdt.binning import BinnedMatrix, bin_matrix
from fedsilo.tasks.gbdt.histogram import (
    NodeHistograms,
    build_histograms,
    gradient_exponent,
    numba_available,
    quantize,
    subtract,
    sum_histograms,
)
from fedsilo.tasks.gbdt.learner import federated_cuts
from fedsilo.tasks.gbdt.objective import BinaryLogistic
from fedsilo.tasks.gbdt.silo_state import NodeSplit, SiloData, SiloTreeState


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
    derived = subtract(tuple(a[0] for a in whole), tuple(a[0] for a in small))
    for d, want in zip(derived, direct, strict=True):
        np.testing.assert_array_equal(d, want[0])
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
        derived = subtract(tuple(a[0] for a in whole), tuple(a[0] for a in small))
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
    state = SiloTreeState.create("s", SiloData(X, y, ("a", "b", "c")), cuts, obj)
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
        "s", SiloData(X, np.zeros(4), ("a",)), [np.float32([1.0])], BinaryLogistic()
    )
    state.free()
    with pytest.raises(RuntimeError, match="freed"):
        state.start_round(40)


def test_silo_histograms_of_interleaved_trees_and_into_another_silos() -> None:
    from fedsilo.tasks.gbdt.objective import make_objective

    obj = make_objective("multi:softprob", 3)
    cuts = [np.float32([-1.0, 0.0, 1.0, 9.0])] * 3

    def state(seed: int) -> SiloTreeState:
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(300, 3)).astype(np.float32)
        y = rng.integers(0, 3, 300).astype(float)
        s = SiloTreeState.create("s", SiloData(X, y, ("a", "b", "c")), cuts, obj)
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
    before = refused._positions.copy()  # the rows must not move
    with pytest.raises(ValueError, match="other nodes"):
        refused.level(splits, sorted_nodes, into=b)
    np.testing.assert_array_equal(refused._positions, before)
