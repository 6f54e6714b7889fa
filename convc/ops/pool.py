"""Pooling (section 9.3): max, average and Lp over windows, and over all positions.

    Z[n, c, i] = reduce_{m < W} V[n, c, s·i + d·m - p]

per spatial axis. Max reads -∞ outside the input; average and Lp read 0. The average
divides by the window's cell count: every cell of the padded input when padded cells count
(the overhang of a ``ceil_mode`` partial window never counts), else only the input's cells.
Where the count varies near the border it is a closed form in the output index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..ir.comprehension import ACC, Comprehension, Reduction
from . import Op, OpContext, index, is_size, per_axis, proven, spatial_rank
from .conv import resolve_padding

KINDS = ("max", "avg", "lp")


@dataclass(frozen=True, kw_only=True, slots=True)
class Pool(Op):
    kind = "pool"
    equation = "sec. 9.3"

    reduce: str
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    ceil_mode: bool = False
    count_include_pad: bool = True
    p: float = 2

    @classmethod
    def from_args(cls, ctx: OpContext, *, kind, window, stride=None, padding=0, dilation=1,
                  ceil_mode=False, count_include_pad=True, p=2) -> Pool:
        rank = spatial_rank(ctx)
        window = per_axis(window, rank, "window", ctx)
        stride = window if stride is None else per_axis(stride, rank, "stride", ctx)
        dilation = per_axis(dilation, rank, "dilation", ctx)
        extents = tuple(d * (w - 1) + 1 for w, d in zip(window, dilation))
        pads = resolve_padding(padding, ctx.shapes[0][2:], extents, stride, ctx)
        check_p(p, ctx)
        return cls(reduce=kind, window=window, stride=stride, dilation=dilation,
                   padding=pads, ceil_mode=bool(ceil_mode),
                   count_include_pad=bool(count_include_pad), p=p)

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        x = ctx.shapes[0]
        out = [self._out_size(ctx, a, size) for a, size in enumerate(x[2:])]
        if self.reduce == "max" or (self.reduce == "avg" and not self.count_include_pad):
            for a, (size, o) in enumerate(zip(x[2:], out)):
                self._check_windows_reach_input(ctx, a, size, o)
        return (*x[:2], *out), "float"

    def _out_size(self, ctx, axis, size) -> int:
        (lo, hi), w, s, d = self.padding[axis], self.window[axis], self.stride[axis], \
            self.dilation[axis]
        extent, padded = d * (w - 1) + 1, size + lo + hi
        if proven(padded < extent):  # for a variable size: checked at call time
            raise ctx.error(f"window larger than the padded input along spatial axis {axis}: "
                            f"the window spans {extent} but the input padded by {(lo, hi)} "
                            f"has {padded}")
        if not self.ceil_mode:
            return (padded - extent) // s + 1
        out = -(-(padded - extent) // s) + 1
        # a last partial window must start inside the input or its left padding
        if is_size(size):
            return out - 1 if (out - 1) * s >= size + lo else out
        return sympy.Piecewise((out - 1, (out - 1) * s >= size + lo), (out, True))

    def _check_windows_reach_input(self, ctx, axis, size, out) -> None:
        (lo, _), w, s, d = self.padding[axis], self.window[axis], self.stride[axis], \
            self.dilation[axis]
        if not is_size(out):
            return  # a variable size: checked at call time, on the size given
        for j in range(out):
            if not any(0 <= s * j + d * m - lo < size for m in range(w)):
                raise ctx.error(f"window {j} along spatial axis {axis} covers only padding "
                                f"(padding {self.padding[axis]}, window {w}, dilation {d}); "
                                f"reduce the padding")

    def comprehensions(self, out, ins, shapes, out_shape):
        x = ins[0]
        n, c = index("n"), index("c")
        outs = [index(f"i{a}") for a in range(len(self.window))]
        ms = [index(f"m{a}") for a in range(len(self.window))]
        spatial = [s * i + d * m - lo for i, m, s, d, (lo, _) in
                   zip(outs, ms, self.stride, self.dilation, self.padding)]
        V = sympy.IndexedBase(x)[(n, c, *spatial)]
        body, final = V, None
        if self.reduce == "lp":
            body, final = lp_terms(V, self.p)
        elif self.reduce == "avg":
            final = ACC / self._count(outs, shapes[0][2:], out_shape[2:])
        return (Comprehension(
            output=sympy.IndexedBase(out)[(n, c, *outs)],
            free=((n, shapes[0][0]), (c, shapes[0][1]), *zip(outs, out_shape[2:])),
            reduced=tuple(zip(ms, self.window)),
            reduction=Reduction.MAX if self.reduce == "max" else Reduction.SUM,
            body=body,
            final=final,
            fill=((x, -sympy.oo if self.reduce == "max" else sympy.Integer(0)),),
            equation=self.equation,
        ),)

    def _count(self, outs, sizes, out_sizes) -> sympy.Expr:
        """Cells counted in the window at output ``outs``, a product over the axes."""
        count = sympy.Integer(1)
        for i, size, o, w, s, d, (lo, hi) in zip(outs, sizes, out_sizes, self.window,
                                                   self.stride, self.dilation, self.padding):
            first, last = (-lo, size + hi) if self.count_include_pad else (0, size)
            if -lo >= first and proven(s * (o - 1) + d * (w - 1) - lo < last):
                count *= w  # no window leaves the counted region
                continue
            start = sympy.Max(0, sympy.ceiling(sympy.sympify(first + lo) / d - s * i / d))
            stop = sympy.Min(w - 1, sympy.floor(sympy.sympify(last - 1 + lo) / d - s * i / d))
            count *= stop - start + 1
        return count


def check_p(p, ctx: OpContext) -> None:
    """An Lp pool's ``p`` is a positive number (not a bool)."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not p > 0:
        raise ctx.error(f"p must be a positive number, found {p!r}")


def lp_terms(value: sympy.Expr, p) -> tuple[sympy.Expr, sympy.Expr]:
    """Body and final of an Lp norm: ``Σ |v|^p`` then ``acc^(1/p)`` (no Abs for even p)."""
    exponent = sympy.Integer(p) if float(p).is_integer() else sympy.Float(p)
    base = value if exponent.is_even else sympy.Abs(value)
    root = sympy.sqrt(ACC) if exponent == 2 else ACC ** (1 / exponent)
    return base**exponent, root


@dataclass(frozen=True, kw_only=True, slots=True)
class GlobalPool(Op):
    """Max, mean or Lp norm over every spatial position of a 1-D, 2-D or 3-D input:
    ``(N, C, ...)`` to ``(N, C)``, no spatial axes kept."""

    kind = "global_pool"
    equation = "sec. 9.3"

    reduce: str
    p: float = 2

    @classmethod
    def from_args(cls, ctx: OpContext, *, kind, p=2) -> GlobalPool:
        spatial_rank(ctx)
        check_p(p, ctx)
        return cls(reduce=kind, p=p)

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        return ctx.shapes[0][:2], "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        n, c = index("n"), index("c")
        sizes = shapes[0][2:]
        spatial = [index(f"m{a}") for a in range(len(sizes))]
        body, final = sympy.IndexedBase(ins[0])[(n, c, *spatial)], None
        if self.reduce == "lp":
            body, final = lp_terms(body, self.p)
        elif self.reduce == "avg":
            final = ACC / math.prod(sizes)
        return (Comprehension(
            output=sympy.IndexedBase(out)[n, c],
            free=((n, shapes[0][0]), (c, shapes[0][1])),
            reduced=tuple(zip(spatial, sizes)),
            reduction=Reduction.MAX if self.reduce == "max" else Reduction.SUM,
            body=body,
            final=final,
            equation=self.equation,
        ),)
