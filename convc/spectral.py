"""FFT convolution (section 9.8): a contraction whose spatial indices meet as ``u ± v`` runs as
pointwise products of spectra.

A comprehension ``O[.., u] = init + Σ_{.., v} S[.., u + σ·v + c]·K[.., v]`` (per spatial axis,
``u`` free, ``v`` reduced, one sign ``σ`` for all axes) is a correlation (``σ = +1``: the
forward pass, and the kernel gradient g with the output gradient as the kernel) or a
convolution (``σ = -1``: the input gradient h at stride 1). With ``U`` outputs and ``V`` taps
per axis, S is copied into ``U + V - 1`` cells (zero where it leaves its tensor) padded to
an FFT size ``F >= U + V - 1``, so that the circular product has no wrap-around:

    Sp[.., t] = S[.., t + c]            (correlation)  O[.., u] = init + IFFT(Ŝ·conj(K̂))[.., u]
    Sp[.., t] = S[.., t + c - (V - 1)]  (convolution)  O[.., u] = init + IFFT(Ŝ·K̂)[.., u + V - 1]

or, for a convolution with ``c >= 0`` where S itself fits with room for the wrap-around
(the input gradient of an unpadded layer), S transformed where it lies and the window kept
from ``u + c`` (see `_offsets`).

The other (channel) variables keep their places: the spectral product sums over the reduced
ones at every frequency, as a comprehension over the real and imaginary parts (the complex
product written out). The transforms are the runtime's real FFTs (``runtime/fft.c``). Nothing
here knows which op it is: any rank, groups, any roles. An axis whose indices do not meet
as ``u ± v`` (a strided or dilated one, or a group's channel ``c + g``) stays a channel
axis, summed directly at each frequency, provided it never reads the padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from .contract import View, collapses, from_zero, operands, pack, same_constraint
from .ir.affine import affine_terms, index_range, is_proven, strides
from .ir.comprehension import Comprehension, Dim, Reduction
from .ops import estimate

RADICES = (2, 3, 5)


@dataclass(frozen=True)
class Transform:
    """``count`` real FFTs of rank ``len(dims)``, from ``source`` into ``target``.

    Forward: real arrays of ``shape`` (each axis at most ``dims``, zero-padded after its
    end) to half spectra of ``dims[:-1] × (dims[-1]//2 + 1)`` complex numbers, real and
    imaginary parts interleaved. Inverse: half spectra back to real, scaled by
    ``1/prod(dims)``, keeping the window of ``shape`` cells from ``offset`` on each axis.
    Arrays lie one after the other in both tensors."""

    inverse: bool
    dims: tuple[int, ...]
    count: sympy.Expr
    source: str
    target: str
    shape: tuple[int, ...]
    offset: tuple[int, ...]
    outer: tuple = ()

    def describe(self) -> str:
        what = "inverse real FFT" if self.inverse else "real FFT"
        size = "x".join(map(str, self.dims))
        return f"{what} {size} x {self.count}: {self.source} -> {self.target}"


@dataclass(frozen=True)
class Spectra:
    """``c[b][m][n] = Σ_k a[b][m][k]·b[b][k][n]`` (times the conjugate of ``b`` when
    ``conj``) at each of ``count`` frequencies: the runtime's ``convc_spectra_*``. Views are
    in reals; every element of a view is a row of ``count`` interleaved complex numbers."""

    conj: bool
    batch: sympy.Expr
    m: sympy.Expr
    n: sympy.Expr
    k: sympy.Expr
    count: int
    a: View
    b: View
    c: View
    outer: tuple = ()

    def describe(self) -> str:
        how = " (conjugate)" if self.conj else ""
        return (f"spectral product {self.m}x{self.n}x{self.k} x {self.batch} at {self.count} "
                f"frequencies{how}")


def fft_size(n: int) -> int:
    """The least ``2^a·3^b·5^c >= n``: a size the runtime's FFT splits into small radices."""
    best = None
    p2 = 1
    while best is None or p2 < best:
        p3 = p2
        while p3 < (best or math.inf):
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = p5 if best is None else min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def half(dims: tuple[int, ...]) -> tuple[int, ...]:
    """The complex half-spectrum shape of a real transform of ``dims``."""
    return (*dims[:-1], dims[-1] // 2 + 1)


@dataclass(frozen=True)
class Match:
    """How a contraction is a correlation or convolution: the signal ``s`` and kernel ``k``
    accesses, per spatial axis its position in s, k and the output, its free and reduced
    variable and offset ``c``, and the sign ``σ`` of the reduced variable."""

    s: sympy.Indexed
    k: sympy.Indexed
    axes: tuple[tuple[int, int, int, sympy.Symbol, sympy.Symbol, sympy.Expr], ...]
    sign: int


def match(comp: Comprehension, a: sympy.Indexed, b: sympy.Indexed, shapes,
          strided: bool = False) -> Match | None:
    """``comp`` as signal ``a`` and kernel ``b`` (or None when it is not one). ``strided``
    also takes spatial axes read as ``s·u + σ·d·v + c`` in ``a``, ``d·v + e`` in ``b`` and
    ``r·u + f`` in the output (a strided or dilated layer, or a phase of its input
    gradient); the sign is then that of ``σ``."""
    free = {d.var for d in comp.free}
    reduced = {d.var for d in comp.reduced}
    variables = [d.var for d in comp.variables]
    out = comp.output
    axes, signs = [], set()
    for pos, index in enumerate(a.indices):
        coeffs, const = affine_terms(index, variables)
        us = [v for v in coeffs if v in free]
        vs = [v for v in coeffs if v in reduced]
        if len(us) != 1 or len(vs) != 1 or len(coeffs) != 2:
            continue
        u, v = us[0], vs[0]
        kpos = [i for i, e in enumerate(b.indices) if _along(e, v, strided)]
        opos = [i for i, e in enumerate(out.indices) if _along(e, u, strided)]
        unit = strided or (coeffs[u] == 1 and abs(coeffs[v]) == 1)
        if not unit or len(kpos) != 1 or len(opos) != 1:
            continue  # a channel axis (a group's input channel c + g), or summed directly
        axes.append((pos, kpos[0], opos[0], u, v, const))
        signs.add(1 if coeffs[v] > 0 else -1)
    if not axes or len(signs) != 1:
        return None
    spatial = {x for axis in axes for x in axis[3:5]}
    extents = {d.var: d.stop for d in comp.variables}
    for access, skip in ((a, {x[0] for x in axes}), (b, {x[1] for x in axes}),
                         (out, {x[2] for x in axes})):
        for pos, (index, size) in enumerate(zip(access.indices, shapes[str(access.base.label)])):
            if pos in skip:
                continue
            low, high = index_range(index, extents)
            # a channel axis: no spatial variable, and never read in the padding
            if index.free_symbols & spatial or not (is_proven(low >= 0)
                                                    and is_proven(high <= size - 1)):
                return None
    return Match(a, b, tuple(axes), signs.pop())


def _along(index, var, strided: bool) -> bool:
    """Whether ``index`` is ``var`` (``strided``: ``a·var + b``, ``a`` a nonzero number)."""
    if not strided:
        return sympy.expand(index - var) == 0
    coeff = sympy.expand(index).coeff(var)
    return index.free_symbols == {var} and coeff.is_number and coeff != 0 and \
        sympy.expand(index - coeff * var).is_number


def plan(comp: Comprehension, shapes: dict[str, tuple], packed: dict) -> tuple | None:
    """The parts computing ``comp`` through spectra: copies where an operand cannot be
    transformed in place, the transforms, the spectral product, the inverse transform (into
    the output itself when it has no initial value and its layout allows) and the crop; or
    None when ``comp`` is not a correlation or convolution of unit stride and dilation."""
    matched = correlation(comp, shapes)
    if matched is None:
        return None
    comp, found, spans, dims = matched
    convolution = found.sign < 0
    reads, window = _offsets(found, spans, dims, shapes)
    parts: list = []
    spectra = []
    for access, role in ((found.s, 0), (found.k, 1)):
        source, made = _source(comp, found, access, role, dims, spans, reads, shapes, packed)
        parts += made
        spectrum, made = _forward(source, dims, shapes, packed)
        parts += made
        spectra.append(spectrum)
    spectrum = _product_tensor(comp, found, dims, shapes)
    parts.append(_spectra(comp, found, spectra, spectrum, dims, convolution, shapes)
                 or _product(comp, found, spectra, spectrum, dims, convolution))
    count = sympy.Mul(*shapes[spectrum][:-len(dims) - 1])
    outputs = tuple(u for u, _ in spans)
    if comp.init is None and _trailing(comp.output, _positions(found, 2), shapes, outputs):
        parts.append(Transform(True, dims, count, spectrum, comp.tensor, outputs, window))
        return tuple(parts)
    back = fresh_name(f"{comp.tensor}~fft_out", shapes)
    shapes[back] = (*shapes[spectrum][:-len(dims) - 1], *outputs)
    parts.append(Transform(True, dims, count, spectrum, back, outputs, window))
    parts.append(_crop(comp, found, back))
    return tuple(parts)


def correlation(comp: Comprehension, shapes, strided: bool = False):
    """``comp`` counted from 0, how it is a correlation or convolution (``strided``: see
    `match`), the outputs and taps ``(U, V)`` per spatial axis and the transform sizes
    ``F >= U + V - 1``; if it is one with constant extents and no constraint beyond
    reading inside its tensors."""
    comp = from_zero(comp)
    pair = operands(comp)
    if pair is None:
        return None
    found = match(comp, *pair, shapes, strided) or match(comp, *pair[::-1], shapes, strided)
    if found is None:
        return None
    extents = {d.var: d.stop for d in comp.variables}
    if not all(sympy.sympify(extents[x]).is_Integer for axis in found.axes for x in axis[3:5]):
        return None
    bounds = [(i, 0, size) for access in (found.s, found.k)
              for i, size in zip(access.indices, shapes[str(access.base.label)])]
    if not all(any(same_constraint(w, b) for b in bounds) for w in comp.where):
        return None
    spans = [(int(extents[u]), int(extents[v])) for _, _, _, u, v, _ in found.axes]
    return comp, found, spans, tuple(fft_size(u + v - 1) for u, v in spans)


def fresh_name(name: str, shapes) -> str:
    """``name``, or ``name2``, ``name3``… if a tensor has it already."""
    label, i = name, 1
    while label in shapes:
        i += 1
        label = f"{name}{i}"
    return label


def _positions(found: Match, role: int) -> list[int]:
    return [axis[role] for axis in found.axes]


def _trailing(access, spatial: list[int], shapes, extents) -> bool:
    """Whether the spatial axes of ``access`` are its tensor's last axes, in order, each of
    ``extents`` cells, and its other indices cover the leading axes: the tensor is then
    ``count`` arrays one after the other, as the runtime's FFTs read and write them."""
    shape = shapes[str(access.base.label)]
    rank = len(spatial)
    if spatial != list(range(len(shape) - rank, len(shape))):
        return False
    if tuple(int(n) for n in shape[-rank:]) != tuple(extents):
        return False
    return all(isinstance(i, sympy.Symbol) for i in access.indices[:-rank]) and \
        len(set(access.indices[:-rank])) == len(shape) - rank


def _offsets(found: Match, spans, dims, shapes) -> tuple[tuple, tuple]:
    """Per spatial axis, where the signal's transform starts reading it and where the
    output's window starts in the inverse transform.

    A correlation reads from ``c`` and keeps the window from 0. A convolution reads from
    ``c - (V - 1)`` and keeps it from ``V - 1``; or, when ``c >= 0`` and the signal and the
    window both fit in ``F`` with room for the ``V - 1`` cells that wrap around (``S + V - 1
    <= F`` and ``c + U <= F``), reads the signal from 0, in place, and keeps the window from
    ``c``: the cells that wrap around are the zeros past the signal's end (a full
    convolution, the input gradient of an unpadded layer)."""
    signal = shapes[str(found.s.base.label)]
    reads, window = [], []
    for (pos, _, _, _, _, c), (u, v), f in zip(found.axes, spans, dims):
        if found.sign > 0:
            reads.append(c)
            window.append(0)
        elif c >= 0 and int(signal[pos]) + v - 1 <= f and c + u <= f:
            reads.append(0)
            window.append(c)
        else:
            reads.append(c - (v - 1))
            window.append(v - 1)
    return tuple(reads), tuple(window)


def _source(comp, found: Match, access, role: int, dims, spans, reads, shapes, packed):
    """What the forward transform of an operand reads: its tensor, when it needs no shift
    and no cut (a kernel, or a signal read from index 0), else a zero-padded copy."""
    tensor = str(access.base.label)
    spatial = _positions(found, role)
    taps = [v for _, v in spans]
    shift = list(reads) if role == 0 else [0] * len(taps)
    whole = tuple(int(shapes[tensor][p]) for p in spatial)
    fits = (whole == tuple(taps)) if role == 1 else all(n <= f for n, f in zip(whole, dims))
    if fits and not any(shift) and _trailing(access, spatial, shapes, whole):
        return (tensor, whole), []
    channel = [p for p in range(len(access.indices)) if p not in spatial]
    qs = [sympy.Symbol(f"q{i}", integer=True) for i in range(len(channel))]
    ts = [sympy.Symbol(f"t{a}", integer=True) for a in range(len(dims))]
    index = list(access.indices)
    for p, q in zip(channel, qs):
        index[p] = q
    keep = []
    for p, t, sh, tap in zip(spatial, ts, shift, taps):
        index[p] = t + sh
        if role == 1 and int(shapes[tensor][p]) != tap:  # the tensor is longer than the taps
            keep.append(t < tap)
    body = access.base[tuple(index)]
    if keep:
        body = sympy.Piecewise((body, sympy.And(*keep)), (0, True))
    box = [Dim(q, 0, shapes[tensor][p]) for q, p in zip(qs, channel)]
    box += [Dim(t, 0, n) for t, n in zip(ts, dims)]
    label, made = pack(comp, "fft_in", box, body, ((tensor, sympy.Integer(0)),), frozenset(),
                       shapes, packed, f"pads {tensor} to {'x'.join(map(str, dims))} for FFTs")
    return (label, dims), made


def _forward(source, dims, shapes, packed):
    """The half spectra of ``source`` (a tensor and the shape of its arrays), transformed
    once per module."""
    label, shape = source
    key = ("rfft", label, dims)
    if key in packed:
        return packed[key], []
    target = fresh_name(f"{label}~spectrum", shapes)  # another size may have taken the name
    channel = shapes[label][:-len(dims)]
    shapes[target] = (*channel, *half(dims), 2)
    packed[key] = target
    zeros = (0,) * len(dims)
    return target, [Transform(False, dims, sympy.Mul(*channel), label, target, shape, zeros)]


def channel_indices(access, found: Match, role: int) -> list:
    """The indices of ``access`` on its channel (non-spatial) axes."""
    spatial = _positions(found, role)
    return [i for p, i in enumerate(access.indices) if p not in spatial]


def _product_tensor(comp, found: Match, dims, shapes) -> str:
    """The output's spectra: its channel axes, then the half spectrum, then (re, im)."""
    target = fresh_name(f"{comp.tensor}~fft_product", shapes)
    out_spatial = _positions(found, 2)
    channel_shape = [n for p, n in enumerate(shapes[comp.tensor]) if p not in out_spatial]
    shapes[target] = (*channel_shape, *half(dims), 2)
    return target


def _spectra(comp, found: Match, spectra, target, dims, convolution, shapes):
    """The spectral product as the runtime's batched complex products, when the channel
    variables sort into rows (the signal's and the output's), columns (the kernel's and
    the output's), depth (summed: the signal's and the kernel's) and a batch (all three's,
    or else the outer of two row or column variables that do not walk one stride), each
    group one stride in every tensor; else None."""
    spatial = {x for axis in found.axes for x in axis[3:5]}
    rank = len(dims)
    accesses = [sympy.IndexedBase(label)[(*channel_indices(access, found, role), *[0] * (rank + 1))]
                for label, access, role in ((spectra[0], found.s, 0), (spectra[1], found.k, 1),
                                            (target, comp.output, 2))]
    groups = {"batch": [], "m": [], "n": [], "k": []}
    roles = {(1, 1, 1, 0): "batch", (1, 0, 1, 0): "m", (0, 1, 1, 0): "n", (1, 1, 0, 1): "k"}
    reduced = {d.var for d in comp.reduced}
    variables = [d.var for d in comp.variables if d.var not in spatial]
    for v in variables:
        key = (*(int(any(i.has(v) for i in a.indices)) for a in accesses), int(v in reduced))
        if key not in roles:
            return None
        groups[roles[key]].append(v)
    views = _spectra_views(accesses, groups, variables, comp, shapes)
    for group in ("m", "n"):
        if views is None and not groups["batch"] and len(groups[group]) > 1:
            groups["batch"], groups[group] = groups[group][:1], groups[group][1:]
            views = _spectra_views(accesses, groups, variables, comp, shapes)
    if views is None:
        return None
    extents = {d.var: d.stop for d in comp.variables}
    size = {g: sympy.Mul(*(extents[v] for v in vs)) for g, vs in groups.items()}
    return Spectra(not convolution, size["batch"], size["m"], size["n"], size["k"],
                   math.prod(half(dims)), *views)


def _spectra_views(accesses, groups, variables, comp, shapes):
    """Each spectrum as a view (batch, row and column strides), or None if a group of
    variables does not walk one stride in it."""
    extents = {d.var: d.stop for d in comp.variables}
    views = []
    for access, rows, cols in zip(accesses, ("m", "k", "m"), ("k", "n", "n")):
        coeffs, const = strides(access, shapes[str(access.base.label)], variables)
        if not all(collapses(groups[g], coeffs, extents) for g in ("batch", rows, cols)
                   if groups[g] and any(coeffs.get(v, 0) for v in groups[g])):
            return None
        step = {g: coeffs.get(groups[g][-1], 0) if groups[g] else 0 for g in groups}
        views.append(View(str(access.base.label), const, step["batch"], step[rows], step[cols]))
    return views


def _product(comp, found: Match, spectra, target, dims, convolution: bool):
    """``Ô = Σ_channels Ŝ·K̂`` (a convolution) or ``Ŝ·conj(K̂)`` (a correlation) at every
    frequency, as a comprehension: real and imaginary parts by a free variable ``r``."""
    spatial_vars = {x for axis in found.axes for x in axis[3:5]}
    fs = [sympy.Symbol(f"f{a}", integer=True, nonnegative=True) for a in range(len(dims))]
    r = sympy.Symbol("r", integer=True, nonnegative=True)

    def at(access, role, spectrum, part):
        return sympy.IndexedBase(spectrum)[(*channel_indices(access, found, role), *fs, part)]

    s0, s1 = at(found.s, 0, spectra[0], 0), at(found.s, 0, spectra[0], 1)
    kr, ki = at(found.k, 1, spectra[1], r), at(found.k, 1, spectra[1], 1 - r)
    if convolution:   # re: s0·k0 - s1·k1, im: s0·k1 + s1·k0
        body = s0 * kr + (2 * r - 1) * s1 * ki
    else:             # times the conjugate: re: s0·k0 + s1·k1, im: s1·k0 - s0·k1
        body = (1 - 2 * r) * s0 * kr + s1 * ki
    free = [d for d in comp.free if d.var not in spatial_vars]
    # the real or imaginary part outside: the innermost loop walks the frequencies
    free += [Dim(r, 0, 2)] + [Dim(f, 0, n) for f, n in zip(fs, half(dims))]
    reduced = tuple(d for d in comp.reduced if d.var not in spatial_vars)
    output = sympy.IndexedBase(target)[(*channel_indices(comp.output, found, 2), *fs, r)]
    return Comprehension(output=output, free=tuple(free), reduced=reduced,
                         reduction=Reduction.SUM if reduced else Reduction.NONE, body=body,
                         equation=f"the spectral product of {comp.tensor}")


def _crop(comp, found: Match, back: str):
    """``O = init + the inverse transform`` (already shifted and cut to the outputs)."""
    out_spatial = _positions(found, 2)
    channel = [i for p, i in enumerate(comp.output.indices) if p not in out_spatial]
    value = sympy.IndexedBase(back)[(*channel, *(axis[3] for axis in found.axes))]
    body = value if comp.init is None else comp.init + value
    return Comprehension(output=comp.output, free=comp.free, body=body,
                         equation=f"{comp.tensor} from its spectrum")


def price(comp: Comprehension, shapes: dict[str, tuple]) -> float:
    """What spectra cost, in the units of `contract.cost` (a multiply-add in a full GEMM
    tile): a copied or transformed element about 16 (half a packed one's: the transforms
    work in cache), a transform's butterflies about 2·P·log2(P) per array of P points, and
    a complex multiply-add of the spectral product about 40 (as measured against the
    products and blocked sums of L1, L2, L7 and L10 of `convc.bench`); infinite where they
    do not apply, or where the transformed axes are not the last of every tensor, in order
    (the copies would transpose)."""
    matched = correlation(comp, shapes)
    if matched is None:
        return math.inf
    comp, found, _, dims = matched
    for access, role in ((found.s, 0), (found.k, 1), (comp.output, 2)):
        spatial = _positions(found, role)
        if spatial != list(range(len(access.indices) - len(spatial), len(access.indices))):
            return math.inf  # the copies would transpose: rows of a column each, slowly
    points, spectrum = math.prod(dims), math.prod(half(dims))
    spatial = {x for axis in found.axes for x in axis[3:5]}
    arrays = 0.0
    for access, role in ((found.s, 0), (found.k, 1), (comp.output, 2)):
        channel = [n for p, n in enumerate(shapes[str(access.base.label)])
                   if p not in _positions(found, role)]
        arrays += math.prod(estimate(n) for n in channel)
    channels = math.prod(estimate(d.stop) for d in comp.variables if d.var not in spatial)
    fft = arrays * (16 * (points + 2 * spectrum) + 2 * points * math.log2(max(points, 2)))
    return fft + 40 * channels * spectrum
