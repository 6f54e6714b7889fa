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
    per_point = sympy.count_ops(comp.body, visual=False)
    if comp.reduction is not Reduction.NONE:
        per_point += 1
    return points(comp.variables) * per_point


def points(dims) -> sympy.Expr:
    """How many points a domain has. Bounds that depend on an outer variable (the taps a
    derived input gradient gathers) are summed over that variable's values."""
    dims = list(dims)
    for i, d in enumerate(dims):
        outer = [o for o in dims[:i] if o.var in (d.start.free_symbols | d.stop.free_symbols)]
        if outer:
            (o,) = outer  # one outer variable per dependent bound, as derivation makes them
            rest = [x for x in dims if x is not o and x is not d]
            count = sum(int(sympy.Max(0, d.extent.subs(o.var, v)))
                        for v in range(int(o.start), int(o.stop)))
            return count * points(rest)
    return sympy.Mul(*(d.extent for d in dims))


def explain(lowered: Lowered) -> str:
    sections = [f"graph {lowered.graph.name!r}, {lowered.dtype}, "
                f"entry point {lowered.entry}"]
    lines = _function_lines(lowered)
    for node in lowered.nodes:
        steps = [s for s in lowered.steps if s.node == node.name]
        if not steps:
            continue
        fwd, derived = steps[0], steps[1:]
        ins = ", ".join(f"{i} {fmt(lowered.graph.node(i).shape)}" for i in node.inputs)
        out = [
            f"NODE      {node.name} ({node.op.kind}) at {node.source}",
            f"SHAPES    {ins} -> {fmt(node.shape)}",
            "EQUATIONS " + _indent(_equations(fwd.comps)),
        ]
        for step in derived:
            out.append(f"DERIVED   {step.role}: " + _indent(_equations(step.comps), 2))
        for step in steps:
            total = sum((flops(c) for c in step.comps), sympy.Integer(0))
            out.append(f"FLOPS     {step.role}: {total.subs(BATCH, 1)} per example")
        for step in steps:
            out.append(f"LOOPS     {step.role}:\n" + _indent(
                format_nest(lowered.kernels[step].nests), 0, first=True))
        for step in steps:
            out.append(f"C         {lowered.functions[step]}, source lines {lines[step]}")
        sections.append("\n".join(out))
    return "\n\n".join(sections) + "\n"


def _equations(comps) -> str:
    return "\n".join(str(c) + (f"   ({c.equation})" if c.equation else "") for c in comps)


def _indent(text: str, extra: int = 0, first: bool = False) -> str:
    pad = " " * (10 + extra)
    body = text.replace("\n", "\n" + pad)
    return pad + body if first else body


def _function_lines(lowered: Lowered) -> dict:
    """``start-end`` line numbers of each step's function in the source, 1-based."""
    text = lowered.source.splitlines()
    found = {}
    for step, fname in lowered.functions.items():
        start = next(i for i, line in enumerate(text) if f" {fname}(" in line)
        while start > 0 and text[start - 1].strip() and not text[start - 1].startswith("}"):
            start -= 1  # include the comment header
        end = next(i for i in range(start, len(text)) if text[i] == "}")
        found[step] = f"{start + 1}-{end + 1}"
    return found
