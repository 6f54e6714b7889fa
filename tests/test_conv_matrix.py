"""``convc.conv_matrix``: convolution as multiplication by a matrix (section 9.1).

* 1-D: the matrix equals a Toeplitz matrix from ``scipy.linalg.toeplitz`` (strided rows,
  padded columns dropped, the kernel reversed for ``flip``);
* 2-D: a doubly block Toeplitz matrix assembled here block by block, per channel pair;
* ``M @ x.ravel()`` equals the compiled module's output, and ``M.T @ dy.ravel()`` its
  derived input gradient (the transposed convolution), single- and multi-channel, with
  stride, padding, dilation, groups and flip.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import toeplitz

import convc


def toeplitz_1d(w, n, stride=1, pad=0, flip=False):
    """Cross-correlation of a length-n signal with w as a Toeplitz matrix (scipy)."""
    w = w[::-1] if flip else w
    padded = n + 2 * pad
    rows = padded - len(w) + 1
    first_row = np.concatenate([w, np.zeros(padded - len(w))])
    first_col = np.concatenate([[w[0]], np.zeros(rows - 1)])
    t = toeplitz(first_col, first_row)
    return t[::stride, pad:pad + n]


def doubly_block_toeplitz(w, h, width):
    """Valid 2-D cross-correlation of an h x width image: block (i, j) is the Toeplitz
    matrix of kernel row j - i (0 outside the kernel's rows)."""
    kh, kw = w.shape
    oh, ow = h - kh + 1, width - kw + 1
    zero = np.zeros((ow, width))
    blocks = [[toeplitz_1d(w[j - i], width) if 0 <= j - i < kh else zero
               for j in range(h)] for i in range(oh)]
    return np.block(blocks)


@pytest.mark.parametrize("n, k, stride, pad, flip", [
    (8, 3, 1, 0, False), (9, 4, 2, 1, False), (7, 3, 1, 2, True), (10, 2, 3, 0, True),
])
def test_1d_matrix_is_toeplitz(n, k, stride, pad, flip):
    w = np.random.default_rng(n).standard_normal(k)
    m = convc.conv_matrix(w[None, None], (1, n), stride=stride, padding=pad, flip=flip)
    np.testing.assert_array_equal(m, toeplitz_1d(w, n, stride, pad, flip))


def test_2d_matrix_is_doubly_block_toeplitz():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((2, 3, 2, 3))  # 2 outputs, 3 inputs
    m = convc.conv_matrix(w, (3, 5, 6))
    expected = np.block([[doubly_block_toeplitz(w[k, c], 5, 6) for c in range(3)]
                         for k in range(2)])
    np.testing.assert_array_equal(m, expected)
    assert m.shape == (2 * 4 * 4, 3 * 5 * 6)
    # sparse: each row holds one kernel's taps per input channel
    assert np.count_nonzero(m) == 2 * 4 * 4 * w[0].size


CASES = [
    dict(shape=(1, 9), kernel=(3,), channels=1, stride=2, padding=1, dilation=1, groups=1,
         flip=False),
    dict(shape=(2, 6, 5), kernel=(3, 2), channels=3, stride=(2, 1), padding="same",
         dilation=1, groups=1, flip=True),
    dict(shape=(4, 7, 6), kernel=(2, 2), channels=2, stride=1, padding=((1, 0), (2, 1)),
         dilation=2, groups=2, flip=False),
    dict(shape=(1, 5, 5), kernel=(3, 3), channels=1, stride=1, padding="full", dilation=1,
         groups=1, flip=True),
]


@pytest.mark.parametrize("case", CASES)
def test_matrix_gives_the_module_output_and_its_transpose_the_input_gradient(case):
    shape = case["shape"]
    g = convc.Graph("asmatrix")
    x = g.input("x", (None, *shape))
    args = {k: case[k] for k in ("stride", "padding", "dilation", "groups", "flip")}
    y = g.conv(x, case["channels"], case["kernel"], bias=False, **args)
    g.output(y)
    net = convc.compile(g, "float64", grad=["x"])
    rng = np.random.default_rng(len(shape))
    w = rng.standard_normal((case["channels"], shape[0] // case["groups"], *case["kernel"]))
    xs = rng.standard_normal((2, *shape))
    out, _ = net(x=xs, **{"conv0.weight": w})
    dy = rng.standard_normal(out.shape)
    _, grads = net(x=xs, **{"conv0.weight": w, "grad:conv0": dy})
    m = convc.conv_matrix(w, shape, **args)
    assert m.shape == (out[0].size, xs[0].size)
    for n in range(2):
        np.testing.assert_allclose(m @ xs[n].ravel(), out[n].ravel(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.T @ dy[n].ravel(), grads["x"][n].ravel(), rtol=1e-12,
                                   atol=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(convc.GraphError, match="expected a \\(K, C/groups, \\*kernel\\) "
                                               "weight"):
        convc.conv_matrix(np.ones((1, 1, 3)), (1, 5, 5))


def test_circular_padding_gives_the_circulant_matrices():
    """Section 9.1's doubly block circulant matrix: with the input read periodically, the
    1-D matrix is scipy's circulant of the (reversed, rolled) kernel, and the 2-D one
    multiplies as the circular cross-correlation computed here with np.roll."""
    from scipy.linalg import circulant

    k = np.array([[[1.0, 2.0, -3.0]]])
    m = convc.conv_matrix(k, (1, 7), padding="same", circular=True)
    # y[i] = Σ_m k[m] x[(i + m - 1) mod 7]: M[i, j] = k[j - i + 1], a function of i - j
    first_column = np.zeros(7)
    first_column[[0, 1, 6]] = [2.0, 1.0, -3.0]
    np.testing.assert_array_equal(m, circulant(first_column))
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 2, 3, 3))
    x = rng.standard_normal((2, 5, 6))
    m2 = convc.conv_matrix(w, (2, 5, 6), padding="same", circular=True)
    expected = np.zeros((2, 5, 6))
    for o in range(2):
        for c in range(2):
            for a in range(3):
                for b in range(3):
                    expected[o] += w[o, c, a, b] * np.roll(x[c], (1 - a, 1 - b), axis=(0, 1))
    np.testing.assert_allclose(m2 @ x.ravel(), expected.ravel(), rtol=1e-12, atol=1e-12)
