"""The runtime's matrix product, ``convc_gemm_f32`` and ``convc_gemm_f64`` (runtime/gemm.c).

Every result is compared with numpy's product in float64, within the rounding bound of a
K-term dot product. The shapes straddle each variant's tile edges (MR x NR of 8 x 32, 6 x 16
and 4 x 8 floats, half as many columns of doubles, and the half-size edge kernels) and its
blocking (K in blocks of at most 256, 144 rows of A, 1024 columns of B). Operands are
row-major, column-major, transposed and strided views, shared by the batch (batch stride 0)
or not; C accumulates or (``accumulate`` 0) is overwritten without being read, and what lies
outside its M x N window is left alone. The variants the
CPU does not pick are built and checked too, and a child process runs the product under ASan
and UBSan.
"""

from __future__ import annotations

import platform
import threading
from pathlib import Path

import numpy as np
import pytest
from asan_child import run_clean
from hypothesis import given, settings
from hypothesis import strategies as st

from convc.build import build_library

REPO = Path(__file__).resolve().parent.parent
ARGS = ("int threads, int accumulate, int64_t batch, int64_t M, int64_t N, int64_t K, "
        "const {t} *A, int64_t sa, int64_t rsa, int64_t csa, "
        "const {t} *B, int64_t sb, int64_t rsb, int64_t csb, "
        "{t} *C, int64_t sc, int64_t rsc, int64_t csc")
CDEF = (f"int convc_gemm_f32({ARGS.format(t='float')});\n"
        f"int convc_gemm_f64({ARGS.format(t='double')});\n")
SOURCE = '#include "convc_runtime.h"\n'  # the functions come with the runtime
OK, ERR_SIZE = 0, 2
DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module")
def lib():
    return build_library(SOURCE, CDEF).module


def call(module, A, B, C, threads=1, accumulate=True) -> int:
    """``C[b] += A[b] @ B[b]`` (``C[b] = A[b] @ B[b]`` unless ``accumulate``) through the C
    function; A, B, C are 3-D arrays or views."""
    ffi, lib = module.ffi, module.lib
    name, ctype = {4: ("convc_gemm_f32", "float *"), 8: ("convc_gemm_f64", "double *")}[C.itemsize]
    batch, M, K = A.shape
    args = [threads, int(accumulate), batch, M, B.shape[2], K]
    for x in (A, B, C):
        # The address of element (0, 0, 0), and the strides in elements.
        args += [ffi.cast(ctype, x.ctypes.data), *(s // x.itemsize for s in x.strides)]
    return getattr(lib, name)(*args)


def check(module, A, B, C, accumulate=True):
    """Runs the product into C and compares it with numpy within the K-term rounding bound.
    Unless ``accumulate``, C starts as NaN, which must not reach the result."""
    C0 = C.astype(np.float64) if accumulate else np.zeros(C.shape)
    if not accumulate:
        C[...] = np.nan
    assert call(module, A, B, C, accumulate=accumulate) == OK
    A, B = A.astype(np.float64), B.astype(np.float64)
    # |fl(c + a.b) - (c + a.b)| <= (K + 1) u (|c| + |a|.|b|), u = eps / 2, with or without FMA
    bound = (A.shape[2] + 2) * np.finfo(C.dtype).eps * (np.abs(C0) + np.abs(A) @ np.abs(B))
    error = np.abs(C - (C0 + A @ B))
    assert np.all(error <= bound), f"error {error.max()}, bound {bound.min()} at the least"


def random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def layout(rng, array, kind):
    """A copy of a 3-D array as `kind`: row, col (each matrix column-major), or view (every
    other row and every third column of a larger array)."""
    if kind == "row":
        return np.ascontiguousarray(array)
    if kind == "col":
        return np.ascontiguousarray(array.transpose(0, 2, 1)).transpose(0, 2, 1)
    batch, rows, cols = array.shape
    view = random(rng, (batch, 2 * rows + 1, 3 * cols + 2), array.dtype)[:, 1::2, 2::3]
    view = view[:, :rows, :cols]
    view[...] = array
    return view


def operands(rng, M, N, K, batch, dtype, kinds=("row", "row", "row")):
    shapes = [(batch, M, K), (batch, K, N), (batch, M, N)]
    return [layout(rng, random(rng, shape, dtype), kind) for shape, kind in zip(shapes, kinds)]


# --- shapes around the tile and block edges -------------------------------------------------

EDGES = [
    (1, 1, 1), (1, 1, 300), (3, 5, 7), (4, 8, 4), (5, 9, 3), (6, 16, 2), (7, 17, 5), (8, 32, 1),
    (9, 33, 11), (13, 31, 17), (15, 15, 16), (17, 65, 9), (12, 48, 64), (24, 64, 100),
    (8, 32, 255), (8, 32, 256), (8, 32, 257), (9, 31, 513), (3, 2, 1000),
    (143, 5, 3), (144, 33, 5), (145, 17, 7), (300, 9, 20),
    (2, 1023, 3), (3, 1024, 4), (5, 1025, 6), (1, 2100, 2),
]


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", EDGES)
def test_edge_shapes(lib, M, N, K, dtype, accumulate):
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    check(lib, *operands(rng, M, N, K, 1, dtype), accumulate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kinds", [("row", "row", "row"), ("col", "col", "col"),
                                   ("col", "row", "col"), ("row", "col", "row"),
                                   ("view", "view", "view"), ("row", "view", "col")])
def test_layouts(lib, kinds, dtype):
    rng = np.random.default_rng(7)
    for M, N, K in [(10, 40, 30), (33, 70, 260), (7, 9, 5)]:
        check(lib, *operands(rng, M, N, K, 2, dtype, kinds))
        check(lib, *operands(rng, M, N, K, 2, dtype, kinds), accumulate=False)


def test_transposed_views(lib):
    """A = X^T and B = Y^T as numpy views (swapped strides), no copy."""
    rng = np.random.default_rng(3)
    X = random(rng, (1, 70, 20), np.float32)  # A is 20 x 70
    Y = random(rng, (1, 45, 70), np.float32)  # B is 70 x 45
    check(lib, X.transpose(0, 2, 1), Y.transpose(0, 2, 1), np.zeros((1, 20, 45), np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", ["A", "B", "AB", "none"])
def test_batch_with_shared_operands(lib, shared, dtype):
    rng = np.random.default_rng(11)
    for M, N, K in [(32, 64, 144), (16, 64, 288), (9, 33, 300)]:
        A, B, C = operands(rng, M, N, K, 5, dtype)
        A = np.broadcast_to(A[0], A.shape) if "A" in shared else A  # batch stride 0
        B = np.broadcast_to(B[0], B.shape) if "B" in shared else B
        check(lib, A, B, C)
        check(lib, A, B, C, accumulate=False)


def test_shared_operand_too_big_to_pack_once(lib):
    """A shared A over 8 MB is packed again for each matrix of the batch; B likewise."""
    rng = np.random.default_rng(5)
    A = np.broadcast_to(random(rng, (1030, 2050), np.float32), (2, 1030, 2050))
    check(lib, A, random(rng, (2, 2050, 3), np.float32), np.zeros((2, 1030, 3), np.float32))
    B = np.broadcast_to(random(rng, (2050, 1030), np.float32), (2, 2050, 1030))
    check(lib, random(rng, (2, 3, 2050), np.float32), B, np.zeros((2, 3, 1030), np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_c_outside_the_window_is_untouched(lib, dtype):
    """C is an M x N window of a larger array; its padding rows and columns keep their values."""
    rng = np.random.default_rng(2)
    for M, N, K in [(9, 33, 20), (8, 32, 7), (17, 70, 300)]:
        for column_major in (False, True):
            big = np.full((2, M + 3, N + 5), 1234.5, dtype)
            window = (slice(None), slice(1, M + 1), slice(2, N + 2))
            if column_major:  # the window of a transposed array, padding between columns
                big = np.full((2, N + 5, M + 3), 1234.5, dtype)
                window = (slice(None), slice(2, N + 2), slice(1, M + 1))
            C = big[window].transpose(0, 2, 1) if column_major else big[window]
            C[...] = random(rng, C.shape, dtype)
            outside = np.ones(big.shape, bool)
            outside[window] = False
            A, B, _ = operands(rng, M, N, K, 2, dtype)
            check(lib, A, B, C)
            assert np.all(big[outside] == 1234.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_sizes_leave_c_unchanged(lib, dtype):
    C = random(np.random.default_rng(0), (2, 5, 6), dtype)
    before = C.copy()
    assert call(lib, np.zeros((2, 5, 0), dtype), np.zeros((2, 0, 6), dtype), C) == OK  # K = 0
    assert call(lib, np.zeros((0, 5, 3), dtype), np.zeros((0, 3, 6), dtype), C[:0]) == OK
    assert call(lib, np.zeros((2, 0, 3), dtype), np.zeros((2, 3, 6), dtype), C[:, :0]) == OK
    assert call(lib, np.zeros((2, 5, 3), dtype), np.zeros((2, 3, 0), dtype), C[:, :, :0]) == OK
    np.testing.assert_array_equal(C, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_sum_overwrites_c_with_zeros(lib, dtype):
    """K = 0 without ``accumulate``: C = A·B is the empty sum, 0, inside its window only."""
    big = np.full((2, 7, 9), 5.0, dtype)
    C = big[:, 1:6, 2:8]
    assert call(lib, np.zeros((2, 5, 0), dtype), np.zeros((2, 0, 6), dtype), C,
                accumulate=False) == OK
    assert np.all(C == 0) and np.sum(big == 5.0) == big.size - C.size


def test_negative_size_is_an_error(lib):
    null = lib.ffi.NULL
    for sizes in [(-1, 2, 2, 2), (1, -2, 2, 2), (1, 2, -2, 2), (1, 2, 2, -1)]:
        status = lib.lib.convc_gemm_f32(1, 1, *sizes, null, 0, 0, 0, null, 0, 0, 0, null, 0, 0, 0)
        assert status == ERR_SIZE


def test_special_values_propagate(lib):
    """An inf or NaN in A reaches exactly the row of C it multiplies (padding adds no NaN)."""
    A = np.ones((1, 10, 20), np.float32)
    A[0, 3, 5] = np.inf
    A[0, 7, 2] = np.nan
    C = np.zeros((1, 10, 40), np.float32)
    assert call(lib, A, np.ones((1, 20, 40), np.float32), C) == OK
    assert np.all(np.isposinf(C[0, 3])) and np.all(np.isnan(C[0, 7]))
    assert np.all(C[0, [0, 1, 2, 4, 5, 6, 8, 9]] == 20)


def test_threads_at_once(lib):
    """Calls from several threads at once (cffi releases the GIL) keep their own buffers."""
    rng = np.random.default_rng(9)
    cases = [operands(rng, 40 + i, 90 + i, 300, 2, np.float32) for i in range(4)]
    expected = [C + A.astype(np.float64) @ B for A, B, C in cases]

    def work(A, B, C):
        start = C.copy()
        for _ in range(5):
            C[...] = start
            call(lib, A, B, C)

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (_, _, C), want in zip(cases, expected):
        np.testing.assert_allclose(C, want, rtol=1e-4, atol=1e-3)


# --- the variants the CPU does not pick ----------------------------------------------------------

def other_variants() -> list[tuple[str, str]]:
    """(CONVC_TARGET, CONVC_GEMM_VARIANT) pairs this CPU runs besides what it picks: the scalar
    target's one-element vectors, and on x86-64 the AVX2 and SSE2 variants, compiled in where
    there is no -march."""
    others = [("scalar", "")]
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            flags = set()
        others += [("portable", "avx2")] * ({"avx2", "fma"} <= flags) + [("portable", "base")]
    return others


@pytest.mark.parametrize("target,variant", other_variants())
def test_other_variants(target, variant, monkeypatch):
    monkeypatch.setenv("CONVC_TARGET", target)
    cflags = (f"-DCONVC_GEMM_VARIANT={variant}",) if variant else ()
    module = build_library(SOURCE, CDEF, cflags=cflags).module
    rng = np.random.default_rng(4)
    for dtype in DTYPES:
        for number, (M, N, K) in enumerate(EDGES[::2] + [(13, 40, 300), (2, 3, 4)]):
            kinds = ("row", "col", "row") if number % 2 else ("col", "view", "view")
            A, B, C = operands(rng, M, N, K, 2, dtype, kinds)
            check(module, A, B, C)
            check(module, np.broadcast_to(A[0], A.shape), B, C)


# --- random shapes and strides ----------------------------------------------------------------

KINDS = st.sampled_from(["row", "col", "view"])


@settings(derandomize=True, deadline=None, max_examples=150)
@given(M=st.integers(1, 40), N=st.integers(1, 80), K=st.integers(1, 300),
       batch=st.integers(1, 3), kinds=st.tuples(KINDS, KINDS, KINDS),
       shared=st.sampled_from(["", "A", "B"]), dtype=st.sampled_from(DTYPES))
def test_random_shapes_and_strides(lib, M, N, K, batch, kinds, shared, dtype):
    rng = np.random.default_rng(M + 100 * N + 10000 * K)
    A, B, C = operands(rng, M, N, K, batch, dtype, kinds)
    if shared == "A":
        A = np.broadcast_to(A[0], A.shape)
    if shared == "B":
        B = np.broadcast_to(B[0], B.shape)
    check(lib, A, B, C)


# --- sanitizers ------------------------------------------------------------------------------

CHILD = r"""
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_gemm as t
from convc.build import build_library

module = build_library(t.SOURCE, t.CDEF, sanitize=True).module
rng = np.random.default_rng(1)
for dtype in t.DTYPES:
    for M, N, K in [(1, 1, 1), (9, 33, 257), (5, 17, 3), (145, 40, 20), (3, 1030, 5)]:
        for kinds in [("row", "row", "row"), ("col", "view", "col"), ("view", "col", "view")]:
            A, B, C = t.operands(rng, M, N, K, 2, dtype, kinds)
            t.check(module, A, B, C)
            t.check(module, np.broadcast_to(A[0], A.shape), B, C)
            t.check(module, A, B, C, accumulate=False)
print("ok")
"""


@pytest.mark.sanitizer
def test_runs_clean_under_asan_and_ubsan():
    run_clean(CHILD.format(tests=str(Path(__file__).resolve().parent)))


@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("shared_c", [False, True])
def test_threads_share_the_batch(lib, threads, shared_c, accumulate):
    """Each thread takes a share of the batch; a C shared by the batch (stride 0) gets the
    sum of every product, the same for every run at one thread count. Without
    ``accumulate`` the first product of the batch overwrites C (NaN before)."""
    rng = np.random.default_rng(threads)
    A = random(rng, (5, 9, 33), np.float32)
    B = random(rng, (5, 33, 40), np.float32)
    start = 0.0 if accumulate else np.nan
    if shared_c:
        C = np.full((9, 40), start, np.float32)
        view = np.lib.stride_tricks.as_strided(C, (5, 9, 40), (0, *C.strides))
        assert call(lib, A, B, view, threads, accumulate) == OK
        expected = np.einsum("bik,bkj->ij", A.astype(np.float64), B.astype(np.float64))
        np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-4)
        again = np.full_like(C, start)
        view = np.lib.stride_tricks.as_strided(again, (5, 9, 40), (0, *again.strides))
        assert call(lib, A, B, view, threads, accumulate) == OK
        np.testing.assert_array_equal(again, C)
    else:
        C = random(rng, (5, 9, 40), np.float32)
        expected = A.astype(np.float64) @ B.astype(np.float64)
        expected += C if accumulate else 0
        C[...] = C if accumulate else np.nan
        assert call(lib, A, B, C, threads, accumulate) == OK
        np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_threads_share_the_sum_of_one_deep_product(lib, threads, accumulate, dtype):
    """A batch of one whose K is deep (a kernel gradient's sum over images and points) is
    cut along K among the threads, each adding into a copy of C of its own, added in thread
    order: the product within rounding, the same on every run at one thread count. Both
    operands are read with K contiguous, as a kernel gradient's transforms lie."""
    rng = np.random.default_rng(threads)
    K = 2 * 8 * 256 + 37  # two blocks of K per thread for up to 8 threads, and a remainder
    A = random(rng, (1, 9, K), dtype)
    B = random(rng, (1, 40, K), dtype).transpose(0, 2, 1)
    start = random(rng, (1, 9, 40), dtype)
    expected = A.astype(np.float64) @ B.astype(np.float64) + (start if accumulate else 0)
    results = []
    for _ in range(2):
        C = start.copy() if accumulate else np.full_like(start, np.nan)
        assert call(lib, A, B, C, threads, accumulate) == OK
        results.append(C)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(results[0], expected, rtol=tolerance, atol=tolerance * 10)
    np.testing.assert_array_equal(results[0], results[1])
