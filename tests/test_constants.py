"""Constant tensors: a fixed array baked into the generated C, never differentiated.

* a constant used as a convolution's kernel gives the numpy result, in float32 and float64;
* gradients with respect to the other tensors are those of the same network with the
  kernel passed as a parameter; the constant takes no argument and has no gradient;
* the values are in the C text, so a different constant is a different module (cache key);
* the generated C builds with the runtime into a program that runs with no Python;
* a wrong dtype, shape or value is refused with a GraphError naming the node.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import reference as ref

import convc
from convc.build import runtime_dir

KERNEL = np.array([[[[1.0, -2.0], [0.5, 0.1]]], [[[0.0, 3.0], [-1.0, 0.25]]]])  # (2, 1, 2, 2)


def edge_graph(kernel, as_constant=True, name="constnet"):
    g = convc.Graph(name)
    x = g.input("x", (None, 1, 5, 6))
    if as_constant:
        k = g.constant("k", kernel)
        y = g.conv(x, kernel.shape[0], kernel.shape[2:], weight=k, bias=False, padding=1)
    else:
        y = g.conv(x, kernel.shape[0], kernel.shape[2:], bias=False, padding=1)
    g.output(g.tanh(y))
    return g


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_constant_kernel_matches_numpy(dtype, tol):
    net = convc.compile(edge_graph(KERNEL), dtype)
    x = np.random.default_rng(0).standard_normal((3, 1, 5, 6))
    out = net(x=x.astype(dtype))
    expected = np.tanh(ref.conv(x, KERNEL, padding=[(1, 1), (1, 1)]))
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    assert list(net.inputs) == ["x"]
    assert net.parameters == {}


def test_float32_constant_is_exact():
    """0.1 is stored as the float32 nearest 0.1, the value numpy's float32 holds."""
    g = convc.Graph("exact")
    x = g.input("x", (None, 1, 3))
    g.output(g.conv(x, 1, 1, weight=g.constant("k", np.array([[[0.1]]])), bias=False))
    out = convc.compile(g, "float32")(x=np.ones((1, 1, 3), np.float32))
    assert out.dtype == np.float32 and (out == np.float32(0.1)).all()


def test_gradients_with_a_constant_equal_those_with_the_parameter():
    rng = np.random.default_rng(1)
    x, seed = rng.standard_normal((2, 1, 5, 6)), rng.standard_normal((2, 2, 6, 7))
    with_const = convc.compile(edge_graph(KERNEL), "float64", grad=["x"])
    with_param = convc.compile(edge_graph(KERNEL, False, "paramnet"), "float64",
                               grad=["x", "conv0.weight"])
    out_c, grads_c = with_const(x=x, **{"grad:tanh0": seed})
    out_p, grads_p = with_param(x=x, **{"conv0.weight": KERNEL, "grad:tanh0": seed})
    np.testing.assert_allclose(out_c, out_p, rtol=1e-13, atol=1e-13)
    assert set(grads_c) == {"x"}
    np.testing.assert_allclose(grads_c["x"], grads_p["x"], rtol=1e-13, atol=1e-13)
    assert np.abs(grads_c["x"]).max() > 0
    # grad=True differentiates the parameters, of which there are none here
    g = edge_graph(KERNEL)
    assert g.parameters() == {} and g.constants() == {"k": (2, 1, 2, 2)}


def test_a_constant_is_not_an_argument_nor_differentiated():
    g = edge_graph(KERNEL)
    with pytest.raises(convc.GraphError, match="'k' is a constant .* never differentiated"):
        convc.lower(g, grad=["k"])
    net = convc.compile(g, "float64")
    with pytest.raises(convc.ArgumentError, match="unexpected: k"):
        net(x=np.zeros((1, 1, 5, 6)), k=KERNEL)


def test_the_values_are_in_the_c_and_the_cache_key():
    a = convc.compile(edge_graph(KERNEL), "float64")
    b = convc.compile(edge_graph(KERNEL * 2), "float64")
    again = convc.compile(edge_graph(KERNEL.copy()), "float64")
    assert a.library_path != b.library_path
    assert a.library_path == again.library_path
    assert "static const double convc_const_k" in a.source
    x = np.random.default_rng(2).standard_normal((1, 1, 5, 6))
    assert not np.allclose(a(x=x), b(x=x))


def test_generated_c_runs_without_python(tmp_path):
    """The source, the runtime and a plain main(): the constant travels inside the C."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "a C compiler is needed, as for every module"
    g = edge_graph(KERNEL, name="standalone")
    net = convc.compile(g, "float64")
    x = np.arange(30, dtype=np.float64).reshape(1, 1, 5, 6) / 30
    main = ("#include <stdio.h>\n#include <stdint.h>\n"
            f"int {net.lowered.entry}(int64_t N, const double *x, double *out, void *ws);\n"
            "int main(void) {\n"
            f"    double x[30] = {{{', '.join(repr(float(v)) for v in x.ravel())}}};\n"
            "    double out[84];\n"
            f"    if ({net.lowered.entry}(1, x, out, 0)) return 1;\n"
            "    for (int i = 0; i < 84; ++i) printf(\"%.17g\\n\", out[i]);\n"
            "    return 0;\n}\n")
    (tmp_path / "net.c").write_text(net.source)
    (tmp_path / "main.c").write_text(main)
    runtime = runtime_dir()
    exe = tmp_path / "net"
    built = subprocess.run([cc, "-std=c99", "-O1", "-Wall", "-Wshadow", "-Werror", f"-I{runtime}",
                    str(tmp_path / "net.c"), str(tmp_path / "main.c"),
                    *map(str, sorted(runtime.glob("*.c"))), "-lm", "-o", str(exe)],
                   check=False, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    printed = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    np.testing.assert_allclose(np.array(printed.split(), float), net(x=x).ravel(),
                               rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("value, match", [
    (np.array([[[1, 2]]]), "must be a float array .* found dtype int64"),
    (np.array([[[True, False]]]), "must be a float array .* found dtype bool"),
    (np.float64(1.0), "at least one axis and one element, found shape \\(\\)"),
    (np.zeros((1, 0)), "at least one axis and one element"),
    (np.array([[[np.nan, 1.0]]]), "finite values"),
])
def test_a_bad_constant_is_refused(value, match):
    g = convc.Graph("bad")
    with pytest.raises(convc.GraphError, match=f"node 'c' .*{match}"):
        g.constant("c", value)


def test_a_constant_of_the_wrong_shape_is_refused_by_the_layer():
    g = convc.Graph("bad")
    x = g.input("x", (None, 1, 5, 6))
    k = g.constant("k", np.ones((1, 1, 3)))
    with pytest.raises(convc.GraphError, match="node 'conv0' .*shared weight 'k' has shape "
                                               "\\(1, 1, 3\\), expected \\(1, 1, 3, 3\\)"):
        g.conv(x, 1, 3, weight=k, bias=False)
