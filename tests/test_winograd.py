"""Winograd's F(2, 3) and F(3, 2) (`convc.winograd`, section 9.8): which contractions they
take, that they compute the same function, and how far float32 results move from the exact
sums. F(2, 3) takes 3-tap correlations and convolutions of unit stride on one or two axes,
F(3, 2) correlations with 3 outputs per axis (the kernel gradient g of a 3-tap layer).

The hypothesis suites of test_ops_conv and test_autodiff draw ``algorithm="winograd"`` with
the rest (cases without 3 taps at unit stride fall back); here: the matrices' identities,
forward, g and h of 3-tap convolutions in 1 and 2 dimensions against numpy, the measured
float32 error, the products per transformed point, and the cost model's choice.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from reference import conv, padding_pairs
from test_autodiff import conv_grads_scatter

import convc
from convc import winograd
from convc.contract import Gemm
from convc.ops import BATCH

WRT = ["x", "conv0.weight", "conv0.bias"]


def conv_graph(cin, size, channels, padding=1, groups=1, kernel=3, stride=1):
    g = convc.Graph("wino")
    x = g.input("x", (None, cin, *size))
    g.output(g.conv(x, channels=channels, kernel=kernel, padding=padding, groups=groups,
                    stride=stride))
    return g


CASES = {
    "1d": dict(cin=3, size=(11,), channels=4, padding=1),
    "2d_groups": dict(cin=4, size=(9, 8), channels=6, padding=((1, 0), (2, 1)), groups=2),
    "2d_valid_odd": dict(cin=2, size=(7, 6), channels=3, padding=0),
}


def test_the_matrices_compute_both_correlations_exactly():
    """``Σ_α A[i, α]·G[α, j]·BT[α, x] = [x == i + j]``: output i of taps j reads input
    i + j. F(2, 3) is Lavin and Gray's AT, G, BT; F(3, 2) the same with AT and G swapped
    and transposed (two taps of a kernel gradient's output gradient, three outputs)."""
    at, g, bt = ([[Fraction(str(v)) for v in row] for row in m]
                 for m in (winograd.AT, winograd.G, winograd.BT))
    for outputs, taps, a, k in ((2, 3, at, g), (3, 2, [list(r) for r in zip(*g)],
                                                [list(r) for r in zip(*at)])):
        for i, j, x in itertools.product(range(outputs), range(taps), range(4)):
            assert sum(a[i][al] * k[al][j] * bt[al][x] for al in range(4)) == (x == i + j)


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_the_references(case):
    c = CASES[case]
    net = convc.compile(conv_graph(**c), "float64", grad=WRT, algorithm="winograd")
    rank = len(c["size"])
    assert "fwd: winograd F(2, 3)" in net.explain()
    assert "dinput: winograd F(2, 3)" in net.explain()
    assert "dweight: winograd F(3, 2)" in net.explain()
    rng = np.random.default_rng(len(case))
    groups = c.get("groups", 1)
    x = rng.standard_normal((2, c["cin"], *c["size"]))
    w = rng.standard_normal((c["channels"], c["cin"] // groups, *(3,) * rank))
    b = rng.standard_normal(c["channels"])
    pads = padding_pairs(c["padding"], c["size"], (3,) * rank, (1,) * rank, (1,) * rank)
    out, _ = net(x=x, **{"conv0.weight": w, "conv0.bias": b})
    np.testing.assert_allclose(out, conv(x, w, b, 1, pads, 1, groups), rtol=1e-10,
                               atol=1e-10)
    G = rng.standard_normal(out.shape)
    _, grads = net(x=x, **{"conv0.weight": w, "conv0.bias": b, "grad:conv0": G})
    dx, dw, db = conv_grads_scatter(x, w, G, (1,) * rank, (1,) * rank, pads, groups)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["conv0.weight"], dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["conv0.bias"], db, rtol=1e-10, atol=1e-10)


def kernel_gradient(x, G):
    """``g[k, c, a, b] = Σ_{n, i, j} G[n, k, i, j]·x[n, c, i + a - 1, j + b - 1]`` (padding 1)."""
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)]), G.shape[2:], axis=(2, 3))
    return np.einsum("nkij,ncabij->kcab", G, windows)


@pytest.mark.parametrize("role", ["fwd", "dweight"])
def test_float32_error_is_within_the_documented_bound(role):
    """|winograd - exact| <= 1e-6 · max(|x| * |w|) in float32 (the README's tolerance; about
    7e-8 measured for F(2, 3), 1e-7 for F(3, 2)'s g, the packed product 6e-8): the
    transforms add and subtract up to 9 terms. Exact: float64 sums."""
    c = dict(cin=32, size=(20, 18), channels=16)
    net = convc.compile(conv_graph(**c), grad=["conv0.weight"], algorithm="winograd")
    assert f"{role}: winograd" in net.explain()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 32, 20, 18)).astype(np.float32)
    w = rng.standard_normal((16, 32, 3, 3)).astype(np.float32)
    G = rng.standard_normal((2, 16, 20, 18)).astype(np.float32)
    out, grads = net(x=x, **{"conv0.weight": w, "conv0.bias": np.zeros(16, np.float32),
                             "grad:conv0": G})
    pads = [(1, 1), (1, 1)]
    if role == "fwd":
        found, exact = out, conv(x.astype(np.float64), w.astype(np.float64), None, 1, pads)
        bound = conv(np.abs(x), np.abs(w), None, 1, pads)
    else:
        found = grads["conv0.weight"]
        exact, bound = (kernel_gradient(*(a.astype(np.float64) for a in arrays))
                        for arrays in ((x, G), (np.abs(x), np.abs(G))))
    error = np.abs(found - exact).max() / bound.max()
    assert 0 < error <= 1e-6, error


@pytest.mark.parametrize("size,products", [((11,), 4), ((6, 7), 16), ((4, 5, 4), 0)])
def test_one_product_per_point_of_the_transformed_tile(size, products):
    """4 per axis; three axes (64 small products) run as the module's other choice."""
    lowered = convc.lower(conv_graph(8, size, 8), algorithm="winograd")
    step = next(s for s in lowered.steps if s.role == "fwd")
    if products:
        assert lowered.algorithms[step] == ("winograd",)
        assert sum(isinstance(p, Gemm) for p in lowered.parts[step]) == products
    else:
        assert "winograd" not in lowered.algorithms[step]


def test_the_cost_model_takes_it_for_wide_3x3_layers_only():
    def winograd(g):
        lowered = convc.lower(g)
        step = next(s for s in lowered.steps if s.role == "fwd")
        return "winograd" in lowered.algorithms[step]

    assert winograd(conv_graph(64, (28, 28), 64))
    assert not winograd(conv_graph(3, (28, 28), 8))  # too few channels
    assert not winograd(conv_graph(64, (28, 28), 64, kernel=5, padding=2))
    assert not winograd(conv_graph(64, (28, 28), 64, stride=2))


def test_the_kernel_gradient_is_one_product_per_point_over_images_and_tiles():
    """F(3, 2) stores its transforms with the images and tiles it sums over last, so each
    of the 16 points is one product as deep as they are many (N images of 14x14 tiles),
    and the cost model takes it for a wide 3x3 layer's g, not a depthwise one's."""
    lowered = convc.lower(conv_graph(64, (28, 28), 64), grad=["conv0.weight"])
    step = next(s for s in lowered.steps if s.role == "dweight")
    assert lowered.algorithms[step] == ("winograd",)
    gemms = [p for p in lowered.parts[step] if isinstance(p, Gemm)]
    assert len(gemms) == 16
    assert all(g.batch is None and g.k == 14 * 14 * BATCH and (g.m, g.n) == (64, 64)
               for g in gemms)
    depthwise = convc.lower(conv_graph(64, (28, 28), 64, groups=64), grad=["conv0.weight"])
    assert not any("winograd" in depthwise.algorithms[s] for s in depthwise.steps)
