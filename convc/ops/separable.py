"""Separable convolution (section 9.8): a kernel that is an outer product, run as 1-D passes.

The kernel of output channel ``k`` and input channel ``c`` is learned as one factor per
spatial axis, ``W[k, c, m0, m1, …] = u0[k, c, m0] · u1[k, c, m1] · …``, and the
convolution (equation 9.7, any stride, dilation, padding and groups) runs one axis at a
time, last axis first. On two axes::

    T[n, k, c, p, i1] = Σ_{m1} V[n, c, p - p0, s1·i1 + d1·m1 - p1] · u1[k, c, m1]
    Z[n, k, i0, i1]   = b[k] + Σ_{c, m0} T[n, k, c, s0·i0 + d0·m0, i1] · u0[k, c, m0]

where ``p`` runs over the rows of the padded input that some output reads. A dense
``M0 × M1`` kernel costs ``M0·M1`` multiply-adds per output and input channel; the passes
cost about ``M0 + M1``. Each pass is a comprehension like any other, so the gradients of the
factors and of the input are derived through the chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..ir.comprehension import Comprehension, Reduction
from . import OpContext, ParamSpec, index
from .conv import Conv, check_groups


@dataclass(frozen=True, kw_only=True, slots=True)
class SeparableConv(Conv):
    kind = "conv"
    equation = "eq. 9.7, section 9.8"

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        """One factor ``weight<a>`` of shape ``(K, C', M_a)`` per axis, and the bias.

        ``fan_in`` of each factor is chosen so that the product of ``rank`` factors drawn
        by `Module.init_params` has the variance a dense kernel would get.
        """
        self.check_inputs(ctx)
        cin = ctx.shapes[0][1]
        check_groups(ctx, cin, self.channels, self.groups)
        per_group = cin // self.groups
        dense_fan_in = per_group * math.prod(self.kernel)
        fan_in = 2.0 * (dense_fan_in / 2.0) ** (1.0 / self.rank)
        specs = tuple(ParamSpec(f"weight{a}", (self.channels, per_group, m), fan_in)
                      for a, m in enumerate(self.kernel))
        return specs + ((ParamSpec("bias", (self.channels,), dense_fan_in),)
                        if self.bias else ())

    def comprehensions(self, out, ins, shapes, out_shape):
        x, factors = ins[0], ins[1:1 + self.rank]
        bias = ins[1 + self.rank] if self.bias else None
        G, Cg, Kg = self.groups, shapes[0][1] // self.groups, self.channels // self.groups
        n, c, k = index("n"), index("c"), index("k")
        g = index("g") if G > 1 else sympy.Integer(0)
        kout = g * Kg + k
        outs = [index(f"i{a}") for a in range(self.rank)]
        rows = [index(f"p{a}") for a in range(self.rank)]
        head = [(n, shapes[0][0])] + ([(g, G)] if G > 1 else []) + [(k, Kg)]
        # the padded-input rows some output reads, along the axes not yet passed over
        read = [s * (o - 1) + d * (m - 1) + 1 for m, s, d, o in
                zip(self.kernel, self.stride, self.dilation, out_shape[2:])]
        comps, previous = [], None
        for a in reversed(range(self.rank)):
            m = index(f"m{a}")
            reads_input = previous is None
            tap = self.stride[a] * outs[a] + self.dilation[a] * m
            if reads_input:  # the first pass reads the input, zero-padded
                lows = [lo for lo, _ in self.padding]
                at = (n, g * Cg + c, *(p - lo for p, lo in zip(rows[:a], lows)), tap - lows[a])
                source = sympy.IndexedBase(x)[at]
            else:
                source = sympy.IndexedBase(previous)[(n, kout, c, *rows[:a], tap, *outs[a + 1:])]
            spatial = [*zip(rows[:a], read[:a]), *zip(outs[a:], out_shape[2 + a:])]
            if a == 0:
                target = sympy.IndexedBase(out)[(n, kout, *outs)]
                free, reduced = head + spatial, [(c, Cg), (m, self.kernel[a])]
            else:
                previous = f"{out}.pass{a}"
                target = sympy.IndexedBase(previous)[(n, kout, c, *rows[:a], *outs[a:])]
                free, reduced = head + [(c, Cg)] + spatial, [(m, self.kernel[a])]
            comps.append(Comprehension(
                output=target, free=tuple(free),
                reduced=tuple((v, sympy.Integer(e)) for v, e in reduced),
                reduction=Reduction.SUM,
                body=source * sympy.IndexedBase(factors[a])[(kout, c, m)],
                init=sympy.IndexedBase(bias)[kout] if a == 0 and bias else None,
                fill=((x, sympy.Integer(0)),) if reads_input else (),
                equation=self.equation))
        return tuple(comps)
