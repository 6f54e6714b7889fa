/* convc runtime: aligned scratch buffers for intermediate tensors. */
#include <stdlib.h>

#include "convc_runtime.h"

void *convc_alloc(size_t bytes) {
    size_t rounded = (bytes + CONVC_ALIGNMENT - 1) / CONVC_ALIGNMENT * CONVC_ALIGNMENT;
    void *p = NULL;
    if (posix_memalign(&p, CONVC_ALIGNMENT, rounded ? rounded : CONVC_ALIGNMENT) != 0) return NULL;
    return p;
}

void convc_free(void *p) { free(p); }
