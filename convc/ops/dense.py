"""Dense (fully connected) layer: ``Z[n, o] = b[o] + Σ_f X[n, f]·W[o, f]``."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.comprehension import Comprehension, Reduction
from . import Op, OpContext, ParamSpec, fmt, index, is_size, positive_int


@dataclass(frozen=True, kw_only=True, slots=True)
class Dense(Op):
    kind = "dense"

    units: int
    bias: bool = True

    @classmethod
    def from_args(cls, ctx: OpContext, *, units, bias=True) -> Dense:
        return cls(units=positive_int(units, "units", ctx), bias=bool(bias))

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        self.check_inputs(ctx)
        x = ctx.shapes[0]
        if len(x) != 2:
            raise ctx.error(f"expected a 2-d input (N, features), found shape {fmt(x)}; "
                            f"flatten it first with g.flatten")
        if not is_size(x[1]):
            raise ctx.error(f"the features must be a fixed number for the weight, found "
                            f"{x[1]} (input shape {fmt(x)}), which varies with the input "
                            f"size; pool over all positions first (g.global_avg_pool or "
                            f"g.global_max_pool) to get a fixed number, or compile for fixed "
                            f"sizes (convc.compile(..., sizes=...))")
        weight = ParamSpec("weight", (self.units, x[1]), x[1])
        return (weight, ParamSpec("bias", (self.units,), x[1])) if self.bias else (weight,)

    def infer(self, ctx: OpContext):
        return (ctx.shapes[0][0], self.units), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        n, o, f = index("n"), index("o"), index("f")
        X, W = sympy.IndexedBase(ins[0]), sympy.IndexedBase(ins[1])
        return (Comprehension(
            output=sympy.IndexedBase(out)[n, o],
            free=((n, shapes[0][0]), (o, self.units)),
            reduced=((f, shapes[0][1]),),
            reduction=Reduction.SUM,
            body=X[n, f] * W[o, f],
            init=sympy.IndexedBase(ins[2])[o] if self.bias else None,
        ),)
