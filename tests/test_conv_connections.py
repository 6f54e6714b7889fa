"""Channel connectivity tables, ``g.conv(..., connections=table)`` (figure 9.15).

* the forward pass against a plain numpy loop that skips unconnected (k, c) pairs, with
  stride, padding and groups;
* the weight gradient is exactly 0 where the table is False, and stays 0 through SGD steps;
  the adjoint identity and finite differences hold for the other entries;
* a table of the wrong shape or dtype, or linking two groups, is refused.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from test_autodiff import check_finite_differences

import convc

TABLE = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 0]],
                 dtype=bool)  # (5 outputs, 4 inputs)
GROUPED = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)


def table_conv_loop(x, w, b, table, stride, pad, groups):
    """out[n, k, i, j] = b[k] + sum over connected input channels c, one pair at a time."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    K, cg = w.shape[0], x.shape[1] // groups
    kh, kw = w.shape[2:]
    oh, ow = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], K, oh, ow)) + b[None, :, None, None]
    for k in range(K):
        g = k // (K // groups)
        for c in range(cg):
            if not table[k, g * cg + c]:
                continue  # not connected: this pair adds nothing
            for i, j in itertools.product(range(oh), range(ow)):
                patch = xp[:, g * cg + c, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, k, i, j] += (patch * w[k, c]).sum(axis=(1, 2))
    return out


@functools.cache
def table_net(table_key, channels, stride, pad, groups, algorithm="auto"):
    table = np.array(table_key, dtype=bool)
    g = convc.Graph("table")
    x = g.input("x", (None, 4, 6, 7))
    g.output(g.conv(x, channels, 3, stride=stride, padding=pad, groups=groups,
                    connections=table))
    return convc.compile(g, "float64", grad=["x", "conv0.weight", "conv0.bias"],
                         algorithm=algorithm)


CASES = [(TABLE, 1, 1, "direct"), (TABLE, 2, 1, "gemm"), (GROUPED, 1, 2, "auto")]


def arrays(table, groups, rng):
    w = rng.standard_normal((table.shape[0], 4 // groups, 3, 3))
    return rng.standard_normal((2, 4, 6, 7)), w, rng.standard_normal(table.shape[0])


def key(table):
    return tuple(map(tuple, table.tolist()))


@pytest.mark.parametrize("table, stride, groups, algorithm", CASES)
def test_connections_match_a_loop_over_connected_pairs(table, stride, groups, algorithm):
    net = table_net(key(table), table.shape[0], stride, 1, groups, algorithm)
    rng = np.random.default_rng(stride + groups)
    x, w, b = arrays(table, groups, rng)
    out, _ = net(x=x, **{"conv0.weight": w, "conv0.bias": b})
    expected = table_conv_loop(x, w, b, table, stride, 1, groups)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # the weights of unconnected pairs are not read at all
    cg = 4 // groups
    mask = np.array([[table[k, (k // (table.shape[0] // groups)) * cg + c] for c in range(cg)]
                     for k in range(table.shape[0])])
    w2 = w + 100.0 * ~mask[:, :, None, None]
    np.testing.assert_array_equal(net(x=x, **{"conv0.weight": w2, "conv0.bias": b})[0], out)


@pytest.mark.parametrize("table, stride, groups, algorithm", CASES)
def test_weight_gradient_is_zero_where_unconnected(table, stride, groups, algorithm):
    net = table_net(key(table), table.shape[0], stride, 1, groups, algorithm)
    rng = np.random.default_rng(3)
    x, w, b = arrays(table, groups, rng)
    cg = 4 // groups
    kg = table.shape[0] // groups
    unconnected = np.array([[not table[k, (k // kg) * cg + c] for c in range(cg)]
                            for k in range(table.shape[0])])
    args = {"x": x, "conv0.weight": w, "conv0.bias": b}
    for _ in range(3):  # a few SGD steps on L = sum(out^2) / 2: those entries never move
        out, grads = net(**args, **{"grad:conv0": net(**args)[0]})
        gw = grads["conv0.weight"]
        assert (gw[unconnected] == 0).all()
        assert np.abs(gw[~unconnected]).min() > 0
        args["conv0.weight"] = args["conv0.weight"] - 0.01 * gw
    np.testing.assert_array_equal(args["conv0.weight"][unconnected], w[unconnected])
    G = rng.standard_normal(out.shape)
    out, grads = net(**args, **{"grad:conv0": G})
    lhs = np.vdot(out - b[None, :, None, None], G)
    assert abs(lhs - np.vdot(args["conv0.weight"], grads["conv0.weight"])) < 1e-10 * abs(lhs)
    assert abs(lhs - np.vdot(x, grads["x"])) < 1e-10 * abs(lhs)
    check_finite_differences(net, args, ["x", "conv0.weight", "conv0.bias"],
                             {"conv0": G}, rng)


@pytest.mark.parametrize("table, channels, groups, match", [
    (TABLE[:4], 5, 1, "shape \\(out_channels, in_channels\\) = \\(5, 4\\), found \\(4, 4\\)"),
    (TABLE.astype(float), 5, 1, "2-d boolean .* found dtype float64"),
    (np.ones((4, 4), bool), 4, 2, "connections\\[0, 2\\] links channels of different groups"),
])
def test_bad_tables_are_refused(table, channels, groups, match):
    g = convc.Graph("bad")
    x = g.input("x", (None, 4, 6, 7))
    with pytest.raises(convc.GraphError, match=f"node 'conv0' .*{match}"):
        g.conv(x, channels, 3, groups=groups, connections=table)
