"""Features without full training (section 9.9), on the 8x8 digits of scikit-learn.

A first layer (conv 5x5 'same', ReLU, 2x2 max pool) is frozen with (a) random filters,
(b) hand-designed ones (oriented edges and Gabor filters), (c) k-means centroids of image
patches; its features are computed once for the whole set by the compiled forward pass, and
only the last layer, a softmax regression (convex), is trained on them. (d) trains the same
architecture fully. Then the chapter's cheap architecture search: architectures ranked by
their accuracy with random features and a trained last layer, beside their ranking after
full training. Last, greedy layer-wise training of a two-layer network.
Needs scikit-learn (``pip install ".[examples]"``).
"""

from __future__ import annotations

import time

import numpy as np

import convc
from convc import features
from convc.train import Adam, fit, predict

from train_digits import load_digits_split

THREADS = 1  # small layers: one thread each


def architecture(channels: int, kernel: int, name: str, shape=(1, 8, 8)) -> convc.Graph:
    """conv (channels, kernel, 'same'), ReLU, 2x2 max pool, then dense 10 on the features."""
    g = convc.Graph(name)
    x = g.input("x", (None, *shape))
    y = g.input("y", (None,), dtype="int64")
    pooled = g.max_pool(g.relu(g.conv(x, channels, kernel, padding="same")), window=2)
    logits = g.dense(g.flatten(pooled, name="features"), 10)
    g.output(g.softmax_cross_entropy(logits, y), logits, pooled)
    return g


def softmax_regression(width: int) -> convc.Graph:
    g = convc.Graph(f"last_layer_{width}")
    f = g.input("f", (None, width))
    y = g.input("y", (None,), dtype="int64")
    g.output(g.softmax_cross_entropy(g.dense(f, 10), g.tensor("y")))
    return g


class Trial:
    """One architecture compiled three ways: forward, fully trained, last layer alone."""

    def __init__(self, channels, kernel, data):
        self.g = architecture(channels, kernel, f"arch_{channels}_{kernel}")
        self.forward = convc.compile(self.g, num_threads=THREADS)
        self.data = data
        self.channels, self.kernel = channels, kernel

    def accuracy(self, params) -> float:
        (_, _), (x, y) = self.data
        logits = predict(self.forward, {"x": x, "y": y}, params)["dense0"]
        return float((logits.argmax(axis=1) == y).mean())

    def train_last_layer(self, first: np.ndarray, epochs=30) -> tuple[float, float]:
        """Features computed once with conv weight ``first``; softmax regression on them."""
        start = time.perf_counter()
        (x, y), _ = self.data
        params = self.forward.init_params(0)
        params["conv0.weight"] = first.astype(np.float32)
        pooled = predict(self.forward, {"x": x, "y": y}, params)["pool0"]
        feats = pooled.reshape(len(x), -1)  # row-major, as the flatten node reads it
        head = convc.compile(softmax_regression(feats.shape[1]), grad=True, num_threads=THREADS)
        last = {k: params[k] for k in ("dense0.weight", "dense0.bias")}
        fit(head, last, Adam(last, lr=1e-2), {"f": feats, "y": y}, epochs=epochs,
            log=lambda line: None)
        return self.accuracy(params), time.perf_counter() - start

    def train_fully(self, epochs=10) -> tuple[float, float, dict]:
        start = time.perf_counter()
        (x, y), _ = self.data
        net = convc.compile(self.g, grad=True, num_threads=THREADS)
        params = net.init_params(0)
        fit(net, params, Adam(params, lr=3e-3), {"x": x, "y": y}, epochs=epochs,
            log=lambda line: None)
        return self.accuracy(params), time.perf_counter() - start, params


def ranks(values) -> list[int]:
    order = np.argsort(-np.asarray(values), kind="stable")
    r = np.empty(len(values), int)
    r[order] = np.arange(1, len(values) + 1)
    return r.tolist()


def main() -> None:
    begin = time.perf_counter()
    data = load_digits_split()
    (train_x, _), _ = data
    main_trial = Trial(16, 5, data)
    rng = np.random.default_rng(1)
    banks = {
        "(a) random filters": rng.standard_normal((16, 1, 5, 5)) * np.sqrt(2 / 25),
        "(b) edges + Gabor": features.as_weight(np.concatenate([
            features.oriented_edges(5, 8, sigma=1.0),
            features.gabor(5, 4, wavelength=4.0, phase=0.0),
            features.gabor(5, 4, wavelength=4.0, phase=np.pi / 2)])),
        "(c) patch k-means": features.kmeans_filters(train_x, 16, 5, count=5000, seed=0),
    }
    print("first layer               held-out accuracy   time (s, compile included)")
    for label, weight in banks.items():
        acc, seconds = main_trial.train_last_layer(weight)
        print(f"{label:<25} {acc:17.4f}   {seconds:8.2f}")
    full_acc, seconds, full_params = main_trial.train_fully()
    print(f"{'(d) fully trained':<25} {full_acc:17.4f}   {seconds:8.2f}")

    print("\narchitecture search: random features + trained last layer vs full training")
    trials = [Trial(c, k, data) for c, k in ((4, 3), (8, 3), (16, 3))] + [main_trial]
    cheap, full = [], []
    for t in trials:
        w = np.random.default_rng(2).standard_normal((t.channels, 1, t.kernel, t.kernel))
        cheap.append(t.train_last_layer(w * np.sqrt(2 / t.kernel**2))[0])
        full.append(full_acc if t is main_trial else t.train_fully()[0])
    print("filters kernel   random+last  rank   full  rank")
    for t, a, b, ra, rb in zip(trials, cheap, full, ranks(cheap), ranks(full)):
        print(f"{t.channels:7d} {t.kernel:6d}   {a:11.4f}  {ra:4d}  {b:6.4f}  {rb:4d}")
    agree = np.corrcoef(ranks(cheap), ranks(full))[0, 1]
    print(f"rank correlation {agree:.2f}")

    # greedy layer-wise: layer 1 was trained with a temporary head in (d); freeze it,
    # compute its pooled features once, train layer 2 + a new head on them
    start = time.perf_counter()
    (x, y), (tx, ty) = data
    layer1 = {"x": x, "y": y}, {"x": tx, "y": ty}
    h_train, h_test = (predict(main_trial.forward, d, full_params)["pool0"] for d in layer1)
    second = architecture(32, 3, "greedy_layer2", shape=h_train.shape[1:])
    trainer = convc.compile(second, grad=True, num_threads=THREADS)
    params = trainer.init_params(0)
    fit(trainer, params, Adam(params, lr=3e-3), {"x": h_train, "y": y}, epochs=8,
        log=lambda line: None)
    logits = predict(convc.compile(second, num_threads=THREADS), {"x": h_test, "y": ty},
                     params)["dense0"]
    greedy = float((logits.argmax(axis=1) == ty).mean())
    print(f"\ngreedy layer-wise, two layers: held-out accuracy {greedy:.4f} "
          f"(layer 2 in {time.perf_counter() - start:.2f} s; layer 1 alone {full_acc:.4f})")
    print(f"whole run {time.perf_counter() - begin:.1f} s, compiles included")


if __name__ == "__main__":
    main()
