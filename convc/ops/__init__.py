"""Ops: one module per op family, each a frozen attribute dataclass with its rules.

An op knows three things, all read from its attributes: how to build itself from a user's
arguments (`from_args`, which normalises and checks them), its output shape (`infer`) and
the tensor comprehensions that define it (`comprehensions`, layer 2 of DESIGN.md). Nothing
downstream looks at an op's class: it reads the comprehensions.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import sympy

from ..codegen.names import c_identifier
from ..errors import GraphError
from ..ir.affine import is_proven

BATCH = sympy.Symbol("N", integer=True, nonnegative=True)
"""The batch size: the symbol a user's ``None`` on axis 0 becomes, an argument of the
generated C."""

AXIS_LETTERS = {2: "NF", 3: "NCL", 4: "NCHW", 5: "NCDHW"}
"""The letters naming the axes of an input of each rank, for its size symbols."""

ASSUMED_SIZE = 32
"""The value a variable size other than the batch (``x_H``) takes where the compiler needs
a number to estimate with (the cost model choosing products or loops, the threshold for
threads); the batch is taken as 64. Every extent in the generated code stays an
expression of the size arguments."""


def size_symbol(tensor: str, axis: int, rank: int) -> sympy.Symbol:
    """The size of axis ``axis`` (not 0) of input ``tensor``, given at call time: ``x_H``,
    ``x_W`` for an ``(N, C, H, W)`` input ``x``, ``x_size5`` past the letters."""
    letters = AXIS_LETTERS.get(rank, "")
    letter = letters[axis] if axis < len(letters) else f"size{axis}"
    return sympy.Symbol(f"{c_identifier(tensor)}_{letter}", integer=True, positive=True)


def is_size(d) -> bool:
    """Whether a dimension is a fixed size (an int), not an expression of size symbols."""
    return is_int(d) or (isinstance(d, sympy.Integer))


def proven(condition) -> bool:
    """Whether ``condition`` (a bool, or a relation between size expressions) holds for
    every value of the sizes it uses (`convc.ir.affine.is_proven`); a check that is not
    proven here is made again at call time, on the sizes given."""
    return is_proven(condition)


def estimate(e) -> float:
    """A number for a size expression: the batch taken as 64 and any other size symbol as
    `ASSUMED_SIZE` (for cost estimates only)."""
    e = sympy.sympify(e)
    if e.is_number:
        return float(e)
    return float(e.subs({s: 64 if s == BATCH else ASSUMED_SIZE for s in e.free_symbols}))


def index(name: str) -> sympy.Symbol:
    """An index variable of a comprehension (integer, nonnegative)."""
    return sympy.Symbol(name, integer=True, nonnegative=True)


@dataclass(frozen=True, slots=True)
class OpContext:
    """What an op sees of the graph when it is added: its name and its inputs."""

    name: str
    shapes: tuple[tuple[Any, ...], ...]
    dtypes: tuple[str, ...]
    source: str

    def error(self, message: str) -> GraphError:
        return GraphError(f"node {self.name!r} ({self.source}): {message}")


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A parameter a layer creates: ``<node>.<role>`` of ``shape``; with ``value`` (a
    float array of that shape) a constant instead, never differentiated."""

    role: str
    shape: tuple[int, ...]
    fan_in: int
    value: Any = None


class Op:
    """Base of the op attribute dataclasses."""

    kind: ClassVar[str] = "op"
    arity: ClassVar[int] = 1
    equation: ClassVar[str] = ""

    @classmethod
    def from_args(cls, ctx: OpContext, **attrs) -> Op:
        return cls(**attrs)

    def parameters(self, ctx: OpContext) -> tuple[ParamSpec, ...]:
        """The parameters the layer owns; checks the data inputs first."""
        self.check_inputs(ctx)
        return ()

    def check_inputs(self, ctx: OpContext) -> None:
        """Common checks on the data inputs: float dtype and a batch axis."""
        for i, (shape, dtype) in enumerate(zip(ctx.shapes[: self.arity], ctx.dtypes)):
            if dtype != "float":
                raise ctx.error(f"input {i} must be a float tensor, found dtype {dtype}")
            if len(shape) < 1:
                raise ctx.error("expected a tensor with a batch axis, found a 0-d tensor")

    def infer(self, ctx: OpContext) -> tuple[tuple[Any, ...], str]:
        raise NotImplementedError

    def input_ranges(self, shapes: tuple[tuple, ...]) -> dict[int, tuple[int, int]]:
        """``{input position: (low, high)}``: values an integer input must lie in."""
        return {}

    def comprehensions(self, out: str, ins: tuple[str, ...], shapes: tuple[tuple, ...],
                       out_shape: tuple) -> tuple:
        """The comprehensions computing tensor ``out`` from tensors ``ins`` of ``shapes``."""
        raise NotImplementedError


def is_int(value) -> bool:
    """An integer (numpy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, what: str, ctx: OpContext) -> int:
    if not is_int(value) or value < 1:
        raise ctx.error(f"{what} must be a positive int, found {value!r}")
    return int(value)


def per_axis(value, rank: int, what: str, ctx: OpContext, minimum: int = 1) -> tuple[int, ...]:
    """An int or a tuple of ``rank`` ints, each at least ``minimum``, as a tuple."""
    values = (value,) * rank if is_int(value) else value
    if not isinstance(values, tuple | list) or len(values) != rank:
        raise ctx.error(f"{what} must be an int or a tuple of {rank} ints "
                        f"(one per spatial axis), found {value!r}")
    for v in values:
        if not is_int(v) or v < minimum:
            raise ctx.error(f"{what} must be integers >= {minimum}, found {value!r}")
    return tuple(int(v) for v in values)


def spatial_rank(ctx: OpContext, ranks=(1, 2, 3)) -> int:
    """The number of spatial axes of input 0, laid out (N, C, spatial...)."""
    shape = ctx.shapes[0]
    rank = len(shape) - 2
    if rank not in ranks:
        allowed = " or ".join(f"{r + 2}-d (N, C{', spatial' * r})" for r in ranks)
        raise ctx.error(f"expected a {allowed} input, found shape {fmt(shape)}")
    return rank


def fmt(shape: tuple) -> str:
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def elementwise_indices(rank: int) -> tuple[sympy.Symbol, ...]:
    return tuple(index(f"d{i}") for i in range(rank))


__all__ = [
    "ASSUMED_SIZE", "BATCH", "Op", "OpContext", "ParamSpec", "index", "per_axis",
    "spatial_rank", "fmt", "estimate", "is_size", "proven", "size_symbol"
]
