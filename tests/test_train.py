"""Training: the mean squared error, shared weights, parameter initialisation, the optimizers
and the training loop, each against numpy written here (and central finite differences)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import convc
from convc.train import SGD, Adam, Epoch, fit


def finite_differences(loss, arrays, name, h=1e-6):
    """Central differences of ``loss(**arrays)`` w.r.t. every element of ``arrays[name]``."""
    value = arrays[name]
    numeric = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        plus, minus = value.copy(), value.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (loss(**{**arrays, name: plus}) - loss(**{**arrays, name: minus})) / (2 * h)
    return numeric


# -- mean squared error ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mse_net():
    g = convc.Graph("mse")
    a = g.input("a", (None, 3, 4))
    b = g.input("b", (None, 3, 4))
    loss = g.mean_squared_error(a, b)
    assert loss.shape == ()
    g.output(loss)
    return convc.compile(g, "float64", grad=["a", "b"])


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_mse_forward_and_gradient(mse_net, batch):
    rng = np.random.default_rng(batch)
    a, b = rng.standard_normal((2, batch, 3, 4))
    loss, grads = mse_net(a=a, b=b)
    assert loss.shape == ()
    # the mean is over every element, the batch (given at call time) included
    np.testing.assert_allclose(loss, np.mean((a - b) ** 2), rtol=1e-13)
    np.testing.assert_allclose(grads["a"], 2 * (a - b) / a.size, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b"], -2 * (a - b) / a.size, rtol=1e-12, atol=1e-15)
    # an upstream gradient given for the 0-d output scales the default of 1
    _, scaled = mse_net(a=a, b=b, **{"grad:mean_squared_error0": np.array(-2.5)})
    np.testing.assert_allclose(scaled["a"], -2.5 * grads["a"], rtol=1e-12)


def test_mse_finite_differences(mse_net):
    rng = np.random.default_rng(11)
    arrays = {"a": rng.standard_normal((2, 3, 4)), "b": rng.standard_normal((2, 3, 4))}
    _, grads = mse_net(**arrays)

    def loss(**kw):
        return float(mse_net(**kw)[0])

    for name in arrays:
        numeric = finite_differences(loss, arrays, name)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)


def test_mse_float32():
    g = convc.Graph("mse32")
    a = g.input("a", (None, 5))
    g.output(g.mean_squared_error(g.tanh(a), g.input("b", (None, 5))))
    net = convc.compile(g, "float32")
    rng = np.random.default_rng(3)
    av, bv = rng.standard_normal((2, 7, 5)).astype(np.float32)
    got = net(a=av, b=bv)
    assert got.dtype == np.float32 and got.shape == ()
    np.testing.assert_allclose(got, np.mean((np.tanh(av.astype(np.float64)) - bv) ** 2),
                               rtol=1e-5)


@pytest.mark.parametrize("shape_b", [(None, 4, 3), (None, 3), (None, 3, 4, 1), (2, 3, 4)])
def test_mse_shape_mismatch(shape_b):
    g = convc.Graph("mse_bad")
    a = g.input("a", (None, 3, 4))
    b = g.input("b", shape_b)
    with pytest.raises(convc.GraphError, match="'reconstruction'"):
        g.mean_squared_error(a, b, name="reconstruction")
    assert "reconstruction" not in [n.name for n in g.nodes()]


# -- shared weights --------------------------------------------------------------------------

def autoencoder(tied: bool) -> convc.Graph:
    """Equation 9.14's tied autoencoder: the decoder is the encoder's transposed convolution."""
    g = convc.Graph("tied_ae" if tied else "untied_ae")
    x = g.input("x", (None, 2, 8))
    h = g.relu(g.conv(x, channels=3, kernel=3, stride=2))          # (N, 3, 3)
    weight = g.tensor("conv0.weight") if tied else None
    r = g.conv_transpose(h, channels=2, kernel=3, stride=2, output_padding=1, weight=weight)
    assert r.shape == x.shape
    g.output(g.mean_squared_error(r, x))
    return g


def twice_conv(tied: bool) -> convc.Graph:
    """The same 3x3 convolution applied twice (a recurrent-style reuse of one weight)."""
    g = convc.Graph("conv_twice_tied" if tied else "conv_twice_untied")
    x = g.input("x", (None, 3, 5, 5))
    t = g.input("target", (None, 3, 5, 5))
    a = g.tanh(g.conv(x, channels=3, kernel=3, padding="same", name="c1"))
    weight = g.tensor("c1.weight") if tied else None
    b = g.conv(a, channels=3, kernel=3, padding="same", weight=weight, name="c2")
    g.output(g.mean_squared_error(b, t))
    return g


SHARING = {
    "tied-autoencoder": (autoencoder, "conv0.weight", "conv_transpose0.weight",
                         {"conv0.weight": (3, 2, 3), "conv0.bias": (3,),
                          "conv_transpose0.bias": (2,)}),
    "conv-reuses-conv": (twice_conv, "c1.weight", "c2.weight",
                         {"c1.weight": (3, 3, 3, 3), "c1.bias": (3,), "c2.bias": (3,)}),
}


@pytest.mark.parametrize("which", list(SHARING))
def test_shared_weight_gradient_is_the_sum(which):
    build, shared, other, params = SHARING[which]
    tied_graph, untied_graph = build(True), build(False)
    assert tied_graph.parameters() == params
    assert other in untied_graph.parameters()
    tied = convc.compile(tied_graph, "float64", grad=True)
    untied = convc.compile(untied_graph, "float64", grad=True)
    assert list(tied.parameters) == list(params)
    assert set(tied.init_params(0)) == set(params)

    rng = np.random.default_rng(5)
    inputs = {name: rng.standard_normal((2, *shape[1:]))
              for name, shape in tied_graph.inputs().items()}
    values = {name: rng.standard_normal(shape) * 0.7 for name, shape in params.items()}
    loss_t, grads_t = tied(**inputs, **values)
    loss_u, grads_u = untied(**inputs, **values, **{other: values[shared]})
    np.testing.assert_allclose(loss_t, loss_u, rtol=1e-13)
    assert set(grads_t) == set(params)
    # each use's gradient, in the untied graph, is not the whole of the tied one
    assert not np.allclose(grads_u[shared], grads_t[shared])
    np.testing.assert_allclose(grads_t[shared], grads_u[shared] + grads_u[other],
                               rtol=1e-12, atol=1e-14)
    for name in params:
        if name != shared:
            np.testing.assert_allclose(grads_t[name], grads_u[name], rtol=1e-12, atol=1e-14)

    def loss(**kw):
        return float(tied(**inputs, **kw)[0])

    numeric = finite_differences(loss, values, shared)
    np.testing.assert_allclose(grads_t[shared], numeric, rtol=1e-5, atol=1e-8)


def test_shared_weight_errors():
    g = convc.Graph("bad_share")
    x = g.input("x", (None, 2, 8))
    h = g.conv(x, channels=3, kernel=3, stride=2)
    before = g.parameters()
    # (in=3, out=3, 3) wanted, (3, 2, 3) given
    with pytest.raises(convc.GraphError, match=r"'up'.*shape") as info:
        g.conv_transpose(h, channels=3, kernel=3, weight=g.tensor("conv0.weight"), name="up")
    assert "(3, 2, 3)" in str(info.value) and "(3, 3, 3)" in str(info.value)
    with pytest.raises(convc.GraphError, match=r"'up'.*shape"):
        g.conv(h, channels=3, kernel=2, weight=g.tensor("conv0.weight"), name="up")
    with pytest.raises(convc.GraphError, match=r"'up'.*shape"):
        g.conv(h, channels=3, kernel=3, weight=g.tensor("conv0.bias"), name="up")
    # not a parameter: an input and a layer's output
    with pytest.raises(convc.GraphError, match=r"'up'.*parameter"):
        g.conv_transpose(h, channels=2, kernel=3, weight=g.tensor("x"), name="up")
    with pytest.raises(convc.GraphError, match=r"'up'.*parameter"):
        g.conv(x, channels=3, kernel=3, weight=h, name="up")
    assert g.parameters() == before
    assert "up" not in [n.name for n in g.nodes()]


# -- init_params -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def init_graph():
    g = convc.Graph("init")
    x = g.input("x", (None, 64, 3, 3))
    g.output(g.conv(x, channels=64, kernel=3, name="big"))                  # fan_in 576
    g.output(g.conv(x, channels=32, kernel=(3, 1), groups=4, name="grouped"))  # fan_in 48
    z = g.input("z", (None, 300))
    g.output(g.dense(z, units=200, name="fc"))                              # fan_in 300
    return g


@pytest.fixture(scope="module")
def init_net(init_graph):
    return convc.compile(init_graph, "float32")


def test_init_params_deterministic(init_graph, init_net):
    a, b = init_net.init_params(7), init_net.init_params(7)
    again = convc.compile(init_graph, "float32").init_params(7)
    other = init_net.init_params(8)
    assert set(a) == set(init_graph.parameters())
    for name, value in a.items():
        assert value.dtype == np.float32
        assert value.shape == init_graph.parameters()[name]
        np.testing.assert_array_equal(value, b[name])
        np.testing.assert_array_equal(value, again[name])
        if name.endswith(".weight"):
            assert not np.array_equal(value, other[name]), name
    assert init_net.init_params(7, "glorot")["fc.weight"].dtype == np.float32
    g64 = convc.compile(init_graph, "float64").init_params(7)
    assert all(v.dtype == np.float64 for v in g64.values())


@pytest.mark.parametrize("scheme", ["he", "glorot"])
def test_init_params_biases_zero(init_net, scheme):
    params = init_net.init_params(3, scheme)
    biases = [n for n in params if n.endswith(".bias")]
    assert sorted(biases) == ["big.bias", "fc.bias", "grouped.bias"]
    for name in biases:
        assert not np.any(params[name])


@pytest.mark.parametrize("name,fan_in", [("big.weight", 64 * 9), ("grouped.weight", 16 * 3),
                                         ("fc.weight", 300)])
def test_init_params_he(init_net, name, fan_in):
    w = init_net.init_params(1, "he")[name].astype(np.float64)
    std = np.sqrt(2.0 / fan_in)
    assert abs(w.std() / std - 1) < 0.05, (w.std(), std)
    assert abs(w.mean()) < 5 * std / np.sqrt(w.size)
    # normal, not uniform: some draws lie beyond 2 standard deviations
    assert 0.02 < np.mean(np.abs(w) > 2 * std) < 0.08


@pytest.mark.parametrize("name,fan_in,fan_out", [("big.weight", 64 * 9, 64 * 9),
                                                 ("fc.weight", 300, 200)])
def test_init_params_glorot(init_net, name, fan_in, fan_out):
    w = init_net.init_params(2, "glorot")[name].astype(np.float64)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.all(np.abs(w) <= limit * (1 + 1e-6))
    assert w.max() > 0.99 * limit and w.min() < -0.99 * limit
    # uniform over the whole range: std limit/sqrt(3), each tenth of it about as full
    assert abs(w.std() / (limit / np.sqrt(3)) - 1) < 0.05
    counts, _ = np.histogram(w, bins=10, range=(-limit, limit))
    assert counts.min() > 0.7 * w.size / 10


@pytest.mark.parametrize("scheme", ["xavier", "HE", "", None])
def test_init_params_unknown_scheme(init_net, scheme):
    with pytest.raises(ValueError, match="scheme"):
        init_net.init_params(0, scheme)


# -- optimizers ------------------------------------------------------------------------------

def make_params():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(5).astype(np.float32)}


def grad_sequence(params, steps):
    rng = np.random.default_rng(1)
    return [{n: rng.standard_normal(p.shape) for n, p in params.items()} for _ in range(steps)]


def check_in_place_steps(optimizer, params, reference, steps=6):
    """Step ``optimizer`` and ``reference`` (a numpy function of (p, g, t, state)) together."""
    originals = dict(params)
    expected = {n: p.astype(np.float64) for n, p in params.items()}
    states = {n: {} for n in params}
    for t, grads in enumerate(grad_sequence(params, steps), start=1):
        optimizer.step(grads)
        for name in params:
            g = grads[name].astype(params[name].dtype).astype(np.float64)
            expected[name] = reference(expected[name], g, t, states[name])
            assert params[name] is originals[name]
            assert params[name].dtype == originals[name].dtype
            tol = 1e-12 if params[name].dtype == np.float64 else 2e-6
            np.testing.assert_allclose(params[name], expected[name], rtol=tol, atol=tol,
                                       err_msg=f"{name} step {t}")


@pytest.mark.parametrize("lr,momentum,weight_decay", [(0.1, 0.0, 0.0), (0.05, 0.9, 0.0),
                                                      (0.05, 0.9, 0.01), (0.2, 0.0, 0.1)])
def test_sgd(lr, momentum, weight_decay):
    def reference(p, g, t, state):
        g = g + weight_decay * p
        state["v"] = momentum * state.get("v", 0.0) + g
        return p - lr * state["v"]

    params = make_params()
    start = {n: p.copy() for n, p in params.items()}
    check_in_place_steps(SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
                         params, reference)
    assert not np.allclose(params["w"], start["w"])


@pytest.mark.parametrize("lr,betas,eps,weight_decay", [(1e-2, (0.9, 0.999), 1e-8, 0.0),
                                                       (5e-2, (0.8, 0.99), 1e-3, 0.0),
                                                       (1e-2, (0.9, 0.999), 1e-8, 0.05)])
def test_adam(lr, betas, eps, weight_decay):
    b1, b2 = betas

    def reference(p, g, t, state):
        g = g + weight_decay * p
        state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g**2
        mhat, vhat = state["m"] / (1 - b1**t), state["v"] / (1 - b2**t)
        return p - lr * mhat / (np.sqrt(vhat) + eps)

    params = make_params()
    check_in_place_steps(Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         params, reference)


def test_adam_first_step_is_lr_times_sign():
    """With bias correction the first Adam step moves each weight by about lr."""
    p = {"w": np.array([1.0, -2.0, 3.0])}
    Adam(p, lr=0.1).step({"w": np.array([5.0, -0.001, 0.0])})
    np.testing.assert_allclose(p["w"], [0.9, -1.9, 3.0], atol=1e-5)


# -- fit -------------------------------------------------------------------------------------

def synthetic(seed, count=96):
    """Three classes of 1-D signals: a bump at the start, the middle or the end, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    x = rng.normal(0, 0.3, (count, 1, 12))
    for i, c in enumerate(labels):
        x[i, 0, 4 * c:4 * c + 4] += 1.5
    return x.astype(np.float32), labels.astype(np.int64)


@pytest.fixture(scope="module")
def classifier():
    g = convc.Graph("fit")
    x = g.input("x", (None, 1, 12))
    y = g.input("y", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=4, kernel=3, padding="same"))
    logits = g.dense(g.flatten(h), units=3)
    g.output(logits, g.softmax_cross_entropy(logits, y))
    return convc.compile(g, "float32", grad=True)


def train(net, epochs, fit_seed=0, init_seed=0, evaluate=False):
    x, y = synthetic(1)
    params = net.init_params(init_seed)
    lines = []

    def accuracy():
        outputs, _ = net(x=x, y=y, **params)
        return float(np.mean(outputs["dense0"].argmax(axis=1) == y))

    history = fit(net, params, SGD(params, lr=0.05, momentum=0.9), {"x": x, "y": y},
                  epochs=epochs, batch_size=16, seed=fit_seed,
                  evaluate=accuracy if evaluate else None, log=lines.append)
    return history, lines, params


def test_fit_logs_and_learns(classifier):
    history, lines, params = train(classifier, epochs=6, evaluate=True)
    assert len(history) == 6 and len(lines) == 6
    assert all(isinstance(e, Epoch) for e in history)
    assert [e.epoch for e in history] == list(range(1, 7))
    for e, line in zip(history, lines):
        m = re.fullmatch(r"epoch\s+(\d+)\s+loss ([0-9.]+)\s+held-out accuracy ([0-9.]+)"
                         r"\s+([0-9,]+) images/s", line)
        assert m, line
        assert int(m[1]) == e.epoch
        assert abs(float(m[2]) - e.loss) <= 5e-5
        assert abs(float(m[3]) - e.accuracy) <= 5e-5
        assert e.images_per_second > 0
        assert int(m[4].replace(",", "")) == round(e.images_per_second)
    losses = [e.loss for e in history]
    assert losses[-1] < 0.3 * losses[0], losses
    assert history[-1].accuracy > 0.9
    # the loss of an epoch is the mean over its examples: close to a fresh full-batch loss
    x, y = synthetic(1)
    outputs, _ = classifier(x=x, y=y, **params)
    assert outputs["softmax_cross_entropy0"] < losses[0]


def test_fit_same_seed_same_history(classifier):
    first, _, _ = train(classifier, epochs=3, fit_seed=4, init_seed=2)
    second, _, _ = train(classifier, epochs=3, fit_seed=4, init_seed=2)
    assert [e.loss for e in first] == [e.loss for e in second]
    assert all(e.accuracy is None for e in first)
    other, _, _ = train(classifier, epochs=3, fit_seed=5, init_seed=2)
    assert [e.loss for e in other] != [e.loss for e in first]


def test_fit_prints_by_default(classifier, capsys):
    x, y = synthetic(2, count=20)
    params = classifier.init_params(0)
    fit(classifier, params, SGD(params, lr=0.01), {"x": x, "y": y}, epochs=2, batch_size=8)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].startswith("epoch   1") and out[1].startswith("epoch   2")
    assert all("images/s" in line and "accuracy" not in line for line in out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_in_the_runtime_and_in_numpy_agree(dtype):
    """A contiguous parameter steps in the runtime's convc_adam_*; a strided view of the
    same values (which it cannot take) with numpy: the same formula, the same numbers to
    the last few units."""
    from convc.train import _compiled_step

    rng = np.random.default_rng(2)
    values = rng.standard_normal((6, 5)).astype(dtype)
    grads = [rng.standard_normal((6, 5)).astype(dtype) for _ in range(4)]
    contiguous = {"w": values.copy()}
    holder = np.zeros((6, 10), dtype)
    strided = {"w": holder[:, ::2]}
    strided["w"][...] = values
    runtime, plain = (Adam(p, lr=0.05, weight_decay=0.01) for p in (contiguous, strided))
    assert _compiled_step(contiguous["w"], grads[0], runtime.m["w"], runtime.v["w"])
    assert _compiled_step(strided["w"], grads[0], plain.m["w"], plain.v["w"]) is None
    for g in grads:
        runtime.step({"w": g})
        plain.step({"w": g})
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(contiguous["w"], strided["w"], rtol=64 * eps, atol=64 * eps)
    assert not np.allclose(contiguous["w"], values)


def test_adam_steps_the_array_the_parameters_hold_now():
    """The runtime's step keeps its views of a parameter and its moments from step to step,
    as long as the parameters hold the same array: one put in its place steps instead (the
    old one is left alone); a strided gradient steps with numpy, to the same numbers."""
    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal(7).astype(np.float32) for _ in range(2))
    params = {"w": first.copy()}
    optimizer = Adam(params, lr=0.1)
    g = rng.standard_normal(7).astype(np.float32)
    optimizer.step({"w": g})
    old = params["w"]
    kept = old.copy()
    assert not np.allclose(kept, first)
    params["w"] = second.copy()
    optimizer.step({"w": g})
    np.testing.assert_array_equal(old, kept)
    assert not np.allclose(params["w"], second)
    spaced = np.zeros(14, np.float32)
    spaced[::2] = g
    strided, plain = (Adam({"w": kept.copy()}, lr=0.1) for _ in range(2))
    for gradient in (g, spaced[::2]):
        strided.step({"w": gradient})
        plain.step({"w": g})
    np.testing.assert_allclose(strided.params["w"], plain.params["w"], rtol=1e-6, atol=1e-7)
