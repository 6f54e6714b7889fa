"""Convolution, tiled convolution and a locally connected layer on the same small task.

Section 9.5 of the chapter compares three ways of sharing a layer's parameters over space
(figure 9.16): a convolution uses one kernel everywhere (9.7), a tiled convolution cycles
``t`` kernels (9.10) and a locally connected layer has a kernel per output position (9.9).
Each network here is that layer (16 channels, 3x3, padding 1), ReLU, 2x2 max pooling and a
dense layer to 10 classes, trained with Adam for a few epochs on the 8x8 digits of
scikit-learn (``pip install ".[examples]"``). It prints, side by side, the layer's
parameters (biases: shared, tiled, untied), its forward FLOPs per image (counted from its
comprehensions, as ``explain()`` does) and the held-out accuracy.
"""

import sys
import time

import numpy as np
import sympy

import convc
from convc.explain import flops
from convc.train import Adam, fit

EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 4

LAYERS = {
    "convolution": lambda g, x: g.conv(x, 16, 3, padding=1, bias="shared", name="layer"),
    "tiled (t=2)": lambda g, x: g.tiled_conv(x, 16, 3, tiles=2, padding=1, bias="tiled",
                                             name="layer"),
    "locally connected": lambda g, x: g.locally_connected(x, 16, 3, padding=1,
                                                          bias="untied", name="layer"),
}


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.8 * len(images))
    return (images[order[:cut]], labels[order[:cut]]), (images[order[cut:]], labels[order[cut:]])


def network(layer) -> convc.Graph:
    g = convc.Graph("spatial_sharing")
    x = g.input("x", (None, 1, 8, 8))
    y = g.input("y", (None,), dtype="int64")
    h = g.max_pool(g.relu(layer(g, x)), window=2)
    logits = g.dense(g.flatten(h), 10)
    g.output(logits, g.softmax_cross_entropy(logits, y))
    return g


def layer_flops(net: convc.Module) -> int:
    """Forward FLOPs per image of the node ``layer``, from its comprehensions."""
    lowered = net.lowered
    shapes = {n: b.shape for n, b in lowered.buffers.items()}
    (step,) = [s for s in lowered.steps if s.node == "layer" and s.role == "fwd"]
    total = sum((flops(c, shapes) for c in step.comps), sympy.Integer(0))
    return int(total.subs(convc.ops.BATCH, 1))


def main() -> None:
    start = time.perf_counter()
    (train_x, train_y), (test_x, test_y) = load_digits_split()
    rows = []
    for label, layer in LAYERS.items():
        g = network(layer)
        net = convc.compile(g, grad=True, num_threads=1)  # small layers: one thread
        params = net.init_params(seed=0)
        shapes = {n: s for n, s in g.parameters().items() if n.startswith("layer.")}
        count = sum(int(np.prod(s)) for s in shapes.values())
        fit(net, params, Adam(params, lr=5e-3), {"x": train_x, "y": train_y}, epochs=EPOCHS,
            batch_size=64, seed=0, log=lambda line: None)
        outputs, _ = net(x=test_x, y=test_y, **params)
        accuracy = float((outputs["dense0"].argmax(axis=1) == test_y).mean())
        rows.append((label, count, shapes, layer_flops(net), accuracy))
        print(f"{label}: weight {shapes['layer.weight']}, bias {shapes['layer.bias']}")
    print(f"\nafter {EPOCHS} epochs of Adam on {len(train_y)} digits, "
          f"held out {len(test_y)}:")
    print(f"{'layer':<20}{'parameters':>12}{'FLOPs/image':>14}{'accuracy':>10}")
    for label, count, _, fl, accuracy in rows:
        print(f"{label:<20}{count:>12,}{fl:>14,}{accuracy:>10.4f}")
    print(f"whole run {time.perf_counter() - start:.1f} s, compiles included")


if __name__ == "__main__":
    main()
