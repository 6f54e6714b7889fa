"""Weighted average pooling, ``g.weighted_pool`` (section 9.3).

* Gaussian and user weights (normalised to sum 1) against a numpy reference written here,
  in 1-D and 2-D, with stride and padding;
* at a padded border the padded cells count as zeros with their weight: on an all-ones
  input an interior window gives 1 and a border window the sum of its inside weights;
* the adjoint identity and finite differences in float64;
* bad weights are refused.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from test_autodiff import check_finite_differences

import convc


def gaussian(window, sigma):
    """exp(-r^2 / (2 sigma^2)) of each cell's distance r from the window's centre, / sum."""
    w = np.ones(window)
    for cell in itertools.product(*(range(n) for n in window)):
        r2 = sum((i - (n - 1) / 2) ** 2 for i, n in zip(cell, window))
        w[cell] = np.exp(-r2 / (2 * sigma**2))
    return w / w.sum()


def weighted_pool_ref(x, weights, stride, pad):
    """Zero padding, then every window's cells times the weights, summed."""
    rank = weights.ndim
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * rank)
    outs = [(n - k) // stride + 1 for n, k in zip(xp.shape[2:], weights.shape)]
    out = np.zeros((*x.shape[:2], *outs))
    for i in itertools.product(*(range(o) for o in outs)):
        window = xp[(slice(None), slice(None),
                     *(slice(s * stride, s * stride + k) for s, k in zip(i, weights.shape)))]
        out[(slice(None), slice(None), *i)] = (window * weights).sum(
            axis=tuple(range(2, 2 + rank)))
    return out


@functools.cache
def pool_net(sizes, window, stride, pad, weights_key, sigma):
    weights = "gaussian" if weights_key is None else np.array(weights_key)
    g = convc.Graph("wpool")
    x = g.input("x", (None, 2, *sizes))
    g.output(g.weighted_pool(x, window, stride=stride, padding=pad, weights=weights,
                             sigma=sigma))
    return convc.compile(g, "float64", grad=["x"])


CASES = [((9,), 3, 2, 1, None, 1.0), ((7, 8), 3, 2, 1, None, 0.7),
         ((6, 7), (2, 3), 1, 0, ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0)), 1.0),
         ((8, 6), 5, 3, 2, None, 2.0)]


def weights_of(case):
    sizes, window, _, _, key, sigma = case
    window = (window,) * len(sizes) if isinstance(window, int) else window
    return gaussian(window, sigma) if key is None else np.array(key) / np.sum(key)


@pytest.mark.parametrize("case", CASES)
def test_weighted_pool_matches_numpy(case):
    sizes, _, stride, pad, _, _ = case
    net = pool_net(*case)
    x = np.random.default_rng(len(sizes)).standard_normal((3, 2, *sizes))
    out, _ = net(x=x)
    np.testing.assert_allclose(out, weighted_pool_ref(x, weights_of(case), stride, pad),
                               rtol=1e-12, atol=1e-12)


def test_weights_sum_to_one_and_padded_cells_count_as_zero():
    case = ((7, 8), 3, 2, 1, None, 0.7)
    net = pool_net(*case)
    w = weights_of(case)
    out, _ = net(x=np.ones((1, 2, 7, 8)))
    np.testing.assert_allclose(out[0, :, 1:-1, 1:-1], 1.0, rtol=1e-13)  # fully inside
    # window (0, 0) starts at (-1, -1): its first row and column are padding
    np.testing.assert_allclose(out[0, :, 0, 0], w[1:, 1:].sum(), rtol=1e-13)
    np.testing.assert_allclose(out[0, :, 0, 2], w[1:, :].sum(), rtol=1e-13)
    assert out[0, 0, 0, 0] < out[0, 0, 0, 2] < 1


@pytest.mark.parametrize("case", CASES)
def test_weighted_pool_adjoint_and_finite_differences(case):
    sizes = case[0]
    net = pool_net(*case)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2, *sizes))
    out, _ = net(x=x)
    G = rng.standard_normal(out.shape)
    _, grads = net(x=x, **{"grad:weighted_pool0": G})
    lhs = np.vdot(out, G)
    assert abs(lhs - np.vdot(x, grads["x"])) < 1e-12 * np.linalg.norm(out) * np.linalg.norm(G)
    check_finite_differences(net, {"x": x}, ["x"], {"weighted_pool0": G}, rng)


@pytest.mark.parametrize("kwargs, match", [
    (dict(weights=np.ones((3, 2))), "array of the window's shape \\(3, 3\\).*\\(3, 2\\)"),
    (dict(weights=-np.ones((3, 3))), "nonnegative with a positive sum"),
    (dict(weights="box"), "'gaussian' or an array"),
    (dict(sigma=0), "sigma must be a positive number, found 0"),
])
def test_bad_weights_are_refused(kwargs, match):
    g = convc.Graph("bad")
    x = g.input("x", (None, 1, 6, 6))
    with pytest.raises(convc.GraphError, match=f"node 'weighted_pool0' .*{match}"):
        g.weighted_pool(x, 3, **kwargs)
