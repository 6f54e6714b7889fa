"""Comprehension layer: every op is one or more tensor comprehensions in sympy.

A comprehension writes one output access for every point of its free variables, reducing a
body over its reduced variables::

    conv0[n, k, i0] = conv0.bias[k] + Σ_{c < 3, m0 < 5} x[n, c, i0 + m0 - 2]·conv0.weight[k, c, m0]

Accesses are `sympy.Indexed` with indices affine in the variables. An access that can leave
its tensor reads the tensor's *fill* value (0 for implicit zero padding, -∞ for max
pooling). ``init`` starts the accumulator (a bias, say) and ``final`` maps the accumulator to
the stored value (a mean divides by a count); both may read the free variables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import sympy

ACC = sympy.Symbol("acc")
"""The accumulator, as ``final`` refers to it."""

ARG = sympy.Symbol("arg", integer=True)
"""The position of the running maximum, in an argmax."""


class Reduction(str, enum.Enum):
    """How the body is folded over the reduced variables.

    ``ARGMAX`` stores the row-major position, among the reduced variables' full ranges, of
    the first maximum in scan order (-1 if no value exceeds -∞): what a max reduction's
    gradient needs.
    """

    NONE = "none"
    SUM = "sum"
    MAX = "max"
    ARGMAX = "argmax"

    @property
    def identity(self) -> sympy.Expr:
        return sympy.Integer(0) if self is Reduction.SUM else -sympy.oo

    def combine(self, acc: sympy.Expr, value: sympy.Expr) -> sympy.Expr:
        return acc + value if self is Reduction.SUM else sympy.Max(acc, value)


@dataclass(frozen=True)
class Dim:
    """An index variable and its range ``start <= var < stop``.

    The bounds may use variables that come before it (a derived input gradient bounds its
    kernel tap by the output position it gathers for).
    """

    var: sympy.Symbol
    start: sympy.Expr
    stop: sympy.Expr

    def __post_init__(self):
        object.__setattr__(self, "start", sympy.sympify(self.start))
        object.__setattr__(self, "stop", sympy.sympify(self.stop))

    @classmethod
    def of(cls, spec) -> Dim:
        """From a `Dim`, ``(var, extent)`` or ``(var, start, stop)``."""
        if isinstance(spec, Dim):
            return spec
        var, *bounds = spec
        start, stop = (0, *bounds) if len(bounds) == 1 else bounds
        return cls(var, sympy.sympify(start), sympy.sympify(stop))

    @property
    def extent(self) -> sympy.Expr:
        return self.stop - self.start

    def __str__(self) -> str:
        if self.start == 0:
            return f"{self.var} < {self.stop}"
        return f"{self.start} <= {self.var} < {self.stop}"


@dataclass(frozen=True)
class Comprehension:
    """``output = final(init ⊕ reduce_{reduced} body)`` for every point of ``free``.

    ``free`` and ``reduced`` take `Dim`s or ``(var, extent)`` pairs. ``where`` narrows that
    box to the points with ``low <= expr < high`` for each ``(expr, low, high)``, ``expr``
    affine (a derived gradient keeps there what the variables it eliminated had to
    satisfy); lowering turns each into floor/ceil bounds of its innermost variable.
    ``inside`` lists accesses that the derivation proved stay inside their tensors;
    ``stop_gradient`` marks a
    value that the result does not depend on in exact arithmetic (softmax's shift by the
    row maximum), so no gradient flows through it. ``dtype`` is the element type of the
    output when it is not float (``"uint8"`` for a mask; an argmax is ``int64``).
    """

    output: sympy.Indexed
    free: tuple[Dim, ...]
    body: sympy.Expr
    reduced: tuple[Dim, ...] = ()
    reduction: Reduction = Reduction.NONE
    init: sympy.Expr | None = None
    final: sympy.Expr | None = None
    fill: tuple[tuple[str, sympy.Expr], ...] = ()
    equation: str = ""
    where: tuple[tuple[sympy.Expr, sympy.Expr, sympy.Expr], ...] = ()
    inside: frozenset = frozenset()
    stop_gradient: bool = False
    dtype: str | None = None

    def __post_init__(self):
        for name in ("free", "reduced"):
            object.__setattr__(self, name, tuple(Dim.of(d) for d in getattr(self, name)))

    @property
    def variables(self) -> tuple[Dim, ...]:
        return self.free + self.reduced

    @property
    def tensor(self) -> str:
        return str(self.output.base.label)

    def fill_of(self, tensor: str) -> sympy.Expr | None:
        return dict(self.fill).get(tensor)

    def accesses(self) -> list[sympy.Indexed]:
        """Every access read, in a stable order."""
        exprs = [self.body] + [e for e in (self.init, self.final) if e is not None]
        found = set().union(*(e.atoms(sympy.Indexed) for e in exprs))
        return sorted(found, key=sympy.default_sort_key)

    def inputs(self) -> list[str]:
        return sorted({str(a.base.label) for a in self.accesses()})

    def renamed(self, names: dict[str, str]) -> Comprehension:
        """The same comprehension with tensors renamed (``{old: new}``)."""
        bases = {sympy.IndexedBase(old): sympy.IndexedBase(new) for old, new in names.items()}

        def sub(e):
            return None if e is None else e.xreplace(bases)

        return replace(self, output=sub(self.output), body=sub(self.body), init=sub(self.init),
                       final=sub(self.final), inside=frozenset(sub(a) for a in self.inside),
                       fill=tuple((names.get(t, t), v) for t, v in self.fill),
                       where=tuple((sub(e), lo, hi) for e, lo, hi in self.where))

    def __str__(self) -> str:
        return self.text()

    def text(self, unicode: bool = True) -> str:
        """The comprehension as an equation; ``unicode=False`` keeps to ASCII (for C)."""
        math = _math if unicode else _ascii
        value, assign = math(self.body), "="
        accumulates = self.init == self.output or (
            self.reduction is Reduction.NONE and isinstance(self.body, sympy.Add)
            and self.output in self.body.args)
        if accumulates and self.reduction is Reduction.NONE:
            value, assign = math(self.body - self.output), "+="
        elif self.reduction is not Reduction.NONE:
            bound = ", ".join(map(str, self.reduced))
            op = "Σ" if unicode else "sum"
            op = op if self.reduction is Reduction.SUM else self.reduction.value
            if isinstance(self.body, sympy.Add):
                value = f"({value})"
            value = f"{op}_{{{bound}}} {value}"
            if accumulates:
                assign = "+="
            elif self.init is not None:
                value = (f"{math(self.init)} + {value}" if self.reduction is Reduction.SUM
                         else f"max({math(self.init)}, {value})")
            if self.final is not None:
                value = math(self.final).replace(str(ACC), f"({value})")
        domain = ", ".join(map(str, self.free))
        if self.where:
            conds = ", ".join(f"{lo} <= {math(e)} < {hi}" for e, lo, hi in self.where)
            domain = f"{domain}; where {conds}" if domain else f"where {conds}"
        text = f"{math(self.output)} {assign} {value}"
        return f"{text}   for {domain}" if domain else text


def row_major(dims) -> sympy.Expr:
    """The row-major position of a point among ``dims``, each counted from its start."""
    pos = sympy.Integer(0)
    for d in dims:
        pos = pos * d.extent + (d.var - d.start)
    return pos


def _ascii(expr: sympy.Expr) -> str:
    return sympy.sstr(expr, order="none")


def _math(expr: sympy.Expr) -> str:
    """A sympy expression as the book writes it: products with a middle dot."""
    return _ascii(expr).replace("**", "^").replace("*", "·")
