"""Counting the points of a comprehension's domain: what its loops visit once its
``where`` constraints and the reads that fall in the padding are taken out (the FLOPs
`explain` reports, the work the cost model prices)."""

from __future__ import annotations

import numpy as np
import sympy

from .affine import affine_terms, is_proven_inside
from .comprehension import Comprehension


def points(comp: Comprehension, shapes: dict[str, tuple], limit: int = 10**6) -> sympy.Expr:
    """How many points a comprehension's domain has, after its ``where`` constraints and
    the reads that fall in the padding (which lowering skips) are taken out.

    Variables tied by constraints (an output position and a kernel tap) are counted
    together by enumerating their box; a box over ``limit`` points counts whole.
    """
    variables = [d.var for d in comp.variables]
    reduced = {d.var for d in comp.reduced}
    where = list(comp.where)
    dims = {d.var: d for d in comp.variables}
    for a in comp.accesses():
        if comp.fill_of(str(a.base.label)) is not None:
            for i, size in zip(a.indices, shapes[str(a.base.label)]):
                box = {v: dims[v] for v in sympy.sympify(i).free_symbols if v in dims}
                if set(box) & reduced and not is_proven_inside(i, box, size):
                    where.append((i, 0, size))
    groups = [set(affine_terms(e, variables)[0]) for e, _, _ in where]
    merged: list[set] = []
    for g in groups:
        for other in [m for m in merged if m & g]:
            merged.remove(other)
            g |= other
        merged.append(g)
    count = sympy.Integer(1)
    tied = set().union(*merged) if merged else set()
    for d in comp.variables:
        if d.var not in tied:
            count *= d.extent
    for group in merged:
        dims = [d for d in comp.variables if d.var in group]
        count *= _count_box(dims, where, limit)
    return count


def _count_box(dims, where, limit) -> sympy.Expr:
    """The points of a box that satisfy ``where``; the whole box when its extents are
    variable sizes (an upper bound) or it has over ``limit`` points."""
    if not all(sympy.sympify(d.extent).is_number and sympy.sympify(d.start).is_number
               for d in dims):
        return sympy.Mul(*[d.extent for d in dims])
    sizes = [int(d.extent) for d in dims]
    if np.prod(sizes, dtype=float) > limit:
        return int(np.prod(sizes))
    grids = np.meshgrid(*[np.arange(int(d.start), int(d.stop)) for d in dims], indexing="ij")
    env = {d.var: g for d, g in zip(dims, grids)}
    inside = np.ones(grids[0].shape, bool) if grids else np.ones((), bool)
    for e, lo, hi in where:
        if e.free_symbols <= set(env):
            value = sympy.lambdify(list(env), e, "numpy")(*env.values())
            inside &= (value >= int(lo)) & (value < int(hi))
    return int(inside.sum())
