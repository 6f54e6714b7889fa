"""Affine solver (test layer 3): the scatter-to-gather inversion of ``i = s·j + d·m - p``.

The loops that `invert_access` derives for the input gradient h (9.12-9.13) are run as
Python loops and compared with a brute-force enumeration of the triples ``(i, j, m)``
(TVM's consistency check): every triple is visited once, and nothing else is. The kernel
gradient bounds (9.11) and the interior of each phase are checked the same way.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from convc.errors import DerivationError
from convc.ir.affine import (
    Phase,
    ext_gcd,
    interior,
    invert_access,
    kernel_gradient_bounds,
    mod_inverse,
    never_meet,
)

SETTINGS = settings(derandomize=True, deadline=None, max_examples=150)


def value(expr, **subs) -> int:
    """An expression of ints and the given integer symbols, evaluated to a Python int."""
    out = sympy.sympify(expr).xreplace({sympy.Symbol(k, integer=True): sympy.Integer(v)
                                        for k, v in subs.items()})
    assert out.is_Integer, f"{expr} did not evaluate to an integer: {out}"
    return int(out)


def forward_count(s: int, d: int, p: int, M: int, I: int) -> int:
    """The output count of the forward pass (padding ``p`` on both sides)."""
    return (I + 2 * p - d * (M - 1) - 1) // s + 1


def brute_force(s, d, p, J, M, I) -> set[tuple[int, int, int]]:
    """Every ``(i, j, m)`` with ``i == s·j + d·m - p`` and all three in range."""
    return {(s * j + d * m - p, j, m) for j in range(J) for m in range(M)
            if 0 <= s * j + d * m - p < I}


def phase_loop(ph: Phase):
    """The ``(u, t)`` that the loops of one phase visit."""
    for u in range(value(ph.u_start), value(ph.u_stop)):
        for t in range(value(ph.t_start, u=u), value(ph.t_stop, u=u)):
            yield u, t


def visited(phases) -> list[tuple[int, int, int]]:
    """The ``(i, j, m)`` that the phases' loops visit, in order, repeats kept."""
    return [(value(ph.i, u=u), value(ph.j, u=u, t=t), value(ph.m, t=t))
            for ph in phases if not ph.empty for u, t in phase_loop(ph)]


@st.composite
def accesses(draw, arbitrary_j=None):
    """``(s, d, p, J, M, I)``; J the forward output count, or any J in 1..8."""
    s, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p, M, I = draw(st.integers(0, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 12))
    J = forward_count(s, d, p, M, I)
    if arbitrary_j is None:
        arbitrary_j = J <= 0 or draw(st.booleans())
    if arbitrary_j:
        J = draw(st.integers(1, 8))
    elif J <= 0:
        J = 1
    return s, d, p, J, M, I


# --- extended gcd -------------------------------------------------------------------------

@SETTINGS
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6))
def test_ext_gcd_is_bezout(a, b):
    g, x, y = ext_gcd(a, b)
    assert g == math.gcd(a, b) >= 0
    assert a * x + b * y == g


@pytest.mark.parametrize("a, b", [(0, 0), (0, 5), (5, 0), (-7, 0), (0, -3), (-4, -6)])
def test_ext_gcd_edge_cases(a, b):
    g, x, y = ext_gcd(a, b)
    assert g == math.gcd(a, b) and a * x + b * y == g


@SETTINGS
@given(st.integers(-10**4, 10**4), st.integers(1, 10**4))
def test_mod_inverse_matches_pow(a, m):
    if math.gcd(a, m) != 1:
        with pytest.raises(ValueError, match="no inverse"):
            mod_inverse(a, m)
        return
    assert mod_inverse(a, m) == pow(a, -1, m)


def test_mod_inverse_rejects_a_modulus_below_one():
    with pytest.raises(ValueError, match="must be positive"):
        mod_inverse(3, 0)


# --- input gradient: the polyphase gather ---------------------------------------------------

@SETTINGS
@given(accesses())
def test_phases_visit_every_triple_once(case):
    s, d, p, J, M, I = case
    phases = invert_access(s, d, p, J, M, I)
    assert [ph.phi for ph in phases] == list(range(s))
    seen = visited(phases)
    assert not [k for k, n in Counter(seen).items() if n > 1]
    assert set(seen) == brute_force(s, d, p, J, M, I)


@SETTINGS
@given(accesses())
def test_phases_partition_the_input_and_empty_ones_get_nothing(case):
    s, d, p, J, M, I = case
    phases = invert_access(s, d, p, J, M, I)
    reached = {i for i, _, _ in brute_force(s, d, p, J, M, I)}
    g = math.gcd(s, d)
    covered = []
    for ph in phases:
        ii = [value(ph.i, u=u) for u in range(value(ph.u_start), value(ph.u_stop))]
        assert all((i + p) % s == ph.phi for i in ii)
        covered += ii
        assert ph.empty == (ph.phi % g != 0)
        if ph.empty:
            assert not reached & set(ii)
            assert (value(ph.t_start), value(ph.t_stop)) == (0, 0)
    assert sorted(covered) == list(range(I))


@SETTINGS
@given(accesses(arbitrary_j=False))
def test_gather_does_the_forward_multiply_adds(case):
    s, d, p, J, M, I = case
    forward = sum(1 for j in range(J) for m in range(M) if 0 <= s * j + d * m - p < I)
    phases = invert_access(s, d, p, J, M, I)
    assert sum(1 for ph in phases if not ph.empty for _ in phase_loop(ph)) == forward


@settings(derandomize=True, deadline=None, max_examples=40)
@given(accesses())
def test_symbolic_sizes_give_the_same_loops(case):
    s, d, p, J, M, I = case
    sizes = sympy.symbols("p J M I", integer=True)
    numbers = dict(zip(sizes, map(sympy.Integer, (p, J, M, I))))
    symbolic = invert_access(s, d, *sizes)
    concrete = invert_access(s, d, p, J, M, I)
    for a, b in zip(symbolic, concrete):
        for name in ("u_start", "u_stop", "t_start", "t_stop", "i"):
            got = getattr(a, name).xreplace(numbers)
            assert sympy.simplify(got - getattr(b, name)) == 0, name


def test_worked_example_is_the_polyphase_form():
    s, d, p, M, I = 2, 1, 1, 3, 7
    J = forward_count(s, d, p, M, I)
    dy, w = sympy.IndexedBase("dy"), sympy.IndexedBase("w")
    u = sympy.Symbol("u", integer=True)
    phases = invert_access(s, d, p, J, M, I)
    expected = [(2 * u - 1, dy[u] * w[0] + dy[u - 1] * w[2]), (2 * u, dy[u] * w[1])]
    for ph, (i, dx) in zip(phases, expected, strict=True):
        assert not ph.empty and ph.i == i
        inner = interior(ph, J, M)
        gather = sum(dy[ph.j.subs(ph.t, t)] * w[ph.m.subs(ph.t, t)]
                     for t in range(inner.t_start, inner.t_stop))
        assert sympy.expand(gather - dx) == 0
    assert set(visited(phases)) == brute_force(s, d, p, J, M, I)


def test_gcd_phases_are_empty():
    phases = invert_access(4, 2, 1, 5, 3, 12)
    assert [ph.empty for ph in phases] == [False, True, False, True]
    assert phases[1].m is None and phases[1].j is None


def test_given_symbols_are_used():
    u, t = sympy.symbols("u0 t0", integer=True, nonnegative=True)
    ph = invert_access(3, 2, 1, 4, 3, 10, u=u, t=t)[1]
    assert ph.i.free_symbols == {u} and ph.m.free_symbols == {t}
    assert ph.t_stop.free_symbols == {u}


@pytest.mark.parametrize("s, d", [(0, 1), (1, 0), (-2, 1)])
def test_non_positive_stride_or_dilation_is_refused(s, d):
    with pytest.raises(DerivationError, match="must be positive"):
        invert_access(s, d, 0, 3, 3, 5)


# --- interior and border ----------------------------------------------------------------

@SETTINGS
@given(accesses())
def test_interior_bounds_are_constant_and_exact(case):
    s, d, p, J, M, I = case
    for ph in invert_access(s, d, p, J, M, I):
        inner = interior(ph, J, M)
        start, stop = value(ph.u_start), value(ph.u_stop)
        lo, hi = value(inner.u_lo), value(inner.u_hi)
        t0, t1 = value(inner.t_start), value(inner.t_stop)
        assert start <= lo <= hi <= stop
        for u in range(lo, hi):
            assert (value(ph.t_start, u=u), value(ph.t_stop, u=u)) == (t0, t1)
        if ph.empty:
            assert (lo, hi, t0, t1) == (start, stop, 0, 0)
            continue
        # The border is exactly where a clamp of the t bounds is active.
        for u in [*range(start, lo), *range(hi, stop)]:
            assert not ((u + ph.c0 - J) // ph.j_step + 1 <= 0
                        and (u + ph.c0) // ph.j_step + 1 >= t1)


# --- kernel gradient ------------------------------------------------------------------------

@SETTINGS
@given(accesses())
def test_kernel_gradient_bounds_are_tight(case):
    s, d, p, J, M, I = case
    for m in range(M):
        start, stop = map(value, kernel_gradient_bounds(s, d, p, J, I, m))
        assert list(range(start, stop)) == [j for j in range(J) if 0 <= s * j + d * m - p < I]


def test_kernel_gradient_bounds_in_a_symbolic_tap():
    m = sympy.Symbol("m", integer=True)
    start, stop = kernel_gradient_bounds(2, 3, 1, 6, 11, m)
    for tap in range(4):
        assert value(start, m=tap) == max(0, -((3 * tap - 1) // 2))
        assert value(stop, m=tap) == min(6, (10 + 1 - 3 * tap) // 2 + 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=4, max_size=4), st.integers(-4, 4),
       st.integers(-4, 4))
def test_never_meet_only_where_no_values_meet(coeffs, ka, kb):
    """Two indices ``a·i + b·j + ka`` and ``c·i + d·j + kb`` (each with variables of its
    own) said never to meet do not, over a box of values; said to possibly meet, do where
    the gcd test allows it (some values meet in the box)."""
    i, j = sympy.symbols("i j", integer=True)
    a, b, c, d = coeffs
    T = sympy.IndexedBase("t")
    apart = never_meet(T[a * i + b * j + ka], T[c * i + d * j + kb], [i, j])
    box = range(-12, 13)
    first = {a * p + b * q + ka for p in box for q in box}
    second = {c * p + d * q + kb for p in box for q in box}
    assert apart == (not first & second)

