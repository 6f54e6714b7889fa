"""Pooling regions beyond the spatial window (section 9.3): across channels and adaptive.

*Cross-channel pooling* (figure 9.9, maxout) reduces groups of ``pieces`` consecutive
channels at every position, ``(N, C, ...)`` to ``(N, C/pieces, ...)``::

    Z[n, k, i] = max_{q < pieces} V[n, pieces·k + q, i]

The channel index is a mixed-radix split of ``(k, q)``, so the derived gradient keeps both
as free variables and sends each output's gradient to its first maximum.

*Adaptive pooling* gives a fixed number of cells whatever the input's size (the fixed-size
summary of section 9.7): along an axis of ``I`` cells pooled into ``O``, cell ``i`` covers
``floor(i·I/O) <= r < ceil((i + 1)·I/O)``. Those bounds are not affine in ``i``, but they
are the linear constraints

    1 - O <= O·r - I·i < I

(``r >= floor(i·I/O)`` is ``O·r > I·i - O``; ``r < ceil((i + 1)·I/O)`` is
``O·r < I·(i + 1)``), which a comprehension keeps as ``where``: lowering turns them into
floor/ceil bounds of the loop over ``r``, and the derived gradient into bounds of its loop
over ``i``, with no test per element. Example: ``I = 5, O = 3`` gives the cells [0, 2),
[1, 4), [3, 5). Where ``O`` divides ``I`` the cells are plain windows, ``r = (I/O)·i + m``
with ``m < I/O``, and the axis lowers as an ordinary pool does.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.comprehension import ACC, Comprehension, Reduction
from . import Op, OpContext, fmt, index, is_int, is_size, positive_int, proven, spatial_rank

KINDS = ("max", "avg")


def _check_kind(kind, ctx: OpContext) -> str:
    if kind not in KINDS:
        raise ctx.error(f"kind must be one of {KINDS}, found {kind!r}")
    return kind


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelPool(Op):
    """Max or mean over groups of ``pieces`` consecutive channels (maxout, figure 9.9)."""

    kind = "channel_pool"
    equation = "sec. 9.3"

    reduce: str
    pieces: int

    @classmethod
    def from_args(cls, ctx: OpContext, *, kind, pieces) -> ChannelPool:
        spatial_rank(ctx, ranks=(0, 1, 2, 3))
        kind = _check_kind(kind, ctx)
        pieces = positive_int(pieces, "pieces", ctx)
        channels = ctx.shapes[0][1]
        if channels % pieces:
            raise ctx.error(f"the channels must be a multiple of pieces={pieces}, found "
                            f"{channels} channels in input of shape {fmt(ctx.shapes[0])}")
        return cls(reduce=kind, pieces=pieces)

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        x = ctx.shapes[0]
        return (x[0], x[1] // self.pieces, *x[2:]), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x = shapes[0]
        n, k, q = index("n"), index("k"), index("q")
        spatial = [index(f"i{a}") for a in range(len(x) - 2)]
        V = sympy.IndexedBase(ins[0])[(n, self.pieces * k + q, *spatial)]
        return (Comprehension(
            output=sympy.IndexedBase(out)[(n, k, *spatial)],
            free=((n, x[0]), (k, out_shape[1]), *zip(spatial, x[2:])),
            reduced=((q, self.pieces),),
            reduction=Reduction.MAX if self.reduce == "max" else Reduction.SUM,
            body=V,
            final=None if self.reduce == "max" else ACC / self.pieces,
            equation=self.equation,
        ),)


@dataclass(frozen=True, kw_only=True, slots=True)
class AdaptivePool(Op):
    """Max or mean over a fixed grid of ``output_size`` cells, whatever the input's size."""

    kind = "adaptive_pool"
    equation = "sec. 9.3"

    reduce: str
    output_size: tuple[int, ...]

    @classmethod
    def from_args(cls, ctx: OpContext, *, kind, output_size) -> AdaptivePool:
        rank = spatial_rank(ctx)
        kind = _check_kind(kind, ctx)
        sizes = ctx.shapes[0][2:]
        wanted = (output_size,) * rank if is_int(output_size) else output_size
        if not isinstance(wanted, tuple | list) or len(wanted) != rank:
            raise ctx.error(f"output_size must be an int or a tuple of {rank} ints or None "
                            f"(one per spatial axis), found {output_size!r}")
        resolved = []
        for axis, (o, size) in enumerate(zip(wanted, sizes)):
            if o is None and not is_size(size):
                raise ctx.error(f"output_size None keeps an axis of fixed size, but spatial "
                                f"axis {axis} has the variable size {size}: give its cells")
            o = size if o is None else o
            if not is_int(o) or o < 1:
                raise ctx.error(f"output_size must be positive ints (or None, to keep an "
                                f"axis), found {output_size!r}")
            if proven(o > size):  # for a variable size: checked at call time
                raise ctx.error(f"output_size {fmt(tuple(wanted))} is larger than the input "
                                f"along spatial axis {axis}: {o} cells asked of {size}")
            resolved.append(int(o))
        return cls(reduce=kind, output_size=tuple(resolved))

    def infer(self, ctx: OpContext):
        self.check_inputs(ctx)
        for axis, (o, size) in enumerate(zip(self.output_size, ctx.shapes[0][2:])):
            if proven(o > size):
                raise ctx.error(f"output_size {fmt(self.output_size)} is larger than the "
                                f"input along spatial axis {axis}: {o} cells asked of {size}")
        return (*ctx.shapes[0][:2], *self.output_size), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x = shapes[0]
        n, c = index("n"), index("c")
        outs = [index(f"i{a}") for a in range(len(self.output_size))]
        reduced, spatial, where = [], [], []
        count = sympy.Integer(1)
        for a, (i, size, o) in enumerate(zip(outs, x[2:], self.output_size)):
            if is_size(size) and size % o == 0:  # plain windows of size/o cells, stride size/o
                m, step = index(f"m{a}"), size // o
                reduced.append((m, step))
                spatial.append(step * i + m)
                count *= step
                continue
            r = index(f"r{a}")
            reduced.append((r, size))
            spatial.append(r)
            where.append((o * r - size * i, sympy.Integer(1 - o), sympy.sympify(size)))
            count *= cell_count(i, size, o)
        V = sympy.IndexedBase(ins[0])[(n, c, *spatial)]
        return (Comprehension(
            output=sympy.IndexedBase(out)[(n, c, *outs)],
            free=((n, x[0]), (c, x[1]), *zip(outs, self.output_size)),
            reduced=tuple(reduced),
            reduction=Reduction.MAX if self.reduce == "max" else Reduction.SUM,
            body=V,
            final=None if self.reduce == "max" else ACC / count,
            where=tuple(where),
            equation=self.equation,
        ),)


def cell_count(i: sympy.Expr, size, out: int) -> sympy.Expr:
    """Cells of adaptive cell ``i`` along an axis: ``ceil((i + 1)·I/O) - floor(i·I/O)``."""
    ratio = sympy.sympify(size) / out
    return sympy.ceiling(ratio * (i + 1)) - sympy.floor(ratio * i)

