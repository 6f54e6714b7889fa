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
    assert "conv0" not in kept and kept["relu0.mask"] == 4 * 6 * 6  # one byte per element
    assert lowered.buffers["relu0.mask"].ctype == "uint8_t"
    step = next(s for s in lowered.steps if s.node == "relu0" and s.role == "dinput")
    reads = lowered.kernels[step].reads
    assert "relu0.mask" in reads and "conv0" not in reads
    text = convc.compile(relu_net(), grad=True).explain()
    assert re.search(r"SAVED .*relu0\.mask \(144 B\)", text)


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
