"""Regression loss: the mean squared error between two tensors of one shape, a 0-d tensor."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.comprehension import ACC, Comprehension, Reduction
from . import OpContext, elementwise_indices
from .elementwise import Elementwise


@dataclass(frozen=True, kw_only=True, slots=True)
class MeanSquaredError(Elementwise):
    """``L = (1/|A|) Σ_d (A[d] - B[d])²`` over every index of ``A`` (batch included)."""

    kind = "mean_squared_error"
    arity = 2

    def infer(self, ctx: OpContext):
        super(MeanSquaredError, self).infer(ctx)  # same shapes
        return (), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        ds = elementwise_indices(len(shapes[0]))
        a, b = (sympy.IndexedBase(t)[ds] for t in ins)
        return (Comprehension(
            output=sympy.IndexedBase(out)[0],
            free=(),
            reduced=tuple(zip(ds, shapes[0])),
            reduction=Reduction.SUM,
            body=(a - b) ** 2,
            final=ACC / sympy.Mul(*shapes[0]),
        ),)
