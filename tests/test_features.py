"""Features without full training (section 9.9): the filter banks against their formulas
evaluated here point by point, k-means on well-separated clusters, patch extraction against
plain slicing, `predict` against one call over the whole set, and training the last layer
alone while the first stays fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import convc
from convc import features
from convc.train import SGD, fit, predict


def test_oriented_edges_match_the_gaussian_derivative():
    size, orientations, sigma = 5, 6, 1.3
    bank = features.oriented_edges(size, orientations, sigma)
    assert bank.shape == (orientations, size, size)
    for o in range(orientations):
        theta = math.pi * o / orientations
        want = np.empty((size, size))
        for row in range(size):
            for col in range(size):
                x, y = col - 2, row - 2
                want[row, col] = -(x * math.cos(theta) + y * math.sin(theta)) * math.exp(
                    -(x * x + y * y) / (2 * sigma * sigma))
        want /= math.sqrt((want**2).sum())
        np.testing.assert_allclose(bank[o], want, rtol=1e-12, atol=1e-15)
    # an edge detector answers to a step across it and not along it
    step = np.where(np.arange(size) < 2, 0.0, 1.0)[None, :].repeat(size, 0)  # dark | bright
    assert abs((bank[0] * step).sum()) > 1 and abs((bank[orientations // 2] * step).sum()) < 1e-12
    # a quarter turn of the vertical-edge filter is the horizontal one
    np.testing.assert_allclose(np.rot90(bank[0], -1), bank[orientations // 2], atol=1e-12)


@pytest.mark.parametrize("size,wavelength,sigma,phase,aspect", [(5, 4.0, 1.5, 0.0, 1.0),
                                                                (7, 3.0, 2.0, math.pi / 2, 0.5)])
def test_gabor_matches_its_formula(size, wavelength, sigma, phase, aspect):
    bank = features.gabor(size, 4, wavelength, sigma, phase, aspect)
    c = (size - 1) / 2
    for o in range(4):
        theta = math.pi * o / 4
        for row in range(size):
            for col in range(size):
                x, y = col - c, row - c
                xr = x * math.cos(theta) + y * math.sin(theta)
                yr = -x * math.sin(theta) + y * math.cos(theta)
                want = math.exp(-(xr**2 + aspect**2 * yr**2) / (2 * sigma**2)) * math.cos(
                    2 * math.pi * xr / wavelength + phase)
                assert bank[o, row, col] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_as_weight_is_zero_mean_unit_norm_on_every_channel():
    w = features.as_weight(features.gabor(5, 3), channels=2)
    assert w.shape == (3, 2, 5, 5)
    np.testing.assert_allclose(w.sum(axis=(2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(w[:, 0].reshape(3, -1), axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(w[:, 0], w[:, 1])


def test_kmeans_finds_well_separated_clusters():
    rng = np.random.default_rng(0)
    means = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20], [20, 20, 20]], float)
    truth = rng.integers(0, 5, 400)
    points = means[truth] + rng.standard_normal((400, 3))
    centres, which = features.kmeans(points, 5, iterations=10, seed=1)
    # each found cluster is exactly one true cluster, and its centre is that cluster's mean
    assert len(set(zip(which.tolist(), truth.tolist()))) == 5
    for j in range(5):
        members = truth[which == j]
        assert len(set(members.tolist())) == 1
        np.testing.assert_allclose(centres[j], points[truth == members[0]].mean(axis=0),
                                   rtol=1e-12, atol=1e-12)
    # a fixed point: a further iteration moves nothing
    again, which2 = features.kmeans(points, 5, iterations=11, seed=1)
    np.testing.assert_array_equal(which, which2)


def test_patches_are_slices_of_the_images():
    images = np.arange(3 * 2 * 6 * 7, dtype=np.float64).reshape(3, 2, 6, 7)
    p = features.patches(images, 3, 50, seed=2)
    assert p.shape == (50, 2 * 9)
    every = {tuple(images[n, :, r:r + 3, c:c + 3].reshape(-1))
             for n in range(3) for r in range(4) for c in range(5)}
    assert all(tuple(row) in every for row in p)
    assert len({tuple(row) for row in p}) > 30  # drawn at random, not one place


def test_kmeans_filters_are_unit_norm_patch_centroids():
    rng = np.random.default_rng(5)
    images = rng.standard_normal((20, 1, 8, 8))
    images[:, :, :, :4] += 3  # every image: a vertical edge down its middle
    w = features.kmeans_filters(images, 6, 3, count=2000, seed=0)
    assert w.shape == (6, 1, 3, 3)
    np.testing.assert_allclose(np.linalg.norm(w.reshape(6, -1), axis=1), 1, rtol=1e-12)
    # the edge is the strongest structure of the patches: some centroid is an edge detector
    edge = np.array([[1, 0, -1]] * 3) / math.sqrt(6)
    assert max(abs((w[:, 0] * edge).sum(axis=(1, 2)))) > 0.8


# -- predict and a frozen first layer ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_outputs():
    g = convc.Graph("predict")
    x = g.input("x", (None, 1, 6, 6))
    y = g.input("y", (None,), dtype="int64")
    h = g.flatten(g.max_pool(g.relu(g.conv(x, channels=3, kernel=3)), window=2))
    logits = g.dense(h, 4)
    g.output(h, logits, g.softmax_cross_entropy(logits, y))
    return g


@pytest.mark.parametrize("batch_size", [1, 7, 32, 1000])
def test_predict_equals_one_call_over_the_whole_set(two_outputs, batch_size):
    net = convc.compile(two_outputs, "float64")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 1, 6, 6)), rng.integers(0, 4, 32)
    params = net.init_params(0)
    whole = net(x=x, y=y, **params)
    got = predict(net, {"x": x, "y": y}, params, batch_size=batch_size)
    assert set(got) == set(whole)
    for name in whole:
        assert got[name].shape == whole[name].shape
        np.testing.assert_allclose(got[name], whole[name], rtol=1e-12, err_msg=name)
    trainer = convc.compile(two_outputs, "float64", grad=True)  # outputs only
    np.testing.assert_allclose(predict(trainer, {"x": x, "y": y}, params, 5)["dense0"],
                               whole["dense0"], rtol=1e-12)


def test_predict_refuses_inputs_of_different_lengths(two_outputs):
    net = convc.compile(two_outputs)
    with pytest.raises(ValueError, match="same number of examples"):
        predict(net, {"x": np.zeros((4, 1, 6, 6), np.float32), "y": np.zeros(3, np.int64)})


def test_fit_trains_only_the_parameters_given_to_the_optimizer(two_outputs):
    """grad= names the trained parameters; the others are passed along, unchanged."""
    last = ["dense0.weight", "dense0.bias"]
    net = convc.compile(two_outputs, grad=last)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    params = net.init_params(0)
    frozen = {k: v.copy() for k, v in params.items() if k not in last}
    before = {k: params[k].copy() for k in last}
    history = fit(net, params, SGD({k: params[k] for k in last}, lr=0.2),
                  {"x": x, "y": y}, epochs=5, batch_size=16, log=lambda line: None)
    for name, value in frozen.items():
        np.testing.assert_array_equal(params[name], value)
    for name in last:
        assert not np.allclose(params[name], before[name])
    assert history[-1].loss < history[0].loss
