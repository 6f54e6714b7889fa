"""Tuning: confirm the cost model's choice of algorithm by timing every step on this machine.

`tune` compiles the graph once per candidate algorithm (every contraction packed into
matrix products, every one as direct loops, every correlation through spectra, every 3-tap
one by Winograd, every correlation as columns and shifted sums, every one blocked in
registers, and, where the graph has a constant kernel of rank 1, every such kernel as 1-D
passes), with step timers
(`Module.profile`), runs each on random arrays at one batch size, and keeps for every
step ``(node, role)`` the fastest (steps that can never be products have no choice to
make). What it measured is cached in
``<cache>/tune-<machine>.json``, keyed by the step's signature: its node's op and
attributes, its input shapes (and the values of its constant inputs), its role, the
dtype, the threads and the batch. A graph whose steps are all known there is not timed
again.

A node run as 1-D passes (`convc.rank`) has backward steps of its own (the gradient of the
scratch tensor between the passes); their time is added to the node's input gradient, so
that it is compared with the dense kernel's input gradient whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from .build import cache_dir, machine_signature
from .ops.source import Constant

CANDIDATES = ("gemm", "direct", "fft", "winograd", "col2im", "blocked", "separable")
DEFAULT_BATCH = 32


def tune(graph, dtype: str, grad, num_threads: int | None, batch: int = DEFAULT_BATCH,
         repeat: int = 5, sizes: dict[str, int] | None = None) -> dict[tuple[str, str], dict]:
    """Per step ``(node, role)``: ``{"algorithm": fastest, "seconds": {candidate: median},
    "batch": batch}``, measured (or read from the cache) for every step with a choice."""
    from . import compile as compile_graph
    from .memo import lowered
    from .rank import separate

    probe = lowered(graph, dtype, grad=grad, algorithm="gemm", num_threads=num_threads,
                    sizes=sizes)
    keys = {(s.node, s.role): _signature(probe, s, batch) for s in probe.steps
            if "gemm" in probe.algorithms[s]}  # steps with a choice
    path = cache_dir() / f"tune-{machine_signature()}.json"
    known = _load(path)
    if not all(k in known for k in keys.values()):
        measured: dict[tuple[str, str], dict[str, float]] = {step: {} for step in keys}
        for candidate in CANDIDATES:
            if candidate == "separable" and not separate(probe.graph, dtype, candidate)[1]:
                continue  # no constant kernel of rank 1: the same module as "auto"
            module = compile_graph(graph, dtype, grad=grad, algorithm=candidate,
                                   num_threads=num_threads, profile=True, sizes=sizes)
            times = _step_times(module, keys, repeat, batch)
            for step in keys:
                measured[step][candidate] = times.get(step, math.inf)
        known.update({keys[step]: seconds for step, seconds in measured.items()})
        _store(path, known)
    return {step: {"algorithm": _fastest(known[key]), "seconds": dict(known[key]),
                   "batch": batch}
            for step, key in keys.items()}


def _fastest(seconds: dict[str, float]) -> str:
    """The algorithm of least time; of equal times (the same code), the first candidate."""
    return min(sorted(seconds, key=CANDIDATES.index), key=seconds.get)


def _step_times(module, keys, repeat: int, batch: int) -> dict:
    """The module's time per step; a separated node's extra backward steps added to its
    input gradient's."""
    times = module.profile(repeat, **module.example_arguments(batch))
    for node in module.lowered.separated:
        steps = [s for s in times if s[0] == node and s[1] != "fwd" and s not in keys]
        target = [s for s in keys if s[0] == node and s[1].startswith("dinput")]
        if target and target[0] in times:
            times[target[0]] += sum(times[s] for s in steps)
    return times


def _signature(lowered, step, batch: int) -> str:
    node = lowered.graph.node(step.node)
    inputs = [lowered.graph.node(i) for i in node.inputs]
    shapes = [str(i.shape) for i in inputs]  # sizes fixed included
    values = [repr(i.op.values) for i in inputs if isinstance(i.op, Constant)]
    wrt = sorted(set(node.inputs) & set(lowered.wrt))
    text = "|".join([repr(node.op), *shapes, step.role, str(wrt), lowered.dtype,
                     str(lowered.threads), str(batch), *values])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _store(path: Path, known: dict) -> None:
    """Write by renaming a finished file into place: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part")
    part.write_text(json.dumps(known, indent=1, sort_keys=True))
    part.replace(path)
