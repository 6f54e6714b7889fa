"""True convolution, ``g.conv(..., flip=True)`` (equations 9.4-9.5): the kernel flipped.

* against ``scipy.signal.convolve`` in 1-D, 2-D and 3-D ("valid", "full", "same" with odd
  kernels), summed over input channels, for the direct and the matrix-product algorithms;
* the adjoint identity and the gradients against scatter loops (test_autodiff's helpers,
  given the kernel flipped by numpy) over hypothesis-drawn strides, paddings, dilations
  and groups;
* central finite differences in float64.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import example, given, settings
from scipy.signal import convolve
from test_autodiff import (
    SETTINGS,
    assert_adjoint,
    case_args,
    check_finite_differences,
    conv_arrays,
    conv_cases,
    conv_forward,
    conv_grads_scatter,
)

import convc


def flipped(w):
    """The kernel reversed along every spatial axis (numpy, independent of convc)."""
    return w[(slice(None), slice(None), *(slice(None, None, -1),) * (w.ndim - 2))]


@functools.cache
def flip_net(sizes, cin, channels, kernel, stride, dilation, padding, groups, bias,
             algorithm="auto"):
    g = convc.Graph("flip")
    x = g.input("x", (None, cin, *sizes))
    g.output(g.conv(x, channels=channels, kernel=kernel, stride=stride, padding=padding,
                    dilation=dilation, groups=groups, bias=bias, flip=True))
    wrt = ["x", "conv0.weight"] + (["conv0.bias"] if bias else [])
    return convc.compile(g, "float64", grad=wrt, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["direct", "gemm"])
@pytest.mark.parametrize("sizes, kernel, mode", [
    ((11,), (4,), "valid"), ((9,), (3,), "full"), ((10,), (5,), "same"),
    ((7, 8), (3, 2), "valid"), ((6, 7), (2, 3), "full"), ((7, 6), (3, 3), "same"),
    ((5, 4, 6), (2, 3, 2), "valid"), ((4, 5, 3), (3, 1, 3), "same"),
])
def test_flip_matches_scipy_convolve(sizes, kernel, mode, algorithm):
    cin, channels = 2, 3
    net = flip_net(sizes, cin, channels, kernel, 1, 1, mode, 1, False, algorithm)
    rng = np.random.default_rng(len(sizes) * 10 + kernel[0])
    x = rng.standard_normal((2, cin, *sizes))
    w = rng.standard_normal((channels, cin, *kernel))
    out, _ = net(x=x, **{"conv0.weight": w})
    for n in range(2):
        for k in range(channels):
            expected = sum(convolve(x[n, c], w[k, c], mode=mode, method="direct")
                           for c in range(cin))
            np.testing.assert_allclose(out[n, k], expected, rtol=1e-12, atol=1e-12)


def test_flip_differs_from_cross_correlation():
    """A non-symmetric kernel: the flipped and plain convolutions give different results."""
    g = convc.Graph("both")
    x = g.input("x", (None, 1, 6))
    w = g.constant("w", np.array([[[1.0, 2.0, 4.0]]]))
    g.output(g.conv(x, 1, 3, weight=w, bias=False, flip=True, name="true"),
             g.conv(x, 1, 3, weight=w, bias=False, name="xcorr"))
    out = convc.compile(g, "float64")(x=np.eye(6)[None, None, 2])
    np.testing.assert_array_equal(out["true"][0, 0], [1.0, 2.0, 4.0, 0.0])
    np.testing.assert_array_equal(out["xcorr"][0, 0], [4.0, 2.0, 1.0, 0.0])


@settings(max_examples=8, **SETTINGS)
@given(case=conv_cases())
@example(case=dict(sizes=(9, 10), cin=2, channels=2, kernel=(3, 3), stride=(2, 2),
                   dilation=(2, 2), padding=3, groups=1, bias=False, batch=2, seed=1,
                   algorithm="gemm"))
@example(case=dict(sizes=(11,), cin=4, channels=4, kernel=(4,), stride=(3,), dilation=(2,),
                   padding=((2, 1),), groups=2, bias=False, batch=2, seed=3))
@example(case=dict(sizes=(5, 4, 5), cin=2, channels=4, kernel=(2, 3, 2), stride=(2, 3, 1),
                   dilation=(2, 1, 3), padding="full", groups=2, bias=False, batch=1, seed=4))
def test_flip_adjoint_identity_and_scatter_gradients(case):
    """<c(K, V), G> = <V, h(K, G)> = <K, g(G, V)>, c the cross-correlation with the flipped
    kernel in numpy; h and g equal the scatter loops' (g flipped back)."""
    net = flip_net(*case_args(case))
    rng = np.random.default_rng(case["seed"])
    pads, x, w, G = conv_arrays(case, rng)
    c = conv_forward(x, flipped(w), case["stride"], case["dilation"], pads, case["groups"])
    out, grads = net(x=x, **{"conv0.weight": w, "grad:conv0": G})
    np.testing.assert_allclose(out, c, rtol=1e-12, atol=1e-12)
    h, gw = grads["x"], grads["conv0.weight"]
    assert_adjoint(c, G, x, h, w, gw)
    dx, dw, _ = conv_grads_scatter(x, flipped(w), G, case["stride"], case["dilation"], pads,
                                   case["groups"])
    np.testing.assert_allclose(h, dx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(gw, flipped(dw), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("algorithm", ["direct", "gemm"])
def test_flip_finite_differences(algorithm):
    net = flip_net((7, 8), 4, 4, (3, 2), (2, 1), (1, 2), "same", 2, True, algorithm)
    rng = np.random.default_rng(7)
    args = {"x": rng.standard_normal((2, 4, 7, 8)),
            "conv0.weight": rng.standard_normal((4, 2, 3, 2)),
            "conv0.bias": rng.standard_normal(4)}
    seed = rng.standard_normal((2, 4, 4, 8))  # "same" at strides (2, 1): ceil(7/2), 8
    check_finite_differences(net, args, ["x", "conv0.weight", "conv0.bias"],
                             {"conv0": seed}, rng)
