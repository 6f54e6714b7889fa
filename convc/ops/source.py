"""Sources: graph inputs and the parameters that layers create. They compute nothing."""

from __future__ import annotations

from dataclasses import dataclass

from . import BATCH, Op, OpContext, is_int, size_symbol

DTYPES = ("float", "int64")


@dataclass(frozen=True, kw_only=True, slots=True)
class Input(Op):
    """A tensor given at call time. ``None`` on axis 0 is the batch size ``N``; on another
    axis it is a size of this input alone, given at call time too (section 9.7: ``x_H``,
    ``x_W`` for an ``(N, C, H, W)`` input ``x``; see `size_symbol`)."""

    kind = "input"
    arity = 0

    dims: tuple
    dtype: str = "float"

    @classmethod
    def from_args(cls, ctx: OpContext, *, shape, dtype="float") -> Input:
        if dtype not in DTYPES:
            raise ctx.error(f"dtype must be one of {DTYPES}, found {dtype!r}")
        if not isinstance(shape, tuple | list):
            raise ctx.error(f"shape must be a tuple of sizes, found {shape!r}")
        dims = []
        for axis, d in enumerate(shape):
            if d is None and axis == 0:
                dims.append(BATCH)
            elif d is None:
                dims.append(size_symbol(ctx.name, axis, len(shape)))
            elif not is_int(d) or d < 1:
                raise ctx.error(f"sizes must be positive ints (or None for a size given at "
                                f"call time), "
                                f"found {d!r} at axis {axis} of {shape!r}")
            else:
                dims.append(int(d))
        return cls(dims=tuple(dims), dtype=dtype)

    def infer(self, ctx: OpContext):
        return self.dims, self.dtype


@dataclass(frozen=True, kw_only=True, slots=True)
class Param(Op):
    """A learnable tensor owned by a layer; ``fan_in`` guides its initialisation."""

    kind = "param"
    arity = 0

    fan_in: int
