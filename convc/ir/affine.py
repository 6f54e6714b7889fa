"""Affine index arithmetic: coefficients, ranges, and the bounds that keep an access inside.

Every index of a comprehension is affine in its variables: ``a·v + b·w + c``. This module
reads the coefficients back, bounds an index over a box of variables, and solves
``0 <= a·m + rest < D`` for one variable ``m`` as floor/ceil bounds, which is how an
implicitly zero-padded convolution loses its per-element bounds tests.

It also inverts the access ``i = s·j + d·m - p`` of a strided, dilated, padded convolution
(`invert_access`), the scatter-to-gather step of the input gradient h (9.12-9.13): a linear
Diophantine equation solved with the extended gcd (`ext_gcd`, `mod_inverse`), one phase
of ``i + p`` modulo ``s`` at a time, with floor/ceil loop bounds and no modulo left per
element. `kernel_gradient_bounds` gives the loop of the kernel gradient g (9.11), and
`interior` the part of a phase where its bounds are constants.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import NamedTuple

import sympy

from ..errors import DerivationError


def affine_terms(expr: sympy.Expr, variables) -> tuple[dict[sympy.Symbol, sympy.Expr], sympy.Expr]:
    """``expr`` as ``({v: coefficient}, constant)``; raises if it is not affine in them."""
    coeffs, constant = _affine_terms(sympy.sympify(expr), tuple(variables))
    return dict(coeffs), constant


@functools.lru_cache(maxsize=8192)
def _affine_terms(expr: sympy.Expr, variables: tuple) -> tuple[tuple, sympy.Expr]:
    """Memoised: planning asks for the strides of the same accesses many times."""
    expr = sympy.expand(expr)
    coeffs = {}
    for v in variables:
        c = expr.coeff(v)
        if c.free_symbols & set(variables) or sympy.expand(expr - c * v).has(v):
            raise DerivationError(f"index {expr} is not affine in {v}")
        if c != 0:
            coeffs[v] = c
    constant = sympy.expand(expr - sum(c * v for v, c in coeffs.items()))
    return tuple(coeffs.items()), constant


def strides(access: sympy.Indexed, shape, variables) -> tuple[dict, sympy.Expr]:
    """The flat row-major offset of ``access`` into a tensor of ``shape``, as
    ``({var: stride}, constant)``: every affine access is a strided view."""
    flat, step = sympy.Integer(0), sympy.Integer(1)
    for idx, size in reversed(list(zip(access.indices, shape))):
        flat += idx * step
        step *= size
    return affine_terms(flat, variables)


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
    """True only when the (in)equality holds for every value of its symbols: as sympy's
    ``simplify`` proves it, or, for an inequality between sizes with floor and ceiling
    divisions in them (a variable size's ``floor((x_H - 3)/2) + 1``), by bounding each
    ``floor(p/q)`` below by ``p/q - (q-1)/q`` (above by ``p/q``), and ``ceiling``
    likewise, on the side that makes the difference smallest. A condition on variable
    sizes (positive size symbols such as ``x_H``) is only tried the second way: ``simplify``
    takes seconds on their nested floors."""
    condition = sympy.sympify(condition)
    if condition is sympy.true:
        return True
    if not isinstance(condition, sympy.core.relational.Relational):
        return sympy.simplify(condition) is sympy.true
    variable = any(s.is_positive for s in condition.free_symbols)
    if not variable and sympy.simplify(condition) is sympy.true:
        return True
    op = condition.rel_op
    if op not in ("<", "<=", ">", ">="):
        return False
    small, large = (condition.lhs, condition.rhs) if op in ("<", "<=") else \
        (condition.rhs, condition.lhs)
    low = _lower_bound(sympy.expand(large - small))
    if low is None:
        return False
    holds = low.is_positive if op in ("<", ">") else low.is_nonnegative
    return holds is True


def is_proven_inside(idx, dims: dict, size) -> bool:
    """Whether ``0 <= idx < size`` over the box of ``dims`` (each starting at 0)."""
    if any(d.start != 0 for d in dims.values()):
        return False
    lo, hi = index_range(idx, {v: d.stop for v, d in dims.items()})
    return is_proven(lo >= 0) and is_proven(hi <= size - 1)


def never_meet(a: sympy.Indexed, b: sympy.Indexed, variables) -> bool:
    """Whether two accesses of one tensor reach no element in common, whatever values
    their variables take: along some axis the indices differ by a constant that no
    integer combination of their coefficients makes up (``2·t`` and ``2·t + 1``)."""
    for x, y in zip(a.indices, b.indices):
        (cx, kx), (cy, ky) = affine_terms(x, variables), affine_terms(y, variables)
        steps = [*cx.values(), *cy.values()]
        if not all(c.is_Integer for c in (*steps, kx - ky)):
            continue
        apart = kx != ky if not steps else (kx - ky) % functools.reduce(sympy.gcd, steps)
        if apart:
            return True
    return False


def _lower_bound(expr: sympy.Expr) -> sympy.Expr | None:
    """A lower bound of ``expr``, a sum of terms and rational multiples of floors and
    ceilings of rational combinations of integers; None otherwise. The most deeply nested
    floors are bounded first, so that the floors inside them may cancel."""
    for _ in range(8):
        expr = sympy.expand(expr)
        rounded = [t for t in sympy.Add.make_args(expr) if t.has(sympy.floor, sympy.ceiling)]
        if not rounded:
            return expr
        depth = max(_depth(t) for t in rounded)
        total = sympy.Integer(0)
        for term in sympy.Add.make_args(expr):
            if term not in rounded or _depth(term) < depth:
                total += term
                continue
            coeff, rest = term.as_coeff_Mul()
            if not isinstance(rest, (sympy.floor, sympy.ceiling)):
                return None
            inner = sympy.expand(rest.args[0])
            parts = inner.as_coefficients_dict()
            if not all(v.is_Rational and (k == 1 or k.is_integer) for k, v in parts.items()):
                return None
            q = functools.reduce(sympy.ilcm, (sympy.Rational(v).q for v in parts.values()), 1)
            slack = sympy.Rational(q - 1, q)
            low, high = (inner - slack, inner) if isinstance(rest, sympy.floor) else (
                inner, inner + slack)
            total += coeff * (low if coeff > 0 else high)
        expr = total
    return None


def _depth(expr) -> int:
    """How deeply floors and ceilings nest in ``expr``."""
    if isinstance(expr, (sympy.floor, sympy.ceiling)):
        return 1 + _depth(expr.args[0])
    return max((_depth(a) for a in expr.args), default=0)


def solve_inside(a: sympy.Expr, rest: sympy.Expr, size: sympy.Expr):
    """The ``m`` with ``0 <= a·m + rest < size``, as ``start <= m < stop`` (``a`` nonzero int).

    For ``a > 0``: ``m >= ceil(-rest / a)`` and ``m <= floor((size - 1 - rest) / a)``.
    For ``a < 0`` the inequalities swap. Example: the padded 1-D convolution access
    ``x[2·j + m - 1]`` of an input of 7 gives ``ceil((1 - 2j)/1) <= m <= floor((7 - 2j)/1)``.
    """
    if a > 0:
        return sympy.ceiling(-rest / a), sympy.floor((size - 1 - rest) / a) + 1
    return sympy.ceiling((size - 1 - rest) / a), sympy.floor(-rest / a) + 1


def ext_gcd(a: int, b: int) -> tuple[int, int, int]:
    """``(g, x, y)`` with ``a·x + b·y == g == gcd(a, b)`` and ``g >= 0`` (Euclid, extended).

    >>> ext_gcd(240, 46)
    (2, -9, 47)
    """
    a, b = operator.index(a), operator.index(b)
    x0, y0, x1, y1 = 1, 0, 0, 1
    while b:
        q = a // b
        a, b = b, a - q * b
        x0, x1 = x1, x0 - q * x1
        y0, y1 = y1, y0 - q * y1
    if a < 0:
        return -a, -x0, -y0
    return a, x0, y0


def mod_inverse(a: int, m: int) -> int:
    """The ``x`` in ``[0, m)`` with ``a·x ≡ 1 (mod m)``; ValueError if there is none.

    >>> mod_inverse(3, 7)
    5
    """
    a, m = operator.index(a), operator.index(m)
    if m < 1:
        raise ValueError(f"modulus {m} must be positive")
    g, x, _ = ext_gcd(a, m)
    if g != 1:
        raise ValueError(f"{a} has no inverse modulo {m} (gcd {g})")
    return x % m


@dataclass(frozen=True)
class Phase:
    """One phase ``φ`` of the gather that inverts ``i = s·j + d·m - p`` (see `invert_access`).

    The phase covers ``i = s·u + φ - p`` for ``u_start <= u < u_stop``, which are exactly the
    ``i`` of ``[0, I)`` with ``(i + p) mod s == φ``. Unless it is ``empty``, the pairs
    ``(j, m)`` reaching such an ``i`` are ``m = m0 + m_step·t``, ``j = u + c0 - j_step·t`` for
    ``t_start <= t < t_stop`` (expressions in ``u``). An empty phase has no pair at all (its
    part of ``dx`` is 0): its ``t`` range is ``[0, 0)`` and ``m``, ``j`` are None.
    """

    phi: int
    empty: bool
    u: sympy.Symbol
    t: sympy.Symbol
    u_start: sympy.Expr
    u_stop: sympy.Expr
    t_start: sympy.Expr
    t_stop: sympy.Expr
    m: sympy.Expr | None
    j: sympy.Expr | None
    i: sympy.Expr
    m0: int = 0
    c0: int = 0
    m_step: int = 1
    j_step: int = 1


def invert_access(s: int, d: int, p, J, M, I, u: sympy.Symbol | None = None,
                  t: sympy.Symbol | None = None) -> tuple[Phase, ...]:
    """Solve ``i = s·j + d·m - p`` for ``(j, m)`` given ``i``: one `Phase` per ``φ < s``.

    ``0 <= j < J`` is the output position, ``0 <= m < M`` the kernel tap and ``0 <= i < I``
    the input position; ``s`` and ``d`` are positive ints, ``p``, ``J``, ``M`` and ``I`` ints
    or sympy integer expressions. ``u`` and ``t`` are the symbols the phases use (integer
    symbols named "u" and "t" if not given).

    The adjoint of ``y[j] = Σ_m x[s·j + d·m - p]·w[m]`` is the scatter
    ``dx[s·j + d·m - p] += dy[j]·w[m]``. To gather it, split ``i`` by its phase
    ``φ = (i + p) mod s``: ``i = s·u + φ - p``, and ``0 <= i < I`` becomes
    ``ceil((p - φ)/s) <= u < floor((I - 1 + p - φ)/s) + 1``; the phase is the outer loop, so
    no modulo is left per element. With ``g = gcd(s, d)``, ``s' = s/g``, ``d' = d/g`` the
    equation reads ``s'·j + d'·m = s'·u + φ/g``, which has no solution when ``g ∤ φ`` (an
    empty phase). Otherwise ``d'·m ≡ φ/g (mod s')``, so ``m = m0 + s'·t`` with
    ``m0 = (φ/g)·d'⁻¹ mod s'`` (the inverse by the extended gcd), and then
    ``j = u + c0 - d'·t`` with ``c0 = (φ/g - d'·m0)/s'`` (exact). The ranges of ``m`` and
    ``j`` bound ``t``: ``m >= 0`` gives ``t >= 0`` (as ``0 <= m0 < s'``), ``m < M`` gives
    ``t < ceil((M - m0)/s')``, ``j >= 0`` gives ``t <= floor((u + c0)/d')`` and ``j < J``
    gives ``t >= floor((u + c0 - J)/d') + 1``. Each pair is met once: ``m`` fixes ``t``.

    Worked example: ``s = 2, d = 1, p = 1, M = 3``, the forward pass
    ``y[j] = x[2j-1]·w0 + x[2j]·w1 + x[2j+1]·w2``. Phase 0 has ``m0 = 0, c0 = 0``:
    ``m = 2t``, ``j = u - t``, ``t < 2``, so ``dx[2u-1] = dy[u]·w0 + dy[u-1]·w2``. Phase 1
    has ``m0 = 1, c0 = 0``: ``m = 1 + 2t``, ``j = u - t``, ``t < 1``, so
    ``dx[2u] = dy[u]·w1``. That is the polyphase form, with exactly the forward pass's
    multiply-adds.

    >>> [(ph.i, ph.m, ph.j) for ph in invert_access(2, 1, 1, 4, 3, 7)]
    [(2*u - 1, 2*t, -t + u), (2*u, 2*t + 1, -t + u)]
    """
    s, d = operator.index(s), operator.index(d)
    if s < 1 or d < 1:
        raise DerivationError(f"stride {s} and dilation {d} must be positive")
    p, J, M, I = (sympy.sympify(v) for v in (p, J, M, I))
    u = sympy.Symbol("u", integer=True) if u is None else u
    t = sympy.Symbol("t", integer=True) if t is None else t
    g = ext_gcd(s, d)[0]
    s_, d_ = s // g, d // g
    inverse = mod_inverse(d_, s_)
    phases = []
    for phi in range(s):
        i = s * u + phi - p
        u_start = sympy.ceiling((p - phi) / sympy.Integer(s))
        u_stop = sympy.floor((I - 1 + p - phi) / sympy.Integer(s)) + 1
        if phi % g:
            zero = sympy.Integer(0)
            phases.append(Phase(phi, True, u, t, u_start, u_stop, zero, zero, None, None, i))
            continue
        m0 = (phi // g) * inverse % s_
        c0 = (phi // g - d_ * m0) // s_
        t_start = sympy.Max(0, sympy.floor((u + c0 - J) / sympy.Integer(d_)) + 1)
        t_stop = sympy.Min(sympy.ceiling((M - m0) / sympy.Integer(s_)),
                           sympy.floor((u + c0) / sympy.Integer(d_)) + 1)
        phases.append(Phase(phi, False, u, t, u_start, u_stop, t_start, t_stop,
                            m0 + s_ * t, u + c0 - d_ * t, i, m0, c0, s_, d_))
    return tuple(phases)


class Interior(NamedTuple):
    """The ``u`` in ``[u_lo, u_hi)`` of a phase, where ``t`` runs over ``[t_start, t_stop)``."""

    u_lo: sympy.Expr
    u_hi: sympy.Expr
    t_start: sympy.Expr
    t_stop: sympy.Expr


def interior(phase: Phase, J, M) -> Interior:
    """The ``u`` of ``phase`` where its ``t`` bounds are constants, and those constants.

    The lower bound ``max(0, floor((u + c0 - J)/d') + 1)`` is 0 exactly when
    ``u < J - c0`` (``t = 0`` keeps ``j < J``); the upper bound
    ``min(T, floor((u + c0)/d') + 1)`` with ``T = ceil((M - m0)/s')`` is ``T`` exactly when
    ``u >= d'·(T - 1) - c0`` (the last tap keeps ``j >= 0``). Clipped to the phase, with
    ``u_start <= u_lo <= u_hi <= u_stop``, so the border is ``[u_start, u_lo)`` and
    ``[u_hi, u_stop)``; there the bounds keep their ``max``/``min``. On the interior the
    loop over ``t`` is dense and regular. An empty phase is all interior, with ``t`` in
    ``[0, 0)``.

    >>> ph = invert_access(2, 1, 1, 4, 3, 7)[0]
    >>> interior(ph, 4, 3)
    Interior(u_lo=1, u_hi=4, t_start=0, t_stop=2)
    """
    zero = sympy.Integer(0)
    if phase.empty:
        return Interior(phase.u_start, phase.u_stop, zero, zero)
    J, M = sympy.sympify(J), sympy.sympify(M)
    taps = sympy.ceiling((M - phase.m0) / sympy.Integer(phase.m_step))
    first = phase.j_step * (taps - 1) - phase.c0
    u_lo = sympy.Max(phase.u_start, sympy.Min(first, phase.u_stop))
    u_hi = sympy.Max(u_lo, sympy.Min(phase.u_stop, J - phase.c0))
    return Interior(u_lo, u_hi, zero, taps)


def kernel_gradient_bounds(s: int, d: int, p, J, I, m) -> tuple[sympy.Expr, sympy.Expr]:
    """The ``j`` of ``dw[m] = Σ_j dy[j]·x[s·j + d·m - p]`` (9.11), as ``start <= j < stop``.

    ``max(0, ceil((p - d·m)/s)) <= j < min(J, floor((I - 1 + p - d·m)/s) + 1)``: the ``j`` of
    ``[0, J)`` whose access stays inside ``[0, I)``; no solving is needed.

    >>> kernel_gradient_bounds(2, 1, 1, 4, 7, 0)
    (1, 4)
    """
    s = operator.index(s)
    if s < 1:
        raise DerivationError(f"stride {s} must be positive")
    start, stop = solve_inside(sympy.Integer(s), sympy.sympify(d * m - p), sympy.sympify(I))
    return sympy.Max(0, start), sympy.Min(sympy.sympify(J), stop)
