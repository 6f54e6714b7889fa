"""Graph layer: shape inference against the closed-form formulas, parameters and their
shapes, default node names and `Tensor.shape`. Nothing here compiles.

The formulas are written out below from the README's conventions, independently of convc:

* convolution, per spatial axis: ``(size + before + after - d·(k - 1) - 1) // s + 1``;
  ``"same"`` gives ``ceil(size / s)`` (total padding ``max((out - 1)·s + d·(k - 1) + 1 - size,
  0)``, the odd cell after), ``"full"`` pads ``d·(k - 1)`` on both sides;
* pooling: ``(P - E) // s + 1`` in floor mode with ``P`` the padded size and ``E`` the window's
  extent; ``ceil((P - E) / s) + 1`` in ceil mode, minus one when the last window would start at
  or past ``size + before`` (PyTorch's rule).
"""

from __future__ import annotations

import itertools
import math

import pytest

import convc

# -- the closed forms ----------------------------------------------------------------------------


def extent(k: int, d: int) -> int:
    return d * (k - 1) + 1


def pad_pairs(padding, sizes, kernels, strides, dilations) -> list[tuple[int, int]]:
    rank = len(sizes)
    if padding == "valid":
        return [(0, 0)] * rank
    if padding == "full":
        return [(extent(k, d) - 1,) * 2 for k, d in zip(kernels, dilations)]
    if padding == "same":
        pairs = []
        for size, k, s, d in zip(sizes, kernels, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + extent(k, d) - size, 0)
            pairs.append((total // 2, total - total // 2))
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def per_axis(value, rank: int) -> list[int]:
    return [value] * rank if isinstance(value, int) else list(value)


def conv_sizes(sizes, kernel, stride=1, padding="valid", dilation=1) -> list[int]:
    rank = len(sizes)
    ks, ss, ds = per_axis(kernel, rank), per_axis(stride, rank), per_axis(dilation, rank)
    pads = pad_pairs(padding, sizes, ks, ss, ds)
    return [(n + lo + hi - extent(k, d)) // s + 1
            for n, k, s, d, (lo, hi) in zip(sizes, ks, ss, ds, pads)]


def pool_size(size: int, w: int, s: int, lo: int, hi: int, d: int, ceil_mode: bool) -> int:
    padded, e = size + lo + hi, extent(w, d)
    if not ceil_mode:
        return (padded - e) // s + 1
    out = math.ceil((padded - e) / s) + 1
    return out - 1 if (out - 1) * s >= size + lo else out


def pool_sizes(sizes, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    rank = len(sizes)
    ws, ds = per_axis(window, rank), per_axis(dilation, rank)
    ss = ws if stride is None else per_axis(stride, rank)
    pads = pad_pairs(padding, sizes, ws, ss, ds)
    return [pool_size(n, w, s, lo, hi, d, ceil_mode)
            for n, w, s, d, (lo, hi) in zip(sizes, ws, ss, ds, pads)]


def batch_and(shape) -> tuple[str, tuple]:
    """``(N, 4, 6)`` as ``("N", (4, 6))``, the batch symbol by its name."""
    return str(shape[0]), tuple(int(d) for d in shape[1:])


# -- convolution ---------------------------------------------------------------------------------

# (input shape, conv arguments, the expected output shape after the batch, worked by hand)
CONV_CASES = [
    ((3, 10), {"channels": 4, "kernel": 3}, (4, 8)),
    ((3, 10), {"channels": 4, "kernel": 3, "stride": 2}, (4, 4)),
    ((3, 10), {"channels": 4, "kernel": 3, "stride": 2, "padding": 1}, (4, 5)),
    ((3, 10), {"channels": 2, "kernel": 3, "dilation": 2}, (2, 6)),
    ((3, 10), {"channels": 2, "kernel": 4, "padding": "same"}, (2, 10)),
    ((3, 10), {"channels": 2, "kernel": 3, "stride": 3, "padding": "same"}, (2, 4)),
    ((3, 10), {"channels": 2, "kernel": 3, "dilation": 2, "padding": "full"}, (2, 14)),
    ((3, 10), {"channels": 2, "kernel": 3, "padding": ((2, 0),)}, (2, 10)),
    ((1, 5), {"channels": 1, "kernel": 5}, (1, 1)),
    ((1, 5), {"channels": 1, "kernel": 1, "stride": 7}, (1, 1)),
    ((1, 5), {"channels": 1, "kernel": 2, "stride": 2, "padding": "same", "dilation": 3}, (1, 3)),
    ((3, 28, 28), {"channels": 6, "kernel": 5}, (6, 24, 24)),
    ((3, 28, 28), {"channels": 6, "kernel": (3, 5), "stride": (1, 2), "padding": (1, 2)},
     (6, 28, 14)),
    ((3, 7, 8), {"channels": 3, "kernel": 3, "stride": 2, "padding": "same", "groups": 3},
     (3, 4, 4)),
    ((3, 7, 8), {"channels": 3, "kernel": 2, "dilation": (2, 1), "padding": ((0, 1), (2, 3))},
     (3, 6, 12)),
    ((3, 7, 8), {"channels": 5, "kernel": (2, 3), "padding": "full"}, (5, 8, 10)),
    ((4, 7, 8), {"channels": 6, "kernel": (1, 1), "stride": (3, 5), "groups": 2}, (6, 3, 2)),
    ((2, 5, 6, 7), {"channels": 4, "kernel": 3}, (4, 3, 4, 5)),
    ((2, 7, 6, 9), {"channels": 4, "kernel": 3, "stride": (2, 1, 3), "padding": 1,
                        "dilation": (1, 2, 1)}, (4, 4, 4, 3)),
    ((2, 5, 5, 7), {"channels": 1, "kernel": 2, "stride": 2, "padding": "same"}, (1, 3, 3, 4)),
]


@pytest.mark.parametrize("shape, args, expected", CONV_CASES)
def test_conv_shape_table(shape, args, expected):
    # the hand-worked value and the closed form agree, then convc agrees with both
    spatial = conv_sizes(shape[1:], args["kernel"], args.get("stride", 1),
                         args.get("padding", "valid"), args.get("dilation", 1))
    assert (args["channels"], *spatial) == expected
    g = convc.Graph("conv_table")
    t = g.conv(g.input("x", (None, *shape)), **args)
    assert batch_and(t.shape) == ("N", expected)


def test_conv_shape_sweep_1d():
    """Every small 1-D case: convc's size is the formula's, and a kernel that does not fit
    the padded input is a GraphError exactly when the formula says so."""
    g = convc.Graph("conv_sweep")
    inputs = {n: g.input(f"x{n}", (None, 1, n)) for n in range(1, 8)}
    paddings = ["valid", "same", "full", 0, 1, 2, ((0, 2),), ((3, 0),)]
    checked = refused = 0
    for n, k, s, d, p in itertools.product(range(1, 8), range(1, 5), range(1, 4), range(1, 4),
                                           paddings):
        (lo, hi), = pad_pairs(p, [n], [k], [s], [d])
        if n + lo + hi < extent(k, d):
            with pytest.raises(convc.GraphError, match="kernel larger than the padded input"):
                g.conv(inputs[n], channels=1, kernel=k, stride=s, padding=p, dilation=d)
            refused += 1
            continue
        t = g.conv(inputs[n], channels=1, kernel=k, stride=s, padding=p, dilation=d)
        assert t.shape[2] == conv_sizes([n], k, s, p, d)[0], (n, k, s, d, p)
        if p == "same":
            assert t.shape[2] == math.ceil(n / s)
        checked += 1
    assert checked > 1000 and refused > 100


def test_conv_shape_keeps_a_fixed_batch():
    g = convc.Graph("fixed_batch")
    t = g.conv(g.input("x", (5, 3, 9, 9)), channels=2, kernel=3, stride=2)
    assert t.shape == (5, 2, 4, 4)


# -- pooling -------------------------------------------------------------------------------------

POOL_CASES = [
    # (kind, input shape, arguments, expected output shape after the batch)
    ("max", (3, 7, 7), {"window": 2}, (3, 3, 3)),
    ("max", (3, 7, 7), {"window": 2, "ceil_mode": True}, (3, 4, 4)),
    ("max", (2, 6), {"window": 3, "stride": 2, "padding": 1}, (2, 3)),
    ("max", (2, 6), {"window": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 4)),
    # PyTorch's rule: the fourth window would start at 6 >= 5 + 1, so it is dropped
    ("max", (2, 5), {"window": 2, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 3)),
    ("avg", (2, 5), {"window": 2, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 3)),
    ("max", (1, 9), {"window": 3, "dilation": 2}, (1, 2)),
    ("max", (1, 9), {"window": 3, "dilation": 2, "ceil_mode": True}, (1, 3)),
    ("avg", (1, 9), {"window": 3, "stride": 1, "dilation": 2}, (1, 5)),
    ("avg", (4, 8, 8), {"window": (2, 4), "stride": (2, 1)}, (4, 4, 5)),
    ("avg", (4, 8, 8), {"window": 3, "padding": 1, "count_include_pad": False}, (4, 3, 3)),
    ("avg", (1, 5, 5), {"window": 1, "stride": 1}, (1, 5, 5)),
    ("avg", (1, 4, 4), {"window": 3, "stride": 2, "padding": ((0, 2), (1, 1))}, (1, 2, 2)),
    ("lp", (2, 7, 7), {"window": 3, "stride": 2}, (2, 3, 3)),
    ("lp", (2, 7, 7), {"window": 3, "stride": 2, "ceil_mode": True}, (2, 3, 3)),
    ("lp", (2, 8, 8), {"window": 3, "stride": 2, "ceil_mode": True}, (2, 4, 4)),
    ("max", (2, 5, 6, 7), {"window": 2}, (2, 2, 3, 3)),
    ("max", (2, 5, 6, 7), {"window": 2, "ceil_mode": True}, (2, 3, 3, 4)),
    ("avg", (2, 5, 6, 7), {"window": (1, 2, 3), "stride": 1, "padding": (0, 1, 1)}, (2, 5, 7, 7)),
]


@pytest.mark.parametrize("kind, shape, args, expected", POOL_CASES)
def test_pool_shape_table(kind, shape, args, expected):
    spatial = pool_sizes(shape[1:], args["window"], args.get("stride"), args.get("padding", 0),
                         args.get("dilation", 1), args.get("ceil_mode", False))
    assert (shape[0], *spatial) == expected
    g = convc.Graph("pool_table")
    t = getattr(g, f"{kind}_pool")(g.input("x", (None, *shape)), **args)
    assert batch_and(t.shape) == ("N", expected)


def only_padding(size, w, s, lo, hi, d, out) -> bool:
    """Whether some window reads no cell of the input (all its taps in the padding)."""
    return any(all(not 0 <= s * j + d * m - lo < size for m in range(w)) for j in range(out))


def test_pool_shape_sweep_1d():
    """Small 1-D pools in both modes against the formula; max pooling is refused exactly
    when a window would see only padding, and every kind when the window cannot fit."""
    g = convc.Graph("pool_sweep")
    inputs = {n: g.input(f"x{n}", (None, 1, n)) for n in range(1, 7)}
    counts = {"ok": 0, "padding only": 0, "too big": 0}
    for n, w, s, d, lo, hi, ceil_mode in itertools.product(
            range(1, 7), range(1, 4), range(1, 4), range(1, 3), range(3), range(3),
            (False, True)):
        args = {"stride": s, "padding": ((lo, hi),), "dilation": d, "ceil_mode": ceil_mode}
        if n + lo + hi < extent(w, d):
            for kind in ("max", "avg", "lp"):
                with pytest.raises(convc.GraphError, match="window larger than the padded"):
                    getattr(g, f"{kind}_pool")(inputs[n], w, **args)
            counts["too big"] += 1
            continue
        out = pool_size(n, w, s, lo, hi, d, ceil_mode)
        for kind in ("avg", "lp"):
            t = getattr(g, f"{kind}_pool")(inputs[n], w, **args)
            assert t.shape[2] == out, (kind, n, w, s, d, lo, hi, ceil_mode)
        if only_padding(n, w, s, lo, hi, d, out):
            with pytest.raises(convc.GraphError, match="covers only padding"):
                g.max_pool(inputs[n], w, **args)
            counts["padding only"] += 1
        else:
            assert g.max_pool(inputs[n], w, **args).shape[2] == out
            counts["ok"] += 1
    assert counts["ok"] > 500 and counts["padding only"] > 20 and counts["too big"] > 20


@pytest.mark.parametrize("shape", [(3, 9), (3, 4, 5), (2, 3, 4, 5)])
def test_global_pools(shape):
    g = convc.Graph("global")
    x = g.input("x", (None, *shape))
    assert batch_and(g.global_max_pool(x).shape) == ("N", (shape[0],))
    assert batch_and(g.global_avg_pool(x).shape) == ("N", (shape[0],))


# -- flatten, dense and the rest -----------------------------------------------------------------

@pytest.mark.parametrize("shape, flat", [((7,), 7), ((3, 4), 12), ((3, 4, 5), 60),
                                         ((2, 3, 4, 5), 120), ((1, 1, 1, 1, 1), 1)])
def test_flatten(shape, flat):
    g = convc.Graph("flatten")
    assert batch_and(g.flatten(g.input("x", (None, *shape))).shape) == ("N", (flat,))


def test_dense_after_conv_and_flatten():
    g = convc.Graph("head")
    x = g.input("x", (None, 3, 12, 12))
    h = g.max_pool(g.relu(g.conv(x, channels=8, kernel=3)), 2)   # (N, 8, 5, 5)
    f = g.flatten(h)
    y = g.dense(f, 10)
    assert batch_and(h.shape) == ("N", (8, 5, 5))
    assert batch_and(f.shape) == ("N", (200,))
    assert batch_and(y.shape) == ("N", (10,))
    assert g.parameters()["dense0.weight"] == (10, 200)


def test_elementwise_softmax_and_losses_keep_or_drop_the_shape():
    g = convc.Graph("rest")
    x = g.input("x", (None, 4, 3))
    for t in (g.relu(x), g.sigmoid(x), g.tanh(x), g.add(x, x), g.softmax(x)):
        assert t.shape == x.shape
    logits = g.input("logits", (None, 5))
    labels = g.input("labels", (None,), dtype="int64")
    assert g.softmax_cross_entropy(logits, labels).shape == ()
    assert g.mean_squared_error(x, g.tanh(x)).shape == ()


# -- parameters, inputs and names ----------------------------------------------------------------

def test_parameters_are_listed_with_their_shapes_in_order():
    g = convc.Graph("params")
    x = g.input("x", (None, 4, 9, 9))
    h = g.conv(x, channels=6, kernel=(3, 2), groups=2)                   # (N, 6, 7, 8)
    h = g.conv(h, channels=3, kernel=1, bias=False)
    h = g.max_pool(h, 2)                                                 # (N, 3, 3, 4)
    h = g.dense(g.flatten(h), 5)
    g.dense(h, 2, bias=False, name="head")
    s = g.input("s", (None, 2, 7))
    g.conv(s, channels=4, kernel=3, name="c1d")
    v = g.input("v", (None, 3, 4, 4, 4))
    g.conv(v, channels=6, kernel=(1, 2, 3), groups=3, name="c3d")
    assert list(g.parameters().items()) == [
        ("conv0.weight", (6, 2, 3, 2)), ("conv0.bias", (6,)),
        ("conv1.weight", (3, 6, 1, 1)),
        ("dense0.weight", (5, 36)), ("dense0.bias", (5,)),
        ("head.weight", (2, 5)),
        ("c1d.weight", (4, 2, 3)), ("c1d.bias", (4,)),
        ("c3d.weight", (6, 1, 1, 2, 3)), ("c3d.bias", (6,)),
    ]
    assert [(name, batch_and(shape)) for name, shape in g.inputs().items()] == [
        ("x", ("N", (4, 9, 9))), ("s", ("N", (2, 7))), ("v", ("N", (3, 4, 4, 4)))]


def test_a_shared_weight_is_not_listed_twice():
    g = convc.Graph("shared")
    x = g.input("x", (None, 2, 8))
    h = g.conv(x, channels=2, kernel=3, bias=False)
    g.conv(h, channels=2, kernel=3, weight=g.tensor("conv0.weight"))
    assert g.parameters() == {"conv0.weight": (2, 2, 3), "conv1.bias": (2,)}


def test_default_node_names():
    g = convc.Graph("names")
    x = g.input("x", (None, 4, 8, 8))
    labels = g.input("labels", (None,), dtype="int64")
    made = [
        g.conv(x, channels=4, kernel=1), g.conv(x, channels=4, kernel=1),
        g.max_pool(x, 2), g.avg_pool(x, 2), g.lp_pool(x, 2), g.max_pool(x, 2),
        g.global_max_pool(x), g.global_avg_pool(x),
        g.relu(x), g.relu(x), g.sigmoid(x), g.tanh(x), g.add(x, x), g.softmax(x),
        g.flatten(x),
    ]
    made += [g.dense(made[-1], 3), g.dense(made[-1], 3)]
    made.append(g.softmax_cross_entropy(made[-1], labels))
    assert [t.name for t in made] == [
        "conv0", "conv1", "pool0", "pool1", "pool2", "pool3", "global_pool0", "global_pool1",
        "relu0", "relu1", "sigmoid0", "tanh0", "add0", "softmax0", "flatten0", "dense0",
        "dense1", "softmax_cross_entropy0"]
    # the layers that own parameters name them after themselves
    assert list(g.parameters()) == [
        "conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias",
        "dense0.weight", "dense0.bias", "dense1.weight", "dense1.bias"]


def test_default_names_skip_names_already_taken():
    g = convc.Graph("taken")
    x = g.input("x", (None, 3))
    assert g.relu(x, name="relu0").name == "relu0"
    assert g.relu(x, name="relu2").name == "relu2"
    assert [g.relu(x).name for _ in range(3)] == ["relu1", "relu3", "relu4"]
    # an explicit name does not use up a default one
    assert g.tanh(x, name="mine").name == "mine"
    assert g.tanh(x).name == "tanh0"


def test_tensor_shape_and_handles():
    g = convc.Graph("tensor")
    x = g.input("x", (None, 1, 8, 8))
    y = g.conv(x, channels=4, kernel=3)
    assert isinstance(y, convc.Tensor) and y.name == "conv0" and y.graph is g
    assert isinstance(y.shape, tuple) and len(y.shape) == 4
    assert batch_and(y.shape) == ("N", (4, 6, 6))
    assert y.shape[0] == x.shape[0]  # the same batch symbol flows through
    assert repr(y) == "Tensor('conv0', shape=(N, 4, 6, 6))"
    w = g.tensor("conv0.weight")
    assert w.shape == (4, 1, 3, 3)
    assert g.tensor("conv0") == y
    assert g.node("conv0").shape == y.shape
    assert g.inputs() == {"x": x.shape}
