/* convc runtime: batched real FFTs of rank 1, 2 and 3, for FFT convolution (section 9.8).
 *
 * Sizes are products of 2, 3 and 5 (mixed radix, no external library). Every 1-D complex
 * transform is a Stockham autosort FFT (radix 4, then 2, 3 and 5 butterflies, natural order
 * in and out, no bit reversal) run on W independent sequences at once: a "lane block" holds
 * row j of the sequences as W real parts then W imaginary parts, so every butterfly is plain
 * vector arithmetic across the lanes (GCC vector extensions, as gemm.c), with no shuffles.
 *
 * rfft: the rows of the last axis are read W at a time into a lane block (as z = x[2j] +
 * i x[2j+1] when the length n is even: a complex FFT of n/2 points, then the split into the
 * n/2 + 1 outputs; an odd n takes a complex FFT of n points), transformed and written into the
 * half spectrum; then each other axis is transformed in place, W columns of the half
 * spectrum at a time. irfft runs the same steps backwards: the other axes first (into a
 * copy, the input is left alone), then the last axis from half spectra to real rows, scaled
 * by 1 / prod(dims). The inverse complex FFT is the forward one on conjugated data.
 *
 * Twiddle factors are computed (in double) into the caller's scratch at every call: there is
 * no plan cache and no allocation. OpenMP shares `count` arrays among threads, or, when there
 * are fewer arrays than threads, the row and column blocks of each pass.
 *
 * The file is its own template: the part under CONVC_FFT_TEMPLATE is included once per element
 * type, with T, TNAME and VBYTES defined.
 */
#ifndef CONVC_FFT_TEMPLATE

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "convc_runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define CONVC_FFT_PI 3.14159265358979323846264338327950288
#define CONVC_FFT_CAT2(a, b) a##_##b
#define CONVC_FFT_CAT(a, b) CONVC_FFT_CAT2(a, b)
#define CONVC_FFT_MAX_STAGES 64

size_t convc_fft_size(size_t n) {
    size_t best = 0;
    if (n <= 1) return 1;
    for (size_t p5 = 1;; p5 *= 5) {
        for (size_t p35 = p5;; p35 *= 3) {
            size_t size = p35;
            while (size < n && size <= SIZE_MAX / 2) size *= 2;
            if (size >= n && (best == 0 || size < best)) best = size;
            if (p35 >= n || p35 > SIZE_MAX / 3) break;
        }
        if (p5 >= n || p5 > SIZE_MAX / 5) break;
    }
    return best;
}

/* The radices of a complex FFT of n points, in the order the passes use them: 4s, at most
 * one 2, then 3s and 5s. Returns how many, or -1 where n is 0 or has another prime factor. */
static int convc_fft_factors(size_t n, int *radix) {
    int count = 0;
    if (n == 0) return -1;
    while (n % 4 == 0) radix[count++] = 4, n /= 4;
    if (n % 2 == 0) radix[count++] = 2, n /= 2;
    while (n % 3 == 0) radix[count++] = 3, n /= 3;
    while (n % 5 == 0) radix[count++] = 5, n /= 5;
    return n == 1 ? count : -1;
}

/* Twiddle factors (complex numbers) of the passes of a complex FFT of n points. */
static size_t convc_fft_twiddle_count(size_t n) {
    int radix[CONVC_FFT_MAX_STAGES];
    int stages = convc_fft_factors(n, radix);
    size_t total = 0;
    for (int s = 0; s < stages; s++) {
        n /= (size_t)radix[s];
        total += n * (size_t)(radix[s] - 1);
    }
    return total;
}

/* The length of the complex FFT that the last axis (n real points) takes. */
static size_t convc_fft_last_length(size_t n) { return n % 2 == 0 ? n / 2 : n; }

/* Whether rank and dims describe a transform this file computes; the element count of one
 * half spectrum (complex numbers) in *spectrum. */
static int convc_fft_valid(int rank, const size_t *dims, size_t *spectrum) {
    int radix[CONVC_FFT_MAX_STAGES];
    if (rank < 1 || rank > 3 || dims == NULL) return 0;
    size_t total = 1;
    for (int a = 0; a < rank; a++) {
        if (convc_fft_factors(dims[a], radix) < 0) return 0;
        size_t n = a == rank - 1 ? dims[a] / 2 + 1 : dims[a];
        if (total > SIZE_MAX / 64 / n) return 0;
        total *= n;
    }
    *spectrum = total;
    return 1;
}

/* Where each part of the scratch lies, in elements of the type (after aligning the base). */
struct convc_fft_layout {
    size_t twiddles[3], post, lanes, lane_step, spectra, spectrum_step, total;
};

/* W, the lanes of a block, for elements of `size` bytes: two vectors. */
#if defined(CONVC_SCALAR)
#define CONVC_FFT_VBYTES(size) (size)
#elif defined(__AVX512F__)
#define CONVC_FFT_VBYTES(size) 64
#elif defined(__AVX__)
#define CONVC_FFT_VBYTES(size) 32
#else
#define CONVC_FFT_VBYTES(size) 16
#endif
#define CONVC_FFT_LANES(size) (2 * CONVC_FFT_VBYTES(size) / (size))

static size_t convc_fft_round(size_t elements, size_t size) {
    return convc_aligned(elements * size) / size;
}

static struct convc_fft_layout convc_fft_plan_layout(int threads, int rank, const size_t *dims,
                                                     size_t spectrum, size_t size) {
    struct convc_fft_layout l;
    size_t at = 0, longest = 0;
    for (int a = 0; a < rank; a++) {
        size_t n = a == rank - 1 ? convc_fft_last_length(dims[a]) : dims[a];
        l.twiddles[a] = at;
        at += convc_fft_round(2 * convc_fft_twiddle_count(n), size);
        longest = dims[a] > longest ? dims[a] : longest;
    }
    l.post = at;
    at += convc_fft_round(2 * (dims[rank - 1] / 2 + 1), size);
    l.lanes = at;
    l.lane_step = 2 * (longest + 1) * 2 * (size_t)CONVC_FFT_LANES(size); /* two lane blocks */
    at += (size_t)threads * l.lane_step;
    l.spectra = at;
    l.spectrum_step = rank > 1 ? convc_fft_round(2 * spectrum, size) : 0;
    at += (size_t)threads * l.spectrum_step;
    l.total = at;
    return l;
}

static size_t convc_fft_scratch(int threads, int rank, const size_t *dims, size_t size) {
    size_t spectrum;
    if (!convc_fft_valid(rank, dims, &spectrum)) return 0;
    if (threads < 1) threads = 1;
    return convc_fft_plan_layout(threads, rank, dims, spectrum, size).total * size +
           CONVC_ALIGNMENT;
}

size_t convc_rfft_scratch_f32(int threads, int rank, const size_t *dims) {
    return convc_fft_scratch(threads, rank, dims, sizeof(float));
}

size_t convc_rfft_scratch_f64(int threads, int rank, const size_t *dims) {
    return convc_fft_scratch(threads, rank, dims, sizeof(double));
}

/* Row r of a (rows x cols) grid of leading indices, as a row of a (.. x to_cols) grid moved
 * by (lo0, lo1): the leading axes of the input, window and spectrum have different sizes. */
static size_t convc_fft_row(size_t r, size_t cols, size_t to_cols, size_t lo0, size_t lo1) {
    return (r / cols + lo0) * to_cols + r % cols + lo1;
}

#define CONVC_FFT_TEMPLATE
#define T float
#define TNAME f32
#include "fft.c"
#define T double
#define TNAME f64
#include "fft.c"
#undef CONVC_FFT_TEMPLATE

#else /* CONVC_FFT_TEMPLATE */
/* Defined by the includer: T (float or double) and TNAME (f32 or f64); undefined at the end. */

#define FN(name) CONVC_FFT_CAT(name, TNAME)
#define VBYTES CONVC_FFT_VBYTES((int)sizeof(T))
#define VL (VBYTES / (int)sizeof(T)) /* elements per vector */
#define NV 2                         /* vectors per lane row */
#define W (NV * VL)                  /* lanes: sequences transformed at once */
#define V FN(vector)

typedef T V __attribute__((vector_size(VBYTES), may_alias));

/* Row j, vector v of a lane block: real parts, then imaginary parts. */
#define RE(buf, j, v) (*(V *)((buf) + (size_t)(j) * 2 * W + (v) * VL))
#define IM(buf, j, v) (*(V *)((buf) + (size_t)(j) * 2 * W + W + (v) * VL))

/* One pass of radix r: x holds r*m*s rows as (k, p, q) -> q + s * (p + k * m), y gets
 * (p, j, q) -> q + s * (j + r * p), each output j multiplied by tw[p][j - 1]. */
static void FN(pass2)(size_t s, size_t m, const T *tw, const T *x, T *y) {
    for (size_t p = 0; p < m; p++, tw += 2) {
        const T wr = tw[0], wi = tw[1];
        for (size_t q = 0; q < s; q++) {
            size_t i = q + s * p, o = q + 2 * s * p, sm = s * m;
            for (int v = 0; v < NV; v++) {
                V ar = RE(x, i, v), ai = IM(x, i, v), br = RE(x, i + sm, v), bi = IM(x, i + sm, v);
                RE(y, o, v) = ar + br;
                IM(y, o, v) = ai + bi;
                V dr = ar - br, di = ai - bi;
                RE(y, o + s, v) = dr * wr - di * wi;
                IM(y, o + s, v) = dr * wi + di * wr;
            }
        }
    }
}

static void FN(pass3)(size_t s, size_t m, const T *tw, const T *x, T *y) {
    const T h = (T)0.86602540378443864676372317075293618; /* sin(2 pi / 3) */
    for (size_t p = 0; p < m; p++, tw += 4) {
        const T w1r = tw[0], w1i = tw[1], w2r = tw[2], w2i = tw[3];
        for (size_t q = 0; q < s; q++) {
            size_t i = q + s * p, o = q + 3 * s * p, sm = s * m;
            for (int v = 0; v < NV; v++) {
                V a0r = RE(x, i, v), a0i = IM(x, i, v);
                V a1r = RE(x, i + sm, v), a1i = IM(x, i + sm, v);
                V a2r = RE(x, i + 2 * sm, v), a2i = IM(x, i + 2 * sm, v);
                V t1r = a1r + a2r, t1i = a1i + a2i;
                V t2r = a0r - (T)0.5 * t1r, t2i = a0i - (T)0.5 * t1i;
                V t3r = h * (a1r - a2r), t3i = h * (a1i - a2i);
                RE(y, o, v) = a0r + t1r;
                IM(y, o, v) = a0i + t1i;
                V b1r = t2r + t3i, b1i = t2i - t3r, b2r = t2r - t3i, b2i = t2i + t3r;
                RE(y, o + s, v) = b1r * w1r - b1i * w1i;
                IM(y, o + s, v) = b1r * w1i + b1i * w1r;
                RE(y, o + 2 * s, v) = b2r * w2r - b2i * w2i;
                IM(y, o + 2 * s, v) = b2r * w2i + b2i * w2r;
            }
        }
    }
}

static void FN(pass4)(size_t s, size_t m, const T *tw, const T *x, T *y) {
    for (size_t p = 0; p < m; p++, tw += 6) {
        const T w1r = tw[0], w1i = tw[1], w2r = tw[2], w2i = tw[3], w3r = tw[4], w3i = tw[5];
        for (size_t q = 0; q < s; q++) {
            size_t i = q + s * p, o = q + 4 * s * p, sm = s * m;
            for (int v = 0; v < NV; v++) {
                V a0r = RE(x, i, v), a0i = IM(x, i, v);
                V a1r = RE(x, i + sm, v), a1i = IM(x, i + sm, v);
                V a2r = RE(x, i + 2 * sm, v), a2i = IM(x, i + 2 * sm, v);
                V a3r = RE(x, i + 3 * sm, v), a3i = IM(x, i + 3 * sm, v);
                V t0r = a0r + a2r, t0i = a0i + a2i, t1r = a0r - a2r, t1i = a0i - a2i;
                V t2r = a1r + a3r, t2i = a1i + a3i, t3r = a1r - a3r, t3i = a1i - a3i;
                RE(y, o, v) = t0r + t2r;
                IM(y, o, v) = t0i + t2i;
                V b1r = t1r + t3i, b1i = t1i - t3r; /* t1 - i t3 */
                V b2r = t0r - t2r, b2i = t0i - t2i;
                V b3r = t1r - t3i, b3i = t1i + t3r; /* t1 + i t3 */
                RE(y, o + s, v) = b1r * w1r - b1i * w1i;
                IM(y, o + s, v) = b1r * w1i + b1i * w1r;
                RE(y, o + 2 * s, v) = b2r * w2r - b2i * w2i;
                IM(y, o + 2 * s, v) = b2r * w2i + b2i * w2r;
                RE(y, o + 3 * s, v) = b3r * w3r - b3i * w3i;
                IM(y, o + 3 * s, v) = b3r * w3i + b3i * w3r;
            }
        }
    }
}

static void FN(pass5)(size_t s, size_t m, const T *tw, const T *x, T *y) {
    const T c1 = (T)0.30901699437494742410229341718281906;  /* cos(2 pi / 5) */
    const T c2 = (T)-0.80901699437494742410229341718281906; /* cos(4 pi / 5) */
    const T s1 = (T)0.95105651629515357211643933337938214;  /* sin(2 pi / 5) */
    const T s2 = (T)0.58778525229247312916870595463907277;  /* sin(4 pi / 5) */
    for (size_t p = 0; p < m; p++, tw += 8) {
        for (size_t q = 0; q < s; q++) {
            size_t i = q + s * p, o = q + 5 * s * p, sm = s * m;
            for (int v = 0; v < NV; v++) {
                V a0r = RE(x, i, v), a0i = IM(x, i, v);
                V a1r = RE(x, i + sm, v), a1i = IM(x, i + sm, v);
                V a2r = RE(x, i + 2 * sm, v), a2i = IM(x, i + 2 * sm, v);
                V a3r = RE(x, i + 3 * sm, v), a3i = IM(x, i + 3 * sm, v);
                V a4r = RE(x, i + 4 * sm, v), a4i = IM(x, i + 4 * sm, v);
                V t1r = a1r + a4r, t1i = a1i + a4i, t2r = a2r + a3r, t2i = a2i + a3i;
                V t3r = a1r - a4r, t3i = a1i - a4i, t4r = a2r - a3r, t4i = a2i - a3i;
                RE(y, o, v) = a0r + t1r + t2r;
                IM(y, o, v) = a0i + t1i + t2i;
                V u1r = a0r + c1 * t1r + c2 * t2r, u1i = a0i + c1 * t1i + c2 * t2i;
                V u2r = a0r + c2 * t1r + c1 * t2r, u2i = a0i + c2 * t1i + c1 * t2i;
                V v1r = s1 * t3r + s2 * t4r, v1i = s1 * t3i + s2 * t4i;
                V v2r = s2 * t3r - s1 * t4r, v2i = s2 * t3i - s1 * t4i;
                V br[4] = {u1r + v1i, u2r + v2i, u2r - v2i, u1r - v1i}; /* u -+ i v */
                V bi[4] = {u1i - v1r, u2i - v2r, u2i + v2r, u1i + v1r};
                for (int j = 0; j < 4; j++) {
                    const T wr = tw[2 * j], wi = tw[2 * j + 1];
                    RE(y, o + (size_t)(j + 1) * s, v) = br[j] * wr - bi[j] * wi;
                    IM(y, o + (size_t)(j + 1) * s, v) = br[j] * wi + bi[j] * wr;
                }
            }
        }
    }
}

/* The twiddle factors of the passes of an n-point FFT, exp(-2 pi i j p / L) for the pass
 * of length L, pass after pass. */
static void FN(twiddles)(size_t n, T *tw) {
    int radix[CONVC_FFT_MAX_STAGES];
    int stages = convc_fft_factors(n, radix);
    for (int st = 0; st < stages; st++) {
        size_t r = (size_t)radix[st], m = n / r;
        for (size_t p = 0; p < m; p++)
            for (size_t j = 1; j < r; j++) {
                double angle = -2 * CONVC_FFT_PI * (double)(j * p % n) / (double)n;
                *tw++ = (T)cos(angle);
                *tw++ = (T)sin(angle);
            }
        n = m;
    }
}

/* The forward DFT, X[k] = sum_j x[j] exp(-2 pi i j k / n), of the W sequences of lane block
 * x (n rows); y is a lane block as large. Returns the one of x and y that holds X. */
static T *FN(fft)(size_t n, const T *tw, T *x, T *y) {
    int radix[CONVC_FFT_MAX_STAGES];
    int stages = convc_fft_factors(n, radix);
    size_t s = 1;
    for (int st = 0; st < stages; st++) {
        size_t r = (size_t)radix[st], m = n / (s * r);
        switch (r) {
        case 2: FN(pass2)(s, m, tw, x, y); break;
        case 3: FN(pass3)(s, m, tw, x, y); break;
        case 4: FN(pass4)(s, m, tw, x, y); break;
        default: FN(pass5)(s, m, tw, x, y); break;
        }
        tw += 2 * m * (r - 1);
        T *t = x;
        x = y;
        y = t;
        s *= r;
    }
    return x;
}

/* What one pass over rows or columns needs; see the functions that take it. */
struct FN(job) {
    int rank;
    size_t n, len, lo, h;         /* the axis, its real length read or written, offset, n/2+1 */
    size_t cols, to_cols, lo0, lo1; /* leading-index mapping (convc_fft_row) */
    size_t rows;                  /* rows or column blocks to transform */
    size_t inner, cblocks, outer_lo; /* columns: spacing of a column's rows, blocks per plane */
    const T *tw, *post, *src;
    T *dst;
    T scale;
};

typedef void (*FN(pass_fn))(const struct FN(job) *, size_t, size_t, T *);

/* fn(job, first, last, lanes) over blocks [0, blocks), shared among `threads` threads, each
 * with its own lane blocks (lane_step elements apart). */
static void FN(run)(int threads, size_t blocks, FN(pass_fn) fn, const struct FN(job) *job,
                    T *lanes, size_t lane_step) {
#ifdef _OPENMP
    if (threads > 1 && blocks > 1) {
        int teams = (size_t)threads < blocks ? threads : (int)blocks;
#pragma omp parallel num_threads(teams)
        {
            size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
            fn(job, blocks * t / nt, blocks * (t + 1) / nt, lanes + t * lane_step);
        }
        return;
    }
#endif
    (void)lane_step;
    fn(job, 0, blocks, lanes);
}

/* Last axis, forward: real rows [W first, W last) of src (job->len values each, zero beyond:
 * job->n in all) to half-spectrum rows of dst (job->h complex numbers). */
static void FN(rows_forward)(const struct FN(job) *job, size_t first, size_t last, T *lanes) {
    const size_t n = job->n, len = job->len, h = job->h, even = n % 2 == 0;
    const size_t fft_n = even ? n / 2 : n, m = n / 2;
    T *a = lanes, *b = lanes + (n + 1) * 2 * W;
    for (size_t block = first; block < last; block++) {
        const size_t r0 = block * W, count = job->rows - r0 < W ? job->rows - r0 : W;
        memset(a, 0, sizeof(T) * fft_n * 2 * W);
        for (size_t lane = 0; lane < count; lane++) {
            const T *x = job->src + (r0 + lane) * len;
            if (even) {
                for (size_t j = 0; j < len / 2; j++) {
                    a[j * 2 * W + lane] = x[2 * j];
                    a[j * 2 * W + W + lane] = x[2 * j + 1];
                }
                if (len % 2) a[len / 2 * 2 * W + lane] = x[len - 1];
            } else {
                for (size_t j = 0; j < len; j++) a[j * 2 * W + lane] = x[j];
            }
        }
        T *z = FN(fft)(fft_n, job->tw, a, b);
        if (even) { /* X[k] = E[k] + w^k O[k]: E, O the DFTs of the even and odd samples */
            for (int v = 0; v < NV; v++) {
                V zr = RE(z, 0, v), zi = IM(z, 0, v);
                RE(z, 0, v) = zr + zi;
                RE(z, m, v) = zr - zi;
                IM(z, 0, v) = IM(z, m, v) = (V){0};
            }
            for (size_t k = 1; k <= m / 2; k++) {
                const size_t l = m - k;
                const T wkr = job->post[2 * k], wki = job->post[2 * k + 1];
                const T wlr = job->post[2 * l], wli = job->post[2 * l + 1];
                for (int v = 0; v < NV; v++) {
                    V akr = RE(z, k, v), aki = IM(z, k, v), alr = RE(z, l, v), ali = IM(z, l, v);
                    /* E = (Z[k] + conj Z[l]) / 2, O = (Z[k] - conj Z[l]) / 2i, l = m - k */
                    V er = (T)0.5 * (akr + alr), ei = (T)0.5 * (aki - ali);
                    V or_ = (T)0.5 * (aki + ali), oi = (T)-0.5 * (akr - alr);
                    RE(z, k, v) = er + or_ * wkr - oi * wki;
                    IM(z, k, v) = ei + or_ * wki + oi * wkr;
                    /* at l: E' = conj E, O' = conj O */
                    RE(z, l, v) = er + or_ * wlr + oi * wli;
                    IM(z, l, v) = -ei + or_ * wli - oi * wlr;
                }
            }
        }
        for (size_t lane = 0; lane < count; lane++) {
            T *y = job->dst + convc_fft_row(r0 + lane, job->cols, job->to_cols, 0, 0) * 2 * h;
            for (size_t k = 0; k < h; k++) {
                y[2 * k] = z[k * 2 * W + lane];
                y[2 * k + 1] = z[k * 2 * W + W + lane];
            }
        }
    }
}

/* Last axis, inverse: half-spectrum rows of src (job->h complex numbers; the imaginary parts
 * of X[0], and of X[n/2] for an even n, are taken as 0) to the real values [lo, lo + len) of
 * rows [W first, W last) of the window, times job->scale. */
static void FN(rows_inverse)(const struct FN(job) *job, size_t first, size_t last, T *lanes) {
    const size_t n = job->n, h = job->h, even = n % 2 == 0;
    const size_t fft_n = even ? n / 2 : n, m = n / 2;
    const T scale = job->scale;
    T *a = lanes, *b = lanes + (n + 1) * 2 * W;
    for (size_t block = first; block < last; block++) {
        const size_t r0 = block * W, count = job->rows - r0 < W ? job->rows - r0 : W;
        memset(a, 0, sizeof(T) * (fft_n + 1) * 2 * W);
        for (size_t lane = 0; lane < count; lane++) {
            size_t row = convc_fft_row(r0 + lane, job->cols, job->to_cols, job->lo0, job->lo1);
            const T *x = job->src + row * 2 * h;
            for (size_t k = 0; k < h; k++) { /* conjugated and scaled: the inverse is a */
                a[k * 2 * W + lane] = scale * x[2 * k]; /* forward FFT in between conjugations */
                a[k * 2 * W + W + lane] = -scale * x[2 * k + 1];
            }
            a[W + lane] = 0;
            if (even) a[m * 2 * W + W + lane] = 0;
            else /* the other half: X[n - k] = conj X[k] */
                for (size_t k = 1; k < h; k++) {
                    a[(n - k) * 2 * W + lane] = a[k * 2 * W + lane];
                    a[(n - k) * 2 * W + W + lane] = -a[k * 2 * W + W + lane];
                }
        }
        if (even) { /* conj Z[k] = conj(E[k] + i O[k]) from conj X, with E and O as above */
            for (int v = 0; v < NV; v++) {
                V xr = RE(a, 0, v), yr = RE(a, m, v);
                RE(a, 0, v) = xr + yr;
                IM(a, 0, v) = -(xr - yr);
            }
            for (size_t k = 1; k <= m / 2; k++) {
                const size_t l = m - k;
                const T wkr = job->post[2 * k], wki = job->post[2 * k + 1];
                const T wlr = job->post[2 * l], wli = job->post[2 * l + 1];
                for (int v = 0; v < NV; v++) {
                    /* X[k] = (akr, aki), X[l] = (alr, ali): the block holds conj X */
                    V akr = RE(a, k, v), aki = -IM(a, k, v), alr = RE(a, l, v), ali = -IM(a, l, v);
                    /* X[k] + conj X[l] and X[k] - conj X[l] */
                    V er = akr + alr, ei = aki - ali, dr = akr - alr, di = aki + ali;
                    /* O = D conj(w^k); Z = E + i O */
                    V or_ = dr * wkr + di * wki, oi = di * wkr - dr * wki;
                    RE(a, k, v) = er - oi;
                    IM(a, k, v) = -(ei + or_);
                    /* at l: E' = conj E, D' = -conj D */
                    V pr = di * wli - dr * wlr, pi = di * wlr + dr * wli;
                    RE(a, l, v) = er - pi;
                    IM(a, l, v) = -(-ei + pr);
                }
            }
        }
        T *z = FN(fft)(fft_n, job->tw, a, b);
        for (size_t lane = 0; lane < count; lane++) {
            T *y = job->dst + (r0 + lane) * job->len;
            for (size_t c = job->lo; c < job->lo + job->len; c++) /* x = conj of the FFT */
                y[c - job->lo] = !even        ? z[c * 2 * W + lane]
                                 : c % 2 == 0 ? z[c / 2 * 2 * W + lane]
                                              : -z[c / 2 * 2 * W + W + lane];
        }
    }
}

/* Another axis, in place or from src to dst: the complex columns of planes
 * [outer_lo, outer_lo + rows / cblocks), each n rows of `inner` complex numbers; W columns
 * per block. A negative scale conjugates on the way in and out (the inverse transform). */
static void FN(columns)(const struct FN(job) *job, size_t first, size_t last, T *lanes) {
    const size_t n = job->n, inner = job->inner;
    const T sign = job->scale;
    T *a = lanes, *b = lanes + (n + 1) * 2 * W;
    for (size_t block = first; block < last; block++) {
        const size_t outer = job->outer_lo + block / job->cblocks, c0 = block % job->cblocks * W;
        const size_t count = inner - c0 < W ? inner - c0 : W, at = (outer * n * inner + c0) * 2;
        const T *x = job->src + at;
        if (count < W) memset(a, 0, sizeof(T) * n * 2 * W);
        for (size_t j = 0; j < n; j++)
            for (size_t lane = 0; lane < count; lane++) {
                a[j * 2 * W + lane] = x[(j * inner + lane) * 2];
                a[j * 2 * W + W + lane] = sign * x[(j * inner + lane) * 2 + 1];
            }
        T *z = FN(fft)(n, job->tw, a, b), *y = job->dst + at;
        for (size_t j = 0; j < n; j++)
            for (size_t lane = 0; lane < count; lane++) {
                y[(j * inner + lane) * 2] = z[j * 2 * W + lane];
                y[(j * inner + lane) * 2 + 1] = sign * z[j * 2 * W + W + lane];
            }
    }
}

/* Fills the twiddle tables of the scratch; returns its aligned base. */
static T *FN(prepare)(int rank, const size_t *dims, const struct convc_fft_layout *l,
                      void *scratch) {
    T *base = (T *)(((uintptr_t)scratch + CONVC_ALIGNMENT - 1) & ~(uintptr_t)(CONVC_ALIGNMENT - 1));
    for (int a = 0; a < rank; a++)
        FN(twiddles)(a == rank - 1 ? convc_fft_last_length(dims[a]) : dims[a], base + l->twiddles[a]);
    const size_t n = dims[rank - 1];
    for (size_t k = 0; k <= n / 2; k++) {
        double angle = -2 * CONVC_FFT_PI * (double)k / (double)n;
        base[l->post + 2 * k] = (T)cos(angle);
        base[l->post + 2 * k + 1] = (T)sin(angle);
    }
    return base;
}

/* A pass over the columns of axis `axis` of a half spectrum: planes [outer_lo, outer_hi). */
static void FN(run_columns)(int threads, int rank, const size_t *dims, int axis, size_t outer_lo,
                            size_t outer_hi, const T *tw, const T *src, T *dst, T sign,
                            T *lanes, size_t lane_step) {
    struct FN(job) job = {0};
    job.n = dims[axis];
    job.inner = dims[rank - 1] / 2 + 1;
    for (int a = axis + 1; a < rank - 1; a++) job.inner *= dims[a];
    job.cblocks = (job.inner + W - 1) / W;
    job.outer_lo = outer_lo;
    job.rows = (outer_hi - outer_lo) * job.cblocks;
    job.tw = tw, job.src = src, job.dst = dst, job.scale = sign;
    FN(run)(threads, job.rows, FN(columns), &job, lanes, lane_step);
}

/* One forward transform (see convc_rfft_f32), its passes shared among `threads` threads. */
static void FN(rfft_one)(int threads, int rank, const size_t *dims, const size_t *in_dims,
                         const T *in, T *out, const T *base, const struct convc_fft_layout *l,
                         T *lanes) {
    const size_t n = dims[rank - 1], h = n / 2 + 1;
    const size_t cols = rank == 3 ? in_dims[1] : 1, to_cols = rank == 3 ? dims[1] : 1;
    size_t rows = 1, all = 1;
    for (int a = 0; a < rank - 1; a++) rows *= in_dims[a], all *= dims[a];
    for (size_t r = 0; r < all; r++) /* rows of the spectrum that only padding reaches */
        if ((rank > 1 && r / to_cols >= in_dims[0]) || (rank == 3 && r % to_cols >= in_dims[1]))
            memset(out + r * 2 * h, 0, sizeof(T) * 2 * h);
    struct FN(job) job = {0};
    job.rank = rank, job.n = n, job.len = in_dims[rank - 1], job.h = h;
    job.cols = cols, job.to_cols = to_cols, job.rows = rows;
    job.tw = base + l->twiddles[rank - 1], job.post = base + l->post;
    job.src = in, job.dst = out;
    FN(run)(threads, (rows + W - 1) / W, FN(rows_forward), &job, lanes, l->lane_step);
    if (rank == 3) /* planes beyond in_dims[0] are zero */
        FN(run_columns)(threads, rank, dims, 1, 0, in_dims[0], base + l->twiddles[1], out, out, 1,
                        lanes, l->lane_step);
    if (rank > 1)
        FN(run_columns)(threads, rank, dims, 0, 0, 1, base + l->twiddles[0], out, out, 1, lanes,
                        l->lane_step);
}

/* One inverse transform (see convc_irfft_f32); spectrum: a half spectrum's room (rank > 1). */
static void FN(irfft_one)(int threads, int rank, const size_t *dims, const size_t *lo,
                          const size_t *win, const T *in, T *out, const T *base,
                          const struct convc_fft_layout *l, T *lanes, T *spectrum) {
    const size_t n = dims[rank - 1];
    const T *src = in;
    if (rank > 1) {
        FN(run_columns)(threads, rank, dims, 0, 0, 1, base + l->twiddles[0], in, spectrum, -1,
                        lanes, l->lane_step);
        src = spectrum;
    }
    if (rank == 3) /* only the planes of the window */
        FN(run_columns)(threads, rank, dims, 1, lo[0], lo[0] + win[0], base + l->twiddles[1],
                        spectrum, spectrum, -1, lanes, l->lane_step);
    double total = 1;
    size_t rows = 1;
    for (int a = 0; a < rank; a++) total *= (double)dims[a];
    for (int a = 0; a < rank - 1; a++) rows *= win[a];
    struct FN(job) job = {0};
    job.rank = rank, job.n = n, job.len = win[rank - 1], job.lo = lo[rank - 1], job.h = n / 2 + 1;
    job.cols = rank == 3 ? win[1] : 1, job.to_cols = rank == 3 ? dims[1] : 1;
    job.lo0 = rank > 1 ? lo[0] : 0, job.lo1 = rank == 3 ? lo[1] : 0;
    job.rows = rows;
    job.tw = base + l->twiddles[rank - 1], job.post = base + l->post;
    job.src = src, job.dst = out, job.scale = (T)(1 / total);
    FN(run)(threads, (rows + W - 1) / W, FN(rows_inverse), &job, lanes, l->lane_step);
}

int FN(convc_rfft)(int threads, int rank, const size_t *dims, size_t count,
                   const size_t *in_dims, const T *in, T *out, void *scratch) {
    size_t spectrum, given = 1;
    if (!convc_fft_valid(rank, dims, &spectrum)) return CONVC_ERR_SIZE;
    if (in_dims == NULL) in_dims = dims;
    for (int a = 0; a < rank; a++) {
        if (in_dims[a] > dims[a]) return CONVC_ERR_SIZE;
        given *= in_dims[a];
    }
    if (count == 0) return CONVC_OK;
    if (threads < 1) threads = 1;
    const struct convc_fft_layout l = convc_fft_plan_layout(threads, rank, dims, spectrum, sizeof(T));
    T *base = FN(prepare)(rank, dims, &l, scratch);
    const int teams = count < (size_t)threads ? (int)count : threads;
    if (count >= (size_t)threads && teams > 1) { /* whole arrays per thread */
#ifdef _OPENMP
#pragma omp parallel for num_threads(teams) schedule(static)
#endif
        for (size_t i = 0; i < count; i++) {
#ifdef _OPENMP
            T *lanes = base + l.lanes + (size_t)omp_get_thread_num() * l.lane_step;
#else
            T *lanes = base + l.lanes;
#endif
            FN(rfft_one)(1, rank, dims, in_dims, in + i * given, out + i * 2 * spectrum, base, &l,
                         lanes);
        }
    } else {
        for (size_t i = 0; i < count; i++)
            FN(rfft_one)(threads, rank, dims, in_dims, in + i * given, out + i * 2 * spectrum,
                         base, &l, base + l.lanes);
    }
    return CONVC_OK;
}

int FN(convc_irfft)(int threads, int rank, const size_t *dims, size_t count, const T *in,
                    const size_t *out_lo, const size_t *out_dims, T *out, void *scratch) {
    size_t spectrum, written = 1;
    static const size_t zeros[3] = {0, 0, 0};
    if (!convc_fft_valid(rank, dims, &spectrum)) return CONVC_ERR_SIZE;
    if (out_lo == NULL) out_lo = zeros;
    if (out_dims == NULL) out_dims = dims;
    for (int a = 0; a < rank; a++) {
        if (out_lo[a] > dims[a] || out_dims[a] > dims[a] - out_lo[a]) return CONVC_ERR_SIZE;
        written *= out_dims[a];
    }
    if (count == 0 || written == 0) return CONVC_OK;
    if (threads < 1) threads = 1;
    const struct convc_fft_layout l = convc_fft_plan_layout(threads, rank, dims, spectrum, sizeof(T));
    T *base = FN(prepare)(rank, dims, &l, scratch);
    const int teams = count < (size_t)threads ? (int)count : threads;
    if (count >= (size_t)threads && teams > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(teams) schedule(static)
#endif
        for (size_t i = 0; i < count; i++) {
#ifdef _OPENMP
            size_t t = (size_t)omp_get_thread_num();
#else
            size_t t = 0;
#endif
            FN(irfft_one)(1, rank, dims, out_lo, out_dims, in + i * 2 * spectrum, out + i * written,
                          base, &l, base + l.lanes + t * l.lane_step,
                          base + l.spectra + t * l.spectrum_step);
        }
    } else {
        for (size_t i = 0; i < count; i++)
            FN(irfft_one)(threads, rank, dims, out_lo, out_dims, in + i * 2 * spectrum,
                          out + i * written, base, &l, base + l.lanes, base + l.spectra);
    }
    return CONVC_OK;
}

#undef FN
#undef VBYTES
#undef VL
#undef NV
#undef W
#undef V
#undef RE
#undef IM
#undef T
#undef TNAME
#endif /* CONVC_FFT_TEMPLATE */
