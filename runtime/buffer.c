/* convc runtime: aligned scratch buffers for intermediate tensors, and a clock. */

/* posix_memalign and clock_gettime are POSIX, not C99: ask for it before any system header. */
#define _POSIX_C_SOURCE 200112L

#include <stdlib.h>
#include <time.h>

#include "convc_runtime.h"

void *convc_alloc(size_t bytes) {
    size_t rounded = (bytes + CONVC_ALIGNMENT - 1) / CONVC_ALIGNMENT * CONVC_ALIGNMENT;
    void *p = NULL;
    if (posix_memalign(&p, CONVC_ALIGNMENT, rounded ? rounded : CONVC_ALIGNMENT) != 0) return NULL;
    return p;
}

void convc_free(void *p) { free(p); }

double convc_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
