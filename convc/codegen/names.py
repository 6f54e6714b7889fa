"""C layer: turning user strings (graph and tensor names) into safe C text.

Names are kept as the user gave them everywhere else; they pass through here only when they
reach C. `c_identifier` makes a valid identifier that cannot clash with a keyword, a libc or
math function, or the runtime; `NameTable` makes them unique; `c_comment` makes any text safe
inside a one-line ``/* ... */`` comment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

C_KEYWORDS = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Alignas", "_Alignof", "_Atomic",
    "_Bool", "_Complex", "_Generic", "_Imaginary", "_Noreturn", "_Static_assert",
    "_Thread_local", "alignas", "alignof", "bool", "constexpr", "false", "nullptr",
    "static_assert", "thread_local", "true", "typeof", "typeof_unqual"
})

# Names from the headers generated code includes (math.h, stdlib.h, stdint.h, stddef.h):
# a tensor called `exp` must not shadow the function its own kernel calls.
LIBRARY_NAMES = frozenset({
    "exp", "expf", "exp2", "exp2f", "expm1", "expm1f", "log", "logf", "log2", "log2f", "log10",
    "log10f", "log1p", "log1pf", "sqrt", "sqrtf", "cbrt", "cbrtf", "pow", "powf", "fabs",
    "fabsf", "abs", "labs", "llabs", "tanh", "tanhf", "sinh", "cosh", "sin", "sinf", "cos",
    "cosf", "tan", "asin", "acos", "atan", "atan2", "erf", "erff", "erfc", "floor", "floorf",
    "ceil", "ceilf", "round", "roundf", "trunc", "truncf", "fmod", "fmodf", "fmax", "fmaxf",
    "fmin", "fminf", "fma", "fmaf", "hypot", "copysign", "nan", "isnan", "isinf", "isfinite",
    "signbit", "INFINITY", "NAN", "HUGE_VAL", "HUGE_VALF", "M_PI", "M_E", "errno", "free",
    "malloc", "calloc", "realloc", "aligned_alloc", "posix_memalign", "abort", "exit", "atexit",
    "qsort", "memcpy", "memmove", "memset", "main", "NULL", "EOF", "size_t", "ptrdiff_t",
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
    "intptr_t", "uintptr_t", "offsetof", "assert"
})

RESERVED = C_KEYWORDS | LIBRARY_NAMES

# Prefixes an identifier must not start with: the runtime's own names, and the ones C
# reserves for the implementation (two underscores, or one and a capital letter).
_RESERVED_PREFIX = re.compile(r"(?i:convc_)|__|_[A-Z]")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]+")


def is_reserved(ident: str) -> bool:
    """Whether ``ident`` is a word generated C must not use as a name of its own."""
    return ident in RESERVED or bool(_RESERVED_PREFIX.match(ident))


def c_identifier(name: str) -> str:
    """A valid, non-reserved C identifier for ``name``; runs of other characters become ``_``.

    >>> c_identifier("conv 1.weight"), c_identifier("2x"), c_identifier("exp")
    ('conv_1_weight', 't_2x', 'exp_')
    """
    ident = _NOT_IDENTIFIER.sub("_", name)
    if not ident or ident[0].isdigit() or _RESERVED_PREFIX.match(ident):
        ident = "t_" + ident  # a suffix would leave the reserved prefix in place
    if ident in RESERVED:
        ident += "_"
    return ident


class NameTable:
    """Unique C identifiers for user strings, assigned in first-come order.

    A clash with a reserved identifier or with another name's gets ``_2``, ``_3``, ...:

    >>> t = NameTable(reserved=["i0"])
    >>> t.add("a.b"), t.add("a b"), t.add("a.b"), t.add("i0")
    ('a_b', 'a_b_2', 'a_b', 'i0_2')
    """

    def __init__(self, reserved: Iterable[str] = ()):
        self._taken: set[str] = set(reserved)
        self._ids: dict[str, str] = {}

    def add(self, name: str) -> str:
        if name in self._ids:
            return self._ids[name]
        base = ident = c_identifier(name)
        count = 1
        while ident in self._taken:
            count += 1
            ident = c_identifier(f"{base}_{count}")  # "_" + "_2" would be reserved
        self._taken.add(ident)
        self._ids[name] = ident
        return ident

    def __getitem__(self, name: str) -> str:
        return self._ids[name]

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"NameTable({self._ids!r})"


def c_comment(text: str) -> str:
    """``text`` safe on one line of a ``/* ... */`` comment.

    Control and non-ASCII characters are escaped (``\\n``, ``\\xe9``, ``\\u2028``), ``*/`` and
    ``/*`` are broken by a backslash, and so is ``??`` (a trigraph could end in a line splice).
    """
    safe = text.encode("unicode_escape").decode("ascii")
    safe = safe.replace("*/", "*\\/").replace("/*", "/\\*")
    return re.sub(r"\?(?=\?)", "?\\\\", safe)
