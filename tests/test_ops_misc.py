"""Elementwise ops, flatten, dense, softmax and the softmax cross-entropy, compiled and run,
against numpy (and ``scipy.special`` for the sigmoid); then a small LeNet-like network
against the same network composed from the numpy references.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit

import convc

DTYPES = {"float32": (np.float32, 1e-4), "float64": (np.float64, 1e-10)}

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

dtypes = st.sampled_from(list(DTYPES))
seeds = st.integers(0, 2**16)


def sample(rng, shape, dtype, scale=1.0):
    """Normal values times ``scale``, with zeros, negative zeros and the extremes mixed in."""
    x = rng.standard_normal(shape) * scale
    flat = x.reshape(-1)
    specials = [0.0, -0.0, 20.0, -20.0, 1e-3, -1e-3]
    flat[: min(len(flat), len(specials))] = specials[: len(flat)]
    rng.shuffle(flat)
    return x.astype(dtype)


# -- elementwise and flatten -------------------------------------------------------------------

@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), dtype=dtypes,
       batch=st.integers(0, 3), seed=seeds)
def test_elementwise_and_flatten(shape, dtype, batch, seed):
    """relu, sigmoid, tanh, add and flatten of tensors (N, ...) of rank 2 to 5, in one graph."""
    np_dtype, rtol = DTYPES[dtype]
    g = convc.Graph("elementwise")
    a = g.input("a", (None, *shape))
    b = g.input("b", (None, *shape))
    g.output(g.relu(a, name="relu"), g.sigmoid(a, name="sigmoid"), g.tanh(a, name="tanh"),
             g.add(a, b, name="add"), g.flatten(a, name="flat"),
             g.add(g.relu(b), g.tanh(a), name="chain"))
    net = convc.compile(g, dtype)
    rng = np.random.default_rng(seed)
    xa, xb = (sample(rng, (batch, *shape), np_dtype, 5.0) for _ in range(2))
    got = net(a=xa, b=xb)
    for name, out in got.items():
        assert out.dtype == np_dtype, name
    # exact: one operation in the same precision (the sign of a zero is left open)
    np.testing.assert_array_equal(got["relu"], np.maximum(xa, 0))
    np.testing.assert_array_equal(got["add"], xa + xb)
    np.testing.assert_array_equal(got["flat"], xa.reshape(batch, int(np.prod(shape))))
    x64 = xa.astype(np.float64)
    np.testing.assert_allclose(got["sigmoid"], expit(x64), rtol=rtol, atol=rtol * 1e-3)
    np.testing.assert_allclose(got["tanh"], np.tanh(x64), rtol=rtol, atol=rtol * 1e-3)
    np.testing.assert_allclose(got["chain"], np.maximum(xb.astype(np.float64), 0) + np.tanh(x64),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_sigmoid_and_tanh_saturate_without_nan(dtype):
    np_dtype, rtol = DTYPES[dtype]
    g = convc.Graph("saturate")
    x = g.input("x", (None, 8))
    g.output(g.sigmoid(x, name="s"), g.tanh(x, name="t"))
    net = convc.compile(g, dtype)
    xs = np.array([[-1000, -100, -30, -1, 1, 30, 100, 1000]], np_dtype)
    got = net(x=xs)
    assert np.isfinite(got["s"]).all() and np.isfinite(got["t"]).all()
    np.testing.assert_allclose(got["s"], expit(xs.astype(np.float64)), rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(got["t"], np.tanh(xs.astype(np.float64)), rtol=rtol)


# -- dense -------------------------------------------------------------------------------------

@SETTINGS
@given(features=st.integers(1, 40), units=st.integers(1, 12), dtype=dtypes,
       batch=st.integers(0, 4), seed=seeds)
def test_dense_matches_numpy(features, units, dtype, batch, seed):
    np_dtype, rtol = DTYPES[dtype]
    g = convc.Graph("dense")
    x = g.input("x", (None, features))
    g.output(g.dense(x, units, name="with_bias"), g.dense(x, units, bias=False, name="no_bias"))
    net = convc.compile(g, dtype)
    assert set(net.parameters) == {"with_bias.weight", "with_bias.bias", "no_bias.weight"}
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(tuple(int(d) for d in shape)).astype(np_dtype)
              for name, shape in net.parameters.items()}
    xs = rng.standard_normal((batch, features)).astype(np_dtype)
    got = net(x=xs, **params)
    for name, b in (("with_bias", params["with_bias.bias"]), ("no_bias", None)):
        w = params[f"{name}.weight"]
        want = ref.dense(xs, w, b)
        bound = ref.dense(np.abs(xs), np.abs(w), None if b is None else np.abs(b))
        assert got[name].shape == (batch, units) and got[name].dtype == np_dtype
        np.testing.assert_allclose(got[name], want, rtol=rtol,
                                   atol=rtol * (bound.max() if bound.size else 1))


# -- softmax -----------------------------------------------------------------------------------

@SETTINGS
@given(classes=st.integers(1, 7), hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       shift=st.sampled_from([0.0, 1000.0, -1000.0]), spread=st.sampled_from([1.0, 30.0]),
       dtype=dtypes, batch=st.integers(1, 3), seed=seeds)
def test_softmax_rank2_and_rank4(classes, hw, shift, spread, dtype, batch, seed):
    """Softmax over axis 1 of (N, C) and (N, C, H, W), logits shifted by up to ±1000."""
    np_dtype, rtol = DTYPES[dtype]
    g = convc.Graph("softmax")
    x2 = g.input("x2", (None, classes))
    x4 = g.input("x4", (None, classes, *hw))
    g.output(g.softmax(x2, name="s2"), g.softmax(x4, name="s4"))
    net = convc.compile(g, dtype)
    rng = np.random.default_rng(seed)
    xs2 = (shift + spread * rng.standard_normal((batch, classes))).astype(np_dtype)
    xs4 = (shift + spread * rng.standard_normal((batch, classes, *hw))).astype(np_dtype)
    got = net(x2=xs2, x4=xs4)
    for name, xs in (("s2", xs2), ("s4", xs4)):
        assert np.isfinite(got[name]).all(), name
        assert got[name].shape == xs.shape and got[name].dtype == np_dtype
        # float32 logits near 1000 carry an absolute error of about 6e-5 each
        np.testing.assert_allclose(got[name], ref.softmax(xs), rtol=rtol * 10,
                                   atol=rtol * 1e-3, err_msg=name)
        np.testing.assert_allclose(got[name].sum(axis=1), 1.0, rtol=rtol * 10)
    empty = net(x2=np.zeros((0, classes), np_dtype), x4=np.zeros((0, classes, *hw), np_dtype))
    assert empty["s2"].shape == (0, classes) and empty["s4"].shape == (0, classes, *hw)


# -- softmax cross-entropy ---------------------------------------------------------------------

@SETTINGS
@given(classes=st.integers(1, 9), shift=st.sampled_from([0.0, 1000.0, -1000.0]),
       spread=st.sampled_from([1.0, 40.0]), dtype=dtypes, batch=st.integers(1, 6),
       seed=seeds)
def test_softmax_cross_entropy_matches_numpy(classes, shift, spread, dtype, batch, seed):
    np_dtype, rtol = DTYPES[dtype]
    g = convc.Graph("xent")
    logits = g.input("logits", (None, classes))
    labels = g.input("labels", (None,), dtype="int64")
    g.output(g.softmax_cross_entropy(logits, labels, name="loss"))
    net = convc.compile(g, dtype)
    rng = np.random.default_rng(seed)
    z = (shift + spread * rng.standard_normal((batch, classes))).astype(np_dtype)
    y = rng.integers(0, classes, batch)
    got = net(logits=z, labels=y)
    assert got.shape == () and got.dtype == np_dtype
    want = ref.softmax_cross_entropy(z, y)
    # the loss is a difference of terms of the size of the logits
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (1 + np.abs(z).max()) * 10)
    if classes > 1:
        # a masked (-inf) logit away from the label changes nothing but its own term
        masked = z.copy()
        masked[np.arange(batch), (y + 1) % classes] = -np.inf
        got = net(logits=masked, labels=y)
        np.testing.assert_allclose(got, ref.softmax_cross_entropy(masked, y), rtol=rtol,
                                   atol=rtol * (1 + np.abs(z).max()) * 10)


# -- a whole network ---------------------------------------------------------------------------

def build_lenet():
    g = convc.Graph("lenet_like")
    x = g.input("x", (None, 2, 14, 13))
    y = g.input("y", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=4, kernel=5, padding="same", name="c1"))
    h = g.max_pool(h, window=2, name="p1")                                  # (7, 6)
    h2 = g.conv(h, channels=6, kernel=(3, 2), stride=1, padding=(1, (0, 1)), groups=2,
                name="c2")
    h = g.tanh(g.add(h2, g.conv(h, channels=6, kernel=1, bias=False, name="skip")))
    h = g.avg_pool(h, window=3, stride=2, padding=1, ceil_mode=True,
                   count_include_pad=False, name="p2")
    h = g.sigmoid(g.dense(g.flatten(h), 16, name="d1"))
    logits = g.dense(h, 5, name="d2")
    g.output(g.softmax(logits, name="probs"), g.softmax_cross_entropy(logits, y, name="loss"))
    return g


def lenet_reference(x, y, p):
    def conv(v, name, padding, **kw):
        w = p[f"{name}.weight"]
        pads = ref.padding_pairs(padding, v.shape[2:], w.shape[2:], (1, 1), (1, 1))
        return ref.conv(v, w, p.get(f"{name}.bias"), padding=pads, **kw)

    h = np.maximum(conv(x, "c1", "same"), 0)
    h = ref.pool(h, "max", (2, 2), (2, 2), [(0, 0), (0, 0)], (1, 1))
    h = np.tanh(conv(h, "c2", [(1, 1), (0, 1)], groups=2) + conv(h, "skip", "valid"))
    h = ref.pool(h, "avg", (3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), ceil_mode=True,
                 count_include_pad=False)
    h = expit(ref.dense(h.reshape(len(h), -1), p["d1.weight"], p["d1.bias"]))
    logits = ref.dense(h, p["d2.weight"], p["d2.bias"])
    return ref.softmax(logits), ref.softmax_cross_entropy(logits, y)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_lenet_like_network_matches_numpy_composition(dtype):
    np_dtype, rtol = DTYPES[dtype]
    net = convc.compile(build_lenet(), dtype)
    rng = np.random.default_rng(11)
    params = {name: (0.5 * rng.standard_normal(tuple(int(d) for d in shape))).astype(np_dtype)
              for name, shape in net.parameters.items()}
    x = rng.standard_normal((3, 2, 14, 13)).astype(np_dtype)
    y = rng.integers(0, 5, 3)
    got = net(x=x, y=y, **params)
    probs, loss = lenet_reference(x, y, params)
    assert got["probs"].shape == probs.shape == (3, 5)
    np.testing.assert_allclose(got["probs"], probs, rtol=rtol * 10, atol=rtol * 1e-2)
    np.testing.assert_allclose(got["loss"], loss, rtol=rtol * 10)
