"""Convolution (equation 9.7; strided 9.8): cross-correlation over 1, 2 or 3 spatial axes.

    Z[n, g·K' + k, i] = b[g·K' + k] + Σ_{c < C', m < M} V[n, g·C' + c, s·i + d·m - p] · W[g·K' + k, c, m]

per spatial axis (``s`` stride, ``d`` dilation, ``p`` padding before), with ``G`` groups of
``C' = C/G`` input and ``K' = K/G`` output channels. The group split is affine, so the group
index is just another free variable; it is left out when ``G = 1``. The bias is shared
(``b[k]``), untied (``b[k, i]``) or tiled (``b[k, i mod t]``, added by comprehensions of its
own over the positions split as ``i = t·q + r``); see `convc.ops.bias`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import sympy

from ..ir.comprehension import Comprehension, Reduction
from . import (Op, OpContext, ParamSpec, fmt, index, is_int, is_size, per_axis, positive_int,
               proven, spatial_rank)
from .bias import (Piece, bias_shape, bias_tiles_of, bias_value, resolve_bias,
                   tiled_bias_comprehensions)

PADDING_MODES = ("valid", "same", "full")


@dataclass(frozen=True, kw_only=True, slots=True)
class Conv(Op):
    kind = "conv"
    equation = "eq. 9.7"

    channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    groups: int
    bias: str | bool  # "shared", "untied", "tiled" (section 9.5) or False
    bias_tiles: tuple[int, ...] | None = None
    flip: bool = False
    connections: tuple[tuple[bool, ...], ...] | None = None

    @classmethod
    def from_args(cls, ctx: OpContext, *, channels, kernel, stride, padding, dilation,
                  groups, bias, bias_tiles=None, flip=False, connections=None) -> Conv:
        rank = spatial_rank(ctx)
        channels = positive_int(channels, "channels", ctx)
        groups = positive_int(groups, "groups", ctx)
        kernel = per_axis(kernel, rank, "kernel", ctx)
        stride = per_axis(stride, rank, "stride", ctx)
        dilation = per_axis(dilation, rank, "dilation", ctx)
        extents = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        pads = resolve_padding(padding, ctx.shapes[0][2:], extents, stride, ctx)
        if not isinstance(flip, bool):
            raise ctx.error(f"flip must be True or False, found {flip!r}")
        table = None if connections is None else check_connections(
            ctx, connections, channels, groups)
        conv = cls(channels=channels, kernel=kernel, stride=stride, dilation=dilation,
                   padding=pads, groups=groups, bias=resolve_bias(bias, ctx), flip=flip,
                   connections=table)
        if not conv.bias or conv.bias == "shared":
            bias_tiles_of(conv.bias, bias_tiles, (), ctx)  # refuses tiles given in vain
            return conv
        out_sizes = conv.infer(ctx)[0][2:]
        return replace(conv, bias_tiles=bias_tiles_of(conv.bias, bias_tiles, out_sizes, ctx))

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        self.check_inputs(ctx)
        cin = fixed_channels(ctx)
        check_groups(ctx, cin, self.channels, self.groups)
        per_group = cin // self.groups
        fan_in = per_group * math.prod(self.kernel)
        weight = ParamSpec("weight", (self.channels, per_group, *self.kernel), fan_in)
        specs = (weight,)
        if self.bias:
            out_sizes = self.infer(ctx)[0][2:]
            specs += (ParamSpec("bias", bias_shape(self.bias, self.channels, out_sizes,
                                                   self.bias_tiles), fan_in),)
        if self.connections is not None:
            table = np.array(self.connections, dtype=np.float64)
            if table.shape[1] != cin:
                raise ctx.error(f"connections must be a (out_channels, in_channels) table of "
                                f"shape {(self.channels, cin)}, found {table.shape}")
            specs += (ParamSpec("connections", table.shape, 0, value=table),)
        return specs

    def infer(self, ctx: OpContext):
        x = ctx.shapes[0]
        out = []
        for axis, (size, (lo, hi), k, s, d) in enumerate(
            zip(x[2:], self.padding, self.kernel, self.stride, self.dilation)
        ):
            extent = d * (k - 1) + 1
            if proven(size + lo + hi < extent):  # for a variable size: checked at call time
                raise ctx.error(
                    f"kernel larger than the padded input along spatial axis {axis}: "
                    f"the kernel spans {extent} (size {k}, dilation {d}) but the input "
                    f"{fmt(x)} padded by {(lo, hi)} has {size + lo + hi}")
            out.append((size + lo + hi - extent) // s + 1)
        return (x[0], self.channels, *out), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x, w = ins[0], ins[1]
        cin = shapes[0][1]
        G, Cg, Kg = self.groups, cin // self.groups, self.channels // self.groups
        n, c, k = index("n"), index("c"), index("k")
        g = index("g") if G > 1 else sympy.Integer(0)
        outs = [index(f"i{a}") for a in range(self.rank)]
        ms = [index(f"m{a}") for a in range(self.rank)]
        spatial = [s * i + d * m - lo for i, m, s, d, (lo, _) in
                   zip(outs, ms, self.stride, self.dilation, self.padding)]
        kout = g * Kg + k
        masked = ()
        if self.connections is not None:
            masked = (self._masked_weight(out, w, ins[-1], shapes[1], (g, G), (k, Kg), Cg),)
            w = masked[0].tensor
        taps = [M - 1 - m for m, M in zip(ms, self.kernel)] if self.flip else ms
        V = sympy.IndexedBase(x)[(n, g * Cg + c, *spatial)]
        W = sympy.IndexedBase(w)[(kout, c, *taps)]
        Z = sympy.IndexedBase(out)[(n, kout, *outs)]
        free = [(n, shapes[0][0])] + ([(g, G)] if G > 1 else []) + [(k, Kg)]
        free += list(zip(outs, out_shape[2:]))
        init = None
        if self.bias in ("shared", "untied"):
            init = bias_value(self.bias, ins[2], kout, Piece((), tuple(outs), ()))
        comp = Comprehension(
            output=Z,
            free=tuple(free),
            reduced=((c, sympy.Integer(Cg)), *zip(ms, map(sympy.Integer, self.kernel))),
            reduction=Reduction.SUM,
            body=V * W,
            init=init,
            fill=((x, sympy.Integer(0)),),
            equation="eq. 9.7" if set(self.stride) == {1} else "eq. 9.8",
        )
        if self.bias != "tiled":
            return (*masked, comp)
        return (*masked, comp, *tiled_bias_comprehensions(out, ins[2], shapes[0][0],
                                                          self.channels, out_shape[2:],
                                                          self.bias_tiles))

    def _masked_weight(self, out, w, table, wshape, group, kk, Cg) -> Comprehension:
        """``W~[g·K' + k, c, m] = W[g·K' + k, c, m] · T[g·K' + k, g·C' + c]`` (figure 9.15)."""
        (g, G), (k, Kg) = group, kk
        c = index("c")
        ms = [index(f"m{a}") for a in range(self.rank)]
        kout = g * Kg + k
        W = sympy.IndexedBase(w)[(kout, c, *ms)]
        T = sympy.IndexedBase(table)[kout, g * Cg + c]
        free = ([(g, G)] if G > 1 else []) + [(k, Kg), (c, Cg)]
        return Comprehension(
            output=sympy.IndexedBase(f"{out}.masked")[(kout, c, *ms)],
            free=(*free, *zip(ms, wshape[2:])),
            body=W * T,
            equation="fig. 9.15",
        )


def check_connections(ctx: OpContext, table, channels: int, groups: int):
    """A boolean ``(channels, in_channels)`` table (figure 9.15), as nested tuples; with
    groups, a pair in different groups cannot be connected."""
    a = np.asarray(table)
    if a.dtype != np.bool_ or a.ndim != 2:
        raise ctx.error(f"connections must be a 2-d boolean (out_channels, in_channels) "
                        f"array, found dtype {a.dtype} and shape {a.shape}")
    cin = ctx.shapes[0][1]
    if a.shape != (channels, cin):
        raise ctx.error(f"connections must have shape (out_channels, in_channels) = "
                        f"{(channels, cin)}, found {a.shape}")
    if groups > 1 and cin % groups == 0 and channels % groups == 0:
        kg, cg = channels // groups, cin // groups
        inside = np.kron(np.eye(groups, dtype=bool), np.ones((kg, cg), dtype=bool))
        if (a & ~inside).any():
            k, c = map(int, np.argwhere(a & ~inside)[0])
            raise ctx.error(f"connections[{k}, {c}] links channels of different groups "
                            f"(groups={groups})")
    return tuple(tuple(bool(v) for v in row) for row in a)


def fixed_channels(ctx: OpContext) -> int:
    """The input's channel count, which a layer's weight needs fixed (not a size symbol)."""
    cin = ctx.shapes[0][1]
    if not is_size(cin):
        raise ctx.error(f"the input channels must be a fixed size for the weight, found "
                        f"{cin} (input shape {fmt(ctx.shapes[0])}); give axis 1 of the input "
                        f"as an int")
    return int(cin)


def check_groups(ctx: OpContext, cin: int, cout: int, groups: int) -> None:
    """Input and output channels must both split into ``groups`` equal groups."""
    for what, count in (("input channels", cin), ("output channels", cout)):
        if count % groups:
            raise ctx.error(f"{what} must be divisible by groups={groups}, found {count} "
                            f"(input shape {fmt(ctx.shapes[0])})")


def resolve_padding(padding, sizes, extents, strides, ctx: OpContext):
    """Per-axis ``(before, after)`` padding from a mode string, an int or tuples.

    ``"valid"``: none. ``"full"``: every partial overlap, ``extent - 1`` on both sides.
    ``"same"``: ``ceil(size / stride)`` outputs (the size itself at stride 1); the total
    padding ``max((out - 1)·stride + extent - size, 0)`` is split with the odd cell after.
    """
    rank = len(extents)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * rank
        if padding == "full":
            return tuple((e - 1, e - 1) for e in extents)
        if padding == "same":
            pads = []
            for axis, (size, e, s) in enumerate(zip(sizes, extents, strides)):
                if s > 1 and not is_size(size):
                    raise ctx.error(
                        f"padding 'same' at stride {s} depends on the input size, which is "
                        f"given at call time ({size}) along spatial axis {axis}: give the "
                        f"padding as ints, or fixed sizes (convc.compile(..., sizes=...))")
                total = max((-(-size // s) - 1) * s + e - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ctx.error(f"unknown padding {padding!r}: expected one of {PADDING_MODES}, "
                        f"an int, or per-axis ints or (before, after) pairs")
    return pad_pairs(padding, rank, ctx)


def pad_pairs(padding, rank: int, ctx: OpContext) -> tuple[tuple[int, int], ...]:
    """An int, ``rank`` ints, or ``rank`` ``(before, after)`` pairs, all >= 0, as pairs."""
    given = padding
    if is_int(padding):
        padding = (padding,) * rank
    ok = isinstance(padding, tuple | list) and len(padding) == rank
    pairs = []
    for p in padding if ok else ():
        pair = (p, p) if is_int(p) else p
        if not (isinstance(pair, tuple | list) and len(pair) == 2
                and all(is_int(v) and v >= 0 for v in pair)):
            ok = False
            break
        pairs.append(tuple(int(v) for v in pair))
    if not ok:
        raise ctx.error(f"padding must be a mode string, an int >= 0, {rank} ints or {rank} "
                        f"(before, after) pairs of ints >= 0, found {given!r}")
    return tuple(pairs)



