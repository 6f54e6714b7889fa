"""Variable-size inputs (section 9.7): one compiled module runs on images of any size.

The input's height and width are None: they become the sizes x_H and x_W, arguments of the
generated C like the batch N. A global average pool before the dense layer gives a fixed
number of features whatever the size. The module runs on 16x16, 24x20 and 33x31 images
with the one shared library, and agrees with a module compiled for 24x20 alone.
"""

import numpy as np

import convc

g = convc.Graph("anysize")
x = g.input("x", (None, 3, None, None))  # batch, 3 channels, any height and width
h = g.relu(g.conv(x, channels=8, kernel=3, padding="same"))
h = g.conv(h, channels=16, kernel=3, stride=2, padding=1)
h = g.global_avg_pool(h)  # (N, 16) whatever the size
g.output(g.dense(h, 10))

net = convc.compile(g)
params = net.init_params(seed=0)
rng = np.random.default_rng(0)
print(f"sizes given at call time: {', '.join(net.sizes)}")
print(f"conv1 output shape: {g.tensor('conv1').shape}")

libraries = set()
outputs = {}
for height, width in [(16, 16), (24, 20), (33, 31)]:
    images = rng.standard_normal((4, 3, height, width)).astype(np.float32)
    logits = net(x=images, **params)
    outputs[(height, width)] = (images, logits)
    libraries.add(net.library_path)
    print(f"input {images.shape} -> output {logits.shape}")
print(f"one library served every size: {len(libraries) == 1} ({net.library_path.name})")

fixed = convc.compile(g, sizes={"x_H": 24, "x_W": 20})  # constant loop bounds
images, logits = outputs[(24, 20)]
difference = np.abs(fixed(x=images, **params) - logits).max()
print(f"specialised to 24x20: a library of its own ({fixed.library_path != net.library_path}), "
      f"largest difference {difference:.2e}")
