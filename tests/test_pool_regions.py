"""Pooling beyond the spatial window (section 9.3): across channels, adaptive, global.

* cross-channel pooling (maxout, figure 9.9) and adaptive max/avg pooling against plain
  numpy written here (adaptive: the loop over output cells with the bounds
  ``[floor(i·I/O), ceil((i + 1)·I/O))``), and against PyTorch's adaptive pools when it is
  installed;
* global max, average and Lp pooling over 1-D, 2-D and 3-D inputs, to ``(N, C)``;
* the gradients: the adjoint identity of the linear ones (the averages), central finite
  differences in float64 for all, and a max's gradient going to the first maximum of each
  region (overlapping adaptive cells add up);
* the derived adaptive loops: bounds solved from the constraints, so that no iteration is
  wasted and no test, floor or ceiling is left in the innermost loop;
* a GraphError naming the problem for each bad argument.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import sympy
from test_autodiff import (
    away_from_zero,
    c_function_lines,
    check_finite_differences,
    count_updates,
    innermost_c_lines,
    innermost_statements,
    step_of,
)

import convc
from convc.loops import Update

DTYPES = {"float32": (np.float32, 1e-5), "float64": (np.float64, 1e-12)}


# -- independent numpy references --------------------------------------------------------------

def channel_pool_ref(x, pieces, kind):
    """Max or mean of each run of ``pieces`` consecutive channels."""
    n, c = x.shape[:2]
    groups = np.asarray(x, np.float64).reshape(n, c // pieces, pieces, *x.shape[2:])
    return groups.max(axis=2) if kind == "max" else groups.mean(axis=2)


def channel_max_grad_ref(x, G, pieces):
    """Each output's gradient to the first channel of its run holding the maximum."""
    n, c = x.shape[:2]
    groups = x.reshape(n, c // pieces, pieces, *x.shape[2:])
    first = groups.argmax(axis=2)  # numpy's argmax returns the first maximum
    dx = np.zeros_like(groups)
    np.put_along_axis(dx, first[:, :, None], G[:, :, None], axis=2)
    return dx.reshape(x.shape)


def cell(i, size, out):
    """The input cells adaptive output ``i`` covers along one axis."""
    return range(math.floor(i * size / out), math.ceil((i + 1) * size / out))


def adaptive_cells(sizes, outs):
    """``(output position, slices of its region)`` for every output cell."""
    for j in itertools.product(*(range(o) for o in outs)):
        yield j, tuple(slice(cell(i, s, o)[0], cell(i, s, o)[-1] + 1)
                       for i, s, o in zip(j, sizes, outs))


def adaptive_pool_ref(x, outs, kind):
    x = np.asarray(x, np.float64)
    out = np.empty(x.shape[:2] + tuple(outs))
    for j, region in adaptive_cells(x.shape[2:], outs):
        values = x[(slice(None), slice(None), *region)].reshape(*x.shape[:2], -1)
        out[(slice(None), slice(None), *j)] = (values.max(axis=-1) if kind == "max"
                                               else values.mean(axis=-1))
    return out


def adaptive_max_grad_ref(x, G, outs):
    """Each cell's gradient to the first maximum of its region in scan order; cells that
    overlap add."""
    dx = np.zeros_like(x, dtype=np.float64)
    for j, region in adaptive_cells(x.shape[2:], outs):
        for n, c in itertools.product(*map(range, x.shape[:2])):
            block = x[(n, c, *region)]
            pos = np.unravel_index(np.argmax(block), block.shape)
            dx[(n, c, *(r.start + p for r, p in zip(region, pos)))] += G[(n, c, *j)]
    return dx


def net_of(build, shape, dtype="float64", grad=("x",)):
    g = convc.Graph("regions")
    outs = build(g, g.input("x", (None, *shape)))
    g.output(*(outs if isinstance(outs, tuple) else (outs,)))
    return convc.compile(g, dtype, grad=list(grad) if grad else None)


def random_seeds(net, batch, rng):
    return {o: rng.standard_normal(tuple(batch if isinstance(d, sympy.Symbol) else int(d)
                                         for d in shape))
            for o, shape in net.outputs.items()}


# -- cross-channel pooling ---------------------------------------------------------------------

CHANNEL_SHAPES = {0: (6,), 1: (6, 7), 2: (6, 3, 5), 3: (6, 2, 3, 4)}


def channel_graph(g, x):
    return (g.maxout(x, 3, name="maxout"), g.channel_pool(x, group=2, kind="avg", name="cavg"),
            g.channel_pool(x, group=6, name="cmax6"))


@functools.cache
def channel_net(rank, dtype="float64", grad=("x",)):
    return net_of(channel_graph, CHANNEL_SHAPES[rank], dtype, grad)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_channel_pool_matches_reference(rank, dtype):
    np_dtype, rtol = DTYPES[dtype]
    net = channel_net(rank, dtype, None)
    rng = np.random.default_rng(rank)
    for batch in (3, 1):
        x = rng.standard_normal((batch, *CHANNEL_SHAPES[rank])).astype(np_dtype)
        got = net(x=x)
        for name, pieces, kind in (("maxout", 3, "max"), ("cavg", 2, "avg"),
                                   ("cmax6", 6, "max")):
            want = channel_pool_ref(x, pieces, kind)
            assert got[name].shape == (batch, 6 // pieces, *x.shape[2:])
            np.testing.assert_allclose(got[name], want, rtol=rtol, atol=rtol)
    assert net(x=np.zeros((0, *CHANNEL_SHAPES[rank]), np_dtype))["maxout"].shape[0] == 0


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_channel_pool_finite_differences(rank):
    net = channel_net(rank)
    rng = np.random.default_rng(10 + rank)
    x = away_from_zero(rng.standard_normal((2, *CHANNEL_SHAPES[rank])))
    check_finite_differences(net, {"x": x}, ["x"], random_seeds(net, 2, rng), rng)


@pytest.mark.parametrize("values", ["three_levels", "constant"])
def test_maxout_ties_go_to_first_maximum(values):
    net = channel_net(2)
    rng = np.random.default_rng(5)
    shape = (2, *CHANNEL_SHAPES[2])
    x = (np.full(shape, 0.5) if values == "constant"
         else rng.integers(0, 3, shape).astype(np.float64))
    G = rng.standard_normal((2, 2, 3, 5)) + 3.0
    out, grads = net(x=x, **{"grad:maxout": G})
    np.testing.assert_array_equal(out["maxout"], channel_pool_ref(x, 3, "max"))
    np.testing.assert_allclose(grads["x"], channel_max_grad_ref(x, G, 3), rtol=1e-14)
    np.testing.assert_allclose(grads["x"].sum(), G.sum(), rtol=1e-12)


def test_maxout_after_a_dense_layer_trains_its_weights():
    """Maxout units as in Goodfellow et al. 2013: a dense layer of k·pieces units, then the
    maximum over each run of pieces; gradients for the weights by finite differences."""
    g = convc.Graph("maxout_mlp")
    x = g.input("x", (None, 5))
    h = g.maxout(g.dense(x, 12), 4)
    g.output(g.dense(h, 2))
    assert h.shape[1:] == (3,)
    params = ["dense0.weight", "dense0.bias", "dense1.weight"]
    net = convc.compile(g, "float64", grad=["x", *params])
    rng = np.random.default_rng(2)
    args = {"x": rng.standard_normal((4, 5))}
    args |= {n: rng.standard_normal(s) for n, s in net.parameters.items()}
    out, _ = check_finite_differences(net, args, ["x", *params],
                                      {"dense1": rng.standard_normal((4, 2))}, rng)
    hidden = args["x"] @ args["dense0.weight"].T + args["dense0.bias"]
    want = channel_pool_ref(hidden, 4, "max") @ args["dense1.weight"].T + args["dense1.bias"]
    np.testing.assert_allclose(out, want, rtol=1e-12)


# -- adaptive pooling ----------------------------------------------------------------------------

ADAPTIVE_CASES = [  # input spatial shape, output_size: divisible and not, per axis
    ((7,), 3), ((12,), 4), ((5,), 5), ((9,), 1), ((10,), (None,)),
    ((5, 7), (3, 2)), ((8, 6), (4, 4)), ((9, 4), (2, 4)), ((6, 11), (None, 3)),
    ((5, 4, 6), (2, 3, 4)), ((4, 5, 3), (2, 2, 1)),
]


def adaptive_sizes(shape, output_size):
    wanted = (output_size,) * len(shape) if isinstance(output_size, int) else output_size
    return tuple(s if o is None else o for s, o in zip(shape, wanted))


@functools.cache
def adaptive_net(shape, output_size, dtype="float64", grad=("x",)):
    return net_of(lambda g, x: (g.adaptive_max_pool(x, output_size, name="amax"),
                                g.adaptive_avg_pool(x, output_size, name="aavg")),
                  (2, *shape), dtype, grad)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape,output_size", ADAPTIVE_CASES)
def test_adaptive_pool_matches_reference(shape, output_size, dtype):
    np_dtype, rtol = DTYPES[dtype]
    net = adaptive_net(shape, output_size, dtype, None)
    outs = adaptive_sizes(shape, output_size)
    rng = np.random.default_rng(len(shape))
    for batch in (3, 1):
        x = rng.standard_normal((batch, 2, *shape)).astype(np_dtype)
        got = net(x=x)
        for name, kind in (("amax", "max"), ("aavg", "avg")):
            assert got[name].dtype == np_dtype
            assert got[name].shape == (batch, 2, *outs)
            np.testing.assert_allclose(got[name], adaptive_pool_ref(x, outs, kind),
                                       rtol=rtol, atol=rtol, err_msg=name)


def test_adaptive_pool_has_a_fixed_output_whatever_the_input_size():
    """Section 9.7: inputs of different sizes give the classifier the same number of cells."""
    for shape in ((7, 9), (12, 5), (3, 3), (16, 16)):
        g = convc.Graph("any_size")
        h = g.adaptive_avg_pool(g.conv(g.input("x", (None, 1, *shape)), 4, 3,
                                       padding="same"), 3)
        assert g.dense(g.flatten(h), 10).shape[1:] == (10,)
        assert h.shape[1:] == (4, 3, 3)


@pytest.mark.parametrize("shape,output_size", [((7,), 3), ((5, 7), (3, 2)),
                                               ((5, 4, 6), (2, 3, 4))])
def test_adaptive_pool_matches_torch(shape, output_size):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rank = len(shape)
    net = adaptive_net(shape, output_size, "float64", None)
    x = np.random.default_rng(8).standard_normal((3, 2, *shape))
    got = net(x=x)
    t = torch.from_numpy(x)
    max_pool = getattr(F, f"adaptive_max_pool{rank}d")
    avg_pool = getattr(F, f"adaptive_avg_pool{rank}d")
    np.testing.assert_allclose(got["amax"], max_pool(t, output_size).numpy(), rtol=1e-14)
    np.testing.assert_allclose(got["aavg"], avg_pool(t, output_size).numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape,output_size", [((7,), 3), ((12,), 4), ((5, 7), (3, 2)),
                                               ((9, 4), (2, 4)), ((5, 4, 6), (2, 3, 4))])
def test_adaptive_pool_finite_differences(shape, output_size):
    net = adaptive_net(shape, output_size)
    rng = np.random.default_rng(len(shape) + 20)
    x = rng.standard_normal((2, 2, *shape))
    check_finite_differences(net, {"x": x}, ["x"], random_seeds(net, 2, rng), rng)


@pytest.mark.parametrize("values", ["three_levels", "constant"])
@pytest.mark.parametrize("shape,output_size", [((7,), 3), ((5, 7), (3, 2)),
                                               ((5, 4, 6), (2, 3, 4))])
def test_adaptive_max_pool_ties_go_to_first_maximum(shape, output_size, values):
    """Cells overlap where O does not divide I: a shared maximum gets both gradients."""
    net = adaptive_net(shape, output_size)
    rng = np.random.default_rng(9)
    x = (np.full((2, 2, *shape), 0.25) if values == "constant"
         else rng.integers(0, 3, (2, 2, *shape)).astype(np.float64))
    outs = adaptive_sizes(shape, output_size)
    G = rng.standard_normal((2, 2, *outs)) + 3.0
    out, grads = net(x=x, **{"grad:amax": G})
    np.testing.assert_array_equal(out["amax"], adaptive_pool_ref(x, outs, "max"))
    np.testing.assert_allclose(grads["x"], adaptive_max_grad_ref(x, G, outs), rtol=1e-14)
    np.testing.assert_allclose(grads["x"].sum(), G.sum(), rtol=1e-12)


# -- the adjoint identity of the linear ones ------------------------------------------------------

LINEAR_CASES = {
    "channel_avg": ((6, 3, 4), lambda g, x: g.channel_pool(x, group=3, kind="avg")),
    "adaptive_avg_1d": ((7, 10), lambda g, x: g.adaptive_avg_pool(x, 4)),
    "adaptive_avg_2d": ((2, 7, 5), lambda g, x: g.adaptive_avg_pool(x, (3, 2))),
    "adaptive_avg_3d": ((1, 5, 6, 7), lambda g, x: g.adaptive_avg_pool(x, (2, 3, 4))),
    "global_avg_1d": ((3, 7), lambda g, x: g.global_avg_pool(x)),
    "global_avg_3d": ((2, 3, 4, 5), lambda g, x: g.global_avg_pool(x)),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_average_pool_adjoint_identity(case):
    """<G, A·x> = <A^T·G, x> to rounding: the derived gradient is the transpose."""
    shape, build = LINEAR_CASES[case]
    net = net_of(build, shape)
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal((3, *shape))
    (name,) = net.outputs
    G = random_seeds(net, 3, rng)[name]
    y, grads = net(x=x, **{f"grad:{name}": G})
    lhs, rhs = float(np.vdot(G, y)), float(np.vdot(grads["x"], x))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0), (lhs, rhs)
    # linear: the gradient does not depend on x, and scales with G
    _, again = net(x=rng.standard_normal(x.shape), **{f"grad:{name}": 2 * G})
    np.testing.assert_allclose(again["x"], 2 * grads["x"], rtol=1e-13, atol=1e-15)


# -- global pooling over every rank -------------------------------------------------------------

@functools.cache
def global_net(rank):
    shape = {1: (3, 7), 2: (3, 4, 5), 3: (2, 3, 4, 3)}[rank]
    return net_of(lambda g, x: (g.global_max_pool(x, name="gmax"),
                                g.global_avg_pool(x, name="gavg"),
                                g.global_lp_pool(x, name="gl2"),
                                g.global_lp_pool(x, p=3, name="gl3"),
                                g.global_lp_pool(x, p=1.5, name="gl15")), shape), shape


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_global_pools_every_rank(rank):
    """``(N, C, ...)`` to ``(N, C)`` (no spatial axes kept) against numpy, and their
    gradients by finite differences."""
    net, shape = global_net(rank)
    rng = np.random.default_rng(30 + rank)
    x = away_from_zero(rng.standard_normal((2, *shape)))
    out, _ = check_finite_differences(net, {"x": x}, ["x"], random_seeds(net, 2, rng), rng)
    axes = tuple(range(2, 2 + rank))
    want = {"gmax": x.max(axis=axes), "gavg": x.mean(axis=axes)}
    for name, p in (("gl2", 2), ("gl3", 3), ("gl15", 1.5)):
        want[name] = (np.abs(x) ** p).sum(axis=axes) ** (1 / p)
    for name, value in want.items():
        assert out[name].shape == (2, shape[0])
        np.testing.assert_allclose(out[name], value, rtol=1e-12, err_msg=name)


def test_global_lp_pool_of_zeros_has_zero_gradient():
    net, shape = global_net(2)
    x = np.zeros((1, *shape))
    x[0, 1] = np.random.default_rng(1).standard_normal(shape[1:])
    G = np.ones((1, shape[0]))
    out, grads = net(x=x, **{"grad:gl2": G, "grad:gl3": G, "grad:gl15": G})
    assert np.isfinite(grads["x"]).all()
    assert (grads["x"][0, [0, 2]] == 0).all()
    assert (out["gl2"][0, [0, 2]] == 0).all() and out["gl2"][0, 1] > 0


# -- the derived adaptive loops ------------------------------------------------------------------

def test_adaptive_loops_are_bounded_not_tested():
    """The region's bounds (forward) and the cells reaching an input (gradient) are loop
    bounds: the inner loops visit exactly the (cell, input) pairs, with no test, floor or
    ceiling inside, and the average's division stays outside them."""
    g = convc.Graph("bounds")
    x = g.input("x", (None, 2, 7, 5))
    g.output(g.adaptive_avg_pool(x, (3, 2), name="aavg"))
    lowered = convc.lower(g, "float64", grad=["x"])
    pairs = sum(len(cell(i, 7, 3)) for i in range(3)) * sum(len(cell(i, 5, 2))
                                                           for i in range(2))
    batch = 3
    for step in (step_of(lowered, "aavg", "dinput"),
                 next(s for s in lowered.steps if s.node == "aavg" and s.role == "fwd")):
        nests = lowered.kernels[step].nests
        inner = innermost_statements(nests)
        updates = [s for s in inner if isinstance(s, Update)]
        assert updates, inner
        for u in updates:
            assert not u.value.has(sympy.Piecewise, sympy.floor, sympy.ceiling, sympy.Mod), u
        counted = count_updates(nests, {sympy.Symbol("N", integer=True, nonnegative=True):
                                        sympy.Integer(batch)})
        assert counted == batch * 2 * pairs, step.role
        body = innermost_c_lines(c_function_lines(lowered.source, lowered.functions[step]))
        sums = [line for line in body if "+=" in line]  # the reduction's inner loops
        assert sums, body
        for line in sums:
            for bad in ("%", "/", "?", "floordiv", "ceildiv", "if"):
                assert bad not in line, line


# -- errors ------------------------------------------------------------------------------------

ERROR_CASES = [
    ((None, 6, 4), lambda g, x: g.maxout(x, 4), r"multiple of pieces=4, found 6 channels"),
    ((None, 6, 4), lambda g, x: g.maxout(x, 0), r"pieces must be a positive int, found 0"),
    ((None, 6, 4), lambda g, x: g.channel_pool(x, group=2.0), r"pieces must be a positive int"),
    ((None, 6, 4), lambda g, x: g.channel_pool(x, group=2, kind="lp"),
     r"kind must be one of \('max', 'avg'\), found 'lp'"),
    ((None,), lambda g, x: g.maxout(x, 1), r"expected a 2-d \(N, C\).*found shape \(N,\)"),
    ((None, 2, 5, 7), lambda g, x: g.adaptive_max_pool(x, (3, 8)),
     r"larger than the input along spatial axis 1: 8 cells asked of 7"),
    ((None, 2, 5), lambda g, x: g.adaptive_avg_pool(x, 6), r"6 cells asked of 5"),
    ((None, 2, 5, 7), lambda g, x: g.adaptive_avg_pool(x, (3,)),
     r"output_size must be an int or a tuple of 2 ints"),
    ((None, 2, 5, 7), lambda g, x: g.adaptive_avg_pool(x, (0, 2)),
     r"output_size must be positive ints"),
    ((None, 2, 5, 7), lambda g, x: g.adaptive_max_pool(x, "3"),
     r"output_size must be an int or a tuple of 2 ints"),
    ((None, 2), lambda g, x: g.adaptive_max_pool(x, 1), r"expected a 3-d \(N, C, spatial\)"),
    ((None, 2, 5), lambda g, x: g.global_lp_pool(x, p=0), r"p must be a positive number"),
    ((None, 2, 5), lambda g, x: g.global_lp_pool(x, p=True), r"p must be a positive number"),
]


@pytest.mark.parametrize("shape,build,message", ERROR_CASES)
def test_bad_arguments_raise_graph_error(shape, build, message):
    g = convc.Graph("bad")
    x = g.input("x", shape)
    with pytest.raises(convc.GraphError, match=message) as info:
        build(g, x)
    assert "test_pool_regions.py" in str(info.value)  # the user's line
    assert len(g.nodes()) == 1  # nothing was added


def test_lp_pool_with_a_fractional_p_has_a_gradient():
    """``(Σ|v|^1.5)^(2/3)``: its derivative ``Z^(-1/2)`` is written through the output."""
    net = net_of(lambda g, x: g.lp_pool(x, 3, p=1.5, stride=2, padding=1), (2, 7, 6))
    rng = np.random.default_rng(15)
    x = away_from_zero(rng.standard_normal((2, 2, 7, 6)))
    out, _ = check_finite_differences(net, {"x": x}, ["x"], random_seeds(net, 2, rng), rng)
    xp = np.pad(np.abs(x) ** 1.5, [(0, 0), (0, 0), (1, 1), (1, 1)])
    want = np.array([[[[xp[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() ** (2 / 3)
                        for j in range(3)] for i in range(4)] for c in range(2)]
                     for n in range(2)])
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_adaptive_pooling_of_variable_sizes_runs_one_module_on_every_size():
    """Section 9.7: one compiled module pools inputs of any size to the same grid; values
    against the loop reference above, gradients by finite differences, and a size smaller
    than the grid refused at call time."""
    g = convc.Graph("any")
    x = g.input("x", (None, 2, None, None))
    g.output(g.adaptive_avg_pool(x, (3, 2), name="avg"), g.adaptive_max_pool(x, 3, name="mx"))
    net = convc.compile(g, "float64", grad=["x"])
    rng = np.random.default_rng(0)
    for size in ((7, 5), (9, 9), (3, 4)):
        a = rng.standard_normal((2, 2, *size))
        out, _ = net(x=a)
        np.testing.assert_allclose(out["avg"], adaptive_pool_ref(a, (3, 2), "avg"),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out["mx"], adaptive_pool_ref(a, (3, 3), "max"),
                                   rtol=1e-12, atol=1e-12)
        seeds = {o: rng.standard_normal(out[o].shape) for o in out}
        check_finite_differences(net, {"x": a}, ["x"], seeds, rng)
    with pytest.raises(convc.ArgumentError, match="larger than the input"):
        net(x=np.zeros((1, 2, 2, 5)))
