"""Generated C: golden files for a few small graphs, strict compilation, and the build cache.

The golden files under ``tests/golden/`` are the generated C of each graph, to be read by
people: a change to the emitted code shows up as a diff there. Rewrite them with
``pytest tests/test_golden.py --update-golden`` and review the diff. Each function's comment
names the file and line that built the node, so the graph builders below keep their lines.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess

import numpy as np
import pytest

import convc
from convc.build import runtime_dir


def conv_stride2():
    g = convc.Graph("conv_stride2")
    x = g.input("x", (None, 2, 7, 6))
    g.output(g.conv(x, channels=3, kernel=3, padding=1, stride=2, bias=True))
    return g


def pools():
    g = convc.Graph("pools")
    x = g.input("x", (None, 2, 7, 8))
    h = g.max_pool(x, 3, stride=2, padding=1, ceil_mode=True)
    g.output(g.avg_pool(h, 2, padding=1, count_include_pad=False))
    return g


def lenet():
    g = convc.Graph("lenet")
    x = g.input("x", (None, 1, 8, 8))
    labels = g.input("labels", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=2, kernel=3))
    h = g.max_pool(h, 2)
    logits = g.dense(g.flatten(h), 3)
    g.output(g.softmax_cross_entropy(logits, labels))
    return g


GRAPHS = {"conv_stride2": conv_stride2, "pools": pools, "lenet": lenet}


@pytest.mark.parametrize("name", GRAPHS)
def test_generated_c_matches_golden(name, golden):
    golden(f"{name}.c", convc.lower(GRAPHS[name](), num_threads=2).source)


@pytest.mark.parametrize("name", GRAPHS)
def test_generated_c_is_deterministic(name):
    assert convc.lower(GRAPHS[name]()).source == convc.lower(GRAPHS[name]()).source


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", GRAPHS)
def test_generated_c_compiles_strictly_on_its_own(name, dtype, tmp_path):
    cc = shutil.which("gcc")
    assert cc is not None, "gcc is needed to check the generated C with -pedantic"
    lowered = convc.lower(GRAPHS[name](), dtype, num_threads=2)
    (tmp_path / "kernel.c").write_text(lowered.source)
    command = [cc, "-std=c99", "-pedantic", "-fopenmp", "-Wall", "-Wextra", "-Werror",
               f"-I{runtime_dir()}", "-c", "kernel.c", "-o", "kernel.o"]
    proc = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(command)}\n{proc.stderr}"
    assert (tmp_path / "kernel.o").stat().st_size > 0
    # Only the entry point is visible outside the translation unit.
    symbols = subprocess.run(["nm", "-g", "--defined-only", "kernel.o"], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout.split()
    assert lowered.entry in symbols
    assert not set(lowered.functions.values()) & set(symbols)


def test_second_compile_is_a_cache_hit(caplog):
    caplog.set_level(logging.DEBUG, logger="convc")
    first = convc.compile(lenet())
    # The first compile in this process says how it got the library (built or from disk).
    assert [r for r in caplog.records if r.getMessage().startswith(("compiled", "loaded"))]
    caplog.clear()
    second = convc.compile(lenet())  # a new, equal graph: same C, same key
    assert second.library_path == first.library_path
    assert second.source == first.source
    assert not [r for r in caplog.records if r.getMessage().startswith("compiled")]
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    params = first.init_params(seed=1)
    assert first(x=x, labels=labels, **params) == second(x=x, labels=labels, **params)


def test_cache_hit_from_disk_logs_a_load_not_a_compile(caplog):
    from convc import build

    caplog.set_level(logging.DEBUG, logger="convc")
    first = convc.compile(pools())
    mtime = os.stat(first.library_path).st_mtime_ns
    build._forget_loaded()  # as a new process would: only the disk cache is left
    caplog.clear()
    second = convc.compile(pools())
    messages = [r.getMessage() for r in caplog.records]
    assert second.library_path == first.library_path
    assert os.stat(second.library_path).st_mtime_ns == mtime  # not rebuilt
    assert any(m.startswith("loaded") and "from cache" in m for m in messages), messages
    assert not any(m.startswith("compiled") for m in messages), messages
