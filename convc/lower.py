"""Lowering: comprehension -> loop nest.

The free variables become the outer loops, the reduced ones the inner loops around an
accumulator. An access that can leave its tensor is handled in one of two ways, read off
the comprehension, never off the op:

* **clipped**: when reading the fill value would leave the reduction unchanged (a zero in a
  product under a sum, -∞ under a max), the terms that read outside are dropped by tightening
  the bounds of the one reduced variable in that index (`affine.solve_inside`). The inner
  loop then has no bounds test: this is implicit zero padding done right.
* **guarded**: otherwise the access becomes ``cond ? access : fill``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import sympy

from . import blocked
from .blocked import Blocked
from .errors import DerivationError
from .ir.affine import affine_terms, index_range, is_proven, never_meet, solve_inside, strides
from .ir.comprehension import ACC, ARG, Comprehension, Dim, Reduction, row_major
from .loops import (ArgMaxUpdate, Block, Kernel, Let, Loop, LoopKind, Stmt, Store,
                    TransposeTile, Update, VLoad, VSum, fused)
from .ops import ASSUMED_SIZE, BATCH, estimate
from .spectral import Transform


PARALLEL_WORK = 32768
"""The points (at a batch of 64) a comprehension needs for its loops to be shared by threads."""


def lower_comprehension(comp: Comprehension, shapes: dict[str, tuple], lanes: int = 1,
                        integers: frozenset = frozenset()) -> tuple[Stmt, ...]:
    """The loop nest of one comprehension; ``shapes`` gives every tensor it reads, ``lanes``
    the elements of the target's vectors that explicit vector code may use (1: none), and
    ``integers`` the tensors whose elements are not of the float type (never read as
    vectors).

    The outermost loops run in parallel when the comprehension is large enough: each point
    of its free variables is written by one iteration only, so they never race.
    """
    comp = _collapse(_fold_single_points(comp), shapes)
    transposed = _transposed(comp, shapes, lanes, integers)
    if transposed is not None:
        return _parallel(comp, transposed)
    registers = _outputs_in_registers(comp, shapes, lanes, integers)
    if registers is not None:
        return _parallel(comp, registers)
    windowed = _windowed(comp, shapes)
    passes = [] if windowed else _reduction_outside(comp, shapes) or [comp]
    nest = windowed or tuple(s for c in passes for s in _serial_nest(c, shapes))
    if len(passes) > 1 and len(comp.free) == 1:
        return nest  # the accumulating pass's outer loop is a reduced variable
    return _parallel(comp, nest)


def _transposed(comp: Comprehension, shapes, lanes: int, integers: frozenset
                ) -> tuple[Stmt, ...] | None:
    """A copy whose innermost variable (at most ``lanes`` values) walks its output with unit
    stride and its input with another, and whose next variable walks the input with unit
    stride (a kernel laid out in vectors of a channel: `blocked`): tiles of ``lanes``
    values of that next variable copied transposed (`TransposeTile`), each read and
    written a vector at a time, where element by element the compiler gathers. None
    otherwise, or where a read can leave its tensor or a tile's count is not constant."""
    if lanes < 2 or comp.reduction is not Reduction.NONE or comp.where or len(comp.free) < 2:
        return None
    read, (*outer, b, a) = comp.body, comp.free
    if (not isinstance(read, sympy.Indexed) or str(read.base.label) in integers
            or not sympy.sympify(a.stop).is_Integer or int(a.stop) > lanes
            or a.start != 0 or b.start != 0
            or (read not in comp.inside and _unsafe_axes(comp, read, shapes))):
        return None
    to, _ = strides(comp.output, shapes[comp.tensor], [a.var, b.var])
    src, _ = strides(read, shapes[str(read.base.label)], [a.var, b.var])
    full = lanes * sympy.floor(b.stop / lanes)
    tail = sympy.expand(b.stop - full)
    if (to.get(a.var) != 1 or b.var not in to or src.get(b.var) != 1
            or src.get(a.var, 1) == 1 or not tail.is_Integer):
        return None

    def tile(start, cols: int) -> TransposeTile:
        at = {a.var: 0, b.var: start}
        return TransposeTile(comp.output.xreplace(at), to[b.var], read.xreplace(at),
                             src[a.var], int(a.stop), cols)

    nest: tuple[Stmt, ...] = () if full == 0 else (
        Loop(b.var, 0, full, (tile(b.var, lanes),), step=lanes),)
    if tail:
        nest += (tile(full, int(tail)),)
    for d in reversed(outer):
        nest = (Loop(d.var, d.start, d.stop, nest),)
    return nest


def _parallel(comp: Comprehension, nest: tuple[Stmt, ...]) -> tuple[Stmt, ...]:
    """The nest with its outermost loops shared by threads, when it is large enough (the
    outermost loops of a nest run over free variables: each writes its own outputs)."""
    if not comp.free or _work(comp) < PARALLEL_WORK:
        return nest
    return tuple(replace(s, kind=LoopKind.PARALLEL) if isinstance(s, Loop) else s
                 for s in nest)


SHORT_REDUCTION = 64
"""The most points a reduction may have to be moved outside the innermost free loop."""

SHORT_ROW = 8
"""The fewest points a row of outputs needs for a short reduction to run along it in vectors
(`_short_window`): LeNet's input gradient sums its shifted columns along rows of 12, one
masked vector each, 1.6x faster than point by point."""

SHORT_WINDOW = 27
"""The most points a window may have to be summed in registers (`_windowed`): a longer one
chains too many dependent additions per output; it adds whole rows instead."""


def vector_row(comp: Comprehension, shapes) -> tuple[str, float] | None:
    """``("registers", row)`` for a sum into few outputs (`_outputs_in_registers`),
    ``("window", row)`` for a short window (`_windowed`, `_reduction_outside`), with the
    row along which it runs vectorised; None when it does not run either way."""
    if _register_dims(comp, shapes) is not None:
        return "registers", estimate(comp.reduced[-1].stop)
    if _window_plan(comp, shapes) is None and _reduction_outside(comp, shapes) is None:
        return None
    return "window", estimate(comp.free[-1].stop)


def _windowed(comp: Comprehension, shapes) -> tuple[Stmt, ...] | None:
    """A short sum or max over a window (a depthwise kernel, pooling) kept in a register
    per output point inside the output's contiguous loop: the window's loops unroll, the
    row vectorises, and each output is written once.

    Where the window can leave its input (zero or -∞ padding), the free variable of that
    axis runs in three loops: a border where the window is clipped to the input, the
    interior where it is whole (constant bounds, no test), and the border after. None
    when the comprehension is not of that shape.
    """
    plan = _window_plan(comp, shapes)
    if plan is None:
        return None
    comp, interiors, axes = plan
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}

    def point(inside: set, _fixed: dict) -> tuple[Stmt, ...]:
        clipped = dict(bounds)
        for _, axis, v in axes:
            if v not in inside:
                _clip(comp, axis, clipped)
        fixed = {d.var: LoopKind.UNROLL for d in comp.reduced
                 if all(sympy.sympify(b).is_number for b in clipped[d.var])}
        return _point(comp, clipped, lambda e: e, fixed)

    return _split_nest(comp.free, interiors, point)


def _window_plan(comp: Comprehension, shapes) -> tuple | None:
    """``(comp, interiors, axes)`` for `_windowed` (``comp`` with a sum's bounds as its
    fill), or None when the comprehension does not run that way."""
    if comp.reduction is Reduction.SUM:
        comp = _bounds_as_fill(comp, shapes)
    if not _short_window(comp, shapes) or comp.where:
        return None
    if math.prod(int(d.stop) for d in comp.reduced) > SHORT_WINDOW:
        return None
    found = _interiors(comp, shapes, [d.var for d in comp.free], comp.reduced)
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}
    if found is None or not all(_clip(comp, axis, dict(bounds)) for _, axis, _ in found[1]):
        return None
    return comp, *found


def _interiors(comp: Comprehension, shapes, loops, window) -> tuple[dict, list] | None:
    """Where the reads that can leave their tensors stay inside: for each loop variable (of
    ``loops``) that moves such a read, the range in which it is inside for every point of
    ``window``; and ``(access, axis, variable)`` for each axis it can leave along. None when
    a read can leave along an axis not of the form `_whole_window` solves, or reading its
    fill would change the result."""
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}
    interiors: dict[sympy.Symbol, tuple] = {}
    axes = []
    for access in comp.accesses():
        unsafe = [] if access in comp.inside else _unsafe_axes(comp, access, shapes)
        fill = comp.fill_of(str(access.base.label))
        if unsafe and (fill is None or not _annihilates(comp, access, fill)):
            return None
        for axis in unsafe:
            found = _whole_window(comp, axis, loops, window)
            if found is None:
                return None
            v, lo, hi = found
            start, stop = interiors.get(v, bounds[v])
            interiors[v] = (sympy.Max(start, lo), sympy.Min(stop, hi))
            axes.append((access, axis, v))
    return interiors, axes


def _interior_range(d: Dim, interiors: dict) -> tuple[sympy.Expr, sympy.Expr]:
    """``d``'s interior range clamped to its own: ``start <= lo <= hi <= stop``."""
    lo = sympy.Max(d.start, sympy.Min(interiors[d.var][0], d.stop))
    return lo, sympy.Max(lo, sympy.Min(interiors[d.var][1], d.stop))


def _split_nest(dims, interiors: dict, body, kind_of=lambda i: LoopKind.SERIAL,
                unroll: int = 0) -> tuple[Stmt, ...]:
    """Loops over ``dims`` around ``body(inside, fixed)``; a variable with an interior range
    runs as three loops (before it, inside it, after it), and ``inside`` holds the variables
    whose loop is the interior one around that body. Empty loops are left out. A border
    of at most ``unroll`` points (a constant count) is no loop: the body is repeated for
    each, with ``fixed`` mapping the variable to its value there."""
    def nest(i: int, inside: frozenset, fixed: dict) -> tuple[Stmt, ...]:
        if i == len(dims):
            return body(inside, fixed)
        d, kind = dims[i], kind_of(i)
        if d.var not in interiors:
            return (Loop(d.var, d.start, d.stop, nest(i + 1, inside, fixed), kind),)
        lo, hi = _interior_range(d, interiors)
        parts: tuple[Stmt, ...] = ()
        ranges = ((d.start, lo, False), (lo, hi, True), (hi, d.stop, False))
        for start, stop, interior in ranges:
            count = sympy.expand(stop - start)
            if is_proven(start >= stop):
                continue
            if not interior and count.is_Integer and count <= unroll:
                parts += tuple(s for value in range(int(count)) for s in
                               nest(i + 1, inside, {**fixed, d.var: start + value}))
            else:
                within = inside | {d.var} if interior else inside
                parts += (Loop(d.var, start, stop, nest(i + 1, within, fixed), kind),)
        return parts

    return nest(0, frozenset(), {})


def _whole_window(comp: Comprehension, axis, loops, window) -> tuple | None:
    """For an index ``a·v + b·m + c`` (``v`` among ``loops``, ``m`` among the `Dim`s of
    ``window``), the range of ``v`` where it stays inside its axis for every ``m``:
    ``(v, start, stop)``."""
    idx, size = axis
    coeffs, const = affine_terms(idx, [d.var for d in comp.variables])
    mine = [v for v in coeffs if v in loops]
    ms = [d for d in window if d.var in coeffs]
    if len(mine) != 1 or len(ms) != 1 or len(coeffs) != 2:
        return None
    v, m = mine[0], ms[0]
    low, high = sorted((0, coeffs[m.var] * (m.stop - 1)))
    start, stop = solve_inside(coeffs[v], const + low, size - (high - low))
    return v, start, stop


BORDER_POINTS = 4
"""The most points a border of a reduced variable (`_outputs_in_registers`) may have to be
written out point by point, each with its reads' tests decided (the rows a 3x3 kernel's
padding adds: then their columns run in vectors too)."""

REGISTER_OUTPUTS = 16
"""The most outputs `_outputs_in_registers` keeps in registers at once."""

ACCUMULATORS = tuple(sympy.Symbol(f"acc{i}") for i in range(REGISTER_OUTPUTS))
VECTOR_ACCUMULATORS = tuple(sympy.Symbol(f"vacc{i}") for i in range(REGISTER_OUTPUTS))


def _outputs_in_registers(comp: Comprehension, shapes, lanes: int = 1,
                          integers: frozenset = frozenset()) -> tuple[Stmt, ...] | None:
    """A sum with few outputs per point of its outer free variables, over a long
    contiguous reduction (a depthwise kernel's gradient: 9 taps per channel, each summed
    over every image and position): the few outputs become accumulators inside the
    reduction's innermost loop, which reads each input once for all of them instead of once
    per output.

    Where a read can leave its tensor along a reduced variable (padding), that variable's
    loop runs in three parts: the border, where the read is tested (reading the fill, which
    adds nothing), the interior, where it is inside for every output, and the border after.
    A border of at most `BORDER_POINTS` points is written out point by point, its tests
    decided there (an output whose read is in the padding has no update at that point).
    With ``lanes`` > 1 and a body of sums and products of float tensors (none of
    ``integers``), where nothing is tested the innermost loop steps ``lanes`` at a time
    adding whole vectors into vector accumulators, which are summed into the scalar ones
    once, at the end; the points left over are one partial vector (`VLoad` of fewer lanes)
    where the body is zero with its reads, else scalar. Elsewhere it is a `omp simd` loop
    whose accumulators are summed at the end of every run. None when the comprehension is
    not of that shape.
    """
    small = _register_dims(comp, shapes)
    if small is None:
        return None
    comp = _bounds_as_fill(comp, shapes)
    interiors, tested = _interiors(comp, shapes, [d.var for d in comp.reduced], small)
    reads = [(a, sympy.And(idx >= 0, idx < size), v, comp.fill_of(str(a.base.label)))
             for a, (idx, size), v in tested]
    points = [dict(zip([d.var for d in small], p))
              for p in itertools.product(*(range(int(d.stop)) for d in small))]
    accs = ACCUMULATORS[:len(points)]

    inner = comp.reduced[-1]
    vector = lanes > 1 and _arithmetic(comp.body) and not any(
        str(a.base.label) in integers for a in comp.body.atoms(sympy.Indexed))
    vaccs = VECTOR_ACCUMULATORS[:len(points)] if vector else ()

    def updates(inside: frozenset, fixed: dict, vector: bool = False, lanes_left=None
                ) -> tuple[Stmt, ...]:
        """The accumulators' updates where the variables of ``inside`` are in their
        interiors and those of ``fixed`` have their values (where a read is then outside
        for an accumulator, its update is gone)."""
        body = comp.body.xreplace(_guards(reads, inside)).xreplace(fixed)
        if vector:  # the reads that move with the innermost variable, as vectors
            part = () if lanes_left is None else (lanes_left,)
            body = body.xreplace({a: VLoad(a, *part) for a in body.atoms(sympy.Indexed)
                                  if a.has(inner.var)})
        found = ((a, body.xreplace(p)) for a, p in zip(vaccs if vector else accs, points))
        return tuple(Update(a, Reduction.SUM, value) for a, value in found if value != 0)

    def innermost(inside: frozenset, fixed: dict) -> tuple[Stmt, ...]:
        """The innermost loops; in vectors where nothing is tested."""
        vector = bool(vaccs) and not ({v for _, _, v in tested} - inside - set(fixed)
                                      - {inner.var}) and not any(
            u.value.has(sympy.Piecewise) for u in updates(inside | {inner.var}, fixed, True))

        def run(start, stop, untested) -> tuple[Stmt, ...]:
            count = sympy.expand(stop - start)
            if inner.var not in untested and count.is_Integer and count <= BORDER_POINTS:
                return tuple(u for value in range(max(int(count), 0)) for u in
                             updates(untested, {**fixed, inner.var: start + value}))
            scalar = Loop(inner.var, start, stop, updates(untested, fixed), LoopKind.VECTOR)
            if not (vector and inner.var in untested):
                return (scalar,)
            split = start + lanes * sympy.floor((stop - start) / lanes)
            vectors = Loop(inner.var, start, split, updates(untested, fixed, True),
                           step=lanes)
            left = sympy.expand(stop - split)
            if left == 0:  # whole vectors: no points left over
                return (vectors,)
            if not _zero_where_zero(comp.body, inner.var):
                return (vectors, replace(scalar, start=split))
            last = updates(untested, fixed, True, left)
            return (vectors, *(replace(u, value=u.value.xreplace({inner.var: split}))
                               for u in last))

        if inner.var not in interiors:
            return run(inner.start, inner.stop, inside | {inner.var})
        lo, hi = _interior_range(inner, interiors)
        loops = (*run(inner.start, lo, inside), *run(lo, hi, inside | {inner.var}),
                 *run(hi, inner.stop, inside))
        return tuple(s for s in loops
                     if not (isinstance(s, Loop) and is_proven(s.start >= s.stop)))

    init = comp.init if comp.init is not None else sympy.Integer(0)
    stmts: tuple[Stmt, ...] = (
        *(Let(a, init.xreplace(p)) for a, p in zip(accs, points)),
        *(Let(v, sympy.Integer(0), vector=True) for v in vaccs),
        *_split_nest(comp.reduced[:-1], interiors, innermost, unroll=BORDER_POINTS),
        *(Update(a, Reduction.SUM, VSum(v)) for a, v in zip(accs, vaccs)),
        *(Store(comp.output.xreplace(p), a) for a, p in zip(accs, points)))
    outer = comp.free[:len(comp.free) - len(small)]
    if not outer:
        return (Block(stmts),)
    for d in reversed(outer):
        stmts = (Loop(d.var, d.start, d.stop, stmts),)
    return stmts


def _zero_where_zero(body, var) -> bool:
    """Whether ``body`` is 0 wherever every read that moves with ``var`` is 0: each of its
    terms a product of numbers and reads, all of which move (so the lanes a partial vector
    leaves zero add nothing, not even a read's inf or NaN times zero)."""
    for term in sympy.Add.make_args(body):
        factors = sympy.Mul.make_args(term)
        reads = [f for f in factors if isinstance(f, sympy.Indexed)]
        if not reads or not all(f.is_number or (isinstance(f, sympy.Indexed) and f.has(var))
                                for f in factors):
            return False
    return True


def _arithmetic(expr) -> bool:
    """Whether ``expr`` is sums and products of numbers and accesses alone (what C's vector
    extensions compute as written)."""
    if isinstance(expr, sympy.Indexed) or expr.is_Atom:
        return True
    return isinstance(expr, sympy.Add | sympy.Mul) and all(map(_arithmetic, expr.args))


def _register_dims(comp: Comprehension, shapes) -> list[Dim] | None:
    """The innermost free variables that `_outputs_in_registers` moves inside the sum: of
    constant extents, up to `REGISTER_OUTPUTS` points (none: one output per point of the
    others, as a bias gradient has); None when the comprehension is not a
    plain sum over a box whose innermost reduced variable reads in steps of 0 or 1 (for at
    least 16 points), or a read can leave its tensor other than along a reduced variable
    moved by one of those free variables (`_interiors`)."""
    if comp.reduction is not Reduction.SUM or comp.final is not None or not comp.reduced:
        return None
    comp = _bounds_as_fill(comp, shapes)
    loop_vars = {d.var for d in comp.variables}
    if comp.where or any(d.start != 0 or d.stop.free_symbols & loop_vars
                         for d in comp.variables):
        return None
    if not _contiguous(comp, shapes):
        return None
    small, count = [], 1
    for d in reversed(comp.free):
        if not d.stop.is_number or count * int(d.stop) > REGISTER_OUTPUTS:
            break
        small.insert(0, d)
        count *= int(d.stop)
    if _interiors(comp, shapes, [d.var for d in comp.reduced], small) is None:
        return None
    return small


def _short_window(comp: Comprehension, shapes) -> bool:
    """A sum or max over at most `SHORT_REDUCTION` points of constant bounds, inside a box
    from 0 whose innermost free variable walks the output in steps of 1 or 2 (its
    interleaved parts) and every read in steps of 0, 1 or 2, for at least `SHORT_ROW`
    points."""
    if comp.reduction not in (Reduction.SUM, Reduction.MAX) or not comp.free:
        return False
    if not comp.reduced or not all(d.start == 0 and sympy.sympify(d.stop).is_number
                                   for d in comp.reduced):
        return False
    if math.prod(int(d.stop) for d in comp.reduced) > SHORT_REDUCTION:
        return False
    loop_vars = {d.var for d in comp.variables}
    if any(d.start != 0 or d.stop.free_symbols & loop_vars for d in comp.free):
        return False
    inner = comp.free[-1]
    extent = sympy.sympify(inner.stop)
    if (extent.is_number and extent < SHORT_ROW) or not comp.output.has(inner.var):
        return False
    for a in (comp.output, *comp.body.atoms(sympy.Indexed)):
        step = strides(a, shapes[str(a.base.label)], [inner.var])[0].get(inner.var, 0)
        if step not in ((1, 2) if a == comp.output else (0, 1, 2)):
            return False  # a row, or the parts of interleaved complex numbers
    return True


def _reduction_outside(comp: Comprehension, shapes) -> list[Comprehension] | None:
    """A short sum or max over a window (pooling, a depthwise kernel) as passes whose
    innermost loop is the output's contiguous axis, which vectorises: the output starts at
    the initial value, each window point adds (or maxes) a whole row into it, then ``final``
    (an average's division) applies. Constraints may tie the window to the outer free
    variables (a gathered input gradient's ``0 <= j - m < J``), not to the row's. None
    when the comprehension is not of that shape."""
    if comp.reduction is Reduction.SUM:
        comp = _bounds_as_fill(comp, shapes)
    if not _short_window(comp, shapes):
        return None
    inner = comp.free[-1]
    if any(inner.var in e.free_symbols for e, _, _ in comp.where):
        return None
    out = comp.output
    start = comp.reduction.identity if comp.init is None else comp.init
    combined = comp.reduction.combine(out, comp.body)
    passes = [] if start == out else [  # (an output that accumulates starts as it is)
        replace(comp, reduced=(), reduction=Reduction.NONE, body=start, init=None,
                final=None, where=())]
    passes.append(replace(comp, free=(*comp.free[:-1], *comp.reduced, inner), reduced=(),
                          reduction=Reduction.NONE, body=combined, init=None, final=None,
                          inside=comp.inside | {out}))
    if comp.final is not None:
        passes.append(replace(comp, reduced=(), reduction=Reduction.NONE,
                              body=comp.final.xreplace({ACC: out}), init=None, final=None,
                              inside=comp.inside | {out}, where=()))
    return passes


def _bounds_as_fill(comp: Comprehension, shapes) -> Comprehension:
    """A sum's constraints that only keep an access inside its tensor, as a fill of 0 for
    that tensor: what the constraint skips then adds nothing, and the row loop's bounds
    are clipped where the access leaves the tensor."""
    kept, fills = [], dict(comp.fill)
    for e, lo, hi in comp.where:
        inside = [a for a in comp.body.atoms(sympy.Indexed)
                  if any(sympy.expand(i - e) == 0 and lo == 0 and sympy.expand(hi - n) == 0
                         for i, n in zip(a.indices, shapes[str(a.base.label)]))]
        if not inside or fills.get(str(inside[0].base.label), 0) != 0:
            kept.append((e, lo, hi))
            continue
        fills[str(inside[0].base.label)] = sympy.Integer(0)
    if len(kept) == len(comp.where):
        return comp
    return replace(comp, where=tuple(kept), fill=tuple(fills.items()),
                   inside=frozenset(a for a in comp.inside if str(a.base.label) not in fills))


def _work(comp: Comprehension) -> float:
    """The points of the comprehension's box, at a batch of 64 and other variable sizes
    of `ASSUMED_SIZE` (a bound that depends on another variable counts as 8)."""
    work = 1.0
    for d in comp.variables:
        extent = sympy.sympify(d.extent)
        sizes = {s: 64 if s == BATCH else ASSUMED_SIZE for s in extent.free_symbols
                 if s == BATCH or s.is_positive}
        extent = extent.subs(sizes)
        work *= float(extent) if extent.is_number else 8.0
    return work


def _serial_nest(comp: Comprehension, shapes) -> tuple[Stmt, ...]:
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}
    for constraint in comp.where:
        if not _bound(comp, constraint, bounds):
            return ()  # no point satisfies the constraints: nothing to compute
    guards, borders = {}, {}
    for access in comp.accesses():
        if access in comp.inside:
            continue
        unsafe = _unsafe_axes(comp, access, shapes)
        if not unsafe:
            continue
        fill = comp.fill_of(str(access.base.label))
        if fill is None:
            raise DerivationError(
                f"{comp.tensor}: access {access} can leave tensor {access.base.label} "
                f"of shape {shapes[str(access.base.label)]} and the comprehension gives no "
                f"fill value for it")
        if _annihilates(comp, access, fill):
            unsafe = [ax for ax in unsafe if not _clip(comp, ax, bounds)]
        if unsafe:
            inside = sympy.And(*[sympy.And(idx >= 0, idx < size) for idx, size in unsafe])
            guards[access] = sympy.Piecewise((access, inside), (fill, True))
            borders[access] = (unsafe, fill)
    if borders and comp.reduction is Reduction.NONE and not comp.where:
        if len(borders) == 1:
            (access, (unsafe, fill)), = borders.items()
            nest = _bordered(comp, bounds, access, unsafe, fill)
        else:
            nest = _tested_at_borders(comp, borders)
        if nest is not None:
            return nest
    return _nest(comp, bounds, guards, _contiguous(comp, shapes))


def _tested_at_borders(comp: Comprehension, borders: dict) -> tuple[Stmt, ...] | None:
    """A comprehension with no sum whose reads (several: Winograd's input transform reads
    a tile's corners) can leave their tensors along axes each moved by one free variable:
    each such variable's loop runs in three parts (`_split_nest`), and only points outside
    the interiors test their reads. None when an axis moves with several variables."""
    interiors: dict[sympy.Symbol, tuple] = {}
    tested = []
    for access, (unsafe, fill) in borders.items():
        for idx, size in unsafe:
            coeffs, _ = affine_terms(idx, [d.var for d in comp.free])
            if len(coeffs) != 1:
                return None
            (v, coeff), = coeffs.items()
            lo, hi = solve_inside(coeff, idx - coeff * v, size)
            start, stop = interiors.get(v, (lo, hi))
            interiors[v] = (sympy.Max(start, lo), sympy.Min(stop, hi))
            tested.append((access, sympy.And(idx >= 0, idx < size), v, fill))

    def point(inside: frozenset, _fixed: dict) -> tuple[Stmt, ...]:
        return (Store(comp.output, comp.body.xreplace(_guards(tested, inside))),)

    return _split_nest(comp.free, interiors, point)


def _guards(tested, inside: frozenset) -> dict:
    """Each read of ``tested`` (``(access, condition, variable, fill)``: the condition under
    which the access is inside its tensor, the loop variable that moves it out) whose
    variable's loop is not among the interior loops ``inside``, as its fill where one of its
    conditions fails."""
    conditions: dict = {}
    for access, condition, v, fill in tested:
        if v not in inside:
            conditions.setdefault((access, fill), []).append(condition)
    return {access: sympy.Piecewise((access, sympy.And(*c)), (fill, True))
            for (access, fill), c in conditions.items()}


def lower_node(node: str, inputs: tuple[str, ...], parts, shapes: dict[str, tuple],
               lanes: int = 1, integers: frozenset = frozenset()) -> Kernel:
    """The kernel of one graph node: its comprehensions (and matrix products) in order.

    It reads the tensors its parts use (the node's ``inputs`` first, in their order) and
    writes each part's output, once each. ``lanes``, ``integers``: see
    `lower_comprehension`.
    """
    nests = _fused_siblings([(_lower_part(p, shapes, lanes, integers), p) for p in parts])
    writes = tuple(dict.fromkeys(written(p) for p in parts))
    used = {t for p in parts for t in _read(p)} - set(writes)
    reads = [t for t in dict.fromkeys(inputs) if t in used] + sorted(used - set(inputs))
    return Kernel(node, nests, tuple(reads), writes)


def _fused_siblings(lowered: list[tuple[tuple[Stmt, ...], object]]) -> tuple[Stmt, ...]:
    """The parts' nests in order, consecutive comprehensions over the same loops run in one
    nest (a ReLU and its mask: one pass over what they read, one parallel region) where
    neither reads what the other writes, and what both write they write at elements apart
    (the phases of Winograd's output transform: one pass over the products). A product or
    a transform is never fused."""
    out: list[tuple[tuple[Stmt, ...], list[Comprehension] | None]] = []
    for nest, part in lowered:
        if not isinstance(part, Comprehension):
            out.append((nest, None))
            continue
        if out and out[-1][1] is not None and _independent(out[-1][1], part):
            merged = fused(out[-1][0], nest)
            if merged is not None:
                out[-1] = (merged, [*out[-1][1], part])
                continue
        out.append((nest, [part]))
    return tuple(s for nest, _ in out for s in nest)


def _independent(group: list[Comprehension], part: Comprehension) -> bool:
    """Whether ``part`` can run in the loops of ``group``: it reads nothing they write, they
    read nothing it writes, and where they write its tensor, never an element it writes."""
    reads, writes = set(_read(part)), written(part)
    if reads & {written(g) for g in group} or any(writes in _read(g) for g in group):
        return False
    variables = sorted({d.var for c in (*group, part) for d in c.variables}, key=str)
    return all(never_meet(g.output, part.output, variables)
               for g in group if written(g) == writes)


def _lower_part(part, shapes, lanes: int, integers: frozenset) -> tuple[Stmt, ...]:
    if isinstance(part, Comprehension):
        return lower_comprehension(part, shapes, lanes, integers)
    if isinstance(part, Blocked):
        return blocked.lower(part, estimate(part.lane_macs) / part.lanes >= PARALLEL_WORK)
    nest: tuple[Stmt, ...] = (part,)
    for d in reversed(part.outer):
        nest = (Loop(d.var, d.start, d.stop, nest),)
    return nest


def written(part) -> str:
    """The tensor a part (a comprehension, product, transform or blocked sum) writes."""
    if isinstance(part, Transform):
        return part.target
    return part.tensor if isinstance(part, Comprehension | Blocked) else part.c.tensor


def _read(part) -> list[str]:
    if isinstance(part, Transform):
        return [part.source]
    if isinstance(part, Blocked):
        return part.reads()
    return part.inputs() if isinstance(part, Comprehension) else [part.a.tensor, part.b.tensor]


def _bound(comp: Comprehension, constraint, bounds) -> bool:
    """Tighten the bounds of the innermost variable of ``low <= expr < high``; False when
    the constraint holds nowhere."""
    expr, low, high = constraint
    order = [d.var for d in comp.variables]
    coeffs, _ = affine_terms(expr, order)
    if not coeffs:
        if is_proven(low <= expr) and is_proven(expr < high):
            return True
        if is_proven(expr < low) or is_proven(expr >= high):
            return False
        raise DerivationError(f"{comp.tensor}: cannot tell whether {low} <= {expr} < {high}")
    v = max(coeffs, key=order.index)
    start, stop = solve_inside(coeffs[v], expr - coeffs[v] * v - low, high - low)
    lo, hi = bounds[v]
    bounds[v] = (sympy.Max(lo, start), sympy.Min(hi, stop))
    _project(comp, expr, low, high, coeffs, v, bounds)
    return True


def _project(comp: Comprehension, expr, low, high, coeffs, innermost, bounds) -> None:
    """Bound the other reduced variables of ``low <= expr < high`` too, each by what the
    constraint allows over the whole ranges of the variables inside it (a necessary
    condition, so no point that satisfies it is dropped).

    Example: a tiled kernel's input gradient sums over ``q`` and ``r`` (an output position
    ``2q + r``, ``r < 2``) with ``0 <= τ + 1 - 2q - r < 3``; ``r`` gets its exact bounds
    and ``q`` the two or three values ``ceil((τ - 2)/2) <= q <= floor((τ + 1)/2)`` instead
    of its whole range. Only reduced variables: a free one skipped would leave its output
    unwritten.
    """
    order = [d.var for d in comp.variables]
    reduced = {d.var for d in comp.reduced}
    dims = {d.var: d for d in comp.variables}
    for w in coeffs:
        if w == innermost or w not in reduced:
            continue
        inner = [u for u in coeffs if order.index(u) > order.index(w)]
        if not all(dims[u].start.is_number and dims[u].stop.is_number for u in inner):
            continue
        part = sum((coeffs[u] * (u - dims[u].start) for u in inner), sympy.Integer(0))
        shift = sum((coeffs[u] * dims[u].start for u in inner), sympy.Integer(0))
        lo_in, hi_in = index_range(part, {u: dims[u].extent for u in inner})
        lo_in, hi_in = lo_in + shift, hi_in + shift
        rest = expr - coeffs[w] * w - sum((coeffs[u] * u for u in inner), sympy.Integer(0))
        start, stop = solve_inside(coeffs[w], rest - (low - hi_in), high - low + hi_in - lo_in)
        lo, hi = bounds[w]
        bounds[w] = (sympy.Max(lo, start), sympy.Min(hi, stop))


def _fold_single_points(comp: Comprehension) -> Comprehension:
    """Replace a variable whose range holds one value by that value: no 1-trip loops."""
    single = {d.var: d.start for d in comp.variables if d.extent == 1}
    if not single:
        return comp
    keep = lambda dims: tuple(d for d in dims if d.var not in single)  # noqa: E731
    sub = lambda e: None if e is None else e.xreplace(single)  # noqa: E731
    return replace(comp, output=sub(comp.output), free=keep(comp.free),
                   reduced=keep(comp.reduced), body=sub(comp.body), init=sub(comp.init),
                   final=sub(comp.final), inside=frozenset(sub(a) for a in comp.inside),
                   where=tuple((sub(e), lo, hi) for e, lo, hi in comp.where))


def _collapse(comp: Comprehension, shapes) -> Comprehension:
    """One loop for the innermost variables that every access walks alike.

    When the accesses end in the same variables over their whole axes, those axes are one
    contiguous run, and a single loop over it is what a compiler vectorises best: the free
    variables of an elementwise comprehension (``relu0[f] = max(0, conv0[f])`` for
    ``f < 1024*N``, with its output), or the reduced ones of a sum or max (a bias gradient
    sums each image's 8x8 positions as one run of 64).
    """
    if comp.where:
        return comp
    if comp.reduction is Reduction.NONE:
        return _fuse(comp, "free", [comp.output, *comp.accesses()], shapes)
    if comp.reduction in (Reduction.SUM, Reduction.MAX):
        return _fuse(comp, "reduced", sorted(comp.body.atoms(sympy.Indexed), key=str), shapes)
    return comp


def _fuse(comp: Comprehension, group: str, accesses, shapes) -> Comprehension:
    dims = getattr(comp, group)
    run = 0
    for d in reversed(dims):
        def walks(a, d=d, k=run + 1):
            shape = shapes[str(a.base.label)]
            return (len(a.indices) >= k and a.indices[-k] == d.var and d.start == 0
                    and sympy.expand(shape[-k] - d.stop) == 0)
        if not accesses or not all(walks(a) for a in accesses):
            break
        run += 1
    if run < 2 or any(a not in comp.inside and _unsafe_axes(comp, a, shapes)
                      for a in accesses):
        return comp
    fused = dims[-1].var
    extent = sympy.Mul(*[d.stop for d in dims[-run:]])
    gone = {d.var for d in dims[-run:]}
    values = comp.body.xreplace({a: sympy.Dummy() for a in accesses})
    if values.free_symbols & gone:
        return comp  # a collapsed variable is used outside the accesses
    sub = {a: a.base[(*a.indices[:-run], *[0] * (run - 1), fused)] for a in accesses}
    return replace(comp, output=sub.get(comp.output, comp.output), body=comp.body.xreplace(sub),
                   inside=(comp.inside - set(sub)) | set(sub.values()),
                   **{group: (*dims[:-run], Dim(fused, 0, extent))})


def _unsafe_axes(comp, access, shapes) -> list[tuple[sympy.Expr, sympy.Expr]]:
    """The (index, size) pairs of ``access`` that are not provably inside the tensor."""
    loop_vars = {d.var for d in comp.variables}
    shift, extents = {}, {}
    for d in comp.variables:
        if (d.start.free_symbols | d.stop.free_symbols) & loop_vars:
            extents = None  # bounds that depend on other loops: nothing is proven here
            break
        shift[d.var], extents[d.var] = d.var + d.start, d.extent
    shape = shapes[str(access.base.label)]
    unsafe = []
    for idx, size in zip(access.indices, shape):
        if extents is None:
            unsafe.append((idx, size))
            continue
        lo, hi = index_range(idx.xreplace(shift), extents)
        if not (is_proven(lo >= 0) and is_proven(hi <= size - 1)):
            unsafe.append((idx, size))
    return unsafe


def _annihilates(comp: Comprehension, access, fill) -> bool:
    """Whether every term reading ``fill`` for ``access`` is the reduction's identity."""
    if comp.reduction is Reduction.NONE:
        return False
    for extra in (comp.init, comp.final):
        if extra is not None and extra.has(access):
            return False
    term = sympy.simplify(comp.body.xreplace({access: fill}))
    return term == comp.reduction.identity


def _clip(comp: Comprehension, axis, bounds) -> bool:
    """Tighten the bounds of the single reduced variable of ``axis``'s index; False if none."""
    idx, size = axis
    order = [d.var for d in comp.reduced]
    coeffs, _ = affine_terms(idx, [d.var for d in comp.variables])
    mine = [v for v in coeffs if v in order]
    if len(mine) != 1:
        return False
    m = mine[0]
    later = set(order[order.index(m):])
    rest = idx - coeffs[m] * m
    if rest.free_symbols & later:
        return False
    lo, hi = solve_inside(coeffs[m], rest, size)
    start, stop = bounds[m]
    bounds[m] = (sympy.Max(start, lo), sympy.Min(stop, hi))
    return True


def _bordered(comp: Comprehension, bounds, access, unsafe, fill) -> tuple[Stmt, ...] | None:
    """A comprehension whose one read can leave its tensor, split so that no point tests.

    Each axis that can leave is solved for its innermost free variable, whose loop then
    runs in three parts: the border before (storing what the body is with the fill read),
    the interior (reading), and the border after: a zero-padded copy with no branch per
    element. None when an index has no such variable.
    """
    order = [d.var for d in comp.free]
    split: dict[sympy.Symbol, list] = {}
    for idx, size in unsafe:
        coeffs, _ = affine_terms(idx, order)
        if not coeffs:
            return None
        v = max(coeffs, key=order.index)
        split.setdefault(v, []).append((coeffs[v], idx - coeffs[v] * v, size))
    border = sympy.simplify(comp.body.xreplace({access: fill}))

    def nest(i: int, value) -> tuple[Stmt, ...]:
        if i == len(comp.free):
            return (Store(comp.output, value),)
        v = comp.free[i].var
        start, stop = bounds[v]
        if v not in split or value is border:
            return (Loop(v, start, stop, nest(i + 1, value)),)
        lo, hi = start, stop
        for coeff, rest, size in split[v]:
            first, last = solve_inside(coeff, rest, size)
            lo, hi = sympy.Max(lo, first), sympy.Min(hi, last)
        interior = Loop(v, lo, hi, nest(i + 1, value))
        if border == comp.output:  # the border would store what is there: no border loops
            return (interior,)
        edge = nest(i + 1, border)
        parts = (Loop(v, start, sympy.Min(lo, stop), edge), interior,
                 Loop(v, sympy.Max(lo, hi), stop, edge))
        return tuple(p for p in parts if not is_proven(p.start >= p.stop))  # no empty loops

    return nest(0, comp.body)


def _contiguous(comp: Comprehension, shapes) -> bool:
    """Whether the innermost reduced variable runs at least 16 steps and every read of the
    body steps by 0 or 1 element along it: a sum over it then vectorises (a strided one
    would gather, and lose)."""
    if not comp.reduced:
        return False
    extent = sympy.sympify(comp.reduced[-1].extent)
    if extent.is_number and extent < 16:
        return False  # too short to fill a vector
    v = comp.reduced[-1].var
    steps = [strides(a, shapes[str(a.base.label)], [v])[0].get(v, 0)
             for a in comp.body.atoms(sympy.Indexed)]
    return all(step in (0, 1) for step in steps)


def _nest(comp: Comprehension, bounds, guards, contiguous: bool = False) -> tuple[Stmt, ...]:
    guard = (lambda e: e.xreplace(guards)) if guards else (lambda e: e)
    vector = contiguous and comp.reduction is Reduction.SUM
    kinds = {comp.reduced[-1].var: LoopKind.VECTOR} if vector else {}
    stmts = _point(comp, bounds, guard, kinds)
    if not comp.free and comp.reduction is not Reduction.NONE:
        return (Block(stmts),)
    for d in reversed(comp.free):
        stmts = (Loop(d.var, *bounds[d.var], stmts),)
    return stmts


def _point(comp: Comprehension, bounds, guard, kinds: dict) -> tuple[Stmt, ...]:
    """The statements computing one output point: its reduction's loops (of the kinds
    given per variable, else serial) around an accumulator, then the store."""
    body = guard(comp.body)
    if comp.reduction is Reduction.NONE:
        return (Store(comp.output, body),)
    if comp.reduction is Reduction.ARGMAX:
        inner: tuple[Stmt, ...] = (ArgMaxUpdate(body, row_major(comp.reduced)),)
        for d in reversed(comp.reduced):
            inner = (Loop(d.var, *bounds[d.var], inner),)
        return (Let(ACC, -sympy.oo), Let(ARG, sympy.Integer(-1)), *inner,
                Store(comp.output, ARG))
    inner = (Update(ACC, comp.reduction, body),)
    for d in reversed(comp.reduced):
        inner = (Loop(d.var, *bounds[d.var], inner, kinds.get(d.var, LoopKind.SERIAL)),)
    init = comp.reduction.identity if comp.init is None else guard(comp.init)
    final = ACC if comp.final is None else guard(comp.final)
    return (Let(ACC, init), *inner, Store(comp.output, final))
