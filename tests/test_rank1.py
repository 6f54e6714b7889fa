"""Rank-1 constant kernels (section 9.8): a given kernel that is an outer product runs as
1-D passes (`convc.rank`).

Detection on exact outer products (2-D, 3-D, several channels) and refusal of kernels of
higher rank; values against a reference written here from ``scipy.signal.correlate``
(stride, padding, dilation, groups, flip, connections); the input gradient by the adjoint
identity ``<conv(x), y> = <x, h(y)>`` with the forward side computed by that reference;
which nodes are rewritten and which are not (the cost rule, the overrides); ``explain()``;
the Gaussian weighted pool.

Tolerances: float64 results agree with the reference to 1e-12 relative to
``max(|x| * |w|)`` (the same correlation with every term made positive); float32 results to
1e-5 of it (the passes and the dense sum round differently, each within a few ulps per
term).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.signal

import convc
from convc.errors import GraphError
from convc.rank import rank_one_factors


def outer(factors):
    """W[k, c, m0, m1, ...] = u0[k, c, m0] · u1[k, c, m1] · ..."""
    letters = "pqr"[: len(factors)]
    return np.einsum(",".join(f"kc{m}" for m in letters) + f"->kc{letters}", *factors)


def correlate(x, w, b=None, stride=1, pads=0, dilation=1, groups=1):
    """Cross-correlation (equation 9.7) with scipy, one channel pair at a time; ``pads`` as
    per-axis ``(before, after)`` pairs or one int."""
    rank = x.ndim - 2
    stride = (stride,) * rank if np.isscalar(stride) else tuple(stride)
    dilation = (dilation,) * rank if np.isscalar(dilation) else tuple(dilation)
    pads = [(pads, pads)] * rank if np.isscalar(pads) else [tuple(p) for p in pads]
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    spread = [d * (m - 1) + 1 for m, d in zip(w.shape[2:], dilation)]
    wd = np.zeros((*w.shape[:2], *spread))
    wd[(..., *[slice(None, None, d) for d in dilation])] = w
    K, Cg = w.shape[:2]
    Kg = K // groups
    every = tuple(slice(None, None, s) for s in stride)
    out = np.stack([np.stack([
        sum(scipy.signal.correlate(xp[n, (k // Kg) * Cg + c], wd[k, c], mode="valid")
            for c in range(Cg))[every] + (0.0 if b is None else b[k])
        for k in range(K)]) for n in range(len(x))])
    return out


def magnitude(x, w, **kw):
    """max(|x| * |w|): the scale of the rounding error of any order of the sums."""
    return np.abs(correlate(np.abs(x), np.abs(w), **kw)).max()


def gaussian(size, sigma):
    return np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))


# -- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spatial", [(5, 4), (7, 7), (3, 4, 5)])
def test_factors_of_exact_outer_products_give_the_kernel_back(spatial):
    rng = np.random.default_rng(len(spatial))
    factors = [rng.standard_normal((3, 2, m)) for m in spatial]
    w = outer(factors)
    found = rank_one_factors(w, "float64")
    assert found is not None and [f.shape for f in found] == [(3, 2, m) for m in spatial]
    np.testing.assert_allclose(outer(found), w, rtol=0, atol=1e-13 * np.abs(w).max())


def test_an_all_zero_channel_pair_is_of_rank_1():
    rng = np.random.default_rng(0)
    w = outer([rng.standard_normal((2, 2, 5)), rng.standard_normal((2, 2, 5))])
    w[1, 0] = 0
    found = rank_one_factors(w)
    assert found is not None
    np.testing.assert_allclose(outer(found), w, atol=1e-14)


@pytest.mark.parametrize("spatial", [(5, 5), (3, 4, 3)])
def test_a_rank_2_pair_is_refused_even_when_every_other_pair_is_rank_1(spatial):
    rng = np.random.default_rng(1)
    w = outer([rng.standard_normal((3, 2, m)) for m in spatial])
    assert rank_one_factors(w) is not None
    w[2, 1] += outer([rng.standard_normal((1, 1, m)) for m in spatial])[0, 0]  # rank 2
    assert rank_one_factors(w) is None
    assert rank_one_factors(rng.standard_normal((1, 1, *spatial))) is None


def test_precision_follows_the_dtype():
    """An outer product rounded to float32 is of rank 1 at float32's precision, not at
    float64's; a perturbation far above float32's epsilon is refused at both."""
    rng = np.random.default_rng(2)
    w = outer([rng.standard_normal((2, 3, 9)), rng.standard_normal((2, 3, 9))])
    rounded = w.astype(np.float32).astype(np.float64)
    assert rank_one_factors(rounded, "float32") is not None
    assert rank_one_factors(rounded, "float64") is None
    w[0, 0, 0, 0] += 1e-3 * np.abs(w).max()
    assert rank_one_factors(w, "float32") is None


def test_one_axis_has_nothing_to_separate():
    assert rank_one_factors(np.ones((2, 2, 5))) is None


# -- values and gradients ----------------------------------------------------------------------

CASES = {
    "2d": dict(sizes=(19, 17), cin=2, channels=3, kernel=(7, 5), stride=1, padding=2,
               dilation=1, groups=1),
    "2d_strided": dict(sizes=(20, 23), cin=2, channels=4, kernel=(6, 7), stride=(2, 3),
                       padding=((3, 1), (0, 2)), dilation=(1, 2), groups=2),
    "3d": dict(sizes=(9, 8, 10), cin=1, channels=2, kernel=(5, 4, 5), stride=(1, 2, 1),
               padding=((2, 2), (1, 0), (0, 3)), dilation=(2, 1, 1), groups=1),
}


def case_arrays(case):
    c = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    x = rng.standard_normal((2, c["cin"], *c["sizes"]))
    factors = [rng.standard_normal((c["channels"], c["cin"] // c["groups"], m))
               for m in c["kernel"]]
    return x, outer(factors), rng.standard_normal(c["channels"])


def pads_of(c):
    p = c["padding"]
    rank = len(c["kernel"])
    return [(p, p)] * rank if isinstance(p, int) else p


@functools.lru_cache(maxsize=None)
def case_net(case, dtype, algorithm):
    c = CASES[case]
    w = case_arrays(case)[1]
    g = convc.Graph("rank1")
    x = g.input("x", (None, c["cin"], *c["sizes"]))
    g.output(g.conv(x, c["channels"], c["kernel"], stride=c["stride"], padding=c["padding"],
                    dilation=c["dilation"], groups=c["groups"], weight=g.constant("k", w),
                    name="blur", algorithm=algorithm))
    return convc.compile(g, dtype, grad=["x", "blur.bias"])


@pytest.mark.parametrize("case, dtype, algorithm", [
    *((case, dtype, None) for case in CASES for dtype in ("float64", "float32")),
    ("2d_strided", "float32", "separable"),
])
def test_values_and_input_gradient_match_the_references(case, dtype, algorithm):
    c = CASES[case]
    x, w, b = case_arrays(case)
    net = case_net(case, dtype, algorithm)
    assert "blur" in net.lowered.separated  # under "auto" too: these kernels pay
    kw = dict(stride=c["stride"], pads=pads_of(c), dilation=c["dilation"], groups=c["groups"])
    expected = correlate(x, w, b, **kw)
    scale = magnitude(x, w, **kw)
    tol = 1e-12 if dtype == "float64" else 1e-5
    ft = np.dtype(dtype).type
    y = np.random.default_rng(5).standard_normal(expected.shape)
    out, grads = net(x=x.astype(ft), **{"blur.bias": b.astype(ft), "grad:blur": y.astype(ft)})
    np.testing.assert_allclose(out, expected, rtol=0, atol=tol * scale)
    # adjoint identity: <conv(x), y> = <x, h(y)>, the forward side by scipy
    lhs = np.vdot(correlate(x, w, **kw), y)
    rhs = np.vdot(x, grads["x"].astype(np.float64))
    bound = tol * np.vdot(correlate(np.abs(x), np.abs(w), **kw), np.abs(y))  # all terms > 0
    assert abs(lhs - rhs) <= bound, (lhs, rhs, bound)
    np.testing.assert_allclose(grads["blur.bias"], y.sum(axis=(0, *range(2, y.ndim))),
                               rtol=tol * 10, atol=tol * 10 * np.abs(y).sum())


def test_input_gradient_matches_finite_differences():
    x, _, b = case_arrays("2d_strided")
    net = case_net("2d_strided", "float64", None)
    rng = np.random.default_rng(9)
    y = rng.standard_normal(net(x=x, **{"blur.bias": b})[0].shape)
    _, grads = net(x=x, **{"blur.bias": b, "grad:blur": y})
    t = rng.standard_normal(x.shape)
    eps = 1e-6
    plus = net(x=x + eps * t, **{"blur.bias": b})[0]
    minus = net(x=x - eps * t, **{"blur.bias": b})[0]
    numeric = np.vdot(plus - minus, y) / (2 * eps)
    assert abs(numeric - np.vdot(grads["x"], t)) <= 1e-7 * abs(numeric) + 1e-8


@functools.lru_cache(maxsize=None)
def folded_net(kind):
    """A 2-D layer whose kernel becomes rank 1 only as the op reads it: flipped, or masked
    by its connections table (figure 9.15, a disconnected pair is all zero)."""
    rng = np.random.default_rng(11)
    w = outer([rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 3, 5))])
    table = None
    if kind == "connections":
        table = np.array([[True, False, True], [False, True, True]])
        w[0, 1] = rng.standard_normal((6, 5))  # rank 6, but never read
    g = convc.Graph("folded")
    x = g.input("x", (None, 3, 14, 13))
    g.output(g.conv(x, 2, (6, 5), padding=1, weight=g.constant("k", w), bias=False,
                    flip=kind == "flip", connections=table, name="c"))
    return convc.compile(g, "float64"), w, table


@pytest.mark.parametrize("kind", ["flip", "connections"])
def test_flip_and_connections_are_folded_into_the_factors(kind):
    net, w, table = folded_net(kind)
    assert "c" in net.lowered.separated
    x = np.random.default_rng(12).standard_normal((2, 3, 14, 13))
    dense = w[:, :, ::-1, ::-1] if kind == "flip" else w * table[:, :, None, None]
    expected = correlate(x, dense, pads=1)
    np.testing.assert_allclose(net(x=x), expected, rtol=0,
                               atol=1e-12 * magnitude(x, dense, pads=1))


# -- which nodes are rewritten -----------------------------------------------------------------

def one_layer(kernel, algorithm=None, weight="constant", rank2=False, size=24, cin=1,
              channels=1, bias=False):
    rng = np.random.default_rng(3)
    spatial = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = outer([rng.standard_normal((channels, cin, m)) for m in spatial])
    if rank2:
        w[0, 0] = rng.standard_normal(spatial)
    g = convc.Graph("one")
    x = g.input("x", (None, cin, size, size))
    k = g.constant("k", w) if weight == "constant" else None
    g.output(g.conv(x, channels, spatial, weight=k, bias=bias, name="c", algorithm=algorithm))
    return g


def separated(g, **kw):
    return set(convc.lower(g, **kw).separated)


def test_auto_takes_passes_where_they_pay_and_only_there():
    assert separated(one_layer(5)) == {"c"}  # 25 multiply-adds against 10
    assert separated(one_layer(3)) == set()  # 9 against 6
    assert separated(one_layer(3), algorithm="separable") == {"c"}
    # with 8 output channels or more the dense kernel is a matrix product: it stays one
    assert separated(one_layer(5, cin=4, channels=8)) == set()
    assert separated(one_layer(5, cin=4, channels=8), algorithm="separable") == {"c"}


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "fft", "col2im"])
def test_a_node_or_module_choosing_another_algorithm_is_not_rewritten(algorithm):
    assert separated(one_layer(9, algorithm=algorithm)) == set()
    assert separated(one_layer(9), algorithm=algorithm) == set()
    # the node's own choice wins over the module's
    assert separated(one_layer(9, algorithm="separable"), algorithm=algorithm) == {"c"}


def test_a_module_asking_for_passes_keeps_the_others_as_auto():
    g = one_layer(5, rank2=True)
    lowered = convc.lower(g, algorithm="separable")
    assert lowered.separated == {}
    assert lowered.source == convc.lower(g).source


@pytest.mark.parametrize("why, graph, message", [
    ("learned", lambda: one_layer(5, "separable", weight=None),
     r"'c'.*is a param, not a constant.*separable=True"),
    ("rank 2", lambda: one_layer(5, "separable", rank2=True),
     r"'c'.*'k' is not of rank 1.*pair k=0, c=0"),
    ("dense", None, r"'d'.*not to a dense"),
])
def test_forcing_passes_that_cannot_be_refuses_naming_the_node(why, graph, message):
    if graph is None:
        g = convc.Graph("dense")
        g.output(g.dense(g.input("x", (None, 4)), 3, name="d", algorithm="separable"))
    else:
        g = graph()
    with pytest.raises(GraphError, match=message):
        convc.lower(g)


def test_an_untied_bias_is_refused_under_separable_and_kept_dense_under_auto():
    rng = np.random.default_rng(4)
    w = outer([rng.standard_normal((1, 1, 7)), rng.standard_normal((1, 1, 7))])
    for algorithm, expect in ((None, None), ("separable", "shared bias only")):
        g = convc.Graph("untied")
        x = g.input("x", (None, 1, 16, 16))
        g.output(g.conv(x, 1, 7, weight=g.constant("k", w), bias="untied", name="c",
                        algorithm=algorithm))
        if expect:
            with pytest.raises(GraphError, match=expect):
                convc.lower(g)
        else:
            assert convc.lower(g).separated == {}


def test_the_rewrite_shows_in_explain_and_in_the_c():
    net = case_net("2d", "float32", None)
    text = net.explain()
    block = text.split("NODE      blur")[1].split("\n\n")[0]
    assert "(conv)" in block.splitlines()[0]
    algorithm = [line for line in block.splitlines() if line.startswith("ALGORITHM")]
    assert algorithm and all("separable: rank-1 constant kernel 'k'" in line
                             for line in algorithm)
    assert "blur.pass1" in block  # the scratch rows between the passes
    # the factors are baked in as constants; the dense kernel no longer is
    assert "constant 'blur.weight0' (3, 2, 7)" in net.source
    assert "constant 'blur.weight1' (3, 2, 5)" in net.source
    assert "constant 'k'" not in net.source


def test_a_shared_constant_is_kept_for_a_node_that_still_reads_it():
    rng = np.random.default_rng(6)
    w = outer([rng.standard_normal((1, 1, 7)), rng.standard_normal((1, 1, 7))])
    g = convc.Graph("shared")
    x = g.input("x", (None, 1, 16, 16))
    k = g.constant("k", w)
    a = g.conv(x, 1, 7, weight=k, bias=False, name="a")
    b = g.conv(x, 1, 7, weight=k, bias=False, name="b", algorithm="direct")
    g.output(g.add(a, b))
    net = convc.compile(g, "float64")
    assert set(net.lowered.separated) == {"a"}
    xv = rng.standard_normal((1, 1, 16, 16))
    np.testing.assert_allclose(net(x=xv), 2 * correlate(xv, w), rtol=0,
                               atol=1e-12 * magnitude(xv, w))


# -- weighted pooling --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def pool_net(stride):
    g = convc.Graph("wpool")
    x = g.input("x", (None, 3, 17, 15))
    g.output(g.weighted_pool(x, (7, 5), stride=stride, padding=(3, 2), sigma=1.5,
                             name="p"))
    return convc.compile(g, "float64", grad=["x"])


def test_a_gaussian_weighted_pool_runs_as_passes_and_matches_numpy():
    net = pool_net(1)
    assert set(net.lowered.separated) == {"p"}
    assert net.lowered.separated["p"].kind == "weighted_pool"
    w = np.outer(gaussian(7, 1.5), gaussian(5, 1.5))
    w /= w.sum()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 17, 15))
    per_channel = np.broadcast_to(w, (3, 1, 7, 5))
    expected = correlate(x, per_channel, pads=[(3, 3), (2, 2)], groups=3)
    y = rng.standard_normal(expected.shape)
    out, grads = net(x=x, **{"grad:p": y})
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-13)
    assert abs(np.vdot(expected, y) - np.vdot(x, grads["x"])) <= 1e-12 * np.abs(y).sum()


def test_a_weighted_pool_that_steps_a_whole_window_stays_dense():
    """At stride = window the first pass covers every input row: 7·5 = 35 multiply-adds
    per output against 7 + 5·7 = 42, so the pool keeps its window."""
    assert pool_net((7, 5)).lowered.separated == {}
