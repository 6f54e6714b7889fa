/* convc runtime: what every generated module shares.
 *
 * Error codes (mirrored by convc/errors.py through convc_error_message), aligned buffers,
 * and the integer and float helpers that the generated index arithmetic calls.
 */
#ifndef CONVC_RUNTIME_H
#define CONVC_RUNTIME_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Error codes returned by every generated entry point. */
enum convc_status {
    CONVC_OK = 0,
    CONVC_ERR_NOMEM = 1,   /* a scratch buffer could not be allocated */
    CONVC_ERR_SIZE = 2,    /* a size argument is negative or its product overflows */
    CONVC_ERR_COUNT        /* number of codes; not a code */
};

const char *convc_error_message(int code);

/* The functions of register-blocked sums. Such a sum broadcasts each value of its signal
 * from memory into the multiply-add that uses it, which costs a load and no more; GCC's
 * predictive commoning would keep the values one step reads for the next in registers and
 * broadcast them from there, a shuffle each, which competes with the multiply-adds. */
#if defined(__GNUC__) && !defined(__clang__)
#define CONVC_BROADCASTING __attribute__((optimize("no-predictive-commoning")))
#else
#define CONVC_BROADCASTING
#endif

/* Aligned scratch buffers (64 bytes: one cache line, one 512-bit vector). */
#define CONVC_ALIGNMENT 64
void *convc_alloc(size_t bytes);
void convc_free(void *p);

/* A monotonic clock in seconds, for the step timers of a profiled module. */
double convc_seconds(void);

/* A workspace holds the intermediate tensors one after the other, each aligned; the ones
 * that a single step uses alone share a stretch with the other steps' own. */
static inline size_t convc_aligned(size_t bytes) {
    return (bytes + CONVC_ALIGNMENT - 1) / CONVC_ALIGNMENT * CONVC_ALIGNMENT;
}
static inline size_t convc_max_size(size_t a, size_t b) { return a > b ? a : b; }
static inline void *convc_take(char **next, size_t bytes) {
    void *p = *next;
    *next += convc_aligned(bytes);
    return p;
}

/* Integer division rounding toward -infinity and +infinity, for any signs (b != 0).
 * C's `/` truncates toward zero, which is wrong for negative numerators. */
static inline int64_t convc_floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline int64_t convc_ceildiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) == (b < 0))) ? q + 1 : q;
}
/* Remainder with the sign of the divisor (Python's and sympy's Mod). */
static inline int64_t convc_mod(int64_t a, int64_t b) {
    int64_t r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline int64_t convc_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t convc_max(int64_t a, int64_t b) { return a > b ? a : b; }

/* Float max/min that propagate NaN from either argument (C's fmax drops it): the compare
 * picks b when b is NaN, the second select keeps a NaN a. Written as two selects, not one
 * with `||`, which GCC 12 does not vectorise along a strided row (a 2x2 max pool, 6x). */
#define CONVC_NAN_KEEPING(name, T, op)                                                     \
    static inline T name(T a, T b) {                                                       \
        T m = a op b ? a : b;                                                              \
        return a != a ? a : m;                                                             \
    }
CONVC_NAN_KEEPING(convc_fmaxf, float, >)
CONVC_NAN_KEEPING(convc_fminf, float, <)
CONVC_NAN_KEEPING(convc_fmax, double, >)
CONVC_NAN_KEEPING(convc_fmin, double, <)
#undef CONVC_NAN_KEEPING

/* A select that reads both values: `c ? a : b` written in C reads only the chosen one, and
 * GCC 12 at -O3 with AVX-512 turns such a conditional read inside a short reduction into a
 * masked load that drops elements (a label map's pick of its labelled logit). Used where the
 * test reads a tensor and both values are in range. */
static inline float convc_selectf(int c, float a, float b) { return c ? a : b; }
static inline double convc_select(int c, double a, double b) { return c ? a : b; }

/* 64-byte vectors (16 floats, 8 doubles) for the generated code's vector accumulators, in
 * GCC and Clang vector extensions: a target with narrower vectors, or none, splits them.
 * convc_vload_* reads one from any element's address (through a type of element alignment
 * that may alias the elements); convc_vsum_* adds a vector's lanes, in order. Vectors are
 * never passed or returned by value: that would depend on the target's ABI. */
typedef float convc_vf32 __attribute__((vector_size(64)));
typedef double convc_vf64 __attribute__((vector_size(64)));
typedef float convc_vf32_any __attribute__((vector_size(64), aligned(4), may_alias));
typedef double convc_vf64_any __attribute__((vector_size(64), aligned(8), may_alias));
#define convc_vload_f32(p) (*(const convc_vf32_any *)(p))
#define convc_vload_f64(p) (*(const convc_vf64_any *)(p))
/* convc_vload_part_*(p, n): the first n lanes (0 <= n < lanes) from p, every other zero (the
 * last, partial vector of a sum); convc_vstore_part_*(p, v, n): the first n lanes of v to
 * p, nothing past them. With AVX-512 one masked load or store, which touches nothing past
 * them (GCC's builtins: <immintrin.h> would cost every file that includes this one a tenth
 * of a second to compile); elsewhere lane by lane. */
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define convc_vload_part_f32(p, n) __builtin_ia32_loadups512_mask(                          \
        (p), (convc_vf32){0}, (unsigned short)((1u << (n)) - 1u))
#define convc_vload_part_f64(p, n) __builtin_ia32_loadupd512_mask(                          \
        (p), (convc_vf64){0}, (unsigned char)((1u << (n)) - 1u))
#define convc_vstore_part_f32(p, v, n) __builtin_ia32_storeups512_mask((p), (v), (1u << (n)) - 1u)
#define convc_vstore_part_f64(p, v, n) __builtin_ia32_storeupd512_mask((p), (v), (1u << (n)) - 1u)
#else
#define CONVC_VSTORE_PART(p, v, n) for (int lane_ = 0; lane_ < (n); ++lane_) (p)[lane_] = (v)[lane_]
#define convc_vstore_part_f32 CONVC_VSTORE_PART
#define convc_vstore_part_f64 CONVC_VSTORE_PART
#define CONVC_VLOAD_PART(V, p, n) __extension__({                                         \
        V part_ = {0};                                                                     \
        for (int64_t lane_ = 0; lane_ < (n); ++lane_) part_[lane_] = (p)[lane_];           \
        part_;                                                                             \
    })
#define convc_vload_part_f32(p, n) CONVC_VLOAD_PART(convc_vf32, p, n)
#define convc_vload_part_f64(p, n) CONVC_VLOAD_PART(convc_vf64, p, n)
#endif
#define CONVC_VECTOR_SUM(T, V, SUFFIX)                                                     \
    static inline T convc_vsum_##SUFFIX(const V *v) {                                      \
        T sum = 0;                                                                         \
        for (int i = 0; i < (int)(sizeof *v / sizeof sum); i++) sum += (*v)[i];            \
        return sum;                                                                        \
    }
CONVC_VECTOR_SUM(float, convc_vf32, f32)
CONVC_VECTOR_SUM(double, convc_vf64, f64)
#undef CONVC_VECTOR_SUM

/* convc_vstore_rows_*(p, stride, step, v, width, rows): lane l of the vectors v[0], ...,
 * v[width - 1] (width <= 16) to p[l * stride + i * step] for i < width (step 1 or 2), for the
 * first `rows` lanes: a block of outputs held in registers along a row of its tensor, one
 * vector per output, stored row by row rather than lane by lane. With GCC 12 or Clang,
 * eight vectors at a time are transposed in three rounds of interleaving (a perfect
 * shuffle, thrice, transposes eight rows; floats in each half of their lanes apart): 24
 * shuffles and 16 row stores where the lane by lane store takes 128 extracts. Each call's
 * sizes are constants: the loops unroll. */
/* convc_vadd_rows_*(p, stride, step, v, width, rows): the same, added to p: outputs
 * accumulated into their tensor a row at a time. At step 2 (every other element: a phase
 * of a strided layer's input gradient), stored or added, a row of floats is one store (after
 * a load and an add) of the even lanes of 16 with AVX-512 (masked: the odd elements,
 * another phase's, are neither read nor written), else element by element. */
/* convc_transpose_*(dst, dst_stride, src, src_stride, rows, cols): dst[c * dst_stride + r] =
 * src[r * src_stride + c] for r < rows and c < cols, both at most the vector's lanes (16
 * floats, 8 doubles): a tile of a layout change that moves a strided axis innermost (the
 * output gradient laid out in vectors of channels), read and written a vector at a time
 * (the rows transposed in registers: a perfect shuffle, four or three times) rather than
 * element by element. */
#if (defined(__clang__) || __GNUC__ >= 12) && !defined(CONVC_SCALAR)
/* name(v): rows rows of v transposed in log2(rows) rounds, each interleaving row r with
 * row r + rows/2 (lanes LO, then lanes HI, of the two): for floats, 16x16, or 8x8 within
 * each half of 16 lanes; for doubles, 8x8. */
#define CONVC_PERFECT_SHUFFLE(name, V, rows, rounds, LO, HI)                                \
    static inline void name(V *v) {                                                        \
        for (int round = 0; round < (rounds); round++) {                                   \
            V t[rows];                                                                     \
            for (int r = 0; r < (rows) / 2; r++) {                                         \
                t[2 * r] = __builtin_shufflevector(v[r], v[r + (rows) / 2], LO);           \
                t[2 * r + 1] = __builtin_shufflevector(v[r], v[r + (rows) / 2], HI);       \
            }                                                                              \
            for (int r = 0; r < (rows); r++) v[r] = t[r];                                  \
        }                                                                                  \
    }
#define CONVC_LO16 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define CONVC_HI16 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#define CONVC_LO8x2 0, 16, 1, 17, 2, 18, 3, 19, 8, 24, 9, 25, 10, 26, 11, 27
#define CONVC_HI8x2 4, 20, 5, 21, 6, 22, 7, 23, 12, 28, 13, 29, 14, 30, 15, 31
#define CONVC_LO8 0, 8, 1, 9, 2, 10, 3, 11
#define CONVC_HI8 4, 12, 5, 13, 6, 14, 7, 15
CONVC_PERFECT_SHUFFLE(convc_transpose16_f32, convc_vf32, 16, 4, CONVC_LO16, CONVC_HI16)
CONVC_PERFECT_SHUFFLE(convc_transpose8_f32, convc_vf32, 8, 3, CONVC_LO8x2, CONVC_HI8x2)
CONVC_PERFECT_SHUFFLE(convc_transpose8_f64, convc_vf64, 8, 3, CONVC_LO8, CONVC_HI8)
#undef CONVC_PERFECT_SHUFFLE
#undef CONVC_LO16
#undef CONVC_HI16
#undef CONVC_LO8x2
#undef CONVC_HI8x2
#undef CONVC_LO8
#undef CONVC_HI8
typedef float convc_vh32 __attribute__((vector_size(32)));
typedef float convc_vh32_any __attribute__((vector_size(32), aligned(4), may_alias));
/* After the transpose, row j of floats is the lower half of t[j] (j < 8), or the upper half
 * of t[j - 8]; row j of doubles is t[j]. A row of 8 goes in one store, a shorter one in
 * one masked store with AVX-512, else element by element. */
#define CONVC_ROW_f32(t, row) ((row) < 8                                                    \
    ? __builtin_shufflevector(t[(row) % 8], t[(row) % 8], 0, 1, 2, 3, 4, 5, 6, 7)             \
    : __builtin_shufflevector(t[(row) % 8], t[(row) % 8], 8, 9, 10, 11, 12, 13, 14, 15))
#define CONVC_ROW_f64(t, row) (t[row])
#if defined(__AVX512VL__) && defined(__GNUC__) && !defined(__clang__)
#define CONVC_STORE_PART_f32(q, r, n) __builtin_ia32_storeups256_mask((q), (r), (1u << (n)) - 1u)
#else
#define CONVC_STORE_PART_f32(q, r, n) for (int i = 0; i < (n); i++) (q)[i] = (r)[i]
#endif
#define CONVC_STORE_PART_f64 convc_vstore_part_f64
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define CONVC_SPREAD(v, h) __builtin_shufflevector(v, v, h, h, h + 1, h + 1, h + 2, h + 2, h + 3, \
                                                   h + 3, h + 4, h + 4, h + 5, h + 5, h + 6,   \
                                                   h + 6, h + 7, h + 7)
static inline int convc_row2_f32(float *q, const convc_vf32 *t, int row, int n, int add) {
    const convc_vf32 spread = row < 8 ? CONVC_SPREAD(t[row], 0) : CONVC_SPREAD(t[row - 8], 8);
    const unsigned short even = (unsigned short)(0x5555u & ((1u << (2 * n - 1)) - 1u));
    const convc_vf32 sum =
        add ? __builtin_ia32_loadups512_mask(q, (convc_vf32){0}, even) + spread : spread;
    __builtin_ia32_storeups512_mask(q, sum, even);
    return 1;
}
#undef CONVC_SPREAD
#else
#define convc_row2_f32(q, t, row, n, add) 0
#endif
#define convc_row2_f64(q, t, row, n, add) 0
/* convc_rows_*(p, stride, step, v, width, rows, add): the two above, stored or added. */
#define CONVC_ROWS(T, V, R, SUFFIX)                                                         \
    static inline void convc_rows_##SUFFIX(T *p, int64_t stride, int step, const V *v,      \
                                           int width, int rows, int add) {                  \
        for (int g = 0; g < width; g += 8) {                                               \
            int n = width - g < 8 ? width - g : 8;                                         \
            V t[8];                                                                        \
            for (int i = 0; i < 8; i++) t[i] = i < n ? v[g + i] : (V){0};                   \
            convc_transpose8_##SUFFIX(t);                                                  \
            for (int row = 0; row < rows; row++) {                                         \
                T *q = p + row * stride + g * step;                                        \
                if (step == 2 && convc_row2_##SUFFIX(q, t, row, n, add)) continue;         \
                const R r = CONVC_ROW_##SUFFIX(t, row);                                    \
                if (step == 1 && n == 8 && add) {                                          \
                    *(R *)q += r;                                                          \
                } else if (step == 1 && n == 8) {                                          \
                    *(R *)q = r;                                                           \
                } else if (step == 1 && !add) {                                            \
                    CONVC_STORE_PART_##SUFFIX(q, r, n);                                    \
                } else {                                                                   \
                    for (int i = 0; i < n; i++) q[i * step] = add ? q[i * step] + r[i] : r[i]; \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }
CONVC_ROWS(float, convc_vf32, convc_vh32_any, f32)
CONVC_ROWS(double, convc_vf64, convc_vf64_any, f64)
#undef CONVC_ROWS
#undef convc_row2_f32
#undef convc_row2_f64
#undef CONVC_ROW_f32
#undef CONVC_ROW_f64
#define CONVC_TRANSPOSE(T, V, A, SUFFIX, LANES, SQUARE)                                     \
    static inline void convc_transpose_##SUFFIX(T *dst, int64_t dst_stride, const T *src,   \
                                                int64_t src_stride, int rows, int cols) {   \
        V v[LANES];                                                                        \
        for (int r = 0; r < LANES; r++) {                                                  \
            if (r >= rows) v[r] = (V){0};                                                  \
            else if (cols == LANES) v[r] = convc_vload_##SUFFIX(src + r * src_stride);     \
            else v[r] = convc_vload_part_##SUFFIX(src + r * src_stride, cols);             \
        }                                                                                  \
        SQUARE(v);                                                                         \
        for (int c = 0; c < cols; c++) {                                                   \
            if (rows == LANES) {                                                           \
                *(A *)(dst + c * dst_stride) = v[c];                                       \
            } else {                                                                       \
                convc_vstore_part_##SUFFIX(dst + c * dst_stride, v[c], rows);              \
            }                                                                              \
        }                                                                                  \
    }
CONVC_TRANSPOSE(float, convc_vf32, convc_vf32_any, f32, 16, convc_transpose16_f32)
CONVC_TRANSPOSE(double, convc_vf64, convc_vf64_any, f64, 8, convc_transpose8_f64)
#undef CONVC_TRANSPOSE
#undef CONVC_STORE_PART_f32
#undef CONVC_STORE_PART_f64
#else
#define CONVC_ROWS(T, V, SUFFIX)                                                            \
    static inline void convc_rows_##SUFFIX(T *p, int64_t stride, int step, const V *v,      \
                                           int width, int rows, int add) {                  \
        for (int row = 0; row < rows; row++)                                               \
            for (int i = 0; i < width; i++) {                                              \
                T *q = p + row * stride + i * step;                                        \
                *q = add ? *q + v[i][row] : v[i][row];                                     \
            }                                                                              \
    }
CONVC_ROWS(float, convc_vf32, f32)
CONVC_ROWS(double, convc_vf64, f64)
#undef CONVC_ROWS
#define CONVC_TRANSPOSE(T, SUFFIX)                                                          \
    static inline void convc_transpose_##SUFFIX(T *dst, int64_t dst_stride, const T *src,   \
                                                int64_t src_stride, int rows, int cols) {   \
        for (int c = 0; c < cols; c++)                                                     \
            for (int r = 0; r < rows; r++) dst[c * dst_stride + r] = src[r * src_stride + c]; \
    }
CONVC_TRANSPOSE(float, f32)
CONVC_TRANSPOSE(double, f64)
#undef CONVC_TRANSPOSE
#endif
#define convc_vstore_rows_f32(p, stride, step, v, width, rows) \
    convc_rows_f32(p, stride, step, v, width, rows, 0)
#define convc_vstore_rows_f64(p, stride, step, v, width, rows) \
    convc_rows_f64(p, stride, step, v, width, rows, 0)
#define convc_vadd_rows_f32(p, stride, step, v, width, rows) \
    convc_rows_f32(p, stride, step, v, width, rows, 1)
#define convc_vadd_rows_f64(p, stride, step, v, width, rows) \
    convc_rows_f64(p, stride, step, v, width, rows, 1)

/* Batched matrix product (gemm.c): C[b] += A[b] B[b] for every b < batch (with `accumulate`
 * 0: C[b] = A[b] B[b], C need not be initialised), where element
 * (i, j) of X[b] is X[b * sx + i * rsx + j * csx] (strides in elements: row- or column-major
 * or a view; a batch stride of 0 shares the operand across the batch, and for C means the
 * products add up into one matrix). A is M x K, B is K x N, C is M x N; C must not overlap
 * A or B. The batch is shared among at most `threads` threads (OpenMP), or the K of one
 * deep product (gemm.c). Returns CONVC_OK, CONVC_ERR_NOMEM, or CONVC_ERR_SIZE for a negative
 * size. */
int convc_gemm_f32(int threads, int accumulate, int64_t batch, int64_t M, int64_t N, int64_t K,
                   const float *A, int64_t sa, int64_t rsa, int64_t csa,
                   const float *B, int64_t sb, int64_t rsb, int64_t csb,
                   float *C, int64_t sc, int64_t rsc, int64_t csc);
int convc_gemm_f64(int threads, int accumulate, int64_t batch, int64_t M, int64_t N, int64_t K,
                   const double *A, int64_t sa, int64_t rsa, int64_t csa,
                   const double *B, int64_t sb, int64_t rsb, int64_t csb,
                   double *C, int64_t sc, int64_t rsc, int64_t csc);

/* Real FFTs (fft.c), for FFT convolution (section 9.8).
 *
 * convc_fft_size(n): the smallest 2^a 3^b 5^c >= n (1 for n <= 1; 0 if none fits a size_t).
 *
 * convc_rfft_<type>(threads, rank, dims, count, in_dims, in, out, scratch): `count` forward
 * transforms of real arrays of rank 1, 2 or 3 (dims, row-major), each a product of 2, 3 and 5.
 * Input i is the array of in_dims (in_dims[a] <= dims[a]; NULL for dims) at in + i *
 * prod(in_dims), zero-padded after its end on every axis up to dims. Output i is the half
 * spectrum X[k0][k1][k2] = sum x[j] exp(-2 pi i (j0 k0 / n0 + j1 k1 / n1 + j2 k2 / n2)) of
 * shape dims[0 .. rank-2] x (dims[rank-1] / 2 + 1), complex numbers stored (re, im),
 * row-major, at out + i * 2 * prod(that shape): numpy.fft.rfftn(x, s=dims).
 *
 * convc_irfft_<type>(threads, rank, dims, count, in, out_lo, out_dims, out, scratch): the
 * inverse, numpy.fft.irfftn(X, s=dims) (the other axes first, then the last, whose X[0] and,
 * for an even length, X[n/2] are taken as real), scaled by 1 / prod(dims), so that
 * irfft(rfft(x)) == x. Input i is a half spectrum as above (left unchanged); output i is the
 * window [out_lo[a], out_lo[a] + out_dims[a]) of the result on every axis (NULL: from 0; NULL:
 * dims), contiguous, at out + i * prod(out_dims).
 *
 * scratch: at least convc_rfft_scratch_<type>(threads, rank, dims) bytes for the same (or a
 * larger) `threads` and the same rank and dims, any alignment, one size for both directions
 * and any count; nothing is allocated. Calls may run at once on separate
 * scratch. `threads` (OpenMP) share the `count` arrays, or each array's passes when count <
 * threads. Returns CONVC_OK, or CONVC_ERR_SIZE (nothing written) for a rank outside 1..3, a
 * size of 0 or with a prime factor above 5, in_dims above dims or a window outside dims
 * (convc_rfft_scratch_<type> then returns 0). in and out must not overlap. */
size_t convc_fft_size(size_t n);
size_t convc_rfft_scratch_f32(int threads, int rank, const size_t *dims);
size_t convc_rfft_scratch_f64(int threads, int rank, const size_t *dims);
int convc_rfft_f32(int threads, int rank, const size_t *dims, size_t count,
                   const size_t *in_dims, const float *in, float *out, void *scratch);
int convc_rfft_f64(int threads, int rank, const size_t *dims, size_t count,
                   const size_t *in_dims, const double *in, double *out, void *scratch);
int convc_irfft_f32(int threads, int rank, const size_t *dims, size_t count, const float *in,
                    const size_t *out_lo, const size_t *out_dims, float *out, void *scratch);
int convc_irfft_f64(int threads, int rank, const size_t *dims, size_t count, const double *in,
                    const size_t *out_lo, const size_t *out_dims, double *out, void *scratch);

/* Products of spectra (spectra.c): C[b][m][n] = sum_k A[b][m][k] * B[b][k][n], or times
 * conj(B[b][k][n]) when `conj`, frequency by frequency, where every element is a row of
 * `count` complex numbers, (re, im) interleaved; element (b, m, k) of A starts at
 * A + b * sa + m * rsa + k * csa (strides in reals), and likewise B and C. C is assigned and
 * must not overlap A or B. Threads share (batch, frequency tile) pairs. Returns CONVC_OK, or
 * CONVC_ERR_SIZE for a negative size. */
int convc_spectra_f32(int threads, int conj, int64_t batch, int64_t M, int64_t N, int64_t K,
                      int64_t count, const float *A, int64_t sa, int64_t rsa, int64_t csa,
                      const float *B, int64_t sb, int64_t rsb, int64_t csb,
                      float *C, int64_t sc, int64_t rsc, int64_t csc);
int convc_spectra_f64(int threads, int conj, int64_t batch, int64_t M, int64_t N, int64_t K,
                      int64_t count, const double *A, int64_t sa, int64_t rsa, int64_t csa,
                      const double *B, int64_t sb, int64_t rsb, int64_t csb,
                      double *C, int64_t sc, int64_t rsc, int64_t csc);

/* Optimizer steps (optim.c), in place on n contiguous elements of arrays that do not
 * overlap: see convc.train.Adam. */
void convc_adam_f32(int64_t n, float *restrict p, const float *restrict g, float *restrict m,
                    float *restrict v, double lr, double b1, double b2, double eps,
                    double decay, double c1, double c2);
void convc_adam_f64(int64_t n, double *restrict p, const double *restrict g,
                    double *restrict m, double *restrict v, double lr, double b1, double b2,
                    double eps, double decay, double c1, double c2);

#endif /* CONVC_RUNTIME_H */
