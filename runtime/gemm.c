/* convc runtime: the matrix product C[b] += A[b] B[b] (or C[b] = A[b] B[b]) over a batch, for
 * any strides, no BLAS.
 *
 * The BLIS scheme. B is copied ("packed") one KC x NC block at a time into panels NR columns
 * wide, A one MC x KC block at a time into panels MR rows tall, both zero-padded to whole
 * panels, so that the micro-kernel reads each operand contiguously and keeps an MR x NR tile
 * of C in registers for the whole KC loop. The A micro-panel (MR x KC) stays in L1 while the
 * B micro-panels of the block stream past it from L2; meanwhile the kernel prefetches what
 * the next block of B will be packed from. An operand that the whole batch shares (batch
 * stride 0, one weight matrix for many images) is packed once; B is read in place when A is
 * too short to repay packing it. Edge tiles of at most half the rows or columns use a kernel
 * of that size.
 *
 * The micro-kernel is written with GCC vector extensions, not intrinsics, so it compiles
 * for any GCC or Clang target: NR is two vectors, MR is chosen to fill the vector registers.
 * On x86-64 it is compiled for AVX-512, AVX2 and SSE2 and picked by the CPU at run time,
 * unless the flags already enable AVX-512 (-march=native on such a machine): then that
 * variant alone.
 *
 * The file is its own template: the part under CONVC_GEMM_TEMPLATE is included once per
 * element type and variant, with T, TNAME, VBYTES, MR, TARGET and SUFFIX defined.
 */
#ifndef CONVC_GEMM_TEMPLATE

#include <string.h>

#include "convc_runtime.h"

/* Let `acc += a * b` become a fused multiply-add: ISO modes (-std=c99) turn contraction off
 * in GCC, which halves the speed of the kernel. Only the rounding of each sum changes. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* Blocking, in elements: at most KC rows of the packed panels (K is cut into equal blocks),
 * MC rows of A and NC columns of B per block (MC and NC are rounded to whole panels). An
 * operand shared by the batch (batch stride 0) is packed once whole if it is at most
 * SHARE_BYTES. B with contiguous rows is read in place, unpacked, when A has at most
 * DIRECT_ROWS rows: packing would not pay for itself over so few row panels. Packing
 * buffers of at most STACK_BYTES live on the stack. */
#define CONVC_GEMM_KC 256
#define CONVC_GEMM_MC 144
#define CONVC_GEMM_NC 1024
#define CONVC_GEMM_SHARE_BYTES ((int64_t)1 << 23)
#define CONVC_GEMM_STACK_BYTES 16384
#define CONVC_GEMM_DIRECT_ROWS 32

#define CONVC_GEMM_CAT2(a, b) a##_##b
#define CONVC_GEMM_CAT(a, b) CONVC_GEMM_CAT2(a, b)

static int64_t convc_gemm_round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* Memory to prefetch during one kernel call: `runs` runs of `bytes`, `stride` bytes apart.
 * The driver hands each call a share of the rows (or columns) of B that the next block will
 * pack, so that reading B from DRAM overlaps the arithmetic instead of stalling the packing. */
struct convc_gemm_ahead {
    const char *p;
    int64_t bytes, stride, runs;
};

/* Prefetches the next line of `ahead` (for reading, into L2), if any is left. */
static inline void convc_gemm_prefetch_next(struct convc_gemm_ahead *ahead, int64_t *offset) {
    if (ahead->runs <= 0) return;
    __builtin_prefetch(ahead->p + *offset, 0, 2);
    *offset += 64;
    if (*offset >= ahead->bytes) {
        *offset = 0;
        if (--ahead->runs > 0) ahead->p += ahead->stride;
    }
}

/* The variants. MR x NR tiles: AVX-512 (32 registers) 8 x 2 vectors, AVX2 (16) 6 x 2,
 * SSE2 and other targets 4 x 2 vectors of 16 bytes; the "scalar" target of convc/build.py
 * (CONVC_SCALAR) 4 x 2 vectors of one element, that is no vectors at all. */
#if defined(__x86_64__) && !defined(CONVC_SCALAR)
#define CONVC_GEMM_X86 1
#else
#define CONVC_GEMM_X86 0
#endif
#ifdef CONVC_SCALAR
#define CONVC_GEMM_BASE_BYTES ((int)sizeof(T))
#else
#define CONVC_GEMM_BASE_BYTES 16
#endif

#define CONVC_GEMM_TEMPLATE
#if CONVC_GEMM_X86
#define VBYTES 64 /* AVX-512 */
#define MR 8
#define TARGET __attribute__((target("avx512f,fma")))
#define SUFFIX avx512
#define T float
#define TNAME f32
#include "gemm.c"
#define T double
#define TNAME f64
#include "gemm.c"
#undef VBYTES
#undef MR
#undef TARGET
#undef SUFFIX
#if !defined(__AVX512F__)
#define VBYTES 32 /* AVX2 with FMA */
#define MR 6
#define TARGET __attribute__((target("avx2,fma")))
#define SUFFIX avx2
#define T float
#define TNAME f32
#include "gemm.c"
#define T double
#define TNAME f64
#include "gemm.c"
#undef VBYTES
#undef MR
#undef TARGET
#undef SUFFIX
#endif
#endif
#if !CONVC_GEMM_X86 || !defined(__AVX2__) || !defined(__FMA__)
#define VBYTES CONVC_GEMM_BASE_BYTES /* SSE2 on x86-64, NEON and the like elsewhere */
#define MR 4
#define TARGET
#define SUFFIX base
#define T float
#define TNAME f32
#include "gemm.c"
#define T double
#define TNAME f64
#include "gemm.c"
#undef VBYTES
#undef MR
#undef TARGET
#undef SUFFIX
#endif
#undef CONVC_GEMM_TEMPLATE

/* The body of convc_gemm_<type>: the best variant the CPU runs. CONVC_GEMM_VARIANT fixes one
 * at build time instead (avx512, avx2 or base, when it is compiled in), as the tests do. */
#if defined(CONVC_GEMM_VARIANT)
#define CONVC_GEMM_DISPATCH(type, args) return CONVC_GEMM_CAT(gemm_##type, CONVC_GEMM_VARIANT) args
#elif CONVC_GEMM_X86 && defined(__AVX512F__)
#define CONVC_GEMM_DISPATCH(type, args) return gemm_##type##_avx512 args
#elif CONVC_GEMM_X86 && defined(__AVX2__) && defined(__FMA__)
#define CONVC_GEMM_DISPATCH(type, args)                                                      \
    if (__builtin_cpu_supports("avx512f")) return gemm_##type##_avx512 args;                \
    return gemm_##type##_avx2 args
#elif CONVC_GEMM_X86
#define CONVC_GEMM_DISPATCH(type, args)                                                      \
    if (__builtin_cpu_supports("avx512f")) return gemm_##type##_avx512 args;                \
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))                    \
        return gemm_##type##_avx2 args;                                                      \
    return gemm_##type##_base args
#else
#define CONVC_GEMM_DISPATCH(type, args) return gemm_##type##_base args
#endif

static int gemm_serial_f32(int accumulate, int64_t batch, int64_t M, int64_t N, int64_t K,
                           const float *A, int64_t sa, int64_t rsa, int64_t csa,
                           const float *B, int64_t sb, int64_t rsb, int64_t csb,
                           float *C, int64_t sc, int64_t rsc, int64_t csc) {
    CONVC_GEMM_DISPATCH(f32, (accumulate, batch, M, N, K, A, sa, rsa, csa, B, sb, rsb, csb, C,
                              sc, rsc, csc));
}

static int gemm_serial_f64(int accumulate, int64_t batch, int64_t M, int64_t N, int64_t K,
                           const double *A, int64_t sa, int64_t rsa, int64_t csa,
                           const double *B, int64_t sb, int64_t rsb, int64_t csb,
                           double *C, int64_t sc, int64_t rsc, int64_t csc) {
    CONVC_GEMM_DISPATCH(f64, (accumulate, batch, M, N, K, A, sa, rsa, csa, B, sb, rsb, csb, C,
                              sc, rsc, csc));
}

/* The batch split over `threads` OpenMP threads, each taking a contiguous share; or, for one
 * deep product (a batch of 1 whose K is at least CONVC_GEMM_DEEP times M and N, and two
 * blocks per thread: a kernel gradient's sum over images and points), its K. When C is shared
 * by the batch (sc == 0: the products add up, as the kernel gradient sums over images) or K
 * is split, every thread but the first adds into a zeroed copy of its own, and the copies
 * are added to C in thread order at the end: no atomics, and for a given thread count the
 * same sums in the same order on every run. */
#define CONVC_GEMM_DEEP 4
#define CONVC_GEMM_THREADED(T, TNAME)                                                        \
    int convc_gemm_##TNAME(int threads, int accumulate, int64_t batch, int64_t M, int64_t N, \
                           int64_t K, const T *A, int64_t sa, int64_t rsa, int64_t csa,     \
                           const T *B, int64_t sb, int64_t rsb, int64_t csb, T *C,          \
                           int64_t sc, int64_t rsc, int64_t csc) {                           \
        const int deep = batch == 1 && K >= CONVC_GEMM_DEEP * M &&                           \
                         K >= CONVC_GEMM_DEEP * N && K >= 2 * threads * CONVC_GEMM_KC;        \
        const int64_t shares = deep ? K : batch, teams = convc_min(threads, shares);         \
        if (!CONVC_GEMM_OPENMP || teams <= 1 || M <= 0 || N <= 0 || K <= 0)                  \
            return gemm_serial_##TNAME(accumulate, batch, M, N, K, A, sa, rsa, csa, B, sb,  \
                                       rsb, csb, C, sc, rsc, csc);                           \
        T *partial = NULL;                                                                   \
        if (sc == 0 || deep) {                                                               \
            partial = convc_alloc(sizeof(T) * (size_t)((teams - 1) * M * N));                \
            if (!partial) return CONVC_ERR_NOMEM;                                            \
            memset(partial, 0, sizeof(T) * (size_t)((teams - 1) * M * N));                   \
        }                                                                                    \
        int status = CONVC_OK;                                                               \
        CONVC_GEMM_PARALLEL_FOR(teams)                                                       \
        for (int64_t t = 0; t < teams; t++) {                                                \
            int64_t first = shares * t / teams, last = shares * (t + 1) / teams;             \
            T *Ct = partial && t > 0 ? partial + (t - 1) * M * N : C + (deep ? 0 : first * sc); \
            int64_t r = partial && t > 0 ? N : rsc, c = partial && t > 0 ? 1 : csc;          \
            int code = deep                                                                  \
                ? gemm_serial_##TNAME(accumulate || t > 0, 1, M, N, last - first,            \
                                      A + first * csa, sa, rsa, csa, B + first * rsb, sb,    \
                                      rsb, csb, Ct, sc, r, c)                                \
                : gemm_serial_##TNAME(accumulate || Ct != C + first * sc, last - first, M,   \
                                      N, K, A + first * sa, sa, rsa, csa, B + first * sb,    \
                                      sb, rsb, csb, Ct, sc, r, c);                           \
            if (code != CONVC_OK) status = code; /* any failure will do */                   \
        }                                                                                    \
        for (int64_t t = 1; partial && t < teams; t++)                                       \
            for (int64_t i = 0; i < M; i++)                                                  \
                for (int64_t j = 0; j < N; j++)                                              \
                    C[i * rsc + j * csc] += partial[((t - 1) * M + i) * N + j];              \
        convc_free(partial);                                                                 \
        return status;                                                                       \
    }

#ifdef _OPENMP
#define CONVC_GEMM_OPENMP 1
#define CONVC_GEMM_PRAGMA(x) _Pragma(#x)
#define CONVC_GEMM_PARALLEL_FOR(n) CONVC_GEMM_PRAGMA(omp parallel for num_threads(n))
#else
#define CONVC_GEMM_OPENMP 0
#define CONVC_GEMM_PARALLEL_FOR(n)
#endif

CONVC_GEMM_THREADED(float, f32)
CONVC_GEMM_THREADED(double, f64)

#else /* CONVC_GEMM_TEMPLATE */
/* Defined by the includer: T (float or double) and TNAME (f32 or f64), VBYTES (bytes per
 * vector), MR (rows per tile), TARGET (the function attribute of the variant) and SUFFIX (its
 * name). T and TNAME are undefined at the end. */

#define FN(name) CONVC_GEMM_CAT(CONVC_GEMM_CAT(name, TNAME), SUFFIX)
#define VL (VBYTES / (int)sizeof(T))                   /* elements per vector */
#define NR (2 * VL)                                    /* columns per tile */
#define KC CONVC_GEMM_KC
#define MC (CONVC_GEMM_MC / MR * MR)
#define NC (CONVC_GEMM_NC / NR * NR)
#define V FN(vector)

typedef T V __attribute__((vector_size(VBYTES)));

/* C (m x n of an MR x NR tile, rows rsc and columns csc apart) += a * b (= a * b when
 * `store`), where a is an A micro-panel (a[k * MR + i] = A(i, k)) and b a B micro-panel
 * (b[k * ldb + j] = B(k, j): packed, ldb = NR, or B itself where its rows are contiguous).
 * Only the first `rows` rows and `vecs` vectors of columns are computed (m <= rows and
 * n <= vecs * VL): the callers below fix them, so that an edge tile of at most half the rows
 * or columns costs half. The tile is summed in registers; vectors move through memcpy, which
 * has no alignment or aliasing requirement and compiles to one vector load or store.
 * `ahead` is prefetched on the way, a line per step of k. */
static inline __attribute__((always_inline)) TARGET void FN(kernel_body)(
    int64_t kc, const T *a, const T *b, int64_t ldb, T *c, int64_t rsc, int64_t csc, int64_t m,
    int64_t n, struct convc_gemm_ahead ahead, int store, const int rows, const int vecs) {
    V acc[MR][2];
    for (int i = 0; i < rows; i++) acc[i][0] = acc[i][1] = (V){0};
    for (int64_t i = 0; i < m; i++) { /* C is read at the end: ask for it now */
        __builtin_prefetch(c + i * rsc, 1);
        __builtin_prefetch(c + i * rsc + (n - 1) * csc, 1);
    }
    int64_t offset = 0;
    for (int64_t k = 0; k < kc; k++, a += MR, b += ldb) {
        V b0, b1 = {0};
        memcpy(&b0, b, sizeof b0);
        if (vecs == 2) memcpy(&b1, b + VL, sizeof b1);
        convc_gemm_prefetch_next(&ahead, &offset);
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++) {
            acc[i][0] += a[i] * b0;
            if (vecs == 2) acc[i][1] += a[i] * b1;
        }
    }
    while (ahead.runs > 0) convc_gemm_prefetch_next(&ahead, &offset);

    if (n == vecs * VL && csc == 1) { /* whole rows of unit stride: add vectors */
        for (int i = 0; i < rows && i < m; i++) {
            for (int v = 0; v < vecs; v++) {
                V cv = acc[i][v];
                if (!store) {
                    V old;
                    memcpy(&old, c + i * rsc + v * VL, sizeof old);
                    cv += old;
                }
                memcpy(c + i * rsc + v * VL, &cv, sizeof cv);
            }
        }
        return;
    }
    T tile[MR][NR]; /* an edge or a strided C: through memory, then the valid part */
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < vecs; v++) memcpy(&tile[i][v * VL], &acc[i][v], sizeof(V));
    for (int64_t i = 0; i < m && i < rows; i++)
        for (int64_t j = 0; j < n && j < vecs * VL; j++)
            c[i * rsc + j * csc] = tile[i][j] + (store ? 0 : c[i * rsc + j * csc]);
}

#define CONVC_GEMM_KERNEL(name, rows, vecs)                                                  \
    static TARGET void name(int64_t kc, const T *a, const T *b, int64_t ldb, T *c,          \
                            int64_t rsc, int64_t csc, int64_t m, int64_t n,                  \
                            struct convc_gemm_ahead ahead, int store) {                      \
        FN(kernel_body)(kc, a, b, ldb, c, rsc, csc, m, n, ahead, store, rows, vecs);          \
    }
CONVC_GEMM_KERNEL(FN(kernel), MR, 2)
CONVC_GEMM_KERNEL(FN(kernel_half_rows), MR / 2, 2)
CONVC_GEMM_KERNEL(FN(kernel_one_vector), MR, 1)
CONVC_GEMM_KERNEL(FN(kernel_quarter), MR / 2, 1)
#undef CONVC_GEMM_KERNEL

/* The kernel for an m x n tile: the smallest that covers it. */
typedef void (*FN(kernel_fn))(int64_t, const T *, const T *, int64_t, T *, int64_t, int64_t,
                              int64_t, int64_t, struct convc_gemm_ahead, int);
static TARGET FN(kernel_fn) FN(pick_kernel)(int64_t m, int64_t n) {
    if (n <= VL) return m <= MR / 2 ? FN(kernel_quarter) : FN(kernel_one_vector);
    return m <= MR / 2 ? FN(kernel_half_rows) : FN(kernel);
}

/* dst[k * width + i] = src[i * stride + k] for i < width and k < kc: rows of contiguous
 * elements laid out as a panel (of A's rows when they are A's contiguous axis, of B's
 * columns when they are B's), in tiles transposed in registers by the runtime's
 * `convc_transpose_*` where the variant's vectors are its 64 bytes (AVX-512), rather than
 * element by element. */
#define TRANSPOSED (VBYTES == 64 && VL > 1)
__attribute__((unused)) static TARGET void FN(transposed)(T *dst, int width, const T *src,
                                                          int64_t stride, int rows, int64_t kc) {
    const int lanes = 64 / (int)sizeof(T);
    for (int i = 0; i < rows; i += lanes)
        for (int64_t k = 0; k < kc; k += lanes)
            CONVC_GEMM_CAT(convc_transpose, TNAME)(
                dst + k * width + i, width, src + i * stride + k, stride,
                convc_min(lanes, rows - i), (int)convc_min(lanes, kc - k));
}

/* Rows [0, mc) and columns [0, kc) of A into panels of MR rows, the last one zero-padded:
 * panel p (from row p) holds dst[p * kc + k * MR + i] = A(p + i, k). Whichever stride of A
 * is 1 is the one read in order. */
static TARGET void FN(pack_a)(int64_t mc, int64_t kc, const T *A, int64_t rsa, int64_t csa,
                              T *dst) {
    const int64_t full = mc / MR * MR; /* rows in whole panels */
    if (rsa == 1) {
        for (int64_t k = 0; k < kc; k++)
            for (int64_t p = 0; p < full; p += MR)
                memcpy(dst + p * kc + k * MR, A + k * csa + p, MR * sizeof(T));
    } else if (csa == 1 && TRANSPOSED) {
        for (int64_t p = 0; p < full; p += MR)
            FN(transposed)(dst + p * kc, MR, A + p * rsa, rsa, MR, kc);
    } else {
        for (int64_t p = 0; p < full; p += MR)
            for (int64_t k = 0; k < kc; k++)
                for (int i = 0; i < MR; i++) dst[p * kc + k * MR + i] = A[(p + i) * rsa + k * csa];
    }
    if (full < mc) {
        const int64_t m = mc - full;
        T *d = dst + full * kc;
        memset(d, 0, (size_t)(MR * kc) * sizeof(T));
        for (int64_t i = 0; i < m; i++)
            for (int64_t k = 0; k < kc; k++) d[k * MR + i] = A[(full + i) * rsa + k * csa];
    }
}

/* Rows [0, kc) and columns [0, nc) of B into panels of NR columns, the last one zero-padded:
 * panel p (from column p) holds dst[p * kc + k * NR + j] = B(k, p + j). */
static TARGET void FN(pack_b)(int64_t kc, int64_t nc, const T *B, int64_t rsb, int64_t csb,
                              T *dst) {
    const int64_t full = nc / NR * NR; /* columns in whole panels */
    if (csb == 1) {
        for (int64_t k = 0; k < kc; k++)
            for (int64_t p = 0; p < full; p += NR)
                memcpy(dst + p * kc + k * NR, B + k * rsb + p, NR * sizeof(T));
    } else if (rsb == 1 && TRANSPOSED) {
        for (int64_t p = 0; p < full; p += NR)
            FN(transposed)(dst + p * kc, NR, B + p * csb, csb, NR, kc);
    } else if (rsb == 1) {
        for (int64_t p = 0; p < full; p += NR)
            for (int j = 0; j < NR; j++)
                for (int64_t k = 0; k < kc; k++) dst[p * kc + k * NR + j] = B[(p + j) * csb + k];
    } else {
        for (int64_t p = 0; p < full; p += NR)
            for (int64_t k = 0; k < kc; k++)
                for (int j = 0; j < NR; j++) dst[p * kc + k * NR + j] = B[k * rsb + (p + j) * csb];
    }
    if (full < nc) {
        const int64_t n = nc - full;
        T *d = dst + full * kc;
        memset(d, 0, (size_t)(NR * kc) * sizeof(T));
        if (csb == 1) {
            for (int64_t k = 0; k < kc; k++)
                for (int64_t j = 0; j < n; j++) d[k * NR + j] = B[k * rsb + full + j];
        } else {
            for (int64_t j = 0; j < n; j++)
                for (int64_t k = 0; k < kc; k++) d[k * NR + j] = B[k * rsb + (full + j) * csb];
        }
    }
}

/* What the block of B after (b, jc, pc) will be packed from, when it is read from memory:
 * its rows (or columns) where they are contiguous, nothing otherwise. */
static struct convc_gemm_ahead FN(next_block)(int64_t b, int64_t jc, int64_t pc, int64_t kstep,
                                              int64_t batch, int64_t N, int64_t K, const T *B,
                                              int64_t sb, int64_t rsb, int64_t csb) {
    struct convc_gemm_ahead none = {NULL, 0, 0, 0};
    if ((pc += kstep) >= K) {
        pc = 0;
        if ((jc += NC) >= N) {
            jc = 0;
            if (++b >= batch) return none;
        }
    }
    const int64_t kc = convc_min(kstep, K - pc), nc = convc_min(NC, N - jc);
    const char *p = (const char *)(B + b * sb + pc * rsb + jc * csb);
    const int64_t size = (int64_t)sizeof(T);
    if (csb == 1) return (struct convc_gemm_ahead){p, nc * size, rsb * size, kc};
    if (rsb == 1) return (struct convc_gemm_ahead){p, kc * size, csb * size, nc};
    return none;
}

/* The whole product for one variant; see convc_gemm_f32 in convc_runtime.h. (Unused where
 * CONVC_GEMM_VARIANT picks another.) Without `accumulate`, the first block of K of each C
 * (the first product of the batch where C is shared) stores instead of adding. */
__attribute__((unused)) static TARGET int FN(gemm)(
    int accumulate, int64_t batch, int64_t M, int64_t N, int64_t K, const T *A, int64_t sa,
    int64_t rsa, int64_t csa, const T *B, int64_t sb, int64_t rsb, int64_t csb, T *C,
    int64_t sc, int64_t rsc, int64_t csc) {
    if (batch < 0 || M < 0 || N < 0 || K < 0) return CONVC_ERR_SIZE;
    if (batch == 0 || M == 0 || N == 0) return CONVC_OK;
    if (K == 0) { /* an empty sum: C is left, or set to zero */
        for (int64_t b = 0; !accumulate && b < (sc == 0 ? 1 : batch); b++)
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) C[b * sc + i * rsc + j * csc] = 0;
        return CONVC_OK;
    }

    /* A (or B) shared by the whole batch is packed once, all of it, in the order the loops
     * below read it: block pc of A at pc * mp, block (jc, pc) of B at jc * K + pc * ncp. */
    const int64_t mp = convc_gemm_round_up(M, MR), np = convc_gemm_round_up(N, NR);
    const int64_t share_max = CONVC_GEMM_SHARE_BYTES / (int64_t)sizeof(T);
    const int share_a = sa == 0 && batch > 1 && K <= share_max / mp;
    const int share_b = sb == 0 && batch > 1 && K <= share_max / np;
    /* B read in place: only a last, partial panel of each block is packed. */
    const int direct_b = !share_b && csb == 1 && mp <= CONVC_GEMM_DIRECT_ROWS;
    const int64_t kblocks = (K + KC - 1) / KC, kcmax = (K + kblocks - 1) / kblocks; /* even */
    const int64_t a_size = convc_gemm_round_up(share_a ? mp * K : convc_min(mp, MC) * kcmax,
                                               CONVC_ALIGNMENT / (int64_t)sizeof(T));
    const int64_t b_size = share_b ? np * K : (direct_b ? NR : convc_min(np, NC)) * kcmax;
    const size_t bytes = (size_t)(a_size + b_size) * sizeof(T);

    T stack[CONVC_GEMM_STACK_BYTES / sizeof(T)] __attribute__((aligned(CONVC_ALIGNMENT)));
    T *heap = bytes > sizeof stack ? convc_alloc(bytes) : NULL;
    if (bytes > sizeof stack && heap == NULL) return CONVC_ERR_NOMEM;
    T *pa = heap ? heap : stack, *pb = pa + a_size;

    if (share_a)
        for (int64_t pc = 0; pc < K; pc += kcmax)
            FN(pack_a)(M, convc_min(kcmax, K - pc), A + pc * csa, rsa, csa, pa + pc * mp);
    if (share_b)
        for (int64_t jc = 0; jc < N; jc += NC)
            for (int64_t pc = 0; pc < K; pc += kcmax) {
                int64_t nc = convc_min(NC, N - jc);
                FN(pack_b)(convc_min(kcmax, K - pc), nc, B + pc * rsb + jc * csb, rsb, csb,
                           pb + jc * K + pc * convc_gemm_round_up(nc, NR));
            }

    for (int64_t b = 0; b < batch; b++) {
        const T *Ab = A + b * sa, *Bb = B + b * sb;
        T *Cb = C + b * sc;
        for (int64_t jc = 0; jc < N; jc += NC) {
            const int64_t nc = convc_min(NC, N - jc), full = nc / NR * NR;
            const int64_t njr = (nc + NR - 1) / NR, calls = mp / MR * njr;
            for (int64_t pc = 0; pc < K; pc += kcmax) {
                const int64_t kc = convc_min(kcmax, K - pc);
                const T *bsrc = Bb + pc * rsb + jc * csb, *bpacked = pb;
                const int store = !accumulate && pc == 0 && (sc != 0 || b == 0);
                struct convc_gemm_ahead next = {NULL, 0, 0, 0};
                if (share_b) {
                    bpacked = pb + jc * K + pc * convc_gemm_round_up(nc, NR);
                } else {
                    next = FN(next_block)(b, jc, pc, kcmax, batch, N, K, B, sb, rsb, csb);
                    if (!direct_b) /* all panels */
                        FN(pack_b)(kc, nc, bsrc, rsb, csb, pb);
                    else if (full < nc) /* the partial one only */
                        FN(pack_b)(kc, nc - full, bsrc + full, rsb, csb, pb);
                }
                for (int64_t ic = 0; ic < M; ic += MC) {
                    const int64_t mc = convc_min(MC, M - ic);
                    const T *ablock = pa + pc * mp + ic * kc;
                    if (!share_a) {
                        ablock = pa;
                        FN(pack_a)(mc, kc, Ab + ic * rsa + pc * csa, rsa, csa, pa);
                    }
                    /* One A micro-panel stays in L1 while the B panels stream past it;
                     * call number `call` of the block prefetches its share of the next. */
                    for (int64_t ir = 0; ir < mc; ir += MR)
                        for (int64_t jr = 0; jr < nc; jr += NR) {
                            int64_t call = (ic + ir) / MR * njr + jr / NR;
                            int64_t first = call * next.runs / calls;
                            struct convc_gemm_ahead mine = next;
                            mine.runs = (call + 1) * next.runs / calls - first;
                            if (mine.runs > 0) mine.p += first * next.stride;
                            const T *panel = !direct_b ? bpacked + jr * kc
                                             : jr < full ? bsrc + jr
                                                         : pb;
                            int64_t ldb = direct_b && jr < full ? rsb : NR;
                            int64_t m = convc_min(MR, mc - ir), n = convc_min(NR, nc - jr);
                            FN(pick_kernel)(m, n)(kc, ablock + ir * kc, panel, ldb,
                                                  Cb + (ic + ir) * rsc + (jc + jr) * csc, rsc,
                                                  csc, m, n, mine, store);
                        }
                }
            }
        }
    }
    convc_free(heap);
    return CONVC_OK;
}

#undef FN
#undef VL
#undef TRANSPOSED
#undef NR
#undef KC
#undef MC
#undef NC
#undef V
#undef T
#undef TNAME
#endif /* CONVC_GEMM_TEMPLATE */
