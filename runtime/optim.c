/* Optimizer steps on flat parameter arrays, in place (convc.train). */

#include <math.h>

#include "convc_runtime.h"

/* One step of Adam (Kingma and Ba) on n parameters: with d = g + decay·p,
 *   m = b1·m + (1 - b1)·d,   v = b2·v + (1 - b2)·d²,   p -= lr·(m / c1) / (sqrt(v / c2) + eps)
 * where c1 = 1 - b1^t and c2 = 1 - b2^t correct the moments' bias after t steps; every
 * operation in the arrays' precision. */
#define CONVC_ADAM(T, SUFFIX, SQRT)                                                          \
    void convc_adam_##SUFFIX(int64_t n, T *restrict p, const T *restrict g, T *restrict m,  \
                             T *restrict v, double lr, double b1, double b2, double eps,    \
                             double decay, double c1, double c2)                            \
    {                                                                                        \
        const T l = (T)lr, a = (T)b1, b = (T)b2, e = (T)eps, w = (T)decay;                  \
        const T ia = (T)(1 - b1), ib = (T)(1 - b2), k1 = (T)c1, k2 = (T)c2;                  \
        for (int64_t i = 0; i < n; ++i) {                                                    \
            T d = decay != 0 ? g[i] + w * p[i] : g[i];                                       \
            m[i] = m[i] * a + ia * d;                                                        \
            v[i] = v[i] * b + ib * d * d;                                                    \
            p[i] -= l * (m[i] / k1) / (SQRT(v[i] / k2) + e);                                 \
        }                                                                                    \
    }
CONVC_ADAM(float, f32, sqrtf)
CONVC_ADAM(double, f64, sqrt)
#undef CONVC_ADAM
