"""Pixel labelling with a recurrent convolutional network (section 9.6, figure 9.17).

An image X is labelled pixel by pixel, and the label map is refined over a fixed number of
steps with the same three kernels U, V, W at every step::

    H(1) = relu(U * X)                     H(t) = relu(U * X + W * Y(t-1))
    A(t) = V * H(t)                        Y(t) = softmax(A(t))   (over the classes)

Each step's convolution reuses the first step's kernels (``weight=``), so the derived
gradient of U, V and W is the sum of their gradients through every step. The loss is the
per-pixel cross-entropy of every step's estimate, summed over the steps. The task: noisy
images of a random rectangle and a random disc; each pixel is labelled inside or outside a
shape. The input carries a second channel of ones, so that U's taps on it act as the
hidden units' bias (the chapter's equations have none).
"""

from __future__ import annotations

import time

import numpy as np

import convc
from convc.train import Adam, fit

SIZE, HIDDEN, CLASSES, STEPS, KERNEL, EPOCHS = 16, 12, 2, 4, 3, 10


def network(steps: int = STEPS, tied: bool = True, size: int = SIZE, hidden: int = HIDDEN,
            classes: int = CLASSES, kernel: int = KERNEL) -> convc.Graph:
    """The unrolled network; ``tied=False`` gives every step its own U, V, W (``U1``...)."""
    g = convc.Graph("pixel_labels" if tied else "pixel_labels_untied")
    x = g.input("x", (None, 2, size, size))
    labels = g.input("labels", (None, size, size), dtype="int64")

    kernels: dict[str, convc.Tensor] = {}  # U, V, W: made by their first use

    def conv(t, what, inp, channels):
        out = g.conv(inp, channels, kernel, padding="same", bias=False,
                     weight=kernels.get(what) if tied else None, name=f"{what}{t}")
        if what not in kernels or not tied:
            kernels[what] = g.tensor(f"{what}{t}.weight")
        return out

    y, logits, losses = None, [], []
    for t in range(1, steps + 1):
        pre = conv(t, "U", x, hidden)
        if y is not None:
            pre = g.add(pre, conv(t, "W", y, hidden), name=f"pre{t}")
        h = g.relu(pre, name=f"H{t}")
        logits.append(conv(t, "V", h, classes))
        y = g.softmax(logits[-1], name=f"Y{t}")
        losses.append(g.softmax_cross_entropy(logits[-1], labels, name=f"loss{t}"))
    g.output(*reversed(losses), logits[0], logits[-1])  # the last step's loss first
    return g


def shapes(count: int, seed: int, size: int = SIZE, noise: float = 1.4):
    """Images of one rectangle and one disc (intensity 1) under Gaussian noise; label 1 on
    the shapes' pixels. Returns x (count, 2, size, size) and labels (count, size, size)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    labels = np.zeros((count, size, size), np.int64)
    for mask in labels:
        top, left = rng.integers(0, size - 4, 2)
        height, width = rng.integers(3, size // 2, 2)
        mask[top:top + height, left:left + width] = 1
        cy, cx, r = *rng.uniform(2, size - 2, 2), rng.uniform(2, size / 4)
        mask[(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 1
    x = np.empty((count, 2, size, size), np.float32)
    x[:, 0] = labels + noise * rng.standard_normal(labels.shape)
    x[:, 1] = 1.0
    return x, labels


def main() -> None:
    start = time.perf_counter()
    (train_x, train_y), (test_x, test_y) = shapes(768, seed=0), shapes(256, seed=1)
    g = network()
    net = convc.compile(g, grad=True, num_threads=1)  # small tensors: one thread
    print(f"parameters: {g.parameters()}")
    print(f"compiled {STEPS} steps with shared U, V, W in {time.perf_counter() - start:.2f} s")
    params = net.init_params(seed=0, scheme="glorot")
    fit(net, params, Adam(params, lr=1e-2), {"x": train_x, "labels": train_y}, epochs=EPOCHS,
        batch_size=32)
    outputs, _ = net(x=test_x, labels=test_y, **params)
    first = (outputs["V1"].argmax(axis=1) == test_y).mean()
    last = (outputs[f"V{STEPS}"].argmax(axis=1) == test_y).mean()
    noisy = ((test_x[:, 0] > 0.5) == test_y).mean()
    print(f"held-out per-pixel accuracy: thresholding the noisy image {noisy:.4f}, "
          f"step 1 {first:.4f}, step {STEPS} {last:.4f}")
    print(f"whole run {time.perf_counter() - start:.1f} s, compile included")


if __name__ == "__main__":
    main()
