"""Transposed convolution (section 9.5): the input gradient h of a convolution, as a layer.

``conv_transpose(x, W)`` is defined as the map that a convolution ``c`` with the same kernel,
stride, dilation, padding and groups transposes: if ``c`` takes a tensor of the output's
shape to one of ``x``'s shape, then ``conv_transpose(x, W) = h(W, x)`` (9.13). Its
comprehensions are *derived*: the convolution's comprehension, differentiated with respect
to its input by `autodiff.gather`, so a strided transposed convolution is the polyphase
gather of 9.13 with no zero-stuffed buffer. Its own gradients are derived from those in turn.

Several output sizes map onto the same input size when the stride is above 1 (section
9.5's ambiguity); ``output_padding`` (or ``output_size``) picks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..autodiff import gather, zeros
from . import Op, OpContext, ParamSpec, is_size, per_axis, proven, spatial_rank
from .bias import resolve_bias
from .conv import Conv, check_groups, fixed_channels, pad_pairs


@dataclass(frozen=True, kw_only=True, slots=True)
class ConvTranspose(Op):
    kind = "conv_transpose"
    equation = "eq. 9.13"

    channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    output_padding: tuple[int, ...]
    groups: int
    bias: bool

    @classmethod
    def from_args(cls, ctx: OpContext, *, channels, kernel, stride, padding, dilation,
                  groups, bias, output_padding, output_size) -> ConvTranspose:
        rank = spatial_rank(ctx)
        bias = resolve_bias(bias, ctx, choices=("shared",))  # one per channel only
        conv = Conv.from_args(ctx, channels=channels, kernel=kernel, stride=stride,
                              padding=0, dilation=dilation, groups=groups, bias=bias)
        pads = pad_pairs(0 if padding == "valid" else padding, rank, ctx)
        smallest = [(size - 1) * s - lo - hi + d * (k - 1) + 1 for size, (lo, hi), k, s, d in
                    zip(ctx.shapes[0][2:], pads, conv.kernel, conv.stride, conv.dilation)]
        if output_size is not None:
            for axis, m in enumerate(smallest):
                if not is_size(m):
                    raise ctx.error(f"output_size needs fixed input sizes, found {m} along "
                                    f"spatial axis {axis}; give output_padding instead")
            sizes = per_axis(output_size, rank, "output_size", ctx)
            for axis, (o, m, s, d) in enumerate(zip(sizes, smallest, conv.stride,
                                                    conv.dilation)):
                if not m <= o < m + max(s, d):
                    raise ctx.error(f"output_size {o} along spatial axis {axis} cannot be "
                                    f"reached: the sizes that map back onto the input are "
                                    f"{m} to {m + max(s, d) - 1}")
            output_padding = tuple(o - m for o, m in zip(sizes, smallest))
        extra = per_axis(output_padding, rank, "output_padding", ctx, minimum=0)
        for axis, (e, s, d, m) in enumerate(zip(extra, conv.stride, conv.dilation, smallest)):
            if e >= max(s, d):
                raise ctx.error(f"output padding must be below the stride or the dilation "
                                f"along spatial axis {axis} (the sizes a stride of {s} "
                                f"makes ambiguous): found {e}; the smallest output is {m}")
            if proven(m + e < 1):  # for a variable size: checked at call time
                raise ctx.error(f"the output would be empty along spatial axis {axis}: "
                                f"{m + e} cells (padding {pads[axis]} is too large)")
        return cls(channels=channels, kernel=conv.kernel, stride=conv.stride,
                   dilation=conv.dilation, padding=pads, output_padding=extra,
                   groups=conv.groups, bias=bool(conv.bias))

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        self.check_inputs(ctx)
        cin = fixed_channels(ctx)
        check_groups(ctx, cin, self.channels, self.groups)
        per_group = self.channels // self.groups
        fan_in = cin // self.groups * math.prod(self.kernel)
        weight = ParamSpec("weight", (cin, per_group, *self.kernel), fan_in)
        return (weight, ParamSpec("bias", (self.channels,), fan_in)) if self.bias else (weight,)

    def infer(self, ctx: OpContext):
        x = ctx.shapes[0]
        out = [(size - 1) * s - lo - hi + d * (k - 1) + 1 + e for size, (lo, hi), k, s, d, e in
               zip(x[2:], self.padding, self.kernel, self.stride, self.dilation,
                   self.output_padding)]
        return (x[0], self.channels, *out), "float"

    def comprehensions(self, out, ins, shapes, out_shape):
        x, w = ins[0], ins[1]
        conv = Conv(channels=shapes[0][1], kernel=self.kernel, stride=self.stride,
                    dilation=self.dilation, padding=self.padding, groups=self.groups,
                    bias=False)
        # the convolution this layer transposes: from a tensor shaped like the output
        (forward,) = conv.comprehensions(x, (out, w), (out_shape, shapes[1]), shapes[0])
        (read,) = [a for a in forward.body.atoms(sympy.Indexed) if str(a.base.label) == out]
        term = forward.body.xreplace({read: 1}) * forward.output
        start = zeros(out, out_shape)
        if self.bias:
            b = sympy.IndexedBase(ins[2])[start.free[1].var]
            start = type(start)(output=start.output, free=start.free, body=b)
        return (start, *gather(term, read, forward.variables, forward, out_shape, "body",
                               output=out))
