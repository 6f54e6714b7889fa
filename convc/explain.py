"""The per-node report of `Module.explain`: fixed sections for every computed node.

NODE (name, op, file:line), SHAPES, EQUATIONS (the comprehensions as mathematics), FLOPS
(per example, nominal: every point of every reduction), LOOPS (the loop nest, with the
bounds that clipping solved) and C (the function and its lines in the source).
"""

from __future__ import annotations

import sympy

from .ir.comprehension import Comprehension, Reduction
from .loops import format_nest
from .ops import BATCH, fmt
from .pipeline import Lowered


def flops(comp: Comprehension) -> sympy.Expr:
    """Floating-point operations of one comprehension: its points times the body's ops."""
    points = sympy.Mul(*(e for _, e in comp.variables))
    per_point = sympy.count_ops(comp.body, visual=False)
    if comp.reduction is not Reduction.NONE:
        per_point += 1
    return points * per_point


def explain(lowered: Lowered) -> str:
    sections = [f"graph {lowered.graph.name!r}, {lowered.dtype}, "
                f"entry point {lowered.entry}"]
    lines = _function_lines(lowered)
    for node in lowered.nodes:
        comps = lowered.comprehensions.get(node.name)
        if comps is None:
            continue
        ins = ", ".join(f"{i} {fmt(lowered.graph.node(i).shape)}" for i in node.inputs)
        total = sum((flops(c) for c in comps), sympy.Integer(0))
        out = [
            f"NODE      {node.name} ({node.op.kind}) at {node.source}",
            f"SHAPES    {ins} -> {fmt(node.shape)}",
            "EQUATIONS " + "\n          ".join(
                str(c) + (f"   ({c.equation})" if c.equation else "") for c in comps),
            f"FLOPS     {total.subs(BATCH, 1)} per example",
            "LOOPS     " + format_nest(lowered.kernels[node.name].nests).replace(
                "\n", "\n          "),
            f"C         {lowered.functions[node.name]}, source lines {lines[node.name]}",
        ]
        sections.append("\n".join(out))
    return "\n\n".join(sections) + "\n"


def _function_lines(lowered: Lowered) -> dict[str, str]:
    """``start-end`` line numbers of each node's function in the source, 1-based."""
    text = lowered.source.splitlines()
    found = {}
    for node, fname in lowered.functions.items():
        start = next(i for i, line in enumerate(text) if f" {fname}(" in line)
        while start > 0 and text[start - 1].strip() and not text[start - 1].startswith("}"):
            start -= 1  # include the comment header
        end = next(i for i in range(start, len(text)) if text[i] == "}")
        found[node] = f"{start + 1}-{end + 1}"
    return found
