"""Variable sizes (section 9.7): one module for inputs of any size.

A ``None`` beyond the batch axis is a size given at call time (``x_H``, ``x_W``). The
module is checked at several sizes against plain numpy (tests/reference.py), against
finite differences in float64, and against the module compiled for each size alone
(``sizes=``); the C must take the sizes as arguments; shapes that do not fit are refused
at call time, graphs that cannot work at graph time.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import convc
import reference as ref
from test_autodiff import check_finite_differences, conv_grads_scatter

SIZES = [(5, 7), (8, 6), (11, 9)]


def network(g: convc.Graph):
    """conv, relu, max pool, strided conv, global average pool, dense: logits."""
    x = g.input("x", (None, 2, None, None))
    h = g.relu(g.conv(x, channels=4, kernel=3, padding=1))
    h = g.max_pool(h, 2)
    h = g.conv(h, channels=4, kernel=3, stride=2, padding=1)
    return g.dense(g.global_avg_pool(h), 3)


def reference(x, p):
    h = np.maximum(ref.conv(x, p["conv0.weight"], p["conv0.bias"], padding=[(1, 1)] * 2), 0)
    h = ref.pool(h, "max", (2, 2), (2, 2), [(0, 0)] * 2, (1, 1))
    h = ref.conv(h, p["conv1.weight"], p["conv1.bias"], stride=2, padding=[(1, 1)] * 2)
    return ref.dense(h.mean(axis=(2, 3)), p["dense0.weight"], p["dense0.bias"])


@pytest.fixture(scope="module")
def train_graph():
    g = convc.Graph("vartrain")
    labels = g.input("y", (None,), dtype="int64")
    g.output(g.softmax_cross_entropy(network(g), labels, name="loss"))
    return g


@pytest.fixture(scope="module")
def train_net(train_graph):
    return convc.compile(train_graph, "float64", grad=["x", *train_graph.parameters()])


@pytest.fixture(scope="module")
def params(train_net):
    rng = np.random.default_rng(1)
    p = train_net.init_params(seed=0)
    return {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in p.items()}


def test_sizes_are_arguments_of_the_module_and_the_c(train_net):
    assert train_net.sizes == ["N", "x_H", "x_W"]
    assert train_net.inputs["x"][2:] == tuple(train_net.lowered.graph.inputs()["x"][2:])
    entry = re.search(rf"int {train_net.lowered.entry}\((.*?)\)\n", train_net.source).group(1)
    assert entry.startswith("int64_t N, int64_t x_H, int64_t x_W, ")
    workspace = re.search(rf"size_t {train_net.lowered.entry}_workspace\((.*?)\)",
                          train_net.source).group(1)
    assert workspace == "int64_t N, int64_t x_H, int64_t x_W"
    explained = train_net.explain()  # shapes and FLOPs as expressions of the sizes
    assert "SHAPES    x (N, 2, x_H, x_W)" in explained and "FLOPS     fwd:" in explained


def test_no_size_is_baked_into_the_c():
    """Compiled for a 9x13 input and generically, the generic C never mentions the fixed
    sizes' derived extents (the conv's 7x11 output)."""
    g = convc.Graph("baked")
    x = g.input("x", (None, 1, None, None))
    g.output(g.max_pool(g.relu(g.conv(x, channels=2, kernel=3, bias=False)), 2))
    generic = convc.lower(g).source
    fixed = convc.lower(g, sizes={"x_H": 9, "x_W": 13}).source
    assert "x_H" in generic and "x_W" in generic
    assert "x_H" not in fixed and "x_W" not in fixed
    for extent in ("< 7;", "< 11;"):  # the conv's output, 7x11
        assert extent in fixed and extent not in generic, extent


@pytest.mark.parametrize("H, W", SIZES)
def test_forward_and_gradients_match_numpy_and_the_specialised_module(train_graph, train_net,
                                                                      params, H, W):
    rng = np.random.default_rng(H * W)
    x = rng.standard_normal((3, 2, H, W))
    y = rng.integers(0, 3, 3)
    loss, grads = train_net(x=x, y=y, **params)
    assert loss == pytest.approx(ref.softmax_cross_entropy(reference(x, params), y), rel=1e-10)
    fixed = convc.compile(train_graph, "float64", grad=["x", *train_graph.parameters()],
                          sizes={"x_H": H, "x_W": W})
    assert fixed.inputs["x"] == (fixed.lowered.graph.inputs()["x"][0], 2, H, W)
    fixed_loss, fixed_grads = fixed(x=x, y=y, **params)
    assert fixed_loss == pytest.approx(loss, rel=1e-12)
    assert set(grads) == set(fixed_grads) == {"x", *params}
    for name in grads:
        np.testing.assert_allclose(grads[name], fixed_grads[name], rtol=1e-10, atol=1e-12)
    # the gradients themselves: by central differences, independent of the derivation
    x = x + 0.05 * np.sign(x)  # away from the relu's and the max's kinks
    check_finite_differences(train_net, {"x": x, "y": y, **params},
                             ["x", *params], {"loss": np.float64(1.0)}, rng, rtol=1e-6)


def test_forward_only_module_matches_numpy_at_every_size(params):
    g = convc.Graph("varfwd")
    g.output(network(g))
    net = convc.compile(g, "float64")
    rng = np.random.default_rng(7)
    for H, W in [*SIZES, (2, 2), (3, 17)]:
        x = rng.standard_normal((2, 2, H, W))
        np.testing.assert_allclose(net(x=x, **params), reference(x, params), rtol=1e-10,
                                   atol=1e-12)


def test_strided_conv_input_gradient_matches_the_scatter_reference():
    """The derived h (9.13) of a strided, dilated, padded conv with symbolic loop bounds."""
    g = convc.Graph("varh")
    x = g.input("x", (None, 2, None, None))
    g.output(g.conv(x, channels=3, kernel=(3, 2), stride=(2, 3), dilation=(1, 2),
                    padding=((1, 2), (0, 1)), bias=False))
    net = convc.compile(g, "float64", grad=["x", "conv0.weight"])
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2, 3, 2))
    for H, W in [(4, 5), (7, 9), (10, 4)]:
        x = rng.standard_normal((2, 2, H, W))
        out = ref.conv(x, w, stride=(2, 3), dilation=(1, 2), padding=[(1, 2), (0, 1)])
        seed = rng.standard_normal(out.shape)
        got, grads = net(x=x, **{"conv0.weight": w, "grad:conv0": seed})
        np.testing.assert_allclose(got, out, rtol=1e-10, atol=1e-12)
        dx, dw, _ = conv_grads_scatter(x, w, seed, (2, 3), (1, 2), [(1, 2), (0, 1)], 1)
        np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["conv0.weight"], dw, rtol=1e-10, atol=1e-12)


def test_pooling_modes_at_several_sizes():
    """ceil mode (a last partial window kept or not, by size), padding, the average's
    divisor near the border: all decided per size at call time."""
    g = convc.Graph("varpool")
    x = g.input("x", (None, 2, None))
    g.output(g.max_pool(x, 3, stride=2, ceil_mode=True, name="mx"),
             g.avg_pool(x, 3, stride=2, padding=1, count_include_pad=False, name="av"),
             g.lp_pool(x, 2, stride=1, padding=1, name="lp"))
    net = convc.compile(g, "float64")
    rng = np.random.default_rng(5)
    for L in (3, 4, 6, 7, 10):
        x = rng.standard_normal((2, 2, L))
        out = net(x=x)
        np.testing.assert_allclose(out["mx"], ref.pool(x, "max", (3,), (2,), [(0, 0)], (1,),
                                                       ceil_mode=True), rtol=1e-12)
        np.testing.assert_allclose(out["av"], ref.pool(x, "avg", (3,), (2,), [(1, 1)], (1,),
                                                       count_include_pad=False), rtol=1e-12)
        np.testing.assert_allclose(out["lp"], ref.pool(x, "lp", (2,), (1,), [(1, 1)], (1,)),
                                   rtol=1e-12)


def test_one_variable_axis_of_a_3d_input():
    g = convc.Graph("var3d")
    x = g.input("vol", (None, 1, 4, None, 3))
    g.output(g.conv(x, channels=2, kernel=(2, 3, 2), padding=(0, 1, 0), bias=False))
    net = convc.compile(g, "float64")
    assert net.sizes == ["N", "vol_H"]
    rng = np.random.default_rng(2)
    w = rng.standard_normal((2, 1, 2, 3, 2))
    for H in (1, 5):
        x = rng.standard_normal((1, 1, 4, H, 3))
        np.testing.assert_allclose(net(vol=x, **{"conv0.weight": w}),
                                   ref.conv(x, w, padding=[(0, 0), (1, 1), (0, 0)]),
                                   rtol=1e-12)


# -- errors at call time ------------------------------------------------------------------------

def test_an_input_too_small_for_a_kernel_is_refused_before_any_c_runs(train_net, params):
    x = np.zeros((2, 2, 1, 6))
    with pytest.raises(convc.ArgumentError, match=r"cannot run on sizes x_H = 1, x_W = 6") \
            as info:
        train_net(x=x, y=np.zeros(2, np.int64), **params)
    assert "'pool0'" in str(info.value)
    assert "window larger than the padded input along spatial axis 0" in str(info.value)


def test_a_kernel_larger_than_the_input_is_refused():
    g = convc.Graph("big")
    x = g.input("x", (None, 1, None))
    g.output(g.conv(x, channels=1, kernel=4, bias=False))
    net = convc.compile(g)
    w = np.ones((1, 1, 4), np.float32)
    assert net(x=np.ones((1, 1, 4), np.float32), **{"conv0.weight": w}).shape == (1, 1, 1)
    with pytest.raises(convc.ArgumentError, match=r"x_L = 3: node 'conv0'.*kernel larger than "
                                                  r"the padded input.*has 3"):
        net(x=np.ones((1, 1, 3), np.float32), **{"conv0.weight": w})


def test_a_zero_size_is_refused(train_net, params):
    with pytest.raises(convc.ArgumentError, match=r"size x_W must be at least 1, found 0"):
        train_net(x=np.zeros((2, 2, 5, 0)), y=np.zeros(2, np.int64), **params)


def test_output_gradient_of_the_wrong_size_names_axis_and_sizes():
    g = convc.Graph("seeded")
    x = g.input("x", (None, 1, None))
    g.output(g.conv(x, channels=1, kernel=3, stride=2, bias=False))
    net = convc.compile(g, "float64", grad=["x"])
    w = {"conv0.weight": np.ones((1, 1, 3))}
    _, grads = net(x=np.ones((1, 1, 9)), **w, **{"grad:conv0": np.ones((1, 1, 4))})
    assert grads["x"].shape == (1, 1, 9)
    with pytest.raises(convc.ArgumentError, match=r"'seed:conv0': axis 2 must have .*x_L.* = "
                                                  r"4 cells, found 5"):
        net(x=np.ones((1, 1, 9)), **w, **{"grad:conv0": np.ones((1, 1, 5))})


def test_a_batch_that_differs_between_inputs(train_net, params):
    with pytest.raises(convc.ArgumentError, match=r"'x': size N is 3 in 'y' but 2 here "
                                                  r"\(axis 0"):
        train_net(x=np.zeros((2, 2, 5, 5)), y=np.zeros(3, np.int64), **params)


# -- errors at graph time -----------------------------------------------------------------------

def test_dense_after_flattening_a_variable_size_says_to_pool_first():
    g = convc.Graph("flat")
    h = g.flatten(g.conv(g.input("x", (None, 1, None, 8)), channels=2, kernel=3))
    assert str(h.shape) == "(N, 12*x_H - 24)"
    with pytest.raises(convc.GraphError, match=r"'dense0'.*features must be a fixed number.*"
                                               r"12\*x_H - 24.*g\.global_avg_pool"):
        g.dense(h, 4)


def test_variable_channels_cannot_feed_a_weight():
    g = convc.Graph("chan")
    x = g.input("x", (None, None, 8))
    assert g.relu(x).shape[1].name == "x_C"
    with pytest.raises(convc.GraphError, match=r"input channels must be a fixed size.*x_C"):
        g.conv(x, channels=2, kernel=3)


def test_same_padding_at_a_stride_needs_a_fixed_size():
    g = convc.Graph("same")
    x = g.input("x", (None, 1, None))
    assert g.conv(x, channels=1, kernel=3, padding="same").shape[2].name == "x_L"
    with pytest.raises(convc.GraphError, match=r"padding 'same' at stride 2 depends on the "
                                               r"input size.*x_L"):
        g.conv(x, channels=1, kernel=3, stride=2, padding="same")


def test_inputs_of_different_variable_sizes_cannot_be_added():
    g = convc.Graph("add")
    a, b = g.input("a", (None, 2, None)), g.input("b", (None, 2, None))
    with pytest.raises(convc.GraphError, match=r"must have the shape of input 0"):
        g.add(a, b)


def test_specialising_checks_names_and_sizes(train_graph):
    with pytest.raises(convc.GraphError, match=r"no variable size x_D; its sizes are N, x_H, "
                                               r"x_W"):
        convc.lower(train_graph, sizes={"x_D": 3})
    with pytest.raises(convc.GraphError, match=r"size x_H must be a positive int, found 0"):
        convc.lower(train_graph, sizes={"x_H": 0})
    with pytest.raises(convc.GraphError, match=r"'pool0'.*window larger than the padded"):
        convc.lower(train_graph, sizes={"x_H": 1})


def test_the_example_runs_every_size_with_one_library(tmp_path):
    from test_examples import REPO, run_example

    proc = run_example(REPO / "examples" / "variable_size.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^ *(\d+)x(\d+) *images: accuracy (\S+)", proc.stdout, re.MULTILINE)
    assert [(h, w) for h, w, _ in rows] == [("12", "12"), ("20", "31"), ("40", "28"),
                                            ("64", "64")]
    assert all(float(a) > 0.9 for _, _, a in rows), proc.stdout  # trained sizes and unseen
    assert "one library served every size: True" in proc.stdout
    found = re.search(r"own \(True\), largest difference (\S+)$", proc.stdout, re.MULTILINE)
    assert found and float(found.group(1)) < 1e-4, proc.stdout


def test_adjoint_identity_of_a_strided_convolution_at_every_size():
    """<c(K, V), G> = <V, h(K, G)> = <K, g(G, V)> for one module at several sizes, with c
    computed in numpy: the derived g and h are the adjoints whatever the size."""
    g = convc.Graph("varadjoint")
    x = g.input("x", (None, 2, None, None))
    g.output(g.conv(x, channels=3, kernel=(3, 2), stride=(2, 1), padding=((1, 0), (1, 1)),
                    bias=False))
    net = convc.compile(g, "float64", grad=["x", "conv0.weight"])
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2, 3, 2))
    pads = [(1, 0), (1, 1)]
    for size in SIZES:
        v = rng.standard_normal((2, 2, *size))
        c = ref.conv(v, w, None, stride=(2, 1), padding=pads)
        G = rng.standard_normal(c.shape)
        out, grads = net(x=v, **{"conv0.weight": w, "grad:conv0": G})
        np.testing.assert_allclose(out, c, rtol=1e-12, atol=1e-12)
        lhs = np.vdot(c, G)
        scale = np.linalg.norm(c) * np.linalg.norm(G)
        assert abs(lhs - np.vdot(v, grads["x"])) <= 1e-10 * scale
        assert abs(lhs - np.vdot(w, grads["conv0.weight"])) <= 1e-10 * scale
        assert abs(lhs) > 1e-6 * scale
