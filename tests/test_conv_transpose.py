"""Transposed convolution, compiled and run, against references written here in numpy.

The forward reference is the scatter form of section 9.5: every input cell adds its value
times the kernel to the output cells it reaches,
``y[n, g*Kg + o, s*j + d*m - p_before] += x[n, g*Cg + c, j] * W[g*Cg + c, o, m]``, plus
the bias. The weight is laid out ``(in_channels, channels / groups, *kernel)``. Besides the
values, the tests check the output-size formula, the adjoint relation with the convolution
of the same kernel, stride, dilation, padding and groups, the gradients (numpy and central
finite differences) and the construction errors.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convc

DTYPES = {"float32": (np.float32, 1e-5), "float64": (np.float64, 1e-12)}
MAX_SIZE = {1: 5, 2: 3, 3: 2}

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- numpy references ------------------------------------------------------------------------

def out_size(size, kernel, stride, pad, dilation, extra):
    """``(L-1)*s - p_before - p_after + d*(k-1) + 1 + output_padding``."""
    return (size - 1) * stride - pad[0] - pad[1] + dilation * (kernel - 1) + 1 + extra


def taps(x_sizes, kernel, stride, pads, dilation, out_sizes):
    """Every (input position j, kernel tap m, output position) with the output in range."""
    for j in itertools.product(*(range(n) for n in x_sizes)):
        for m in itertools.product(*(range(k) for k in kernel)):
            pos = tuple(s * ji + d * mi - p[0]
                        for ji, mi, s, d, p in zip(j, m, stride, dilation, pads))
            if all(0 <= q < o for q, o in zip(pos, out_sizes)):
                yield j, m, pos


def conv_transpose_ref(x, w, b, stride, pads, dilation, groups, out_sizes):
    """The scatter form: y[n, g*Kg+o, s*j + d*m - p] += x[n, g*Cg+c, j] * W[g*Cg+c, o, m]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, cin = x.shape[:2]
    cg, kg = cin // groups, w.shape[1]
    y = np.zeros((n, kg * groups, *out_sizes))
    for j, m, pos in taps(x.shape[2:], w.shape[2:], stride, pads, dilation, out_sizes):
        for gi in range(groups):
            cs, ks = slice(gi * cg, (gi + 1) * cg), slice(gi * kg, (gi + 1) * kg)
            y[(slice(None), ks, *pos)] += x[(slice(None), cs, *j)] @ w[(cs, slice(None), *m)]
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * len(out_sizes))
    return y


def conv_transpose_grads_ref(x, w, gy, stride, pads, dilation, groups):
    """Gradients of ``sum(gy * conv_transpose(x, W) + bias)`` w.r.t. x, W and the bias."""
    cin = x.shape[1]
    cg, kg = cin // groups, w.shape[1]
    gx, gw = np.zeros(x.shape), np.zeros(w.shape)
    for j, m, pos in taps(x.shape[2:], w.shape[2:], stride, pads, dilation, gy.shape[2:]):
        for gi in range(groups):
            cs, ks = slice(gi * cg, (gi + 1) * cg), slice(gi * kg, (gi + 1) * kg)
            up = gy[(slice(None), ks, *pos)]          # (n, Kg)
            gx[(slice(None), cs, *j)] += up @ w[(cs, slice(None), *m)].T
            gw[(cs, slice(None), *m)] += x[(slice(None), cs, *j)].T @ up
    gb = gy.sum(axis=tuple(i for i in range(gy.ndim) if i != 1))
    return gx, gw, gb


def pad_pairs(padding, rank):
    if padding == "valid":
        return [(0, 0)] * rank
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def per_axis(v, rank):
    return (v,) * rank if isinstance(v, int) else tuple(v)


# -- drawing cases ---------------------------------------------------------------------------

@st.composite
def ct_cases(draw, rank, output_padding_below_stride=False, dtypes=tuple(DTYPES)):
    groups = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sizes = [draw(st.integers(1, MAX_SIZE[rank])) for _ in range(rank)]
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    stride = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilation = [draw(st.integers(1, 2)) for _ in range(rank)]
    extra = []
    for s, d in zip(stride, dilation):
        top = s if output_padding_below_stride else max(s, d)
        extra.append(draw(st.integers(0, top - 1)))
    # padding cells each axis can lose and still keep one output cell
    room = [out_size(n, k, s, (0, 0), d, e) - 1
            for n, k, s, d, e in zip(sizes, kernel, stride, dilation, extra)]
    mode = draw(st.sampled_from(["valid", "int", "ints", "pairs"]))
    if mode == "valid":
        padding = "valid"
    elif mode == "int":
        padding = draw(st.integers(0, min(2, min(room) // 2)))
    elif mode == "ints":
        padding = tuple(draw(st.integers(0, min(2, r // 2))) for r in room)
    else:
        pairs = []
        for r in room:
            lo = draw(st.integers(0, min(2, r)))
            pairs.append((lo, draw(st.integers(0, min(2, r - lo)))))
        padding = tuple(pairs)
    squash = draw(st.booleans())
    spell = (lambda v: v[0] if squash and len(set(v)) == 1 else tuple(v))
    return dict(sizes=sizes, cin=groups * cg, channels=groups * kg, groups=groups,
                kernel=spell(kernel), stride=spell(stride), dilation=spell(dilation),
                padding=padding, extra=extra,
                by_size=draw(st.booleans()), bias=draw(st.booleans()),
                dtype=draw(st.sampled_from(dtypes)), batch=draw(st.integers(1, 2)),
                seed=draw(st.integers(0, 2**16)))


def geometry(case):
    rank = len(case["sizes"])
    kernel = per_axis(case["kernel"], rank)
    stride = per_axis(case["stride"], rank)
    dilation = per_axis(case["dilation"], rank)
    pads = pad_pairs(case["padding"], rank)
    outs = [out_size(n, k, s, p, d, e) for n, k, s, p, d, e in
            zip(case["sizes"], kernel, stride, pads, dilation, case["extra"])]
    return kernel, stride, dilation, pads, outs


def add_conv_transpose(g, x, case, outs, **kw):
    size_arg = (dict(output_size=tuple(outs)) if case["by_size"]
                else dict(output_padding=tuple(case["extra"])))
    return g.conv_transpose(x, channels=case["channels"], kernel=case["kernel"],
                            stride=case["stride"], padding=case["padding"],
                            dilation=case["dilation"], groups=case["groups"],
                            bias=case["bias"], **size_arg, **kw)


# -- forward ---------------------------------------------------------------------------------

def check_forward(case):
    kernel, stride, dilation, pads, outs = geometry(case)
    g = convc.Graph(f"ct{len(case['sizes'])}d")
    x = g.input("x", (None, case["cin"], *case["sizes"]))
    y = add_conv_transpose(g, x, case, outs)
    g.output(y)
    assert y.shape[1:] == (case["channels"], *outs)
    wshape = (case["cin"], case["channels"] // case["groups"], *kernel)
    assert g.parameters()["conv_transpose0.weight"] == wshape
    assert ("conv_transpose0.bias" in g.parameters()) == case["bias"]

    np_dtype, tol = DTYPES[case["dtype"]]
    net = convc.compile(g, case["dtype"])
    rng = np.random.default_rng(case["seed"])
    xv = rng.standard_normal((case["batch"], case["cin"], *case["sizes"])).astype(np_dtype)
    params = {"conv_transpose0.weight": rng.standard_normal(wshape).astype(np_dtype)}
    bias = None
    if case["bias"]:
        bias = rng.standard_normal(case["channels"]).astype(np_dtype)
        params["conv_transpose0.bias"] = bias
    got = net(x=xv, **params)
    want = conv_transpose_ref(xv, params["conv_transpose0.weight"], bias, stride, pads,
                              dilation, case["groups"], outs)
    assert got.dtype == np_dtype
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10)
    empty = net(x=xv[:0], **params)
    assert empty.shape == (0, case["channels"], *outs)


@settings(max_examples=12, **SETTINGS)
@given(ct_cases(1))
def test_forward_1d(case):
    check_forward(case)


@settings(max_examples=8, **SETTINGS)
@given(ct_cases(2))
def test_forward_2d(case):
    check_forward(case)


@settings(max_examples=5, **SETTINGS)
@given(ct_cases(3))
def test_forward_3d(case):
    check_forward(case)


def test_forward_by_hand():
    """A 1-D stride-2 case small enough to write out: x = [1, 2], W = [1, 10, 100]."""
    g = convc.Graph("hand")
    x = g.input("x", (1, 1, 2))
    g.output(g.conv_transpose(x, channels=1, kernel=3, stride=2, padding=((1, 0),),
                              bias=False, output_padding=1))
    net = convc.compile(g, "float64")
    got = net(x=np.array([[[1.0, 2.0]]]),
              **{"conv_transpose0.weight": np.array([[[1.0, 10.0, 100.0]]])})
    # unpadded scatter: [1, 10, 100 + 2, 20, 200]; the output has (2-1)*2 - 1 + 2 + 1 + 1
    # = 5 cells, starting one cell in (the padding before) and ending past the scatter
    np.testing.assert_array_equal(got, [[[10.0, 102.0, 20.0, 200.0, 0.0]]])


@pytest.mark.parametrize("size,kernel,stride,pad,dilation,extra", [
    (4, 3, 2, (0, 0), 1, 0), (4, 3, 2, (0, 0), 1, 1), (5, 2, 3, (1, 2), 1, 2),
    (3, 3, 1, (1, 1), 2, 1), (6, 1, 1, (0, 0), 1, 0), (2, 4, 3, (2, 0), 2, 2),
])
def test_output_shape_formula(size, kernel, stride, pad, dilation, extra):
    g = convc.Graph("shape")
    x = g.input("x", (None, 2, size, 1))
    y = g.conv_transpose(x, channels=3, kernel=(kernel, 1), stride=(stride, 1),
                         padding=(pad, (0, 0)), dilation=(dilation, 1),
                         output_padding=(extra, 0))
    want = (size - 1) * stride - pad[0] - pad[1] + dilation * (kernel - 1) + 1 + extra
    assert y.shape[1:] == (3, want, 1)
    z = g.conv_transpose(x, channels=3, kernel=(kernel, 1), stride=(stride, 1),
                         padding=(pad, (0, 0)), dilation=(dilation, 1), output_size=(want, 1))
    assert z.shape == y.shape


# -- adjoint of the convolution --------------------------------------------------------------

@settings(max_examples=10, **SETTINGS)
@given(st.integers(1, 3).flatmap(
    lambda r: ct_cases(r, output_padding_below_stride=True, dtypes=("float64",))))
def test_adjoint_of_conv(case):
    """<c(W, Y), X> == <Y, conv_transpose(W, X)>, W shared by the two layers."""
    _, stride, dilation, pads, outs = geometry(case)
    g = convc.Graph("adjoint")
    x = g.input("x", (None, case["cin"], *case["sizes"]))
    yin = g.input("y", (None, case["channels"], *outs))
    t = add_conv_transpose(g, x, {**case, "bias": False}, outs, name="t")
    c = g.conv(yin, channels=case["cin"], kernel=case["kernel"], stride=case["stride"],
               padding=tuple(pads), dilation=case["dilation"], groups=case["groups"],
               bias=False, weight=g.tensor("t.weight"), name="c")
    assert c.shape == x.shape
    g.output(t, c)
    net = convc.compile(g, "float64")
    rng = np.random.default_rng(case["seed"])
    X = rng.standard_normal((case["batch"], case["cin"], *case["sizes"]))
    Y = rng.standard_normal((case["batch"], case["channels"], *outs))
    W = rng.standard_normal(g.parameters()["t.weight"])
    out = net(x=X, y=Y, **{"t.weight": W})
    lhs, rhs = np.vdot(out["c"], X), np.vdot(Y, out["t"])
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), abs(rhs), 1.0)
    # and not trivially: the transposed conv is the numpy scatter
    np.testing.assert_allclose(out["t"], conv_transpose_ref(X, W, None, stride, pads, dilation,
                                                            case["groups"], outs),
                               rtol=1e-12, atol=1e-12)


# -- gradients -------------------------------------------------------------------------------

def grad_net(case, dtype="float64"):
    kernel, stride, dilation, pads, outs = geometry(case)
    g = convc.Graph("ctgrad")
    x = g.input("x", (None, case["cin"], *case["sizes"]))
    g.output(add_conv_transpose(g, x, case, outs, name="up"))
    wrt = ["x", "up.weight"] + (["up.bias"] if case["bias"] else [])
    return convc.compile(g, dtype, grad=wrt), (kernel, stride, dilation, pads, outs)


def random_args(case, wshape, outs, seed):
    rng = np.random.default_rng(seed)
    xv = rng.standard_normal((case["batch"], case["cin"], *case["sizes"]))
    params = {"up.weight": rng.standard_normal(wshape)}
    if case["bias"]:
        params["up.bias"] = rng.standard_normal(case["channels"])
    gy = rng.standard_normal((case["batch"], case["channels"], *outs))
    return xv, params, gy


@settings(max_examples=6, **SETTINGS)
@given(st.integers(1, 3).flatmap(lambda r: ct_cases(r, dtypes=("float64",))))
def test_gradients_match_numpy(case):
    net, (kernel, stride, dilation, pads, outs) = grad_net(case)
    wshape = (case["cin"], case["channels"] // case["groups"], *kernel)
    xv, params, gy = random_args(case, wshape, outs, case["seed"])
    _, grads = net(x=xv, **params, **{"grad:up": gy})
    gx, gw, gb = conv_transpose_grads_ref(xv, params["up.weight"], gy, stride, pads,
                                          dilation, case["groups"])
    np.testing.assert_allclose(grads["x"], gx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["up.weight"], gw, rtol=1e-10, atol=1e-10)
    if case["bias"]:
        np.testing.assert_allclose(grads["up.bias"], gb, rtol=1e-10, atol=1e-10)
    # with no upstream gradient given, a non-scalar output's is 0
    _, zero = net(x=xv, **params)
    assert all(not np.any(v) for v in zero.values())


FD_CASES = [
    dict(sizes=[4], cin=4, channels=6, groups=2, kernel=3, stride=2, dilation=1,
         padding=((1, 2),), extra=[1], by_size=False, bias=True, batch=2, seed=1),
    dict(sizes=[3], cin=2, channels=2, groups=1, kernel=2, stride=1, dilation=3,
         padding=1, extra=[2], by_size=True, bias=True, batch=1, seed=2),
    dict(sizes=[3, 2], cin=3, channels=2, groups=1, kernel=(2, 3), stride=(2, 1),
         dilation=(1, 2), padding=((0, 1), (2, 1)), extra=[1, 0], by_size=True, bias=True,
         batch=2, seed=3),
    dict(sizes=[2, 2, 1], cin=2, channels=4, groups=2, kernel=2, stride=(1, 2, 3),
         dilation=1, padding=0, extra=[0, 1, 2], by_size=False, bias=False, batch=1, seed=4),
]


@pytest.mark.parametrize("case", FD_CASES, ids=["1d-groups", "1d-dilated", "2d", "3d"])
def test_gradients_finite_differences(case):
    """Central differences of L = sum(gy * conv_transpose(x, W) + b) in float64."""
    net, (kernel, *_, outs) = grad_net(case)
    wshape = (case["cin"], case["channels"] // case["groups"], *kernel)
    xv, params, gy = random_args(case, wshape, outs, case["seed"])
    _, grads = net(x=xv, **params, **{"grad:up": gy})
    arrays = {"x": xv, **params}

    def loss(**changed):
        out, _ = net(**{**arrays, **changed}, **{"grad:up": gy})
        return float(np.sum(out * gy))

    h = 1e-5
    for name, value in arrays.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[idx] += h
            minus[idx] -= h
            numeric[idx] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * h)
        assert grads[name].shape == value.shape
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=name)
        assert np.any(numeric), name


# -- errors ----------------------------------------------------------------------------------

def error_graph():
    g = convc.Graph("errors")
    return g, g.input("x", (None, 4, 5))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=2, kernel=3, stride=2, output_padding=2), r"output padding.*found 2"),
    (dict(channels=2, kernel=3, stride=2, dilation=3, output_padding=3),
     r"output padding.*found 3"),
    (dict(channels=2, kernel=3, stride=1, output_padding=1), r"output padding.*found 1"),
    (dict(channels=3, kernel=3, groups=2), r"output channels.*divisible by groups=2"),
    (dict(channels=6, kernel=3, groups=3), r"input channels.*divisible by groups=3"),
    (dict(channels=2, kernel=1, stride=1, padding=3), r"empty"),
    (dict(channels=2, kernel=2, stride=1, padding=((3, 3),)), r"empty"),
])
def test_errors(kwargs, match):
    g, x = error_graph()
    with pytest.raises(convc.GraphError, match=match) as info:
        g.conv_transpose(x, name="deconv", **kwargs)
    assert "'deconv'" in str(info.value)
    assert f"{Path(__file__).name}:" in str(info.value)
    # a refused layer adds nothing to the graph
    assert g.parameters() == {}


@pytest.mark.parametrize("size", [8, 10, 13, 20])
def test_unreachable_output_size(size):
    """5 cells, kernel 3, stride 2 reach 11 or 12 cells only; the error names the node and
    the smallest reachable size (11), whichever side ``output_size`` misses on."""
    g, x = error_graph()
    with pytest.raises(convc.GraphError) as info:
        g.conv_transpose(x, channels=2, kernel=3, stride=2, output_size=size, name="deconv")
    message = str(info.value)
    assert "'deconv'" in message
    assert "11" in message, message
    assert g.parameters() == {}


def test_output_padding_allowed_below_dilation():
    """At stride 1 the dilation alone makes sizes ambiguous: output_padding < d is fine."""
    g, x = error_graph()
    y = g.conv_transpose(x, channels=2, kernel=3, stride=1, dilation=3, output_padding=2)
    assert y.shape[2] == (5 - 1) + 3 * 2 + 1 + 2


def test_reachable_output_sizes():
    """Stride 2 on 5 cells, kernel 3: exactly the sizes 11 and 12 are reachable."""
    for size in (11, 12):
        g, x = error_graph()
        assert g.conv_transpose(x, channels=2, kernel=3, stride=2,
                                output_size=size).shape[2] == size


# -- memory safety of the degenerate cases ---------------------------------------------------

# Run in a child under AddressSanitizer: one input cell, one kernel tap, and that tap in the
# before-padding, so every output cell comes from the bias or output_padding alone.
CHILD = r'''
import sys
import numpy as np
import convc

CASES = [  # (x spatial sizes, kernel, stride, padding pairs, output_padding)
    ((1,), (1,), (3,), ((1, 0),), (2,)),
    ((1,), (1,), (2,), ((1, 0),), (1,)),
    ((1, 2), (1, 2), (2, 1), ((1, 0), (0, 0)), (1, 0)),
    ((1, 2, 2), (1, 2, 2), (3, 2, 3), ((1, 1), (1, 1), (1, 1)), (2, 0, 1)),
]
for sizes, kernel, stride, pads, extra in CASES:
    g = convc.Graph("lone")
    x = g.input("x", (2, 2, *sizes))
    y = g.conv_transpose(x, channels=2, kernel=kernel, stride=stride, padding=pads,
                         output_padding=extra, name="t")
    g.output(y)
    net = convc.compile(g, "float64", grad=["x", "t.weight", "t.bias"], sanitize=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 2, *sizes))
    W = rng.standard_normal((2, 2, *kernel))
    b = np.array([1.5, -2.0])
    G = rng.standard_normal(tuple(y.shape))
    out, grads = net(x=X, **{"t.weight": W, "t.bias": b, "grad:t": G})
    print(sizes, np.array2string(out.ravel(), precision=6, max_line_width=10**6), flush=True)
    print("grads", {k: float(np.abs(v).sum()) for k, v in grads.items()}, flush=True)
print("done")
'''


def libasan() -> str:
    found = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                           text=True, check=False, timeout=60)
    path = found.stdout.strip()
    assert found.returncode == 0 and os.path.isabs(path) and os.path.isfile(path), (
        f"no AddressSanitizer runtime from `cc -print-file-name=libasan.so`: {path!r}")
    return path


def test_no_access_outside_the_tensors():
    """Along an axis of one input cell and a one-tap kernel whose tap lands in the padding,
    no input cell reaches the output: it is the bias alone, and nothing is written elsewhere.
    """
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "LD_PRELOAD": libasan(),
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH"))
                                         if p)}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=repo, env=env, check=False,
                          capture_output=True, text=True, errors="replace", timeout=300)
    report = f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "AddressSanitizer" not in proc.stderr, report
    assert proc.returncode == 0 and proc.stdout.endswith("done\n"), report
    # the outputs are the bias alone: 1.5 for channel 0, -2.0 for channel 1
    for line in proc.stdout.splitlines()[:-1:2]:
        values = [float(v) for v in line.split("[")[1].rstrip("]").split()]
        assert sorted(set(values)) == [-2.0, 1.5], report
