"""C emission: loop nests -> C99 text.

One ``static void`` function per graph node, opened by a comment naming the node, where the
user wrote it, its equations and its shapes; then one entry point per module that allocates
the intermediate tensors, calls the node functions in order and frees what it allocated.
Every user string reaches the C only through `names.c_identifier` or `names.c_comment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.comprehension import Reduction
from ..loops import ArgMaxUpdate, Block, Kernel, Let, Loop, Store, Update
from .cprinter import CPrinter
from .names import c_comment

INDENT = "    "


@dataclass(frozen=True)
class Buffer:
    """A tensor as the C sees it: identifier, shape, element type and role."""

    name: str
    cname: str
    shape: tuple
    ctype: str
    role: str  # "input", "param", "seed" (an output's gradient), "output", "grad" or "temp"

    @property
    def size(self) -> sympy.Expr:
        return sympy.Mul(*self.shape) if self.shape else sympy.Integer(1)


def size_symbols(buffers) -> list[sympy.Symbol]:
    """The size arguments (such as the batch ``N``) that the shapes of ``buffers`` use."""
    found = set()
    for b in buffers:
        for d in b.shape:
            found |= sympy.sympify(d).free_symbols
    return sorted(found, key=lambda s: s.name)


def parameter_list(sizes, reads, writes, buffers, restrict: bool = True) -> str:
    r = " *restrict " if restrict else " *"
    args = [f"int64_t {s}" for s in sizes]
    args += [f"const {buffers[t].ctype}{r}{buffers[t].cname}" for t in reads]
    args += [f"{buffers[t].ctype}{r}{buffers[t].cname}" for t in writes]
    return ", ".join(args) if args else "void"


def emit_kernel(kernel: Kernel, fname: str, header: list[str], buffers, printer) -> str:
    """The C function of one node: its comment header, signature and loop nests."""
    sizes = size_symbols(buffers[t] for t in kernel.reads + kernel.writes)
    comment = "\n".join(f" * {c_comment(line)}".rstrip() for line in header)
    params = parameter_list(sizes, kernel.reads, kernel.writes, buffers)
    lines = [f"/*{comment[2:]}\n */", f"static void {fname}({params})", "{"]
    for stmt in kernel.nests:
        lines += emit_stmt(stmt, printer, buffers, INDENT)
    lines.append("}")
    return "\n".join(lines)


def emit_stmt(stmt, printer: CPrinter, buffers, indent: str) -> list[str]:
    p = printer.doprint
    if isinstance(stmt, Loop):
        v = stmt.var
        start, stop = printer.doprint_int(stmt.start), printer.doprint_int(stmt.stop)
        head = f"{indent}for (int64_t {v} = {start}; {v} < {stop}; ++{v}) {{"
        body = [line for s in stmt.body for line in emit_stmt(s, printer, buffers,
                                                               indent + INDENT)]
        nested = any(isinstance(s, Loop) for s in stmt.body)
        return [head, *body, f"{indent}}}" + (f" /* {v} */" if nested else "")]
    if isinstance(stmt, Block):
        inner = [line for s in stmt.body for line in emit_stmt(s, printer, buffers,
                                                                indent + INDENT)]
        return [f"{indent}{{", *inner, f"{indent}}}"]
    if isinstance(stmt, Let):
        ctype = "int64_t" if stmt.var.is_integer else printer.float_type
        return [f"{indent}{ctype} {stmt.var} = {p(stmt.value)};"]
    if isinstance(stmt, ArgMaxUpdate):
        inner = indent + INDENT
        return [f"{indent}{{", f"{inner}{printer.float_type} v = {p(stmt.value)};",
                f"{inner}if (v > acc) {{", f"{inner}{INDENT}acc = v;",
                f"{inner}{INDENT}arg = {printer.doprint_int(stmt.index)};",
                f"{inner}}}", f"{indent}}}"]
    if isinstance(stmt, Update):
        if stmt.reduction is Reduction.SUM:
            return [f"{indent}{stmt.var} += {p(stmt.value)};"]
        return [f"{indent}{stmt.var} = {p(Reduction.MAX.combine(stmt.var, stmt.value))};"]
    if isinstance(stmt, Store):
        return [f"{indent}{p(stmt.target)} = {p(stmt.value)};"]
    raise TypeError(f"cannot emit {stmt!r}")


def emit_entry(fname: str, header: list[str], calls: list[tuple[str, list[str]]],
               buffers: dict[str, Buffer], printer: CPrinter) -> tuple[str, str]:
    """The module's entry point and its prototype for cffi.

    ``calls`` lists the node functions in order with their argument names.
    """
    temps = [b for b in buffers.values() if b.role == "temp"]
    reads = [b.name for b in buffers.values() if b.role in ("input", "param", "seed")]
    writes = [b.name for b in buffers.values() if b.role in ("output", "grad")]
    sizes = size_symbols(buffers.values())
    params = parameter_list(sizes, reads, writes, buffers, restrict=False)
    comment = "\n".join(f" * {c_comment(line)}".rstrip() for line in header)
    lines = [f"/*{comment[2:]}\n */", f"int {fname}({params})", "{"]
    for b in temps:
        lines.append(f"{INDENT}{b.ctype} *{b.cname} = convc_alloc(sizeof({b.ctype}) * "
                     f"(size_t)({printer.doprint_int(b.size)}));")
    if temps:
        missing = " || ".join(f"!{b.cname}" for b in temps)
        lines += [f"{INDENT}int status = CONVC_ERR_NOMEM;", f"{INDENT}if ({missing})",
                  f"{INDENT}{INDENT}goto done;"]
    for name, args in calls:
        lines.append(f"{INDENT}{name}({', '.join(args)});")
    if temps:
        lines += [f"{INDENT}status = CONVC_OK;", "done:"]
        lines += [f"{INDENT}convc_free({b.cname});" for b in temps]
        lines += [f"{INDENT}return status;", "}"]
    else:
        lines += [f"{INDENT}return CONVC_OK;", "}"]
    return "\n".join(lines), f"int {fname}({params});"
