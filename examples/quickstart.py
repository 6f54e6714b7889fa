"""Quickstart: define a LeNet-like network, compile it to a shared library, run a batch.

Prints the output shapes, where the library and its C source are, and the head of the C.
"""

import numpy as np

import convc

g = convc.Graph("lenet")
x = g.input("x", (None, 1, 28, 28))  # None: the batch size, given at call time
h = g.relu(g.conv(x, channels=6, kernel=5, padding="same"))
h = g.max_pool(h, window=2)
h = g.relu(g.conv(h, channels=16, kernel=5))
h = g.max_pool(h, window=2)
logits = g.dense(g.flatten(h), 10)
g.output(g.softmax(logits))

net = convc.compile(g)  # C, compiled with cffi and cached by content
params = net.init_params(seed=0)
batch = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
probs = net(x=batch, **params)

for name, shape in params.items():
    print(f"parameter {name:14s} {shape.shape}")
print(f"output    {'softmax0':14s} {probs.shape}, rows sum to {probs.sum(axis=1).mean():.6f}")
print(f"predicted classes of the first 8 images: {probs.argmax(axis=1)[:8]}")
print(f"shared library: {net.library_path}")
print(f"generated C:    {net.source_path}")
print("\nhead of the generated C:\n")
print("\n".join(net.source.splitlines()[:40]))
