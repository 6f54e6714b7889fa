"""Variable sizes (section 9.7): the size symbols of a graph, checked and fixed.

An input given as ``g.input("x", (None, 3, None, None))`` has the sizes ``N`` (the batch),
``x_H`` and ``x_W``: symbols that every shape downstream is an expression of (``floor((x_H
- 3)/2) + 1`` after a strided convolution) and that the generated C takes as arguments. A
check that the graph cannot decide for every size (is the kernel larger than the padded
input?) is made again here on the sizes actually given, by running each node's own shape
inference on them (`infer_at`): at call time (`convc.Module`) and when a graph is compiled
for fixed sizes (`specialise`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy

from .errors import GraphError, InternalError
from .ops import BATCH, OpContext, fmt, is_size
from .ops.source import Input

if TYPE_CHECKING:
    from .graph import Graph, Node


def size_symbols(graph: Graph) -> dict[str, sympy.Symbol]:
    """The size symbols of ``graph``'s inputs by name, in order (the batch ``N`` first)."""
    found: dict[str, sympy.Symbol] = {}
    for node in graph.nodes():
        if isinstance(node.op, Input):
            for d in node.shape:
                if isinstance(d, sympy.Symbol):
                    found.setdefault(d.name, d)
    return dict(sorted(found.items(), key=lambda kv: (kv[1] != BATCH, kv[0])))


def check_size_names(graph: Graph, node: Node) -> None:
    """An input's size symbols must not be named like another input's (``a.b`` and
    ``a_b`` both give ``a_b_H``): two sizes would become one."""
    taken = {}
    for other in graph.nodes():
        if isinstance(other.op, Input) and other.name != node.name:
            taken.update({d.name: other.name for d in other.shape
                          if isinstance(d, sympy.Symbol) and d != BATCH})
    for d in node.shape:
        if isinstance(d, sympy.Symbol) and d.name in taken:
            raise GraphError(f"node {node.name!r} ({node.source}): its size {d} has the name "
                             f"of a size of input {taken[d.name]!r}; rename one of them")


def substitute(shape: tuple, values: dict) -> tuple:
    """``shape`` with the sizes in ``values`` put in (ints where a dimension becomes one)."""
    out = []
    for d in shape:
        if is_size(d):
            out.append(int(d))
            continue
        d = sympy.sympify(sympy.sympify(d).xreplace(values))
        out.append(int(d) if d.is_Integer else d)
    return tuple(out)


def infer_at(graph: Graph, values: dict[sympy.Symbol, int]) -> dict[str, tuple]:
    """Every node's shape with the sizes ``values`` (symbols not given stay symbols), by
    each op's own shape inference: it raises the `GraphError` a graph built with those
    sizes would have raised (a kernel larger than the padded input, an empty output)."""
    shapes: dict[str, tuple] = {}
    for node in graph.nodes():
        want = substitute(node.shape, values)
        if node.is_source:
            shapes[node.name] = want
            continue
        ctx = OpContext(node.name, tuple(shapes[i] for i in node.inputs),
                        tuple(graph.node(i).dtype for i in node.inputs), node.source)
        got, _ = node.op.infer(ctx)
        got = substitute(got, {})
        for axis, d in enumerate(got):
            if axis > 0 and is_size(d) and d < 1:
                raise ctx.error(f"the output would have {d} cells along axis {axis} (shape "
                                f"{fmt(got)}, from inputs "
                                f"{', '.join(fmt(s) for s in ctx.shapes)}): the input is too "
                                f"small")
        if any(sympy.expand(sympy.sympify(a) - b) != 0 for a, b in zip(got, want)):
            raise InternalError(f"this is a bug in convc: node {node.name!r} has shape "
                                f"{fmt(node.shape)}, which is {fmt(want)} at {values}, but "
                                f"its inference gives {fmt(got)}")
        shapes[node.name] = got
    return shapes


def specialise(graph: Graph, sizes: dict[str, int]) -> Graph:
    """A copy of ``graph`` with the variable sizes named in ``sizes`` (``{"x_H": 28}``)
    fixed: it compiles to the code a graph built with those sizes gets (constant loop
    bounds), checked as that graph would have been (a `GraphError` if they do not fit)."""
    from .graph import Graph, Node, user_source  # the graph module imports this one

    symbols = size_symbols(graph)
    if not isinstance(sizes, dict):
        raise GraphError(f"sizes must be a dict from size names to ints, found {sizes!r} "
                         f"({user_source()})")
    unknown = sorted(set(sizes) - set(symbols))
    if unknown:
        raise GraphError(f"graph {graph.name!r} has no variable size {', '.join(unknown)}; "
                         f"its sizes are {', '.join(symbols) or 'none'} ({user_source()})")
    values = {}
    for name, value in sizes.items():
        if isinstance(value, bool) or not is_size(value) or value < 1:
            raise GraphError(f"size {name} must be a positive int, found {value!r} "
                             f"({user_source()})")
        values[symbols[name]] = int(value)
    shapes = infer_at(graph, values)
    fixed = Graph(graph.name)
    for node in graph.nodes():
        op = node.op
        if isinstance(op, Input):
            op = Input(dims=shapes[node.name], dtype=op.dtype)
        fixed._insert(Node(node.name, op, node.inputs, shapes[node.name], node.dtype,
                           node.source, node.algorithm))
    for name in graph.outputs:
        fixed._outputs.append(name)
    return fixed
