"""Contractions: which comprehensions become packed matrix products, and how they read.

The numbers themselves are checked by the conv, autodiff and training suites, which draw the
algorithm (``direct`` or ``gemm``) with every case; here: the plan's shape, and that the C
it becomes has the structure promised (no per-element test in the packing, one loop for
elementwise ops).
"""

import re

import numpy as np
import pytest
import sympy

import convc
from convc.contract import Gemm, plan
from convc.ir.comprehension import Comprehension, Reduction
from convc.loops import Loop, Store, Update, VLoad, walk
from convc.lower import lower_comprehension, lower_node
from test_autodiff import c_function_lines


def conv_graph(padding=1, stride=1, channels=32, cin=16, size=8, groups=1):
    g = convc.Graph("c")
    x = g.input("x", (None, cin, size, size))
    g.output(g.conv(x, channels=channels, kernel=3, padding=padding, stride=stride,
                    groups=groups))
    return g


def gemms(lowered, role="fwd"):
    step = next(s for s in lowered.steps if s.role == role and s.node != lowered.graph.name)
    return [p for p in lowered.parts[step] if isinstance(p, Gemm)]


def test_convolution_is_the_kernel_times_im2col_per_image():
    (gemm,) = gemms(convc.lower(conv_graph(), algorithm="gemm"))
    assert (gemm.m, gemm.n, gemm.k) == (32, 64, 144)  # K x (i0, i1) x (c, m0, m1)
    assert str(gemm.batch.var) == "n" and not gemm.outer
    assert gemm.a.tensor == "conv0.weight" and gemm.a.batch == 0  # in place, shared
    assert (gemm.a.rows, gemm.a.cols) == (144, 1)
    assert gemm.b.tensor == "conv0~b"  # the packed input
    assert (gemm.c.rows, gemm.c.cols, gemm.c.batch) == (64, 1, 2048)


def test_kernel_and_input_gradients_are_products_too():
    lowered = convc.lower(conv_graph(), grad=["x", "conv0.weight"], algorithm="gemm")
    (g,) = gemms(lowered, "dweight")
    # 9.11 per image, the images summed into one C: the output gradient read in place,
    # the input's im2col the forward pass made read again (transposed), nothing packed
    assert (g.m, g.n, g.k) == (32, 144, 64) and str(g.batch.var) == "n" and g.c.batch == 0
    assert g.a.tensor == "seed:conv0" and g.b.tensor == "conv0~b"
    assert (g.b.rows, g.b.cols) == (1, 64)
    fwd_step, g_step = (s for s in lowered.steps if s.node == "conv0" and s.role in
                        ("fwd", "dweight"))
    assert not any("~" in c.tensor for c in lowered.parts[g_step] if hasattr(c, "free"))
    (h,) = gemms(lowered, "dinput")
    assert (h.m, h.n, h.k) == (16, 64, 288)  # 9.13 gathered: (k, m0, m1) reduced


def test_dense_layer_needs_no_packing():
    g = convc.Graph("d")
    g.output(g.dense(g.input("x", (None, 64)), 32))
    (gemm,) = gemms(convc.lower(g))
    assert "~" not in gemm.a.tensor + gemm.b.tensor


def test_groups_loop_around_the_product():
    (gemm,) = gemms(convc.lower(conv_graph(cin=16, channels=32, groups=2), algorithm="gemm"))
    assert [str(d.var) for d in gemm.outer] == ["g"] and gemm.k == 72


@pytest.mark.parametrize("build", [
    lambda g, x: g.relu(x),
    lambda g, x: g.max_pool(x, 2),
])
def test_what_is_not_a_worthwhile_contraction_stays_direct(build):
    g = convc.Graph("n")
    g.output(build(g, g.input("x", (None, 16, 8, 8))))
    assert gemms(convc.lower(g)) == []


def test_depthwise_is_one_row_per_group_and_image():
    """As products, one row of depth 9 per group: direct loops by default, which cost less."""
    depthwise = conv_graph(cin=16, channels=16, groups=16)
    assert gemms(convc.lower(depthwise)) == []
    (gemm,) = gemms(convc.lower(depthwise, algorithm="gemm"))
    assert gemm.m == 1 and gemm.k == 9 and [str(d.var) for d in gemm.outer] == ["g"]


def test_packing_that_would_take_gigabytes_stays_direct():
    g = convc.Graph("blur")
    x = g.input("x", (1, 1, 1024, 1024))
    g.output(g.conv(x, channels=1, kernel=31, padding=15, bias=False))
    lowered = convc.lower(g, grad=["x", "conv0.weight"])  # lowered, never run
    assert all(not any(isinstance(p, Gemm) for p in parts) for parts in lowered.parts.values())


def test_small_contractions_stay_direct_unless_forced():
    g = conv_graph(cin=1, channels=2, size=2)
    assert gemms(convc.lower(g)) == []
    assert len(gemms(convc.lower(g, algorithm="gemm"))) == 1
    assert gemms(convc.lower(conv_graph(), algorithm="direct")) == []


def test_plan_leaves_non_products_alone():
    lowered = convc.lower(conv_graph(), algorithm="direct")
    shapes = {name: b.shape for name, b in lowered.buffers.items()}
    relu = convc.Graph("r")
    relu.output(relu.relu(relu.input("x", (None, 4))))
    (comp,) = convc.lower(relu).comprehensions["relu0"]
    assert plan(comp, {"x": (None, 4), "relu0": (None, 4)}) is None
    (conv,) = lowered.comprehensions["conv0"]
    assert plan(conv, shapes) is not None


def function(source, name):
    """The text of C function ``name`` and of those its parallel loops call."""
    return "\n".join(c_function_lines(source, name))


@pytest.mark.parametrize("stride", [1, 2])
def test_packing_splits_borders_instead_of_testing_each_element(stride):
    lowered = convc.lower(conv_graph(stride=stride), grad=["x", "conv0.weight"], algorithm="gemm")
    for role in ("fwd", "dweight", "dinput"):
        step = next(s for s in lowered.steps if s.node == "conv0" and s.role == role)
        body = function(lowered.source, lowered.functions[step])
        assert "?" not in body and "%" not in body, body


def test_reads_at_several_shifts_are_tested_at_the_borders_only():
    """A pointwise sum of reads at several shifts, zero outside (Winograd's input transform
    reads a tile's corners): the loops of the variables that move them run in three parts,
    the interior with no test, and the numbers are numpy's."""
    t, u = (sympy.Symbol(v, integer=True, nonnegative=True) for v in "tu")
    x, y = sympy.IndexedBase("x"), sympy.IndexedBase("y")
    comp = Comprehension(y[t, u], ((t, 9), (u, 8)),
                         x[2 * t - 1, u + 1] - 3 * x[2 * t + 1, u - 1] + x[t, u],
                         fill=(("x", 0),))
    nest = lower_comprehension(comp, {"x": (17, 8), "y": (9, 8)})
    stores = [st for st in walk(nest) if isinstance(st, Store)]
    assert len(stores) == 9  # t: border, interior, border; u likewise
    interior = [st for st in stores if not st.value.has(sympy.Piecewise)]
    assert len(interior) == 1
    loops = {(str(lp.var), lp.start, lp.stop) for lp in walk(nest) if isinstance(lp, Loop)}
    assert {("t", 1, 8), ("u", 1, 7)} <= loops
    g = convc.Graph("shifts")
    xs = g.input("x", (None, 1, 17, 8))
    g.output(g.conv(xs, channels=1, kernel=3, padding=1, bias=False, algorithm="winograd"))
    net = convc.compile(g, "float64")
    rng = np.random.default_rng(9)
    X, W = rng.standard_normal((2, 1, 17, 8)), rng.standard_normal((1, 1, 3, 3))
    padded = np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = sum(W[0, 0, a, b] * padded[:, :, a:a + 17, b:b + 8]
                   for a in range(3) for b in range(3))
    np.testing.assert_allclose(net(x=X, **{"conv0.weight": W}), expected, rtol=1e-12,
                               atol=1e-12)


def test_elementwise_ops_run_as_one_loop():
    g = convc.Graph("e")
    g.output(g.relu(g.input("x", (None, 3, 5, 7))))
    body = function(convc.lower(g).source, "convc_e_relu0_fwd")
    assert len(re.findall(r"\bfor \(", body)) == 1 and "105*N" in body


def test_explain_names_the_algorithm():
    text = convc.compile(conv_graph(), grad=True, algorithm="gemm").explain()
    assert "ALGORITHM fwd: gemm 32x64x144 x N (batch n); packed conv0~b" in text
    assert "ALGORITHM dbias: direct loops" in text


def test_unknown_algorithm_is_refused():
    with pytest.raises(convc.GraphError, match="algorithm must be one of"):
        convc.lower(conv_graph(), algorithm="fft-please")


def test_workspace_is_reused_and_threads_get_their_own():
    """Two calls on one thread share a workspace; results do not depend on what the last
    call left there."""
    net = convc.compile(conv_graph(), grad=True, algorithm="gemm")
    params = net.init_params(seed=1)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 3, 16, 8, 8)).astype(np.float32)
    first = net(x=x1, **params)
    net(x=x2, **params)
    again = net(x=x1, **params)
    np.testing.assert_array_equal(first[0], again[0])
    for name in first[1]:
        np.testing.assert_array_equal(first[1][name], again[1][name])


def test_a_padded_input_is_copied_once_then_packed_without_bounds():
    lowered = convc.lower(conv_graph(), grad=["x", "conv0.weight"], algorithm="gemm")
    comps = {c.tensor: c for parts in lowered.parts.values() for c in parts
             if not isinstance(c, Gemm)}
    assert lowered.buffers["conv0~pad"].shape[1:] == (16, 10, 10)  # one cell of zeros around
    assert str(comps["conv0~b"].body.base.label) == "conv0~pad"
    assert str(comps["grad:x~b"].body.base.label) == "grad:x~pad"  # h: the output gradient
    step = next(s for s in lowered.steps if s.node == "conv0" and s.role == "fwd")
    body = function(lowered.source, lowered.functions[step])
    assert "for (int64_t i1 = 0; i1 < 8; ++i1)" in body  # whole rows, constant bounds


def test_a_layer_can_choose_its_own_algorithm():
    g = convc.Graph("mixed")
    x = g.input("x", (None, 16, 8, 8))
    h = g.conv(x, channels=32, kernel=3, padding=1, algorithm="direct")
    g.output(g.conv(h, channels=32, kernel=3, padding=1))
    lowered = convc.lower(g, grad=True)
    by_node = {}
    for step, used in lowered.algorithms.items():
        if step.role != "start":
            by_node.setdefault(step.node, set()).update(used)
    assert by_node["conv0"] == {"direct"}  # its gradients follow it too
    assert by_node["conv1"] - {"direct"}
    assert convc.lower(g, algorithm="gemm").parts  # the module's choice for the others
    with pytest.raises(convc.GraphError, match="conv2.*algorithm must be one of"):
        g.conv(x, channels=4, kernel=3, algorithm="winograd-please")


@pytest.mark.parametrize("kind", ["avg", "max", "depthwise"])
def test_short_windows_are_summed_in_registers_along_the_row(kind):
    """A pooling window or a depthwise kernel: inside the output row's loop each point sums
    (or maxes) its whole window, unrolled, and is stored once; the row's first and last
    points, whose windows reach the padding, run in border loops of their own. Same
    numbers as numpy."""
    g = convc.Graph("rows")
    x = g.input("x", (None, 3, 5, 24))
    if kind == "avg":
        g.output(g.avg_pool(x, 3, stride=1, padding=1, count_include_pad=False))
    elif kind == "max":
        g.output(g.max_pool(x, 3, stride=1, padding=1))
    else:
        g.output(g.conv(x, channels=3, kernel=3, padding=1, groups=3, bias=False))
    net = convc.compile(g, "float64")
    body = function(net.source, net.lowered.functions[net.lowered.steps[0]])
    interior = (r"for \(int64_t i1 = 1; i1 < 23; \+\+i1\) \{\n\s+double acc = [^\n]*\n"
                r"\s+#pragma GCC unroll 3\n\s+for \(int64_t m0 = 0; m0 < 3; \+\+m0\) \{\n"
                r"\s+#pragma GCC unroll 3\n")
    assert re.search(interior, body), body
    assert re.search(r"for \(int64_t i1 = 0; i1 < 1; \+\+i1\)", body)  # the border
    assert "i1 = 23; i1 < 24;" in body
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 3, 5, 24))
    padded = np.pad(xs, ((0, 0), (0, 0), (1, 1), (1, 1)),
                    constant_values=-np.inf if kind == "max" else 0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    if kind == "avg":
        ones = np.lib.stride_tricks.sliding_window_view(
            np.pad(np.ones((5, 24)), 1), (3, 3))
        expected = windows.sum(axis=(4, 5)) / ones.sum(axis=(2, 3))
        got = net(x=xs)
    elif kind == "max":
        expected, got = windows.max(axis=(4, 5)), net(x=xs)
    else:
        w = rng.standard_normal((3, 1, 3, 3))
        expected = np.einsum("ncijab,cab->ncij", windows, w[:, 0])
        got = net(x=xs, **{"conv0.weight": w})
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups,size", [(3, (7, 20)), (1, (30,))])
def test_few_outputs_are_summed_in_registers(groups, size):
    """A depthwise kernel's gradient (9 taps per channel, each a sum over every image and
    position) keeps its taps in accumulators inside the loop over the positions: vector
    accumulators over 8 doubles at a time, summed into the scalar ones at the end, the
    points left over one partial vector. The padding's border rows and columns are written
    out point by point with their tests decided: no test is left, and a tap whose read
    falls in the padding there is not added at all. Also with no channel loop around it
    (one 1-D filter). Same numbers as the adjoint of numpy's correlation."""
    g = convc.Graph("taps")
    x = g.input("x", (None, groups, *size))
    g.output(g.conv(x, channels=groups, kernel=3, padding=1, groups=groups, bias=False))
    net = convc.compile(g, "float64", grad=["conv0.weight"], algorithm="direct")
    step = net.lowered.derivatives("conv0")[0]
    body = function(net.source, net.lowered.functions[step])
    assert "?" not in body and "omp simd" not in body
    last = f"i{len(size) - 1}"
    whole = 1 + (size[-1] - 2) // 8 * 8  # the interior [1, size - 1) in steps of 8
    strips = body.split(f"for (int64_t {last} = 1; {last} < {whole}; {last} += 8) {{")
    centre = f"vacc{3 ** len(size) // 2}"  # the tap every point adds to
    assert len(strips) > 1
    assert f"{centre} += convc_vload_f64(&" in strips[1].split("}")[0]
    left = (size[-1] - 2) % 8
    assert f"{centre} += convc_vload_part_f64(&" in strips[1] and f", {left})" in strips[1]
    assert "acc0 += convc_vsum_f64(&vacc0);" in body
    # the first column of the padding: the taps reading left of it are not there
    first = f"seed_conv0[((n*{groups} + g)*{size[0]} + i0)*{size[1]}]" if len(size) == 2 \
        else "seed_conv0[n*30]"
    corner = [line.strip() for line in body.splitlines() if first in line]
    assert corner and not any(line.startswith(("acc0 ", "acc3 ", "acc6 ")) for line in corner)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((2, groups, *size))
    G = rng.standard_normal((2, groups, *size))
    _, grads = net(x=xs, **{"conv0.weight": np.zeros((groups, 1, *(3,) * len(size))),
                            "grad:conv0": G})
    np.testing.assert_allclose(grads["conv0.weight"], _taps(xs, G, 1), rtol=1e-12,
                               atol=1e-12)


def _taps(xs, G, padding):
    """The gradient of a depthwise 3x3 (or 3) kernel: the adjoint of numpy's correlation."""
    rank = xs.ndim - 2
    padded = np.pad(xs, [(0, 0), (0, 0)] + [(padding, padding)] * rank)
    kernel = (xs.shape[2] + 2 * padding - G.shape[2] + 1,) * rank
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel,
                                                       axis=tuple(range(2, 2 + rank)))
    spatial = "ij"[:rank]
    return np.einsum(f"nc{spatial}...,nc{spatial}->c...", windows, G)[:, None]


@pytest.mark.parametrize("target", ["native", "portable", "scalar"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_partial_vectors_on_every_target(target, dtype, monkeypatch):
    """The partial vector's load (masked with AVX-512, lane by lane elsewhere) reads the
    points left over, and zeros past them, on every target and in both float types."""
    monkeypatch.setenv("CONVC_TARGET", target)
    g = convc.Graph("taps")
    x = g.input("x", (None, 3, 6, 27))
    g.output(g.conv(x, channels=3, kernel=3, padding=1, groups=3, bias=False))
    net = convc.compile(g, dtype, grad=["conv0.weight"], algorithm="direct")
    assert f"convc_vload_part_{dtype[0]}{dtype[-2:]}(&" in net.source
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((3, 3, 6, 27))
    G = rng.standard_normal((3, 3, 6, 27))
    _, grads = net(x=xs.astype(dtype), **{"conv0.weight": np.zeros((3, 1, 3, 3), dtype),
                                          "grad:conv0": G.astype(dtype)})
    tolerance = 1e-12 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(grads["conv0.weight"], _taps(xs, G, 1), rtol=tolerance,
                               atol=tolerance)


@pytest.mark.parametrize("padding,variable", [(5, False), (1, True)])
def test_wide_or_variable_borders_keep_their_tested_loops(padding, variable):
    """A border of more than `BORDER_POINTS` points (padding 5), or of a size known only
    at the call, stays a loop whose reads are tested (an `omp simd` sum); same numbers."""
    g = convc.Graph("taps")
    x = g.input("x", (None, 2, None if variable else 21, 19))
    g.output(g.conv(x, channels=2, kernel=3, padding=padding, groups=2, bias=False))
    net = convc.compile(g, "float64", grad=["conv0.weight"], algorithm="direct")
    body = function(net.source, net.lowered.functions[net.lowered.derivatives("conv0")[0]])
    assert "omp simd" in body and "?" in body
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((2, 2, 21, 19))
    G = rng.standard_normal((2, 2, 21 + 2 * padding - 2, 19 + 2 * padding - 2))
    _, grads = net(x=xs, **{"conv0.weight": np.zeros((2, 1, 3, 3)), "grad:conv0": G})
    np.testing.assert_allclose(grads["conv0.weight"], _taps(xs, G, padding), rtol=1e-12,
                               atol=1e-12)


def test_only_float_sums_of_products_are_read_as_vectors():
    """The vector accumulators read float tensors with vector loads; a sum that reads an
    integer tensor (a one-byte mask) or applies a function keeps scalar accumulators."""
    k, i = sympy.symbols("k i", integer=True, nonnegative=True)
    m, x = sympy.IndexedBase("m"), sympy.IndexedBase("x")
    shapes = {"m": (4, 64), "x": (4, 64), "out": (4,)}

    def vectors(body, integers=frozenset()):
        comp = Comprehension(sympy.IndexedBase("out")[k], ((k, 4),), body, ((i, 64),),
                             Reduction.SUM)
        nest = lower_comprehension(comp, shapes, 16, frozenset(integers))
        updates = [s for s in walk(nest) if isinstance(s, Update)]
        assert len({str(u.var) for u in updates}) >= 4  # the four outputs in registers
        return any(u.value.has(VLoad) for u in updates)

    assert vectors(m[k, i] * x[k, i])
    assert not vectors(m[k, i] * x[k, i], {"m"})
    assert not vectors(sympy.exp(x[k, i]))


def test_an_elementwise_nodes_outputs_are_written_in_one_loop():
    """Comprehensions of one node over the same loops, with straight-line bodies, neither
    reading what the other writes, run in one nest (one pass over their input, one
    parallel region); one that reads the other's output, or sums, keeps its own."""
    i = sympy.Symbol("i", integer=True, nonnegative=True)
    x, y, z, s = (sympy.IndexedBase(n) for n in "xyzs")
    shapes = {"x": (4096,), "y": (4096,), "z": (4096,), "s": (1,)}

    def comp(out, body, reduced=()):
        free = () if reduced else ((i, 4096),)
        return Comprehension(out, free, body, reduced,
                             Reduction.SUM if reduced else Reduction.NONE)

    double, plus = comp(y[i], 2 * x[i]), comp(z[i], x[i] + 1)
    kernel = lower_node("n", ("x",), (double, plus), shapes)
    assert len(kernel.nests) == 1 and isinstance(kernel.nests[0], Loop)
    stores = [st for st in walk(kernel.nests) if isinstance(st, Store)]
    assert [str(st.target.base.label) for st in stores] == ["y", "z"]
    chained = comp(z[i], y[i] + 1)  # reads what the first writes: two loops, in order
    assert len(lower_node("n", ("x",), (double, chained), shapes).nests) == 2
    total = comp(s[0], x[i], reduced=((i, 4096),))
    assert len(lower_node("n", ("x",), (double, total), shapes).nests) >= 2


def test_writes_to_one_tensor_at_elements_apart_share_a_loop():
    """The phases of Winograd's output transform write the even and odd elements of one
    output: never the same element, so one nest writes both (one pass over what they read).
    Writes that can meet (the same elements, or a shift by one) keep their order."""
    i = sympy.Symbol("i", integer=True, nonnegative=True)
    x, y = sympy.IndexedBase("x"), sympy.IndexedBase("y")
    shapes = {"x": (64,), "y": (128,)}

    def phase(target, body):
        return Comprehension(target, ((i, 64),), body)

    even, odd = phase(y[2 * i], x[i]), phase(y[2 * i + 1], 2 * x[i])
    kernel = lower_node("n", ("x",), (even, odd), shapes)
    assert len(kernel.nests) == 1
    assert len([st for st in walk(kernel.nests) if isinstance(st, Store)]) == 2
    for clash in (phase(y[2 * i], 3 * x[i]), phase(y[i + 1], 3 * x[i])):
        assert len(lower_node("n", ("x",), (even, clash), shapes).nests) == 2
    g = convc.Graph("wino")
    g.output(g.conv(g.input("x", (None, 16, 16, 16)), channels=16, kernel=3, padding=1))
    wino = convc.lower(g, algorithm="winograd")
    step = wino.steps[0]
    assert len([p for p in wino.parts[step] if getattr(p, "tensor", "") == "conv0"]) == 4
    writing = [n for n in wino.kernels[step].nests if any(
        isinstance(st, Store) and str(st.target.base.label) == "conv0" for st in walk((n,)))]
    assert len(writing) == 1  # the four phases, one nest


def test_relu_and_its_mask_in_one_pass_give_numpys_numbers():
    g = convc.Graph("relu")
    x = g.input("x", (None, 3, 40))
    g.output(g.relu(x))
    net = convc.compile(g, grad=["x"], num_threads=2)
    forward = function(net.source, net.lowered.functions[net.lowered.steps[0]])
    assert forward.count("for (int64_t") == 1
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((5, 3, 40)).astype(np.float32)
    seed = rng.standard_normal((5, 3, 40)).astype(np.float32)
    out, grads = net(x=xs, **{"grad:relu0": seed})
    np.testing.assert_array_equal(out, np.maximum(xs, 0))
    np.testing.assert_array_equal(grads["x"], np.where(xs > 0, seed, 0))
