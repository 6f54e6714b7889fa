"""Claims of chapter 9 (sections 9.1-9.9) that no other test states as the chapter does.

docs/chapter9.md maps every section, equation and figure to the API and to the tests that
check it; this file fills the gaps, each test on compiled modules (or `convc.conv_matrix`)
against plain numpy written here:

* 9.1, equations 9.4-9.5: true convolution is commutative, ``(I * K) = (K * I)`` in 'full' mode;
* 9.2: sparse interactions and parameter sharing, read from the convolution's matrix
  (figures 9.2-9.5), and equivariance to translation (a shifted input gives a shifted output);
* 9.3: max pooling's approximate invariance to a one-pixel shift (figure 9.8) and the learned
  invariance of pooling across channels (figure 9.9);
* 9.4: figure 9.11's three architectures compiled and run, with the shapes the figure gives;
* 9.5: a strided convolution is the unit-stride one downsampled (figure 9.12), and the output
  sizes of 'valid', 'same' and 'full' zero padding (figure 9.13);
* 9.5, equations 9.11-9.13: the gradients g and h of a loss J(V, K) through a strided
  convolution, against the chapter's sums and finite differences of J.
"""

from __future__ import annotations

import math

import numpy as np

import convc
import reference as ref


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


# -- 9.1: equations 9.4 and 9.5 ------------------------------------------------------------------

def test_flipped_convolution_is_commutative():
    """Equation 9.4 sums I(m, n) K(i - m, j - n), 9.5 sums I(i - m, j - n) K(m, n): swapping
    the roles of image and kernel gives the same 'full' convolution, in 1-D and 2-D."""
    g = convc.Graph("commute")
    a1, b1 = g.input("a1", (1, 1, 6)), g.input("b1", (1, 1, 3))
    a2, b2 = g.input("a2", (1, 1, 4, 5)), g.input("b2", (1, 1, 2, 3))
    outs = [g.conv(a1, 1, 3, padding="full", flip=True, bias=False, name="ik1"),
            g.conv(b1, 1, 6, padding="full", flip=True, bias=False, name="ki1"),
            g.conv(a2, 1, (2, 3), padding="full", flip=True, bias=False, name="ik2"),
            g.conv(b2, 1, (4, 5), padding="full", flip=True, bias=False, name="ki2")]
    g.output(*outs)
    net = convc.compile(g, "float64")
    rng = rng_for("commute")
    i1, k1 = rng.standard_normal(6), rng.standard_normal(3)
    i2, k2 = rng.standard_normal((4, 5)), rng.standard_normal((2, 3))
    out = net(a1=i1[None, None], b1=k1[None, None], a2=i2[None, None], b2=k2[None, None],
              **{"ik1.weight": k1[None, None], "ki1.weight": i1[None, None],
                 "ik2.weight": k2[None, None], "ki2.weight": i2[None, None]})
    full1 = np.array([sum(i1[m] * k1[t - m] for m in range(6) if 0 <= t - m < 3)
                      for t in range(8)])                                  # equation 9.3
    np.testing.assert_allclose(out["ik1"][0, 0], full1, rtol=1e-12)
    np.testing.assert_allclose(out["ki1"][0, 0], full1, rtol=1e-12)
    full2 = np.zeros((5, 7))
    for i in range(5):
        for j in range(7):
            full2[i, j] = sum(i2[m, n] * k2[i - m, j - n] for m in range(4) for n in range(5)
                              if 0 <= i - m < 2 and 0 <= j - n < 3)         # equation 9.4
    np.testing.assert_allclose(out["ik2"][0, 0], full2, rtol=1e-12)
    np.testing.assert_allclose(out["ki2"][0, 0], full2, rtol=1e-12)


# -- 9.2: sparse interactions, parameter sharing, equivariance -----------------------------------

def test_sparse_interactions_and_parameter_sharing_in_the_matrix():
    """Figures 9.2-9.5 from the matrix of a 1-D convolution of kernel width 3 on 7 inputs:
    each output reads exactly 3 inputs (9.3), each input reaches at most 3 outputs (9.2),
    a second layer sees 5 inputs (9.4), and the 5·7 = 35 entries hold only the 3 weights,
    each used at every position (9.5); a dense layer would have 35 parameters."""
    w = np.array([[[0.5, -2.0, 3.0]]])
    m = convc.conv_matrix(w, (1, 7))
    assert m.shape == (5, 7)
    nonzero = m != 0
    assert (nonzero.sum(axis=1) == 3).all()                       # receptive field of s_i
    assert (nonzero.sum(axis=0) <= 3).all() and nonzero.sum(axis=0).max() == 3
    for i in range(5):                                            # s_i reads x_i..x_{i+2}
        assert np.flatnonzero(nonzero[i]).tolist() == [i, i + 1, i + 2]
        np.testing.assert_array_equal(m[i, i:i + 3], w[0, 0])
    assert sorted(set(m[nonzero].tolist())) == sorted(w.ravel().tolist())
    for value in w.ravel():                                       # shared by every output
        assert (m == value).sum() == 5
    deeper = convc.conv_matrix(w, (1, 5)) @ m                     # two layers: figure 9.4
    assert deeper.shape == (3, 7)
    assert ((deeper != 0).sum(axis=1) == 5).all()
    edge = convc.conv_matrix(np.array([[[-1.0, 1.0]]]), (1, 320))  # figure 9.6, one row
    assert edge.size == 319 * 320 and (edge != 0).sum() == 2 * 319


def test_convolution_is_equivariant_to_translation():
    """Section 9.2: f(g(I)) = g(f(I)) for a shift g. A stride-1 'valid' convolution (with its
    shared bias) of an image shifted by (a, b) is its output shifted by (a, b); and an event
    moved later in a time series appears later, unchanged, in the output."""
    g = convc.Graph("equivariance")
    img = g.input("img", (1, 2, 9, 10))
    seq = g.input("seq", (2, 1, 16))
    g.output(g.conv(img, 3, (3, 2), name="c2"), g.conv(seq, 2, 4, name="c1"))
    net = convc.compile(g, "float64")
    rng = rng_for("equivariance")
    params = {n: rng.standard_normal(s) for n, s in net.parameters.items()}
    big = rng.standard_normal((1, 2, 12, 14))      # the scene; each image is a window of it
    event = rng.standard_normal(5)
    seqs = np.zeros((2, 1, 16))
    seqs[0, 0, 2:7], seqs[1, 0, 9:14] = event, event                 # the event 7 steps later
    whole = net(img=big[:, :, :9, :10], seq=seqs, **params)["c2"]   # (1, 3, 7, 9)
    for a, b in [(1, 0), (0, 1), (2, 3), (3, 4)]:
        # the image seen shifted by (a, b): I'(x, y) = I(x + a, y + b)
        out = net(img=big[:, :, a:a + 9, b:b + 10], seq=seqs, **params)
        # is the output shifted by the same amount, where both are defined
        np.testing.assert_allclose(out["c2"][:, :, :7 - a, :9 - b], whole[:, :, a:, b:],
                                   rtol=1e-12, atol=1e-12)
        assert not np.allclose(out["c2"], whole)                  # equivariant, not invariant
    y = out["c1"]                                                 # (2, 2, 13)
    np.testing.assert_allclose(y[1, :, 7:], y[0, :, :-7], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y[1], y[0])


# -- 9.3: pooling ---------------------------------------------------------------------------------

def test_max_pooling_is_nearly_invariant_to_a_one_pixel_shift():
    """Figure 9.8: max pooling of width 3 and stride 1 over detector outputs with a strong
    response every 4 positions. Shifting the input one pixel right changes every detector
    value, but at least half of the pooled values (every window that holds a peak before and
    after the shift) stay the same."""
    g = convc.Graph("invariance")
    g.output(g.max_pool(g.input("x", (None, 1, 26)), 3, stride=1))
    net = convc.compile(g, "float64")
    rng = rng_for("invariance")
    s = rng.uniform(0.0, 1.0, 27)
    s[::4] = 10.0                                                 # peaks at multiples of 4
    x, shifted = s[1:], s[:-1]                                    # shifted[i] = x[i - 1]
    assert (x[1:] != shifted[1:]).all()                           # every detector changed
    out = net(x=np.stack([x, shifted])[:, None])
    pooled, pooled_shifted = out[:, 0]
    windows = np.lib.stride_tricks.sliding_window_view
    np.testing.assert_array_equal(pooled, windows(x, 3).max(axis=1))
    np.testing.assert_array_equal(pooled_shifted, windows(shifted, 3).max(axis=1))
    same = pooled == pooled_shifted
    # window j reads s[j+1..j+3] before and s[j..j+2] after: a peak in both when j % 4 in {2, 3}
    assert same[[j for j in range(24) if j % 4 in (2, 3)]].all()
    assert same.mean() >= 0.5                                     # half, as in figure 9.8
    assert (pooled_shifted != pooled).any()                       # invariance is approximate


def test_pooling_across_learned_filters_is_invariant_to_their_transformation():
    """Figure 9.9: three filters, each matching one rotation of a pattern, and a max over the
    three (maxout). Each rotated input drives a different detector, the pooled unit the same."""
    pattern = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    rotations = np.stack([np.rot90(pattern, r) for r in range(3)])  # 3 x 3 x 3
    g = convc.Graph("maxout")
    x = g.input("x", (None, 1, 3, 3))
    detect = g.conv(x, 3, 3, bias=False, name="detect")          # one output per filter
    g.output(detect, g.maxout(g.flatten(detect), 3, name="pool"))
    net = convc.compile(g, "float64")
    out = net(x=rotations[:, None], **{"detect.weight": rotations[:, None]})
    detectors, pooled = out["detect"].reshape(3, 3), out["pool"]
    np.testing.assert_allclose(detectors, np.einsum("aij,bij->ab", rotations, rotations))
    assert (detectors.argmax(axis=1) == [0, 1, 2]).all()          # a different unit fires
    assert not np.allclose(detectors[0], detectors[1])
    np.testing.assert_allclose(pooled[:, 0], [5.0, 5.0, 5.0])     # the pooled unit does not care


# -- 9.4: figure 9.11's architectures ------------------------------------------------------------

def adaptive_max(x, out):
    """Adaptive max pooling written here: cell i of O over [floor(i·I/O), ceil((i+1)·I/O))."""
    h, w = x.shape[2:]
    y = np.empty(x.shape[:2] + (out, out))
    for i in range(out):
        for j in range(out):
            rows = slice(i * h // out, math.ceil((i + 1) * h / out))
            cols = slice(j * w // out, math.ceil((j + 1) * w / out))
            y[:, :, i, j] = x[:, :, rows, cols].max(axis=(2, 3))
    return y


def trunk(g, x, name):
    """Convolution + ReLU at stride 2, pooling at stride 4, convolution + ReLU at stride 2;
    the kernels are those of the first trunk built (``weight=``), whatever the image size."""
    shared = {} if name == "a" else {"c0": g.tensor("c0a.weight"), "c1": g.tensor("c1a.weight")}
    h = g.conv(x, 4, 3, stride=2, padding=1, bias=False, weight=shared.get("c0"),
               name=f"c0{name}")
    h = g.max_pool(g.relu(h), 4)
    h = g.conv(h, 5, 3, stride=2, padding=1, bias=False, weight=shared.get("c1"),
               name=f"c1{name}")
    return g.relu(h)


def trunk_ref(x, p):
    h = np.maximum(ref.conv(x, p["c0a.weight"], None, 2, [(1, 1)] * 2), 0)
    h = ref.pool(h, "max", (4, 4), (4, 4), [(0, 0)] * 2, (1, 1))
    return np.maximum(ref.conv(h, p["c1a.weight"], None, 2, [(1, 1)] * 2), 0)


def test_the_three_architectures_of_figure_9_11():
    """Left: a fixed image size; convolution and pooling, reshaped to a vector, a dense layer
    and softmax. Center: images of two sizes pooled to the same 3 x 3 grid of cells, then
    one fully connected layer (a convolution whose kernel covers the whole grid, so that
    both sizes share it). Right: no fully connected layer; a convolution gives one map per
    class, averaged to the softmax's argument. One module holds all of them, every kernel
    shared; its outputs are checked against numpy."""
    classes, rng = 6, rng_for("figure 9.11")
    g = convc.Graph("figure_9_11")
    h = trunk(g, g.input("x", (None, 3, 64, 64)), "a")
    assert tuple(h.shape[1:]) == (5, 4, 4)
    left = g.softmax(g.dense(g.flatten(g.max_pool(h, 2)), classes, name="d"), name="left")
    maps = g.conv(h, classes, 1, name="maps")
    right = g.softmax(g.global_avg_pool(maps), name="right")
    centers = []
    for tag, size in [("b", (56, 48)), ("c", (72, 56))]:
        cells = g.adaptive_max_pool(trunk(g, g.input(f"x{tag}", (None, 3, *size)), tag), 3)
        assert tuple(cells.shape[1:]) == (5, 3, 3)                # whatever the image size
        fc = g.conv(cells, classes, 3, bias=False, name=f"fc{tag}",
                    weight=g.tensor("fcb.weight") if tag == "c" else None)
        centers.append(g.softmax(g.flatten(fc), name=f"center{tag}"))
    g.output(left, maps, right, *centers)
    net = convc.compile(g, "float64")
    p = {n: 0.3 * rng.standard_normal(s) for n, s in net.parameters.items()}
    assert set(p) == {"c0a.weight", "c1a.weight", "d.weight", "d.bias", "maps.weight",
                      "maps.bias", "fcb.weight"}
    x, xb, xc = (rng.standard_normal((2, 3, *size)) for size in [(64, 64), (56, 48), (72, 56)])
    out = net(x=x, xb=xb, xc=xc, **p)

    feats = ref.pool(trunk_ref(x, p), "max", (2, 2), (2, 2), [(0, 0)] * 2, (1, 1))
    assert feats.shape == (2, 5, 2, 2)
    expect = ref.softmax(ref.dense(feats.reshape(2, -1), p["d.weight"], p["d.bias"]))
    assert out["left"].shape == (2, classes)
    np.testing.assert_allclose(out["left"], expect, rtol=1e-10, atol=1e-12)

    expect = ref.conv(trunk_ref(x, p), p["maps.weight"], p["maps.bias"], 1, [(0, 0)] * 2)
    assert out["maps"].shape == (2, classes, 4, 4)                # one map per class
    np.testing.assert_allclose(out["maps"], expect, rtol=1e-10, atol=1e-12)
    assert out["right"].shape == (2, classes)
    np.testing.assert_allclose(out["right"], ref.softmax(expect.mean(axis=(2, 3))),
                               rtol=1e-10, atol=1e-12)

    for tag, image in [("b", xb), ("c", xc)]:
        cells = adaptive_max(trunk_ref(image, p), 3)
        expect = ref.softmax(cells.reshape(2, -1) @ p["fcb.weight"].reshape(classes, -1).T)
        assert out[f"center{tag}"].shape == (2, classes)
        np.testing.assert_allclose(out[f"center{tag}"], expect, rtol=1e-10, atol=1e-12)


# -- 9.5: strides and zero padding --------------------------------------------------------------

def test_a_strided_convolution_is_the_unit_stride_one_downsampled():
    """Figure 9.12 and equation 9.8: a stride of (2, 3) gives the unit-stride convolution's
    output sampled every 2 rows and 3 columns; figure 9.13: 'valid' shrinks each axis by
    k - 1, 'same' keeps it, 'full' grows it by k - 1 (the same kernel in all)."""
    g = convc.Graph("strides")
    x = g.input("x", (None, 2, 9, 11))
    dense = g.conv(x, 3, 3, name="unit")
    shared = dict(weight=g.tensor("unit.weight"), bias=False)
    g.output(dense, g.conv(x, 3, 3, stride=(2, 3), name="strided", **shared),
             g.conv(x, 3, 3, padding="same", name="same", **shared),
             g.conv(x, 3, 3, padding="full", name="full", **shared))
    net = convc.compile(g, "float64")
    rng = rng_for("strides")
    w, v = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((2, 2, 9, 11))
    out = net(x=v, **{"unit.weight": w, "unit.bias": np.zeros(3)})
    assert out["unit"].shape == (2, 3, 7, 9) and out["strided"].shape == (2, 3, 4, 3)
    np.testing.assert_allclose(out["strided"], out["unit"][:, :, ::2, ::3], rtol=1e-12)
    assert out["same"].shape == (2, 3, 9, 11) and out["full"].shape == (2, 3, 11, 13)
    padded = np.pad(v, ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.testing.assert_allclose(out["full"], ref.conv(padded, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["same"], out["full"][:, :, 1:-1, 1:-1], rtol=1e-12)
    np.testing.assert_allclose(out["unit"], out["full"][:, :, 2:-2, 2:-2], rtol=1e-12)


# -- 9.5: equations 9.11-9.13 --------------------------------------------------------------------

def chapter_c(K, V, s):
    """Equation 9.8 (0-based): Z[i, j, k] = sum_{l, m, n} V[l, j·s + m, k·s + n] K[i, l, m, n]."""
    rows = (V.shape[1] - K.shape[2]) // s + 1
    cols = (V.shape[2] - K.shape[3]) // s + 1
    Z = np.zeros((K.shape[0], rows, cols))
    for j in range(rows):
        for k in range(cols):
            Z[:, j, k] = np.einsum("ilmn,lmn->i", K, V[:, j * s:j * s + K.shape[2],
                                                      k * s:k * s + K.shape[3]])
    return Z


def chapter_g(G, V, s, kernel):
    """Equation 9.11: g[i, j, k, l] = sum_{m, n} G[i, m, n] V[j, m·s + k, n·s + l]."""
    out = np.zeros((G.shape[0], V.shape[0], *kernel))
    for k in range(kernel[0]):
        for l in range(kernel[1]):
            out[:, :, k, l] = np.einsum("imn,jmn->ij", G, V[:, k:k + s * G.shape[1]:s,
                                                             l:l + s * G.shape[2]:s])
    return out


def chapter_h(K, G, s, shape):
    """Equation 9.13: h[i, j, k] = sum over (l, m) with l·s + m = j, (n, p) with n·s + p = k,
    and q, of K[q, i, m, p] G[q, l, n]."""
    out = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                out[i, j, k] = sum(K[q, i, m, p] * G[q, l, n]
                                   for l in range(G.shape[1]) for m in range(K.shape[2])
                                   if l * s + m == j
                                   for n in range(G.shape[2]) for p in range(K.shape[3])
                                   if n * s + p == k
                                   for q in range(K.shape[0]))
    return out


def test_gradients_of_a_loss_through_a_strided_convolution_are_g_and_h():
    """J(V, K) = mean((c(K, V, s) - T)²) with s = 2: G = dJ/dZ, then dJ/dK is g(G, V, s)
    (9.11) and dJ/dV is h(K, G, s) (9.12-9.13), written as the chapter's sums; both agree
    with central finite differences of J."""
    g = convc.Graph("loss")
    v = g.input("v", (None, 2, 8, 9))
    t = g.input("t", (None, 3, 3, 4))
    g.output(g.mean_squared_error(g.conv(v, 3, (3, 2), stride=2, bias=False), t))
    net = convc.compile(g, "float64", grad=["v", "conv0.weight"])
    rng = rng_for("loss")
    V, T = rng.standard_normal((1, 2, 8, 9)), rng.standard_normal((1, 3, 3, 4))
    K = rng.standard_normal((3, 2, 3, 2))
    J, grads = net(v=V, t=T, **{"conv0.weight": K})
    Z = chapter_c(K, V[0], 2)
    np.testing.assert_allclose(J, ((Z - T[0]) ** 2).mean(), rtol=1e-12)
    G = 2 * (Z - T[0]) / Z.size
    np.testing.assert_allclose(grads["conv0.weight"], chapter_g(G, V[0], 2, (3, 2)),
                               rtol=1e-10, atol=1e-12)
    dV = chapter_h(K, G, 2, V.shape[1:])
    assert (dV[:, 7] == 0).all() and (dV[:, :, 8] == 0).all()      # cells no window reads
    np.testing.assert_allclose(grads["v"][0], dV, rtol=1e-10, atol=1e-12)
    eps = 1e-6
    for name, value in [("v", V), ("conv0.weight", K)]:
        tangent = rng.standard_normal(value.shape)
        args = dict(v=V, t=T, **{"conv0.weight": K})
        up, _ = net(**dict(args, **{name: value + eps * tangent}))
        down, _ = net(**dict(args, **{name: value - eps * tangent}))
        fd = (float(up) - float(down)) / (2 * eps)
        assert abs(fd - float(np.vdot(grads[name], tangent))) <= 1e-6 * max(abs(fd), 1e-3)
