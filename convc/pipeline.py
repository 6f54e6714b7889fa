"""The compiler's stages, in order: graph -> comprehensions -> loop nests -> C -> module.

`lower` runs every stage up to the C text and returns a `Lowered` holding each
intermediate; `compile` builds and loads it. Under ``CONVC_DEBUG=1`` each stage prints its
time and output. An unexpected exception inside a stage becomes an `InternalError` naming
the stage.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from .codegen.cprinter import CPrinter
from .codegen.emit import Buffer, emit_entry, emit_kernel, size_symbols
from .codegen.names import NameTable, c_identifier
from .errors import ConvcError, GraphError, InternalError
from .graph import Graph, Node
from .ir.affine import index_range
from .ir.comprehension import ACC, Comprehension
from .loops import Kernel
from .lower import lower_node
from .ops import fmt
from .ops.source import Input, Param

DTYPES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class Lowered:
    """Every intermediate representation of one graph, as the stages produced them."""

    graph: Graph
    dtype: str
    nodes: tuple[Node, ...]
    buffers: dict[str, Buffer]
    comprehensions: dict[str, tuple[Comprehension, ...]]
    kernels: dict[str, Kernel]
    functions: dict[str, str]
    entry: str
    source: str
    cdef: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sizes(self) -> list:
        return size_symbols(self.buffers.values())

    def arguments(self) -> list[Buffer]:
        """The entry point's array arguments, in order: inputs, parameters, outputs."""
        return [b for b in self.buffers.values() if b.role != "temp"]


@contextmanager
def _stage(name: str, timings: dict[str, float], node: str = ""):
    start = time.perf_counter()
    try:
        yield
    except ConvcError:
        raise
    except Exception as e:  # noqa: BLE001 - a bug: say where it happened
        where = f" at node {node!r}" if node else ""
        raise InternalError(f"this is a bug in convc: stage {name!r}{where} raised "
                            f"{type(e).__name__}: {e}") from e
    elapsed = time.perf_counter() - start
    timings[name] = timings.get(name, 0.0) + elapsed
    if os.environ.get("CONVC_DEBUG") == "1":
        print(f"[convc] {name}{' ' + node if node else ''}: {elapsed * 1e3:.1f} ms",
              file=sys.stderr)


def lower(graph: Graph, dtype: str = "float32") -> Lowered:
    """Run every stage up to the generated C.

    Examples
    --------
    >>> import convc
    >>> g = convc.Graph("doc")
    >>> g.output(g.relu(g.input("x", (None, 3))))
    >>> print(convc.lower(g).comprehensions["relu0"][0])
    relu0[d0, d1] = Max(0, x[d0, d1])   for d0 < N, d1 < 3
    """
    if dtype not in DTYPES:
        raise GraphError(f"dtype must be one of {tuple(DTYPES)}, found {dtype!r}")
    if not isinstance(graph, Graph):
        raise GraphError(f"expected a convc.Graph, found {type(graph).__name__}")
    timings: dict[str, float] = {}
    nodes = _nodes_to_run(graph)
    comps: dict[str, tuple[Comprehension, ...]] = {}
    for node in nodes:
        if not node.is_source:
            with _stage("comprehensions", timings, node.name):
                shapes = tuple(graph.node(i).shape for i in node.inputs)
                comps[node.name] = node.op.comprehensions(node.name, node.inputs, shapes,
                                                          node.shape)
    with _stage("buffers", timings):
        buffers = _buffers(graph, nodes, comps, DTYPES[dtype])
    shapes = {name: b.shape for name, b in buffers.items()}
    kernels = {}
    for name, cs in comps.items():
        with _stage("lower", timings, name):
            kernels[name] = lower_node(name, graph.node(name).inputs, cs, shapes)
    with _stage("emit", timings):
        gname = c_identifier(graph.name)
        functions = {n: f"convc_{gname}_{buffers[n].cname}_fwd" for n in kernels}
        entry = f"convc_{gname}_forward"
        source, cdef = _emit(graph, nodes, comps, kernels, functions, entry, buffers, dtype)
    return Lowered(graph, dtype, tuple(nodes), buffers, comps, kernels, functions, entry,
                   source, cdef, timings)


def _nodes_to_run(graph: Graph) -> list[Node]:
    """Sources, and the nodes the outputs depend on, in topological order."""
    if not graph.outputs:
        raise GraphError(f"graph {graph.name!r} has no outputs: mark some with g.output(...)")
    needed = set(graph.outputs)
    for node in reversed(graph.nodes()):
        if node.name in needed:
            needed.update(node.inputs)
    for name in graph.outputs:
        if graph.node(name).is_source:
            raise GraphError(f"output {name!r} is a graph input or parameter, not a computed "
                             f"tensor")
    return [n for n in graph.nodes() if n.is_source or n.name in needed]


def _buffers(graph, nodes, comps, float_type) -> dict[str, Buffer]:
    """Every tensor the C touches, with a unique C identifier, sources first."""
    reserved = {str(v) for cs in comps.values() for c in cs for v, _ in c.variables}
    reserved |= {str(ACC), "status", "done"} | {str(s) for n in nodes for s in _symbols(n)}
    table = NameTable(reserved)
    ctype = {"float": float_type, "int64": "int64_t"}
    out = {}
    for role, kind in (("input", Input), ("param", Param)):
        for n in nodes:
            if isinstance(n.op, kind):
                out[n.name] = Buffer(n.name, table.add(n.name), n.shape, ctype[n.dtype], role)
    for n in nodes:
        if n.name in comps:
            role = "output" if n.name in graph.outputs else "temp"
            for c in comps[n.name][:-1]:  # an op's own scratch tensors
                out[c.tensor] = Buffer(c.tensor, table.add(c.tensor), _extent(c), float_type,
                                       "temp")
            out[n.name] = Buffer(n.name, table.add(n.name), n.shape, ctype[n.dtype], role)
    # outputs last, in the order the user marked them
    return {k: v for k, v in out.items() if v.role != "output"} | {
        name: out[name] for name in graph.outputs}


def _symbols(node: Node):
    for d in node.shape:
        yield from getattr(d, "free_symbols", ())


def _extent(comp: Comprehension) -> tuple:
    """The shape of a scratch tensor: one past the largest index each axis writes."""
    extents = dict(comp.free)
    return tuple(index_range(i, extents)[1] + 1 for i in comp.output.indices)


def _emit(graph, nodes, comps, kernels, functions, entry, buffers, dtype):
    printer = CPrinter(dtype, {n: (b.cname, b.shape) for n, b in buffers.items()})
    parts = [f"/* Generated by convc from graph {_quote(graph.name)}: the forward pass. */",
             "#include <math.h>", "#include <stdint.h>", "#include <stdlib.h>", "",
             '#include "convc_runtime.h"', ""]
    calls = []
    for node in nodes:
        if node.name not in kernels:
            continue
        kernel = kernels[node.name]
        parts += [emit_kernel(kernel, functions[node.name],
                              _header(graph, node, comps[node.name], buffers), buffers,
                              printer), ""]
        sizes = size_symbols(buffers[t] for t in kernel.reads + kernel.writes)
        args = [str(s) for s in sizes] + [buffers[t].cname for t in kernel.reads + kernel.writes]
        calls.append((functions[node.name], args))
    header = [f"graph {_quote(graph.name)}: forward pass; returns a CONVC_* status code"]
    for role in ("input", "param", "output"):
        for b in buffers.values():
            if b.role == role:
                header.append(f"  {role} {_quote(b.name)} {fmt(b.shape)} -> {b.cname}")
    text, cdef = emit_entry(entry, header, calls, buffers, printer)
    return "\n".join(parts + [text, ""]), cdef


def _header(graph, node: Node, comps, buffers) -> list[str]:
    lines = [f"node {_quote(node.name)} ({node.op.kind}) at {node.source}"]
    for c in comps:
        tag = f"  [{c.equation}]" if c.equation else ""
        lines.append(f"  {c.text(unicode=False)}{tag}")
    ins = ", ".join(f"{_quote(i)} {fmt(graph.node(i).shape)}" for i in node.inputs)
    lines.append(f"shapes: {ins} -> {fmt(node.shape)}")
    return lines


def _quote(name: str) -> str:
    return repr(name)
