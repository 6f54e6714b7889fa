"""Column products then shifted sums (col2im): a correlation or convolution whose output has
few channels runs as one large matrix product over every tap, then a sum of shifted
columns.

A contraction ``O[.., u] = init + Σ_{channels, v} S[.., s·u + σ·d·v + c]·K[.., e·v + f]``
(per spatial axis, as `spectral.match` finds it with ``strided=True``: a stride, a
dilation, or a phase of a strided input gradient, which reads every other tap) is computed
in the other order:

    P[.., w, j] = Σ_channels S[.., j]·K[.., w]                (a product: rows w, columns j)
    O[.., u]    = init + Σ_v P[.., e·v + f, s·u + σ·d·v + c]   (zero where that leaves P)

``w`` runs over every position of the kernel, so the phases of a strided input gradient,
each reading its own taps, share one product.

The multiply-adds are the same; what changes is the shape of the product. The input
gradient h of a layer with few input channels (an RGB stem, a mono audio layer) is, taken
directly, a product with as many rows as input channels (1 or 3) and the taps in its depth,
over a packing that repeats the output gradient once per tap. Here its rows are the
channels times the taps, its depth the output channels, and the output gradient is read in
place. The shifted sum adds whole rows of P into rows of O: cheap beside the product when
the channels summed are many.
"""

from __future__ import annotations

import math

import sympy

from .contract import cost
from .contract import plan as product
from .ir.affine import index_range
from .ir.comprehension import Comprehension, Dim, Reduction
from .ir.count import points
from .ops import estimate
from .spectral import channel_indices, correlation, fresh_name


SPARE_COLUMNS = 16
"""The most columns a product may make per one its shifted sum reads (per output channel):
a stride-s layer's forward pass reads one column in s per axis. A kernel gradient, whose
taps are the output gradient's positions, would make a column for every pair of an
output and an input position (a 32x32x32 volume's: 4 GiB per pair of channels)."""


def plan(comp: Comprehension, shapes: dict[str, tuple], packed: dict) -> tuple | None:
    """The product into columns and the shifted sum computing ``comp``; None unless it is
    a correlation or convolution that sums over at least one channel. Columns already made
    (the phases of a strided input gradient share one product over every tap) are read
    again."""
    parts = _split(comp, shapes)
    if parts is None:
        return None
    columns, gather = parts
    key = _key(columns)
    if key in packed:
        return (gather.renamed({columns.tensor: packed[key]}),)
    packed[key] = columns.tensor
    return (*(product(columns, shapes, True, packed) or (columns,)), gather)


def price(comp: Comprehension, shapes: dict[str, tuple], packed: dict) -> float:
    """What the product into columns and the shifted sum cost, in the units of
    `contract.cost` (the sum alone where ``packed`` holds the columns already): each
    column element about 16 (written once, read once by the sum, as a transformed element
    of `spectral.price`), and the sum 16 a point it visits (its loops clip each window to
    the columns it reads: rows of P added into rows of O). Infinite where they do not
    apply."""
    trial = dict(shapes)
    parts = _split(comp, trial)
    if parts is None:
        return math.inf
    columns, gather = parts
    gathered = 16 * estimate(points(gather, trial))
    if _key(columns) in packed:
        return gathered
    elements = math.prod(estimate(n) for n in trial[columns.tensor])
    return cost(columns, trial) + gathered + 16 * elements


def _key(columns: Comprehension) -> tuple:
    """What makes two products into columns the same (their names differ)."""
    return ("columns", columns.body, columns.free, columns.reduced)


def _split(comp: Comprehension, shapes) -> tuple[Comprehension, Comprehension] | None:
    """``(P, O)``: the columns' product and the shifted sum, P's shape added to ``shapes``.
    P holds every position of the kernel's spatial axes (``w``), whatever taps ``comp``
    reads of them, and every position of the signal's that it reads (``j``); None where
    that is over `SPARE_COLUMNS` times the pairs of taps and outputs the sum reads."""
    matched = correlation(comp, shapes, strided=True)
    if matched is None:
        return None
    comp, found, _, _ = matched
    taps = [axis[4] for axis in found.axes]
    channel_reduced = [d for d in comp.reduced if d.var not in taps]
    if not channel_reduced:
        return None  # nothing to sum over: the columns would be an outer product
    extents = {d.var: d.stop for d in comp.variables}
    signal, kernel = str(found.s.base.label), str(found.k.base.label)
    s_at, k_at, ws, js = list(found.s.indices), list(found.k.indices), [], []
    for a, (spos, kpos, _, _, _, _) in enumerate(found.axes):
        low, high = index_range(found.s.indices[spos], extents)
        low, high = sympy.Max(low, 0), sympy.Min(high + 1, shapes[signal][spos])
        if not (low.is_number and high.is_number):
            return None
        j, w = (sympy.Symbol(f"{x}{a}", integer=True, nonnegative=True) for x in "jw")
        js.append(Dim(j, low, high))
        ws.append(Dim(w, 0, shapes[kernel][kpos]))
        s_at[spos], k_at[kpos] = j, w
    dims = {d.var: d for d in comp.variables}
    read = math.prod(estimate(dims[x].extent) for axis in found.axes for x in axis[3:5])
    if math.prod(estimate(d.stop - d.start) for d in (*ws, *js)) > SPARE_COLUMNS * read:
        return None
    out_channel = channel_indices(comp.output, found, 2)
    channel_free = [d for d in comp.free if d.var not in {axis[3] for axis in found.axes}]
    index = (*out_channel, *(w.var for w in ws), *(j.var for j in js))
    free = (*channel_free, *ws, *js)
    name = fresh_name(f"{comp.tensor}~cols", shapes)
    columns = Comprehension(
        output=sympy.IndexedBase(name)[index], free=free, reduced=tuple(channel_reduced),
        reduction=Reduction.SUM, body=found.s.base[tuple(s_at)] * found.k.base[tuple(k_at)],
        equation=f"columns of {comp.tensor}: every tap's product over the channels")
    inner = {d.var: d.stop for d in free}
    shapes[name] = tuple(index_range(i, inner)[1] + 1 for i in index)
    shifted = sympy.IndexedBase(name)[
        (*out_channel, *(found.k.indices[axis[1]] for axis in found.axes),
         *(found.s.indices[axis[0]] for axis in found.axes))]
    gather = Comprehension(
        output=comp.output, free=comp.free, reduced=tuple(d for d in comp.reduced
                                                         if d.var in taps),
        reduction=Reduction.SUM, body=shifted, init=comp.init,
        fill=((name, sympy.Integer(0)),), where=comp.where,
        equation=f"{comp.tensor} as a sum of shifted columns")
    return columns, gather
