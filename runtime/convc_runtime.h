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

/* Aligned scratch buffers (64 bytes: one cache line, one 512-bit vector). */
#define CONVC_ALIGNMENT 64
void *convc_alloc(size_t bytes);
void convc_free(void *p);

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

/* Float max/min that propagate NaN from either argument (C's fmax drops it). */
static inline float convc_fmaxf(float a, float b) { return (a > b || a != a) ? a : b; }
static inline float convc_fminf(float a, float b) { return (a < b || a != a) ? a : b; }
static inline double convc_fmax(double a, double b) { return (a > b || a != a) ? a : b; }
static inline double convc_fmin(double a, double b) { return (a < b || a != a) ? a : b; }

#endif /* CONVC_RUNTIME_H */
