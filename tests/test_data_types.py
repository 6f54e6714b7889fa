"""The data of table 9.1 through whole networks: convolution, pooling, a dense layer.

Single- and multi-channel data with one, two and three spatial axes: an audio waveform and
skeleton animation (1-D), a spectrogram and a colour image (2-D), a CT volume and a colour
video (3-D). Each network's output is checked against a reference built from
``scipy.signal.correlate`` (the convolution, channel by channel), numpy pooling windows and
a matrix product, in float32 and float64; the gradients of the input and of every
parameter by central finite differences in float64. Adaptive pooling lets one set of
parameters serve recordings of different lengths (section 9.7).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from scipy import signal
from test_autodiff import check_finite_differences

import convc

# name: (shape of one example, conv arguments, activation, pooling (kind, window), units)
DATA = {
    "audio_waveform_1d": ((1, 30), {"channels": 4, "kernel": 5, "stride": 2, "padding": 2},
                          "relu", ("max", 3), 3),
    "skeleton_animation_1d": ((6, 16), {"channels": 5, "kernel": 3, "padding": 1},
                              "tanh", ("avg", 2), 4),
    "spectrogram_2d": ((1, 9, 12), {"channels": 3, "kernel": (3, 5), "padding": (1, 2)},
                       "relu", ("max", 2), 3),
    "colour_image_2d": ((3, 9, 9), {"channels": 4, "kernel": 3, "stride": 2, "padding": 1},
                        "tanh", ("avg", 2), 5),
    "ct_volume_3d": ((1, 6, 7, 6), {"channels": 2, "kernel": 3}, "relu", ("max", 2), 2),
    "colour_video_3d": ((3, 4, 6, 6), {"channels": 3, "kernel": (2, 3, 3),
                                       "padding": (0, 1, 1)}, "tanh", ("avg", (1, 2, 2)), 3),
}
DTYPES = {"float32": (np.float32, 2e-5), "float64": (np.float64, 1e-12)}


def build(name: str, shape=None) -> convc.Graph:
    example, conv, act, (kind, window), units = DATA[name]
    g = convc.Graph(name)
    x = g.input("x", (None, *(shape or example)))
    h = getattr(g, act)(g.conv(x, **conv))
    h = g.max_pool(h, window) if kind == "max" else g.avg_pool(h, window)
    g.output(g.dense(g.flatten(h), units))
    return g


@functools.cache
def network(name: str, dtype: str):
    """The network compiled; in float64 with the gradients of the input and parameters."""
    g = build(name)
    grad = ["x", *g.parameters()] if dtype == "float64" else None
    return convc.compile(g, dtype, grad=grad)


# -- references: scipy's correlation, numpy windows, a matrix product ------------------------

def per_axis(value, rank):
    return (value,) * rank if isinstance(value, int) else tuple(value)


def conv_ref(x, w, b, stride, padding):
    """``out[n, k] = b[k] + Σ_c correlate(x_pad[n, c], w[k, c], "valid")``, then strided."""
    rank = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0), *((p, p) for p in per_axis(padding, rank))])
    rows = []
    for n in range(x.shape[0]):
        maps = [b[k] + sum(signal.correlate(xp[n, c], w[k, c], mode="valid")
                           for c in range(x.shape[1])) for k in range(w.shape[0])]
        rows.append(np.stack(maps))
    out = np.stack(rows)
    return out[(slice(None), slice(None), *(slice(None, None, s)
                                            for s in per_axis(stride, rank)))]


def pool_ref(h, kind, window):
    """Non-overlapping windows (stride = window, no padding), the ragged edge dropped."""
    rank = h.ndim - 2
    window = per_axis(window, rank)
    outs = [size // w for size, w in zip(h.shape[2:], window)]
    h = h[(slice(None), slice(None), *(slice(0, o * w) for o, w in zip(outs, window)))]
    blocks = h.reshape(*h.shape[:2], *itertools.chain(*zip(outs, window)))
    inner = tuple(3 + 2 * a for a in range(rank))
    return blocks.max(axis=inner) if kind == "max" else blocks.mean(axis=inner)


def network_ref(name, x, params):
    _, conv, act, (kind, window), _ = DATA[name]
    h = conv_ref(x, params["conv0.weight"], params["conv0.bias"], conv.get("stride", 1),
                 conv.get("padding", 0))
    h = np.maximum(h, 0) if act == "relu" else np.tanh(h)
    h = pool_ref(h, kind, window).reshape(len(x), -1)
    return h @ params["dense0.weight"].T + params["dense0.bias"]


def arguments(net, name, batch, rng, dtype=np.float64):
    args = {"x": rng.standard_normal((batch, *DATA[name][0]))}
    args |= {p: rng.standard_normal(s) for p, s in net.parameters.items()}
    return {k: v.astype(dtype) for k, v in args.items()}


# -- the tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(DATA))
def test_network_matches_scipy_reference(name, dtype):
    np_dtype, rtol = DTYPES[dtype]
    net = network(name, dtype)
    rng = np.random.default_rng(len(name))
    for batch in (3, 1):
        args = arguments(net, name, batch, rng, np_dtype)
        got = net(**args)
        got = got[0] if isinstance(got, tuple) else got  # (outputs, gradients) with grad
        exact = {k: v.astype(np.float64) for k, v in args.items()}
        want = network_ref(name, exact.pop("x"), exact)
        assert got.dtype == np_dtype and got.shape == want.shape == (batch, DATA[name][-1])
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("name", list(DATA))
def test_network_gradients_match_finite_differences(name):
    net = network(name, "float64")
    rng = np.random.default_rng(7 + len(name))
    args = arguments(net, name, 2, rng)
    seeds = {"dense0": rng.standard_normal((2, DATA[name][-1]))}
    out, _grads = check_finite_differences(net, args, ["x", *net.parameters], seeds, rng)
    x = args.pop("x")
    np.testing.assert_allclose(out, network_ref(name, x, args), rtol=1e-12, atol=1e-12)


def test_recordings_of_different_lengths_share_one_set_of_parameters():
    """Section 9.7: the same kernel over recordings of different lengths, an adaptive pool
    to a fixed number of cells, then one dense layer: one set of parameters for all."""
    nets, params = {}, None
    rng = np.random.default_rng(3)
    for length in (23, 40):
        g = convc.Graph(f"audio{length}")
        x = g.input("x", (None, 1, length))
        h = g.relu(g.conv(x, channels=3, kernel=5, padding=2))
        g.output(g.dense(g.flatten(g.adaptive_max_pool(h, 4)), 2))
        if params is None:
            params = {n: rng.standard_normal(s) for n, s in g.parameters().items()}
        assert g.parameters() == {n: p.shape for n, p in params.items()}
        nets[length] = convc.compile(g, "float64", grad=["x", *params])
    for length, net in nets.items():
        x = rng.standard_normal((2, 1, length))
        seeds = {"dense0": rng.standard_normal((2, 2))}
        out, _ = check_finite_differences(net, {"x": x, **params}, ["x", *params], seeds, rng)
        h = np.maximum(conv_ref(x, params["conv0.weight"], params["conv0.bias"], 1, 2), 0)
        cells = [h[:, :, i * length // 4:-(-(i + 1) * length // 4)].max(axis=2)
                 for i in range(4)]
        pooled = np.stack(cells, axis=2).reshape(2, -1)
        want = pooled @ params["dense0.weight"].T + params["dense0.bias"]
        np.testing.assert_allclose(out, want, rtol=1e-12)
