"""Winograd's minimal filtering F(2, 3) per axis (section 9.8): a 3-tap correlation of unit
stride computes two outputs from four inputs with four multiplications instead of six.

Along each spatial axis the output is cut into tiles of 2, ``i = 2·t + p``; per tile

    y[2t + p] = Σ_α AT[p, α] · (G·g)[α] · (BT·d_t)[α],   d_t = the 4 inputs from 2t

(``BT``, ``G``, ``AT`` are Lavin and Gray's matrices; over several axes their tensor
products). So a contraction ``O = init + Σ_{channels, v} S[.., u + v + c]·K[.., v]`` with 3
taps on every spatial axis becomes, for each of the 4^rank points α of the transformed tile,
a contraction over the channels alone (a batch of matrix products, `contract.plan`):

    U_α[.., t] = Σ_x BT[α, x]·S[.., 2t + x + c]      W_α[..] = Σ_x G[α, x]·K[.., x]
    M_α[.., t] = Σ_channels U_α·W_α                  O[.., 2t + p] = init + Σ_α AT[p, α]·M_α

A convolution (the input gradient h, ``u - v``) is the correlation with the kernel's taps
reversed. The transforms add and subtract, and G halves: float32 results differ from the
direct sums by a few units of the last place of the largest term (tests/test_winograd.py
measures it).
"""

from __future__ import annotations

import itertools
import math

import sympy

from .contract import plan as product
from .ir.affine import index_range
from .ir.comprehension import Comprehension, Reduction
from .ops import estimate
from .spectral import channel_indices, correlation, fresh_name

BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (sympy.Rational(1, 2),) * 3,
     (sympy.Rational(1, 2), -sympy.Rational(1, 2), sympy.Rational(1, 2)), (0, 0, 1))
AT = ((1, 1, 1, 0), (0, 1, -1, -1))
TAPS, TILE = 3, 2


def plan(comp: Comprehension, shapes: dict[str, tuple], packed: dict) -> tuple | None:
    """The parts computing ``comp`` by F(2, 3) on every spatial axis: the input and kernel
    transforms, one product over the channels per transformed point, and the output
    transform per output phase; None unless ``comp`` is a correlation or convolution with
    3 taps on each of its one or two spatial axes and no other constraint."""
    matched = correlation(comp, shapes)
    if matched is None:
        return None
    comp, found, spans, _ = matched
    if len(spans) > 2 or any(v != TAPS for _, v in spans):
        return None  # three axes would take 64 products of small matrices
    rank = len(spans)
    tiles = [-(-u // TILE) for u, _ in spans]
    ts = [sympy.Symbol(f"t{a}", integer=True, nonnegative=True) for a in range(rank)]
    channel_free = [d for d in comp.free if d.var not in {axis[3] for axis in found.axes}]
    channel_reduced = [d for d in comp.reduced if d.var not in {axis[4] for axis in found.axes}]
    parts, products = [], []
    for alpha in itertools.product(range(4), repeat=rank):
        tag = "".join(map(str, alpha))
        u = _transformed_input(comp, found, alpha, ts, tiles, shapes, fresh_name(
            f"{comp.tensor}~wino_in{tag}", shapes))
        w = _transformed_kernel(comp, found, alpha, shapes,
                                fresh_name(f"{comp.tensor}~wino_k{tag}", shapes))
        m_name = fresh_name(f"{comp.tensor}~wino_m{tag}", shapes)
        out_channel = channel_indices(comp.output, found, 2)
        m = Comprehension(
            output=sympy.IndexedBase(m_name)[(*out_channel, *ts)],
            free=(*channel_free, *zip(ts, tiles)), reduced=tuple(channel_reduced),
            reduction=Reduction.SUM if channel_reduced else Reduction.NONE,
            body=sympy.IndexedBase(u.tensor)[(*channel_indices(found.s, found, 0), *ts)]
            * sympy.IndexedBase(w.tensor)[tuple(channel_indices(found.k, found, 1))],
            equation=f"winograd product {tag} of {comp.tensor}")
        shapes[m_name] = (*[n for p, n in enumerate(shapes[comp.tensor])
                            if p not in [axis[2] for axis in found.axes]], *tiles)
        parts += [u, w, *(product(m, shapes, True, packed) or (m,))]
        products.append((alpha, m_name))
    parts += _output_transforms(comp, found, products, ts, spans, channel_free)
    return tuple(parts)


def _transformed_input(comp, found, alpha, ts, tiles, shapes, name) -> Comprehension:
    """``U_α[channels, t] = Σ_x Π_a BT[α_a, x_a]·S[.., 2·t_a + x_a + c_a]`` (zero outside)."""
    terms = []
    for x in itertools.product(range(4), repeat=len(ts)):
        coefficient = sympy.Mul(*(BT[a][xa] for a, xa in zip(alpha, x)))
        if coefficient == 0:
            continue
        index = list(found.s.indices)
        for (pos, _, _, _, _, const), t, xa in zip(found.axes, ts, x):
            # a convolution (u - v + c) reads its taps reversed: v = 2 - v'
            index[pos] = TILE * t + xa + const - (TAPS - 1 if found.sign < 0 else 0)
        terms.append(coefficient * found.s.base[tuple(index)])
    tensor = str(found.s.base.label)
    return _transform(comp, found, 0, sympy.Add(*terms), list(zip(ts, tiles)), name, shapes,
                      ((tensor, sympy.Integer(0)),), f"winograd input transform of {tensor}")


def _transformed_kernel(comp, found, alpha, shapes, name) -> Comprehension:
    """``W_α[channels] = Σ_x Π_a G[α_a, x_a]·K[.., x]`` (taps reversed for a convolution)."""
    terms = []
    for x in itertools.product(range(TAPS), repeat=len(alpha)):
        coefficient = sympy.Mul(*(G[a][xa] for a, xa in zip(alpha, x)))
        if coefficient == 0:
            continue
        index = list(found.k.indices)
        for (_, pos, _, _, _, _), xa in zip(found.axes, x):
            index[pos] = TAPS - 1 - xa if found.sign < 0 else xa
        terms.append(coefficient * found.k.base[tuple(index)])
    tensor = str(found.k.base.label)
    return _transform(comp, found, 1, sympy.Add(*terms), [], name, shapes, (),
                      f"winograd kernel transform of {tensor}")


def _transform(comp, found, role, body, spatial, name, shapes, fill, equation):
    """A transformed operand, indexed on its channel axes as the operand's access is (a
    group's ``g·C' + c`` included), then by the tiles: over the channel variables it uses."""
    channel = channel_indices((found.s, found.k)[role], found, role)
    used = [d for d in comp.variables if any(i.has(d.var) for i in channel)]
    extents = {d.var: d.stop for d in used}
    shapes[name] = (*(index_range(i, extents)[1] + 1 for i in channel),
                    *(n for _, n in spatial))
    return Comprehension(output=sympy.IndexedBase(name)[(*channel, *(t for t, _ in spatial))],
                         free=(*used, *spatial), body=body, fill=fill, equation=equation)


def _output_transforms(comp, found, products, ts, spans, channel_free):
    """``O[.., 2t + p] = init + Σ_α Π_a AT[p_a, α_a]·M_α[.., t]`` for every phase ``p``."""
    out_channel = channel_indices(comp.output, found, 2)
    parts = []
    for phase in itertools.product(range(TILE), repeat=len(ts)):
        value = sympy.Add(*(sympy.Mul(*(AT[p][a] for p, a in zip(phase, alpha)))
                            * sympy.IndexedBase(m)[(*out_channel, *ts)]
                            for alpha, m in products))
        index = list(comp.output.indices)
        for (_, _, pos, _, _, _), t, p in zip(found.axes, ts, phase):
            index[pos] = TILE * t + p
        output = comp.output.base[tuple(index)]
        init = None if comp.init is None else comp.init.xreplace(
            {axis[3]: TILE * t + p for axis, t, p in zip(found.axes, ts, phase)})
        counts = [-(-(u - p) // TILE) for (u, _), p in zip(spans, phase)]
        parts.append(Comprehension(
            output=output, free=(*channel_free, *zip(ts, counts)),
            body=value if init is None else init + value,
            equation=f"winograd output transform of {comp.tensor}"))
    return parts


def price(comp: Comprehension, shapes: dict[str, tuple]) -> float:
    """What F(2, 3) costs, in the units of `contract.cost`: its products do 4/9 of the
    multiply-adds per output of a 3x3 window (16 products of a 2x2 tile instead of 36),
    and each transformed element is a pass through memory (32). Infinite but for two
    spatial axes with at least 16 channels each way and 64 tiles (a 16x16 output) per
    image."""
    matched = correlation(comp, shapes)
    if matched is None:
        return math.inf
    comp, found, spans, _ = matched
    if len(spans) != 2 or any(v != TAPS for _, v in spans):
        return math.inf
    spatial = {x for axis in found.axes for x in axis[3:5]}
    reduced = math.prod(estimate(d.stop) for d in comp.reduced if d.var not in spatial)
    free = [d for d in comp.free if d.var not in spatial]
    tiles = math.prod(-(-u // TILE) for u, _ in spans)
    if reduced < 16 or math.prod(estimate(d.stop) for d in free) < 16 * 8 or tiles < 64:
        return math.inf  # small products: their overhead outweighs the multiplies saved
    macs = math.prod(estimate(d.stop) for d in comp.variables)
    moved = 16 * tiles * sum(math.prod(estimate(n) for p, n in
                                       enumerate(shapes[str(a.base.label)])
                                       if p not in [axis[role] for axis in found.axes])
                             for a, role in ((found.s, 0), (comp.output, 2)))
    return macs * 4 / 9 * 1.2 + 32 * moved
