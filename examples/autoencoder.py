"""The convolutional autoencoder of equation 9.14, trained on the 8x8 digits.

The encoder is a strided convolution ``H = c(K, V, s)``; the decoder reconstructs with the
transposed convolution of the same kernel, ``R = h(K, H, s)`` (9.13): the weights are tied,
one parameter read by both layers, so its gradient is the sum of two derived gradients
(9.11 through the encoder, and through the decoder). The training loss is the mean squared
reconstruction error, printed per epoch on the training set and on held-out images.
Needs scikit-learn (``pip install ".[examples]"``).
"""


import convc
from convc.train import Adam, fit

from train_digits import load_digits_split

g = convc.Graph("autoencoder")
v = g.input("v", (None, 1, 8, 8))
h = g.conv(v, channels=3, kernel=4, stride=2, padding=1, bias=False)        # H = c(K, V, 2)
r = g.conv_transpose(h, channels=1, kernel=4, stride=2, padding=1, bias=False,
                     weight=g.tensor("conv0.weight"))                       # R = h(K, H, 2)
g.output(g.mean_squared_error(r, v))

net = convc.compile(g, grad=True)
print(f"library: {net.library_path}")
print(f"generated C: {net.source_path}")
print("the derived gradients of the tied kernel K:")
for step in net.lowered.steps:
    if step.role == "dweight":
        print(f"  through {step.node}: {step.comps[0]}")

(train, _), (test, _) = load_digits_split()
params = net.init_params(seed=0, scheme="glorot")
first = float(net(v=test, **params)[0])
print(f"held-out reconstruction error before training: {first:.5f}")


def held_out() -> float:
    return float(net(v=test, **params)[0])


history = fit(net, params, Adam(params, lr=1e-2), {"v": train}, epochs=15, batch_size=64,
              evaluate=held_out, metric="held-out error")
print(f"held-out reconstruction error after training: {history[-1].accuracy:.5f} "
      f"({first / history[-1].accuracy:.1f}x lower); the input variance is {test.var():.5f}")
assert history[-1].loss < history[0].loss
