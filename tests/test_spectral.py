"""FFT convolution (`convc.spectral`, section 9.8): which contractions run through spectra, and
that they compute the same function.

The hypothesis suites of test_ops_conv and test_autodiff draw ``algorithm="fft"`` with the
rest; here: the forward pass, g and h of unit-stride convolutions become transforms and
spectral products; strided ones fall back; float32 stays within the documented tolerance;
the spectral product's loop form (when the runtime's cannot take it) gives the same values;
the cost model picks spectra for a large kernel and not for a small one.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import conv, padding_pairs
from test_autodiff import conv_grads_scatter

import convc
from convc import spectral
from convc.spectral import Spectra, Transform

WRT = ["x", "conv0.weight", "conv0.bias"]


def conv_graph(cin=3, size=(12, 10), channels=4, kernel=(5, 3), padding="same", groups=1,
               stride=1):
    g = convc.Graph("spectra")
    x = g.input("x", (None, cin, *size))
    g.output(g.conv(x, channels=channels, kernel=kernel, padding=padding, groups=groups,
                    stride=stride))
    return g


def kinds(lowered, role):
    step = next(s for s in lowered.steps if s.node == "conv0" and s.role == role)
    return {type(p) for p in lowered.parts[step]}


@pytest.mark.parametrize("groups", [1, 3])
def test_forward_g_and_h_of_a_unit_stride_convolution_run_through_spectra(groups):
    lowered = convc.lower(conv_graph(cin=3, channels=6, groups=groups), grad=WRT,
                          algorithm="fft")
    for role in ("fwd", "dweight", "dinput"):
        assert {Transform, Spectra} <= kinds(lowered, role), role
    text = convc.compile(conv_graph(), grad=WRT, algorithm="fft").explain()
    assert "ALGORITHM fwd: fft; real FFT" in text and "spectral product" in text


def test_a_strided_convolution_falls_back_to_products():
    lowered = convc.lower(conv_graph(stride=2), grad=WRT, algorithm="fft")
    for role in ("fwd", "dweight", "dinput"):
        assert Transform not in kinds(lowered, role)


def arrays(rng, cin=3, size=(12, 10), channels=4, kernel=(5, 3), groups=1,
           dtype=np.float64):
    x = rng.standard_normal((2, cin, *size)).astype(dtype)
    w = rng.standard_normal((channels, cin // groups, *kernel)).astype(dtype)
    b = rng.standard_normal(channels).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("loops", [False, True], ids=["runtime product", "loop product"])
def test_values_and_gradients_match_the_references(loops, monkeypatch, unremembered):
    if loops:  # the spectral product as a comprehension, as when channels do not sort
        monkeypatch.setattr(spectral, "_spectra", lambda *args: None)
    net = convc.compile(conv_graph(cin=4, channels=6, groups=2), "float64", grad=WRT,
                        algorithm="fft")
    assert (Spectra in {type(p) for ps in net.lowered.parts.values() for p in ps}) != loops
    rng = np.random.default_rng(2)
    x, w, b = arrays(rng, cin=4, channels=6, groups=2)
    pads = padding_pairs("same", (12, 10), (5, 3), (1, 1), (1, 1))
    G = rng.standard_normal((2, 6, 12, 10))
    out, grads = net(x=x, **{"conv0.weight": w, "conv0.bias": b, "grad:conv0": G})
    np.testing.assert_allclose(out, conv(x, w, b, 1, pads, 1, 2), rtol=1e-10, atol=1e-10)
    dx, dw, db = conv_grads_scatter(x, w, G, (1, 1), (1, 1), pads, 2)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["conv0.weight"], dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["conv0.bias"], db, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding,in_place", [(0, True), ((1, 0), True), ((3, 1), False)])
def test_the_input_gradient_transforms_the_output_gradient_in_place_when_it_can(padding,
                                                                              in_place):
    """h of an unpadded (or lightly padded) layer is a full convolution of the output
    gradient: its transform reads the seed where it lies and the inverse keeps the window
    from the padding's offset; a pad that would need cells before the seed copies it into
    a shifted, zero-padded array. Same numbers either way."""
    net = convc.compile(conv_graph(cin=2, channels=3, padding=padding), "float64",
                        grad=["x"], algorithm="fft")
    step = net.lowered.derivatives("conv0")[0]
    transforms = [p for p in net.lowered.parts[step] if isinstance(p, Transform)]
    assert any(t.source == "seed:conv0" for t in transforms) == in_place
    rng = np.random.default_rng(5)
    x, w, b = arrays(rng, cin=2, channels=3)
    pads = padding_pairs(padding, (12, 10), (5, 3), (1, 1), (1, 1))
    out = conv(x, w, b, 1, pads)
    G = rng.standard_normal(out.shape)
    _, grads = net(x=x, **{"conv0.weight": w, "conv0.bias": b, "grad:conv0": G})
    dx, _, _ = conv_grads_scatter(x, w, G, (1, 1), (1, 1), pads, 1)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-10)


def test_a_product_that_writes_some_rows_of_its_spectra_keeps_their_layout():
    """The first 1-D pass of a separable 3-D layer strided along its middle axis: its input
    gradient sums over the rows that some output reads (7 of 8), so the spectral product
    writes only those rows of a tensor laid out with all 8, as the inverse transform reads
    it. Against the same module with direct loops."""
    g = convc.Graph("rows")
    x = g.input("x", (2, 1, 9, 8, 10))
    g.output(g.conv(x, 2, (5, 4, 5), stride=(1, 2, 1), padding=((2, 2), (1, 0), (0, 0)),
                    dilation=(2, 1, 1), separable=True, bias=False, name="conv0"))
    rng = np.random.default_rng(4)
    args = {"x": rng.standard_normal((2, 1, 9, 8, 10))}
    nets = {a: convc.compile(g, "float64", grad=["x"], algorithm=a) for a in ("fft", "direct")}
    params = nets["direct"].init_params(seed=2)
    seed = rng.standard_normal(nets["direct"](**args, **params)[0].shape)
    grads = {a: net(**args, **params, **{"grad:conv0": seed})[1]["x"] for a, net in nets.items()}
    assert any("fft" in used for used in nets["fft"].lowered.algorithms.values())
    np.testing.assert_allclose(grads["fft"], grads["direct"], rtol=1e-12, atol=1e-12)


def test_float32_error_is_within_the_documented_bound():
    """|fft - exact| <= 1e-5 · max(|x| * |w|) (the README's float32 tolerance for FFT)."""
    g = conv_graph(cin=8, size=(48, 40), channels=8, kernel=(11, 9))
    net = convc.compile(g, algorithm="fft")
    x, w, b = arrays(np.random.default_rng(3), cin=8, size=(48, 40), channels=8,
                     kernel=(11, 9), dtype=np.float32)
    out = net(x=x, **{"conv0.weight": w, "conv0.bias": b})
    pads = padding_pairs("same", (48, 40), (11, 9), (1, 1), (1, 1))
    exact = conv(x, w, b, 1, pads)
    bound = conv(np.abs(x), np.abs(w), np.abs(b), 1, pads)
    assert np.abs(out - exact).max() <= 1e-5 * bound.max()


def test_the_cost_model_picks_spectra_for_a_large_kernel_only():
    large = convc.lower(conv_graph(cin=16, size=(64, 64), channels=16, kernel=(15, 15)),
                        grad=WRT)
    small = convc.lower(conv_graph(cin=16, size=(64, 64), channels=16, kernel=(3, 3)),
                        grad=WRT)
    assert Transform in kinds(large, "fwd") and Transform in kinds(large, "dweight")
    assert Transform not in kinds(small, "fwd")


def test_fft_sizes_are_the_next_smooth_numbers():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(1, 400):
        size = spectral.fft_size(n)
        assert size >= n and smooth(size)
        assert not any(smooth(m) for m in range(n, size))
