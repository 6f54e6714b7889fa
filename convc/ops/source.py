"""Sources: graph inputs and the parameters that layers create. They compute nothing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Constant(Op):
    """A fixed float tensor (a hand-made kernel, a channel table, pooling weights).

    Its values are baked into the generated C as a ``static const`` table rather than passed
    at call time: the C is then complete on its own (an exported module needs nothing
    from Python to run it), a caller cannot pass a wrong array, and as the values are part
    of the C text, the module's cache key (a hash of that text) changes with them. It is
    never differentiated.
    """

    kind = "constant"
    arity = 0

    dims: tuple[int, ...]
    values: tuple[float, ...]  # row-major, as exact Python floats

    @classmethod
    def from_args(cls, ctx: OpContext, *, array) -> Constant:
        a = np.asarray(array)
        if a.dtype.kind != "f":
            raise ctx.error(f"a constant must be a float array (float32 or float64), "
                            f"found dtype {a.dtype}; convert it with .astype(float)")
        if a.ndim < 1 or a.size == 0:
            raise ctx.error(f"a constant must have at least one axis and one element, "
                            f"found shape {a.shape}")
        if not np.isfinite(a).all():
            raise ctx.error("a constant must hold finite values, found inf or nan")
        values = tuple(float(v) for v in a.astype(np.float64).ravel())
        return cls(dims=tuple(int(d) for d in a.shape), values=values)

    def infer(self, ctx: OpContext):
        return self.dims, "float"
