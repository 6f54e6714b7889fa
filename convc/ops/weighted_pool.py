"""Weighted average pooling (section 9.3): a window's cells weighted by their distance from
the window's centre, the weights summing to 1.

    Z[n, c, i] = Σ_{m < W} V[n, c, s·i + m - p] · w[m]

per spatial axis, with ``w`` a constant tensor of the window's shape: a Gaussian
``exp(-|m - (W - 1)/2|² / (2σ²))`` or the user's array, divided by its sum. At a padded
border the padded cells read 0 and keep their weight (the weights are not renormalised
over the cells inside the input), as average pooling does with ``count_include_pad``: a
window half over the padding gives about half the average of its inside cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from ..ir.comprehension import Comprehension, Reduction
from . import Op, OpContext, ParamSpec, fmt, index, per_axis, spatial_rank
from .conv import resolve_padding


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightedPool(Op):
    kind = "weighted_pool"
    equation = "sec. 9.3"

    window: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    weights: tuple[float, ...]  # row-major over the window, summing to 1

    @classmethod
    def from_args(cls, ctx: OpContext, *, window, stride=None, padding=0,
                  weights="gaussian", sigma=1.0) -> WeightedPool:
        rank = spatial_rank(ctx)
        window = per_axis(window, rank, "window", ctx)
        stride = window if stride is None else per_axis(stride, rank, "stride", ctx)
        pads = resolve_padding(padding, ctx.shapes[0][2:], window, stride, ctx)
        w = window_weights(ctx, window, weights, sigma)
        return cls(window=window, stride=stride, padding=pads,
                   weights=tuple(float(v) for v in w.ravel()))

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        self.check_inputs(ctx)
        value = np.array(self.weights).reshape(self.window)
        return (ParamSpec("weights", self.window, 0, value=value),)

    def infer(self, ctx: OpContext):
        x = ctx.shapes[0]
        out = []
        for axis, (size, (lo, hi), w, s) in enumerate(
                zip(x[2:], self.padding, self.window, self.stride)):
            if size + lo + hi < w:
                raise ctx.error(f"window larger than the padded input along spatial axis "
                                f"{axis}: the window spans {w} but the input {fmt(x)} "
                                f"padded by {(lo, hi)} has {size + lo + hi}")
            out.append((size + lo + hi - w) // s + 1)
        return (*x[:2], *out), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x, weights = ins
        n, c = index("n"), index("c")
        outs = [index(f"i{a}") for a in range(len(self.window))]
        ms = [index(f"m{a}") for a in range(len(self.window))]
        spatial = [s * i + m - lo for i, m, s, (lo, _) in
                   zip(outs, ms, self.stride, self.padding)]
        V = sympy.IndexedBase(x)[(n, c, *spatial)]
        w = sympy.IndexedBase(weights)[tuple(ms)]
        return (Comprehension(
            output=sympy.IndexedBase(out)[(n, c, *outs)],
            free=((n, shapes[0][0]), (c, shapes[0][1]), *zip(outs, out_shape[2:])),
            reduced=tuple(zip(ms, self.window)),
            reduction=Reduction.SUM,
            body=V * w,
            fill=((x, sympy.Integer(0)),),
            equation=self.equation,
        ),)


def window_weights(ctx: OpContext, window, weights, sigma) -> np.ndarray:
    """The window's weights, divided by their sum: a Gaussian of the distance from the
    window's centre (``sigma`` in cells), or a nonnegative array of the window's shape."""
    if isinstance(weights, str):
        if weights != "gaussian":
            raise ctx.error(f"weights must be 'gaussian' or an array of the window's shape "
                            f"{window}, found {weights!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
            raise ctx.error(f"sigma must be a positive number, found {sigma!r}")
        grids = np.meshgrid(*(np.arange(w) - (w - 1) / 2 for w in window), indexing="ij")
        w = np.exp(-sum(g**2 for g in grids) / (2.0 * sigma**2))
    else:
        w = np.asarray(weights)
        if w.dtype.kind not in "fiu" or w.shape != tuple(window):
            raise ctx.error(f"weights must be a real array of the window's shape {window}, "
                            f"found dtype {w.dtype} and shape {w.shape}")
        w = w.astype(np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
            raise ctx.error("weights must be finite and nonnegative with a positive sum")
    return w / w.sum()
