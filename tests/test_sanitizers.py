"""Sanitizers: the generated C of every op runs under AddressSanitizer and UBSan with no report.

A library built with ``-fsanitize=address`` can only be loaded into a process that has the
ASan runtime loaded first, so each check runs in a child Python with ``LD_PRELOAD`` set to the
compiler's ``libasan.so`` (the UBSan runtime comes in as a dependency of the library). The
child, ``tests/sanitizer_run.py``, builds graphs covering every op with odd sizes, padding,
strides, dilations, groups and ceil-mode partial windows, in float32 and float64, calls them
with batch sizes 3, 1 and 0 and compares the results with numpy.

Two negative controls show that the harness would notice: a kernel that reads one element past
its buffer must die with a heap-buffer-overflow report, and one with a signed overflow must die
with a UBSan "runtime error".
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "sanitizer_run.py"


def _runner_graphs() -> list[str]:
    spec = importlib.util.spec_from_file_location("sanitizer_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.GRAPHS)


GRAPHS = _runner_graphs()


def libasan() -> str:
    """The ASan runtime of the compiler convc builds with; fails the test if there is none."""
    cc = shlex.split(os.environ.get("CC", "").strip() or "cc")[0]
    try:
        found = subprocess.run([cc, "-print-file-name=libasan.so"], check=False,
                               capture_output=True, text=True, timeout=60)
    except OSError as exc:
        pytest.fail(f"cannot run the C compiler {cc!r} to find libasan.so: {exc}")
    path = found.stdout.strip()
    if found.returncode != 0 or not os.path.isabs(path) or not os.path.isfile(path):
        pytest.fail(
            f"the C compiler {cc!r} has no AddressSanitizer runtime: `{cc} "
            f"-print-file-name=libasan.so` printed {path!r}. The sanitizer tests need it; "
            "install the compiler's AddressSanitizer runtime (libasan, which comes with gcc)")
    return path


def sanitizer_env() -> dict[str, str]:
    """The environment of a child that may load sanitized libraries (CONVC_CACHE_DIR stays)."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "LD_PRELOAD": libasan(),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONPATH": pythonpath,
    }


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, errors="replace", timeout=600)


def assert_no_sanitizer_report(proc: subprocess.CompletedProcess) -> None:
    report = f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "ERROR: AddressSanitizer" not in proc.stderr, report
    assert "runtime error:" not in proc.stderr, report
    assert proc.returncode == 0, report


@pytest.mark.sanitizer
@pytest.mark.parametrize("graph", GRAPHS)
def test_generated_code_runs_clean_under_asan_and_ubsan(graph):
    proc = run_python([str(RUNNER), graph], sanitizer_env())
    assert_no_sanitizer_report(proc)
    # Every dtype was built, run at every batch size and matched numpy.
    lines = proc.stdout.splitlines()
    assert lines == [f"{graph:12s} float32: ok", f"{graph:12s} float64: ok"], proc.stdout


@pytest.mark.sanitizer
def test_runner_covers_every_op():
    """The graphs of the runner use every layer kind a Graph offers, with the options."""
    spec = importlib.util.spec_from_file_location("sanitizer_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds, convs, pools = set(), set(), set()
    for build in module.GRAPHS.values():
        g, _ = build()
        for node in g.nodes():
            op = node.op
            kinds.add(op.kind)
            if op.kind == "conv":
                convs.add((len(op.kernel), op.groups > 1, max(op.stride) > 1,
                           max(op.dilation) > 1, any(lo != hi for lo, hi in op.padding)))
            if op.kind == "pool":
                pools.add((op.reduce, len(op.window), op.ceil_mode, op.count_include_pad))
    assert {"conv", "pool", "global_pool", "relu", "sigmoid", "tanh", "add", "flatten",
            "dense", "softmax", "softmax_cross_entropy", "channel_pool",
            "adaptive_pool"} <= kinds
    assert {rank for rank, *_ in convs} == {1, 2, 3}
    assert any(all(flags) for _, *flags in convs)  # grouped, strided, dilated, asymmetric
    assert {rank for _, rank, _, _ in pools} == {1, 2, 3}
    for reduce in ("max", "avg", "lp"):
        assert any(r == reduce and ceil for r, _, ceil, _ in pools), reduce
    assert {include for r, _, ceil, include in pools if r == "avg" and ceil} == {True, False}


OUT_OF_BOUNDS = r"""
import numpy as np
from convc.build import build_library

source = '''#include "convc_runtime.h"
/* Sums n + 1 elements of a buffer of n: reads one past the end. */
double convc_test_sum_past_end(int64_t n, const double *a) {
    double s = 0;
    for (int64_t i = 0; i <= n; i++) s += a[i];
    return s;
}
'''
library = build_library(source, "double convc_test_sum_past_end(int64_t n, const double *a);",
                        sanitize=True)
ffi, lib = library.module.ffi, library.module.lib
a = np.ones(5)
print("sum", lib.convc_test_sum_past_end(5, ffi.from_buffer("double[]", a)), flush=True)
"""

SIGNED_OVERFLOW = r"""
from convc.build import build_library

source = '''#include "convc_runtime.h"
int64_t convc_test_add_max(int64_t a) { return a + INT64_MAX; }
'''
library = build_library(source, "int64_t convc_test_add_max(int64_t a);", sanitize=True)
print("in range", library.module.lib.convc_test_add_max(-1), flush=True)
print("overflow", library.module.lib.convc_test_add_max(1), flush=True)
"""


@pytest.mark.sanitizer
def test_harness_catches_a_read_past_the_end():
    proc = run_python(["-c", OUT_OF_BOUNDS], sanitizer_env())
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr
    assert "convc_test_sum_past_end" in proc.stderr  # the report points at the kernel
    assert "sum" not in proc.stdout  # halted at the bad read, before returning


@pytest.mark.sanitizer
def test_harness_catches_undefined_behaviour():
    proc = run_python(["-c", SIGNED_OVERFLOW], sanitizer_env())
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "runtime error:" in proc.stderr and "overflow" in proc.stderr, proc.stderr
    assert f"in range {2**63 - 2}" in proc.stdout  # the library loaded and ran
    assert "overflow" not in proc.stdout
