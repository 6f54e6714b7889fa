/* convc runtime: products of spectra, the middle step of FFT convolution (section 9.8).
 *
 * C[b][m][n] = sum_k A[b][m][k] * B[b][k][n] (or * conj(B[b][k][n])), where every element is a
 * row of `count` complex numbers, (re, im) interleaved, and the products are taken frequency
 * by frequency: a batch of complex matrix products, one per frequency, over the channels.
 * The rows are cut into tiles of CONVC_SPECTRA_TILE frequencies; for one tile every row of A,
 * B and C stays in cache while the (m, n, k) loops run over it, and the innermost loop is a
 * complex multiply-add along the tile, which the compiler vectorises. Threads (OpenMP) share
 * the (batch, tile) pairs, so each C element is written by one thread, in a fixed order.
 */
#include <stdint.h>

#include "convc_runtime.h"

#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define CONVC_SPECTRA_TILE 128 /* complex numbers per tile: 1 KB of float per row */

#define CONVC_SPECTRA(T, NAME)                                                                \
    int NAME(int threads, int conj, int64_t batch, int64_t M, int64_t N, int64_t K,           \
             int64_t count, const T *A, int64_t sa, int64_t rsa, int64_t csa, const T *B,     \
             int64_t sb, int64_t rsb, int64_t csb, T *C, int64_t sc, int64_t rsc,             \
             int64_t csc) {                                                                   \
        if (batch < 0 || M < 0 || N < 0 || K < 0 || count < 0) return CONVC_ERR_SIZE;        \
        int64_t tiles = (count + CONVC_SPECTRA_TILE - 1) / CONVC_SPECTRA_TILE;                \
        int64_t jobs = batch * tiles;                                                         \
        (void)threads;                                                                        \
        CONVC_SPECTRA_PARALLEL                                                                \
        for (int64_t job = 0; job < jobs; ++job) {                                            \
            int64_t b = job / tiles, f0 = (job % tiles) * CONVC_SPECTRA_TILE;                 \
            int64_t len = count - f0 < CONVC_SPECTRA_TILE ? count - f0 : CONVC_SPECTRA_TILE;   \
            T acc[2 * CONVC_SPECTRA_TILE];                                                    \
            for (int64_t m = 0; m < M; ++m)                                                   \
                for (int64_t n = 0; n < N; ++n) {                                             \
                    for (int64_t j = 0; j < 2 * len; ++j) acc[j] = 0;                         \
                    for (int64_t k = 0; k < K; ++k) {                                         \
                        const T *a = A + b * sa + m * rsa + k * csa + 2 * f0;                 \
                        const T *x = B + b * sb + k * rsb + n * csb + 2 * f0;                 \
                        if (conj)                                                             \
                            for (int64_t j = 0; j < len; ++j) {                               \
                                acc[2 * j] += a[2 * j] * x[2 * j] + a[2 * j + 1] * x[2 * j + 1]; \
                                acc[2 * j + 1] += a[2 * j + 1] * x[2 * j] - a[2 * j] * x[2 * j + 1]; \
                            }                                                                 \
                        else                                                                  \
                            for (int64_t j = 0; j < len; ++j) {                               \
                                acc[2 * j] += a[2 * j] * x[2 * j] - a[2 * j + 1] * x[2 * j + 1]; \
                                acc[2 * j + 1] += a[2 * j + 1] * x[2 * j] + a[2 * j] * x[2 * j + 1]; \
                            }                                                                 \
                    }                                                                         \
                    T *c = C + b * sc + m * rsc + n * csc + 2 * f0;                           \
                    for (int64_t j = 0; j < 2 * len; ++j) c[j] = acc[j];                      \
                }                                                                             \
        }                                                                                     \
        return CONVC_OK;                                                                      \
    }

#define CONVC_SPECTRA_PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#define CONVC_SPECTRA_PARALLEL CONVC_SPECTRA_PRAGMA(omp parallel for num_threads(threads) schedule(static))
#else
#define CONVC_SPECTRA_PARALLEL
#endif

CONVC_SPECTRA(float, convc_spectra_f32)
CONVC_SPECTRA(double, convc_spectra_f64)
