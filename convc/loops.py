"""Loop-nest layer: the imperative form a comprehension lowers to, before C.

Frozen nodes: `Loop` over ``start <= var < stop``, `Let` (a local scalar), `Update` (fold a
value into a local with a reduction), `Store` (write a tensor element), `RowsStore` (write
vectors' lanes as rows), `TransposeTile` (copy a tile transposed) and `Gemm` (a call of the
runtime's matrix product, see `contract`). A `Kernel` is the nest of one graph node, with
the origin it carries into the C comment.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sympy

from .contract import Gemm
from .spectral import Spectra, Transform
from .ir.comprehension import Reduction


class LoopKind(str, enum.Enum):
    """``parallel``: its iterations write disjoint elements and may run on several threads
    (the outermost free variable of a comprehension). ``vector``: its iterations add into
    one accumulator and may do so in any order, in vector lanes (the innermost loop of a
    sum). ``unroll``: a few iterations of constant count, written out one after another
    (a short window summed in registers, so that the loop around it vectorises)."""

    SERIAL = "serial"
    PARALLEL = "parallel"
    VECTOR = "vector"
    UNROLL = "unroll"


@dataclass(frozen=True)
class Let:
    """A local: a scalar, or with ``vector`` a vector of the target's width (64 bytes),
    the `VLoad` ``value`` or every lane zero (``value`` 0); with ``count``, an array of
    that many, every one zero."""

    var: sympy.Symbol
    value: sympy.Expr
    vector: bool = False
    count: int | None = None


class VLoad(sympy.Function):
    """The vector of consecutive elements from an access (its index the first lane's);
    ``VLoad(access, n)``: only the first ``n``, the other lanes zero."""


class VSum(sympy.Function):
    """The sum of a vector's lanes."""


class At(sympy.Function):
    """An element of a local array, or a lane of a vector local: ``At(v, i)`` is ``v[i]``."""

    def _sympystr(self, printer) -> str:
        return f"{printer._print(self.args[0])}[{printer._print(self.args[1])}]"


@dataclass(frozen=True)
class Update:
    var: sympy.Expr  # a local, or an element of a local array (`At`)
    reduction: Reduction
    value: sympy.Expr


@dataclass(frozen=True)
class ArgMaxUpdate:
    """``if (value > acc) { acc = value; arg = index; }``: the first maximum wins."""

    value: sympy.Expr
    index: sympy.Expr


@dataclass(frozen=True)
class Store:
    target: sympy.Indexed
    value: sympy.Expr


@dataclass(frozen=True)
class RowsStore:
    """Lane ``l`` of the vectors ``source[i]`` (``i < width``) to the element ``l·stride +
    i·step`` past ``target`` (``add``: added to it), for the lanes ``l < rows``: outputs held
    one per vector along a row of step 1 or 2 (a phase of a strided input gradient), stored
    a row of them at a time (the runtime's transposing stores)."""

    target: sympy.Indexed
    stride: sympy.Expr
    source: sympy.Symbol
    width: int
    rows: sympy.Expr
    step: int = 1
    add: bool = False


@dataclass(frozen=True)
class TransposeTile:
    """``target[c·target_stride + r] = source[r·source_stride + c]`` for ``r < rows`` and
    ``c < cols``, each at most the vector's lanes, the accesses those of ``r = c = 0``: a
    tile of a copy that moves a strided axis innermost (the output gradient laid out in
    vectors of channels), by the runtime's transposing copy."""

    target: sympy.Indexed
    target_stride: sympy.Expr
    source: sympy.Indexed
    source_stride: sympy.Expr
    rows: int
    cols: int


@dataclass(frozen=True)
class Block:
    """A scope of its own (a comprehension with no free variable declares its local here)."""

    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Loop:
    """``for var in range(start, stop, step)``; a parallel loop shares among the threads
    the iterations of ``collapse`` loops, itself and those perfectly nested in it."""

    var: sympy.Symbol
    start: sympy.Expr
    stop: sympy.Expr
    body: tuple[Stmt, ...]
    kind: LoopKind = LoopKind.SERIAL
    step: int = 1
    collapse: int = 1


Stmt = (Block | Loop | Let | Update | ArgMaxUpdate | Store | RowsStore | TransposeTile | Gemm
        | Transform | Spectra)


@dataclass(frozen=True)
class Kernel:
    """The loop nests computing one graph node, in order (one per comprehension)."""

    node: str
    nests: tuple[Stmt, ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]

    @property
    def can_fail(self) -> bool:
        """Whether it calls the runtime, which can run out of memory."""
        return any(isinstance(s, Gemm | Transform | Spectra) for s in walk(self.nests))

    @property
    def blocked(self) -> bool:
        """Whether it holds register-blocked sums (an array of vector accumulators), which
        broadcast their signal's values from memory (`CONVC_BROADCASTING`)."""
        return any(isinstance(s, Let) and s.count for s in walk(self.nests))

    @property
    def transforms(self) -> list[Transform]:
        """The FFTs it runs, which share the module's FFT scratch."""
        return [s for s in walk(self.nests) if isinstance(s, Transform)]


def fused(first: tuple[Stmt, ...], second: tuple[Stmt, ...], outer: bool = False,
          collapsed: int = 0) -> tuple[Stmt, ...] | None:
    """One nest running ``first`` then ``second`` in each iteration of the loops they
    share, when they are loops of the same headers around straight-line bodies (an
    elementwise op's outputs: their bodies vectorise together); None otherwise (a nest
    with a reduction keeps its loops: fused, its innermost loop vectorised worse). With
    ``outer``, any bodies: below the loops they share, each runs in a scope of its own
    (the phases of a strided input gradient, blocked sums writing rows that then stay in
    the cache from one phase to the next). The caller answers for the order: nothing
    ``second`` reads may be written by ``first``, nor the other way round. ``collapsed``:
    how many levels down the loops must stay one in another (a collapsed parallel loop's)."""
    if len(first) != 1 or len(second) != 1:
        return None
    a, b = first[0], second[0]
    if not (isinstance(a, Loop) and isinstance(b, Loop)) or _header(a) != _header(b):
        return None
    inner = max(collapsed, a.collapse) - 1
    body = fused(a.body, b.body, outer, inner)
    if body is None:
        if outer and inner == 0:
            body = (Block(a.body), Block(b.body))
        elif any(isinstance(s, Loop | Block | Let) for s in walk(a.body + b.body)):
            return None
        else:
            body = a.body + b.body
    return (Loop(a.var, a.start, a.stop, body, a.kind, a.step, a.collapse),)


def _header(loop: Loop) -> tuple:
    return loop.var, loop.start, loop.stop, loop.kind, loop.step, loop.collapse


def walk(stmts) -> list[Stmt]:
    """Every statement, pre-order."""
    out = []
    for s in stmts:
        out.append(s)
        if isinstance(s, Loop | Block):
            out.extend(walk(s.body))
    return out


def format_nest(stmts, indent: str = "") -> str:
    """The nest as indented pseudo-code, for explain() and debugging."""
    lines = []
    for s in stmts:
        if isinstance(s, Loop):
            tag = f"  ({s.kind.value})" if s.kind is not LoopKind.SERIAL else ""
            tag = f"  (parallel, {s.collapse} loops)" if s.collapse > 1 else tag
            step = f" step {s.step}" if s.step != 1 else ""
            lines.append(f"{indent}for {s.var} in [{s.start}, {s.stop}){step}:{tag}")
            lines.append(format_nest(s.body, indent + "  "))
        elif isinstance(s, Block):
            lines.append(format_nest(s.body, indent))
        elif isinstance(s, Let):
            vector = "vector of " if s.vector and not isinstance(s.value, VLoad) else ""
            vector = f"{s.count} vectors of " if s.count else vector
            lines.append(f"{indent}{s.var} = {vector}{s.value}")
        elif isinstance(s, ArgMaxUpdate):
            lines.append(f"{indent}if {s.value} > acc: acc, arg = {s.value}, {s.index}")
        elif isinstance(s, Gemm):
            assign = "+=" if s.accumulate else "="
            lines.append(f"{indent}{s.c.tensor} {assign} {s.a.tensor} @ {s.b.tensor}   "
                         f"({s.describe()})")
        elif isinstance(s, Transform):
            lines.append(f"{indent}{s.target} = {s.describe()}")
        elif isinstance(s, Spectra):
            lines.append(f"{indent}{s.c.tensor} = {s.a.tensor} * {s.b.tensor}   "
                         f"({s.describe()})")
        elif isinstance(s, RowsStore):
            every = f" every {s.step}" if s.step != 1 else ""
            lines.append(f"{indent}{s.target} on {'+' if s.add else ''}= {s.source} "
                         f"transposed   ({s.rows} rows of {s.width}{every}, {s.stride} apart)")
        elif isinstance(s, TransposeTile):
            lines.append(f"{indent}{s.target} on = {s.source} on, transposed   "
                         f"({s.cols} rows of {s.rows}, {s.target_stride} apart, from "
                         f"{s.rows} rows {s.source_stride} apart)")
        elif isinstance(s, Update):
            op = "+=" if s.reduction is Reduction.SUM else "max="
            lines.append(f"{indent}{s.var} {op} {s.value}")
        else:
            lines.append(f"{indent}{s.target} = {s.value}")
    return "\n".join(lines)
