"""The C printer: golden strings, then the printed C compiled and run against Python."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from convc.codegen.cprinter import CPrinter, print_c

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"

i, j, k = (sympy.Symbol(s, integer=True) for s in "ijk")
n, c, i0 = (sympy.Symbol(s, integer=True, nonnegative=True) for s in ("n", "c", "i0"))
N = sympy.Symbol("N", integer=True, nonnegative=True)
x, acc = sympy.Symbol("x"), sympy.Symbol("acc")
X, T = sympy.IndexedBase("x"), sympy.IndexedBase("conv0.t")
BUFFERS = {"x": ("x_in", (N, 3, 28)), "conv0.t": ("conv0_t", ())}


# -- golden strings ---------------------------------------------------------------------------

INTEGER_GOLDEN = [
    (sympy.floor((j - 3) / 2), "convc_floordiv(j - 3, 2)"),
    (sympy.floor(-j / 3), "convc_floordiv(-j, 3)"),
    (sympy.floor(j / N), "convc_floordiv(j, N)"),
    (sympy.ceiling((j - 3) / 2), "convc_ceildiv(j - 3, 2)"),
    (sympy.ceiling(j / 4 - sympy.Rational(1, 3)), "convc_ceildiv(3*j - 4, 12)"),
    (sympy.Max(i, j, N), "convc_max(N, convc_max(i, j))"),
    (sympy.Min(i, 2 * j, k + 1), "convc_min(i, convc_min(2*j, k + 1))"),
    (sympy.Max(0, sympy.ceiling((i - 5) / 3)), "convc_max(0, convc_ceildiv(i - 5, 3))"),
    (sympy.Mod(j - i, 3), "convc_mod(-i + j, 3)"),
    (2 * sympy.floor(j / 2) + 1, "2*convc_floordiv(j, 2) + 1"),
    (sympy.Abs(i - j), "convc_max(i - j, -(i - j))"),
]

INDEXED_GOLDEN = [
    (X[n, c, i0], "x_in[(n*3 + c)*28 + i0]"),
    (X[n, c, i0 - j + 2], "x_in[(n*3 + c)*28 + i0 - j + 2]"),
    (X[n + 1, c, i0], "x_in[((n + 1)*3 + c)*28 + i0]"),
    (X[n, 0, 0], "x_in[n*84]"),
    (X[0, c, 0], "x_in[c*28]"),
    (X[0, 0, i0], "x_in[i0]"),
    (X[1, 2, 3], "x_in[143]"),
    (X[sympy.floor(n / 2), c, sympy.Mod(i0, 3)],
     "x_in[(convc_floordiv(n, 2)*3 + c)*28 + convc_mod(i0, 3)]"),
    (T[0], "conv0_t[0]"),
]

COUNT = "-convc_max(0, convc_ceildiv(j - 5, 3)) + convc_min(3, convc_floordiv(j + 1, 2)) + 1"
FLOAT_GOLDEN = [  # (expr, float32, float64)
    (sympy.exp(-x), "expf(-x)", "exp(-x)"),
    (sympy.tanh(x) + sympy.sqrt(x), "sqrtf(x) + tanhf(x)", "sqrt(x) + tanh(x)"),
    (x / 2 + sympy.Float(0.25), "(1.0F/2.0F)*x + 0.25F", "(1.0/2.0)*x + 0.25"),
    (-sympy.oo, "-INFINITY", "-INFINITY"),
    (sympy.oo, "INFINITY", "INFINITY"),
    (x**2, "(x*x)", "(x*x)"),
    ((x + 1) ** 3, "((x + 1)*(x + 1)*(x + 1))", "((x + 1)*(x + 1)*(x + 1))"),
    (x**4, "(x*x*x*x)", "(x*x*x*x)"),
    (x**5, "powf(x, 5)", "pow(x, 5)"),
    (1 / x, "1.0F/x", "1.0/x"),
    (sympy.sqrt(acc), "sqrtf(acc)", "sqrt(acc)"),
    (acc ** sympy.Rational(1, 3), "powf(acc, 1.0F/3.0F)", "pow(acc, 1.0/3.0)"),
    (x ** sympy.Float(1.5), "powf(x, 1.5F)", "pow(x, 1.5)"),
    (sympy.Abs(x), "fabsf(x)", "fabs(x)"),
    (sympy.Max(x, 0), "convc_fmaxf(0, x)", "convc_fmax(0, x)"),
    (sympy.Min(x, 1, acc), "convc_fminf(1, convc_fminf(acc, x))",
     "convc_fmin(1, convc_fmin(acc, x))"),
    (sympy.KroneckerDelta(c, n) * x, "x*(float)((c) == (n))", "x*(double)((c) == (n))"),
    (acc / N, "acc/(float)N", "acc/(double)N"),
    (1 / N, "1.0F/(float)N", "1.0/(double)N"),
    (acc / (sympy.Min(3, sympy.floor((j + 1) / 2)) - sympy.Max(0, sympy.ceiling((j - 5) / 3))
            + 1),
     "acc/(float)(" + COUNT + ")", "acc/(double)(" + COUNT + ")"),
    (sympy.Piecewise((X[n, c, i0 - 1], sympy.And(i0 - 1 >= 0, i0 - 1 < 28)), (-sympy.oo, True)),
     "((i0 >= 1 && i0 < 29) ? (x_in[(n*3 + c)*28 + i0 - 1]) : (-INFINITY))",
     "((i0 >= 1 && i0 < 29) ? (x_in[(n*3 + c)*28 + i0 - 1]) : (-INFINITY))"),
    # a value test that picks a tensor read (a label's logit) reads both values: a select
    (sympy.Piecewise((X[n, c, i0], sympy.Eq(c, T[0])), (0, True)),
     "convc_selectf(c == conv0_t[0], x_in[(n*3 + c)*28 + i0], (0))",
     "convc_select(c == conv0_t[0], x_in[(n*3 + c)*28 + i0], (0))"),
    # ... but a test of indices alone, or a constant value, stays a ternary
    (sympy.Piecewise((X[n, c, i0], sympy.Eq(c, i0)), (0, True)),
     "((c == i0) ? (x_in[(n*3 + c)*28 + i0]) : (0))",
     "((c == i0) ? (x_in[(n*3 + c)*28 + i0]) : (0))"),
    (sympy.Piecewise((1, sympy.Eq(c, T[0])), (0, True)),
     "((c == conv0_t[0]) ? (1) : (0))", "((c == conv0_t[0]) ? (1) : (0))"),
    (sympy.And(j > 0, sympy.Or(j < 5, j > 10)), "(j > 10 || j < 5) && j > 0",
     "(j > 10 || j < 5) && j > 0"),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("expr, expected", INTEGER_GOLDEN + INDEXED_GOLDEN, ids=str)
def test_integer_golden(expr, expected, dtype):
    assert print_c(expr, dtype, BUFFERS) == expected


@pytest.mark.parametrize("expr, f32, f64", FLOAT_GOLDEN, ids=str)
def test_float_golden(expr, f32, f64):
    assert print_c(expr, "float32", BUFFERS) == f32
    assert print_c(expr, "float64", BUFFERS) == f64


def test_symbolic_dimensions_are_parenthesised():
    w = sympy.IndexedBase("w")
    buffers = {"w": ("w", (5, N + 1, 1, 7))}
    assert print_c(w[n, c, 0, i0], buffers=buffers) == "w[(n*(N + 1) + c)*7 + i0]"
    assert print_c(w[n, 0, 0, i0], buffers=buffers) == "w[n*(N + 1)*7 + i0]"


def test_printer_attributes_and_int_context():
    p = CPrinter("float64", BUFFERS)
    assert (p.float_type, p.dtype) == ("double", "float64")
    assert p.doprint_int(sympy.floor(j / 3) + 1) == "convc_floordiv(j, 3) + 1"
    assert CPrinter().float_type == "float"


@pytest.mark.parametrize("expr", [X[n, c, j / 2], X[n, c, sympy.Max(j / 2, 0)],
                                  X[n, c, sympy.Float(1.0)], X[n, c, 1 / (j + 1)],
                                  X[n, c, sympy.floor(x)]], ids=str)
def test_division_or_float_in_an_index_raises(expr):
    with pytest.raises(ValueError, match="floor or ceiling"):
        print_c(expr, buffers=BUFFERS)


def test_division_in_int_context_raises():
    p = CPrinter()
    with pytest.raises(ValueError):
        p.doprint_int(j / 2)
    assert p.doprint_int(sympy.Min(j, 4)) == "convc_min(4, j)"  # the context was restored


def test_unknown_tensor_and_bad_accesses():
    with pytest.raises(KeyError, match="'y'"):
        print_c(sympy.IndexedBase("y")[j], buffers=BUFFERS)
    with pytest.raises(ValueError, match="2 indices"):
        print_c(X[n, c], buffers=BUFFERS)
    with pytest.raises(ValueError, match="0-d"):
        print_c(T[1], buffers=BUFFERS)
    with pytest.raises(ValueError, match="dtype"):
        CPrinter("float16")


# -- semantics: the printed C, compiled and run -----------------------------------------------

def run_c(source: str, tmp_path: Path) -> list[str]:
    """Compiles ``source`` with the runtime header, float-to-int warnings as errors; runs it."""
    src, exe = tmp_path / "prog.c", tmp_path / "prog"
    src.write_text(source)
    subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Werror", "-Wfloat-conversion",
                    f"-I{RUNTIME}", str(src), "-o", str(exe), "-lm"],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return out.split()


GRID = [(a, b, d) for a in range(-9, 10) for b in range(-9, 10) for d in (-3, -2, -1, 1, 2, 3)]


def check_integer_cases(cases, tmp_path: Path) -> None:
    """Each case is (sympy expression in i, j, k; the same in Python), checked over GRID."""
    funcs = [f"static int64_t f{m}(int64_t i, int64_t j, int64_t k) "
             f"{{ (void)i; (void)j; (void)k; return {print_c(e)}; }}"
             for m, (e, _) in enumerate(cases)]
    calls = " ".join(f'printf("%lld ", (long long)f{m}(i, j, k));' for m in range(len(cases)))
    main = ("int main(void) {\n  for (int64_t i = -9; i <= 9; ++i)\n"
            "  for (int64_t j = -9; j <= 9; ++j) {\n"
            "    static const int64_t ks[] = {-3, -2, -1, 1, 2, 3};\n"
            "    for (int m = 0; m < 6; ++m) { int64_t k = ks[m]; " + calls + " }\n  }\n"
            "  return 0;\n}\n")
    source = "#include <stdio.h>\n#include \"convc_runtime.h\"\n" + "\n".join(funcs) + "\n" + main
    got = iter(run_c(source, tmp_path))
    for a, b, d in GRID:
        for e, ref in cases:
            assert int(next(got)) == ref(a, b, d), f"{e} at i={a}, j={b}, k={d}"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


HAND_CASES = [
    (sympy.floor((i - 3) / 2), lambda a, b, d: (a - 3) // 2),
    (sympy.floor((2 * i - 3 * j + 1) / 3), lambda a, b, d: (2 * a - 3 * b + 1) // 3),
    (sympy.floor(i / -3), lambda a, b, d: a // -3),
    (sympy.floor(i / k), lambda a, b, d: a // d),
    (sympy.floor((i + sympy.floor(j / 2)) / 3), lambda a, b, d: (a + b // 2) // 3),
    (sympy.ceiling((i - 3) / 2), lambda a, b, d: ceil_div(a - 3, 2)),
    (sympy.ceiling((i + j) / 4), lambda a, b, d: ceil_div(a + b, 4)),
    (sympy.ceiling(j / k), lambda a, b, d: ceil_div(b, d)),
    (sympy.Mod(i - 2 * j, 3), lambda a, b, d: (a - 2 * b) % 3),
    (sympy.Mod(i, k), lambda a, b, d: a % d),
    (sympy.Mod(i + j, -4), lambda a, b, d: (a + b) % -4),
    (sympy.Max(i, j, 1 - k), lambda a, b, d: max(a, b, 1 - d)),
    (sympy.Min(i, 2 * j, k + 1), lambda a, b, d: min(a, 2 * b, d + 1)),
    (sympy.Max(0, sympy.ceiling((i - 5) / 3)), lambda a, b, d: max(0, ceil_div(a - 5, 3))),
    (sympy.Min(7, sympy.floor((j + 2) / 2)) - sympy.Max(0, sympy.ceiling((i - 2) / 2)) + 1,
     lambda a, b, d: min(7, (b + 2) // 2) - max(0, ceil_div(a - 2, 2)) + 1),
    (sympy.Abs(i - j), lambda a, b, d: abs(a - b)),
    # guards against fractions, as sympy solves 0 <= 2*i - 1: compared as integers
    (sympy.Piecewise((1, (i >= sympy.Rational(1, 2)) & (i + j < sympy.Rational(7, 2))),
                     (0, True)), lambda a, b, d: int(2 * a >= 1 and 2 * (a + b) < 7)),
    (sympy.Piecewise((k, 2 * i - j > sympy.Rational(-5, 3)), (j, j <= sympy.Rational(-1, 2)),
                     (0, True)),
     lambda a, b, d: d if 3 * (2 * a - b) > -5 else (b if 2 * b <= -1 else 0)),
]


def test_integer_helpers_match_python(tmp_path):
    check_integer_cases(HAND_CASES, tmp_path)


def test_a_guard_against_a_fraction_compares_integers():
    """``t >= 1/2`` of an integer ``t`` is ``t >= 1``: no float in the test (which the C of
    every point would convert to), and the bound rounded the way the comparison needs."""
    assert print_c(i >= sympy.Rational(1, 2)) == "i >= 1"
    assert print_c(i < sympy.Rational(57, 2)) == "i <= 28"
    assert print_c(2 * i + j > sympy.Rational(-3, 2)) == "2*i + j >= -1"
    assert print_c(i <= sympy.Rational(5, 3)) == "i <= 1"
    x = sympy.Symbol("x")  # a float compared with a fraction stays a float comparison
    assert "2.0F" in CPrinter().doprint(x >= sympy.Rational(1, 2))


def affine_case(kind: str, a: int, b: int, off: int, den: int):
    """One random case: floor, ceiling, mod, max or min of affine expressions in i and j."""
    e, ref = a * i + b * j + off, (lambda p, q: a * p + b * q + off)
    if kind == "floor":
        return sympy.floor(e / den), lambda p, q, d: ref(p, q) // den
    if kind == "ceiling":
        return sympy.ceiling(e / den), lambda p, q, d: ceil_div(ref(p, q), den)
    if kind == "mod":
        return sympy.Mod(e, den), lambda p, q, d: ref(p, q) % den
    other = sympy.floor((b * i - a * j) / den)
    combine = max if kind == "max" else min
    return ((sympy.Max if kind == "max" else sympy.Min)(e, other, k),
            lambda p, q, d: combine(ref(p, q), (b * p - a * q) // den, d))


small = st.integers(-5, 5)
case_args = st.tuples(st.sampled_from(["floor", "ceiling", "mod", "max", "min"]), small, small,
                      st.integers(-20, 20), st.integers(1, 7) | st.integers(-7, -1))


@settings(max_examples=5, deadline=None)
@given(st.lists(case_args, min_size=10, max_size=10))
def test_random_affine_cases_match_python(tmp_path_factory, args):
    tmp = tmp_path_factory.mktemp("affine")
    check_integer_cases([affine_case(*a) for a in args], tmp)


def test_flattened_access_matches_numpy(tmp_path):
    shape = (N, 3, 5)
    read = print_c(X[n, c, i0], buffers={"x": ("xb", shape)})
    source = ("#include <stdio.h>\n#include <stdint.h>\nstatic int64_t xb[4 * 3 * 5];\n"
              "static int64_t at(int64_t N, int64_t n, int64_t c, int64_t i0) "
              f"{{ (void)N; return {read}; }}\n"
              "int main(void) {\n  for (int64_t t = 0; t < 60; ++t) xb[t] = t;\n"
              "  for (int64_t n = 0; n < 4; ++n) for (int64_t c = 0; c < 3; ++c)\n"
              "  for (int64_t i0 = 0; i0 < 5; ++i0)\n"
              "    printf(\"%lld \", (long long)at(4, n, c, i0));\n"
              "  return 0;\n}\n")
    got = [int(v) for v in run_c(source, tmp_path)]
    want = [int(np.ravel_multi_index(ix, (4, 3, 5))) for ix in np.ndindex(4, 3, 5)]
    assert got == want


FLOAT_CASES = [
    sympy.Max(x, 0),
    sympy.Min(x, 1, -x),
    x**2 - x**3,
    1 / x,
    1 / (1 + sympy.exp(-x)),
    sympy.tanh(x) * sympy.Abs(x),
    sympy.KroneckerDelta(i, j) * x,
    x / (sympy.Max(i, 1) + sympy.Abs(j)),
    x / (sympy.Min(3, sympy.floor((i + 9) / 2)) - sympy.Max(0, sympy.ceiling((j - 5) / 3)) + 1),
    sympy.Piecewise((x, i > 0), (-sympy.oo, True)),
    sympy.Abs(x) ** sympy.Rational(1, 3) + sympy.sqrt(x**2),
    sympy.Abs(x) ** sympy.Float(2.5),
    x * sympy.floor((i - 3) / 2) / 4,
]


@pytest.mark.parametrize("dtype, ctype, rtol", [("float32", "float", 1e-5),
                                                ("float64", "double", 1e-12)])
def test_float_bodies_match_sympy(tmp_path, dtype, ctype, rtol):
    funcs = [f"static {ctype} g{m}({ctype} x, int64_t i, int64_t j) "
             f"{{ (void)x; (void)i; (void)j; return {print_c(e, dtype)}; }}"
             for m, e in enumerate(FLOAT_CASES)]
    points = [(xv, a, b) for xv in (-2.5, -0.5, 0.75, 3.0) for a in (-4, 0, 1, 5)
              for b in (-3, 1, 5)]
    calls = "\n".join(f'  printf("%.17g ", (double)g{m}(({ctype}){xv!r}, {a}, {b}));'
                      for xv, a, b in points for m in range(len(FLOAT_CASES)))
    source = ("#include <stdio.h>\n#include \"convc_runtime.h\"\n" + "\n".join(funcs)
              + "\nint main(void) {\n" + calls + "\n  return 0;\n}\n")
    got = iter(run_c(source, tmp_path))
    for xv, a, b in points:
        for e in FLOAT_CASES:
            want = float(e.subs({x: xv, i: a, j: b}))
            assert float(next(got)) == pytest.approx(want, rel=rtol, abs=1e-30), (e, xv, a, b)


def test_runtime_max_and_min_propagate_nan_from_either_argument(tmp_path):
    """convc_fmax[f] and convc_fmin[f] return NaN when either argument is NaN, else the
    larger (smaller) one; compared with Python's own comparisons."""
    pairs = [("NAN", "1.0"), ("1.0", "NAN"), ("2.0", "3.0"), ("3.0", "2.0"),
             ("-INFINITY", "5.0"), ("NAN", "NAN")]
    calls = " ".join(f'printf("%f ", (double){fn}({a}, {b}));' for a, b in pairs
                     for fn in ("convc_fmaxf", "convc_fminf", "convc_fmax", "convc_fmin"))
    source = ("#include <stdio.h>\n#include <math.h>\n#include \"convc_runtime.h\"\n"
              "int main(void) { " + calls + " return 0; }\n")
    got = iter(float(v) for v in run_c(source, tmp_path))
    value = {"NAN": math.nan, "-INFINITY": -math.inf}
    for a, b in pairs:
        a, b = (value[v] if v in value else float(v) for v in (a, b))
        for pick in (max, min, max, min):
            result = next(got)
            if math.isnan(a) or math.isnan(b):
                assert math.isnan(result)
            else:
                assert result == pick(a, b)


def test_float_max_and_min_keep_nan(tmp_path):
    exprs = [sympy.Max(x, 0), sympy.Max(0, x, acc), sympy.Min(x, 1)]
    funcs = [f"static float h{m}(float x, float acc) {{ (void)acc; return {print_c(e)}; }}"
             for m, e in enumerate(exprs)]
    calls = " ".join(f'printf("%f ", (double)h{m}(NAN, 0.0F));' for m in range(len(exprs)))
    source = ("#include <stdio.h>\n#include \"convc_runtime.h\"\n" + "\n".join(funcs)
              + "\nint main(void) { " + calls + " return 0; }\n")
    assert all(math.isnan(float(v)) for v in run_c(source, tmp_path))
