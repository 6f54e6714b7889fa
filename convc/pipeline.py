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
from functools import partial

import numpy as np

from .codegen.cprinter import CPrinter
from .codegen.emit import Buffer, emit_entry, emit_kernel, fft_scratch, size_symbols
from .codegen.names import NameTable, c_comment, c_identifier
from .errors import ConvcError, GraphError, InternalError
from .graph import Graph, Node, user_source
from .ir.affine import index_range
from .ir.comprehension import ACC, ARG, Comprehension, Reduction
from .loops import Kernel
from .autodiff import Names, derive
from .blocked import Blocked
from .contract import ALGORITHMS, Gemm, Part, cost, plan
from .lower import lower_node, written
from .reductions import ACCUMULATORS, VECTOR_ACCUMULATORS
from . import blocked, col2im, spectral, winograd
from .ops import fmt
from .ops.source import Constant, Input, Param
from .rank import Separated, separate
from .sizes import specialise
from .spectral import Spectra, Transform

DTYPES = {"float32": "float", "float64": "double"}
VECTOR_BYTES = 64
"""The width of the runtime's vectors (`convc_vf32`, `convc_vf64`), in bytes."""


@dataclass(frozen=True)
class Step:
    """One C function: the comprehensions of one node in one role.

    Roles: ``fwd`` (the forward pass), ``start`` (setting the gradients' starting values),
    and
    ``d<what>`` for the gradient a node sends to one of its inputs (``dinput``,
    ``dweight``, ``dbias``).
    """

    node: str
    role: str
    comps: tuple[Comprehension, ...]


@dataclass(frozen=True)
class Lowered:
    """Every intermediate representation of one graph, as the stages produced them."""

    graph: Graph
    dtype: str
    nodes: tuple[Node, ...]
    wrt: tuple[str, ...]
    steps: tuple[Step, ...]
    buffers: dict[str, Buffer]
    parts: dict[Step, tuple[Part, ...]]
    kernels: dict[Step, Kernel]
    functions: dict[Step, str]
    entry: str
    source: str
    cdef: str
    grads: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    threads: int = 1
    profile: bool = False
    tuned: dict[tuple[str, str], dict] = field(default_factory=dict)
    algorithms: dict[Step, tuple[str, ...]] = field(default_factory=dict)  # per comprehension
    separated: dict[str, Separated] = field(default_factory=dict)  # nodes run as 1-D passes

    @property
    def sizes(self) -> list:
        return size_symbols(self.buffers.values())

    @property
    def comprehensions(self) -> dict[str, tuple[Comprehension, ...]]:
        """The forward comprehensions of each computed node."""
        return {s.node: s.comps for s in self.steps if s.role == "fwd"}

    def derivatives(self, node: str) -> list[Step]:
        """The backward steps of ``node``."""
        return [s for s in self.steps if s.node == node and s.role not in ("fwd", "start")]

    def arguments(self) -> list[Buffer]:
        """The entry point's array arguments, in order: inputs, parameters, output
        gradients given (seeds), outputs, gradients computed."""
        return [b for b in self.buffers.values() if b.role not in ("temp", "const")]


@contextmanager
def stage(name: str, timings: dict[str, float], node: str = ""):
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


def lower(graph: Graph, dtype: str = "float32", grad=False, algorithm: str = "auto",
          num_threads: int | None = None, profile: bool = False, tuned=None,
          sizes: dict[str, int] | None = None) -> Lowered:
    """Run every stage up to the generated C.

    ``grad`` adds the backward pass: ``True`` for the gradients of every parameter, or a
    list of the parameters and inputs to differentiate. The outputs' gradients are then
    arguments (``grad:<output>``) and the parameters' gradients results.

    ``algorithm`` says how contractions (convolutions, their gradients, dense layers) run:
    ``"auto"`` chooses by cost among matrix products, FFTs, Winograd, blocked sums and
    direct loops, ``"gemm"`` packs every one it can into products, ``"direct"`` none,
    ``"fft"`` runs every unit-stride correlation through spectra (`convc.spectral`),
    ``"winograd"`` every 3-tap one by F(2, 3) and every kernel gradient with 3 taps by
    F(3, 2) (`convc.winograd`), ``"col2im"`` every correlation or convolution with
    channels to sum as one product over all its taps and a sum of shifted columns
    (`convc.col2im`), ``"blocked"`` every one with a channel to put in vectors as sums held
    in vector registers (`convc.blocked`), ``"separable"`` every convolution or weighted
    pool whose constant kernel is of rank 1 as one 1-D pass per axis (`convc.rank`; under
    ``"auto"`` where that pays), the others as ``"auto"``; a layer's own
    ``algorithm=`` overrides it for that node and its gradients.

    ``num_threads`` (default: the cores this process may use) shares the large loops and
    the matrix products' batches among threads; results do not depend on it beyond the
    order of a few sums (a kernel gradient's per-thread partial sums).

    ``profile`` times every step in the C (see `Module.profile`). ``tuned`` maps a step
    ``(node, role)`` to what `convc.tune.tune` measured: ``{"algorithm": chosen, "seconds":
    {algorithm: seconds}, "batch": N}``; the chosen algorithm runs that step unless the
    node has its own ``algorithm=``.
    Sizes given as ``None`` (section 9.7: the batch ``N``, and ``x_H``, ``x_W``... for the
    other axes of an input ``x``) are arguments of the C, every loop bound an expression
    of them; where a number is needed to choose (products or loops, threads or not), a
    size other than the batch is taken as `convc.ops.ASSUMED_SIZE`. ``sizes``
    (``{"x_H": 28}``) fixes some of them instead: the graph is lowered as if built with
    those sizes (`convc.sizes.specialise`).

    Examples
    --------
    >>> import convc
    >>> g = convc.Graph("doc")
    >>> g.output(g.relu(g.input("x", (None, 3))))
    >>> print(convc.lower(g).comprehensions["relu0"][0])
    relu0[d0, d1] = Max(0, x[d0, d1])   for d0 < N, d1 < 3
    """
    if dtype not in DTYPES:
        raise GraphError(f"dtype must be one of {tuple(DTYPES)}, found {dtype!r} "
                         f"({user_source()})")
    if not isinstance(graph, Graph):
        raise GraphError(f"expected a convc.Graph, found {type(graph).__name__} "
                         f"({user_source()})")
    threads = resolve_threads(num_threads)
    if sizes:
        graph = specialise(graph, sizes)
    if algorithm not in ALGORITHMS:
        raise GraphError(f"algorithm must be one of {ALGORITHMS}, found {algorithm!r} "
                         f"({user_source()})")
    timings: dict[str, float] = {}
    wrt = _wrt(graph, _nodes_to_run(graph), grad)
    with stage("separate", timings):
        graph, separated = separate(graph, dtype, algorithm, tuned)
    nodes = _nodes_to_run(graph)
    steps = []
    for node in nodes:
        if not node.is_source:
            with stage("comprehensions", timings, node.name):
                steps.append(_forward_step(graph, node))
    grads, seeds = {}, {}
    if wrt:
        with stage("derive", timings):
            backward, names = _backward(graph, steps, wrt)
            steps += backward
            grads = {w: names.grad(w) for w in wrt}
            seeds = {o: names.seed(o) for o in graph.outputs}
    shapes = _shapes(graph, steps)
    shapes.update({seed: graph.node(out).shape for out, seed in seeds.items()})
    if wrt:  # a gradient has its tensor's shape (its first writer may write a part of it)
        shapes.update({names.grad(t): shape for t, shape in list(shapes.items())
                       if names.grad(t) in shapes})
    parts, algorithms, packed = {}, {}, {}
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    for step in steps:
        with stage("schedule", timings, step.node):
            parts[step], algorithms[step] = _schedule(
                step, shapes, _chosen(graph, step, algorithm, tuned), packed, lanes)
    with stage("buffers", timings):
        ordered = [p for ps in parts.values() for p in ps]
        buffers = _buffers(graph, nodes, ordered, grads, seeds, DTYPES[dtype], shapes)
    kernels = {}
    integers = frozenset(n for n, b in buffers.items() if b.ctype != DTYPES[dtype])
    for step in steps:
        with stage("lower", timings, step.node):
            kernels[step] = lower_node(step.node, _reads(graph, step), parts[step], shapes,
                                       lanes, integers)
    with stage("emit", timings):
        gname = c_identifier(graph.name)
        functions = {s: _function_name(gname, s, buffers) for s in steps}
        entry = f"convc_{gname}_{'train' if wrt else 'forward'}"
        source, cdef = _emit(graph, steps, kernels, functions, entry, buffers, dtype, threads,
                             profile)
    return Lowered(graph, dtype, tuple(nodes), tuple(wrt), tuple(steps), buffers, parts,
                   kernels, functions, entry, source, cdef, grads, seeds, timings, threads,
                   profile, dict(tuned or {}), algorithms, separated)


def _chosen(graph: Graph, step: Step, algorithm: str, tuned) -> str:
    """How a step's contractions run: the node's own choice, else the tuned one, else the
    module's."""
    node = graph.node(step.node) if step.role != "start" else None
    if node is not None and node.algorithm:
        return node.algorithm
    return (tuned or {}).get((step.node, step.role), {}).get("algorithm", algorithm)


def resolve_threads(num_threads) -> int:
    """The threads a module uses: as asked, or every core this process may run on."""
    if num_threads is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise GraphError(f"num_threads must be a positive int, found {num_threads!r} "
                         f"({user_source()})")
    return num_threads


def _wrt(graph: Graph, nodes, grad) -> list[str]:
    """The tensors to differentiate with respect to."""
    if grad is False or grad is None:
        return []
    if grad is True:
        return [n.name for n in nodes if isinstance(n.op, Param)]
    names = [grad] if isinstance(grad, str) else list(grad)
    for name in names:
        node = graph.node(name)
        if isinstance(node.op, Constant):
            raise GraphError(f"grad: {name!r} is a constant of graph {graph.name!r}; a "
                             f"constant is never differentiated")
        if not node.is_source or node.dtype != "float":
            raise GraphError(f"grad: {name!r} is not a float input or parameter of graph "
                             f"{graph.name!r}")
    return names


def _backward(graph: Graph, forward: list[Step], wrt: list[str]) -> tuple[list[Step], Names]:
    """The steps of the backward pass (gradients' starting values, then each adjoint in
    turn), and the names derivation gave the gradients."""
    owner = {c.tensor: s.node for s in forward for c in s.comps}
    comps = [c for s in forward for c in s.comps]
    shapes = _shapes(graph, forward)
    names = Names(shapes)
    zeros, saved, adjoints = derive(comps, set(graph.outputs), set(wrt), shapes, names)
    for i, step in enumerate(forward):  # what the backward pass needs the forward to keep
        extra = tuple(m for c in step.comps for m in saved.get(c.tensor, ()))
        forward[i] = Step(step.node, step.role, step.comps + extra)
    steps = [Step(graph.name, "start", tuple(zeros))] if zeros else []
    used: set[tuple[str, str]] = set()
    for comp, target, cs in adjoints:  # in the order they must run
        node = graph.node(owner[comp.tensor])
        role = _role(graph, node, target)
        last = steps[-1] if steps else None
        if last and last.node == node.name and last.role.split("_")[0] == role:
            steps[-1] = Step(last.node, last.role, last.comps + tuple(cs))
            continue
        unique, i = role, 1
        while (node.name, unique) in used:  # a role met again after another one
            i += 1
            unique = f"{role}_{i}"
        used.add((node.name, unique))
        steps.append(Step(node.name, unique, tuple(cs)))
    return steps, names


def _role(graph: Graph, node: Node, target: str) -> str:
    """``dweight``/``dbias`` for a parameter, ``dinput`` (``dinput1``…) for data, and
    ``dscratch`` for an op's own scratch tensors."""
    if target not in node.inputs:
        return "dscratch"
    if isinstance(graph.node(target).op, Param):
        return "d" + target.rsplit(".", 1)[-1]
    data = [i for i in node.inputs if not isinstance(graph.node(i).op, Param)]
    return "dinput" if len(data) == 1 else f"dinput{data.index(target)}"


def _reads(graph: Graph, step: Step) -> tuple[str, ...]:
    """The order a step's function takes its inputs in: the node's, then the others."""
    return graph.node(step.node).inputs if step.role == "fwd" else ()


def _function_name(gname: str, step: Step, buffers) -> str:
    if step.role == "start":
        return f"convc_{gname}_start_grads"
    return f"convc_{gname}_{buffers[step.node].cname}_{step.role}"


def _nodes_to_run(graph: Graph) -> list[Node]:
    """Sources, and the nodes the outputs depend on, in topological order."""
    if not graph.outputs:
        raise GraphError(f"graph {graph.name!r} has no outputs: mark some with g.output(...) "
                         f"({user_source()})")
    needed = set(graph.outputs)
    for node in reversed(graph.nodes()):
        if node.name in needed:
            needed.update(node.inputs)
    return [n for n in graph.nodes() if n.is_source or n.name in needed]


def _forward_step(graph: Graph, node: Node) -> Step:
    """The forward comprehensions of ``node``. Its scratch tensors (``s.max``, the row
    maxima of softmax ``s``) must not take the name of a graph node; if one would, the op
    builds them under another name for itself (``s~1.max``)."""
    taken = {n.name for n in graph.nodes()}
    shapes = tuple(graph.node(i).shape for i in node.inputs)
    alias, i = node.name, 0
    while True:
        comps = node.op.comprehensions(alias, node.inputs, shapes, node.shape)
        scratch = {c.tensor for c in comps} - {alias}
        if not scratch & (taken | {node.name}):
            break
        i += 1
        alias = f"{node.name}~{i}"
    if alias != node.name:
        comps = [c.renamed({alias: node.name}) for c in comps]
    return Step(node.name, "fwd", tuple(comps))


def _shapes(graph: Graph, steps) -> dict[str, tuple]:
    """The shape of every tensor the steps touch."""
    shapes = {n.name: n.shape for n in graph.nodes()}
    for c in (c for s in steps for c in s.comps):
        shapes.setdefault(c.tensor, _extent(c))
    return shapes


def _schedule(step: Step, shapes: dict[str, tuple], algorithm: str, packed: dict,
              lanes: int) -> tuple[tuple[Part, ...], tuple[str, ...]]:
    """How each comprehension of ``step`` runs: by Winograd's F(2, 3) or F(3, 2), through
    spectra, as columns and shifted sums, blocked in registers of ``lanes`` lanes, packed
    into a matrix product, or as loops (reading the packings and spectra of earlier steps where
    they are the same); and which of these each one took."""
    if algorithm == "separable":  # the passes were made by `separate`; they run as "auto"
        algorithm = "auto"
    parts: list[Part] = []
    used: list[str] = []
    for comp in step.comps:
        product, name = None, "direct"
        for name, run in _ranked(comp, shapes, algorithm, lanes, packed):
            product = run(comp, shapes, packed)
            if product is not None:
                break
        if product is None and algorithm != "direct":
            product, name = plan(comp, shapes, algorithm == "gemm", packed), "gemm"
        parts += product or [comp]
        used.append(name if product else "direct")
    return tuple(parts), tuple(used)


def _alternatives(lanes: int, packed: dict) -> dict:
    """The ways a contraction can run besides products and loops: each one's price (in the
    units of `contract.cost`, infinite where it does not apply; what ``packed`` holds
    already is not paid for again) and plan."""
    return {"winograd": (winograd.price, winograd.plan),
            "fft": (spectral.price, spectral.plan),
            "col2im": (partial(col2im.price, packed=packed), col2im.plan),
            "blocked": (partial(blocked.price, lanes=lanes), partial(blocked.plan, lanes=lanes))}


def _ranked(comp: Comprehension, shapes, algorithm: str, lanes: int, packed: dict
            ) -> list[tuple[str, object]]:
    """The alternatives to try for ``comp``, with their plans: the one asked for, or under
    ``"auto"`` those cheaper than its best products or loops, cheapest first."""
    alternatives = _alternatives(lanes, packed)
    if algorithm != "auto":
        return [(algorithm, alternatives[algorithm][1])] if algorithm in alternatives else []
    baseline = cost(comp, shapes)
    prices = {name: price(comp, shapes) for name, (price, _) in alternatives.items()}
    return [(name, alternatives[name][1])
            for name in sorted((n for n, p in prices.items() if p < baseline), key=prices.get)]


def _buffers(graph, nodes, parts, grads, seeds, float_type, shapes) -> dict[str, Buffer]:
    """Every tensor the C touches, with a unique C identifier, in argument order."""
    comps = [p for p in parts if isinstance(p, Comprehension)]
    reserved = {str(d.var) for c in comps for d in c.variables}
    reserved |= {str(v) for p in parts if isinstance(p, Blocked) for v in p.variables}
    # the C's own locals: the accumulator, the argmax, the entry's status and workspace
    reserved |= {str(a) for a in ACCUMULATORS + VECTOR_ACCUMULATORS}
    reserved |= {str(ACC), str(ARG), "v", "status", "done", "scratch", "next", "workspace",
                 "fft_scratch"}
    reserved |= {str(s) for n in nodes for s in _symbols(n)}
    table = NameTable(reserved)
    ctype = {"float": float_type, "int64": "int64_t", "uint8": "uint8_t"}
    nodes_by_name = {n.name: n for n in nodes}
    out: dict[str, Buffer] = {}

    def add(name: str, shape, dtype: str, role: str) -> None:
        if name not in out:
            out[name] = Buffer(name, table.add(name), tuple(shape), ctype[dtype], role)

    for role, kind in (("input", Input), ("param", Param), ("const", Constant)):
        for n in nodes:
            if isinstance(n.op, kind):
                add(n.name, n.shape, n.dtype, role)
    for name, seed in seeds.items():
        add(seed, nodes_by_name[name].shape, "float", "seed")
    for name in graph.outputs:
        add(name, nodes_by_name[name].shape, nodes_by_name[name].dtype, "output")
    for name, grad in grads.items():
        add(grad, nodes_by_name[name].shape, "float", "grad")
    for c in parts:  # the first comprehension writing a scratch tensor covers all of it
        if isinstance(c, Transform | Spectra | Gemm | Blocked):
            add(written(c), shapes[written(c)], "float", "temp")
        elif not isinstance(c, Comprehension):
            continue
        elif c.tensor in nodes_by_name:
            node = nodes_by_name[c.tensor]
            add(c.tensor, node.shape, node.dtype, "temp")
        else:  # as planned: a spectral product may write only some rows of its tensor
            dtype = c.dtype or ("int64" if c.reduction is Reduction.ARGMAX else "float")
            add(c.tensor, shapes.get(c.tensor) or _extent(c), dtype, "temp")
    order = ("input", "param", "seed", "output", "grad", "const", "temp")
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[1].role)))


def _symbols(node: Node):
    for d in node.shape:
        yield from getattr(d, "free_symbols", ())


def _extent(comp: Comprehension) -> tuple:
    """The shape of a scratch tensor: one past the largest index each axis writes."""
    extents = {d.var: d.stop for d in comp.free}
    return tuple(index_range(i, extents)[1] + 1 for i in comp.output.indices)


def _emit(graph, steps, kernels, functions, entry, buffers, dtype, threads, profile):
    printer = CPrinter(dtype, {n: (b.cname, b.shape) for n, b in buffers.items()})
    what = "the forward and backward passes" if "grad" in _roles(buffers) else "the forward pass"
    parts = [f"/* {c_comment(f'Generated by convc from graph {graph.name!r}: {what}.')} */",
             "#include <math.h>", "#include <stdint.h>", "",
             '#include "convc_runtime.h"', ""]
    tables = {b.name: const_table_name(b) for b in buffers.values() if b.role == "const"}
    for name, table in tables.items():
        parts += [emit_constant(graph.node(name), buffers[name], table, dtype), ""]
    calls = []
    transforms = [t for step in steps for t in kernels[step].transforms]
    if transforms:
        parts += [*fft_scratch(entry, transforms, printer.float_type, threads), ""]
    for step in steps:
        kernel = kernels[step]
        parts += [emit_kernel(kernel, functions[step], _header(graph, step, buffers),
                              buffers, printer, threads), ""]
        sizes = size_symbols(buffers[t] for t in kernel.reads + kernel.writes)
        args = [str(s) for s in sizes] + [tables.get(t, buffers[t].cname)
                                          for t in kernel.reads + kernel.writes]
        args += ["fft_scratch"] if kernel.transforms else []
        calls.append((functions[step], args, kernel.can_fail))
    header = [f"graph {_quote(graph.name)}: {what}; returns a CONVC_* status code"]
    for b in buffers.values():
        if b.role not in ("temp", "const"):
            header.append(f"  {b.role} {_quote(b.name)} {fmt(b.shape)} -> {b.cname}")
    text, cdef = emit_entry(entry, header, calls, buffers, printer, profile, bool(transforms))
    return "\n".join(parts + [text, ""]), cdef


def const_table_name(buffer) -> str:
    """The C name of a constant's static table (``convc_`` names are never a user's)."""
    return f"convc_const_{buffer.cname}"


def emit_constant(node: Node, buffer, table: str, dtype: str) -> str:
    """A constant's values as a ``static const`` table, row-major, each printed exactly
    (a float's shortest round-trip decimal, read back by C to the same value)."""
    suffix = "f" if dtype == "float32" else ""
    cast = (lambda v: float(np.float32(v))) if dtype == "float32" else float
    literals = [repr(cast(v)) + suffix for v in node.op.values]
    rows = [", ".join(literals[i:i + 8]) for i in range(0, len(literals), 8)]
    body = ",\n    ".join(rows)
    comment = c_comment(f"constant {node.name!r} {fmt(node.shape)}, at {node.source}")
    return (f"/* {comment} */\nstatic const {buffer.ctype} {table}[{len(literals)}] = {{\n"
            f"    {body}\n}};")


def _roles(buffers) -> set[str]:
    return {b.role for b in buffers.values()}


def _header(graph, step: Step, buffers) -> list[str]:
    if step.role == "start":
        return [f"graph {_quote(graph.name)}: each gradient starts at 0, or at the gradient "
                f"given for an output"]
    node = graph.node(step.node)
    what = "" if step.role == "fwd" else f", gradient {step.role}"
    lines = [f"node {_quote(node.name)} ({node.op.kind}{what}) at {node.source}"]
    for c in step.comps:
        tag = f"  [{c.equation}]" if c.equation else ""
        lines.append(f"  {c.text(unicode=False)}{tag}")
    ins = ", ".join(f"{_quote(i)} {fmt(graph.node(i).shape)}" for i in node.inputs)
    lines.append(f"shapes: {ins} -> {fmt(node.shape)}")
    return lines


def _quote(name: str) -> str:
    return repr(name)
