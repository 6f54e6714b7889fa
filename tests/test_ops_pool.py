"""Pooling, compiled and run, against the cell-by-cell numpy reference ``reference.pool``.

Hypothesis draws 1-D, 2-D and 3-D inputs and up to three poolings over each (max, average
with and without the padded cells counted, Lp with p = 2, 3 and 1.5), with strides,
dilations, padding and ceil mode; every graph also carries a global max and a global
average. A max (or an average that ignores padding) whose window would cover padding only
must be refused when the graph is built.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convc

DTYPES = {"float32": (np.float32, 1e-4), "float64": (np.float64, 1e-10)}
MAX_SIZE = {1: 10, 2: 7, 3: 5}
LP_P = {"lp2": 2, "lp3": 3, "lp1.5": 1.5}
KINDS = ["max", "avg", "avg_exclude", *LP_P]

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- drawing cases -----------------------------------------------------------------------------

@st.composite
def pool_spec(draw, sizes):
    """One pooling over an input of spatial ``sizes``: (kind, normalised per-axis args)."""
    kind = draw(st.sampled_from(KINDS))
    window, dilation, pads = [], [], []
    for size in sizes:
        d = draw(st.integers(1, 2))
        # at most one cell of padding per side beyond the input, so windows may exceed it
        w = draw(st.integers(1, min(4, (size + 1) // d + 1)))
        e = ref.extent(w, d)
        lo, hi = draw(st.integers(0, e // 2)), draw(st.integers(0, e // 2))
        pads.append((lo, max(hi, e - size - lo)))  # the window fits the padded input
        window.append(w)
        dilation.append(d)
    stride = None if draw(st.booleans()) else tuple(draw(st.integers(1, 3)) for _ in sizes)
    if any(lo != hi for lo, hi in pads):
        padding = tuple(pads)
    elif len(set(pads)) == 1 and draw(st.booleans()):
        padding = pads[0][0]
    else:
        padding = tuple(lo for lo, _ in pads)
    return dict(kind=kind, window=tuple(window), stride=stride, padding=padding,
                pads=pads, dilation=tuple(dilation), ceil_mode=draw(st.booleans()))


@st.composite
def pool_cases(draw, rank):
    sizes = tuple(draw(st.lists(st.integers(1, MAX_SIZE[rank]), min_size=rank,
                                max_size=rank)))
    return dict(sizes=sizes, channels=draw(st.integers(1, 3)),
                specs=draw(st.lists(pool_spec(sizes), min_size=1, max_size=3)),
                dtype=draw(st.sampled_from(list(DTYPES))), batch=draw(st.integers(1, 3)),
                seed=draw(st.integers(0, 2**16)))


# -- helpers -----------------------------------------------------------------------------------

def add_pool(g, x, spec, name):
    """``g.max_pool`` / ``g.avg_pool`` / ``g.lp_pool`` for one spec."""
    common = dict(window=spec["window"], stride=spec["stride"], padding=spec["padding"],
                  dilation=spec["dilation"], ceil_mode=spec["ceil_mode"], name=name)
    kind = spec["kind"]
    if kind == "max":
        return g.max_pool(x, **common)
    if kind.startswith("avg"):
        return g.avg_pool(x, count_include_pad=kind == "avg", **common)
    return g.lp_pool(x, p=LP_P[kind], **common)


def reference_pool(x, spec):
    kind = spec["kind"]
    stride = spec["window"] if spec["stride"] is None else spec["stride"]
    family = "max" if kind == "max" else "avg" if kind.startswith("avg") else "lp"
    return ref.pool(x, family, spec["window"], stride, spec["pads"], spec["dilation"],
                    spec["ceil_mode"], count_include_pad=kind != "avg_exclude",
                    p=LP_P.get(kind, 2))


def is_refused(spec, sizes) -> bool:
    """Max, and an average over input cells only, have no value for an all-padding window."""
    stride = spec["window"] if spec["stride"] is None else spec["stride"]
    reach = ref.all_windows_reach_input(sizes, spec["window"], stride, spec["pads"],
                                        spec["dilation"], spec["ceil_mode"])
    return spec["kind"] in ("max", "avg_exclude") and not reach


def build_pool_graph(channels, sizes, specs):
    """Poolings ``p0, p1, ...`` of one input, plus its global max and average.

    Returns the graph and the specs it holds: a spec convc must refuse is checked to raise
    `GraphError` and left out.
    """
    g = convc.Graph("pools")
    x = g.input("x", (None, channels, *sizes))
    kept, outs = {}, []
    for i, spec in enumerate(specs):
        if is_refused(spec, sizes):
            with pytest.raises(convc.GraphError, match="covers only padding"):
                add_pool(g, x, spec, f"p{i}")
            continue
        outs.append(add_pool(g, x, spec, f"p{i}"))
        kept[f"p{i}"] = spec
    outs += [g.global_max_pool(x, name="gmax"), g.global_avg_pool(x, name="gavg")]
    g.output(*outs)
    return g, kept


def check_case(case):
    sizes, channels = case["sizes"], case["channels"]
    dtype, rtol = DTYPES[case["dtype"]]
    g, kept = build_pool_graph(channels, sizes, case["specs"])
    net = convc.compile(g, case["dtype"])
    rng = np.random.default_rng(case["seed"])
    spatial = tuple(range(2, 2 + len(sizes)))
    for batch in (case["batch"], 1):
        x = rng.standard_normal((batch, channels, *sizes)).astype(dtype)
        got = net(x=x)
        expected = {name: reference_pool(x, spec) for name, spec in kept.items()}
        x64 = x.astype(np.float64)
        expected["gmax"] = x64.max(axis=spatial)
        expected["gavg"] = x64.mean(axis=spatial)
        scale = float(np.abs(x64).max())
        for name, want in expected.items():
            assert got[name].dtype == dtype
            assert got[name].shape == want.shape, (name, kept.get(name))
            np.testing.assert_allclose(got[name], want, rtol=rtol, atol=rtol * scale,
                                       err_msg=f"{name}: {kept.get(name)}")
    empty = net(x=np.zeros((0, channels, *sizes), dtype))
    for name, spec in kept.items():
        want = reference_pool(np.zeros((1, channels, *sizes)), spec)
        assert empty[name].shape == (0, *want.shape[1:])
    assert empty["gmax"].shape == empty["gavg"].shape == (0, channels)


# -- hypothesis over the pooling grid ----------------------------------------------------------

@SETTINGS
@given(case=pool_cases(1))
def test_pool1d_matches_reference(case):
    check_case(case)


@SETTINGS
@given(case=pool_cases(2))
def test_pool2d_matches_reference(case):
    check_case(case)


@SETTINGS
@given(case=pool_cases(3))
def test_pool3d_matches_reference(case):
    check_case(case)


# -- hand-picked corners -----------------------------------------------------------------------

def spec(kind, window, stride, pads, dilation=None, ceil_mode=False):
    rank = len(window)
    return dict(kind=kind, window=window, stride=stride, padding=tuple(pads), pads=pads,
                dilation=dilation or (1,) * rank, ceil_mode=ceil_mode)


# On 8 cells, window 3, stride 2, padding 1 on both sides: ceil mode keeps a fifth window
# starting at cell 7 (the last input cell); it covers cell 7, the right padding cell 8 and
# cell 9 past the padding, so its divisor is 2 with the padding counted and 1 without.
CORNERS = [
    spec("avg", (3,), (2,), [(1, 1)], ceil_mode=True),
    spec("avg_exclude", (3,), (2,), [(1, 1)], ceil_mode=True),
    spec("max", (3,), (2,), [(1, 1)], ceil_mode=True),
    spec("lp2", (3,), (2,), [(1, 1)], ceil_mode=True),
    spec("avg", (4,), (3,), [(0, 0)], ceil_mode=True),
    spec("avg_exclude", (2,), (2,), [(1, 0)], dilation=(3,), ceil_mode=True),
    spec("lp3", (2,), (1,), [(0, 1)]),
    spec("lp1.5", (3,), (3,), [(1, 1)], ceil_mode=True),
    spec("avg", (7,), (1,), [(3, 3)]),
    spec("max", (1,), (1,), [(0, 0)]),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_pool_corners_match_reference(dtype):
    check_case(dict(sizes=(8,), channels=2, specs=CORNERS, dtype=dtype, batch=3, seed=3))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_pool2d_corners_match_reference(dtype):
    """Mixed per-axis settings: ceil mode on one axis only matters, dilation on the other."""
    specs = [
        spec("avg", (2, 3), (2, 2), [(1, 0), (1, 1)], dilation=(1, 2), ceil_mode=True),
        spec("avg_exclude", (3, 2), (2, 3), [(1, 1), (0, 1)], ceil_mode=True),
        spec("max", (3, 3), (2, 2), [(1, 1), (1, 1)], ceil_mode=True),
        spec("lp2", (2, 2), (1, 2), [(0, 1), (1, 0)], dilation=(2, 1)),
        spec("avg", (1, 5), (1, 1), [(0, 0), (2, 2)]),
    ]
    check_case(dict(sizes=(5, 6), channels=3, specs=specs, dtype=dtype, batch=2, seed=5))


@pytest.mark.parametrize("size, window, stride, padding, dilation, ceil_mode", [
    (3, 2, 2, 1, 1, False),       # windows [-1, 0] and [1, 2]: both reach the input
    (3, 2, 1, (2, 0), 1, False),  # the first window covers cells -2 and -1 only
    (1, 2, 1, 1, 2, False),       # dilation 2 jumps from cell -1 over the input to cell 1
    (4, 2, 3, 1, 3, True),        # ceil mode, dilation 3: the last window covers 2 and 5
    (3, 3, 2, 2, 1, True),
    (2, 2, 2, (3, 0), 1, True),
])
@pytest.mark.parametrize("kind", ["max", "avg_exclude", "avg"])
def test_all_padding_window_is_refused_exactly_when_reference_says(
        kind, size, window, stride, padding, dilation, ceil_mode):
    """An average that counts padding accepts such windows (its value is 0)."""
    pads = [(padding, padding)] if isinstance(padding, int) else [padding]
    s = dict(kind=kind, window=(window,), stride=(stride,), padding=(pads[0],), pads=pads,
             dilation=(dilation,), ceil_mode=ceil_mode)
    g = convc.Graph("refuse")
    x = g.input("x", (None, 1, size))
    if is_refused(s, (size,)):
        with pytest.raises(convc.GraphError, match="covers only padding"):
            add_pool(g, x, s, "p")
    else:
        g.output(add_pool(g, x, s, "p"))
        xs = np.random.default_rng(0).standard_normal((2, 1, size))
        np.testing.assert_allclose(convc.compile(g, "float64")(x=xs), reference_pool(xs, s),
                                   rtol=1e-12, atol=1e-15)
