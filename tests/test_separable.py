"""Separable convolution (section 9.8): ``conv(..., separable=True)`` learns one 1-D factor per
axis and runs one pass per axis.

Checked against the dense convolution (tests/reference.py) with the outer product of the
factors as its kernel; the gradients against the scatter loops of test_autodiff with the
chain rule through the outer product written here; finite differences in float64; both
algorithms; the initial kernel's variance; refused arguments.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import convc
from convc.errors import GraphError

from reference import conv, padding_pairs
from test_autodiff import check_finite_differences, conv_grads_scatter

CASES = {
    "1d": dict(sizes=(13,), cin=2, channels=3, kernel=(4,), stride=2, padding=1, dilation=1,
               groups=1),
    "2d": dict(sizes=(9, 11), cin=2, channels=4, kernel=(3, 5), stride=(2, 1),
               padding=((1, 0), (2, 2)), dilation=(1, 2), groups=2),
    "2d_same": dict(sizes=(10, 7), cin=3, channels=2, kernel=(5, 3), stride=1, padding="same",
                    dilation=1, groups=1),
    "3d": dict(sizes=(5, 6, 4), cin=2, channels=2, kernel=(2, 3, 2), stride=(1, 2, 1),
               padding="full", dilation=(2, 1, 1), groups=1),
}


@functools.lru_cache(maxsize=None)
def separable_net(case: str, algorithm: str):
    c = CASES[case]
    g = convc.Graph("sep")
    x = g.input("x", (None, c["cin"], *c["sizes"]))
    g.output(g.conv(x, channels=c["channels"], kernel=c["kernel"], stride=c["stride"],
                    padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                    separable=True))
    rank = len(c["kernel"])
    wrt = ["x", *(f"conv0.weight{a}" for a in range(rank)), "conv0.bias"]
    return convc.compile(g, "float64", grad=wrt, algorithm=algorithm)


def outer(factors):
    """W[k, c, m0, m1, ...] = u0[k, c, m0] · u1[k, c, m1] · ..."""
    letters = "pqr"[: len(factors)]
    spec = ",".join(f"kc{m}" for m in letters) + f"->kc{letters}"
    return np.einsum(spec, *factors)


def arrays(case: str, rng):
    c = CASES[case]
    rank = len(c["kernel"])
    stride = c["stride"] if isinstance(c["stride"], tuple) else (c["stride"],) * rank
    dilation = c["dilation"] if isinstance(c["dilation"], tuple) else (c["dilation"],) * rank
    pads = padding_pairs(c["padding"], c["sizes"], c["kernel"], stride, dilation)
    x = rng.standard_normal((2, c["cin"], *c["sizes"]))
    factors = [rng.standard_normal((c["channels"], c["cin"] // c["groups"], m))
               for m in c["kernel"]]
    b = rng.standard_normal(c["channels"])
    return x, factors, b, stride, dilation, pads


@pytest.mark.parametrize("algorithm", ["direct", "gemm"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_is_the_dense_convolution_of_the_outer_product(case, algorithm):
    net = separable_net(case, algorithm)
    rng = np.random.default_rng(len(case))
    x, factors, b, stride, dilation, pads = arrays(case, rng)
    params = {f"conv0.weight{a}": u for a, u in enumerate(factors)}
    out, _ = net(x=x, **params, **{"conv0.bias": b})
    expected = conv(x, outer(factors), b, stride, pads, dilation, CASES[case]["groups"])
    np.testing.assert_allclose(out, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("algorithm", ["direct", "gemm"])
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_follow_the_chain_rule_through_the_outer_product(case, algorithm):
    net = separable_net(case, algorithm)
    rng = np.random.default_rng(7 + len(case))
    x, factors, b, stride, dilation, pads = arrays(case, rng)
    params = {f"conv0.weight{a}": u for a, u in enumerate(factors)}
    out, grads = net(x=x, **params, **{"conv0.bias": b})
    G = rng.standard_normal(out.shape)
    _, grads = net(x=x, **params, **{"conv0.bias": b, "grad:conv0": G})
    dx, dw, db = conv_grads_scatter(x, outer(factors), G, stride, dilation, pads,
                                    CASES[case]["groups"])
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["conv0.bias"], db, rtol=1e-10, atol=1e-10)
    for a, u in enumerate(factors):
        # dL/du_a[k, c, m] = Σ over the other taps of dW · Π_{b != a} u_b
        others = [np.ones_like(v) if b_ == a else v for b_, v in enumerate(factors)]
        chain = (dw * outer(others)).sum(axis=tuple(2 + b_ for b_ in range(len(factors))
                                                    if b_ != a))
        np.testing.assert_allclose(grads[f"conv0.weight{a}"], chain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["2d", "3d"])
def test_finite_differences(case):
    net = separable_net(case, "auto")
    rng = np.random.default_rng(3)
    x, factors, b, *_ = arrays(case, rng)
    args = {"x": x, "conv0.bias": b, **{f"conv0.weight{a}": u for a, u in enumerate(factors)}}
    out, _ = net(**args)
    check_finite_differences(net, args, list(args), {"conv0": rng.standard_normal(out.shape)},
                             rng)


def test_passes_cost_the_sum_of_the_kernel_sizes_not_their_product():
    g = convc.Graph("blur")
    x = g.input("x", (None, 1, 64, 64))
    g.output(g.conv(x, channels=1, kernel=15, padding="same", bias=False, separable=True))
    text = convc.compile(g).explain()
    flops = int(text.split("FLOPS     fwd: ")[1].split()[0].replace(",", ""))
    dense = 2 * 64 * 64 * 15 * 15
    assert flops < dense / 5, (flops, dense)


def test_initial_kernel_has_the_variance_of_a_dense_one():
    g = convc.Graph("init")
    x = g.input("x", (None, 16, 8, 8))
    g.output(g.conv(x, channels=64, kernel=(3, 5), separable=True))
    params = convc.compile(g).init_params(seed=1)
    w = outer([params["conv0.weight0"], params["conv0.weight1"]])
    fan_in = 16 * 3 * 5
    assert w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.1)


def test_a_separable_convolution_cannot_share_a_weight():
    g = convc.Graph("bad")
    x = g.input("x", (None, 1, 8, 8))
    shared = g.tensor(g.conv(x, channels=1, kernel=3).name + ".weight")
    with pytest.raises(GraphError, match="separable.*factors.*no weight"):
        g.conv(x, channels=1, kernel=3, weight=shared, separable=True)
