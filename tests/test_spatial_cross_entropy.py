"""Softmax cross-entropy on label maps: logits (N, C, *spatial), labels (N, *spatial), the
mean over the batch and every position, against numpy written here and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import convc

from test_autodiff import check_finite_differences


def label_map_loss(logits, labels):
    """Mean over n and every position d of logsumexp_c(z[n, :, d]) - z[n, labels[n, d], d]."""
    z = np.moveaxis(np.asarray(logits, np.float64), 1, -1).reshape(-1, logits.shape[1])
    y = labels.reshape(-1)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), y]))


def label_map_grad(logits, labels):
    """(softmax - onehot) / (N·|positions|), by the closed form."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    onehot = np.moveaxis(np.eye(z.shape[1])[labels], -1, 1)
    return (p - onehot) / labels.size


def compile_loss(spatial, classes):
    g = convc.Graph("label_map_loss")
    x = g.input("x", (None, classes, *spatial))
    y = g.input("y", (None, *spatial), dtype="int64")
    loss = g.softmax_cross_entropy(x, y, name="loss")
    assert loss.shape == ()
    g.output(loss)
    return convc.compile(g, "float64", grad=["x"])


@pytest.mark.parametrize("spatial,classes,batch", [((7,), 3, 2), ((4, 5), 2, 3),
                                                   ((3, 1), 4, 1), ((2, 3, 2), 3, 2)])
def test_label_map_loss_and_gradient(spatial, classes, batch):
    net = compile_loss(spatial, classes)
    rng = np.random.default_rng(len(spatial) * 10 + classes)
    x = 4 * rng.standard_normal((batch, classes, *spatial))
    y = rng.integers(0, classes, (batch, *spatial))
    loss, grads = net(x=x, y=y)
    np.testing.assert_allclose(loss, label_map_loss(x, y), rtol=1e-12)
    np.testing.assert_allclose(grads["x"], label_map_grad(x, y), rtol=1e-10, atol=1e-15)
    check_finite_differences(net, dict(x=x, y=y), ["x"], {"loss": np.array(1.5)}, rng)


def test_label_map_loss_float32_large_logits():
    net32 = convc.compile(compile_loss((3, 3), 3).lowered.graph, "float32")
    rng = np.random.default_rng(4)
    x = (60 * rng.standard_normal((2, 3, 3, 3))).astype(np.float32)  # exp would overflow
    y = rng.integers(0, 3, (2, 3, 3))
    got = net32(x=x, y=y)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, label_map_loss(x, y), rtol=1e-5)


def test_label_map_out_of_range_label_is_refused():
    net = compile_loss((2, 2), 3)
    y = np.zeros((1, 2, 2), np.int64)
    y[0, 1, 0] = 3
    with pytest.raises(convc.ArgumentError, match=r"'y': values must lie in \[0, 3\)"):
        net(x=np.zeros((1, 3, 2, 2)), y=y)
