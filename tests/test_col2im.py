"""Columns and shifted sums (`convc.col2im`): which contractions it takes, that they compute
the same function, and when the cost model picks it.

The hypothesis suites of test_ops_conv and test_autodiff draw ``algorithm="col2im"`` with
the rest; here: forward, g and h of strided, dilated, grouped and 1-3 D convolutions
against numpy, the one product that the phases of a strided input gradient share, and the
choice between it and the other algorithms.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import conv, padding_pairs
from test_autodiff import conv_grads_scatter

import convc
from convc.contract import Gemm

WRT = ["x", "conv0.weight", "conv0.bias"]

CASES = {
    "stem_like": dict(cin=3, size=(13, 12), channels=5, kernel=(5, 4), stride=2, padding=2),
    "audio_like": dict(cin=1, size=(40,), channels=6, kernel=(8,), stride=3, padding=0),
    "dilated_groups": dict(cin=4, size=(9, 8), channels=6, kernel=(3, 2), stride=1,
                           padding=((1, 0), (2, 1)), groups=2, dilation=2),
    "volume": dict(cin=2, size=(5, 6, 4), channels=3, kernel=(3, 3, 2), stride=(1, 2, 1),
                   padding=1),
    "short_rows": dict(cin=3, size=(12, 9), channels=4, kernel=(5, 3), padding=(0, 1)),
}


def conv_graph(cin, size, channels, kernel, stride=1, padding=0, groups=1, dilation=1):
    g = convc.Graph("cols")
    x = g.input("x", (None, cin, *size))
    g.output(g.conv(x, channels=channels, kernel=kernel, stride=stride, padding=padding,
                    groups=groups, dilation=dilation))
    return g


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_the_references(case):
    net = convc.compile(conv_graph(**CASES[case]), "float64", grad=WRT, algorithm="col2im")
    assert "col2im" in net.explain()
    check_against_references(net, CASES[case], seed=len(case))


def check_against_references(net, c: dict, seed: int, dtype: str = "float64",
                             tol: float = 1e-10) -> None:
    """The module of `conv_graph(**c)`: its output and its three gradients against numpy
    (the forward sum, and the gradients scattered from it), on random arrays."""
    rank = len(c["size"])
    stride, dilation = (tuple(np.broadcast_to(c.get(k, 1), rank)) for k in ("stride",
                                                                              "dilation"))
    rng = np.random.default_rng(seed)
    groups = c.get("groups", 1)
    x = rng.standard_normal((2, c["cin"], *c["size"]))
    w = rng.standard_normal((c["channels"], c["cin"] // groups, *c["kernel"]))
    b = rng.standard_normal(c["channels"])
    pads = padding_pairs(c["padding"], c["size"], c["kernel"], stride, dilation)
    expected = conv(x, w, b, stride, pads, dilation, groups)
    G = rng.standard_normal(expected.shape)
    args = {"x": x, "conv0.weight": w, "conv0.bias": b, "grad:conv0": G}
    out, grads = net(**{k: v.astype(dtype) for k, v in args.items()})
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    dx, dw, db = conv_grads_scatter(x, w, G, stride, dilation, pads, groups)
    np.testing.assert_allclose(grads["x"], dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["conv0.weight"], dw, rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["conv0.bias"], db, rtol=tol, atol=tol)


def _products(lowered, role):
    step = next(s for s in lowered.steps if s.node == "conv0" and s.role == role)
    return [p for p in lowered.parts[step] if isinstance(p, Gemm)], lowered.algorithms[step]


def test_phases_of_a_strided_input_gradient_share_one_product():
    """At stride 2 the input gradient is four phases, each reading every other tap; their
    columns are one product whose rows are the input channels times all 7x7 taps, and the
    output gradient is read in place."""
    g = conv_graph(cin=3, size=(30, 30), channels=16, kernel=7, stride=2, padding=3)
    lowered = convc.lower(g, grad=["x"], algorithm="col2im")
    products, used = _products(lowered, "dinput")
    assert used == ("col2im",) * 4
    assert len(products) == 1
    assert products[0].m == 3 * 49 and products[0].k == 16
    assert products[0].b.tensor == "seed:conv0"  # the seed itself, in place
    assert not products[0].accumulate  # the columns are written, not zeroed then added to


def test_columns_are_not_made_for_every_pair_of_positions():
    """A kernel gradient's taps are the output gradient's positions: its columns would pair
    every output position with every input position (256 x 256 here, 28 times the pairs
    its sum reads; a 32x32x32 volume's would take 128 GiB), so it runs as direct loops
    even when col2im is asked for, while the forward pass and h still take it."""
    case = dict(cin=2, size=(16, 16), channels=3, kernel=(3, 3), padding=1)
    lowered = convc.lower(conv_graph(**case), grad=WRT, algorithm="col2im")
    assert _products(lowered, "fwd")[1] == _products(lowered, "dinput")[1] == ("col2im",)
    assert _products(lowered, "dweight") == ([], ("direct",))
    net = convc.compile(conv_graph(**case), "float64", grad=WRT, algorithm="col2im")
    check_against_references(net, case, seed=3)


def test_shifted_columns_of_short_rows_sum_in_registers():
    """LeNet's conv2 (12x12 inputs, 5x5 taps): the sum of shifted columns keeps each input
    point's taps in a register along rows of 12, its taps unrolled where the window is
    whole, instead of a loop per point bounded by the 8x8 columns it reads."""
    g = conv_graph(cin=6, size=(12, 12), channels=16, kernel=5)
    loops = convc.compile(g, grad=["x"], algorithm="col2im").explain().split("LOOPS")[-1]
    assert loops.startswith("     dinput:")
    assert "for m1 in [0, 5):  (unroll)" in loops
    assert "for j3 in [4, 8):" in loops  # the row's interior, between its two borders


@pytest.mark.parametrize("case,expected", [
    (dict(cin=3, size=(64, 64), channels=64, kernel=7, stride=2, padding=3), "col2im"),
    (dict(cin=1, size=(2000,), channels=32, kernel=64, stride=4), "col2im"),
    (dict(cin=32, size=(16, 16), channels=32, kernel=3, stride=2, padding=1), "blocked"),
    # LeNet's conv2: its gather clips every window to the 8x8 columns it reads
    (dict(cin=6, size=(12, 12), channels=16, kernel=5), "col2im"),
])
def test_cost_model_takes_columns_where_the_input_has_few_channels(case, expected):
    """An input gradient with 1 or 3 channels is a product of 1 or 3 rows taken directly;
    as columns its rows are the channels times the taps. With many channels the sum runs
    as it is, its channels filling vectors (`convc.blocked`)."""
    _, used = _products(convc.lower(conv_graph(**case), grad=["x"]), "dinput")
    assert set(used) == {expected}
