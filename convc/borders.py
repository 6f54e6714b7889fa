"""Reads that can leave their tensors (padding), handled from the comprehension alone.

`unsafe_axes` finds the axes along which a read is not proven inside; where reading the fill
there would not change the reduction (`annihilates`), `clip` and `bound` tighten a reduced
loop's bounds so that the read never leaves (no test in the loop); otherwise a loop variable
that moves the read runs in three parts, its interior (no test) between two borders:
`interiors` solves the ranges, `split_nest` builds the loops, `guards` tests the reads
left at the borders, and `bordered` and `tested_at_borders` split a copy that has no sum.
"""

from __future__ import annotations

from dataclasses import replace

import sympy

from .errors import DerivationError
from .ir.affine import affine_terms, index_range, is_proven, solve_inside
from .ir.comprehension import Comprehension, Dim, Reduction
from .loops import Loop, LoopKind, Stmt, Store


def unsafe_axes(comp, access, shapes) -> list[tuple[sympy.Expr, sympy.Expr]]:
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


def annihilates(comp: Comprehension, access, fill) -> bool:
    """Whether every term reading ``fill`` for ``access`` is the reduction's identity."""
    if comp.reduction is Reduction.NONE:
        return False
    for extra in (comp.init, comp.final):
        if extra is not None and extra.has(access):
            return False
    term = sympy.simplify(comp.body.xreplace({access: fill}))
    return term == comp.reduction.identity


def clip(comp: Comprehension, axis, bounds) -> bool:
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


def bound(comp: Comprehension, constraint, bounds) -> bool:
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


def bounds_as_fill(comp: Comprehension, shapes) -> Comprehension:
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


def interiors(comp: Comprehension, shapes, loops, window) -> tuple[dict, list] | None:
    """Where the reads that can leave their tensors stay inside: for each loop variable (of
    ``loops``) that moves such a read, the range in which it is inside for every point of
    ``window``; and ``(access, axis, variable)`` for each axis it can leave along. None when
    a read can leave along an axis not of the form `_whole_window` solves, or reading its
    fill would change the result."""
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}
    ranges: dict[sympy.Symbol, tuple] = {}
    axes = []
    for access in comp.accesses():
        unsafe = [] if access in comp.inside else unsafe_axes(comp, access, shapes)
        fill = comp.fill_of(str(access.base.label))
        if unsafe and (fill is None or not annihilates(comp, access, fill)):
            return None
        for axis in unsafe:
            found = _whole_window(comp, axis, loops, window)
            if found is None:
                return None
            v, lo, hi = found
            start, stop = ranges.get(v, bounds[v])
            ranges[v] = (sympy.Max(start, lo), sympy.Min(stop, hi))
            axes.append((access, axis, v))
    return ranges, axes


def interior_range(d: Dim, interiors: dict) -> tuple[sympy.Expr, sympy.Expr]:
    """``d``'s interior range clamped to its own: ``start <= lo <= hi <= stop``."""
    lo = sympy.Max(d.start, sympy.Min(interiors[d.var][0], d.stop))
    return lo, sympy.Max(lo, sympy.Min(interiors[d.var][1], d.stop))


def split_nest(dims, interiors: dict, body, kind_of=lambda i: LoopKind.SERIAL,
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
        lo, hi = interior_range(d, interiors)
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


def guards(tested, inside: frozenset) -> dict:
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


def bordered(comp: Comprehension, bounds, access, unsafe, fill) -> tuple[Stmt, ...] | None:
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


def tested_at_borders(comp: Comprehension, leaving: dict) -> tuple[Stmt, ...] | None:
    """A comprehension with no sum whose reads (several: Winograd's input transform reads
    a tile's corners) can leave their tensors along axes each moved by one free variable:
    each such variable's loop runs in three parts (`split_nest`), and only points outside
    the interiors test their reads. None when an axis moves with several variables."""
    interiors: dict[sympy.Symbol, tuple] = {}
    tested = []
    for access, (unsafe, fill) in leaving.items():
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
        return (Store(comp.output, comp.body.xreplace(guards(tested, inside))),)

    return split_nest(comp.free, interiors, point)
