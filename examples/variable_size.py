"""Variable-size inputs (section 9.7): one compiled module classifies images of any size.

The input's height and width are None: they become the sizes x_H and x_W, arguments of the
generated C like the batch N. Adaptive average pooling ends the convolutional part with a
fixed 3x3 grid of cells whatever the size, so the dense layer after it always sees the same
number of features. The one training module (forward and derived backward pass) learns to
tell horizontal from vertical stripes on batches of many sizes, then classifies sizes it
never saw, all with one shared library; a module compiled for one size alone agrees with it.
"""

import time

import numpy as np

import convc
from convc.train import Adam

def classifier(name):
    """conv, conv, adaptive pooling, dense: logits for inputs of any height and width."""
    g = convc.Graph(name)
    x = g.input("x", (None, 1, None, None))  # batch, one channel, any height and width
    h = g.relu(g.conv(x, channels=8, kernel=3, padding="same"))
    h = g.relu(g.conv(h, channels=8, kernel=3, stride=2, padding=1))
    h = g.adaptive_avg_pool(h, 3)  # (N, 8, 3, 3) whatever the size
    return g, g.dense(g.flatten(h), 2)


g, logits = classifier("anysize_train")
g.output(g.softmax_cross_entropy(logits, g.input("labels", (None,), dtype="int64")))
forward_graph, forward_logits = classifier("anysize")
forward_graph.output(forward_logits)


def stripes(rng, count, height, width):
    """Noisy stripes of a random period and phase: label 0 horizontal, 1 vertical."""
    ys = rng.integers(0, 2, count)
    images = rng.normal(0.0, 0.3, (count, 1, height, width))
    for k, y in enumerate(ys):
        period, phase = rng.integers(2, 5), rng.integers(0, 4)
        axis = np.arange(width if y else height)
        wave = ((axis + phase) // period % 2).astype(float)
        images[k, 0] += wave[None, :] if y else wave[:, None]
    return images.astype(np.float32), ys


started = time.perf_counter()
train = convc.compile(g, grad=True, num_threads=1)
params = train.init_params(seed=0)
print(f"sizes given at call time: {', '.join(train.sizes)}")
optimizer = Adam(params, lr=1e-2)
rng = np.random.default_rng(0)
for step in range(150):
    height, width = rng.integers(10, 33, 2)  # every batch its own size
    images, ys = stripes(rng, 32, height, width)
    loss, grads = train(x=images, labels=ys, **params)
    optimizer.step(grads)
print(f"trained 150 batches of sizes 10..32 in {time.perf_counter() - started:.1f} s "
      f"(compile included), last loss {float(loss):.3f}")

forward = convc.compile(forward_graph, num_threads=1)  # the same parameters, logits out

libraries = set()
for height, width in [(12, 12), (20, 31), (40, 28), (64, 64)]:
    images, ys = stripes(np.random.default_rng(height * width), 200, height, width)
    accuracy = (forward(x=images, **params).argmax(axis=1) == ys).mean()
    libraries.add(forward.library_path)
    seen = "" if max(height, width) <= 32 else "  (a size never trained on)"
    print(f"{height:3d}x{width:<3d} images: accuracy {accuracy:.3f}{seen}")
print(f"one library served every size: {len(libraries) == 1} ({forward.library_path.name})")

fixed = convc.compile(forward_graph, sizes={"x_H": 40, "x_W": 28}, num_threads=1)  # constant bounds
images, _ = stripes(np.random.default_rng(1), 8, 40, 28)
difference = np.abs(fixed(x=images, **params) - forward(x=images, **params)).max()
print(f"specialised to 40x28: a library of its own ({fixed.library_path != forward.library_path}), "
      f"largest difference {difference:.2e}")
print(f"generated C: {forward.source_path}")
