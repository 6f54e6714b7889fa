"""What the forward pass keeps for the backward pass: only what the derived comprehensions
read, and a one-byte mask where they only test a value (a ReLU)."""

import re

import numpy as np

import convc
from convc.explain import saved_tensors


def relu_net(activation="relu"):
    g = convc.Graph("saved")
    x = g.input("x", (None, 2, 6, 6))
    h = getattr(g, activation)(g.conv(x, channels=4, kernel=3, padding=1))
    g.output(g.mean_squared_error(h, g.input("t", (None, 4, 6, 6))))
    return g


def test_relu_keeps_a_mask_not_a_copy():
    lowered = convc.lower(relu_net(), grad=True)
    kept = saved_tensors(lowered)
    n = convc.ops.BATCH
    assert "conv0" not in kept and kept["relu0.mask"] == n * 4 * 6 * 6  # a byte an element
    assert lowered.buffers["relu0.mask"].ctype == "uint8_t"
    step = next(s for s in lowered.steps if s.node == "relu0" and s.role == "dinput")
    reads = lowered.kernels[step].reads
    assert "relu0.mask" in reads and "conv0" not in reads
    text = convc.compile(relu_net(), grad=True).explain()
    assert re.search(r"SAVED .* reads \d+ bytes per example .*relu0\.mask \(144 B\)", text)


def test_sigmoid_keeps_what_its_derivative_reads():
    kept = saved_tensors(convc.lower(relu_net("sigmoid"), grad=True))
    assert "conv0" in kept and not any(name.endswith(".mask") for name in kept)


def test_masked_relu_gradient_matches_numpy():
    net = convc.compile(relu_net(), "float64", grad=["x", "conv0.weight"])
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((3, 4, 6, 6))
    w = rng.standard_normal((4, 2, 3, 3))
    params = {"conv0.weight": w, "conv0.bias": np.zeros(4)}
    _, grads = net(x=x, t=t, **params)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    z = np.einsum("ncijab,kcab->nkij", windows, w)
    dz = 2 * (np.maximum(z, 0) - t) / t.size * (z > 0)
    np.testing.assert_allclose(grads["conv0.weight"],
                               np.einsum("nkij,ncijab->kcab", dz, windows), rtol=1e-10)


def test_max_pool_keeps_its_argmax_in_a_byte_when_the_window_allows():
    g = convc.Graph("argmax")
    x = g.input("x", (None, 2, 16, 16))
    small = g.max_pool(x, 2)
    g.output(g.add(g.global_max_pool(small), g.global_max_pool(x)))
    lowered = convc.lower(g, grad=["x"])
    assert lowered.buffers["pool0.argmax"].ctype == "uint8_t"  # 4 cells
    assert lowered.buffers["global_pool1.argmax"].ctype == "int64_t"  # 256: 255 is "none"
    net = convc.compile(g, "float64", grad=["x"])
    xs = np.random.default_rng(2).standard_normal((2, 2, 16, 16))
    _, grads = net(x=xs, **{"grad:add0": np.ones((2, 2))})
    windows = xs.reshape(2, 2, 8, 2, 8, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 64, 4)
    pooled = windows.max(axis=3)
    expected = np.zeros_like(xs)  # the global max of the pooled map, and of x
    n, c = np.indices((2, 2))
    cell = pooled.reshape(2, 2, 64).argmax(axis=2)
    pick = windows.reshape(2, 2, 64, 4)[n, c, cell].argmax(axis=2)
    i0, i1 = cell // 8 * 2 + pick // 2, cell % 8 * 2 + pick % 2
    expected[n, c, i0, i1] += 1
    flat = xs.reshape(2, 2, 256).argmax(axis=2)
    expected[n, c, flat // 16, flat % 16] += 1
    np.testing.assert_array_equal(grads["x"], expected)
