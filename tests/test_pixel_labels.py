"""The recurrent pixel labeller of examples/pixel_labels.py (section 9.6, figure 9.17): the
shared kernels U, V, W get, from the derivation, the gradient that central finite differences
give, and the sum of the per-step gradients of an untied copy (each step its own kernels)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import convc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import pixel_labels  # noqa: E402

SMALL = dict(steps=3, size=6, hidden=3, classes=3, kernel=3)
KERNELS = {"U": "U1.weight", "V": "V1.weight", "W": "W2.weight"}


@pytest.fixture(scope="module")
def nets():
    tied = convc.compile(pixel_labels.network(tied=True, **SMALL), "float64", grad=True)
    untied = convc.compile(pixel_labels.network(tied=False, **SMALL), "float64", grad=True)
    return tied, untied


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 6))
    labels = rng.integers(0, 3, (2, 6, 6))
    params = {name: 0.5 * rng.standard_normal(shape) for name, shape in
              pixel_labels.network(**SMALL).parameters().items()}
    return x, labels, params


def total_loss(net, **arrays) -> float:
    outputs = net(**arrays)[0]
    return sum(float(v) for k, v in outputs.items() if k.startswith("loss"))


def test_the_network_shares_three_kernels_and_labels_every_pixel():
    g = pixel_labels.network(**SMALL)
    assert sorted(g.parameters()) == sorted(KERNELS.values())
    untied = pixel_labels.network(tied=False, **SMALL)
    assert len(untied.parameters()) == 3 * SMALL["steps"] - 1  # no W at the first step
    assert g.node("V3").shape == (convc.ops.BATCH, 3, 6, 6)  # a label map the input's size


def test_shared_gradients_match_finite_differences(nets, data):
    tied, _ = nets
    x, labels, params = data
    _, grads = tied(x=x, labels=labels, **params)
    h = 1e-6
    for name in KERNELS.values():
        numeric = np.zeros_like(params[name])
        for idx in np.ndindex(params[name].shape):
            shifted = []
            for step in (h, -h):
                p = params[name].copy()
                p[idx] += step
                shifted.append(total_loss(tied, x=x, labels=labels, **{**params, name: p}))
            numeric[idx] = (shifted[0] - shifted[1]) / (2 * h)
        assert np.abs(numeric).max() > 1e-3, name  # every kernel matters to the loss
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)


def test_shared_gradient_is_the_sum_over_steps_of_the_untied_ones(nets, data):
    tied, untied = nets
    x, labels, params = data
    outputs_t, grads_t = tied(x=x, labels=labels, **params)
    copies = {name: params[KERNELS[name[0]]] for name in untied.parameters}
    outputs_u, grads_u = untied(x=x, labels=labels, **copies)
    for key in outputs_t:
        np.testing.assert_allclose(outputs_t[key], outputs_u[key], rtol=1e-13)
    for letter, name in KERNELS.items():
        per_step = [grads_u[n] for n in untied.parameters if n.startswith(letter)]
        assert len(per_step) == SMALL["steps"] - (letter == "W")
        # no single step carries the whole gradient
        assert all(not np.allclose(g, grads_t[name]) for g in per_step)
        np.testing.assert_allclose(grads_t[name], sum(per_step), rtol=1e-11, atol=1e-14)


def test_synthetic_shapes_are_labelled_inside_or_outside():
    x, labels = pixel_labels.shapes(20, seed=4, size=16, noise=0.0)
    assert x.shape == (20, 2, 16, 16) and labels.shape == (20, 16, 16)
    np.testing.assert_array_equal(x[:, 0], labels)  # no noise: the image is the label map
    assert np.all(x[:, 1] == 1)
    assert set(np.unique(labels)) == {0, 1}
    assert 0.05 < labels.mean() < 0.6
