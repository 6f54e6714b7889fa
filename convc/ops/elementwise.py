"""Elementwise ops: a body applied at every index of same-shaped inputs."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.comprehension import Comprehension
from . import Op, OpContext, elementwise_indices, fmt


@dataclass(frozen=True, kw_only=True, slots=True)
class Elementwise(Op):
    """Base: ``Z[d] = f(A[d], B[d], ...)``; subclasses give ``f`` as `apply`."""

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        first = ctx.shapes[0]
        for i, shape in enumerate(ctx.shapes[1:], start=1):
            if shape != first:
                raise ctx.error(f"input {i} must have the shape of input 0, expected "
                                f"{fmt(first)}, found {fmt(shape)}")
        return first, "float"

    def apply(self, *values: sympy.Expr) -> sympy.Expr:
        raise NotImplementedError

    def comprehensions(self, out, ins, shapes, out_shape):
        ds = elementwise_indices(len(out_shape))
        values = [sympy.IndexedBase(t)[ds] for t in ins]
        return (Comprehension(
            output=sympy.IndexedBase(out)[ds],
            free=tuple(zip(ds, out_shape)),
            body=self.apply(*values),
            equation=self.equation,
        ),)


@dataclass(frozen=True, kw_only=True, slots=True)
class Add(Elementwise):
    kind = "add"
    arity = 2

    def apply(self, a, b):
        return a + b
