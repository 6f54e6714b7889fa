"""Register-blocked direct convolution: a correlation or convolution summed with its outputs
held in vector registers, as a hand-blocked kernel would be.

A contraction ``O[free] = init + Σ_{reduced} S[..]·K[..]`` that `spectral.match` takes for
a correlation or convolution (any stride, dilation or phase) has, among its free variables,
one that only the kernel reads (the output channel ``k`` of the forward pass, the input
channel ``c`` of h, the output channel of g) and one that only the signal reads (an output
column of the forward pass and of h, the input channel of g). The first, ``v``, is cut into
vectors of ``lanes`` consecutive values (``v = lanes·vb + l``), the second, ``b``, into
blocks of ``width`` values (`WIDTH` at most); a block's ``width`` vectors of outputs are
accumulated in registers over the whole sum, then stored:

    acc_i[l] = Σ_{reduced} Kb[.., vb, .., l] · S[.., b0 + i, ..]      (i < width, l < lanes)
    O[.., v = lanes·vb + l, .., b = b0 + i, ..] = init + acc_i[l]

Each step of the sum loads one vector of the kernel and multiplies it by ``width`` signal
values, each broadcast to every lane: ``width`` independent fused multiply-adds per load,
enough to hide their latency. ``Kb`` is the kernel laid out with ``v`` in blocks of the
vector width, innermost (zero past the last of ``v``): a blocked layout, made once per call
and read in order; the signal is read from a zero-padded copy where it can leave its tensor
(as im2col's packing reads it), so no loop tests a bound. The store writes each lane to its
own place in the caller's layout, which stays as the graph has it.

Two schedules of the sum follow from its size. Where a block's sum would read more than
`CACHE` bytes of kernel vectors (g, summed over every image and position), its outermost
reduced loops run outside the blocks, and each block adds to what the stretch before
stored: the blocks of one stretch share the kernel vectors in the cache. Where the blocks
are too few to share among the threads (`SHARED`), the outermost reduced variable becomes
a free one of partial results, which the threads share with the blocks, and a second sum
adds them in order (Halide calls it rfactor): the same bits for any thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from .contract import _in_box, _padded, pack
from .ir.affine import strides
from .ir.comprehension import Comprehension, Dim, Reduction
from .loops import At, Block, Let, Loop, LoopKind, RowsStore, Stmt, Store, Update, VLoad
from .ops import estimate
from .spectral import correlation, fresh_name

WIDTH = 14
"""The most outputs along ``b`` kept in vector registers at once: with the kernel's vector
and a broadcast value, 16 of the target's 32 vector registers (the accumulators are an
array whose loops are unrolled: the compiler keeps each element in a register)."""

NARROWEST = 8
"""The fewest outputs a block should hold to keep the multiply-adds busy (their latency
over their throughput)."""

UNROLLED = 16
"""The longest innermost sum written out (a row of taps); a longer one stays a loop."""

CACHE = 2**18
"""Bytes of the kernel's vectors that one block's sum may read: beyond, the outermost
reduced variables loop outside the blocks (each block's outputs stored, then added to),
so that the blocks of one stretch of the sum share what they read from the cache."""

LONG_SUM = 512
"""The fewest points a block's sum keeps, so that its stores stay rare."""

SHARED = 16
"""The fewest blocks of outputs the threads share; with fewer, the sum is split
(`_split`)."""

PARTIALS = 2**22
"""The most elements the partial results of a split sum may take (16 MiB of float)."""

STRETCH = 2**16
"""The fewest vector multiply-adds a stretch of the sum taken outside the blocks keeps:
the threads share each stretch, and meet at its end."""

ACCUMULATORS = sympy.Symbol("vacc")
KERNEL_VECTOR = sympy.Symbol("vkernel")
LANE = sympy.Symbol("lane", integer=True, nonnegative=True)
LOCALS = (ACCUMULATORS, KERNEL_VECTOR, LANE)


@dataclass(frozen=True)
class Blocked:
    """``output = init + Σ_reduced VLoad(kernel)·signal``, blocked as the module says:
    ``loops`` (outermost first) are the free variables but ``block``, with ``vector``
    replaced by its vector index ``vector_block``; ``kernel`` is the blocked kernel's
    access at lane 0; ``extent`` the values of ``vector``; ``outside`` the reduced
    variables looped outside the blocks; ``rows`` the output's stride along ``vector``
    where each lane's outputs are a row (`_rows`), else None, and ``step`` the row's
    stride along ``block``."""

    tensor: str
    output: sympy.Indexed
    init: sympy.Expr | None
    signal: sympy.Indexed
    kernel: sympy.Indexed
    loops: tuple[Dim, ...]
    vector: sympy.Symbol
    vector_block: sympy.Symbol
    extent: int
    block: Dim
    reduced: tuple[Dim, ...]
    lanes: int
    width: int
    outside: tuple[Dim, ...] = ()
    rows: sympy.Expr | None = None
    step: int = 1

    def describe(self) -> str:
        return (f"register-blocked {self.tensor}: {self.lanes} x {self.vector} by "
                f"{self.width} x {self.block.var} in {self.width} vector accumulators")

    @property
    def lane_macs(self) -> sympy.Expr:
        """Multiply-adds in vector lanes, those past the last of ``vector`` included."""
        return sympy.Mul(*(d.stop for d in (*self.outside, *self.loops, self.block,
                                             *self.reduced)), self.lanes)

    @property
    def start(self) -> sympy.Symbol:
        """The first of a block's values of ``block``."""
        return sympy.Symbol(f"{self.block.var}_block", integer=True, nonnegative=True)

    @property
    def offset(self) -> sympy.Symbol:
        """A value's place in its block, which is its accumulator's."""
        return sympy.Symbol(f"{self.block.var}_in", integer=True, nonnegative=True)

    @property
    def variables(self) -> tuple[sympy.Symbol, ...]:
        """Every loop variable and local of its C: those it was given and those it adds."""
        return (*(d.var for d in (*self.outside, *self.loops, self.block, *self.reduced)),
                self.start, self.offset, *LOCALS)

    def reads(self) -> list[str]:
        return [str(self.signal.base.label), str(self.kernel.base.label)] + sorted(
            {str(a.base.label) for a in sympy.sympify(self.init or 0).atoms(sympy.Indexed)})


def plan(comp: Comprehension, shapes: dict[str, tuple], packed: dict, lanes: int
         ) -> tuple | None:
    """The padded signal (if needed), the blocked kernel and the `Blocked` sum computing
    ``comp``; None unless it is a correlation or convolution with a variable only the
    kernel reads and one only the signal reads, both of constant extent."""
    found = _found(comp, shapes, lanes)
    if found is None:
        return None
    comp, signal, kernel, vector, block = found
    parts = []
    if not _in_box(comp, signal, shapes):  # (its constraints, dropped, kept it inside)
        signal, pad = _padded(comp, signal, ((str(signal.base.label), sympy.Integer(0)),),
                              list(comp.variables), shapes, packed)
        parts += pad
    reduced = _reduction_order(comp, signal, shapes)
    vb = sympy.Symbol(f"{vector.var}_vector", integer=True, nonnegative=True)
    outer = [d for d in comp.free if d.var != block.var and kernel.has(d.var)
             and d.var != vector.var]
    taps = [d for d in reduced if kernel.has(d.var)]
    blocks = -(-int(vector.stop) // lanes)
    dims = [*outer, Dim(vb, 0, blocks), *taps, Dim(LANE, 0, lanes)]
    body = kernel.xreplace({vector.var: lanes * vb + LANE})
    name, made = pack(comp, "vectors", dims, body, ((str(kernel.base.label), sympy.Integer(0)),),
                      frozenset(), shapes, packed,
                      f"lays {kernel.base.label} out in vectors of {vector.var} for "
                      f"{comp.tensor}")
    parts += made
    blocked_kernel = sympy.IndexedBase(name)[(*(d.var for d in dims[:-1]), 0)]
    loops = tuple(Dim(vb, 0, blocks) if d.var == vector.var else d for d in comp.free
                  if d.var != block.var)
    outside = _outside(reduced, math.prod(estimate(d.stop) for d in (*loops, block)))
    split = None if outside else _split(reduced, loops, comp)
    if split is None:
        rows, step = (None if outside else _rows(comp.output, comp.init, vector.var,
                                                 block.var, shapes)) or (None, 1)
        return (*parts, Blocked(comp.tensor, comp.output, comp.init, signal, blocked_kernel,
                                loops, vector.var, vb, int(vector.stop), block,
                                tuple(reduced[len(outside):]), lanes,
                                _width(int(block.stop)), tuple(outside), rows, step))
    partial = fresh_name(f"{comp.tensor}~partial", shapes)
    shapes[partial] = (split.stop, *(d.stop for d in comp.free))
    at = sympy.IndexedBase(partial)[(split.var, *(d.var for d in comp.free))]
    total = Comprehension(output=comp.output, free=comp.free, reduced=(split,),
                          reduction=Reduction.SUM, body=at, init=comp.init,
                          equation=f"{comp.tensor}: its partial sums over {split.var}, in order")
    rows, step = _rows(at, None, vector.var, block.var, shapes) or (None, 1)
    return (*parts, Blocked(partial, at, None, signal, blocked_kernel, (split, *loops),
                            vector.var, vb, int(vector.stop), block,
                            tuple(d for d in reduced if d is not split), lanes,
                            _width(int(block.stop)), (), rows, step), total)


def price(comp: Comprehension, shapes: dict[str, tuple], lanes: int) -> float:
    """What the blocked sum costs, in the units of `contract.cost` (a multiply-add of a
    full matrix-product tile): a multiply-add in a vector lane costs as much, the lanes past
    the last of ``v`` are paid for too, and every element copied (the padded signal, the
    blocked kernel) or stored one lane at a time is a pass through memory (32, as in
    `col2im.price`). Infinite where it does not apply."""
    trial = dict(shapes)
    found = _found(comp, trial, lanes)
    if found is None:
        return math.inf
    comp, signal, kernel, vector, _ = found
    filled = int(vector.stop) / (lanes * -(-int(vector.stop) // lanes))
    macs = math.prod(estimate(d.stop) for d in comp.variables)
    copied = sum(math.prod(estimate(n) for n in trial[str(a.base.label)])
                 for a in (signal, kernel)) + math.prod(estimate(d.stop) for d in comp.free)
    return macs / filled + 32 * copied


def lower(part: Blocked, parallel: bool = True) -> tuple[Stmt, ...]:
    """The loop nest of a `Blocked` sum: the reduced loops taken outside, the free loops
    (with ``parallel``, shared by the threads, collapsed), the blocks of ``b`` (a last,
    narrower one where ``width`` does not divide it), and in each the accumulators, the
    sum and the stores."""
    b = part.block
    extent = int(b.stop)
    full, tail = extent - extent % part.width, extent % part.width
    start = part.start
    nest: tuple[Stmt, ...] = ()
    if full:
        nest += (Loop(start, 0, full, _tile(part, start, part.width), step=part.width),)
    if tail:
        nest += (Block(_tile(part, sympy.Integer(full), tail)),)
    for d in reversed(part.loops):
        nest = (Loop(d.var, d.start, d.stop, nest),)
    if parallel and part.loops:
        top = nest[0]
        nest = (Loop(top.var, top.start, top.stop, top.body, LoopKind.PARALLEL,
                     collapse=len(part.loops)),)
    for d in reversed(part.outside):
        nest = (Loop(d.var, d.start, d.stop, nest),)
    return nest


def _tile(part: Blocked, start: sympy.Expr, width: int) -> tuple[Stmt, ...]:
    """One block of ``width`` outputs along ``b`` from ``start``, ``lanes`` along ``v``:
    the array of accumulators, the sum and the stores (a row per lane where the outputs
    lie in rows, else lane by lane), the accumulators' loops unrolled."""
    b, i = part.block.var, part.offset

    def each(body: tuple[Stmt, ...]) -> Loop:
        return Loop(i, 0, width, body, LoopKind.UNROLL)

    acc = At(ACCUMULATORS, i)
    step: tuple[Stmt, ...] = (
        Let(KERNEL_VECTOR, VLoad(part.kernel), vector=True),
        each((Update(acc, Reduction.SUM,
                     KERNEL_VECTOR * part.signal.xreplace({b: start + i})),)))
    for n, d in enumerate(reversed(part.reduced)):
        unroll = n == 0 and sympy.sympify(d.stop).is_Integer and int(d.stop) <= UNROLLED
        step = (Loop(d.var, d.start, d.stop, step, LoopKind.UNROLL if unroll
                     else LoopKind.SERIAL),)
    last = sympy.Min(part.lanes, part.extent - part.lanes * part.vector_block)
    rows = last if part.extent % part.lanes else sympy.Integer(part.lanes)
    accumulators = Let(ACCUMULATORS, sympy.Integer(0), vector=True, count=width)
    if part.rows is not None:  # a row of outputs per lane (the runtime takes up to 16)
        corner = {part.vector: part.lanes * part.vector_block, b: start}
        add = part.init == part.output
        bias = () if part.init is None or add else (each((Update(acc, Reduction.SUM, VLoad(
            part.init.xreplace(corner), *(() if rows == part.lanes else (rows,)))),)),)
        return (accumulators, *step, *bias,
                RowsStore(part.output.xreplace(corner), part.rows, ACCUMULATORS, width, rows,
                          part.step, add))
    point = {part.vector: part.lanes * part.vector_block + LANE, b: start + i}
    init = sympy.Integer(0) if part.init is None else part.init.xreplace(point)
    target = part.output.xreplace(point)
    if part.outside:  # the first stretch of the sum starts from init, the others add
        first = sympy.And(*(sympy.Eq(d.var, d.start) for d in part.outside))
        init = sympy.Piecewise((init, first), (target, True))
    return (accumulators, *step,
            Loop(LANE, 0, rows, (each((Store(target, init + At(acc, LANE)),)),)))


def _rows(output, init, vector, block, shapes) -> tuple[sympy.Expr, int] | None:
    """The strides of ``output`` along ``vector`` and ``block`` where ``block`` walks it in
    steps of 1 or 2 (a phase of a strided layer's input gradient, which writes every other
    element of a row), and the initial value, if any, is the output itself (added to) or,
    at steps of 1, one read of unit stride along ``vector`` that ``block`` does not move (a
    bias): then the accumulators are stored, or added, a row of outputs per lane. Else
    None."""
    coeffs, _ = strides(output, shapes[str(output.base.label)], [vector, block])
    if vector not in coeffs or coeffs.get(block) not in (1, 2):
        return None
    if init == output or init is None:
        return coeffs[vector], coeffs[block]
    if coeffs[block] != 1:
        return None
    if not isinstance(init, sympy.Indexed):
        return None
    read, _ = strides(init, shapes[str(init.base.label)], [vector, block])
    if read.get(vector) != 1 or read.get(block, 0) != 0:
        return None
    return coeffs[vector], 1


def _width(extent: int) -> int:
    """The width of the blocks: as few as `WIDTH` allows, as even as they can be (128
    outputs: 9 blocks of 13 and one of 11, not 9 of 14 and one of 2)."""
    return -(-extent // -(-extent // WIDTH))


def _outside(reduced: list[Dim], vectors: float) -> list[Dim]:
    """The outermost reduced dimensions to loop outside the blocks: while a block's sum
    reads more than `CACHE` bytes of kernel vectors (64 a point), and what is left keeps at
    least `LONG_SUM` points and `STRETCH` vector multiply-adds over all ``vectors`` outputs
    (each stretch is one round of the threads)."""
    points = [estimate(sympy.sympify(d.stop)) for d in reduced]
    taken = 0
    while (taken < len(reduced) - 1 and math.prod(points[taken:]) * 64 > CACHE
           and math.prod(points[taken + 1:]) >= LONG_SUM
           and math.prod(points[taken + 1:]) * vectors >= STRETCH):
        taken += 1
    return reduced[:taken]


def _split(reduced: list[Dim], loops, comp: Comprehension) -> Dim | None:
    """The reduced dimension whose values each sum a partial result of their own, where the
    blocks alone are too few to share among threads (a small kernel's gradient: 5 blocks,
    each a sum over every image): the outermost, of at least 4 values (a batch of any
    size), if its partial results are not too many (`PARTIALS` elements)."""
    if not reduced or math.prod(estimate(d.stop) for d in loops) >= SHARED:
        return None
    first = reduced[0]
    count = estimate(sympy.sympify(first.stop))  # the batch, as `convc.ops.estimate` takes it
    if count < 4 or count * math.prod(estimate(d.stop) for d in comp.free) > PARTIALS:
        return None
    return first


def _found(comp: Comprehension, shapes, lanes: int):
    """``comp`` from 0, its signal and kernel accesses, and the free dimensions ``v`` (in
    vectors) and ``b`` (in registers); None where there are none such."""
    if lanes < 2:
        return None
    matched = correlation(comp, shapes, strided=True)
    if matched is None:
        return None
    comp, found, _, _ = matched
    signal, kernel = found.s, found.k
    constant = [d for d in comp.free if sympy.sympify(d.stop).is_Integer]
    vectors = [d for d in constant if kernel.has(d.var) and not signal.has(d.var)
               and comp.output.has(d.var)]
    blocks = [d for d in constant if signal.has(d.var) and not kernel.has(d.var)
              and comp.output.has(d.var)]
    if not vectors or not blocks:
        return None
    vector = max(vectors, key=lambda d: int(d.stop))
    block = _block(blocks, comp, signal, shapes)
    if int(vector.stop) < 2 or int(block.stop) < 2:
        return None
    return comp, signal, kernel, vector, block


def _block(dims: list[Dim], comp, signal, shapes) -> Dim:
    """The variable held in registers: of those with at least `NARROWEST` values (or,
    failing any, the longest), the one whose neighbours lie closest in the signal (an
    output column rather than an image)."""
    coeffs, _ = strides(signal, shapes[str(signal.base.label)], [d.var for d in comp.variables])
    longest = max(int(d.stop) for d in dims)
    wide = [d for d in dims if int(d.stop) >= min(NARROWEST, longest)]
    return min(wide, key=lambda d: _magnitude(coeffs.get(d.var, 0)))


def _reduction_order(comp, signal, shapes) -> list[Dim]:
    """The reduced variables, the one stepping furthest through the signal outermost: the
    innermost loop walks a row of taps."""
    coeffs, _ = strides(signal, shapes[str(signal.base.label)], [d.var for d in comp.variables])
    return sorted(comp.reduced, key=lambda d: -_magnitude(coeffs.get(d.var, 0)))


def _magnitude(e) -> float:
    return abs(estimate(sympy.sympify(e)))
