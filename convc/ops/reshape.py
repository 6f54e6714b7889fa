"""Reshapes: flatten ``(N, C, ...)`` to ``(N, C·...)`` in row-major order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..ir.comprehension import Comprehension
from . import Op, OpContext, elementwise_indices


@dataclass(frozen=True, kw_only=True, slots=True)
class Flatten(Op):
    kind = "flatten"

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        x = ctx.shapes[0]
        return (x[0], math.prod(x[1:])), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x = shapes[0]
        ds = elementwise_indices(len(x))
        flat = sympy.Integer(0)
        for d, size in zip(ds[1:], x[1:]):
            flat = flat * size + d
        return (Comprehension(
            output=sympy.IndexedBase(out)[ds[0], flat],
            free=tuple(zip(ds, x)),
            body=sympy.IndexedBase(ins[0])[ds],
        ),)
