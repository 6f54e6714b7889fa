"""Affine index arithmetic: coefficients, ranges, and the bounds that keep an access inside.

Every index of a comprehension is affine in its variables: ``a·v + b·w + c``. This module
reads the coefficients back, bounds an index over a box of variables, and solves
``0 <= a·m + rest < D`` for one variable ``m`` as floor/ceil bounds, which is how an
implicitly zero-padded convolution loses its per-element bounds tests.
"""

from __future__ import annotations

import sympy

from ..errors import DerivationError


def affine_terms(expr: sympy.Expr, variables) -> tuple[dict[sympy.Symbol, sympy.Expr], sympy.Expr]:
    """``expr`` as ``({v: coefficient}, constant)``; raises if it is not affine in them."""
    expr = sympy.expand(expr)
    coeffs = {}
    for v in variables:
        c = expr.coeff(v)
        if c.free_symbols & set(variables) or sympy.expand(expr - c * v).has(v):
            raise DerivationError(f"index {expr} is not affine in {v}")
        if c != 0:
            coeffs[v] = c
    constant = sympy.expand(expr - sum(c * v for v, c in coeffs.items()))
    return coeffs, constant


def index_range(expr: sympy.Expr, extents: dict[sympy.Symbol, sympy.Expr]):
    """The least and greatest value of an affine ``expr`` with each ``v`` in [0, extent)."""
    coeffs, lo = affine_terms(expr, list(extents))
    hi = lo
    for v, c in coeffs.items():
        top = c * (extents[v] - 1)
        if c.is_nonnegative:
            hi += top
        elif c.is_nonpositive:
            lo += top
        else:
            raise DerivationError(f"the sign of coefficient {c} of {v} in {expr} is unknown")
    return lo, hi


def is_proven(condition) -> bool:
    """True only when sympy can prove the (in)equality for every value of its symbols."""
    return sympy.simplify(condition) is sympy.true


def solve_inside(a: sympy.Expr, rest: sympy.Expr, size: sympy.Expr):
    """The ``m`` with ``0 <= a·m + rest < size``, as ``start <= m < stop`` (``a`` nonzero int).

    For ``a > 0``: ``m >= ceil(-rest / a)`` and ``m <= floor((size - 1 - rest) / a)``.
    For ``a < 0`` the inequalities swap. Example: the padded 1-D convolution access
    ``x[2·j + m - 1]`` of an input of 7 gives ``ceil((1 - 2j)/1) <= m <= floor((7 - 2j)/1)``.
    """
    if a > 0:
        return sympy.ceiling(-rest / a), sympy.floor((size - 1 - rest) / a) + 1
    return sympy.ceiling((size - 1 - rest) / a), sympy.floor(-rest / a) + 1


# --- provisional (replaced by the tested solver) ---
from dataclasses import dataclass as _dc


@_dc(frozen=True)
class Phase:
    phi: int
    empty: bool
    u: sympy.Symbol = None
    t: sympy.Symbol = None
    u_start: sympy.Expr = None
    u_stop: sympy.Expr = None
    t_start: sympy.Expr = None
    t_stop: sympy.Expr = None
    m: sympy.Expr = None
    j: sympy.Expr = None
    i: sympy.Expr = None


def invert_access(s, d, p, J, M, I):
    import math
    u, t = sympy.Symbol("u", integer=True), sympy.Symbol("t", integer=True)
    g = math.gcd(s, d)
    s_, d_ = s // g, d // g
    out = []
    for phi in range(s):
        if phi % g:
            out.append(Phase(phi, True))
            continue
        m0 = (phi // g) * pow(d_, -1, s_) % s_ if s_ > 1 else 0
        c0 = (phi // g - d_ * m0) // s_
        out.append(Phase(
            phi, False, u, t,
            sympy.ceiling(sympy.Rational(1, s) * (p - phi)),
            sympy.floor(sympy.Rational(1, s) * (I - 1 + p - phi)) + 1,
            sympy.Max(0, sympy.floor((u + c0 - J) / sympy.Integer(d_)) + 1),
            sympy.Min(sympy.ceiling((M - m0) / sympy.Integer(s_)), sympy.floor((u + c0) / sympy.Integer(d_)) + 1),
            m0 + s_ * t, u + c0 - d_ * t, s * u + phi - p))
    return tuple(out)
