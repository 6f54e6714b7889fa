"""Contractions: a sum of products of two tensors, run as packing and one matrix product.

A comprehension ``O[free] = init + Σ_{reduced} A[a]·B[b]`` with affine indices is a batch of
matrix products once its variables are sorted by where they occur:

* **M** (rows): free variables that only A reads;
* **N** (columns): free variables that only B reads;
* **K** (depth): the reduced variables, which both must read;
* **outer**: the other free variables (a group ``g`` that both read, or an image ``n``
  whose rows and columns do not collapse to one stride in the output), looped around the
  product; one of them becomes the product's batch. A reduced variable can be the batch
  too (the images of a kernel gradient): the products then add into one C.

Every affine access is a strided view of its tensor: the flat offset is
``Σ coefficient·variable + constant``. An operand is used in place when its row and column
variables each collapse to a single stride and it provably stays inside its tensor;
otherwise it is *packed*: a comprehension copies it into a matrix of its own, reading a
padded copy of the tensor (made once, with the fill value 0 around it) where the access can
leave it, so that the packing copies whole rows with no test. For a convolution the packed
input is the im2col matrix of the forward pass, which g (9.11) reads again, and the packed
output gradient is the gather form of h (9.13); the kernel is used in place. Nothing here
knows which op it is.

`plan` returns the comprehensions to run (the initial values, the packs) and the `Gemm`
that the runtime's ``convc_gemm_*`` computes, or None when the comprehension is not a
contraction, or a rough cost model says direct loops are cheaper.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import sympy

from .ir.affine import affine_terms, index_range, is_proven, strides
from .ir.comprehension import Comprehension, Dim, Reduction
from .ops import estimate

ALGORITHMS = ("auto", "gemm", "direct", "fft", "winograd", "col2im", "blocked", "separable")
"""How contractions run: chosen by cost, always as products where possible, never,
through spectra where they are correlations or convolutions of unit stride (`spectral`),
by Winograd's F(2, 3) or F(3, 2) where those have 3 taps or 3 outputs per axis
(`winograd`), as one product over every tap and a sum of shifted columns (`col2im`), as
direct sums with their outputs in vector registers (`blocked`), or, for a constant kernel
of rank 1, as one 1-D pass per axis (`convc.rank`, a rewrite of the graph); where one does
not apply, as auto."""

MIN_EXTENT = {"m": 1, "n": 8, "k": 8}
"""The least rows, columns and depth per product for which packing pays over direct loops."""

MAX_PACKED = 2**28
"""The most elements (at a batch of 64) a contraction may pack (1 GiB of float): beyond,
direct loops, which need no memory of their own."""


@dataclass(frozen=True)
class View:
    """Elements ``(b, i, j)`` of a matrix batch at ``tensor[offset + b·batch + i·rows + j·cols]``
    (flat, row-major); ``offset`` may use the loops around the product."""

    tensor: str
    offset: sympy.Expr
    batch: sympy.Expr
    rows: sympy.Expr
    cols: sympy.Expr


@dataclass(frozen=True)
class Gemm:
    """``c[b] += a[b]·b[b]`` for ``b < batch.extent``, inside loops over ``outer``:
    ``a`` is m×k, ``b`` k×n, ``c`` m×n. Unless ``accumulate``, ``c`` starts at zero: the
    product stores (``=``) where it would add."""

    outer: tuple[Dim, ...]
    batch: Dim | None
    m: sympy.Expr
    n: sympy.Expr
    k: sympy.Expr
    a: View
    b: View
    c: View
    accumulate: bool = True

    def describe(self) -> str:
        batch = f" x {self.batch.extent} (batch {self.batch.var})" if self.batch else ""
        loops = "".join(f" for {d}" for d in self.outer)
        packed = [v.tensor for v in (self.a, self.b) if re.search(r"~[ab]\d*$", v.tensor)]
        how = f"; packed {', '.join(packed)}" if packed else ""
        return f"gemm {self.m}x{self.n}x{self.k}{batch}{loops}{how}"


Part = Comprehension | Gemm


def plan(comp: Comprehension, shapes: dict[str, tuple], force: bool = False,
         packed: dict | None = None) -> tuple[Part, ...] | None:
    """The parts that compute ``comp`` as a contraction, or None.

    ``shapes`` gives every tensor's shape; the packed matrices are added to it. ``force``
    takes a contraction of any size (by default one too small to pay stays direct).
    ``packed`` remembers the packings made so far (across the comprehensions of a
    module), so that one needed again is read, not made again.
    """
    packed = {} if packed is None else packed
    comp = from_zero(comp)
    pair = operands(comp)
    if pair is None:
        return None
    least = {key: 1 for key in MIN_EXTENT} if force else MIN_EXTENT
    variants = [r for a, b in (pair, pair[::-1])
                for r in _roles(comp, a, b, shapes, least)]
    if not variants:
        return None
    best = min(variants, key=lambda r: r.cost(comp, shapes))
    return best.parts(comp, shapes, packed) if force or best.pays(comp, shapes) else None


def cost(comp: Comprehension, shapes: dict[str, tuple]) -> float:
    """The cost-model time (multiply-adds in a full GEMM tile) of the way `plan` would run
    a contraction: the best products, or direct loops (4 per multiply-add for a short
    window that adds whole rows, vectorised; else 32, or 96 for a gathered sum)."""
    comp = from_zero(comp)
    pair = operands(comp)
    if pair is None:
        return math.inf
    best = direct_rate(comp, shapes) * math.prod(estimate(d.stop) for d in comp.variables)
    for a, b in (pair, pair[::-1]):
        for r in _roles(comp, a, b, shapes, MIN_EXTENT):
            if r._figures(comp, shapes)[4] <= MAX_PACKED:
                best = min(best, r.cost(comp, shapes))
    return best


def direct_rate(comp: Comprehension, shapes) -> float:
    """What a multiply-add costs in direct loops, in multiply-adds of a full GEMM tile: 2
    for a long sum into a few outputs held in vector registers (a small dense layer: one
    load of the input per output), 4 for a short window summed along rows of 64 or more
    (vectorised; a shorter row pays its loop overhead in proportion), 96 for a gathered sum
    bounded by its constraints, else 32."""
    from .reductions import vector_row  # it builds loop nests, whose IR holds our Gemm

    found = vector_row(comp, shapes)
    if found is None:
        return 96 if comp.where else 32
    form, row = found
    return (2 if form == "registers" else 4) * max(1.0, 64 / row)


def from_zero(comp: Comprehension) -> Comprehension:
    """Every variable counted from 0: ``1 <= u < 29`` becomes ``u < 28`` with ``u + 1``
    written for ``u`` (a phase of a strided input gradient starts past the padding).
    Constraints on a free variable alone become its bounds first (see `_narrowed`)."""
    comp = _narrowed(comp)
    loop_vars = {d.var for d in comp.variables}
    shift = {d.var: d.var + d.start for d in comp.variables
             if d.start != 0 and not d.start.free_symbols & loop_vars}
    if not shift:
        return comp

    def sub(e):
        return None if e is None else e.xreplace(shift)

    def dims(ds):
        return tuple(Dim(d.var, 0, d.stop - d.start) if d.var in shift else
                     Dim(d.var, sub(d.start), sub(d.stop)) for d in ds)

    return replace(comp, output=sub(comp.output), free=dims(comp.free),
                   reduced=dims(comp.reduced), body=sub(comp.body), init=sub(comp.init),
                   inside=frozenset(sub(a) for a in comp.inside),
                   where=tuple((sub(e), lo, hi) for e, lo, hi in comp.where))


def _narrowed(comp: Comprehension) -> Comprehension:
    """A constraint on one free variable alone, ``lo <= ±v + c < hi`` (an output access
    offset by the padding, as an input gradient's is), as that variable's bounds: a product
    then covers only the points computed and writes no element outside its output."""
    free = {d.var: d for d in comp.free}
    bounds, where = {}, []
    for e, lo, hi in comp.where:
        coeffs, const = affine_terms(e, list(free))
        v, a = next(iter(coeffs.items())) if len(coeffs) == 1 else (None, 0)
        alone = v is not None and abs(a) == 1 and e.free_symbols == {v}
        if not (alone and (lo - const).is_number and (hi - const).is_number):
            where.append((e, lo, hi))
            continue
        low, high = (lo - const, hi - const) if a == 1 else (const - hi + 1, const - lo + 1)
        start, stop = bounds.get(v, (free[v].start, free[v].stop))
        bounds[v] = (sympy.Max(start, low), sympy.Min(stop, high))
    if not bounds:
        return comp
    dims = tuple(Dim(d.var, *bounds[d.var]) if d.var in bounds else d for d in comp.free)
    dims = tuple(Dim(d.var, d.start, sympy.Max(d.start, d.stop)) for d in dims)
    return replace(comp, free=dims, where=tuple(where))


def operands(comp: Comprehension):
    """``(A, B)`` when the body is a product of two accesses under a plain sum."""
    if comp.reduction is not Reduction.SUM or comp.final is not None or not comp.reduced:
        return None
    if not isinstance(comp.body, sympy.Mul) or len(comp.body.args) != 2:
        return None
    if not all(isinstance(f, sympy.Indexed) for f in comp.body.args):
        return None
    loop_vars = {d.var for d in comp.variables}
    for d in comp.variables:  # a rectangular box from 0: strides say everything
        if d.start != 0 or d.stop.free_symbols & loop_vars:
            return None
    for access in comp.body.args:
        if access not in comp.inside and comp.fill_of(str(access.base.label)) not in (None, 0):
            return None
    return comp.body.args


def _uses(access: sympy.Indexed, variables) -> set:
    return {v for v in variables if any(i.has(v) for i in access.indices)}


def collapses(group: list, coeffs: dict, extents: dict) -> bool:
    """Whether ``group`` (outermost first) walks one stride: each stride is the next one's
    times its extent."""
    return all(sympy.expand(coeffs.get(u, 0) - coeffs.get(v, 0) * extents[v]) == 0
               for u, v in zip(group, group[1:])) and all(coeffs.get(v, 0) != 0 for v in group)


def _inner_run(group: list, coeffs: dict, extents: dict) -> list:
    """The longest innermost run of ``group`` that collapses to one stride."""
    for i in range(len(group)):
        if collapses(group[i:], coeffs, extents):
            return group[i:]
    return []


@dataclass(frozen=True)
class _Roles:
    """One way to see a contraction as products: ``batch`` is an outer variable, or a
    reduced one taken out of K (the products of its values then add into one C)."""

    a: sympy.Indexed
    b: sympy.Indexed
    m: tuple
    n: tuple
    k: tuple
    outer: tuple
    batch: sympy.Symbol | None

    def cost(self, comp: Comprehension, shapes) -> float:
        """A rough time: a packed element costs about 32 multiply-adds (a pass through
        memory), and a multiply-add more when its register tile is part empty or K short."""
        m, n, k, macs, packed = self._figures(comp, shapes)
        fill = m / (-(-m // 8) * 8) * n / (-(-n // 32) * 32) * k / (k + 8)
        out_coeffs, _ = strides(comp.output, shapes[comp.tensor], [d.var for d in comp.variables])
        fill *= 1.0 if _last(out_coeffs, self.n) == 1 else 0.5  # C's rows are contiguous
        return 32 * packed + macs / fill

    def pays(self, comp: Comprehension, shapes) -> bool:
        """Whether the products beat direct loops (`direct_rate`); and never when the
        packing is huge (the im2col of a large kernel over
        a large image would take gigabytes)."""
        _, _, _, macs, packed = self._figures(comp, shapes)
        direct = direct_rate(comp, shapes) * macs
        return packed <= MAX_PACKED and self.cost(comp, shapes) < direct

    def _figures(self, comp: Comprehension, shapes):
        """Rows, columns, depth, multiply-adds and packed elements, at a batch of 64."""
        extents = {d.var: estimate(d.stop) for d in comp.variables}
        size = lambda group: math.prod(extents[v] for v in group)  # noqa: E731
        m, n, k = size(self.m), size(self.n), size(self.k)
        macs = m * n * k * size(self.outer) * (extents[self.batch] if self.k_batch else 1)
        packed = 0.0
        for access, rows, cols in ((self.a, self.m, self.k), (self.b, self.k, self.n)):
            used = _uses(access, extents)
            constrained = any(e.free_symbols & set(extents) <= used for e, _, _ in comp.where)
            if constrained or not _direct(comp, access, rows, cols, shapes):
                around = (*self.outer, self.batch) if self.k_batch else self.outer
                packed += size([v for v in (*around, *rows, *cols) if v in used])
        return m, n, k, macs, packed

    @property
    def k_batch(self) -> bool:
        return self.batch is not None and self.batch not in self.outer

    def parts(self, comp: Comprehension, shapes, packed) -> tuple[Part, ...]:
        extents = {d.var: d.stop for d in comp.variables}
        dims = {d.var: d for d in comp.variables}
        out_coeffs, out_const = strides(comp.output, shapes[comp.tensor], list(extents))
        pre: list[Comprehension] = []
        if comp.init is not None and comp.init != comp.output:
            pre.append(Comprehension(comp.output, comp.free,
                                     comp.init, fill=comp.fill, inside=comp.inside))
        batch = self.batch
        loops = tuple(dims[v] for v in self.outer if v != batch)
        shared = (*self.outer, batch) if self.k_batch else self.outer
        views = []
        for name, access, rows, cols in (("a", self.a, self.m, self.k),
                                         ("b", self.b, self.k, self.n)):
            # each operand applies every constraint on its own variables: one that both
            # read (a locally connected kernel's input gradient, 0 <= j - m < O, bounds the
            # position of the kernel and of the output gradient alike) keeps both inside
            view, made = _view(comp, name, access, rows, cols, shared, batch,
                               list(comp.where), shapes, packed)
            pre += made
            views.append(view)
        c = View(comp.tensor, _offset(out_coeffs, out_const, [d.var for d in loops]),
                 out_coeffs.get(batch, 0) if batch is not None else 0,
                 _last(out_coeffs, self.m), _last(out_coeffs, self.n))
        return (*pre, Gemm(loops, dims.get(batch), _size(self.m, extents),
                           _size(self.n, extents), _size(self.k, extents), *views, c,
                           accumulate=comp.init is not None))


def _roles(comp: Comprehension, a, b, shapes, least) -> list[_Roles]:
    """The ways to sort the variables into M, N, K, outer and batch with ``a`` as the left
    factor: K all the reduced variables, or all but the outermost of them in ``a``, which
    becomes the batch."""
    free = [d.var for d in comp.free]
    reduced = [d.var for d in comp.reduced]
    extents = {d.var: d.stop for d in comp.variables}
    in_a, in_b = _uses(a, extents), _uses(b, extents)
    if any(r not in in_a or r not in in_b for r in reduced):
        return []
    out_coeffs, _ = strides(comp.output, shapes[comp.tensor], free)
    by_stride = sorted(free, key=lambda v: -_magnitude(out_coeffs.get(v, 0)))
    m = [v for v in by_stride if v in in_a and v not in in_b]
    n = [v for v in by_stride if v in in_b and v not in in_a]
    m, n = _inner_run(m, out_coeffs, extents), _inner_run(n, out_coeffs, extents)
    if not n:
        return []  # the products run along a row of C: rows alone (M) is a sum, not a product
    for e, _, _ in comp.where:  # each constraint must fall to one factor's packing
        used = e.free_symbols & set(extents)
        if not (used <= in_a or used <= in_b):
            return []
    outer = tuple(v for v in free if v not in m and v not in n)
    sizes = [_number(_size(g, extents)) for g in (m, n, reduced)]
    if any(s is not None and s < least[key] for s, key in zip(sizes, "mnk")):
        return []
    variants = [_Roles(a, b, tuple(m), tuple(n), tuple(reduced), outer,
                       _pick_batch(outer, a))]
    a_coeffs, _ = strides(a, shapes[str(a.base.label)], reduced)
    if len(reduced) > 1 and not outer:
        top = max(reduced, key=lambda v: _magnitude(a_coeffs.get(v, 0)))
        rest = tuple(v for v in reduced if v != top)
        k = _number(_size(rest, extents))
        if k is None or k >= least["k"]:
            variants.append(_Roles(a, b, tuple(m), tuple(n), rest, outer, top))
    return variants


def _view(comp, name, access, rows, cols, outer, batch, where, shapes, packed):
    """The view of one operand, in place or packed; the packing comprehension if any.

    Takes from ``where`` the constraints that only this operand's variables satisfy."""
    variables = [d.var for d in comp.variables]
    extents = {d.var: d.stop for d in comp.variables}
    tensor = str(access.base.label)
    mine = _uses(access, variables)
    own = [w for w in where if w[0].free_symbols & set(variables) <= mine]
    coeffs, const = strides(access, shapes[tensor], variables)
    if not own and _direct(comp, access, rows, cols, shapes):
        loops = [v for v in outer if v != batch]
        return View(tensor, _offset(coeffs, const, loops), coeffs.get(batch, 0),
                    _last(coeffs, rows), _last(coeffs, cols)), []
    for w in own:
        where.remove(w)
    # a constraint that only keeps the access inside its tensor is what the fill (0) does
    bounds = [(i, 0, size) for i, size in zip(access.indices, shapes[tensor])]
    kept = [w for w in own if not any(same_constraint(w, b) for b in bounds)]
    fill = comp.fill if len(kept) == len(own) else (*comp.fill, (tensor, sympy.Integer(0)))
    inside = comp.inside & {access} if len(kept) == len(own) else frozenset()
    own = kept
    keep = [v for v in outer if v in mine]
    # rows or columns innermost: whichever walks the tensor in smaller steps, else the
    # longer run, so that the packing loop reads and writes along one run
    def order(group):
        if not group:
            return math.inf, 0.0
        step = _magnitude(abs(coeffs.get(group[-1], 0))) or math.inf
        return step, -_magnitude(extents[group[-1]])
    outer_group, inner = (cols, rows) if order(rows) < order(cols) else (rows, cols)
    dims = [Dim(v, 0, extents[v]) for v in (*keep, *outer_group, *inner)]
    read, pad = access, []
    if access not in inside and not _in_box(comp, access, shapes):
        read, pad = _padded(comp, access, fill, dims, shapes, packed)
        inside = frozenset({read})
    body = read
    if own:
        holds = sympy.And(*[sympy.And(lo <= e, e < hi) for e, lo, hi in own])
        body = sympy.Piecewise((read, holds), (0, True))
    label, made = pack(comp, name, dims, body, fill, inside, shapes, packed)
    made = pad + made
    shape = [d.stop for d in dims]
    pc, _ = strides(sympy.IndexedBase(label)[tuple(d.var for d in dims)], shape, variables)
    loops = [v for v in keep if v != batch]
    return View(label, _offset(pc, 0, loops), pc.get(batch, 0),
                _last(pc, rows), _last(pc, cols)), made


def _padded(comp, access, fill, dims, shapes, packed):
    """``access`` read from a copy of its tensor with the fill around it, wide enough that
    the access never leaves it: the copy is one pass over the tensor, after which packing
    (which reads each element up to kernel-size times) copies whole rows with no bounds.
    A copy made already (``packed``) that holds the box is read instead (the phases of a
    strided input gradient read boxes of the output gradient a cell apart)."""
    tensor = str(access.base.label)
    extents = {d.var: d.stop for d in dims}
    lows, sizes = [], []
    for idx, size in zip(access.indices, shapes[tensor]):
        lo, hi = index_range(idx, extents)
        lo, hi = sympy.Min(lo, 0), sympy.Max(hi, size - 1)
        if not (lo.is_number and (hi - lo).free_symbols <= size.free_symbols
                if isinstance(size, sympy.Expr) else lo.is_number):
            return access, []
        lows.append(lo)
        sizes.append(hi - lo + 1)
    made_already = packed.setdefault(("pads", tensor, fill), [])
    for label, their_lows, their_sizes in made_already:  # one that holds this box will do
        if all(is_proven(t <= lo) and is_proven(lo + n <= t + m)
               for lo, n, t, m in zip(lows, sizes, their_lows, their_sizes)):
            return sympy.IndexedBase(label)[tuple(i - t for i, t in zip(access.indices,
                                                                         their_lows))], []
    axes = [sympy.Symbol(f"p{i}", integer=True) for i in range(len(sizes))]
    source = access.base[tuple(a + lo for a, lo in zip(axes, lows))]
    pad_dims = [Dim(a, 0, n) for a, n in zip(axes, sizes)]
    label, made = pack(comp, "pad", pad_dims, source, fill, frozenset(), shapes, packed,
                        f"pads {tensor} for {comp.tensor}")
    made_already.append((label, lows, sizes))
    return sympy.IndexedBase(label)[tuple(i - lo for i, lo in zip(access.indices, lows))], made


def pack(comp, name, dims, body, fill, inside, shapes, packed, what=None):
    """The packed tensor's name, and its comprehension unless an identical packing (same
    values, same layout: the im2col of the forward pass that g reads again) exists."""
    canon = {d.var: sympy.Symbol(f"_{i}", integer=True) for i, d in enumerate(dims)}
    key = (body.xreplace(canon), tuple(d.stop for d in dims), fill,
           frozenset(a.xreplace(canon) for a in inside))
    if key in packed:
        return packed[key], []
    label, i = f"{comp.tensor}~{name}", 1
    while label in shapes:  # another product of the same tensor packed already
        i += 1
        label = f"{comp.tensor}~{name}{i}"
    shapes[label] = tuple(d.stop for d in dims)
    packed[key] = label
    output = sympy.IndexedBase(label)[tuple(d.var for d in dims)]
    tensor = str(next(iter(body.atoms(sympy.Indexed))).base.label)
    return label, [Comprehension(output, tuple(dims), body, fill=fill, inside=inside,
                                 equation=what or f"packs {tensor} for {comp.tensor}")]


def _direct(comp, access, rows, cols, shapes) -> bool:
    """Whether an operand can be read in place: inside its tensor, rows and columns each
    one stride."""
    variables = [d.var for d in comp.variables]
    extents = {d.var: d.stop for d in comp.variables}
    coeffs, _ = strides(access, shapes[str(access.base.label)], variables)
    return (_inside(comp, access, shapes) and collapses(list(rows), coeffs, extents)
            and collapses(list(cols), coeffs, extents))


def same_constraint(constraint, other) -> bool:
    return all(sympy.expand(a - b) == 0 for a, b in zip(constraint, other))


def _inside(comp, access, shapes) -> bool:
    return access in comp.inside or _in_box(comp, access, shapes)


def _in_box(comp, access, shapes) -> bool:
    """Whether ``access`` stays inside its tensor over the whole box of the variables."""
    extents = {d.var: d.stop for d in comp.variables}
    for idx, size in zip(access.indices, shapes[str(access.base.label)]):
        lo, hi = index_range(idx, extents)
        if not (is_proven(lo >= 0) and is_proven(hi <= size - 1)):
            return False
    return True


def _pick_batch(outer, a):
    """The outer variable handed to the product as its batch: one the left factor does not
    read (it is then packed once for the whole batch), else the last."""
    if not outer:
        return None
    shared = [v for v in outer if not a.has(v)]
    return (shared or list(outer))[-1]


def _offset(coeffs: dict, const, loops) -> sympy.Expr:
    return const + sum((coeffs.get(v, 0) * v for v in loops), sympy.Integer(0))


def _last(coeffs: dict, group) -> sympy.Expr:
    """The stride of a group: its innermost variable's (0 for an empty group, of extent 1)."""
    return sympy.sympify(coeffs.get(group[-1], 0)) if group else sympy.Integer(0)


def _size(group, extents) -> sympy.Expr:
    return sympy.Mul(*[extents[v] for v in group])


def _number(e) -> int | None:
    return int(e) if sympy.sympify(e).is_number else None


def _magnitude(e) -> float:
    """A stride's size for ordering: a symbolic one (it holds the batch size N) is large."""
    e = sympy.sympify(e)
    return float(e) if e.is_number else float(e.subs({s: 10**6 for s in e.free_symbols}))
