"""Train a small convolutional network on the 8x8 handwritten digits of scikit-learn.

The network: conv 16 3x3 (pad 1), ReLU, conv 32 3x3 (pad 1), ReLU, 2x2 max pool, dense 10,
softmax cross-entropy; Adam with learning rate 3e-3, batches of 64, on a fixed 80/20 split.
convc derives every gradient from the forward graph and compiles forward and backward into
one shared library. Needs scikit-learn (``pip install ".[examples]"``).
"""

import sys
import time

import numpy as np

import convc
from convc.train import Adam, fit

EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.8 * len(images))
    return (images[order[:cut]], labels[order[:cut]]), (images[order[cut:]], labels[order[cut:]])


def network() -> convc.Graph:
    g = convc.Graph("digits")
    x = g.input("x", (None, 1, 8, 8))
    y = g.input("y", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=16, kernel=3, padding=1))
    h = g.relu(g.conv(h, channels=32, kernel=3, padding=1))
    h = g.max_pool(h, window=2)
    logits = g.dense(g.flatten(h), 10)
    g.output(logits, g.softmax_cross_entropy(logits, y))
    return g


def main() -> None:
    start = time.perf_counter()
    (train_x, train_y), (test_x, test_y) = load_digits_split()
    g = network()
    compile_start = time.perf_counter()
    trainer = convc.compile(g, grad=True)   # forward + derived backward, one library
    predictor = convc.compile(g)            # forward only, for the held-out set
    compile_time = time.perf_counter() - compile_start
    print(f"training library: {trainer.library_path}")
    print(f"generated C:      {trainer.source_path}")
    print(f"compiled in {compile_time:.2f} s (cached builds load in milliseconds)")

    params = trainer.init_params(seed=0)
    optimizer = Adam(params, lr=3e-3)

    def accuracy() -> float:
        out = predictor(x=test_x, y=test_y, **params)
        return float((out["dense0"].argmax(axis=1) == test_y).mean())

    history = fit(trainer, params, optimizer, {"x": train_x, "y": train_y}, epochs=EPOCHS,
                  batch_size=64, seed=0, evaluate=accuracy)
    rate = np.median([e.images_per_second for e in history])
    print(f"held-out accuracy {history[-1].accuracy:.4f} on {len(test_y)} images")
    print(f"training throughput {rate:,.0f} images/s (median over epochs)")
    print(f"whole run {time.perf_counter() - start:.1f} s, compile included")


if __name__ == "__main__":
    main()
