"""Derived gradients, compiled and run, checked against mathematics and independent numpy.

* the adjoint identity of convolution, <c(K, V), G> = <V, h(K, G)> = <K, g(G, V)>, over
  hypothesis-drawn 1-D/2-D/3-D convolutions (strides, dilations, every padding form, groups);
* the convolution's gradients against explicit scatter loops written here;
* central finite differences along random tangents for every op, inputs and parameters;
* max pooling sends a window's gradient to its first maximum in scan order; an Lp pool over
  an all-zero window has gradient 0; gradients of shared tensors add up;
* the structure of the derived input gradient h of a strided convolution (no modulo,
  division, floor or test in its inner loop; exactly the forward's multiply-adds), and the
  printed derivations;
* a small network trained by plain SGD with the gradients the module returns.

Everything runs in float64 except the training run.
"""

from __future__ import annotations

import functools
import itertools
import math
import re

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import convc
from convc.loops import Block, Loop, Update

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_SIZE = {1: 11, 2: 8, 3: 5}


# -- independent numpy references ------------------------------------------------------------

def extent(k: int, d: int) -> int:
    return d * (k - 1) + 1


def resolve_pads(padding, sizes, kernel, stride, dilation) -> list[tuple[int, int]]:
    """Per-axis (before, after) padding of a convc padding argument."""
    rank = len(sizes)
    if padding == "valid":
        return [(0, 0)] * rank
    if padding == "full":
        return [(extent(k, d) - 1,) * 2 for k, d in zip(kernel, dilation)]
    if padding == "same":
        pairs = []
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((-(-size // s) - 1) * s + extent(k, d) - size, 0)
            pairs.append((total // 2, total - total // 2))
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def conv_out_sizes(sizes, kernel, stride, dilation, pads) -> list[int]:
    return [(size + lo + hi - extent(k, d)) // s + 1
            for size, k, s, d, (lo, hi) in zip(sizes, kernel, stride, dilation, pads)]


def conv_forward(x, w, stride, dilation, pads, groups):
    """out[n, k, i] = sum_{c, m} x_pad[n, g*C' + c, s*i + d*m] * w[k, c, m], one tap at a time."""
    rank = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    kernel = w.shape[2:]
    outs = conv_out_sizes(x.shape[2:], kernel, stride, dilation, pads)
    cg, kg = x.shape[1] // groups, w.shape[0] // groups
    out = np.zeros((x.shape[0], w.shape[0], *outs))
    for m in itertools.product(*(range(k) for k in kernel)):
        window = xp[(slice(None), slice(None), *(
            slice(d * mi, d * mi + s * (o - 1) + 1, s)
            for mi, s, d, o in zip(m, stride, dilation, outs)))]
        for g in range(groups):
            xs = window[:, g * cg:(g + 1) * cg]
            ws = w[(slice(g * kg, (g + 1) * kg), slice(None), *m)]
            out[:, g * kg:(g + 1) * kg] += np.einsum("nc...,kc->nk...", xs, ws)
    assert out.ndim == rank + 2
    return out


def conv_grads_scatter(x, w, G, stride, dilation, pads, groups):
    """dV, dK, db of L = <conv(x, w) + b, G> by scattering every (k, c, i, m) term."""
    sizes, kernel, outs = x.shape[2:], w.shape[2:], G.shape[2:]
    cg, kg = x.shape[1] // groups, w.shape[0] // groups
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for k in range(w.shape[0]):
        for c in range(cg):
            ci = (k // kg) * cg + c
            for i in itertools.product(*(range(o) for o in outs)):
                g_col = G[(slice(None), k, *i)]
                for m in itertools.product(*(range(kk) for kk in kernel)):
                    pos = tuple(s * ii + d * mm - lo for ii, mm, s, d, (lo, _) in
                                zip(i, m, stride, dilation, pads))
                    if not all(0 <= p < size for p, size in zip(pos, sizes)):
                        continue
                    dx[(slice(None), ci, *pos)] += g_col * w[(k, c, *m)]
                    dw[(k, c, *m)] += g_col @ x[(slice(None), ci, *pos)]
    db = G.sum(axis=(0, *range(2, G.ndim)))
    return dx, dw, db


def pool_out_size(size, w, s, d, lo, hi, ceil_mode) -> int:
    span = size + lo + hi - extent(w, d)
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= size + lo else out


def maxpool_first_max_grad(x, G, window, stride, dilation, pads):
    """Max pooling forward and gradient; each window's gradient goes to its first maximum,
    scanning the window's cells in row-major order of the window offset."""
    sizes = x.shape[2:]
    out = np.full(G.shape, -np.inf)
    dx = np.zeros_like(x)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for i in itertools.product(*(range(o) for o in G.shape[2:])):
            best, where = -np.inf, None
            for m in itertools.product(*(range(w) for w in window)):
                pos = tuple(s * ii + d * mm - lo for ii, mm, s, d, (lo, _) in
                            zip(i, m, stride, dilation, pads))
                if all(0 <= p < size for p, size in zip(pos, sizes)) and x[(n, c, *pos)] > best:
                    best, where = x[(n, c, *pos)], pos
            out[(n, c, *i)] = best
            dx[(n, c, *where)] += G[(n, c, *i)]
    return out, dx


def lp_pool_grad(x, G, window, stride, p, pads):
    """Lp pooling (no dilation) forward and gradient: d||v||_p / dv = |v|^(p-1) sign(v) /
    ||v||_p^(p-1), and 0 for a window whose norm is 0."""
    sizes = x.shape[2:]
    out = np.zeros(G.shape)
    dx = np.zeros_like(x)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for i in itertools.product(*(range(o) for o in G.shape[2:])):
            cells = []
            for m in itertools.product(*(range(w) for w in window)):
                pos = tuple(s * ii + mm - lo for ii, mm, s, (lo, _) in zip(i, m, stride, pads))
                if all(0 <= q < size for q, size in zip(pos, sizes)):
                    cells.append(pos)
            vals = np.array([x[(n, c, *q)] for q in cells])
            norm = (np.abs(vals) ** p).sum() ** (1 / p)
            out[(n, c, *i)] = norm
            if norm == 0:
                continue
            for q, v in zip(cells, vals):
                dx[(n, c, *q)] += G[(n, c, *i)] * abs(v) ** (p - 1) * np.sign(v) / norm ** (p - 1)
    return out, dx


# -- compiling (each distinct graph once per session) ---------------------------------------

def conv_graph(sizes, cin, channels, kernel, stride, dilation, padding, groups, bias):
    g = convc.Graph("adjoint")
    x = g.input("x", (None, cin, *sizes))
    g.output(g.conv(x, channels=channels, kernel=kernel, stride=stride, padding=padding,
                    dilation=dilation, groups=groups, bias=bias))
    return g


@functools.lru_cache(maxsize=None)
def conv_net(sizes, cin, channels, kernel, stride, dilation, padding, groups, bias,
             algorithm="auto"):
    g = conv_graph(sizes, cin, channels, kernel, stride, dilation, padding, groups, bias)
    wrt = ["x", "conv0.weight"] + (["conv0.bias"] if bias else [])
    return convc.compile(g, "float64", grad=wrt, algorithm=algorithm)


@st.composite
def conv_cases(draw, bias=False, max_rank=3):
    rank = draw(st.integers(1, max_rank))
    sizes = tuple(draw(st.lists(st.integers(1, MAX_SIZE[rank]), min_size=rank, max_size=rank)))
    cin = draw(st.sampled_from([1, 2, 3, 4]))
    groups = draw(st.sampled_from([g for g in range(1, cin + 1) if cin % g == 0]))
    channels = groups * draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["valid", "same", "full", "int", "ints", "pairs"]))
    per_axis = st.lists(st.integers(0, 3), min_size=rank, max_size=rank)
    if mode == "int":
        padding = draw(st.integers(0, 3))
    elif mode == "ints":
        padding = tuple(draw(per_axis))
    elif mode == "pairs":
        padding = tuple(zip(draw(per_axis), draw(per_axis)))
    else:
        padding = mode
    stride = tuple(draw(st.integers(1, 3)) for _ in sizes)
    dilation = tuple(draw(st.integers(1, 3)) for _ in sizes)
    zero = resolve_pads(padding, sizes, [1] * rank, stride, dilation)
    kernel = []
    for a, size in enumerate(sizes):
        if padding in ("same", "full"):
            room = 4
        else:  # the dilated kernel must fit the padded input
            room = (size + sum(zero[a]) - 1) // dilation[a] + 1
        kernel.append(draw(st.integers(1, min(4, room))))
    return dict(sizes=sizes, cin=cin, channels=channels, kernel=tuple(kernel), stride=stride,
                dilation=dilation, padding=padding, groups=groups, bias=bias,
                batch=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**16)),
                algorithm=draw(st.sampled_from(["direct", "gemm", "fft", "winograd",
                                                "col2im", "blocked"])))


def case_args(case):
    """The arguments of `conv_net`; the algorithm (direct loops, or packed matrix products
    for the convolution, g and h alike) is drawn with the rest."""
    keys = ("sizes", "cin", "channels", "kernel", "stride", "dilation", "padding", "groups",
            "bias")
    return (*(case[k] for k in keys), case.get("algorithm", "auto"))


def conv_arrays(case, rng):
    pads = resolve_pads(case["padding"], case["sizes"], case["kernel"], case["stride"],
                        case["dilation"])
    outs = conv_out_sizes(case["sizes"], case["kernel"], case["stride"], case["dilation"], pads)
    x = rng.standard_normal((case["batch"], case["cin"], *case["sizes"]))
    w = rng.standard_normal((case["channels"], case["cin"] // case["groups"], *case["kernel"]))
    G = rng.standard_normal((case["batch"], case["channels"], *outs))
    return pads, x, w, G


# -- 1. the adjoint identity -----------------------------------------------------------------

@settings(max_examples=24, **SETTINGS)
@given(case=conv_cases())
@example(case=dict(sizes=(9, 10), cin=2, channels=2, kernel=(3, 3), stride=(2, 2),
                   dilation=(2, 2), padding=3, groups=1, bias=False, batch=2, seed=1))
@example(case=dict(sizes=(9, 10), cin=2, channels=2, kernel=(3, 3), stride=(2, 2),
                   dilation=(2, 2), padding=3, groups=1, bias=False, batch=2, seed=1,
                   algorithm="gemm"))
@example(case=dict(sizes=(10, 8), cin=3, channels=3, kernel=(5, 2), stride=(3, 3),
                   dilation=(1, 2), padding="same", groups=3, bias=False, batch=1, seed=2))
@example(case=dict(sizes=(10, 8), cin=3, channels=3, kernel=(5, 2), stride=(3, 3),
                   dilation=(1, 2), padding="same", groups=3, bias=False, batch=1, seed=2,
                   algorithm="gemm"))
@example(case=dict(sizes=(11,), cin=4, channels=4, kernel=(4,), stride=(3,), dilation=(2,),
                   padding=((2, 1),), groups=2, bias=False, batch=2, seed=3))
@example(case=dict(sizes=(5, 4, 5), cin=2, channels=4, kernel=(2, 3, 2), stride=(2, 3, 1),
                   dilation=(2, 1, 3), padding="full", groups=2, bias=False, batch=1, seed=4))
def test_conv_adjoint_identity(case):
    """<c(K, V), G> = <V, h(K, G)> = <K, g(G, V)>, with c computed here in numpy."""
    net = conv_net(*case_args(case))
    rng = np.random.default_rng(case["seed"])
    pads, x, w, G = conv_arrays(case, rng)
    c = conv_forward(x, w, case["stride"], case["dilation"], pads, case["groups"])
    out, grads = net(x=x, **{"conv0.weight": w, "grad:conv0": G})
    np.testing.assert_allclose(out, c, rtol=1e-12, atol=1e-12)
    lhs, scale = assert_adjoint(c, G, x, grads["x"], w, grads["conv0.weight"])
    assert abs(lhs) > 1e-6 * scale or np.allclose(c, 0), "a degenerate case proves nothing"


def assert_adjoint(c, G, x, h, w, gw):
    """<c, G> = <x, h> = <w, gw> to 1e-10 of the largest product of norms; the inner product
    and that scale."""
    lhs, via_input, via_kernel = np.vdot(c, G), np.vdot(x, h), np.vdot(w, gw)
    scale = max(np.linalg.norm(c) * np.linalg.norm(G), np.linalg.norm(x) * np.linalg.norm(h),
                np.linalg.norm(w) * np.linalg.norm(gw), 1e-300)
    assert abs(lhs - via_input) / scale < 1e-10, (lhs, via_input)
    assert abs(lhs - via_kernel) / scale < 1e-10, (lhs, via_kernel)
    return lhs, scale


# -- 2. gradients against explicit scatter loops ---------------------------------------------

@settings(max_examples=8, **SETTINGS)
@given(case=conv_cases(bias=True))
@example(case=dict(sizes=(7, 9), cin=4, channels=4, kernel=(3, 2), stride=(2, 3),
                   dilation=(2, 1), padding=((3, 0), (1, 2)), groups=4, bias=True, batch=2,
                   seed=5))
def test_conv_gradients_match_scatter_reference(case):
    net = conv_net(*case_args(case))
    rng = np.random.default_rng(case["seed"])
    pads, x, w, G = conv_arrays(case, rng)
    b = rng.standard_normal(case["channels"])
    _, grads = net(x=x, **{"conv0.weight": w, "conv0.bias": b, "grad:conv0": G})
    dx, dw, db = conv_grads_scatter(x, w, G, case["stride"], case["dilation"], pads,
                                    case["groups"])
    assert set(grads) == {"x", "conv0.weight", "conv0.bias"}
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(grads["conv0.weight"], dw, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(grads["conv0.bias"], db, rtol=1e-11, atol=1e-11)


# -- 3. finite differences for every op ------------------------------------------------------

def as_dict(net, out):
    return out if isinstance(out, dict) else {next(iter(net.outputs)): out}


def check_finite_differences(net, args, wrt, seeds, rng, eps=1e-6, rtol=1e-6):
    """For each tensor of ``wrt`` and a random tangent T on it alone, the directional
    derivative of L = sum_O <O, seed_O> by central differences equals <grad, T>."""
    given = {f"grad:{o}": s for o, s in seeds.items()}
    out, grads = net(**args, **given)
    assert set(grads) == set(wrt)

    def loss(name, tangent, step):
        shifted = dict(args, **{name: args[name] + step * tangent})
        o, _ = net(**shifted, **given)
        o = as_dict(net, o)
        return sum(float(np.vdot(o[k], s)) for k, s in seeds.items())

    for name in wrt:
        assert grads[name].shape == args[name].shape
        assert np.isfinite(grads[name]).all()
        tangent = rng.standard_normal(args[name].shape)
        fd = (loss(name, tangent, eps) - loss(name, tangent, -eps)) / (2 * eps)
        exact = float(np.vdot(grads[name], tangent))
        assert abs(fd - exact) <= rtol * max(abs(exact), abs(fd), 1e-3), (name, fd, exact)
    return out, grads


def away_from_zero(a, margin=0.05):
    """The array with every value at least ``margin`` from 0 (kinks of relu, |v|, max)."""
    return np.where(np.abs(a) < margin, a + np.copysign(2 * margin, a), a)


def one_op(build, shapes, grad_params=()):
    """A graph of inputs ``shapes`` (float, batch axis None) and what ``build`` adds."""
    g = convc.Graph("fd")
    xs = [g.input(name, (None, *shape)) for name, shape in shapes.items()]
    outs = build(g, *xs)
    g.output(*(outs if isinstance(outs, tuple) else (outs,)))
    return g


OP_CASES = {
    "conv2d_bias": (dict(x=(3, 7, 8)), lambda g, x: g.conv(
        x, channels=4, kernel=3, stride=2, padding="same", groups=1, dilation=(1, 2)),
        ("conv0.weight", "conv0.bias")),
    "conv1d_groups_bias": (dict(x=(4, 10)), lambda g, x: g.conv(
        x, channels=2, kernel=3, stride=3, padding=(2,), groups=2), ("conv0.weight",
                                                                    "conv0.bias")),
    "conv3d_depthwise_bias": (dict(x=(2, 4, 5, 4)), lambda g, x: g.conv(
        x, channels=2, kernel=2, stride=(2, 1, 2), padding="full", groups=2),
        ("conv0.weight", "conv0.bias")),
    "conv_transpose": (dict(x=(2, 3, 4)), lambda g, x: g.conv_transpose(
        x, channels=3, kernel=3, stride=2, padding=1), ("conv_transpose0.weight",
                                                        "conv_transpose0.bias")),
    "max_pool_ceil_pad": (dict(x=(2, 7, 8)), lambda g, x: g.max_pool(
        x, 3, stride=2, padding=1, ceil_mode=True), ()),
    "max_pool_dilated": (dict(x=(2, 8, 7)), lambda g, x: g.max_pool(
        x, (2, 3), stride=(2, 1), dilation=2), ()),
    "max_pool_1d": (dict(x=(3, 10)), lambda g, x: g.max_pool(
        x, 4, stride=3, padding=2, ceil_mode=True), ()),
    "avg_pool_include_pad": (dict(x=(2, 7, 8)), lambda g, x: g.avg_pool(
        x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=True), ()),
    "avg_pool_exclude_pad": (dict(x=(2, 7, 8)), lambda g, x: g.avg_pool(
        x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), ()),
    "avg_pool_3d": (dict(x=(2, 5, 4, 5)), lambda g, x: g.avg_pool(
        x, 2, stride=(2, 1, 2), padding=(1, 0, 1), ceil_mode=True, count_include_pad=False),
        ()),
    "lp_pool_p2": (dict(x=(2, 7, 8)), lambda g, x: g.lp_pool(
        x, 3, p=2, stride=2, padding=1, ceil_mode=True), ()),
    "lp_pool_p3": (dict(x=(2, 7, 8)), lambda g, x: g.lp_pool(
        x, 2, p=3, stride=1, dilation=2, padding=(1, 0), ceil_mode=True), ()),
    "global_max_pool": (dict(x=(3, 4, 5)), lambda g, x: g.global_max_pool(x), ()),
    "global_avg_pool": (dict(x=(3, 4, 5)), lambda g, x: g.global_avg_pool(x), ()),
    "relu": (dict(x=(3, 4, 5)), lambda g, x: g.relu(x), ()),
    "sigmoid": (dict(x=(3, 4, 5)), lambda g, x: g.sigmoid(x), ()),
    "tanh": (dict(x=(3, 4, 5)), lambda g, x: g.tanh(x), ()),
    "add": (dict(x=(3, 4), y=(3, 4)), lambda g, x, y: g.add(x, y), ()),
    "flatten": (dict(x=(2, 3, 4)), lambda g, x: g.flatten(x), ()),
    "dense": (dict(x=(6,)), lambda g, x: g.dense(x, 4), ("dense0.weight", "dense0.bias")),
    "softmax_rank2": (dict(x=(5,)), lambda g, x: g.softmax(x), ()),
    "softmax_rank4": (dict(x=(4, 3, 2)), lambda g, x: g.softmax(x), ()),
    "mean_squared_error": (dict(x=(3, 4), y=(3, 4)),
                           lambda g, x, y: g.mean_squared_error(x, y), ()),
    "two_outputs": (dict(x=(3, 5)), lambda g, x: (g.tanh(x), g.softmax(x)), ()),
}


@functools.lru_cache(maxsize=None)
def op_net(case):
    shapes, build, params = OP_CASES[case]
    g = one_op(build, shapes)
    return convc.compile(g, "float64", grad=[*shapes, *params])


@pytest.mark.parametrize("case", list(OP_CASES))
def test_finite_differences(case):
    shapes, build, params = OP_CASES[case]
    net = op_net(case)
    rng = np.random.default_rng(sum(map(ord, case)))
    batch = 2
    args = {n: away_from_zero(rng.standard_normal((batch, *s))) for n, s in shapes.items()}
    for name, shape in net.parameters.items():
        args[name] = rng.standard_normal(shape)
    seeds = {}
    for o, shape in net.outputs.items():
        concrete = tuple(batch if isinstance(d, sympy.Symbol) else int(d) for d in shape)
        seeds[o] = rng.standard_normal(concrete)
    check_finite_differences(net, args, [*shapes, *params], seeds, rng)


def test_finite_differences_softmax_cross_entropy():
    g = convc.Graph("sce")
    logits = g.input("x", (None, 5))
    labels = g.input("y", (None,), dtype="int64")
    g.output(g.softmax_cross_entropy(logits, labels))
    net = convc.compile(g, "float64", grad=["x"])
    rng = np.random.default_rng(11)
    x, y = 3 * rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    # the default seed of a 0-d output is 1: the gradient of the loss itself
    loss, grads = net(x=x, y=y)
    shifted = x - x.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss, -np.log(p[np.arange(4), y]).mean(), rtol=1e-12)
    onehot = np.eye(5)[y]
    np.testing.assert_allclose(grads["x"], (p - onehot) / 4, rtol=1e-10, atol=1e-14)
    # a seed given for the loss scales the gradient, and finite differences agree
    check_finite_differences(net, dict(x=x, y=y), ["x"], {"softmax_cross_entropy0":
                                                         np.array(2.5)}, rng)
    _, scaled = net(x=x, y=y, **{"grad:softmax_cross_entropy0": np.array(2.5)})
    np.testing.assert_allclose(scaled["x"], 2.5 * grads["x"], rtol=1e-12)


def test_finite_differences_chain_with_parameters():
    """Every layer of a small network at once, parameters and input."""
    g = convc.Graph("chain")
    x = g.input("x", (None, 2, 9, 8))
    h = g.conv(x, channels=3, kernel=3, stride=2, padding=1, dilation=(1, 2))
    h = g.lp_pool(g.tanh(h), 2, p=3, stride=1, ceil_mode=True)
    h = g.avg_pool(g.sigmoid(h), 2, padding=1, count_include_pad=False, ceil_mode=True)
    h = g.dense(g.flatten(h), 4)
    g.output(g.softmax(h))
    net = convc.compile(g, "float64", grad=["x", *g.parameters()])
    rng = np.random.default_rng(3)
    args = dict(x=rng.standard_normal((2, 2, 9, 8)))
    args |= {n: rng.standard_normal(s) for n, s in net.parameters.items()}
    seeds = {"softmax0": rng.standard_normal((2, 4))}
    check_finite_differences(net, args, ["x", *g.parameters()], seeds, rng)


# -- 4. max pooling ties -----------------------------------------------------------------------

TIE_CASES = [  # window, stride, dilation, padding, ceil_mode: windows overlap, or tile x
    ((3, 3), (1, 1), (1, 1), 0, False),
    ((3, 3), (2, 2), (1, 1), 1, True),
    ((2, 3), (1, 2), (2, 1), (1, 1), True),
    ((1, 2), (1, 2), (1, 1), 0, False),
]


@functools.lru_cache(maxsize=None)
def max_pool_net(window, stride, dilation, padding, ceil_mode):
    g = convc.Graph("ties")
    x = g.input("x", (None, 2, 7, 6))
    g.output(g.max_pool(x, window, stride=stride, padding=padding, dilation=dilation,
                        ceil_mode=ceil_mode))
    return convc.compile(g, "float64", grad=["x"])


@pytest.mark.parametrize("window,stride,dilation,padding,ceil_mode", TIE_CASES)
@pytest.mark.parametrize("values", ["three_levels", "constant"])
def test_max_pool_ties_go_to_first_maximum(window, stride, dilation, padding, ceil_mode,
                                           values):
    net = max_pool_net(window, stride, dilation, padding, ceil_mode)
    rng = np.random.default_rng(7)
    pads = [(padding, padding) if isinstance(padding, int) else (p, p) for p in
            ((padding,) * 2 if isinstance(padding, int) else padding)]
    if values == "constant":
        x = np.full((2, 2, 7, 6), 0.5)
    else:
        x = rng.integers(0, 3, (2, 2, 7, 6)).astype(np.float64)
    outs = [pool_out_size(size, w, s, d, lo, hi, ceil_mode) for size, w, s, d, (lo, hi) in
            zip(x.shape[2:], window, stride, dilation, pads)]
    G = rng.standard_normal((2, 2, *outs)) + 3.0  # distinct, so a misrouted share shows
    out, grads = net(x=x, **{"grad:pool0": G})
    ref_out, ref_dx = maxpool_first_max_grad(x, G, window, stride, dilation, pads)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(grads["x"], ref_dx, rtol=1e-13, atol=1e-13)
    # the whole gradient is routed, nothing split or lost
    np.testing.assert_allclose(grads["x"].sum(), G.sum(), rtol=1e-12)


@pytest.mark.parametrize("window,stride,tiles", [((2, 2), (2, 2), True), ((1, 3), (1, 3), True),
                                                 ((3, 3), (2, 2), False),
                                                 ((2, 2), (2, 2), False)])
def test_windows_that_tile_the_input_assign_its_gradient(window, stride, tiles):
    """Windows that tile the input (stride = window, sizes divisible) write each element of
    its gradient once: the gradient is assigned, with no zeroing pass before; strided
    windows that overlap, or leave a row out (a 7-row input), add into a zeroed one."""
    g = convc.Graph("tiling")
    x = g.input("x", (None, 2, 6 if tiles else 7, 6))
    g.output(g.max_pool(x, window, stride=stride))
    lowered = convc.lower(g, grad=["x"])
    zeroed = {c.tensor for s in lowered.steps if s.role == "start" for c in s.comps}
    (dinput,) = lowered.derivatives("pool0")
    assert ("grad:x" not in zeroed) == tiles
    assert all(("+=" in c.text()) != tiles for c in dinput.comps)


@pytest.mark.parametrize("kernel,stride,size,assigned", [
    (3, 2, 13, True), (2, 3, 12, True),  # a phase no tap reaches: its sum is empty, 0
    (3, 2, 12, False),  # the last element, read by no output, left out of its phase's loop
])
@pytest.mark.parametrize("algorithm", ["direct", "blocked"])
def test_the_phases_of_a_strided_input_gradient_assign_it(kernel, stride, size, assigned,
                                                          algorithm):
    """A strided layer's input gradient is one phase per offset in the stride, each writing
    every stride-th element: where between them they write every element once, each
    assigns its own, with no zeroing pass before; where an element is left to no phase, the
    gradient is zeroed and they add into it."""
    g = convc.Graph("phases")
    x = g.input("x", (None, 16, size))
    g.output(g.conv(x, channels=3, kernel=kernel, stride=stride, bias=False, name="conv0"))
    net = convc.compile(g, "float64", grad=["x"], algorithm=algorithm)
    zeroed = {c.tensor for s in net.lowered.steps if s.role == "start" for c in s.comps}
    (dinput,) = net.lowered.derivatives("conv0")
    assert len(dinput.comps) == stride and ("grad:x" not in zeroed) == assigned
    assert all(("+=" in c.text()) != assigned for c in dinput.comps)
    rng = np.random.default_rng(kernel)
    xs, w = rng.standard_normal((2, 16, size)), rng.standard_normal((3, 16, kernel))
    G = rng.standard_normal((2, 3, (size - kernel) // stride + 1))
    _, grads = net(x=xs, **{"conv0.weight": w, "grad:conv0": G})
    dx, _, _ = conv_grads_scatter(xs, w, G, (stride,), (1,), [(0, 0)], 1)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-12, atol=1e-12)


def test_a_seed_that_nothing_adds_to_is_read_in_place():
    """The gradient given for the last layer's output is read where it lies; an output that
    another node also reads gets its own gradient, starting as a copy of the seed."""
    g = convc.Graph("seeds")
    x = g.input("x", (None, 2, 6))
    h = g.conv(x, channels=3, kernel=3, name="last")
    g.output(h, g.relu(h, name="also"))
    lowered = convc.lower(g, grad=["x"])
    start = [c for s in lowered.steps if s.role == "start" for c in s.comps]
    assert [c.tensor for c in start] == ["grad:last"]  # "also" is read in place
    (relu,) = lowered.derivatives("also")
    assert "seed:also" in relu.comps[0].inputs() and "grad:also" not in lowered.buffers
    alone = convc.lower(conv_graph_1d(), grad=["x"])
    assert all(s.role != "start" for s in alone.steps) and "grad:conv0" not in alone.buffers


def conv_graph_1d():
    g = convc.Graph("alone")
    g.output(g.conv(g.input("x", (None, 2, 6)), channels=3, kernel=3))
    return g


def test_global_max_pool_ties_go_to_first_maximum():
    g = convc.Graph("gties")
    g.output(g.global_max_pool(g.input("x", (None, 2, 3, 4))))
    net = convc.compile(g, "float64", grad=["x"])
    x = np.zeros((1, 2, 3, 4))
    x[0, 1, 1, 2] = x[0, 1, 2, 0] = 1.0  # two maxima in channel 1; channel 0 all equal
    _, grads = net(x=x, **{"grad:global_pool0": np.array([[2.0, 3.0]])})
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = 2.0
    expected[0, 1, 1, 2] = 3.0
    np.testing.assert_array_equal(grads["x"], expected)


# -- 5. Lp pooling over an all-zero window ----------------------------------------------------

@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("window,stride,padding", [((2, 2), (2, 2), 0), ((3, 3), (2, 2), 1)])
def test_lp_pool_zero_window_has_zero_gradient(p, window, stride, padding):
    g = convc.Graph("lpzero")
    x_in = g.input("x", (None, 2, 6, 6))
    g.output(g.lp_pool(x_in, window, p=p, stride=stride, padding=padding))
    net = convc.compile(g, "float64", grad=["x"])
    rng = np.random.default_rng(p)
    x = rng.standard_normal((1, 2, 6, 6))
    x[0, 0, :3, :3] = 0.0  # the windows at the top-left corner of channel 0 read zeros only
    x[0, 1] = 0.0          # every window of channel 1 is zero
    pads = [(padding, padding)] * 2
    outs = [pool_out_size(6, w, s, 1, padding, padding, False) for w, s in zip(window, stride)]
    G = rng.standard_normal((1, 2, *outs))
    out, grads = net(x=x, **{"grad:pool0": G})
    ref_out, ref_dx = lp_pool_grad(x, G, window, stride, p, pads)
    assert np.isfinite(out).all() and np.isfinite(grads["x"]).all()
    assert out[0, 0, 0, 0] == 0.0
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(grads["x"][0, 1], 0.0)
    np.testing.assert_allclose(grads["x"], ref_dx, rtol=1e-10, atol=1e-14)


# -- 6. shared tensors: gradients add up -------------------------------------------------------

def shared_graph(which):
    """``both``: a = conv(x), b = conv(sigmoid(x)) with a's weight, output a + b;
    ``a`` and ``b``: one branch alone, b with its own weight."""
    g = convc.Graph(f"shared_{which}")
    x = g.input("x", (None, 2, 6, 7))
    a = b = None
    if which in ("both", "a"):
        a = g.conv(x, channels=3, kernel=3, padding="same", name="a")
    if which in ("both", "b"):
        weight = g.tensor("a.weight") if which == "both" else None
        b = g.conv(g.sigmoid(x), channels=3, kernel=3, padding="same", dilation=2, bias=False,
                   weight=weight, name="b")
    g.output(g.add(a, b) if which == "both" else (a if which == "a" else b))
    return g


def test_shared_weight_and_input_gradients_add_up():
    nets = {w: convc.compile(shared_graph(w), "float64", grad=True if w != "both" else
                             ["x", "a.weight", "a.bias"]) for w in ("both", "a", "b")}
    assert set(nets["both"].parameters) == {"a.weight", "a.bias"}
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 2, 6, 7))
    w = rng.standard_normal((3, 2, 3, 3))
    bias = rng.standard_normal(3)
    G = rng.standard_normal((2, 3, 6, 7))
    _, both = check_finite_differences(
        nets["both"], {"x": x, "a.weight": w, "a.bias": bias}, ["x", "a.weight", "a.bias"],
        {"add0": G}, rng)
    net_a = convc.compile(shared_graph("a"), "float64", grad=["x", "a.weight", "a.bias"])
    net_b = convc.compile(shared_graph("b"), "float64", grad=["x", "b.weight"])
    _, ga = net_a(x=x, **{"a.weight": w, "a.bias": bias, "grad:a": G})
    _, gb = net_b(x=x, **{"b.weight": w, "grad:b": G})
    np.testing.assert_allclose(both["a.weight"], ga["a.weight"] + gb["b.weight"], rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(both["x"], ga["x"] + gb["x"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(both["a.bias"], ga["a.bias"], rtol=1e-12, atol=1e-12)
    # and the parameters-only module computes the same parameter gradients
    _, only = nets["both"](x=x, **{"a.weight": w, "a.bias": bias, "grad:add0": G})
    np.testing.assert_allclose(only["a.weight"], both["a.weight"], rtol=1e-12, atol=1e-12)


def test_fan_out_of_one_tensor_adds_up():
    """relu(x) read twice by one add, x read twice by one add, and a conv output read by
    two branches."""
    g = convc.Graph("fanout")
    x = g.input("x", (None, 2, 5, 5))
    r = g.relu(x)
    twice_r = g.add(r, r)
    twice_x = g.add(x, x)
    c = g.conv(x, channels=2, kernel=3, padding=1)
    branches = g.add(g.tanh(c), g.relu(c))
    g.output(twice_r, twice_x, branches)
    net = convc.compile(g, "float64", grad=["x", "conv0.weight", "conv0.bias"])
    rng = np.random.default_rng(5)
    x = away_from_zero(rng.standard_normal((2, 2, 5, 5)))
    params = {n: rng.standard_normal(s) for n, s in net.parameters.items()}
    Gr, Gx, Gb = (rng.standard_normal((2, 2, 5, 5)) for _ in range(3))
    zero = np.zeros((2, 2, 5, 5))
    # the first two outputs alone, with the third output's gradient 0
    outs, grads = net(x=x, **params, **{"grad:add0": Gr, "grad:add1": Gx, "grad:add2": zero})
    np.testing.assert_allclose(outs["add0"], 2 * np.maximum(x, 0), rtol=1e-15)
    np.testing.assert_allclose(grads["x"], 2 * Gr * (x > 0) + 2 * Gx, rtol=1e-13)
    np.testing.assert_array_equal(grads["conv0.weight"], 0.0)
    # all three outputs: finite differences
    check_finite_differences(net, dict(x=x, **params), ["x", "conv0.weight", "conv0.bias"],
                             {"add0": Gr, "add1": Gx, "add2": Gb}, rng)


# -- 7. structure of the derived input gradient ---------------------------------------------

STRUCTURE_CASES = [  # sizes, kernel, stride, dilation, padding
    ((11, 10), 3, 2, 2, 3),
    ((10, 11), 5, 3, 1, 2),
    ((10, 9), 3, 3, 2, 1),
    ((9, 8), (3, 4), (2, 3), (3, 1), ((2, 0), (1, 3))),
]


def structure_lowered(sizes, kernel, stride, dilation, padding, grad=("x",)):
    """The derived loops themselves (``algorithm="direct"``): packed into matrix products,
    h multiplies the zeros of its packing too, and its loops are the runtime's."""
    g = convc.Graph("structure")
    x = g.input("x", (None, 2, *sizes))
    g.output(g.conv(x, channels=4, kernel=kernel, stride=stride, dilation=dilation,
                    padding=padding, groups=2))
    return convc.lower(g, "float64", grad=list(grad), algorithm="direct")


def step_of(lowered, node, role):
    found = [s for s in lowered.derivatives(node) if s.role == role]
    assert len(found) == 1, [s.role for s in lowered.derivatives(node)]
    return found[0]


def innermost_statements(stmts):
    """The statements in the body of every loop that holds no loop."""
    found = []
    for s in stmts:
        if isinstance(s, Loop):
            if any(isinstance(b, Loop | Block) for b in s.body):
                found += innermost_statements(s.body)
            else:
                found += list(s.body)
        elif isinstance(s, Block):
            found += innermost_statements(s.body)
    return found


def has_division(expr) -> bool:
    for atom in sympy.preorder_traversal(expr):
        if isinstance(atom, sympy.Pow) and atom.exp.is_negative:
            return True
        if isinstance(atom, sympy.Rational) and not atom.is_integer:
            return True
    return False


def c_function_lines(source: str, name: str) -> list[str]:
    """The lines of C function ``name`` and of those its parallel loops call
    (``name_<loop variables>``)."""
    lines = source.splitlines()
    found = []
    for start, line in enumerate(lines):
        if re.match(rf"static \w+ {name}(_\w+)?\(", line):
            end = next(i for i in range(start, len(lines)) if lines[i] == "}")
            found += lines[start:end + 1]
    return found


def innermost_c_lines(lines: list[str]) -> list[str]:
    """Lines inside every ``for`` body that holds no other ``for``."""
    stack, found = [], []  # frames: [is_for, has_inner_for, lines]
    for line in lines:
        code = line.strip()
        if code.startswith("}"):
            frame = stack.pop()
            if frame[0] and not frame[1]:
                found += frame[2]
            continue
        if stack:
            stack[-1][2].append(code)
        if code.endswith("{"):
            is_for = code.startswith("for")
            if is_for:
                for f in stack:
                    f[1] = True
            stack.append([is_for, False, []])
    assert not stack
    return found


def count_updates(stmts, env) -> int:
    """How many Update statements the nest executes, its bounds evaluated exactly."""
    total = 0
    for s in stmts:
        if isinstance(s, Update):
            total += 1
        elif isinstance(s, Block):
            total += count_updates(s.body, env)
        elif isinstance(s, Loop):
            start, stop = (int(sympy.sympify(e).xreplace(env)) for e in (s.start, s.stop))
            if not any(isinstance(b, Loop | Block) for b in s.body):
                total += max(stop - start, 0) * sum(isinstance(b, Update) for b in s.body)
                continue
            for v in range(start, stop):
                total += count_updates(s.body, {**env, s.var: sympy.Integer(v)})
    return total


def forward_taps(sizes, kernel, stride, dilation, pads, batch, channels, cin_per_group):
    """Multiply-adds of the forward convolution: the (output, tap) pairs reading the input."""
    per_axis = []
    for size, k, s, d, (lo, hi) in zip(sizes, kernel, stride, dilation, pads):
        out = (size + lo + hi - extent(k, d)) // s + 1
        per_axis.append(sum(1 for i in range(out) for m in range(k)
                            if 0 <= s * i + d * m - lo < size))
    return batch * channels * cin_per_group * math.prod(per_axis)


@pytest.mark.parametrize("sizes,kernel,stride,dilation,padding", STRUCTURE_CASES)
def test_input_gradient_inner_loop_is_dense(sizes, kernel, stride, dilation, padding):
    lowered = structure_lowered(sizes, kernel, stride, dilation, padding)
    step = step_of(lowered, "conv0", "dinput")
    # one comprehension per phase combination that some tap reaches: phase φ of an axis is
    # reached when gcd(stride, dilation) divides it (else that part of the gradient is 0)
    rank = len(sizes)
    strides = stride if isinstance(stride, tuple) else (stride,) * rank
    dilations = dilation if isinstance(dilation, tuple) else (dilation,) * rank
    phases = [sum(1 for phi in range(s) if phi % math.gcd(s, d) == 0)
              for s, d in zip(strides, dilations)]
    assert len(step.comps) == math.prod(phases)
    inner = innermost_statements(lowered.kernels[step].nests)
    updates = [s for s in inner if isinstance(s, Update)]
    assert updates and all(isinstance(s, Update) for s in inner), inner
    for u in updates:
        assert not u.value.has(sympy.Mod, sympy.floor, sympy.ceiling, sympy.Piecewise), u
        assert not has_division(u.value), u
        accesses = u.value.atoms(sympy.Indexed)
        assert len(accesses) == 2, u
        for a in accesses:
            for idx in a.indices:
                assert not sympy.sympify(idx).has(sympy.Mod, sympy.floor, sympy.ceiling,
                                                  sympy.Piecewise, sympy.Max, sympy.Min), a
                assert not has_division(idx), a
    lines = c_function_lines(lowered.source, lowered.functions[step])
    body = innermost_c_lines(lines)
    assert any("+=" in line for line in body), body
    for line in body:
        for bad in ("%", "/", "?", "floordiv", "ceildiv"):
            assert bad not in line, line


@pytest.mark.parametrize("sizes,kernel,stride,dilation,padding", STRUCTURE_CASES)
def test_gradients_do_the_forward_multiply_adds(sizes, kernel, stride, dilation, padding):
    lowered = structure_lowered(sizes, kernel, stride, dilation, padding,
                                grad=("x", "conv0.weight"))
    rank = len(sizes)
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,) * rank  # noqa: E731
    kernel, stride, dilation = as_tuple(kernel), as_tuple(stride), as_tuple(dilation)
    pads = resolve_pads(padding, sizes, kernel, stride, dilation)
    batch = 3
    expected = forward_taps(sizes, kernel, stride, dilation, pads, batch, channels=4,
                            cin_per_group=1)
    env = {s: sympy.Integer(batch) for s in lowered.sizes}
    fwd = next(s for s in lowered.steps if s.node == "conv0" and s.role == "fwd")
    for step in (fwd, step_of(lowered, "conv0", "dinput"), step_of(lowered, "conv0",
                                                                     "dweight")):
        assert count_updates(lowered.kernels[step].nests, env) == expected, step.role


# -- 8. the printed derivations ---------------------------------------------------------------

def test_printed_derivations_of_a_strided_convolution():
    lowered = structure_lowered((9, 8), 3, 2, 1, 1, grad=("x", "conv0.weight", "conv0.bias"))
    roles = {s.role for s in lowered.derivatives("conv0")}
    assert roles == {"dinput", "dweight", "dbias"}
    forward = lowered.comprehensions["conv0"][0]
    weight = next(a for a in forward.accesses() if str(a.base.label) == "conv0.weight")
    taps = {v for v in weight.indices if v in {d.var for d in forward.reduced}}
    assert taps and {str(v) for v in taps} >= {"m0", "m1"}

    dinput = step_of(lowered, "conv0", "dinput")
    printed = [str(c) for c in dinput.comps]
    assert len(printed) == 4  # one per phase of each strided axis
    for text in printed:
        # between them the phases write each element once: each assigns its own
        assert text.startswith("grad:x[") and "] = Σ" in text and "+=" not in text
        # the solved relation: the eliminated output position j = u - t kept in range
        assert re.search(r"where 0 <= u2 - t2 < 5, 0 <= u3 - t3 < 4", text), text
        assert "%" not in text and "mod" not in text.lower()
    # the loop bounds those constraints become, with max/min (no test in the loop)
    nest = "\n".join(convc.loops.format_nest(lowered.kernels[dinput].nests).splitlines())
    assert "Max(" in nest and "Min(" in nest

    dweight = step_of(lowered, "conv0", "dweight")
    for comp in dweight.comps:
        free = {d.var for d in comp.free}
        reduced = {str(d.var) for d in comp.reduced}
        # the kernel's own indices are free (a group split g·K' + k included; the one input
        # channel per group is the constant 0)
        index_vars = set().union(*(sympy.sympify(i).free_symbols for i in comp.output.indices))
        assert index_vars == free
        assert {str(v) for v in free} >= {"g", "k", "m0", "m1"}
        assert not reduced & {str(v) for v in taps}, str(comp)
        assert not any(re.fullmatch(r"m\d+", r) for r in reduced), str(comp)
        assert str(comp).startswith("grad:conv0.weight[")


def test_explain_of_a_grad_module_shows_derived_equations():
    net = op_net("conv2d_bias")
    text = net.explain()
    for role in ("dinput", "dweight", "dbias"):
        assert re.search(rf"^DERIVED\s+{role}: grad:", text, re.M), role
    assert "eq. 9.13" in text and "eq. 9.11" in text


def test_explain_of_a_strided_dilated_padded_convolution_shows_g_and_h_with_bounds():
    """explain() of a module, as a user would run it, with h as columns and shifted sums
    (whose sum has its bounds solved; the default runs it blocked, on a padded copy)."""
    g = convc.Graph("strided")
    x = g.input("x", (None, 2, 9, 9))
    g.output(g.conv(x, channels=3, kernel=3, stride=2, dilation=2, padding=2))
    text = convc.compile(g, grad=["x", "conv0.weight"], algorithm="col2im").explain()
    derived = dict(re.findall(r"^DERIVED\s+(\w+): (.*)$", text, re.M))
    assert "(eq. 9.11)" in derived["dweight"] and "(eq. 9.13)" in derived["dinput"]
    assert "1 <= u2 < 6" in derived["dinput"] and "where 0 <= u2 - t2 < 5" in derived["dinput"]
    loops = text.split("LOOPS     dinput:")[1].split("\nC ")[0]
    # h runs as columns and their shifted sums (convc.col2im), counted from u2 = 0
    assert re.search(r"for t2 in \[Max\(0, u2 - 3\), Min\(3, u2 \+ 2\)\)", loops), loops


# -- 9. training --------------------------------------------------------------------------------

def bars(rng, n):
    """Images of one horizontal (label 0) or vertical (label 1) bar, with noise."""
    x = 0.1 * rng.standard_normal((n, 1, 8, 8))
    y = rng.integers(0, 2, n)
    for i in range(n):
        at = rng.integers(1, 7)
        if y[i] == 0:
            x[i, 0, at, 1:7] += 1.0
        else:
            x[i, 0, 1:7, at] += 1.0
    return x.astype(np.float32), y.astype(np.int64)


def test_sgd_training_lowers_the_loss():
    g = convc.Graph("bars")
    x = g.input("x", (None, 1, 8, 8))
    y = g.input("y", (None,), dtype="int64")
    h = g.max_pool(g.relu(g.conv(x, channels=4, kernel=3, padding=1)), 2)
    g.output(g.softmax_cross_entropy(g.dense(g.flatten(h), 2), y))
    net = convc.compile(g, "float32", grad=True)
    params = net.init_params(seed=0)
    data, labels = bars(np.random.default_rng(0), 32)
    losses = []
    for _ in range(30):
        loss, grads = net(x=data, y=labels, **params)
        assert set(grads) == set(params)
        losses.append(float(loss))
        for name in params:
            params[name] -= np.float32(0.2) * grads[name]
    final, _ = net(x=data, y=labels, **params)
    assert np.isfinite(losses).all()
    assert float(final) < 0.5 * losses[0], (losses[0], float(final))
