"""The per-node report of `Module.explain`: fixed sections for every computed node.

NODE (name, op, file:line), SHAPES, EQUATIONS (the comprehensions as mathematics), FLOPS
(per example where the work grows with the batch, else per call; nominal: every point of
every reduction), ALGORITHM (direct loops, or the
matrix products a contraction was packed into, after the rank-1 kernel it was separated
from for a node run as 1-D passes), TIME (estimated, and measured when the
module was tuned), LOOPS (the loop nest, with the bounds that clipping solved) and C (the
function and its lines in the source).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import sympy

from .ir.comprehension import Comprehension, Reduction
from .ir.count import points
from .blocked import Blocked
from .contract import Gemm
from .spectral import Spectra, Transform
from .loops import format_nest
from .ops import BATCH, estimate, fmt
from .pipeline import Lowered, Step
from .winograd import SCHEMES as WINOGRAD

# The rough rates behind TIME's estimate, per thread, float32 (float64: half the flops):
# the runtime's matrix product and FFTs, direct loops, and memory for packings and copies.
GEMM_FLOPS, FFT_FLOPS, DIRECT_FLOPS, BANDWIDTH = 100e9, 20e9, 10e9, 15e9
ESTIMATE_BATCH = 32


def flops(comp: Comprehension, shapes: dict[str, tuple]) -> sympy.Expr:
    """Floating-point operations of one comprehension: the points it computes (taps that
    read zero padding excluded) times the operations of its body (index arithmetic not
    counted)."""
    values = {a: sympy.Dummy() for a in comp.body.atoms(sympy.Indexed)}
    per_point = sympy.count_ops(comp.body.xreplace(values), visual=False)
    if comp.reduction is not Reduction.NONE:
        per_point += 1
    return points(comp, shapes) * per_point


def saved_tensors(lowered: Lowered) -> dict[str, sympy.Expr]:
    """Forward tensors that the backward pass reads, with their bytes (in terms of the batch
    size ``N`` where they grow with it)."""
    forward = {t for s in lowered.steps if s.role == "fwd" for t in lowered.kernels[s].writes}
    read = set()
    for step in lowered.steps:
        if step.role not in ("fwd", "start"):
            read |= set(lowered.kernels[step].reads)
    kept = {}
    for name in sorted(read & forward):
        b = lowered.buffers[name]
        width = {"double": 8, "int64_t": 8, "uint8_t": 1}.get(b.ctype, 4)
        kept[name] = sympy.sympify(b.size * width)
    return kept


def explain(lowered: Lowered) -> str:
    threads = f"{lowered.threads} thread{'s' if lowered.threads > 1 else ''}"
    sections = [f"graph {lowered.graph.name!r}, {lowered.dtype}, {threads}, "
                f"entry point {lowered.entry}"]
    if lowered.wrt:
        kept = saved_tensors(lowered)
        listed = ", ".join(f"{n} ({b.subs(BATCH, 1)} B)" for n, b in kept.items())
        total = _per_example(sum(kept.values(), sympy.Integer(0)), "bytes")
        sections[0] += (f"\nSAVED     the backward pass reads {total} of the forward pass"
                        + (f": {listed}" if listed else ""))
    lines = _function_lines(lowered)
    for node in lowered.nodes:
        steps = [s for s in lowered.steps if s.node == node.name]
        if not steps:
            continue
        fwd, derived = steps[0], steps[1:]
        ins = ", ".join(f"{i} {fmt(lowered.graph.node(i).shape)}" for i in node.inputs)
        separated = lowered.separated.get(node.name)
        kind = separated.kind if separated else node.op.kind
        out = [
            f"NODE      {_shown(node.name)} ({kind}) at {node.source}",
            f"SHAPES    {ins} -> {fmt(node.shape)}",
            "EQUATIONS " + _indent(_equations(fwd.comps)),
        ]
        for step in derived:
            out.append(f"DERIVED   {step.role}: " + _indent(_equations(step.comps), 2))
        for step in steps:
            shapes = {n: b.shape for n, b in lowered.buffers.items()}
            total = sum((flops(c, shapes) for c in step.comps), sympy.Integer(0))
            out.append(f"FLOPS     {step.role}: {_per_example(total)}")
        for step in steps:
            how = _algorithm(lowered.parts[step], lowered.algorithms[step])
            if separated:
                how = f"{separated.describe()}; {how}"
            out.append(f"ALGORITHM {step.role}: {how}")
        for step in steps:
            out.append(f"TIME      {step.role}: {_time(lowered, step)}")
        for step in steps:
            out.append(f"LOOPS     {step.role}:\n" + _indent(
                format_nest(lowered.kernels[step].nests), 0, first=True))
        for step in steps:
            out.append(f"C         {lowered.functions[step]}, source lines {lines[step]}")
        sections.append("\n".join(out))
    return "\n\n".join(sections) + "\n"


def estimated_seconds(lowered: Lowered, step: Step, batch: int = ESTIMATE_BATCH) -> float:
    """A roofline guess at a step's time: products at the matrix product's rate, loops at
    the slower of their flops at the direct rate and their output bytes (written, and read
    about once) at memory speed; the threads share it all."""
    shapes = {n: b.shape for n, b in lowered.buffers.items()}
    scale = 1.0 if lowered.dtype == "float32" else 0.5
    width = 4 if lowered.dtype == "float32" else 8
    total = 0.0
    for part in lowered.parts[step]:
        if isinstance(part, Gemm):
            batch_extent = part.batch.extent if part.batch else 1
            outer = sympy.Mul(*(d.extent for d in part.outer))
            work = 2 * part.m * part.n * part.k * batch_extent * outer
            total += _at(work, batch) / (GEMM_FLOPS * scale)
        elif isinstance(part, Blocked):  # every lane paid for, as the matrix product's
            total += _at(2 * part.lane_macs, batch) / (GEMM_FLOPS * scale)
        elif isinstance(part, Spectra):
            work = 8 * part.m * part.n * part.k * part.batch * part.count
            total += _at(work, batch) / (DIRECT_FLOPS * scale)
        elif isinstance(part, Transform):
            points = math.prod(part.dims)
            work = 2.5 * points * math.log2(max(points, 2)) * sympy.sympify(part.count)
            total += _at(work, batch) / (FFT_FLOPS * scale)
        else:
            work = _at(flops(part, shapes), batch) / (DIRECT_FLOPS * scale)
            size = sympy.Mul(*shapes[part.tensor]) if shapes[part.tensor] else 1
            moved = 2 * width * _at(size, batch) / BANDWIDTH
            total += max(work, moved)
    return total / lowered.threads


def _at(expr, batch: int) -> float:
    """A count at batch size ``batch``, other variable sizes at `convc.ops.ASSUMED_SIZE`."""
    return estimate(sympy.sympify(expr).subs(BATCH, batch))


def _time(lowered: Lowered, step: Step) -> str:
    """The estimate, and what tuning measured of each algorithm, at one batch size."""
    tuned = lowered.tuned.get((step.node, step.role))
    batch = next((t["batch"] for t in lowered.tuned.values()), ESTIMATE_BATCH)
    shapes = {n: b.shape for n, b in lowered.buffers.items()}
    work = _at(sum((flops(c, shapes) for c in step.comps), sympy.Integer(0)), batch)

    def shown(seconds: float) -> str:
        rate = f", {work / seconds / 1e9:.1f} GFLOP/s" if work and seconds > 0 else ""
        return f"{seconds * 1e3:.3g} ms{rate}"

    text = f"estimated {shown(estimated_seconds(lowered, step, batch))}"
    text += f" at N={batch}" if BATCH in lowered.sizes else ""
    if tuned:
        measured = ", ".join(f"{a} {shown(t)}" for a, t in tuned["seconds"].items())
        text += f"; measured {measured} (tuned: {tuned['algorithm']})"
    return text


def _per_example(count: sympy.Expr, unit: str = "") -> str:
    """A count per example where it grows with the batch, else per call (a graph of fixed
    batch size, or work the batch does not change)."""
    unit = f" {unit}" if unit else ""
    if count.has(BATCH):
        return f"{count.subs(BATCH, 1)}{unit} per example"
    return f"{count}{unit} per call"


def _algorithm(parts, used) -> str:
    """``direct`` loops, or the matrix products or FFTs the contractions became, after the
    name of the algorithm that made them (under Winograd, its products, which differ only
    in the tensors they read, counted once)."""
    products = [p.describe() for p in parts
                if isinstance(p, Gemm | Transform | Spectra | Blocked)]
    if "winograd" in used:
        products = [f"{count} x {text}" if count > 1 else text
                    for text, count in Counter(products).items()]
        products.insert(0, next(s for s in WINOGRAD.values() for p in parts
                                if isinstance(p, Comprehension) and p.equation.startswith(s)))
    for name in ("fft", "col2im"):
        if name in used:
            products.insert(0, name)
    return "; ".join(products) if products else "direct loops"


def _shown(name: str) -> str:
    """A name as given, or quoted with escapes when it has unprintable characters."""
    return name if name.isprintable() else repr(name)


def _equations(comps) -> str:
    return "\n".join(str(c) + (f"   ({c.equation})" if c.equation else "") for c in comps)


def _indent(text: str, extra: int = 0, first: bool = False) -> str:
    pad = " " * (10 + extra)
    body = text.replace("\n", "\n" + pad)
    return pad + body if first else body


def _function_lines(lowered: Lowered) -> dict:
    """``start-end`` line numbers of each step's functions in the source, 1-based: its
    comment header, the bodies of its parallel loops and its own."""
    text = lowered.source.splitlines()
    found = {}
    for step, fname in lowered.functions.items():
        start = next(i for i, line in enumerate(text)
                     if re.match(rf"static \w+ {fname}(_\w+)?\(", line))
        while start > 0 and text[start - 1].strip() and not text[start - 1].startswith("}"):
            start -= 1  # include the comment header
        own = next(i for i, line in enumerate(text) if f" {fname}(" in line)
        end = next(i for i in range(own, len(text)) if text[i] == "}")
        found[step] = f"{start + 1}-{end + 1}"
    return found
