"""The runtime's real FFTs (runtime/fft.c): ``convc_rfft_*``, ``convc_irfft_*``, ``convc_fft_size``.

Every transform is compared with numpy.fft (pocketfft) in float64. Tolerance, relative to the
norm: for each array, ``||X - X_ref||_2 <= 4 eps (1 + log2 N) ||X_ref||_2`` with eps of the
transform's type and N the number of points (an FFT's rounding error grows like eps log N).
Sizes are products of 2, 3 and 5, with odd lengths and length 1 on every axis; a length with
a prime factor above 5 is refused (CONVC_ERR_SIZE), and ``convc_fft_size`` gives the size to
pad to. Threads (sharing arrays or the passes of one array) must give the same bits as one.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
from asan_child import run_clean

from convc.build import build_library

REPO = Path(__file__).resolve().parent.parent

DECLARATIONS = """
size_t convc_fft_size(size_t n);
size_t convc_rfft_scratch_{t}(int threads, int rank, const size_t *dims);
int convc_rfft_{t}(int threads, int rank, const size_t *dims, size_t count,
                   const size_t *in_dims, const {c} *in, {c} *out, void *scratch);
int convc_irfft_{t}(int threads, int rank, const size_t *dims, size_t count, const {c} *in,
                    const size_t *out_lo, const size_t *out_dims, {c} *out, void *scratch);
"""
CDEF = (DECLARATIONS.format(t="f32", c="float")
        + DECLARATIONS.format(t="f64", c="double").replace("size_t convc_fft_size(size_t n);", ""))
SOURCE = '#include "convc_runtime.h"\n'  # the functions come with the runtime
OK, ERR_SIZE = 0, 2
DTYPES = (np.float32, np.float64)
COMPLEX = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}

SHAPES = [
    (1,), (2,), (3,), (5,), (6,), (8,), (9,), (15,), (16,), (25,), (60,), (243,), (1080,),
    (1, 1), (1, 6), (6, 1), (2, 3), (5, 9), (8, 12), (15, 16), (27, 10), (64, 5),
    (1, 1, 1), (2, 3, 4), (3, 5, 9), (4, 1, 6), (5, 6, 8), (8, 8, 8), (1, 9, 10),
]


@pytest.fixture(scope="module")
def lib():
    return build_library(SOURCE, CDEF).module


def _suffix(dtype) -> tuple[str, str]:
    return ("f32", "float *") if np.dtype(dtype) == np.float32 else ("f64", "double *")


def _scratch(module, dtype, threads, dims):
    ffi, lib = module.ffi, module.lib
    t, _ = _suffix(dtype)
    size = getattr(lib, f"convc_rfft_scratch_{t}")(threads, len(dims), ffi.new("size_t[]", dims))
    assert size > 0
    return np.empty(size + 1, np.uint8)[1:]  # deliberately not aligned


def rfft(module, x, dims, threads=1):
    """``count`` forward transforms of the arrays x[i] (of any shape up to dims, zero-padded)."""
    ffi, lib = module.ffi, module.lib
    t, ctype = _suffix(x.dtype)
    x = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], *dims[:-1], dims[-1] // 2 + 1), COMPLEX[x.dtype])
    scratch = _scratch(module, x.dtype, threads, dims)
    status = getattr(lib, f"convc_rfft_{t}")(
        threads, len(dims), ffi.new("size_t[]", list(dims)), x.shape[0],
        ffi.new("size_t[]", list(x.shape[1:])), ffi.cast(ctype, x.ctypes.data),
        ffi.cast(ctype, out.ctypes.data), ffi.cast("void *", scratch.ctypes.data))
    assert status == OK
    return out


def irfft(module, X, dims, threads=1, lo=None, size=None):
    """``count`` inverse transforms of the half spectra X[i]; the window lo, size of each."""
    ffi, lib = module.ffi, module.lib
    dtype = np.float32 if X.dtype == np.complex64 else np.float64
    t, ctype = _suffix(dtype)
    size = tuple(dims) if size is None else tuple(size)
    out = np.empty((X.shape[0], *size), dtype)
    scratch = _scratch(module, dtype, threads, dims)
    status = getattr(lib, f"convc_irfft_{t}")(
        threads, len(dims), ffi.new("size_t[]", list(dims)), X.shape[0],
        ffi.cast(ctype, X.ctypes.data), ffi.new("size_t[]", list(lo)) if lo else ffi.NULL,
        ffi.new("size_t[]", list(size)), ffi.cast(ctype, out.ctypes.data),
        ffi.cast("void *", scratch.ctypes.data))
    assert status == OK
    return out


def assert_close(got, want, points, dtype=None):
    """Per array: the relative 2-norm error within 4 eps (1 + log2 N), eps of `dtype` (by
    default got's type)."""
    eps = np.finfo(got.real.dtype if dtype is None else dtype).eps
    bound = 4 * eps * (1 + np.log2(max(points, 1)))
    for g, w in zip(got, want):
        error = np.linalg.norm((g - w).ravel())
        assert error <= bound * np.linalg.norm(w.ravel()) + 1e-300, (error, np.linalg.norm(w))


def axes(dims):
    return tuple(range(1, len(dims) + 1))


def spectrum(rng, dims, count, dtype):
    """Random half spectra, not Hermitian-consistent: the inverse must read them as numpy does."""
    shape = (count, *dims[:-1], dims[-1] // 2 + 1)
    values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return values.astype(COMPLEX[np.dtype(dtype)])


# --- sizes -----------------------------------------------------------------------------------

def smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def test_fft_size_is_the_next_smooth_number(lib):
    for n in range(0, 3000):
        want = max(n, 1)
        while not smooth(want):
            want += 1
        assert lib.lib.convc_fft_size(n) == want
    for n in (2**40 + 1, 10**15 + 1, 3**30 - 1, 2**62 + 1):
        candidates = [2**a * 3**b * 5**c for a in range(64) for b in range(41) for c in range(28)]
        assert lib.lib.convc_fft_size(n) == min(m for m in candidates if m >= n)
    assert lib.lib.convc_fft_size(2**64 - 1) == 0  # none fits


@pytest.mark.parametrize("dims", [(7,), (14,), (0,), (11, 4), (4, 0), (2, 3, 49), ()])
def test_sizes_without_a_fast_transform_are_refused(lib, dims):
    ffi, c = lib.ffi, lib.lib
    d = ffi.new("size_t[]", list(dims) or [4])
    assert c.convc_rfft_scratch_f32(1, len(dims), d) == 0
    out = np.full(64, 7.0, np.float32)
    p = ffi.cast("float *", out.ctypes.data)
    assert c.convc_rfft_f32(1, len(dims), d, 1, ffi.NULL, p, p, ffi.NULL) == ERR_SIZE
    assert c.convc_irfft_f32(1, len(dims), d, 1, p, ffi.NULL, ffi.NULL, p, ffi.NULL) == ERR_SIZE
    assert np.all(out == 7.0)


def test_rank_four_and_bad_windows_are_refused(lib):
    ffi, c = lib.ffi, lib.lib
    dims = ffi.new("size_t[]", [2, 2, 2, 2])
    assert c.convc_rfft_scratch_f64(1, 4, dims) == 0
    p = ffi.cast("double *", 0)
    assert c.convc_rfft_f64(1, 4, dims, 1, ffi.NULL, p, p, ffi.NULL) == ERR_SIZE
    dims = ffi.new("size_t[]", [4, 6])
    assert c.convc_rfft_f64(1, 2, dims, 1, ffi.new("size_t[]", [5, 6]), p, p, ffi.NULL) == ERR_SIZE
    for lo, size in [([0, 1], [4, 6]), ([4, 0], [1, 1]), ([0, 0], [4, 7]), ([3, 0], [2, 6])]:
        status = c.convc_irfft_f64(1, 2, dims, 1, p, ffi.new("size_t[]", lo),
                                   ffi.new("size_t[]", size), p, ffi.NULL)
        assert status == ERR_SIZE


def test_no_arrays_is_nothing_to_do(lib):
    ffi, c = lib.ffi, lib.lib
    dims = ffi.new("size_t[]", [4, 6])
    p = ffi.cast("float *", 0)
    assert c.convc_rfft_f32(2, 2, dims, 0, ffi.NULL, p, p, ffi.NULL) == OK
    assert c.convc_irfft_f32(2, 2, dims, 0, p, ffi.NULL, ffi.NULL, p, ffi.NULL) == OK


# --- against numpy ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", SHAPES)
def test_forward_matches_numpy(lib, dims, dtype):
    rng = np.random.default_rng(len(dims) * 1000 + int(np.prod(dims)))
    x = rng.standard_normal((3, *dims)).astype(dtype)
    want = np.fft.rfftn(x.astype(np.float64), axes=axes(dims))
    assert_close(rfft(lib, x, dims), want, int(np.prod(dims)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", SHAPES)
def test_inverse_matches_numpy(lib, dims, dtype):
    """Any half spectrum, as numpy reads it: the imaginary parts that a real signal's spectrum
    would not have (X[0], X[n/2] after the other axes) are dropped."""
    rng = np.random.default_rng(int(np.prod(dims)) + 7)
    X = spectrum(rng, dims, 2, dtype)
    before = X.copy()
    want = np.fft.irfftn(X.astype(np.complex128), s=dims, axes=axes(dims))
    got = irfft(lib, X, dims)
    np.testing.assert_array_equal(X, before)  # the input is left alone
    # The inverse's error, relative to the norm of its input scaled by 1/N as the output is.
    N = int(np.prod(dims))
    assert_close(got * np.sqrt(N), want * np.sqrt(N), N, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(1,), (9,), (60,), (5, 9), (8, 12), (1, 6), (3, 5, 9), (4, 6, 8)])
def test_round_trip(lib, dims, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, *dims)).astype(dtype)
    assert_close(irfft(lib, rfft(lib, x, dims), dims), x, int(np.prod(dims)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,given", [((8,), (5,)), ((9,), (4,)), ((8,), (0,)),
                                        ((12, 10), (5, 7)), ((6, 5), (6, 2)), ((6, 5), (1, 5)),
                                        ((4, 6, 10), (3, 2, 7)), ((5, 6, 8), (5, 6, 1)),
                                        ((3, 4, 5), (0, 4, 5))])
def test_forward_pads_a_smaller_input_with_zeros(lib, dims, given, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, *given)).astype(dtype)
    want = np.fft.rfftn(x.astype(np.float64), s=dims, axes=axes(dims))
    got = rfft(lib, x, dims)
    if x.size == 0:
        assert np.all(got == 0)
    else:
        assert_close(got, want, int(np.prod(dims)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims,lo,size", [((12,), (3,), (5,)), ((9,), (8,), (1,)),
                                          ((8, 10), (2, 3), (5, 6)), ((5, 6), (0, 1), (5, 4)),
                                          ((6, 8, 10), (1, 2, 3), (4, 5, 6)),
                                          ((4, 5, 6), (3, 4, 0), (1, 1, 6))])
def test_inverse_writes_a_window(lib, dims, lo, size, dtype):
    rng = np.random.default_rng(6)
    X = spectrum(rng, dims, 3, dtype)
    full = np.fft.irfftn(X.astype(np.complex128), s=dims, axes=axes(dims))
    window = (slice(None),) + tuple(slice(a, a + n) for a, n in zip(lo, size))
    got = irfft(lib, X, dims, lo=lo, size=size)
    assert got.shape == full[window].shape
    # Relative to the norm of the whole result: a small window may hold small values only.
    bound = 4 * np.finfo(dtype).eps * (1 + np.log2(np.prod(dims)))
    for g, w, whole in zip(got, full[window], full):
        assert np.linalg.norm((g - w).ravel()) <= bound * np.linalg.norm(whole.ravel())


# --- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("dims", [(60,), (36, 45), (6, 10, 12)])
def test_threads_give_the_same_bits(lib, dims, count):
    """Two threads share the arrays (count >= 2) or the row and column blocks of each pass
    (count 1); every block is computed as by one thread."""
    rng = np.random.default_rng(count)
    x = rng.standard_normal((count, *dims)).astype(np.float32)
    one = rfft(lib, x, dims, threads=1)
    np.testing.assert_array_equal(rfft(lib, x, dims, threads=2), one)
    assert_close(one, np.fft.rfftn(x.astype(np.float64), axes=axes(dims)), int(np.prod(dims)))
    back = irfft(lib, one, dims, threads=1)
    np.testing.assert_array_equal(irfft(lib, one, dims, threads=2), back)
    assert_close(back, x, int(np.prod(dims)))


# --- the use it is for: convolution as a product of spectra -----------------------------------

def test_valid_cross_correlation_as_a_product_of_spectra(lib):
    """y[i, j] = sum_uv x[i + u, j + v] k[u, v] (equation 9.7, one channel) is the window
    [0, H - kh] x [0, W - kw] of irfft(rfft(x) conj(rfft(k))) at a size >= the image."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 13, 11))
    k = rng.standard_normal((2, 4, 3))
    dims = (lib.lib.convc_fft_size(13), lib.lib.convc_fft_size(11))
    product = rfft(lib, x, dims) * np.conj(rfft(lib, k, dims))
    out = (13 - 4 + 1, 11 - 3 + 1)
    got = irfft(lib, product, dims, lo=(0, 0), size=out)
    want = np.zeros((2, *out))
    for u in range(4):
        for v in range(3):
            want += x[:, u:u + out[0], v:v + out[1]] * k[:, u, v, None, None]
    np.testing.assert_allclose(got, want, atol=1e-12 * np.abs(want).max() * 100)


# --- every target ----------------------------------------------------------------------------

def targets() -> list[str]:
    found = ["scalar", "portable"]
    if platform.machine().lower() in ("x86_64", "amd64") and "avx2" in Path(
            "/proc/cpuinfo").read_text():
        found.append("native")
    return found


@pytest.mark.parametrize("target", targets())
def test_every_target(target, monkeypatch):
    monkeypatch.setenv("CONVC_TARGET", target)
    module = build_library(SOURCE, CDEF).module
    rng = np.random.default_rng(9)
    for dtype in DTYPES:
        for dims in [(1,), (15,), (1080,), (5, 9), (16, 12), (3, 5, 8), (2, 9, 10)]:
            x = rng.standard_normal((3, *dims)).astype(dtype)
            X = rfft(module, x, dims, threads=2 if len(dims) == 2 else 1)
            N = int(np.prod(dims))
            assert_close(X, np.fft.rfftn(x.astype(np.float64), axes=axes(dims)), N)
            Y = spectrum(rng, dims, 2, dtype)
            want = np.fft.irfftn(Y.astype(np.complex128), s=dims, axes=axes(dims))
            assert_close(irfft(module, Y, dims) * N, want * N, N, dtype)


# --- sanitizers ------------------------------------------------------------------------------

CHILD = r"""
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_fft as t
from convc.build import build_library

module = build_library(t.SOURCE, t.CDEF, sanitize=True).module
rng = np.random.default_rng(1)
for dtype in t.DTYPES:
    for dims, given, lo, size in [((1,), (1,), (0,), (1,)), ((15,), (7,), (3,), (9,)),
                                  ((16,), (16,), (1,), (15,)), ((9, 10), (4, 10), (2, 3), (7, 6)),
                                  ((5, 9, 8), (5, 2, 8), (1, 2, 3), (4, 7, 5)),
                                  ((6, 4, 3), (1, 1, 1), (0, 0, 0), (6, 4, 3))]:
        for threads, count in [(1, 3), (2, 1), (2, 3)]:
            x = rng.standard_normal((count, *given)).astype(dtype)
            X = t.rfft(module, x, dims, threads)
            want = np.fft.rfftn(x.astype(np.float64), s=dims, axes=t.axes(dims))
            t.assert_close(X, want, int(np.prod(dims)))
            y = t.irfft(module, X, dims, threads, lo, size)
            window = (slice(None),) + tuple(slice(a, a + n) for a, n in zip(lo, size))
            padded = np.zeros((count, *dims), dtype)
            padded[(slice(None),) + tuple(slice(0, n) for n in given)] = x
            bound = 4 * np.finfo(dtype).eps * (1 + np.log2(np.prod(dims)))
            for got, want, whole in zip(y, padded[window], padded):
                assert np.linalg.norm(got - want) <= bound * np.linalg.norm(whole)
print("ok")
"""


@pytest.mark.sanitizer
def test_runs_clean_under_asan_and_ubsan():
    """Overruns of the input, output or scratch (whose size convc_rfft_scratch_* gives) stop
    the child process with a report."""
    run_clean(CHILD.format(tests=str(Path(__file__).resolve().parent)))
