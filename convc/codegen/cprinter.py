"""C layer: the sympy printer for index arithmetic and scalar bodies of generated kernels.

sympy's stock C printer treats every expression as floating point: ``floor((j - 3)/2)`` comes
out as ``floor((1.0/2.0)*j - 3.0/2.0)`` and ``Max(i, j)`` as ``fmax(i, j)``, both doubles where
C needs an int64 index (and ``fmax`` drops NaN). This printer sends integer arithmetic to the
helpers of ``convc_runtime.h`` (``convc_floordiv``, ``convc_ceildiv``, ``convc_mod``, ``convc_min``,
``convc_max``), flattens tensor accesses to row-major offsets, and prints float bodies in the
kernel's precision::

    >>> j = sympy.Symbol("j", integer=True)
    >>> print_c(sympy.floor((j - 3) / 2))
    'convc_floordiv(j - 3, 2)'

Integer context is inside a subscript, inside the arguments of an integer helper, and in
`CPrinter.doprint_int`; there, a rational coefficient or a float means a lowering bug, and
printing it raises `ValueError` rather than emitting C that silently computes something else.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy
from sympy.codegen.ast import float32, real
from sympy.printing.c import C99CodePrinter
from sympy.printing.precedence import PRECEDENCE, precedence

FLOAT_TYPES = {"float32": "float", "float64": "double"}

Buffers = Mapping[str, tuple[str, tuple[sympy.Expr, ...]]]


class CPrinter(C99CodePrinter):
    """C99 printer for one kernel: ``dtype`` picks float/double, ``buffers`` the tensors.

    ``buffers`` maps a tensor name (an `IndexedBase` label) to its C identifier and shape.
    """

    def __init__(self, dtype: str = "float32", buffers: Buffers | None = None):
        if dtype not in FLOAT_TYPES:
            raise ValueError(f"dtype must be one of {tuple(FLOAT_TYPES)}, found {dtype!r}")
        # The float32 alias makes sympy print expf, sqrtf and literals such as 1.0F.
        super().__init__({"type_aliases": {real: float32}} if dtype == "float32" else {})
        self.dtype = dtype
        self.float_type = FLOAT_TYPES[dtype]
        self.suffix = "f32" if dtype == "float32" else "f64"
        self.vector_type = f"convc_v{self.suffix}"  # the runtime's 64-byte vectors
        self.buffers = dict(buffers or {})
        self._int_depth = 0  # > 0 while printing an expression that C must compute in int64
        self._printed: dict[tuple, str] = {}  # `doprint`'s, per expression and int context

    # -- contexts ---------------------------------------------------------------------------

    def doprint(self, expr, assign_to=None) -> str:
        """As sympy prints it, once per expression (a kernel prints the same bounds and
        values many times; sympy's printer takes tens of microseconds a call)."""
        if assign_to is not None:
            return super().doprint(expr, assign_to)
        key = (type(expr), expr, self._int_depth)  # 1 and 1.0 are equal keys otherwise
        text = self._printed.get(key)
        if text is None:
            text = self._printed[key] = super().doprint(expr)
        return text

    def doprint_int(self, expr) -> str:
        """``expr`` printed as int64 arithmetic (loop bounds, sizes): no division, no floats."""
        self._int_depth += 1
        try:
            return self.doprint(expr)
        finally:
            self._int_depth -= 1

    def _int(self, expr) -> str:
        self._int_depth += 1
        try:
            return self._print(expr)
        finally:
            self._int_depth -= 1

    def _as_float(self, integer: sympy.Expr) -> str:
        """An integer expression cast, so that the division around it is done in floats."""
        text = self._int(integer)
        simple = integer.is_Atom or integer.is_Function or integer.is_Pow or integer.is_Indexed
        return f"({self.float_type}){text}" if simple else f"({self.float_type})({text})"

    def _one(self) -> str:
        return self._print_Float(sympy.Float(1.0))

    @staticmethod
    def _not_integer(expr) -> ValueError:
        return ValueError(f"{expr} is not int64 arithmetic: an index, bound or size must "
                          f"divide with floor or ceiling and use no float")

    # -- tensor accesses --------------------------------------------------------------------

    def _print_VLoad(self, expr) -> str:
        if len(expr.args) == 2:  # the first lanes of a partial vector
            return (f"convc_vload_part_{self.suffix}(&{self._print(expr.args[0])}, "
                    f"{self._int(expr.args[1])})")
        return f"convc_vload_{self.suffix}(&{self._print(expr.args[0])})"

    def _print_VSum(self, expr) -> str:
        return f"convc_vsum_{self.suffix}(&{self._print(expr.args[0])})"

    def _print_At(self, expr) -> str:
        return f"{self._print(expr.args[0])}[{self._int(expr.args[1])}]"

    def _print_Indexed(self, expr) -> str:
        """``x[i, j, k]`` as ``cx[(i*D1 + j)*D2 + k]``, the row-major offset in Horner form."""
        name = str(expr.base.label)
        if name not in self.buffers:
            known = ", ".join(sorted(self.buffers)) or "none"
            raise KeyError(f"tensor {name!r} has no C buffer (known: {known})")
        cname, shape = self.buffers[name]
        indices = expr.indices
        if not shape:
            if indices != (0,):
                raise ValueError(f"0-d tensor {name!r} must be accessed as {name}[0], not {expr}")
            return f"{cname}[0]"
        if len(indices) != len(shape):
            raise ValueError(f"access {expr} has {len(indices)} indices; tensor {name!r} "
                             f"has shape {tuple(shape)}")
        flat = indices[0]
        for dim, index in zip(shape[1:], indices[1:], strict=True):
            flat = flat * dim + index
        if sympy.sympify(flat).is_Integer:
            return f"{cname}[{flat}]"
        return f"{cname}[{self._horner(indices, shape)}]"

    def _horner(self, indices, shape) -> str:
        """Built by hand: sympy would expand or reorder ``(n*3 + c)*28 + i0``.

        Dimensions between zero indices are multiplied together: ``x[n, 0, 0]`` is ``n*84``.
        """
        text, is_sum = self._int(indices[0]), _is_sum(indices[0])
        dims: list[sympy.Expr] = []
        for dim, index in zip(shape[1:], indices[1:], strict=True):
            dims.append(sympy.sympify(dim))
            if index == 0:
                continue
            term = self._int(index)
            if text == "0":
                text, is_sum = term, _is_sum(index)
            else:
                text = self._scaled(text, is_sum, dims)
                text += f" - {term[1:]}" if term.startswith("-") else f" + {term}"
                is_sum = True
            dims = []
        return self._scaled(text, is_sum, dims)

    def _scaled(self, text: str, is_sum: bool, dims: list[sympy.Expr]) -> str:
        """``text`` times the product of ``dims``, the integer ones folded into one number."""
        number = sympy.Mul(*(d for d in dims if d.is_Integer))
        factors = [f"({self._int(d)})" if _is_sum(d) or d.is_Mul else self._int(d)
                   for d in dims if not d.is_Integer]
        factors += [str(number)] if number != 1 else []
        if not factors:
            return text
        return "*".join([f"({text})" if is_sum else text, *factors])

    # -- integer arithmetic -----------------------------------------------------------------

    def _print_floor(self, expr) -> str:
        return self._divide(expr, "convc_floordiv") or super()._print_floor(expr)

    def _print_ceiling(self, expr) -> str:
        return self._divide(expr, "convc_ceildiv") or super()._print_ceiling(expr)

    def _divide(self, expr, helper: str) -> str | None:
        """floor/ceiling of ``num/den`` with integer ``num``, ``den``: a runtime division.

        C's ``/`` truncates toward zero, wrong for negative numerators. None for float args.
        """
        num, den = sympy.fraction(sympy.together(expr.args[0]))
        if not (num.is_integer and den.is_integer):
            if self._int_depth:
                raise self._not_integer(expr)
            return None
        if den.is_negative:
            num, den = -num, -den
        if den == 1:
            text = self._int(num)
            return text if num.is_Atom else f"({text})"
        return f"{helper}({self._int(num)}, {self._int(den)})"

    def _print_Mod(self, expr) -> str:
        a, b = expr.args
        if self._int_depth or (a.is_integer and b.is_integer):
            # C's % takes the sign of the dividend; sympy's Mod that of the divisor.
            return f"convc_mod({self._int(a)}, {self._int(b)})"
        return super()._print_Mod(expr)

    def _print_Max(self, expr) -> str:
        return self._min_max(expr, "max")

    def _print_Min(self, expr) -> str:
        return self._min_max(expr, "min")

    def _min_max(self, expr, which: str) -> str:
        """Nested two-argument helpers: int64 ones, or float ones that keep NaN (fmax drops it)."""
        if self._int_depth or all(a.is_integer for a in expr.args):
            helper, show = f"convc_{which}", self._int
        else:
            helper = f"convc_f{which}" + ("f" if self.dtype == "float32" else "")
            show = self._print
        text = show(expr.args[-1])
        for arg in reversed(expr.args[:-1]):
            text = f"{helper}({show(arg)}, {text})"
        return text

    def _print_Abs(self, expr) -> str:
        arg = expr.args[0]
        if self._int_depth or arg.is_integer:  # fabs would turn an index into a double
            text = self._int(arg)
            return f"convc_max({text}, -({text}))"
        return super()._print_Abs(expr)

    def _print_Relational(self, expr) -> str:
        """An integer expression compared with a fraction (the guard ``0 <= 2·t - 1`` that
        sympy solves to ``t >= 1/2``) as the integer comparison it means (``t >= 1``), in
        int64: no conversion to float at every point."""
        diff = sympy.expand(expr.lhs - expr.rhs)
        fraction, integer = diff.as_coeff_Add()
        if not (fraction.is_Rational and not fraction.is_Integer and integer.is_integer
                and expr.rel_op in (">=", ">", "<=", "<")):
            return super()._print_Relational(expr)
        if expr.rel_op in (">=", ">"):  # integer > -fraction: integer >= its ceiling
            return f"{self._int(integer)} >= {self._int(sympy.ceiling(-fraction))}"
        return f"{self._int(integer)} <= {self._int(sympy.floor(-fraction))}"

    def _print_Rational(self, expr) -> str:
        if self._int_depth:
            raise self._not_integer(expr)
        return super()._print_Rational(expr)

    def _print_Float(self, expr) -> str:
        if self._int_depth:
            raise self._not_integer(expr)
        return super()._print_Float(expr)

    # -- float bodies -----------------------------------------------------------------------

    def _print_Mul(self, expr) -> str:
        """A float over an integer expression divides in floats, the integer part cast."""
        factors = sympy.Mul.make_args(expr)
        if self._int_depth:
            for f in factors:
                if (f.is_Rational and not f.is_Integer) or (f.is_Pow and f.exp.is_negative):
                    raise self._not_integer(expr)
            return super()._print_Mul(expr)
        num, den = [], []
        for f in factors:
            if f.is_Pow and f.exp.is_Integer and f.exp < 0 and f.base.is_integer:
                den.append(f.base ** -f.exp)
            else:
                num.append(f)
        if not den:
            return super()._print_Mul(expr)
        top = sympy.Mul(*num)
        text = self._one() if top == 1 else self.parenthesize(top, PRECEDENCE["Mul"])
        return f"{text}/{self._as_float(sympy.Mul(*den))}"

    def _print_Pow(self, expr) -> str:
        """Small integer powers as products, ``x**-1`` as a division, the rest via powf/pow."""
        base, exp = expr.args
        if exp.is_Integer and (2 <= exp <= 4 or (self._int_depth and exp > 0)):
            factor = self.parenthesize(base, PRECEDENCE["Mul"], strict=True)
            return "(" + "*".join([factor] * int(exp)) + ")"
        if self._int_depth:
            raise self._not_integer(expr)
        if exp == -1 and base.is_integer:
            return f"{self._one()}/{self._as_float(base)}"
        if exp == -1 or exp == sympy.Rational(1, 2):
            return super()._print_Pow(expr)  # 1.0F/x and sqrtf(x)
        suffix = "f" if self.dtype == "float32" else ""
        return f"pow{suffix}({self._print(base)}, {self._print(exp)})"

    def _print_KroneckerDelta(self, expr) -> str:
        """A 0/1 factor: the comparison, converted to the float type outside indices."""
        a, b = (self._int(x) if x.is_integer else self._print(x) for x in expr.args)
        test = f"(({a}) == ({b}))"
        return test if self._int_depth else f"({self.float_type}){test}"

    def _print_Piecewise(self, expr) -> str:
        """Nested ternaries on one line (sympy's spans several lines)."""
        if expr.args[-1].cond != sympy.true:
            raise ValueError(f"Piecewise {expr} has no default (expr, True) piece")
        text = f"({self._print(expr.args[-1].expr)})"
        for value, cond in reversed(expr.args[:-1]):
            if self._reads_both(value, cond):
                helper = "convc_select" + ("f" if self.dtype == "float32" else "")
                text = f"{helper}({self._print(cond)}, {self._print(value)}, {text})"
            else:
                text = f"(({self._print(cond)}) ? ({self._print(value)}) : {text})"
        return text

    def _reads_both(self, value, cond) -> bool:
        """Whether a piece is a value test that picks a tensor read (a label's logit,
        ``c == y[n]``), printed as a select that reads both values: GCC 12 turns the
        conditional read of a ternary into masked loads that it gets wrong (see
        ``convc_select`` in convc_runtime.h). Bounds guards test indices only, so their
        reads, which may leave the tensor, stay conditional."""
        return (not self._int_depth and isinstance(cond, sympy.Eq)
                and bool(cond.atoms(sympy.Indexed)) and bool(value.atoms(sympy.Indexed))
                and not value.atoms(sympy.Piecewise))

    def _print_BooleanTrue(self, expr) -> str:
        return "1"  # `true` needs <stdbool.h>, which generated code does not include

    def _print_BooleanFalse(self, expr) -> str:
        return "0"


def _is_sum(expr) -> bool:
    """Whether ``expr`` prints as a sum (or a negation), so needs parentheses to be scaled."""
    return precedence(expr) < PRECEDENCE["Mul"]


def print_c(expr, dtype: str = "float32", buffers: Buffers | None = None) -> str:
    """``expr`` as a C expression, printed by a fresh `CPrinter`."""
    return CPrinter(dtype, buffers).doprint(expr)
