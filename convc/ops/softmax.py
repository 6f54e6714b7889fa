"""Softmax over the channel axis, and the softmax cross-entropy loss on integer labels.

Both subtract the per-row maximum before ``exp`` so no value overflows::

    M[n, d] = max_c X[n, c, d]            S[n, d] = Σ_c exp(X[n, c, d] - M[n, d])
    Z[n, c, d] = exp(X[n, c, d] - M[n, d]) / S[n, d]

The loss picks the labelled logit by a comparison (so every index stays affine, and a
masked logit of -∞ elsewhere in the row is never multiplied by 0)::

    L = (1/N) Σ_n (M[n] + log S[n] - Σ_c [c = y[n]] X[n, c])

On logits ``(N, C, *spatial)`` with labels ``(N, *spatial)`` (a label map, as in the pixel
labelling of section 9.6) the same is taken at every position ``d`` and the mean runs over
the batch and the positions: ``L = (1/(N·|d|)) Σ_{n,d} (M[n,d] + log S[n,d] - X[n, y[n,d], d])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.comprehension import ACC, Comprehension, Reduction
from . import Op, OpContext, elementwise_indices, fmt, index


def _max_and_sum(x: str, out: str, shape: tuple):
    """The row max and the row sum of shifted exponentials, as two comprehensions."""
    n, c = index("n"), index("c")
    rest = elementwise_indices(len(shape) - 2)
    X = sympy.IndexedBase(x)[(n, c, *rest)]
    row = (n, *rest)
    M, S = sympy.IndexedBase(f"{out}.max")[row], sympy.IndexedBase(f"{out}.sum")[row]
    free = ((n, shape[0]), *zip(rest, shape[2:]))
    comps = (
        Comprehension(output=M, free=free, reduced=((c, shape[1]),),
                      reduction=Reduction.MAX, body=X, stop_gradient=True),
        Comprehension(output=S, free=free, reduced=((c, shape[1]),),
                      reduction=Reduction.SUM, body=sympy.exp(X - M)),
    )
    return comps, X, M, S


@dataclass(frozen=True, kw_only=True, slots=True)
class Softmax(Op):
    kind = "softmax"

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        if len(ctx.shapes[0]) < 2:
            raise ctx.error(f"expected an input (N, C, ...), found shape {fmt(ctx.shapes[0])}")
        return ctx.shapes[0], "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        (m, s), X, M, S = _max_and_sum(ins[0], out, shapes[0])
        free = ((X.indices[0], shapes[0][0]), (X.indices[1], shapes[0][1]),
                *zip(X.indices[2:], shapes[0][2:]))
        z = Comprehension(output=sympy.IndexedBase(out)[X.indices], free=free,
                          body=sympy.exp(X - M) / S)
        return (m, s, z)


@dataclass(frozen=True, kw_only=True, slots=True)
class SoftmaxCrossEntropy(Op):
    kind = "softmax_cross_entropy"
    arity = 2

    def check_inputs(self, ctx: OpContext) -> None:
        (logits, labels), (ltype, ytype) = ctx.shapes, ctx.dtypes
        if ltype != "float" or len(logits) < 2:
            raise ctx.error(f"logits must be a float tensor (N, classes) or (N, classes, "
                            f"*spatial), found shape {fmt(logits)} of dtype {ltype}")
        want = (logits[0], *logits[2:])
        if ytype != "int64" or labels != want:
            raise ctx.error(f"labels must be an int64 tensor of shape {fmt(want)}, "
                            f"found shape {fmt(labels)} of dtype {ytype}")

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        return (), "float"

    def input_ranges(self, shapes):
        return {1: (0, shapes[0][1])}

    def comprehensions(self, out, ins, shapes, out_shape):
        x, y = ins
        batch, classes, *spatial = shapes[0]
        (m, s), X, M, S = _max_and_sum(x, out, shapes[0])
        n, c, *rest = X.indices
        row = (n, *rest)
        free = ((n, batch), *zip(rest, spatial))
        picked = sympy.IndexedBase(f"{out}.picked")[row]
        pick = Comprehension(output=picked, free=free, reduced=((c, classes),),
                             reduction=Reduction.SUM,
                             body=sympy.Piecewise((X, sympy.Eq(c, sympy.IndexedBase(y)[row])),
                                                  (0, True)))
        loss = Comprehension(output=sympy.IndexedBase(out)[0], free=(), reduced=free,
                             reduction=Reduction.SUM, body=M + sympy.log(S) - picked,
                             final=ACC / sympy.Mul(batch, *spatial))
        return (m, s, pick, loss)
