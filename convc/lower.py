"""Lowering: comprehension -> loop nest.

The free variables become the outer loops, the reduced ones the inner loops around an
accumulator (`reductions.point`), or one of the vectorising forms of a short or
few-output sum (`reductions`). An access that can leave its tensor is handled in one of two
ways, read off the comprehension, never off the op (`borders`):

* **clipped**: when reading the fill value would leave the reduction unchanged (a zero in a
  product under a sum, -∞ under a max), the terms that read outside are dropped by tightening
  the bounds of the one reduced variable in that index (`affine.solve_inside`). The inner
  loop then has no bounds test: this is implicit zero padding done right.
* **guarded**: otherwise the access becomes ``cond ? access : fill``, or, in a copy, the
  loops run in an interior with no test between thin borders.
"""

from __future__ import annotations

from dataclasses import replace

import sympy

from . import blocked, borders, reductions
from .blocked import Blocked
from .errors import DerivationError
from .ir.affine import never_meet, strides
from .ir.comprehension import Comprehension, Dim, Reduction
from .loops import Block, Kernel, Loop, LoopKind, Stmt, TransposeTile, fused
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
    registers = reductions.outputs_in_registers(comp, shapes, lanes, integers)
    if registers is not None:
        return _parallel(comp, registers)
    windowed = reductions.windowed(comp, shapes)
    passes = [] if windowed else reductions.reduction_outside(comp, shapes) or [comp]
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
            or (read not in comp.inside and borders.unsafe_axes(comp, read, shapes))):
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
        if not borders.bound(comp, constraint, bounds):
            return ()  # no point satisfies the constraints: nothing to compute
    guards, leaving = {}, {}
    for access in comp.accesses():
        if access in comp.inside:
            continue
        unsafe = borders.unsafe_axes(comp, access, shapes)
        if not unsafe:
            continue
        fill = comp.fill_of(str(access.base.label))
        if fill is None:
            raise DerivationError(
                f"{comp.tensor}: access {access} can leave tensor {access.base.label} "
                f"of shape {shapes[str(access.base.label)]} and the comprehension gives no "
                f"fill value for it")
        if borders.annihilates(comp, access, fill):
            unsafe = [ax for ax in unsafe if not borders.clip(comp, ax, bounds)]
        if unsafe:
            inside = sympy.And(*[sympy.And(idx >= 0, idx < size) for idx, size in unsafe])
            guards[access] = sympy.Piecewise((access, inside), (fill, True))
            leaving[access] = (unsafe, fill)
    if leaving and comp.reduction is Reduction.NONE and not comp.where:
        if len(leaving) == 1:
            (access, (unsafe, fill)), = leaving.items()
            nest = borders.bordered(comp, bounds, access, unsafe, fill)
        else:
            nest = borders.tested_at_borders(comp, leaving)
        if nest is not None:
            return nest
    return _nest(comp, bounds, guards, reductions.contiguous(comp, shapes))


def lower_node(node: str, inputs: tuple[str, ...], parts, shapes: dict[str, tuple],
               lanes: int = 1, integers: frozenset = frozenset()) -> Kernel:
    """The kernel of one graph node: its comprehensions (and matrix products) in order.

    It reads the tensors its parts use (the node's ``inputs`` first, in their order) and
    writes each part's output, once each. ``lanes``, ``integers``: see
    `lower_comprehension`.
    """
    parts = _packings_first(parts)
    nests = _fused_siblings([(_lower_part(p, shapes, lanes, integers), p) for p in parts])
    writes = tuple(dict.fromkeys(written(p) for p in parts))
    used = {t for p in parts for t in _read(p)} - set(writes)
    reads = [t for t in dict.fromkeys(inputs) if t in used] + sorted(used - set(inputs))
    return Kernel(node, nests, tuple(reads), writes)


def _packings_first(parts: list) -> list:
    """The parts in order, but a comprehension that follows blocked sums it neither reads
    nor feeds (the next phase's kernel laid out in vectors) moved before them: the sums are
    then siblings that may share their loops (`_fused_siblings`)."""
    out: list = []
    for part in parts:
        at = len(out)
        if isinstance(part, Comprehension):
            while at and isinstance(out[at - 1], Blocked) and not _ordered(out[at - 1], part):
                at -= 1
        out.insert(at, part)
    return out


def _ordered(first, second) -> bool:
    """Whether ``second`` must run after ``first``: one reads what the other writes, or
    both write one tensor."""
    return (written(first) in _read(second) or written(second) in _read(first)
            or written(first) == written(second))


def _fused_siblings(lowered: list[tuple[tuple[Stmt, ...], object]]) -> tuple[Stmt, ...]:
    """The parts' nests in order, consecutive comprehensions over the same loops run in one
    nest (a ReLU and its mask: one pass over what they read, one parallel region) where
    neither reads what the other writes, and what both write they write at elements apart
    (the phases of Winograd's output transform: one pass over the products). Consecutive
    blocked sums share the loops they have in common, each in a scope of its own below (the
    phases of a strided input gradient: a row two of them write stays in the cache). A
    product or a transform is never fused."""
    out: list[tuple[tuple[Stmt, ...], list | None]] = []
    for nest, part in lowered:
        if not isinstance(part, Comprehension | Blocked):
            out.append((nest, None))
            continue
        group = out[-1][1] if out else None
        if group and type(group[0]) is type(part) and _independent(group, part):
            merged = fused(out[-1][0], nest, outer=isinstance(part, Blocked))
            if merged is not None:
                out[-1] = (merged, [*group, part])
                continue
        out.append((nest, [part]))
    return tuple(s for nest, _ in out for s in nest)


def _independent(group: list, part) -> bool:
    """Whether ``part`` can run in the loops of ``group``: it reads nothing they write, they
    read nothing it writes (but a blocked sum's own outputs, which it adds to), and where
    they write its tensor, never an element it writes."""
    reads, writes = set(_read_elsewhere(part)), written(part)
    if reads & {written(g) for g in group} or any(writes in _read_elsewhere(g) for g in group):
        return False
    variables = sorted({v for c in (*group, part) for v in _variables(c)}, key=str)
    return all(never_meet(g.output, part.output, variables)
               for g in group if written(g) == writes)


def _read_elsewhere(part) -> list[str]:
    """The tensors a part reads, but a blocked sum's own, which it reads only where it
    writes (its outputs are its initial values)."""
    own = isinstance(part, Blocked) and part.init == part.output
    return [t for t in _read(part) if not (own and t == part.tensor)]


def _variables(part) -> tuple:
    return part.variables if isinstance(part, Blocked) else tuple(d.var for d in part.variables)


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
    if run < 2 or any(a not in comp.inside and borders.unsafe_axes(comp, a, shapes)
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


def _nest(comp: Comprehension, bounds, guards, contiguous: bool = False) -> tuple[Stmt, ...]:
    guard = (lambda e: e.xreplace(guards)) if guards else (lambda e: e)
    vector = contiguous and comp.reduction is Reduction.SUM
    kinds = {comp.reduced[-1].var: LoopKind.VECTOR} if vector else {}
    stmts = reductions.point(comp, bounds, guard, kinds)
    if not comp.free and comp.reduction is not Reduction.NONE:
        return (Block(stmts),)
    for d in reversed(comp.free):
        stmts = (Loop(d.var, *bounds[d.var], stmts),)
    return stmts


