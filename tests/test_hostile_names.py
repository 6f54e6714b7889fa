"""Whole graphs with hostile node and graph names: they compile, run and give numpy's numbers,
and no user string reaches the generated C except inside comments that it cannot close.

(`test_names.py` tests the name sanitiser on its own; this file goes through `compile`.)
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import convc
from convc.build import runtime_dir

# Names that try to break out of a comment or a string, inject a directive, are not ASCII,
# are C keywords or library names, or are names the generated C uses for itself.
HOSTILE = [
    'x"y', "it's", "a space", "end */ here", "/* open", "*/", "/*", "line\nbreak", "cr\rtab\t",
    "back\\slash", "trail\\", "#include <stdio.h>", "#define N 0", "100% %d %s",
    "Größe ∑ 名前", "int", "return", "??/", "main", "exp", "tanhf", "convc_alloc",
    "CONVC_OK", "__x", "_Bool", "N_2", "k_2", "0start", "{", "}", ";", "v", "status", "done",
]
# Names the kernels use as loop variables, accumulators and sizes.
LOOP_NAMES = ["n", "k", "acc", "arg", "N", "c", "i0", "m0", "d0", "o", "f"]
PUNCTUATION = ["a.b", "a b", "a_b"]
KEYWORDS = {"int", "return", "main", "exp", "tanhf", "_Bool"}
BATCH = 3


# -- reading the generated C ---------------------------------------------------------------------

def split_comments(source: str) -> tuple[str, list[str]]:
    """The code with each comment replaced by a space, and the comment bodies, as a C lexer
    sees them: a comment ends at the first ``*/``."""
    bodies = re.findall(r"/\*(.*?)\*/", source, flags=re.DOTALL)
    return re.sub(r"/\*.*?\*/", " ", source, flags=re.DOTALL), bodies


def check_source(source: str, user_strings: list[str]) -> None:
    code, comments = split_comments(source)
    for body in comments:
        assert "/*" not in body, f"a comment opens inside a comment: {body!r}"
    assert "*/" not in code, "a comment was closed early: code holds a stray */"
    # Each comment is a header that starts its line, or a loop's "} /* i */" tag; each ends
    # its line. A user string that closed a comment early would leave code after the "*/".
    for match in re.finditer(r"/\*.*?\*/", source, flags=re.DOTALL):
        line_start = source.rfind("\n", 0, match.start()) + 1
        assert source[line_start:match.start()].strip() in ("", "}"), match.group()
        assert source[match.end():match.end() + 1] in ("\n", ""), (
            f"code follows a comment on its line: {match.group()!r}")
    directives = [line.strip() for line in code.splitlines() if line.strip().startswith("#")]
    pragmas = r"#pragma (GCC unroll \d+|omp (parallel for|simd)[\w(),+: ]*)"
    assert [d for d in directives if not re.fullmatch(pragmas, d)] == [
        "#include <math.h>", "#include <stdint.h>", '#include "convc_runtime.h"']
    body = "\n".join(line for line in code.splitlines() if not line.strip().startswith("#"))
    assert body.isascii()
    for bad in ('"', "'", "\\", "%", "??"):
        assert bad not in body, f"{bad!r} in the code outside comments"
    for name in user_strings:
        # ("{", ";" and the like are C's own punctuation, and "*/" is checked above)
        if len(name) > 2 and not re.fullmatch(r"\w+", name, flags=re.ASCII):
            assert name not in code, f"raw user string {name!r} in the code"
    loops = set(re.findall(r"for \(int64_t (\w+) = ", code))
    taken = loops | {"N", "acc", "arg", "v", "status"} | KEYWORDS
    for signature in re.findall(r"^(?:static void|int) \w+\((.*)\)$", code, flags=re.MULTILINE):
        params = [p.split()[-1].lstrip("*") for p in signature.split(", ")]
        assert len(params) == len(set(params)), f"a parameter repeats: {signature}"
        assert not (set(params) - {"N"}) & taken, (
            f"a buffer is named like a loop variable, size or keyword: {signature}")


def compile_strictly(source: str, tmp_path) -> None:
    """The source under ``-Wall -Wshadow -Werror`` (``-Wall`` warns of ``/*`` in a comment)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "a C compiler (cc or gcc) is needed, as for every module"
    path = tmp_path / "hostile.c"
    path.write_text(source, encoding="utf-8")
    command = [cc, "-std=c99", "-fsyntax-only", "-Wall", "-Wshadow", "-Werror",
               f"-I{runtime_dir()}", str(path)]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- numpy ---------------------------------------------------------------------------------------

def conv1d(x, w, b, pad):
    x = np.pad(x, ((0, 0), (0, 0), pad))
    length = x.shape[2] - w.shape[2] + 1
    return b[None, :, None] + sum(np.einsum("kc,ncl->nkl", w[:, :, m], x[:, :, m:m + length])
                                  for m in range(w.shape[2]))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# -- hostile node names --------------------------------------------------------------------------

def build_hostile() -> convc.Graph:
    g = convc.Graph("hostile")
    big_n, small_n = g.input("N", (None, 2, 5)), g.input("n", (None, 2, 5))
    k_weight = g.input("k_weight", (None, 2, 5))                # the C name of "k.weight"
    h = g.conv(big_n, channels=2, kernel=3, padding="same", name="k")
    h = g.add(h, small_n, name="acc")
    h = g.add(h, k_weight, name="arg")
    h = g.relu(h, name="c")
    h = g.max_pool(h, 2, ceil_mode=True, name="i0")             # (N, 2, 3)
    h = g.conv(h, channels=2, kernel=2, padding=1, name="m0")  # (N, 2, 4)
    h = g.sigmoid(h, name="d0")
    for name in HOSTILE:
        h = g.tanh(h, name=name)
    a = g.relu(h, name="a.b")
    b = g.tanh(h, name="a b")
    c = g.sigmoid(h, name="a_b")
    total = g.add(g.add(a, b, name="a.b.sum"), c, name="a b sum")
    s = g.softmax(total, name="s")
    f = g.dense(g.flatten(total, name="o"), 3, name="f")
    g.output(a, b, c, s, f)
    return g


def hostile_reference(arrays):
    p = {k: v.astype(np.float64) for k, v in arrays.items()}
    h = conv1d(p["N"], p["k.weight"], p["k.bias"], (1, 1)) + p["n"] + p["k_weight"]
    h = np.maximum(h, 0)
    h = np.stack([h[:, :, 0:2].max(2), h[:, :, 2:4].max(2), h[:, :, 4]], axis=2)
    h = sigmoid(conv1d(h, p["m0.weight"], p["m0.bias"], (1, 1)))
    for _ in HOSTILE:
        h = np.tanh(h)
    a, b, c = np.maximum(h, 0), np.tanh(h), sigmoid(h)
    total = a + b + c
    f = total.reshape(len(total), -1) @ p["f.weight"].T + p["f.bias"]
    return {"a.b": a, "a b": b, "a_b": c, "s": softmax(total), "f": f}


@pytest.fixture(scope="module")
def hostile():
    g = build_hostile()
    net = convc.compile(g)
    rng = np.random.default_rng(3)
    arrays = {name: rng.standard_normal((BATCH, *shape[1:])).astype(np.float32)
              for name, shape in net.inputs.items()}
    arrays |= {name: rng.standard_normal(tuple(int(d) for d in shape)).astype(np.float32)
               for name, shape in net.parameters.items()}
    return g, net, arrays


def test_hostile_node_names_compile_run_and_match_numpy(hostile):
    _g, net, arrays = hostile
    assert list(net.inputs) == ["N", "n", "k_weight"]
    assert list(net.parameters) == ["k.weight", "k.bias", "m0.weight", "m0.bias", "f.weight",
                                    "f.bias"]
    out = net(**arrays)
    assert list(out) == ["a.b", "a b", "a_b", "s", "f"]
    want = hostile_reference(arrays)
    for name in want:
        np.testing.assert_allclose(out[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # the three names that differ only by punctuation are three different tensors
    assert not np.allclose(out["a.b"], out["a b"]) and not np.allclose(out["a b"], out["a_b"])


def test_hostile_node_names_stay_out_of_the_code(hostile):
    g, net, _ = hostile
    names = [n.name for n in g.nodes()]
    assert set(HOSTILE + LOOP_NAMES + PUNCTUATION) <= set(names)
    check_source(net.source, names)


def test_hostile_node_names_compile_with_every_warning(hostile, tmp_path):
    compile_strictly(hostile[1].source, tmp_path)


def test_hostile_node_names_in_explain(hostile):
    text = hostile[1].explain()
    for name in HOSTILE + LOOP_NAMES + PUNCTUATION:
        if name not in ("N", "n"):  # inputs have no section of their own
            shown = name if name.isprintable() else repr(name)  # one line per NODE
            assert f"NODE      {shown} (" in text, name


# -- a hostile graph name ------------------------------------------------------------------------

GRAPH_NAME = 'net "*/ int x; /*\n\\ ∑ #include <stdio.h> %d ??/ return'


@pytest.fixture(scope="module")
def hostile_graph_name():
    g = convc.Graph(GRAPH_NAME)
    x = g.input("x", (None, 4))
    g.output(g.tanh(g.dense(x, 2, name="int"), name="*/ y /*"))
    return g


def test_hostile_graph_name_compiles_and_runs(hostile_graph_name):
    net = convc.compile(hostile_graph_name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    w = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    got = net(x=x, **{"int.weight": w, "int.bias": b})
    np.testing.assert_allclose(got, np.tanh(x @ w.T + b), rtol=1e-5, atol=1e-6)


def test_hostile_graph_name_stays_out_of_the_code(hostile_graph_name, tmp_path):
    # lowering alone, so that this check runs even where the C would not compile
    source = convc.lower(hostile_graph_name).source
    check_source(source, [GRAPH_NAME, "*/ y /*"])
    compile_strictly(source, tmp_path)


# -- names an op uses for its own scratch tensors ------------------------------------------------

def test_a_node_named_like_a_softmax_scratch_tensor():
    """Softmax ``s`` keeps its row maxima and sums as ``s.max`` and ``s.sum``; user nodes of
    those names are other tensors."""
    g = convc.Graph("scratch")
    x = g.input("x", (None, 3, 2))
    a = g.relu(x, name="s.max")
    b = g.tanh(x, name="s.sum")
    g.output(a, b, g.softmax(g.add(a, b, name="t"), name="s"))
    net = convc.compile(g)
    xs = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    out = net(x=xs)
    np.testing.assert_allclose(out["s.max"], np.maximum(xs, 0), rtol=1e-6)
    np.testing.assert_allclose(out["s.sum"], np.tanh(xs), rtol=1e-6)
    np.testing.assert_allclose(out["s"], softmax(np.maximum(xs, 0) + np.tanh(xs)), rtol=1e-5)


def test_a_node_named_like_a_loss_scratch_tensor():
    g = convc.Graph("scratch_loss")
    x = g.input("x", (None, 3))
    labels = g.input("loss.picked", (None,), dtype="int64")
    g.output(g.softmax_cross_entropy(g.relu(x, name="loss.max"), labels, name="loss"))
    net = convc.compile(g)
    xs = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    ys = np.array([0, 2, 1, 2])
    r = np.maximum(xs.astype(np.float64), 0)
    logp = np.log(softmax(r))
    np.testing.assert_allclose(net(x=xs, **{"loss.picked": ys}),
                               -logp[np.arange(4), ys].mean(), rtol=1e-5)


def test_nodes_named_like_the_entry_points_locals():
    """The entry point declares ``scratch``, ``next``, ``status`` and takes ``workspace``;
    intermediate tensors of those names get other identifiers."""
    g = convc.Graph("locals")
    x = g.input("x", (None, 2, 6, 6))
    h = g.relu(g.conv(x, channels=4, kernel=3, padding=1, name="scratch"), name="next")
    h = g.max_pool(g.tanh(h, name="status"), 2, name="workspace")
    g.output(g.mean_squared_error(h, g.input("t", (None, 4, 3, 3)), name="done"))
    net = convc.compile(g, grad=True)
    params = net.init_params(seed=0)
    rng = np.random.default_rng(1)
    loss, grads = net(x=rng.standard_normal((2, 2, 6, 6)).astype(np.float32),
                      t=np.zeros((2, 4, 3, 3), np.float32), **params)
    assert np.isfinite(loss) and loss > 0
    assert set(grads) == set(params)
