"""Unshared and tiled convolution: locally connected layers (9.9) and tiled convolution (9.10).

A locally connected layer has a kernel of its own at every output position; a tiled
convolution cycles ``t`` kernels through space along each axis (``t = 1``: convolution;
``t`` = the output size: locally connected). With the output position split as
``i = t·q + r`` (`bias.tile_split`), the kernel index ``i mod t`` is the free variable
``r`` and every index is affine::

    Z[n, k, t·q + r] = b + Σ_{c < C, m < M} V[n, c, s·(t·q + r) + d·m - p] · W[r, k, c, m]

per spatial axis, one comprehension per box of positions (the last partial tile of an axis
that ``t`` does not divide is a box of its own).

**Weight layout** ``(tiles..., K, C, kernel...)`` (locally connected: ``(out..., K, C,
kernel...)``): the contraction is then a batch of matrix products over the kernel index
``r`` (`convc.contract`), and each product's kernel matrix ``W[r]``, ``K × (C·M)``, is one
contiguous block read in place, as a convolution's weight is. The input is packed once (the
im2col matrix, per output position), which the kernel gradient reads again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..ir.comprehension import Comprehension, Reduction
from . import Op, OpContext, ParamSpec, index, positive_int, spatial_rank
from .bias import (bias_shape, bias_tiles_of, bias_value, resolve_bias, resolve_tiles,
                   tile_split, tiled_bias_comprehensions)
from .conv import Conv


@dataclass(frozen=True, kw_only=True, slots=True)
class TiledConv(Op):
    """Tiled convolution, equation 9.10: ``tiles[a]`` kernels cycled along axis ``a``."""

    kind = "tiled_conv"
    equation = "eq. 9.10"

    channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    out_sizes: tuple[int, ...]
    tiles: tuple[int, ...]
    bias: str | bool
    bias_tiles: tuple[int, ...] | None = None

    @classmethod
    def from_args(cls, ctx: OpContext, *, channels, kernel, stride, padding, dilation, bias,
                  tiles=None, bias_tiles=None) -> TiledConv:
        spatial_rank(ctx)
        channels = positive_int(channels, "channels", ctx)
        conv = Conv.from_args(ctx, channels=channels, kernel=kernel, stride=stride,
                              padding=padding, dilation=dilation, groups=1, bias=False)
        out_sizes = tuple(conv.infer(ctx)[0][2:])
        if tiles is None:  # a locally connected layer: a kernel per output position
            tiles = out_sizes
        tiles = resolve_tiles(tiles, out_sizes, "tiles", ctx)
        bias = resolve_bias(bias, ctx)
        default = tiles if cls is TiledConv else None
        bias_tiles = bias_tiles_of(bias, bias_tiles, out_sizes, ctx, default)
        return cls(channels=channels, kernel=conv.kernel, stride=conv.stride,
                   dilation=conv.dilation, padding=conv.padding, out_sizes=out_sizes,
                   tiles=tiles, bias=bias, bias_tiles=bias_tiles)

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        self.check_inputs(ctx)
        cin = ctx.shapes[0][1]
        fan_in = cin * math.prod(self.kernel)
        weight = ParamSpec("weight", (*self.tiles, self.channels, cin, *self.kernel), fan_in)
        if not self.bias:
            return (weight,)
        shape = bias_shape(self.bias, self.channels, self.out_sizes, self.bias_tiles)
        return (weight, ParamSpec("bias", shape, fan_in))

    def infer(self, ctx: OpContext):
        return (ctx.shapes[0][0], self.channels, *self.out_sizes), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x, w = ins[0], ins[1]
        n, k, c = index("n"), index("k"), index("c")
        ms = [index(f"m{a}") for a in range(len(self.kernel))]
        # a tiled bias cycled like the kernels is read at the kernel's phase; one cycled
        # otherwise is added by comprehensions of its own, over its own split
        separate = self.bias == "tiled" and self.bias_tiles != self.tiles
        comps = []
        for piece in tile_split(self.out_sizes, self.tiles):
            spatial = [s * i + d * m - lo for i, m, s, d, (lo, _) in
                       zip(piece.positions, ms, self.stride, self.dilation, self.padding)]
            V = sympy.IndexedBase(x)[(n, c, *spatial)]
            W = sympy.IndexedBase(w)[(*piece.phases, k, c, *ms)]
            Z = sympy.IndexedBase(out)[(n, k, *piece.positions)]
            init = None if separate else bias_value(self.bias, ins[-1], k, piece)
            comps.append(Comprehension(
                output=Z,
                free=((n, shapes[0][0]), (k, self.channels), *piece.free),
                reduced=((c, sympy.Integer(shapes[0][1])),
                         *zip(ms, map(sympy.Integer, self.kernel))),
                reduction=Reduction.SUM,
                body=V * W,
                init=init,
                fill=((x, sympy.Integer(0)),),
                equation=self.equation,
            ))
        if separate:
            comps += tiled_bias_comprehensions(out, ins[-1], shapes[0][0], self.channels,
                                               self.out_sizes, self.bias_tiles)
        return tuple(comps)


@dataclass(frozen=True, kw_only=True, slots=True)
class LocallyConnected(TiledConv):
    """Locally connected layer (unshared convolution), equation 9.9: a tiled convolution
    with as many tiles as output positions."""

    kind = "locally_connected"
    equation = "eq. 9.9"
