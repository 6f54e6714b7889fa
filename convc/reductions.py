"""How a reduction's loops are laid out, around one output point or several.

`point` is the plain form: the reduction's loops around an accumulator, then the store. Short
or few-output sums take one of three forms that vectorise: `windowed` keeps a short window's
sum in a register per output point along a row of outputs, `reduction_outside` adds each of
the window's rows into the output instead, and `outputs_in_registers` keeps few outputs in
registers along a long contiguous sum. `vector_row` tells which a sum takes (the cost
model's rate of direct loops, `contract.direct_rate`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import sympy

from . import borders
from .ir.affine import is_proven, strides
from .ir.comprehension import ACC, ARG, Comprehension, Dim, Reduction, row_major
from .loops import ArgMaxUpdate, Block, Let, Loop, LoopKind, Stmt, Store, Update, VLoad, VSum
from .ops import estimate


SHORT_REDUCTION = 64
"""The most points a reduction may have to be moved outside the innermost free loop."""

SHORT_ROW = 8
"""The fewest points a row of outputs needs for a short reduction to run along it in vectors
(`_short_window`): LeNet's input gradient sums its shifted columns along rows of 12, one
masked vector each, 1.6x faster than point by point."""

SHORT_WINDOW = 27
"""The most points a window may have to be summed in registers (`windowed`): a longer one
chains too many dependent additions per output; it adds whole rows instead."""

BORDER_POINTS = 4
"""The most points a border of a reduced variable (`outputs_in_registers`) may have to be
written out point by point, each with its reads' tests decided (the rows a 3x3 kernel's
padding adds: then their columns run in vectors too)."""

REGISTER_OUTPUTS = 16
"""The most outputs `outputs_in_registers` keeps in registers at once."""

ACCUMULATORS = tuple(sympy.Symbol(f"acc{i}") for i in range(REGISTER_OUTPUTS))
VECTOR_ACCUMULATORS = tuple(sympy.Symbol(f"vacc{i}") for i in range(REGISTER_OUTPUTS))


def vector_row(comp: Comprehension, shapes) -> tuple[str, float] | None:
    """``("registers", row)`` for a sum into few outputs (`outputs_in_registers`),
    ``("window", row)`` for a short window (`windowed`, `reduction_outside`), with the
    row along which it runs vectorised; None when it does not run either way."""
    if _register_dims(comp, shapes) is not None:
        return "registers", estimate(comp.reduced[-1].stop)
    if _window_plan(comp, shapes) is None and reduction_outside(comp, shapes) is None:
        return None
    return "window", estimate(comp.free[-1].stop)


def point(comp: Comprehension, bounds, guard, kinds: dict) -> tuple[Stmt, ...]:
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


def windowed(comp: Comprehension, shapes) -> tuple[Stmt, ...] | None:
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

    def body(inside: set, _fixed: dict) -> tuple[Stmt, ...]:
        clipped = dict(bounds)
        for _, axis, v in axes:
            if v not in inside:
                borders.clip(comp, axis, clipped)
        fixed = {d.var: LoopKind.UNROLL for d in comp.reduced
                 if all(sympy.sympify(b).is_number for b in clipped[d.var])}
        return point(comp, clipped, lambda e: e, fixed)

    return borders.split_nest(comp.free, interiors, body)


def _window_plan(comp: Comprehension, shapes) -> tuple | None:
    """``(comp, interiors, axes)`` for `windowed` (``comp`` with a sum's bounds as its
    fill), or None when the comprehension does not run that way."""
    if comp.reduction is Reduction.SUM:
        comp = borders.bounds_as_fill(comp, shapes)
    if not _short_window(comp, shapes) or comp.where:
        return None
    if math.prod(int(d.stop) for d in comp.reduced) > SHORT_WINDOW:
        return None
    found = borders.interiors(comp, shapes, [d.var for d in comp.free], comp.reduced)
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}
    if found is None or not all(borders.clip(comp, axis, dict(bounds)) for _, axis, _ in found[1]):
        return None
    return comp, *found


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


def reduction_outside(comp: Comprehension, shapes) -> list[Comprehension] | None:
    """A short sum or max over a window (pooling, a depthwise kernel) as passes whose
    innermost loop is the output's contiguous axis, which vectorises: the output starts at
    the initial value, each window point adds (or maxes) a whole row into it, then ``final``
    (an average's division) applies. Constraints may tie the window to the outer free
    variables (a gathered input gradient's ``0 <= j - m < J``), not to the row's. None
    when the comprehension is not of that shape."""
    if comp.reduction is Reduction.SUM:
        comp = borders.bounds_as_fill(comp, shapes)
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


def outputs_in_registers(comp: Comprehension, shapes, lanes: int = 1,
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
    comp = borders.bounds_as_fill(comp, shapes)
    interiors, tested = borders.interiors(comp, shapes, [d.var for d in comp.reduced], small)
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
        body = comp.body.xreplace(borders.guards(reads, inside)).xreplace(fixed)
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
        lo, hi = borders.interior_range(inner, interiors)
        loops = (*run(inner.start, lo, inside), *run(lo, hi, inside | {inner.var}),
                 *run(hi, inner.stop, inside))
        return tuple(s for s in loops
                     if not (isinstance(s, Loop) and is_proven(s.start >= s.stop)))

    init = comp.init if comp.init is not None else sympy.Integer(0)
    stmts: tuple[Stmt, ...] = (
        *(Let(a, init.xreplace(p)) for a, p in zip(accs, points)),
        *(Let(v, sympy.Integer(0), vector=True) for v in vaccs),
        *borders.split_nest(comp.reduced[:-1], interiors, innermost, unroll=BORDER_POINTS),
        *(Update(a, Reduction.SUM, VSum(v)) for a, v in zip(accs, vaccs)),
        *(Store(comp.output.xreplace(p), a) for a, p in zip(accs, points)))
    outer = comp.free[:len(comp.free) - len(small)]
    if not outer:
        return (Block(stmts),)
    for d in reversed(outer):
        stmts = (Loop(d.var, d.start, d.stop, stmts),)
    return stmts


def _register_dims(comp: Comprehension, shapes) -> list[Dim] | None:
    """The innermost free variables that `outputs_in_registers` moves inside the sum: of
    constant extents, up to `REGISTER_OUTPUTS` points (none: one output per point of the
    others, as a bias gradient has); None when the comprehension is not a
    plain sum over a box whose innermost reduced variable reads in steps of 0 or 1 (for at
    least 16 points), or a read can leave its tensor other than along a reduced variable
    moved by one of those free variables (`borders.interiors`)."""
    if comp.reduction is not Reduction.SUM or comp.final is not None or not comp.reduced:
        return None
    comp = borders.bounds_as_fill(comp, shapes)
    loop_vars = {d.var for d in comp.variables}
    if comp.where or any(d.start != 0 or d.stop.free_symbols & loop_vars
                         for d in comp.variables):
        return None
    if not contiguous(comp, shapes):
        return None
    small, count = [], 1
    for d in reversed(comp.free):
        if not d.stop.is_number or count * int(d.stop) > REGISTER_OUTPUTS:
            break
        small.insert(0, d)
        count *= int(d.stop)
    if borders.interiors(comp, shapes, [d.var for d in comp.reduced], small) is None:
        return None
    return small


def contiguous(comp: Comprehension, shapes) -> bool:
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
