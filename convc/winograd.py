"""Winograd's minimal filtering (section 9.8) per axis: F(2, 3), a 3-tap correlation of unit
stride computing two outputs from four inputs with four multiplications instead of six, and
F(3, 2), three outputs of two taps with four instead of six.

Along each spatial axis the output is cut into tiles of 2, ``i = 2·t + p``; per tile

    y[2t + p] = Σ_α AT[p, α] · (G·g)[α] · (BT·d_t)[α],   d_t = the 4 inputs from 2t

(``BT``, ``G``, ``AT`` are Lavin and Gray's matrices; over several axes their tensor
products). So a contraction ``O = init + Σ_{channels, v} S[.., u + v + c]·K[.., v]`` with 3
taps on every spatial axis becomes, for each of the 4^rank points α of the transformed tile,
a contraction over the channels alone (a batch of matrix products, `contract.plan`):

    U_α[.., t] = Σ_x BT[α, x]·S[.., 2t + x + c]      W_α[..] = Σ_x G[α, x]·K[.., x]
    M_α[.., t] = Σ_channels U_α·W_α                  O[.., 2t + p] = init + Σ_α AT[p, α]·M_α

A convolution (the input gradient h, ``u - v``) is the correlation with the kernel's taps
reversed. A kernel gradient g is a correlation with 3 outputs per axis and as many taps as
the output gradient ``K`` has points: its taps are cut into tiles of 2, ``v = 2·t + q``, and
each tile is F(3, 2), whose matrices are F(2, 3)'s with ``AT`` and ``G`` swapped and
transposed (``BT`` is the same); the tiles join the channels in the sum:

    U_α[.., t] = Σ_x BT[α, x]·S[.., 2t + x + c]      W_α[.., t] = Σ_q AT[q, α]·K[.., 2t + q]
    M_α[..] = Σ_{channels, t} U_α·W_α                O[.., p] = init + Σ_α G[α, p]·M_α

The transforms add and subtract, and G halves: float32 results differ from the direct sums
by a few units of the last place of the largest term (tests/test_winograd.py measures it).
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
SCHEMES = {False: "winograd F(2, 3)", True: "winograd F(3, 2)"}  # by whether taps are tiled


def plan(comp: Comprehension, shapes: dict[str, tuple], packed: dict) -> tuple | None:
    """The parts computing ``comp`` by Winograd on every spatial axis: the input and kernel
    transforms, one product over the channels per transformed point, and the output
    transform per output phase (F(2, 3)) or point (F(3, 2)); None unless ``comp`` is a
    correlation or convolution with 3 taps on each of its one or two spatial axes, or a
    correlation with 3 outputs on each (a kernel gradient), and no other constraint."""
    matched = correlation(comp, shapes)
    if matched is None:
        return None
    comp, found, spans, _ = matched
    taps = _taps_tiled(found, spans, shapes)
    if len(spans) > 2 or taps is None:
        return None  # three axes would take 64 products of small matrices
    rank = len(spans)
    tiles = [-(-(v if taps else u) // TILE) for u, v in spans]
    ts = [sympy.Symbol(f"t{a}", integer=True, nonnegative=True) for a in range(rank)]
    steps, products = [], []
    for alpha in itertools.product(range(4), repeat=rank):
        tag = "".join(map(str, alpha))
        u = _transformed_input(comp, found, alpha, ts, tiles, shapes, fresh_name(
            f"{comp.tensor}~wino_in{tag}", shapes), taps)
        w = _transformed_kernel(comp, found, alpha, ts, tiles, shapes,
                                fresh_name(f"{comp.tensor}~wino_k{tag}", shapes), taps)
        m = _product(comp, found, u, w, list(zip(ts, tiles)), taps, shapes, tag)
        steps.append((u, w, *(product(m, shapes, True, packed) or (m,))))
        products.append((alpha, m.tensor))
    channel_free, _ = _channel_dims(comp, found)
    outputs = _output_points(comp, found, products, channel_free) if taps else \
        _output_transforms(comp, found, products, ts, spans, channel_free)
    if taps:  # a kernel gradient's transforms side by side: 15.1 ms on L3, interleaved 17.9
        return (*(s[0] for s in steps), *(s[1] for s in steps),
                *(p for s in steps for p in s[2:]), *outputs)
    return (*(p for s in steps for p in s), *outputs)


def _product(comp, found, u, w, tiled, taps, shapes, tag) -> Comprehension:
    """``M_α[.., t] = Σ_channels U_α·W_α`` (F(2, 3)), ``M_α[..] = Σ_{channels, t}
    U_α·W_α`` (F(3, 2))."""
    name = fresh_name(f"{comp.tensor}~wino_m{tag}", shapes)
    ts = [t for t, _ in tiled]
    channel_free, channel_reduced = _channel_dims(comp, found)
    shapes[name] = (*[n for p, n in enumerate(shapes[comp.tensor])
                      if p not in [axis[2] for axis in found.axes]],
                    *([] if taps else [n for _, n in tiled]))
    return Comprehension(
        output=sympy.IndexedBase(name)[(*channel_indices(comp.output, found, 2),
                                        *([] if taps else ts))],
        free=(*channel_free, *([] if taps else tiled)),
        reduced=(*channel_reduced, *(tiled if taps else [])),
        reduction=Reduction.SUM if channel_reduced or taps else Reduction.NONE,
        body=sympy.IndexedBase(u.tensor)[(*_channels(comp, found, 0, taps), *ts)]
        * sympy.IndexedBase(w.tensor)[(*_channels(comp, found, 1, taps), *(ts if taps else []))],
        equation=f"{SCHEMES[taps]} product {tag} of {comp.tensor}")


def _channel_dims(comp: Comprehension, found) -> tuple[list, list]:
    """The free and the reduced variables of ``comp`` that are not spatial."""
    return ([d for d in comp.free if d.var not in {axis[3] for axis in found.axes}],
            [d for d in comp.reduced if d.var not in {axis[4] for axis in found.axes}])


def _taps_tiled(found, spans, shapes) -> bool | None:
    """Whether the correlation ``found`` runs as F(3, 2) on tiles of its taps (3 outputs
    per axis), as F(2, 3) on tiles of its outputs (3 taps per axis), or not at all (None).
    F(3, 2) takes correlations whose kernel ends where its taps do (the zero past the last
    tap is then the tensor's fill)."""
    if all(v == TAPS for _, v in spans):
        return False
    kernel = shapes[str(found.k.base.label)]
    if found.sign > 0 and all(u == TAPS and kernel[axis[1]] == v
                              for (u, v), axis in zip(spans, found.axes)):
        return True
    return None


def _transformed_input(comp, found, alpha, ts, tiles, shapes, name, taps) -> Comprehension:
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
                      ((tensor, sympy.Integer(0)),), f"{SCHEMES[taps]} input transform of {tensor}",
                      taps)


def _transformed_kernel(comp, found, alpha, ts, tiles, shapes, name, taps) -> Comprehension:
    """F(2, 3): ``W_α[channels] = Σ_x Π_a G[α_a, x_a]·K[.., x]`` (taps reversed for a
    convolution); F(3, 2): ``W_α[channels, t] = Σ_q Π_a AT[q_a, α_a]·K[.., 2·t_a + q_a]``
    (zero outside)."""
    terms = []
    for x in itertools.product(range(TILE if taps else TAPS), repeat=len(alpha)):
        coefficient = sympy.Mul(*((AT[xa][a] if taps else G[a][xa]) for a, xa in zip(alpha, x)))
        if coefficient == 0:
            continue
        index = list(found.k.indices)
        for (_, pos, _, _, _, _), t, xa in zip(found.axes, ts, x):
            index[pos] = TILE * t + xa if taps else TAPS - 1 - xa if found.sign < 0 else xa
        terms.append(coefficient * found.k.base[tuple(index)])
    tensor = str(found.k.base.label)
    fill = ((tensor, sympy.Integer(0)),) if taps else ()
    return _transform(comp, found, 1, sympy.Add(*terms), list(zip(ts, tiles)) if taps else [],
                      name, shapes, fill, f"{SCHEMES[taps]} kernel transform of {tensor}", taps)


def _transform(comp, found, role, body, spatial, name, shapes, fill, equation, taps):
    """A transformed operand, indexed on its channel axes as the operand's access is (a
    group's ``g·C' + c`` included; in the order of `_channels`), then by the tiles: over
    the channel variables it uses."""
    channel = _channels(comp, found, role, taps)
    used = [d for d in comp.variables if any(i.has(d.var) for i in channel)]
    extents = {d.var: d.stop for d in used}
    shapes[name] = (*(index_range(i, extents)[1] + 1 for i in channel),
                    *(n for _, n in spatial))
    return Comprehension(output=sympy.IndexedBase(name)[(*channel, *(t for t, _ in spatial))],
                         free=(*used, *spatial), body=body, fill=fill, equation=equation)


def _channels(comp, found, role, taps) -> list:
    """The channel indices of operand ``role`` in the order its transform stores them: as
    its access has them, but under F(3, 2) those summed over last, next to the tiles, so
    that each product sums over one run of memory (the images and tiles of a kernel
    gradient: one matrix product instead of one per image)."""
    channel = channel_indices((found.s, found.k)[role], found, role)
    if not taps:
        return channel
    reduced = {d.var for d in comp.reduced}
    return sorted(channel, key=lambda i: bool(i.free_symbols & reduced))


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
            equation=f"{SCHEMES[False]} output transform of {comp.tensor}"))
    return parts


def _output_points(comp, found, products, channel_free):
    """``O[.., p] = init + Σ_α Π_a G[α_a, p_a]·M_α[..]`` for every output point ``p``."""
    out_channel = channel_indices(comp.output, found, 2)
    parts = []
    for point in itertools.product(range(TAPS), repeat=len(found.axes)):
        value = sympy.Add(*(sympy.Mul(*(G[a][p] for p, a in zip(point, alpha)))
                            * sympy.IndexedBase(m)[tuple(out_channel)]
                            for alpha, m in products))
        index = list(comp.output.indices)
        for (_, _, pos, _, _, _), p in zip(found.axes, point):
            index[pos] = p
        init = None if comp.init is None else comp.init.xreplace(
            {axis[3]: p for axis, p in zip(found.axes, point)})
        parts.append(Comprehension(
            output=comp.output.base[tuple(index)], free=tuple(channel_free),
            body=value if init is None else init + value,
            equation=f"{SCHEMES[True]} output transform of {comp.tensor}"))
    return parts


def price(comp: Comprehension, shapes: dict[str, tuple]) -> float:
    """What Winograd costs, in the units of `contract.cost`: its products do 4/9 of the
    multiply-adds of a 3x3 window (16 products of a 2x2 tile instead of 36), and each
    transformed element is a pass through memory (32). Infinite but for two spatial axes,
    at least 128 outputs per point on the channel axes, products at least 16 deep and 64
    tiles (a 16x16 output, or output gradient for F(3, 2)) per image."""
    matched = correlation(comp, shapes)
    if matched is None:
        return math.inf
    comp, found, spans, _ = matched
    taps = _taps_tiled(found, spans, shapes)
    if len(spans) != 2 or taps is None:
        return math.inf
    spatial = {x for axis in found.axes for x in axis[3:5]}
    reduced = math.prod(estimate(d.stop) for d in comp.reduced if d.var not in spatial)
    free = math.prod(estimate(d.stop) for d in comp.free if d.var not in spatial)
    tiles = math.prod(-(-(v if taps else u) // TILE) for u, v in spans)
    if reduced * (tiles if taps else 1) < 16 or free < 16 * 8 or tiles < 64:
        return math.inf  # small products: their overhead outweighs the multiplies saved
    macs = math.prod(estimate(d.stop) for d in comp.variables)
    moved = 16 * tiles * sum(math.prod(estimate(n) for p, n in
                                       enumerate(shapes[str(a.base.label)])
                                       if p not in [axis[role] for axis in found.axes])
                             for a, role in ((found.s, 0), (found.k, 1) if taps
                                             else (comp.output, 2)))
    return macs * 4 / 9 * 1.2 + 32 * moved
