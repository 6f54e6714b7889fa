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

from dataclasses import replace

import sympy

from .errors import DerivationError
from .ir.affine import affine_terms, index_range, is_proven, solve_inside
from .ir.comprehension import ACC, ARG, Comprehension, Reduction, row_major
from .loops import ArgMaxUpdate, Block, Kernel, Let, Loop, Stmt, Store, Update


def lower_comprehension(comp: Comprehension, shapes: dict[str, tuple]) -> tuple[Stmt, ...]:
    """The loop nest of one comprehension; ``shapes`` gives every tensor it reads."""
    comp = _fold_single_points(comp)
    bounds = {d.var: (d.start, d.stop) for d in comp.variables}
    for constraint in comp.where:
        if not _bound(comp, constraint, bounds):
            return ()  # no point satisfies the constraints: nothing to compute
    guards = {}
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
    return _nest(comp, bounds, guards)


def lower_node(node: str, inputs: tuple[str, ...], comps, shapes: dict[str, tuple]) -> Kernel:
    """The kernel of one graph node: its comprehensions lowered in order.

    It reads the tensors its comprehensions use (the node's ``inputs`` first, in their
    order) and writes each comprehension's output, once each.
    """
    nests = tuple(s for c in comps for s in lower_comprehension(c, shapes))
    writes = tuple(dict.fromkeys(c.tensor for c in comps))
    used = {t for c in comps for t in c.inputs()} - set(writes)
    reads = [t for t in dict.fromkeys(inputs) if t in used] + sorted(used - set(inputs))
    return Kernel(node, nests, tuple(reads), writes)


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
    return True


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


def _nest(comp: Comprehension, bounds, guards) -> tuple[Stmt, ...]:
    guard = (lambda e: e.xreplace(guards)) if guards else (lambda e: e)
    body = guard(comp.body)
    if comp.reduction is Reduction.NONE:
        stmts: tuple[Stmt, ...] = (Store(comp.output, body),)
    elif comp.reduction is Reduction.ARGMAX:
        inner: tuple[Stmt, ...] = (ArgMaxUpdate(body, row_major(comp.reduced)),)
        for d in reversed(comp.reduced):
            inner = (Loop(d.var, *bounds[d.var], inner),)
        stmts = (Let(ACC, -sympy.oo), Let(ARG, sympy.Integer(-1)), *inner,
                 Store(comp.output, ARG))
    else:
        inner = (Update(ACC, comp.reduction, body),)
        for d in reversed(comp.reduced):
            inner = (Loop(d.var, *bounds[d.var], inner),)
        init = comp.reduction.identity if comp.init is None else guard(comp.init)
        final = ACC if comp.final is None else guard(comp.final)
        stmts = (Let(ACC, init), *inner, Store(comp.output, final))
    if not comp.free and comp.reduction is not Reduction.NONE:
        return (Block(stmts),)
    for d in reversed(comp.free):
        stmts = (Loop(d.var, *bounds[d.var], stmts),)
    return stmts
