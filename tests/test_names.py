"""C names and comments: no user string can break, shadow or inject C."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convc.codegen.names import RESERVED, NameTable, c_comment, c_identifier, is_reserved

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

NASTY = ["", " ", "0", "2x", "x y", "a.b", "a b", "a_b", "a..b", "naïve", "日本", "x*/y", "/*",
         "a\nb", "a\\", "int", "float", "exp", "expf", "tanh", "free", "malloc", "INFINITY",
         "NAN", "convc_floordiv", "CONVC_OK", "__x", "_Bool", "_X", "restrict", "main",
         'x"); system("rm', "x; }", "#define"]


@pytest.mark.parametrize("name, expected", [
    ("conv0", "conv0"),
    ("conv 1.weight", "conv_1_weight"),
    ("a..b", "a_b"),
    ("x*/y", "x_y"),
    ("naïve", "na_ve"),
    ("a\nb", "a_b"),
    ("2x", "t_2x"),
    ("", "t_"),
    ("exp", "exp_"),
    ("int", "int_"),
    ("INFINITY", "INFINITY_"),
    ("convc_floordiv", "t_convc_floordiv"),
    ("__x", "t___x"),
    ("_Bool", "t__Bool"),
    ("_x", "_x"),
])
def test_c_identifier_golden(name, expected):
    assert c_identifier(name) == expected


@given(st.text())
def test_c_identifier_is_valid_and_unreserved(name):
    ident = c_identifier(name)
    assert IDENTIFIER.fullmatch(ident)
    assert not is_reserved(ident)
    assert ident not in RESERVED


@given(st.text(alphabet=st.characters(categories=["L", "N"]) | st.sampled_from("_ .*/")))
def test_c_identifier_is_idempotent(name):
    ident = c_identifier(name)
    assert c_identifier(ident) == ident


def test_name_table_distinct_stable_and_reserved():
    table = NameTable(reserved=["i0", "acc"])
    assert [table.add(s) for s in ("a.b", "a b", "a_b", "a.b", "i0", "acc", "a_b_2")] == [
        "a_b", "a_b_2", "a_b_3", "a_b", "i0_2", "acc_2", "a_b_2_2"]
    assert table["a b"] == "a_b_2"
    assert "a.b" in table and "zzz" not in table
    assert len(table) == 6
    with pytest.raises(KeyError):
        table["zzz"]


def test_name_table_is_deterministic():
    names = ["x", "x.1", "x 1", "x_1", "exp", "exp_"]
    first, second = NameTable(), NameTable()
    assert [first.add(s) for s in names] == [second.add(s) for s in names]


@given(st.lists(st.text(max_size=6), unique=True), st.lists(st.text(max_size=6)))
def test_name_table_ids_are_unique_valid_and_avoid_reserved(names, reserved):
    table = NameTable(reserved)
    ids = [table.add(s) for s in names]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(reserved)
    assert all(IDENTIFIER.fullmatch(i) and not is_reserved(i) for i in ids)
    assert [table.add(s) for s in names] == ids


@pytest.mark.parametrize("text, expected", [
    ("conv0 at model.py:12", "conv0 at model.py:12"),
    ("end */ here", "end *\\/ here"),
    ("open /* here", "open /\\* here"),
    ("*/*", "*\\/\\*"),
    ("/*/", "/\\*\\/"),
    ("two\nlines", "two\\nlines"),
    ("Σ_c x·w", "\\u03a3_c x\\xb7w"),
    ("what??/", "what?\\?/"),
])
def test_c_comment_golden(text, expected):
    assert c_comment(text) == expected


@given(st.text())
def test_c_comment_is_one_safe_ascii_line(text):
    safe = c_comment(text)
    assert "*/" not in safe and "/*" not in safe and "??" not in safe
    assert all(32 <= ord(ch) < 127 for ch in safe)


def test_identifiers_and_comments_compile(tmp_path):
    """Every nasty name as a local beside the calls a kernel makes; every comment inert."""
    table = NameTable()
    idents = [table.add(s) for s in NASTY]
    comments = "\n".join(f"/* {c_comment(s)} */" for s in NASTY + ["*/ int broken = ;"])
    body = "\n".join(f"    int64_t {i} = {k}; total += {i};" for k, i in enumerate(idents))
    source = (f'#include <math.h>\n#include <stdint.h>\n#include <stdlib.h>\n'
              f'#include "convc_runtime.h"\n{comments}\n'
              f"double f(double x);\ndouble f(double x)\n{{\n    int64_t total = 0;\n{body}\n"
              f"    return expf((float)x) + exp(x) + tanh(x) + sqrt(x) + fabs(x) + (double)total"
              f" + INFINITY + convc_floordiv(total, 2);\n}}\n")
    src = tmp_path / "names.c"
    src.write_text(source)
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Wshadow", "-Werror", f"-I{RUNTIME}",
                    "-c", str(src), "-o", str(tmp_path / "names.o")],
                   check=True, capture_output=True, text=True)
