"""Locally connected layers (9.9), tiled convolution (9.10) and the bias choices (9.5).

* each layer against a numpy reference written here that loops over output positions and
  picks the kernel ``weight[i mod t]`` and the bias of each position directly;
* tiled convolution with one tile is convolution, with as many tiles as outputs a locally
  connected layer;
* the adjoint identity <c(W, V), G> = <V, h(W, G)> = <W, g(G, V)> and central finite
  differences in float64, for 1-D, 2-D and 3-D layers with stride, padding, partial tiles;
* products (``algorithm="gemm"``) and direct loops agree;
* bad arguments raise a `GraphError` naming the node.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import sympy
from reference import conv as conv_reference
from reference import padding_pairs
from test_autodiff import check_finite_differences

import convc
from convc.ir.affine import index_range, is_proven
from convc.ir.comprehension import Comprehension
from convc.loops import Block, Loop


# -- the independent reference ---------------------------------------------------------------

def tiled_reference(x, w, b=None, bias="shared", tiles=None, bias_tiles=None, stride=1,
                    pads=None, dilation=1):
    """out[n, k, i] = b(k, i) + sum_{c, m} x_pad[n, c, s*i + d*m] * w[i mod t, k, c, m],
    one output position at a time; ``tiles=None`` is one kernel per position."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    rank = x.ndim - 2
    stride = (stride,) * rank if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * rank if isinstance(dilation, int) else tuple(dilation)
    xp = np.pad(x, [(0, 0), (0, 0), *(pads or [(0, 0)] * rank)])
    kernel = w.shape[rank + 2:]
    outs = [(p - d * (k - 1) - 1) // s + 1
            for p, k, s, d in zip(xp.shape[2:], kernel, stride, dilation)]
    tiles = tuple(outs) if tiles is None else tiles
    tiles = (tiles,) * rank if isinstance(tiles, int) else tuple(tiles)
    out = np.zeros((x.shape[0], w.shape[rank], *outs))
    axes = list(range(1, rank + 2))
    for pos in itertools.product(*(range(o) for o in outs)):
        patch = xp[(slice(None), slice(None), *(
            slice(s * i, s * i + d * (k - 1) + 1, d)
            for i, k, s, d in zip(pos, kernel, stride, dilation)))]
        kernel_here = w[tuple(i % t for i, t in zip(pos, tiles))]
        out[(slice(None), slice(None), *pos)] = np.tensordot(patch, kernel_here,
                                                              (axes, axes))
    return add_bias(out, b, bias, bias_tiles)


def add_bias(out, b, bias, bias_tiles=None):
    """The bias of each output position, looked up position by position."""
    if b is None or bias is False:
        return out
    rank = out.ndim - 2
    for pos in itertools.product(*(range(o) for o in out.shape[2:])):
        where = (slice(None), slice(None), *pos)
        if bias == "shared":
            out[where] += b
        elif bias == "untied":
            out[where] += b[(slice(None), *pos)]
        else:
            bt = (bias_tiles,) * rank if isinstance(bias_tiles, int) else bias_tiles
            out[where] += b[(slice(None), *(i % t for i, t in zip(pos, bt)))]
    return out


# -- cases -----------------------------------------------------------------------------------
# (kind, input shape without batch, layer arguments); a tiled case has ``tiles``

CASES = {
    "lc1d": ("locally_connected", (2, 9), dict(channels=3, kernel=3)),
    "lc1d_stride_pad_untied": ("locally_connected", (2, 10),
                               dict(channels=2, kernel=4, stride=3, padding=(2,),
                                    bias="untied")),
    "lc2d_same_untied": ("locally_connected", (3, 5, 6),
                         dict(channels=4, kernel=(3, 2), padding="same", bias="untied")),
    "lc2d_stride_tiled_bias": ("locally_connected", (2, 7, 6),
                               dict(channels=3, kernel=2, stride=(2, 1), padding=1,
                                    bias="tiled", bias_tiles=(2, 3))),
    "lc3d_dilated": ("locally_connected", (2, 5, 4, 5),
                     dict(channels=2, kernel=2, stride=(1, 2, 1), dilation=(2, 1, 1),
                          padding=((1, 0), (0, 1), 1), bias=False)),
    "tiled1d_partial": ("tiled_conv", (2, 9), dict(channels=3, kernel=3, tiles=3,
                                                   padding=1, bias="tiled")),
    "tiled1d_stride": ("tiled_conv", (3, 13), dict(channels=2, kernel=3, tiles=2, stride=2,
                                                   padding="same", bias="untied")),
    "tiled2d_partial_both": ("tiled_conv", (2, 8, 9),
                             dict(channels=3, kernel=(3, 2), tiles=(4, 3), stride=(1, 2),
                                  padding=1, bias="tiled")),
    "tiled2d_shared": ("tiled_conv", (3, 6, 7), dict(channels=4, kernel=3, tiles=(2, 5),
                                                     padding="same", bias=True)),
    "tiled3d": ("tiled_conv", (2, 5, 6, 4), dict(channels=2, kernel=(2, 3, 2),
                                                  tiles=(2, 3, 1), stride=(2, 1, 1),
                                                  padding=(1, 1, 0), bias="tiled")),
    "conv1d_untied": ("conv", (2, 9), dict(channels=3, kernel=3, stride=2, padding=2,
                                            bias="untied")),
    "conv2d_tiled_bias": ("conv", (3, 7, 8), dict(channels=4, kernel=3, padding="same",
                                                  bias="tiled", bias_tiles=(3, 2))),
    "conv3d_tiled_bias": ("conv", (2, 4, 5, 3), dict(channels=2, kernel=2, padding=1,
                                                     bias="tiled", bias_tiles=(2, 4, 1))),
    "conv2d_shared_groups": ("conv", (4, 6, 5), dict(channels=2, kernel=2, groups=2,
                                                     bias="shared")),
}


def build(kind, shape, kwargs, algorithm="auto"):
    g = convc.Graph(kind)
    x = g.input("x", (None, *shape))
    g.output(getattr(g, kind)(x, **kwargs, name="layer", algorithm=algorithm))
    return g


@functools.cache
def net_of(case, algorithm="auto", grad=True):
    kind, shape, kwargs = CASES[case]
    g = build(kind, shape, kwargs, algorithm)
    return convc.compile(g, "float64", grad=["x", *g.parameters()] if grad else False)


def reference(case, x, params):
    kind, shape, kwargs = CASES[case]
    rank = len(shape) - 1
    kernel = kwargs["kernel"]
    kernel = (kernel,) * rank if isinstance(kernel, int) else kernel
    stride = kwargs.get("stride", 1)
    dilation = kwargs.get("dilation", 1)
    strides = (stride,) * rank if isinstance(stride, int) else stride
    dilations = (dilation,) * rank if isinstance(dilation, int) else dilation
    default = "valid" if kind == "conv" else 0
    pads = padding_pairs(kwargs.get("padding", default), shape[1:], kernel, strides,
                         dilations)
    bias = kwargs.get("bias", True)
    bias = "shared" if bias is True else bias
    b = params.get("layer.bias")
    w = params["layer.weight"]
    if kind == "conv":
        out = conv_reference(x, w, None, strides, pads, dilations, kwargs.get("groups", 1))
        return add_bias(out, b, bias, kwargs.get("bias_tiles"))
    tiles = kwargs.get("tiles")
    bias_tiles = kwargs.get("bias_tiles", tiles)
    return tiled_reference(x, w, b, bias, tiles, bias_tiles, strides, pads, dilations)


def arrays(net, case, seed):
    rng = np.random.default_rng(seed)
    _, shape, _ = CASES[case]
    x = rng.standard_normal((2, *shape))
    params = {n: rng.standard_normal(s) for n, s in net.parameters.items()}
    return rng, x, params


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_reference(case):
    net = net_of(case, grad=False)
    _, x, params = arrays(net, case, 1)
    out = net(x=x, **params)
    np.testing.assert_allclose(out, reference(case, x, params), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["lc2d_same_untied", "tiled2d_partial_both", "tiled1d_stride",
                                  "lc3d_dilated", "conv2d_tiled_bias"])
def test_products_and_direct_loops_agree(case):
    """The same layer run as packed matrix products and as direct loops: both match the
    reference, forward and gradients."""
    nets = [net_of(case, algorithm) for algorithm in ("gemm", "direct")]
    rng, x, params = arrays(nets[0], case, 2)
    seed = rng.standard_normal(np.shape(reference(case, x, params)))
    (out_a, grads_a), (out_b, grads_b) = (n(x=x, **params, **{"grad:layer": seed})
                                          for n in nets)
    np.testing.assert_allclose(out_a, reference(case, x, params), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out_b, out_a, rtol=1e-12, atol=1e-12)
    for name in grads_a:
        np.testing.assert_allclose(grads_b[name], grads_a[name], rtol=1e-11, atol=1e-11)


def test_a_locally_connected_layer_runs_as_a_batch_of_products_over_positions():
    """The weight layout (out..., K, C, kernel...) lets the forward pass and both gradients
    run as products batched over output positions."""
    g = build("locally_connected", (8, 10, 10), dict(channels=16, kernel=3))
    net = convc.compile(g, "float32", grad=["x", *g.parameters()])
    text = net.explain()
    lines = [line for line in text.splitlines() if line.startswith("ALGORITHM")]
    fwd = next(line for line in lines if "fwd" in line)
    assert "gemm" in fwd and "batch" in fwd, fwd
    assert sum("gemm" in line for line in lines) >= 3, lines


# -- identities ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 11), 3, 2, 1), ((3, 7, 6), (2, 3), (1, 2), "same"), ((2, 4, 5, 4), 2, 1, 0)])
def test_one_tile_is_a_convolution(shape, kernel, stride, padding):
    def run(kind, **extra):
        g = build(kind, shape, dict(channels=3, kernel=kernel, stride=stride, padding=padding,
                                    **extra))
        return convc.compile(g, "float64")

    tiled, conv = run("tiled_conv", tiles=1), run("conv")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, *shape))
    w = rng.standard_normal(conv.parameters["layer.weight"])
    b = rng.standard_normal(3)
    assert tiled.parameters["layer.weight"] == (*(1,) * (len(shape) - 1), *w.shape)
    out = tiled(x=x, **{"layer.weight": w.reshape(tiled.parameters["layer.weight"]),
                        "layer.bias": b})
    np.testing.assert_allclose(out, conv(x=x, **{"layer.weight": w, "layer.bias": b}),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 10), 3, 2, 1), ((2, 6, 5), (3, 2), 1, "same"), ((2, 4, 3, 4), 2, (1, 2, 1), 1)])
def test_tiles_equal_to_the_output_is_locally_connected(shape, kernel, stride, padding):
    args = dict(channels=2, kernel=kernel, stride=stride, padding=padding, bias="untied")
    lc = convc.compile(build("locally_connected", shape, args), "float64")
    outs = lc.outputs["layer"][2:]
    tiled = convc.compile(build("tiled_conv", shape, dict(args, tiles=tuple(outs))),
                          "float64")
    assert tiled.parameters == lc.parameters
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, *shape))
    params = {n: rng.standard_normal(s) for n, s in lc.parameters.items()}
    np.testing.assert_allclose(tiled(x=x, **params), lc(x=x, **params), rtol=1e-12,
                               atol=1e-12)


# -- gradients -------------------------------------------------------------------------------

ADJOINT_CASES = ["lc1d_stride_pad_untied", "lc2d_same_untied", "lc3d_dilated",
                 "tiled1d_partial", "tiled2d_partial_both", "tiled3d", "tiled1d_stride"]


@pytest.mark.parametrize("case", ADJOINT_CASES)
def test_adjoint_identity(case):
    """<c(W, V), G> = <V, h(W, G)> = <W, g(G, V)>, c computed by the numpy reference (the
    layer without its bias, which the identity does not involve)."""
    net = net_of(case)
    rng, x, params = arrays(net, case, 6)
    params.pop("layer.bias", None)
    w = params["layer.weight"]
    zero_bias = {n: np.zeros(s) for n, s in net.parameters.items() if n.endswith(".bias")}
    c = reference(case, x, {"layer.weight": w})
    G = rng.standard_normal(c.shape)
    out, grads = net(x=x, **params, **zero_bias, **{"grad:layer": G})
    np.testing.assert_allclose(out, c, rtol=1e-12, atol=1e-12)
    h, gw = grads["x"], grads["layer.weight"]
    lhs, via_input, via_kernel = np.vdot(c, G), np.vdot(x, h), np.vdot(w, gw)
    scale = max(np.linalg.norm(c) * np.linalg.norm(G), np.linalg.norm(x) * np.linalg.norm(h),
                np.linalg.norm(w) * np.linalg.norm(gw))
    assert abs(lhs) > 1e-6 * scale, "a degenerate case proves nothing"
    assert abs(lhs - via_input) / scale < 1e-10, (lhs, via_input)
    assert abs(lhs - via_kernel) / scale < 1e-10, (lhs, via_kernel)


@pytest.mark.parametrize("case", list(CASES))
def test_finite_differences(case):
    net = net_of(case)
    rng, x, params = arrays(net, case, 7)
    seeds = {"layer": rng.standard_normal(np.shape(reference(case, x, params)))}
    check_finite_differences(net, dict(x=x, **params), ["x", *params], seeds, rng)


def test_bias_gradients_sum_over_what_shares_them():
    """With a seed of ones, each bias's gradient counts the outputs (times the batch) that
    read it: all positions (shared), one (untied) or those of its phase (tiled)."""
    net = net_of("tiled2d_partial_both")  # output 8x5 (stride 2 on axis 1), tiles (4, 3)
    _, x, params = arrays(net, "tiled2d_partial_both", 8)
    out_shape = reference("tiled2d_partial_both", x, params).shape
    _, grads = net(x=x, **params, **{"grad:layer": np.ones(out_shape)})
    rows = np.bincount(np.arange(out_shape[2]) % 4)
    cols = np.bincount(np.arange(out_shape[3]) % 3)
    expected = 2 * np.outer(rows, cols)  # a batch of 2
    np.testing.assert_allclose(grads["layer.bias"], np.broadcast_to(expected,
                                                                    grads["layer.bias"].shape))


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,kwargs,pattern", [
    ("tiled_conv", dict(tiles=9), r"tiles must fit the output: at most 5 along spatial "
                                  r"axis 0 .* found 9"),
    ("tiled_conv", dict(tiles=(2, 7)), r"at most 6 along spatial axis 1"),
    ("tiled_conv", dict(tiles=(2, 2, 2)), r"tiles must be an int or a tuple of 2 ints"),
    ("tiled_conv", dict(tiles=0), r"tiles must be integers >= 1"),
    ("tiled_conv", dict(tiles=2, bias="untie"), r"bias must be True, False or one of "
                                                r"'shared', 'untied', 'tiled', found 'untie'"),
    ("tiled_conv", dict(tiles=2, bias=2), r"bias must be True, False or one of"),
    ("locally_connected", dict(bias="tiled"), r"bias='tiled' needs bias_tiles"),
    ("locally_connected", dict(bias="tiled", bias_tiles=(7, 1)),
     r"bias_tiles must fit the output: at most 5 along spatial axis 0"),
    ("locally_connected", dict(bias="untied", bias_tiles=2),
     r"bias_tiles is only for bias='tiled'"),
    ("conv", dict(bias="tiled"), r"bias='tiled' needs bias_tiles"),
    ("conv", dict(bias=True, bias_tiles=2), r"bias_tiles is only for bias='tiled'"),
    ("conv", dict(bias="per-channel"), r"bias must be True, False or one of"),
    ("conv_transpose", dict(bias="untied"), r"bias must be True, False or one of 'shared', "
                                            r"found 'untied'"),
    ("locally_connected", dict(kernel=8), r"kernel larger than the padded input"),
])
def test_bad_arguments_are_refused(kind, kwargs, pattern):
    g = convc.Graph("bad")
    x = g.input("x", (None, 2, 7, 8))
    kwargs = dict(dict(channels=3, kernel=3), **kwargs)
    with pytest.raises(convc.GraphError, match=pattern) as info:
        getattr(g, kind)(x, name="layer", **kwargs)
    assert "node 'layer'" in str(info.value) and "test_ops_tiled.py" in str(info.value)
    assert "layer" not in g.parameters() and not g.parameters()


def test_bias_shapes():
    g = convc.Graph("shapes")
    x = g.input("x", (None, 2, 7, 8))
    g.locally_connected(x, 3, 3, bias="untied", name="a")
    g.locally_connected(x, 3, 3, bias=True, name="b")
    g.tiled_conv(x, 3, 3, tiles=(2, 4), bias="tiled", name="c")
    g.conv(x, 3, 3, bias="tiled", bias_tiles=(1, 3), name="d")
    g.conv(x, 3, 3, bias="untied", name="e")
    g.tiled_conv(x, 3, 3, tiles=2, bias=False, name="f")
    p = g.parameters()
    assert p["a.weight"] == (5, 6, 3, 2, 3, 3) and p["a.bias"] == (3, 5, 6)
    assert p["b.bias"] == (3,)
    assert p["c.weight"] == (2, 4, 3, 2, 3, 3) and p["c.bias"] == (3, 2, 4)
    assert p["d.weight"] == (3, 2, 3, 3) and p["d.bias"] == (3, 1, 3)
    assert p["e.bias"] == (3, 5, 6)
    assert "f.bias" not in p



@pytest.mark.parametrize("case", ["lc1d", "lc2d_same_untied", "tiled2d_partial_both",
                                  "tiled1d_stride"])
def test_packings_read_only_inside_their_tensors(case):
    """Every read of a packing that is not guarded by a fill value stays inside its tensor
    over the packing's whole box: a constraint that both factors of a product read
    (0 <= j - m < O in a locally connected layer's input gradient bounds the kernel's
    position and the output gradient's alike) must keep both packings inside."""
    lowered = net_of(case, "gemm").lowered
    shapes = {n: b.shape for n, b in lowered.buffers.items()}
    packings = [c for parts in lowered.parts.values() for c in parts
                if isinstance(c, Comprehension) and c.equation.startswith("pack")]
    assert packings
    for comp in packings:
        extents = {d.var: d.stop for d in comp.free}
        for access in comp.body.atoms(sympy.Indexed):
            tensor = str(access.base.label)
            if comp.fill_of(tensor) is not None:
                continue  # lowering guards or clips it
            for idx, size in zip(access.indices, shapes[tensor]):
                lo, hi = index_range(idx, extents)
                assert is_proven(lo >= 0) and is_proven(hi <= size - 1), (comp.text(), access)


def loop_trips(stmts, var: str, env) -> int:
    """How many iterations the loops over ``var`` run in the nest, bounds evaluated exactly."""
    total = 0
    for s in stmts:
        if isinstance(s, Block):
            total += loop_trips(s.body, var, env)
        elif isinstance(s, Loop):
            start, stop = (int(sympy.sympify(e).xreplace(env)) for e in (s.start, s.stop))
            total += max(stop - start, 0) if str(s.var) == var else 0
            for v in range(start, stop):
                total += loop_trips(s.body, var, {**env, s.var: sympy.Integer(v)})
    return total


def test_tiled_input_gradient_visits_only_the_tiles_that_reach_each_input():
    """In the derived input gradient of a tiled convolution, the sum over the tile number q
    (output position 2q + r) runs over the two or three tiles whose window reaches the
    input cell, not over all 30: lowering bounds every reduced variable of a constraint,
    not only its innermost one."""
    g = build("tiled_conv", (1, 62), dict(channels=1, kernel=3, tiles=2, bias=False))
    lowered = convc.lower(g, "float64", grad=["x"], algorithm="direct")
    (step,) = [s for s in lowered.derivatives("layer") if s.role == "dinput"]
    batch = next(s for s in lowered.kernels[step].nests[0].stop.free_symbols)
    trips = loop_trips(lowered.kernels[step].nests, "q0", {batch: sympy.Integer(1)})
    assert 0 < trips <= 3 * 62, trips
    x = np.random.default_rng(10).standard_normal((1, 1, 62))
    net = convc.compile(g, "float64", grad=["x"])
    w = np.random.default_rng(11).standard_normal(net.parameters["layer.weight"])
    G = np.random.default_rng(12).standard_normal((1, 1, 60))
    _, grads = net(x=x, **{"layer.weight": w, "grad:layer": G})
    c = tiled_reference(x, w, tiles=2)
    assert abs(np.vdot(c, G) - np.vdot(x, grads["x"])) < 1e-10 * np.abs(c).sum()
