"""Convolution, compiled and run, against independent references.

The reference is ``reference.conv`` (explicit padding and one strided slice per kernel tap)
and, for plain 2-D cases, ``scipy.signal.correlate``. Hypothesis draws 1-D, 2-D and 3-D
graphs holding one or two convolutions over the same input, with strides, dilations, every
padding form, groups (depthwise included), bias on and off, in float32 and float64; each
compiled module is also called with batch sizes 1 and 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.signal import correlate

import convc

DTYPES = {"float32": (np.float32, 1e-4), "float64": (np.float64, 1e-10)}
MAX_SIZE = {1: 9, 2: 7, 3: 5}

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- drawing cases -----------------------------------------------------------------------------

@st.composite
def conv_spec(draw, sizes, cin):
    """Arguments of one ``g.conv`` on an input of spatial ``sizes`` and ``cin`` channels."""
    rank = len(sizes)
    groups = draw(st.sampled_from([g for g in range(1, cin + 1) if cin % g == 0]))
    channels = groups * draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["valid", "same", "full", "int", "ints", "pairs"]))
    per_axis = st.lists(st.integers(0, 2), min_size=rank, max_size=rank)
    if mode == "int":
        padding = draw(st.integers(0, 2))
        pads = [(padding, padding)] * rank
    elif mode == "ints":
        padding = tuple(draw(per_axis))
        pads = [(p, p) for p in padding]
    elif mode == "pairs":
        pads = list(zip(draw(per_axis), draw(per_axis)))
        padding = tuple(pads)
    elif mode == "valid":
        padding, pads = mode, [(0, 0)] * rank
    else:
        padding, pads = mode, None
    kernel, dilation = [], []
    for a, size in enumerate(sizes):
        d = draw(st.integers(1, 3))
        # "same" and "full" fit any kernel; otherwise its extent must fit the padded input
        room = 4 if pads is None else (size + sum(pads[a]) - 1) // d + 1
        kernel.append(draw(st.integers(1, min(4, room))))
        dilation.append(d)
    stride = [draw(st.integers(1, 3)) for _ in sizes]
    # an int where every axis agrees, as users write it, to exercise both spellings
    squash = draw(st.booleans())
    spell = (lambda v: v[0] if squash and len(set(v)) == 1 else tuple(v))
    return dict(channels=channels, kernel=spell(kernel), stride=spell(stride),
                padding=padding, dilation=spell(dilation), groups=groups,
                bias=draw(st.booleans()))


@st.composite
def conv_cases(draw, rank):
    sizes = tuple(draw(st.lists(st.integers(1, MAX_SIZE[rank]), min_size=rank,
                                max_size=rank)))
    cin = draw(st.sampled_from([1, 2, 3, 4]))
    specs = draw(st.lists(conv_spec(sizes, cin), min_size=1, max_size=2))
    return dict(sizes=sizes, cin=cin, specs=specs, dtype=draw(st.sampled_from(list(DTYPES))),
                batch=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)),
                algorithm=draw(st.sampled_from(["direct", "gemm", "fft", "winograd",
                                                "col2im", "blocked"])))


# -- helpers -----------------------------------------------------------------------------------

def as_tuple(v, rank):
    return (v,) * rank if isinstance(v, int) else tuple(v)


def build_conv_graph(cin, sizes, specs):
    """One input ``x`` and one output per spec, named ``c0``, ``c1``, ..."""
    g = convc.Graph("convs")
    x = g.input("x", (None, cin, *sizes))
    g.output(*(g.conv(x, name=f"c{i}", **spec) for i, spec in enumerate(specs)))
    return g


def random_params(net, rng, dtype):
    return {name: rng.standard_normal(tuple(int(d) for d in shape)).astype(dtype)
            for name, shape in net.parameters.items()}


def reference_conv(x, params, name, spec, sizes):
    rank = len(sizes)
    kernel, stride = as_tuple(spec["kernel"], rank), as_tuple(spec["stride"], rank)
    dilation = as_tuple(spec["dilation"], rank)
    pads = ref.padding_pairs(spec["padding"], sizes, kernel, stride, dilation)
    w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
    args = dict(stride=stride, padding=pads, dilation=dilation, groups=spec["groups"])
    expected = ref.conv(x, w, b, **args)
    # a bound on the rounding error: the same sum with every term made positive
    bound = ref.conv(np.abs(x), np.abs(w), None if b is None else np.abs(b), **args)
    return expected, bound


def as_dict(result, names):
    return result if isinstance(result, dict) else {names[0]: result}


def check_case(case):
    sizes, cin, specs = case["sizes"], case["cin"], case["specs"]
    dtype, rtol = DTYPES[case["dtype"]]
    net = convc.compile(build_conv_graph(cin, sizes, specs), case["dtype"],
                        algorithm=case.get("algorithm", "auto"))
    rng = np.random.default_rng(case["seed"])
    params = random_params(net, rng, dtype)
    names = [f"c{i}" for i in range(len(specs))]
    for batch in (case["batch"], 1):
        x = rng.standard_normal((batch, cin, *sizes)).astype(dtype)
        got = as_dict(net(x=x, **params), names)
        for name, spec in zip(names, specs):
            expected, bound = reference_conv(x, params, name, spec, sizes)
            assert got[name].dtype == dtype
            assert got[name].shape == expected.shape, (name, spec)
            np.testing.assert_allclose(got[name], expected, rtol=rtol,
                                       atol=rtol * bound.max(), err_msg=f"{name}: {spec}")
    empty = as_dict(net(x=np.zeros((0, cin, *sizes), dtype), **params), names)
    for name, spec in zip(names, specs):
        expected, _ = reference_conv(np.zeros((1, cin, *sizes)), params, name, spec, sizes)
        assert empty[name].shape == (0, *expected.shape[1:])
        assert empty[name].dtype == dtype


# -- hypothesis over the conv grid -------------------------------------------------------------

@SETTINGS
@given(case=conv_cases(1))
def test_conv1d_matches_reference(case):
    check_case(case)


@SETTINGS
@given(case=conv_cases(2))
def test_conv2d_matches_reference(case):
    check_case(case)


@SETTINGS
@given(case=conv_cases(3))
def test_conv3d_matches_reference(case):
    check_case(case)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_conv_fixed_grid_matches_reference(dtype):
    """Hand-picked corners in one graph: depthwise, even kernels under "same" at stride 2,
    1x1 kernels, kernels as large as the input, size-1 axes, a dilation reaching the edge."""
    sizes, cin = (6, 1, 5), 4
    specs = [
        dict(channels=4, kernel=3, stride=1, padding="same", dilation=1, groups=4, bias=True),
        dict(channels=8, kernel=(2, 1, 4), stride=2, padding="same", dilation=1, groups=4,
             bias=False),
        dict(channels=3, kernel=1, stride=1, padding="valid", dilation=1, groups=1, bias=True),
        dict(channels=2, kernel=(6, 1, 5), stride=1, padding="valid", dilation=1, groups=2,
             bias=True),
        dict(channels=2, kernel=(2, 2, 2), stride=(3, 1, 2), padding="full",
             dilation=(5, 1, 4), groups=1, bias=False),
        dict(channels=4, kernel=(4, 1, 2), stride=(2, 1, 3), padding="same",
             dilation=(2, 1, 3), groups=2, bias=True),
        dict(channels=2, kernel=(3, 2, 3), stride=1, padding=((0, 2), (1, 0), (2, 0)),
             dilation=(1, 1, 2), groups=1, bias=True),
    ]
    check_case(dict(sizes=sizes, cin=cin, specs=specs, dtype=dtype, batch=3, seed=7))


# -- output shapes in closed form --------------------------------------------------------------

def closed_form(size, kernel, stride, padding, dilation):
    """The output length along one axis, straight from the formulas of the README."""
    e = dilation * (kernel - 1) + 1
    if padding == "same":
        return math.ceil(size / stride)
    if padding == "full":
        return (size + 2 * (e - 1) - e) // stride + 1
    if padding == "valid":
        return (size - e) // stride + 1
    lo, hi = (padding, padding) if isinstance(padding, int) else padding
    return (size + lo + hi - e) // stride + 1


# (spatial sizes, kernel, stride, padding, dilation): one entry per axis
SHAPE_TABLE = [
    ((10,), 3, 1, "valid", 1),
    ((10,), 3, 2, "valid", 1),
    ((11,), 4, 3, "valid", 1),
    ((7,), 7, 1, "valid", 1),
    ((9,), 3, 1, "valid", 3),
    ((10,), 3, 1, "same", 1),
    ((10,), 4, 1, "same", 1),
    ((10,), 3, 2, "same", 1),
    ((11,), 3, 2, "same", 1),
    ((11,), 4, 2, "same", 1),
    ((1,), 5, 2, "same", 1),
    ((9,), 2, 3, "same", 2),
    ((7,), 3, 1, "full", 1),
    ((7,), 4, 2, "full", 2),
    ((1,), 1, 1, "full", 1),
    ((6,), 3, 1, 1, 1),
    ((6,), 3, 2, 2, 1),
    ((6,), 5, 1, ((3, 0),), 1),
    ((6,), 5, 4, ((0, 3),), 1),
    ((6,), 5, 4, (2,), 1),
    ((8, 5), (3, 2), (2, 1), "same", (1, 2)),
    ((8, 5), (3, 2), (2, 3), "valid", 1),
    ((8, 5), (4, 4), (3, 2), "full", (2, 1)),
    ((8, 5), (3, 3), 1, ((1, 2), (0, 1)), 1),
    ((8, 5), (3, 3), 2, (1, 0), (1, 2)),
    ((4, 5, 6), (2, 3, 4), (1, 2, 3), "same", 1),
    ((4, 5, 6), (1, 3, 2), (2, 2, 1), "full", (1, 2, 3)),
    ((4, 5, 6), 2, (1, 2, 3), ((0, 1), 2, (3, 0)), 1),
    ((1, 1, 1), 1, 1, "valid", 1),
]


def table_expected(sizes, kernel, stride, padding, dilation):
    rank = len(sizes)
    kernel, stride, dilation = (as_tuple(v, rank) for v in (kernel, stride, dilation))
    if isinstance(padding, str | int):
        pads = [padding] * rank
    else:
        pads = list(padding)
    return tuple(closed_form(*args) for args in zip(sizes, kernel, stride, pads, dilation))


@pytest.mark.parametrize("sizes, kernel, stride, padding, dilation", SHAPE_TABLE)
def test_conv_output_shape_closed_form(sizes, kernel, stride, padding, dilation):
    g = convc.Graph("shape")
    x = g.input("x", (None, 2, *sizes))
    y = g.conv(x, channels=3, kernel=kernel, stride=stride, padding=padding,
               dilation=dilation)
    assert y.shape[1:] == (3, *table_expected(sizes, kernel, stride, padding, dilation))


def test_conv_same_at_stride_is_ceil_of_size_over_stride():
    g = convc.Graph("same")
    for size in range(1, 12):
        for stride in (1, 2, 3):
            for kernel in (1, 2, 3, 4, 5):
                x = g.input(f"x{size}_{stride}_{kernel}", (None, 1, size))
                y = g.conv(x, channels=1, kernel=kernel, stride=stride, padding="same")
                assert y.shape[2] == -(-size // stride), (size, stride, kernel)


def test_conv_compiled_shapes_match_closed_form():
    """Every row of the table in one compiled module: the arrays it returns have the shape."""
    g = convc.Graph("shapes")
    outs = []
    for i, (sizes, kernel, stride, padding, dilation) in enumerate(SHAPE_TABLE):
        x = g.input(f"x{i}", (None, 2, *sizes))
        outs.append(g.conv(x, channels=3, kernel=kernel, stride=stride, padding=padding,
                           dilation=dilation, name=f"c{i}"))
    g.output(*outs)
    net = convc.compile(g, "float64")
    rng = np.random.default_rng(0)
    arrays = {f"x{i}": rng.standard_normal((2, 2, *row[0])) for i, row in enumerate(SHAPE_TABLE)}
    got = net(**arrays, **random_params(net, rng, np.float64))
    for i, row in enumerate(SHAPE_TABLE):
        assert got[f"c{i}"].shape == (2, 3, *table_expected(*row)), row


# -- scipy.signal.correlate, directly ----------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
def test_conv2d_matches_scipy_correlate(dtype):
    """Multi-channel 2-D convolution as a sum over channels of scipy's 2-D correlation.

    scipy's "same" centres an even kernel the other way (its extra cell goes before), so for
    even kernels the "same" output is cut out of scipy's "full" result instead.
    """
    np_dtype, rtol = DTYPES[dtype]
    cin, cout, size = 3, 2, (7, 6)
    modes = {"valid": (3, 2), "full": (2, 3), "same_odd": (3, 5), "same_even": (4, 2)}
    g = convc.Graph("scipy")
    x = g.input("x", (None, cin, *size))
    g.output(*(g.conv(x, channels=cout, kernel=k, padding=m.split("_")[0], name=m)
               for m, k in modes.items()))
    net = convc.compile(g, dtype)
    rng = np.random.default_rng(1)
    params = random_params(net, rng, np_dtype)
    xs = rng.standard_normal((2, cin, *size)).astype(np_dtype)
    got = net(x=xs, **params)

    def scipy_conv(name, mode):
        w, b = params[f"{name}.weight"].astype(np.float64), params[f"{name}.bias"]
        return np.array([[sum(correlate(xs[n, c].astype(np.float64), w[k, c], mode=mode)
                              for c in range(cin)) + b[k]
                          for k in range(cout)] for n in range(len(xs))])

    full = scipy_conv("same_even", "full")
    (kh, kw) = modes["same_even"]
    # convc puts (k - 1) // 2 cells before; "full" put k - 1 there
    top, left = kh - 1 - (kh - 1) // 2, kw - 1 - (kw - 1) // 2
    expected = {
        "valid": scipy_conv("valid", "valid"),
        "full": scipy_conv("full", "full"),
        "same_odd": scipy_conv("same_odd", "same"),
        "same_even": full[:, :, top:top + size[0], left:left + size[1]],
    }
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=rtol, atol=rtol * 10, err_msg=name)


# -- optional: PyTorch -------------------------------------------------------------------------

def test_conv2d_matches_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    g = convc.Graph("torch")
    x = g.input("x", (None, 4, 9, 8))
    g.output(g.conv(x, channels=6, kernel=(3, 2), stride=(2, 1), padding=(1, 2),
                    dilation=(2, 1), groups=2, name="c"))
    net = convc.compile(g, "float64")
    rng = np.random.default_rng(2)
    params = random_params(net, rng, np.float64)
    xs = rng.standard_normal((3, 4, 9, 8))
    want = F.conv2d(torch.from_numpy(xs), torch.from_numpy(params["c.weight"]),
                    torch.from_numpy(params["c.bias"]), stride=(2, 1), padding=(1, 2),
                    dilation=(2, 1), groups=2).numpy()
    np.testing.assert_allclose(net(x=xs, **params), want, rtol=1e-10, atol=1e-10)
