"""Lowered graphs kept on disk (`convc.memo`): a compile from the cache lowers nothing.

Checks that a second compile reads the lowering back and computes the same numbers, that
everything lowering reads changes the key, that a damaged entry is lowered again, that a
graph whose lowering fails is not kept, and that `clear_cache` removes the entries.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convc
from convc import build, memo
from convc.errors import GraphError


def graph(channels: int = 2, name: str = "memo") -> convc.Graph:
    g = convc.Graph(name)
    x = g.input("x", (None, 1, 6, 6))
    g.output(g.relu(g.conv(x, channels=channels, kernel=3, bias=False)))
    return g


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("lowered-*.pickle"))


def forbid_lowering(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("lowered again")

    monkeypatch.setattr(memo, "lower", refuse)


def test_a_second_compile_reads_the_lowering_and_computes_the_same(cache, monkeypatch):
    first = convc.compile(graph(), grad=True)
    assert len(entries(cache)) == 1
    build._forget_loaded()  # as a new process: only the disk cache is left
    forbid_lowering(monkeypatch)
    second = convc.compile(graph(), grad=True)
    assert second.source == first.source and second.lowered is not first.lowered
    assert list(second.lowered.timings) == ["cache lookup"]
    assert "derive" in first.lowered.timings
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    seed = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    args = {"x": x, "conv0.weight": w, "grad:relu0": seed}
    out1, grads1 = first(**args)
    out2, grads2 = second(**args)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(grads1["conv0.weight"], grads2["conv0.weight"])
    assert second.explain() == first.explain()


def test_everything_lowering_reads_changes_the_key(cache):
    base = memo._key(graph(), "float32", memo_options())
    changed = [
        memo._key(graph(channels=3), "float32", memo_options()),
        memo._key(graph(name="other"), "float32", memo_options()),
        memo._key(graph(), "float64", memo_options()),
        *(memo._key(graph(), "float32", memo_options(**{k: v})) for k, v in [
            ("grad", True), ("grad", ["x"]), ("algorithm", "direct"), ("num_threads", 7),
            ("profile", True), ("sizes", {"N": 2}),
            ("tuned", {("conv0", "fwd"): {"algorithm": "direct"}})]),
    ]
    assert len({base, *changed}) == 1 + len(changed)
    assert memo._key(graph(), "float32", memo_options()) == base


def test_a_node_made_on_another_line_is_another_key(cache):
    """Errors quote the file:line that made a node: a lowering from another line is not
    reused for it."""
    first = graph()
    second = graph()  # the same nodes, made by the same line of `graph`
    assert memo._key(first, "float32", memo_options()) == memo._key(
        second, "float32", memo_options())
    g = convc.Graph("memo")
    x = g.input("x", (None, 1, 6, 6))
    g.output(g.relu(g.conv(x, channels=2, kernel=3, bias=False)))
    assert memo._key(g, "float32", memo_options()) != memo._key(
        first, "float32", memo_options())


def test_the_sources_key_follows_every_python_file(tmp_path):
    package = Path(memo.__file__).parent
    copy = tmp_path / "convc"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    same = memo._fingerprint(copy)
    assert same == memo._fingerprint(package)
    with open(copy / "ops" / "conv.py", "a") as f:
        f.write("\n# changed\n")
    assert memo._fingerprint(copy) != same


def test_the_default_thread_count_is_resolved_before_keying(cache):
    threads = convc.pipeline.resolve_threads(None)
    assert memo._key(graph(), "float32", memo_options()) == memo._key(
        graph(), "float32", memo_options(num_threads=threads))


@pytest.mark.parametrize("damage", [b"", b"not a pickle", pickle.dumps({"a": "dict"})],
                         ids=["empty", "garbage", "another object"])
def test_a_damaged_entry_is_lowered_again(cache, caplog, damage):
    lowered = memo.lowered(graph())
    (entry,) = entries(cache)
    entry.write_bytes(damage)
    caplog.set_level(logging.WARNING, logger="convc")
    again = memo.lowered(graph())
    assert again.source == lowered.source
    assert f"cached lowering {entry.name}" in caplog.text and "lowering again" in caplog.text
    assert isinstance(pickle.loads(entry.read_bytes()), convc.Lowered)  # written over


def test_a_lowering_that_fails_is_not_kept(cache):
    with pytest.raises(GraphError, match="algorithm must be one of"):
        memo.lowered(graph(), algorithm="quantum")
    with pytest.raises(GraphError, match="num_threads must be a positive int"):
        memo.lowered(graph(), num_threads=0)
    with pytest.raises(GraphError, match="expected a convc.Graph"):
        memo.lowered("not a graph")
    assert entries(cache) == []


def test_clear_cache_removes_the_lowerings(cache):
    convc.compile(graph())
    assert entries(cache)
    convc.clear_cache()
    assert entries(cache) == [] and not any(cache.iterdir())


def memo_options(**changes) -> dict:
    options = dict(grad=False, algorithm="auto", num_threads=None, profile=False, tuned=None,
                   sizes=None)
    return options | changes


def test_a_new_process_reads_the_lowering_another_wrote(cache):
    """Two processes compile one graph: the second derives nothing (CONVC_DEBUG=1 prints
    each stage it runs)."""
    script = ("import convc\n"
              "g = convc.Graph('again')\n"
              "g.output(g.relu(g.conv(g.input('x', (None, 1, 6, 6)), channels=2, kernel=3)))\n"
              "convc.compile(g, grad=True)\n")
    env = dict(os.environ, CONVC_CACHE_DIR=str(cache), CONVC_DEBUG="1")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stderr for _ in range(2)]
    assert "cache lookup" in runs[0] and "derive" in runs[0]
    assert "cache lookup" in runs[1] and "derive" not in runs[1]
    assert len(entries(cache)) == 1
