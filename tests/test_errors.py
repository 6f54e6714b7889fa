"""Error messages of the graph layer: one test per user-facing `GraphError`.

Each message must name the node, show the expected and the actual values, and point at the
user's own ``file:line`` (here: this file and the line of the failing call). A refused call
must leave the graph as it was, so the same graph still compiles and runs afterwards.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import convc

THIS = Path(__file__).name


def state(g: convc.Graph):
    """Everything a refused call must leave unchanged."""
    return ([(n.name, n.shape, n.inputs) for n in g.nodes()], g.parameters(), g.inputs(),
            g.outputs)


@contextmanager
def refused(g: convc.Graph, pattern: str):
    """``pytest.raises(GraphError, match=pattern)``; then the message must give this file and
    the line of the failing call, and ``g`` must be unchanged."""
    before = state(g)
    with pytest.raises(convc.GraphError, match=pattern) as info:
        yield info
    located(info)
    assert state(g) == before, "a refused call changed the graph"


def located(info) -> None:
    """The message gives this file and the line of the call that raised."""
    call = [e for e in info.traceback if Path(str(e.path)).name == THIS][-1]
    assert f"{THIS}:{call.lineno + 1}" in str(info.value), str(info.value)


def says(info, *parts: str) -> None:
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.fixture
def net():
    g = convc.Graph("main")
    return SimpleNamespace(
        g=g,
        x1=g.input("x1", (None, 4, 7)),
        x2=g.input("x2", (None, 4, 5, 5)),
        x3=g.input("x3", (None, 2, 4, 4, 4)),
        flat=g.input("flat", (None, 6)),
    )


def test_graph_error_is_a_value_error():
    assert issubclass(convc.GraphError, ValueError)
    assert issubclass(convc.GraphError, convc.ConvcError)
    g = convc.Graph("v")
    with pytest.raises(ValueError, match="kernel larger"):
        g.conv(g.input("x", (None, 1, 2)), channels=1, kernel=3)


# -- convolution arguments -----------------------------------------------------------------------

def test_kernel_larger_than_the_input(net):
    with refused(net.g, "kernel larger than the padded input") as info:
        net.g.conv(net.x2, channels=2, kernel=(3, 4), dilation=(1, 2), name="big")
    # along axis 1 the kernel spans 2·3 + 1 = 7 cells; the input has 5
    says(info, "'big'", "spatial axis 1", "spans 7", "(N, 4, 5, 5)", "has 5")


def test_kernel_larger_than_the_padded_input(net):
    with refused(net.g, "kernel larger than the padded input") as info:
        net.g.conv(net.x1, channels=2, kernel=10, padding=1)
    says(info, "'conv0'", "spatial axis 0", "spans 10", "(1, 1)", "has 9")


def test_input_channels_not_divisible_by_groups(net):
    with refused(net.g, "input channels must be divisible by groups=3") as info:
        net.g.conv(net.x2, channels=6, kernel=1, groups=3, name="grouped")
    says(info, "'grouped'", "found 4", "(N, 4, 5, 5)")


def test_output_channels_not_divisible_by_groups(net):
    with refused(net.g, "output channels must be divisible by groups=2") as info:
        net.g.conv(net.x2, channels=3, kernel=1, groups=2, name="grouped")
    says(info, "'grouped'", "found 3")


@pytest.mark.parametrize("what, value, shown", [
    ("stride", 0, "found 0"), ("stride", -2, "found -2"), ("stride", (1, 0), "found (1, 0)"),
    ("dilation", 0, "found 0"), ("dilation", (0, 1), "found (0, 1)"),
    ("kernel", 0, "found 0"), ("kernel", -3, "found -3"), ("kernel", (2, 0), "found (2, 0)"),
])
def test_non_positive_stride_dilation_or_kernel(net, what, value, shown):
    args = {"channels": 2, "kernel": 2, "name": "c"}
    args[what] = value
    with refused(net.g, f"{what} must be integers >= 1") as info:
        net.g.conv(net.x2, **args)
    says(info, "'c'", shown)


@pytest.mark.parametrize("what, value", [("channels", 0), ("channels", -1), ("groups", 0)])
def test_non_positive_channels_or_groups(net, what, value):
    args = {"channels": 2, "kernel": 2, "name": "c"}
    args[what] = value
    with refused(net.g, f"{what} must be a positive int") as info:
        net.g.conv(net.x2, **args)
    says(info, "'c'", f"found {value}")


def test_non_positive_pool_window(net):
    with refused(net.g, "window must be integers >= 1") as info:
        net.g.max_pool(net.x2, (2, 0), name="p")
    says(info, "'p'", "found (2, 0)")


def test_non_positive_dense_units(net):
    with refused(net.g, "units must be a positive int") as info:
        net.g.dense(net.flat, 0, name="d")
    says(info, "'d'", "found 0")


# -- ranks ---------------------------------------------------------------------------------------

def test_2d_kernel_on_a_1d_input(net):
    with refused(net.g, r"kernel must be an int or a tuple of 1 ints") as info:
        net.g.conv(net.x1, channels=2, kernel=(3, 3), name="c")
    says(info, "'c'", "found (3, 3)")


def test_3d_kernel_on_a_2d_input(net):
    with refused(net.g, r"kernel must be an int or a tuple of 2 ints") as info:
        net.g.conv(net.x2, channels=2, kernel=(1, 1, 1), name="c")
    says(info, "'c'", "found (1, 1, 1)")


def test_per_axis_stride_of_the_wrong_length(net):
    with refused(net.g, r"stride must be an int or a tuple of 3 ints") as info:
        net.g.conv(net.x3, channels=2, kernel=1, stride=(1, 2), name="c")
    says(info, "'c'", "found (1, 2)")


def test_per_axis_padding_of_the_wrong_length(net):
    with refused(net.g, r"padding must be .* 2 \(before, after\) pairs") as info:
        net.g.conv(net.x2, channels=2, kernel=1, padding=(1, 1, 1), name="c")
    says(info, "'c'", "found (1, 1, 1)")


def test_rank_2_input_to_conv(net):
    with refused(net.g, r"expected a 3-d \(N, C, spatial\) or 4-d") as info:
        net.g.conv(net.flat, channels=2, kernel=1, name="c")
    says(info, "'c'", "found shape (N, 6)")


@pytest.mark.parametrize("layer", ["max_pool", "avg_pool", "lp_pool"])
def test_rank_2_input_to_pool(net, layer):
    with refused(net.g, r"expected a 3-d \(N, C, spatial\)") as info:
        getattr(net.g, layer)(net.flat, 2, name="p")
    says(info, "'p'", "found shape (N, 6)")


def test_rank_2_input_to_global_pool(net):
    with refused(net.g, r"expected a 3-d \(N, C, spatial\)") as info:
        net.g.global_avg_pool(net.flat, name="gp")
    says(info, "'gp'", "found shape (N, 6)")


def test_dense_on_a_4d_input(net):
    with refused(net.g, r"expected a 2-d input \(N, features\)") as info:
        net.g.dense(net.x2, 10, name="fc")
    says(info, "'fc'", "found shape (N, 4, 5, 5)", "flatten")


# -- padding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding", ["SAME", "causal", ""])
def test_unknown_padding_string(net, padding):
    with refused(net.g, "unknown padding") as info:
        net.g.conv(net.x2, channels=2, kernel=3, padding=padding, name="c")
    says(info, "'c'", repr(padding), "'valid'", "'same'", "'full'")


@pytest.mark.parametrize("padding, shown", [
    (-1, "-1"), ((1, -1), "(1, -1)"), (((0, -1), (0, 0)), "((0, -1), (0, 0))"),
    (((0, 0), (-2, 1)), "((0, 0), (-2, 1))")])
def test_negative_padding(net, padding, shown):
    with refused(net.g, r"padding must be .* >= 0") as info:
        net.g.conv(net.x2, channels=2, kernel=3, padding=padding, name="c")
    says(info, "'c'", shown)


def test_max_pool_window_covering_only_padding(net):
    with refused(net.g, "covers only padding") as info:
        net.g.max_pool(net.x2, 2, padding=2, name="mp")
    says(info, "'mp'", "window 0", "spatial axis 0", "padding (2, 2)", "window 2")


def test_average_ignoring_padding_with_a_window_covering_only_padding(net):
    with refused(net.g, "covers only padding") as info:
        net.g.avg_pool(net.x1, 3, stride=3, padding=((0, 5),), count_include_pad=False,
                       name="ap")
    # the windows start at 0, 3, 6, 9: the last reads cells 9..11 of an input of 7
    says(info, "'ap'", "window 3 along spatial axis 0", "padding (0, 5)")


# -- names ---------------------------------------------------------------------------------------

def test_duplicate_name_of_an_input(net):
    with refused(net.g, "duplicate node name 'x2'") as info:
        net.g.relu(net.x1, name="x2")
    says(info, "'main'")


def test_duplicate_name_of_a_layer(net):
    net.g.relu(net.x1, name="act")
    with refused(net.g, "duplicate node name 'act'"):
        net.g.tanh(net.x1, name="act")


def test_duplicate_input_name(net):
    with refused(net.g, "duplicate node name 'x1'"):
        net.g.input("x1", (None, 3))


def test_a_layer_named_like_a_parameter_to_come(net):
    net.g.relu(net.x1, name="conv0.weight")
    with refused(net.g, r"duplicate node name 'conv0\.weight'"):
        net.g.conv(net.x1, channels=2, kernel=3)


def test_a_layer_named_like_an_existing_parameter(net):
    net.g.conv(net.x1, channels=2, kernel=3, name="c")
    with refused(net.g, r"duplicate node name 'c\.bias'"):
        net.g.relu(net.x1, name="c.bias")


@pytest.mark.parametrize("name", [3, b"x", 1.5, ("a",)])
def test_a_name_that_is_not_a_string(net, name):
    with refused(net.g, "a node name must be a non-empty string") as info:
        net.g.relu(net.x1, name=name)
    says(info, f"got {name!r}")


def test_an_input_name_that_is_not_a_string(net):
    with refused(net.g, "a node name must be a non-empty string") as info:
        net.g.input(b"x", (None, 3))
    says(info, "got b'x'")


def test_an_empty_name(net):
    with refused(net.g, "a node name must be a non-empty string") as info:
        net.g.conv(net.x1, channels=2, kernel=3, name="")
    says(info, "got ''")


def test_an_empty_input_name(net):
    with refused(net.g, "a node name must be a non-empty string"):
        net.g.input("", (None, 3))


@pytest.mark.parametrize("name", ["", 3])
def test_a_graph_name_that_is_not_a_non_empty_string(name):
    with pytest.raises(convc.GraphError, match="graph name must be a non-empty string") as info:
        convc.Graph(name)
    says(info, f"got {name!r}", THIS)


# -- tensors from elsewhere and mismatched inputs -------------------------------------------------

def test_a_tensor_from_another_graph(net):
    other = convc.Graph("other")
    foreign = other.input("x1", (None, 4, 7))  # same name and shape as net.x1
    with refused(net.g, "expected a Tensor of graph 'main'") as info:
        net.g.add(net.x1, foreign, name="sum")
    # the message must tell the two graphs apart: the tensor is x1 of graph 'other'
    says(info, "'other'", "'sum'")


def test_something_that_is_not_a_tensor(net):
    with refused(net.g, "expected a Tensor of graph 'main'") as info:
        net.g.relu(np.zeros(3))
    says(info, "array(")


def test_add_of_mismatched_shapes(net):
    y = net.g.input("y", (None, 4, 5, 4))
    with refused(net.g, "input 1 must have the shape of input 0") as info:
        net.g.add(net.x2, y, name="sum")
    says(info, "'sum'", "expected (N, 4, 5, 5)", "found (N, 4, 5, 4)")


def test_add_of_a_float_and_an_integer_tensor(net):
    y = net.g.input("y", (None, 4, 5, 5), dtype="int64")
    with refused(net.g, "input 1 must be a float tensor") as info:
        net.g.add(net.x2, y, name="sum")
    says(info, "'sum'", "int64")


def test_cross_entropy_with_float_labels(net):
    labels = net.g.input("labels", (None,))
    with refused(net.g, r"labels must be an int64 tensor of shape \(N,\)") as info:
        net.g.softmax_cross_entropy(net.flat, labels, name="loss")
    says(info, "'loss'", "found shape (N,) of dtype float")


@pytest.mark.parametrize("shape, shown", [((None, 6), "(N, 6)"), ((None, 1), "(N, 1)"),
                                          ((8,), "(8,)")])
def test_cross_entropy_with_a_wrong_label_shape(net, shape, shown):
    labels = net.g.input("labels", shape, dtype="int64")
    with refused(net.g, r"labels must be an int64 tensor of shape \(N,\)") as info:
        net.g.softmax_cross_entropy(net.flat, labels, name="loss")
    says(info, "'loss'", f"found shape {shown} of dtype int64")


def test_cross_entropy_with_logits_of_rank_4_and_one_label_per_example(net):
    # logits (N, C, H, W) take a label map (N, H, W): one label per position
    labels = net.g.input("labels", (None,), dtype="int64")
    with refused(net.g, r"labels must be an int64 tensor of shape \(N, 5, 5\)") as info:
        net.g.softmax_cross_entropy(net.x2, labels, name="loss")
    says(info, "'loss'", "found shape (N,) of dtype int64")


def test_cross_entropy_with_logits_of_rank_1(net):
    logits = net.g.input("scores", (None,))
    labels = net.g.input("labels", (None,), dtype="int64")
    with refused(net.g, r"logits must be a float tensor \(N, classes\)") as info:
        net.g.softmax_cross_entropy(logits, labels, name="loss")
    says(info, "'loss'", "found shape (N,)")


# -- inputs --------------------------------------------------------------------------------------

def test_size_names_that_clash(net):
    net.g.input("a.b", (None, 3, None))
    with refused(net.g, r"its size a_b_L has the name of a size of input 'a.b'") as info:
        net.g.input("a_b", (None, 2, None))
    says(info, "'a_b'", "rename one of them")


@pytest.mark.parametrize("shape, axis, value", [((None, 0), 1, "0"), ((None, 3, -2), 2, "-2"),
                                                ((None, 2.0), 1, "2.0")])
def test_a_size_that_is_not_a_positive_int(net, shape, axis, value):
    with refused(net.g, "sizes must be positive ints") as info:
        net.g.input("bad", shape)
    says(info, "'bad'", f"found {value} at axis {axis}")


def test_an_input_dtype_that_is_not_supported(net):
    with refused(net.g, "dtype must be one of") as info:
        net.g.input("bad", (None, 3), dtype="int32")
    says(info, "'bad'", "'float'", "'int64'", "found 'int32'")


# -- at compile time -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_compile_with_an_unsupported_dtype(net, dtype):
    net.g.output(net.g.relu(net.x1))
    with refused(net.g, "dtype must be one of") as info:
        convc.compile(net.g, dtype)
    says(info, "'float32'", "'float64'", f"found {dtype!r}")


def test_compile_a_graph_with_no_outputs(net):
    net.g.relu(net.x1)
    with refused(net.g, "has no outputs") as info:
        convc.compile(net.g)
    says(info, "'main'", "g.output")


def test_an_output_that_is_an_input(net):
    # refused by g.output or, at the latest, by compile; either way at the user's line
    with pytest.raises(convc.GraphError, match="is a graph input or parameter") as info:
        net.g.output(net.x1)
        convc.compile(net.g)
    located(info)
    says(info, "'x1'")


def test_an_output_that_is_a_parameter(net):
    net.g.output(net.g.conv(net.x1, channels=2, kernel=3))
    with pytest.raises(convc.GraphError, match="is a graph input or parameter") as info:
        net.g.output(net.g.tensor("conv0.weight"))
        convc.compile(net.g)
    located(info)
    says(info, "'conv0.weight'")


def test_an_output_given_twice(net):
    r = net.g.relu(net.x1, name="r")
    net.g.output(r)
    with refused(net.g, "'r' is already an output"):
        net.g.output(r)


# -- after a refused call ------------------------------------------------------------------------

def test_a_refused_call_does_not_use_up_a_default_name(net):
    with pytest.raises(convc.GraphError):
        net.g.conv(net.x1, channels=2, kernel=99)
    with pytest.raises(convc.GraphError):
        net.g.relu(net.x1, name=3)
    assert net.g.conv(net.x1, channels=2, kernel=3).name == "conv0"
    assert "conv0.weight" in net.g.parameters()


def test_the_graph_compiles_and_runs_after_refused_calls():
    g = convc.Graph("survivor")
    x = g.input("x", (None, 2, 6))
    labels = g.input("labels", (None,), dtype="int64")
    y = g.input("y", (None, 2, 5))
    foreign = convc.Graph("other").input("x", (None, 2, 6))
    g.relu(x, name="taken")
    g.relu(x, name="q.bias")
    bad_calls = [
        lambda: g.conv(x, channels=3, kernel=7, name="c"),
        lambda: g.conv(x, channels=3, kernel=2, groups=2, name="c"),
        lambda: g.conv(x, channels=3, kernel=2, padding="SAME", name="c"),
        lambda: g.conv(x, channels=3, kernel=2, padding=-1, name="c"),
        lambda: g.conv(x, channels=3, kernel=(2, 2), name="c"),
        lambda: g.conv(x, channels=3, kernel=2, name="taken"),
        lambda: g.conv(x, channels=3, kernel=2, name="q"),
        lambda: g.dense(x, 3, name="d"),
        lambda: g.max_pool(x, 2, padding=2, name="p"),
        lambda: g.softmax_cross_entropy(x, labels, name="loss"),
        lambda: g.add(x, y, name="s"),
        lambda: g.relu(foreign, name="r"),
        lambda: g.input("z", (None, 0)),
        lambda: g.relu(x, name=3),
    ]
    for call in bad_calls:
        before = state(g)
        with pytest.raises(convc.GraphError):
            call()
        assert state(g) == before
    # the names the refused calls asked for are still free
    c = g.conv(x, channels=3, kernel=2, name="c")
    d = g.dense(g.flatten(g.relu(c, name="r")), 4, name="d")
    g.output(d, g.softmax_cross_entropy(d, labels, name="loss"))
    assert list(g.parameters()) == ["c.weight", "c.bias", "d.weight", "d.bias"]
    net = convc.compile(g)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((3, 2, 6)).astype(np.float32)
    ys = np.array([0, 3, 1])
    params = net.init_params(1)
    params["c.bias"] = rng.standard_normal(3).astype(np.float32)
    params["d.bias"] = rng.standard_normal(4).astype(np.float32)
    out = net(x=xs, labels=ys, y=np.zeros((3, 2, 5), np.float32), **params)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    conv = p64["c.bias"][None, :, None] + sum(
        np.einsum("kc,ncl->nkl", p64["c.weight"][:, :, m], xs[:, :, m:m + 5]) for m in range(2))
    dense = np.maximum(conv, 0).reshape(3, 15) @ p64["d.weight"].T + p64["d.bias"]
    np.testing.assert_allclose(out["d"], dense, rtol=1e-5, atol=1e-5)
    shifted = dense - dense.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out["loss"], -logp[np.arange(3), ys].mean(), rtol=1e-5)


def test_messages_quote_names_with_repr():
    """A node name with a quote or a newline stays readable and unambiguous in a message."""
    g = convc.Graph("quotes")
    x = g.input("x", (None, 1, 3))
    with pytest.raises(convc.GraphError) as info:
        g.conv(x, channels=1, kernel=5, name="it's\nmine")
    assert re.search(r"node \"it's\\nmine\"", str(info.value)), str(info.value)
