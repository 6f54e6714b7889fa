"""C emission: loop nests -> C99 text.

One ``static void`` function per graph node, opened by a comment naming the node, where the
user wrote it, its equations and its shapes; then one entry point per module that allocates
the intermediate tensors, calls the node functions in order and frees what it allocated.
Every user string reaches the C only through `names.c_identifier` or `names.c_comment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy

from ..ir.comprehension import Reduction
from ..contract import Gemm
from ..loops import (ArgMaxUpdate, Block, Kernel, Let, Loop, LoopKind, RowsStore, Store,
                     TransposeTile, Update, VLoad, walk)
from ..spectral import Spectra, Transform
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


def emit_kernel(kernel: Kernel, fname: str, header: list[str], buffers, printer,
                threads: int = 1) -> str:
    """The C function of one node: its comment header, signature and loop nests; parallel
    loops and matrix products use up to ``threads`` threads.

    The body of a parallel loop with loops in it is a function of its own (`_outline`,
    after the header), called from the loop: GCC moves an OpenMP loop's body into a
    function whose pointers are no longer ``restrict``, and then tests for aliasing and
    reloads the kernel's values each step, unless the body is a function that says so
    itself."""
    sizes = size_symbols(buffers[t] for t in kernel.reads + kernel.writes)
    comment = "\n".join(f" * {c_comment(line)}".rstrip() for line in header)
    params = parameter_list(sizes, kernel.reads, kernel.writes, buffers)
    context = _Context(fname, params, [str(s) for s in sizes]
                       + [buffers[t].cname for t in kernel.reads + kernel.writes], threads,
                       declared=_declares(kernel.nests),
                       attributes=["CONVC_BROADCASTING"] if kernel.blocked else [])
    if kernel.transforms:
        params += ", void *restrict fft_scratch"
    kind = "int" if kernel.can_fail else "void"
    lines = [*context.attributes, f"static {kind} {fname}({params})", "{"]
    for stmt in kernel.nests:
        lines += emit_stmt(stmt, printer, buffers, INDENT, context)
    if kernel.can_fail:
        lines.append(f"{INDENT}return CONVC_OK;")
    lines.append("}")
    return f"/*{comment[2:]}\n */\n" + "\n\n".join([*context.outlined, "\n".join(lines)])


@dataclass
class _Context:
    """What emitting a kernel's statements needs besides them: its name, parameters and
    the arguments that pass them on, its threads, the attributes of its functions (a line
    before each; register-blocked sums': `CONVC_BROADCASTING`), the loops around the
    statement, whether a local is declared around it, and the functions the bodies of its
    parallel loops became (with their names: one list and set, shared by every copy
    `inside` makes)."""

    fname: str
    params: str
    args: list[str]
    threads: int
    attributes: list[str] = field(default_factory=list)
    around: tuple[sympy.Symbol, ...] = ()
    declared: bool = False
    outlined: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def inside(self, stmt: Loop | Block) -> "_Context":
        around = (*self.around, stmt.var) if isinstance(stmt, Loop) else self.around
        return replace(self, around=around, declared=self.declared or _declares(stmt.body))


def _declares(stmts) -> bool:
    return any(isinstance(s, Let) for s in stmts)


def _outline(stmt: Loop, printer: CPrinter, buffers, indent: str, context: _Context
             ) -> list[str]:
    """A parallel loop (and the ``collapse - 1`` loops in it) calling a function of its
    own for each iteration, with the kernel's parameters and the loop variables."""
    loops = [stmt]
    while len(loops) < stmt.collapse:
        loops.append(loops[-1].body[0])
    around = (*context.around, *(loop.var for loop in loops))
    name = f"{context.fname}_{'_'.join(str(loop.var) for loop in loops)}"
    name += f"_{len(context.outlined) + 1}" if name in context.names else ""
    context.names.add(name)
    inner = replace(context, around=around)
    body = [line for s in loops[-1].body
            for line in emit_stmt(s, printer, buffers, INDENT, inner)]
    variables = ", ".join(f"int64_t {v}" for v in around)
    where = ", ".join(str(v) for v in around[len(context.around):])
    context.outlined.append("\n".join([
        f"/* one iteration of {context.fname}'s parallel loop over {where} */",
        *context.attributes, f"static void {name}({context.params}, {variables})", "{",
        *body, "}"]))
    call = f"{name}({', '.join([*context.args, *map(str, around)])});"
    lines = [f"{indent}{INDENT * len(loops)}{call}"]
    for depth, loop in reversed(list(enumerate(loops))):
        pad = indent + INDENT * depth
        start, stop = printer.doprint_int(loop.start), printer.doprint_int(loop.stop)
        head = f"{pad}for (int64_t {loop.var} = {start}; {loop.var} < {stop}; ++{loop.var}) {{"
        lines = [head, *lines, f"{pad}}}"]
    collapse = f" collapse({stmt.collapse})" if stmt.collapse > 1 else ""
    return [f"{indent}#pragma omp parallel for{collapse} num_threads({context.threads})",
            *lines]


def _can_outline(stmt: Loop, context: _Context) -> bool:
    """Whether the body of a parallel loop is better a function of its own: it holds loops
    (a body of one statement vectorises well as it is), reads no local declared outside
    it and calls nothing of the runtime (whose failure it would return)."""
    inner = walk(stmt.body)
    return (not context.declared and stmt.step == 1
            and any(isinstance(s, Loop) for s in inner)
            and not any(isinstance(s, Gemm | Transform | Spectra) for s in inner))


def emit_stmt(stmt, printer: CPrinter, buffers, indent: str, context: _Context
              ) -> list[str]:
    p = printer.doprint
    if isinstance(stmt, Loop):
        v = stmt.var
        parallel = stmt.kind is LoopKind.PARALLEL and context.threads > 1
        if parallel and _can_outline(stmt, context):
            return _outline(stmt, printer, buffers, indent, context)
        start, stop = printer.doprint_int(stmt.start), printer.doprint_int(stmt.stop)
        step = f"++{v}" if stmt.step == 1 else f"{v} += {stmt.step}"
        head = [f"{indent}for (int64_t {v} = {start}; {v} < {stop}; {step}) {{"]
        if parallel:
            collapse = f" collapse({stmt.collapse})" if stmt.collapse > 1 else ""
            head.insert(0, f"{indent}#pragma omp parallel for{collapse} "
                           f"num_threads({context.threads})")
        elif stmt.kind is LoopKind.VECTOR:
            sums = sorted({str(u.var) for u in walk(stmt.body) if isinstance(u, Update)})
            head.insert(0, f"{indent}#pragma omp simd reduction(+:{','.join(sums)})")
        elif stmt.kind is LoopKind.UNROLL:
            head.insert(0, f"{indent}#pragma GCC unroll {stop}")
        inner = context.inside(stmt)
        body = [line for s in stmt.body
                for line in emit_stmt(s, printer, buffers, indent + INDENT, inner)]
        nested = any(isinstance(s, Loop) for s in stmt.body)
        return [*head, *body, f"{indent}}}" + (f" /* {v} */" if nested else "")]
    if isinstance(stmt, Block):
        inner = context.inside(stmt)
        body = [line for s in stmt.body
                for line in emit_stmt(s, printer, buffers, indent + INDENT, inner)]
        return [f"{indent}{{", *body, f"{indent}}}"]
    if isinstance(stmt, Let):
        if stmt.vector:
            value = p(stmt.value) if isinstance(stmt.value, VLoad) else f"{{{p(stmt.value)}}}"
            array = f"[{stmt.count}]" if stmt.count else ""
            return [f"{indent}{printer.vector_type} {stmt.var}{array} = {value};"]
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
            return [f"{indent}{p(stmt.var)} += {p(stmt.value)};"]
        return [f"{indent}{stmt.var} = {p(Reduction.MAX.combine(stmt.var, stmt.value))};"]
    if isinstance(stmt, Store):
        return [f"{indent}{p(stmt.target)} = {p(stmt.value)};"]
    if isinstance(stmt, RowsStore):
        i = printer.doprint_int
        call = "vadd" if stmt.add else "vstore"
        return [f"{indent}convc_{call}_rows_{printer.suffix}(&{p(stmt.target)}, "
                f"{i(stmt.stride)}, {stmt.step}, {stmt.source}, {stmt.width}, {i(stmt.rows)});"]
    if isinstance(stmt, TransposeTile):
        i = printer.doprint_int
        return [f"{indent}convc_transpose_{printer.suffix}(&{p(stmt.target)}, "
                f"{i(stmt.target_stride)}, &{p(stmt.source)}, {i(stmt.source_stride)}, "
                f"{stmt.rows}, {stmt.cols});"]
    if isinstance(stmt, Gemm):
        return _emit_gemm(stmt, printer, buffers, indent, context.threads)
    if isinstance(stmt, Transform):
        return _emit_transform(stmt, printer, buffers, indent, context.threads)
    if isinstance(stmt, Spectra):
        return _emit_spectra(stmt, printer, buffers, indent, context.threads)
    raise TypeError(f"cannot emit {stmt!r}")


def _emit_gemm(gemm: Gemm, printer: CPrinter, buffers, indent: str, threads: int
               ) -> list[str]:
    """``C += A·B`` (or ``C = A·B``) by the runtime; a failure (no memory to pack into)
    returns its code."""
    i = printer.doprint_int
    batch = i(gemm.batch.extent) if gemm.batch else "1"
    args = [str(threads), str(int(gemm.accumulate)), batch, i(gemm.m), i(gemm.n), i(gemm.k),
            *_views((gemm.a, gemm.b, gemm.c), printer, buffers)]
    call = f"convc_gemm_{printer.suffix}({', '.join(args)})"
    return [f"{indent}/* {c_comment(gemm.describe())} */",
            f"{indent}if ({call} != CONVC_OK)", f"{indent}{INDENT}return CONVC_ERR_NOMEM;"]


def _views(views, printer: CPrinter, buffers) -> list[str]:
    """Each view as its base pointer and its batch, row and column strides."""
    i = printer.doprint_int
    args = []
    for view in views:
        offset = i(view.offset)
        base = buffers[view.tensor].cname + ("" if offset == "0" else f" + {offset}")
        args += [base, i(view.batch), i(view.rows), i(view.cols)]
    return args


def _emit_spectra(s: Spectra, printer: CPrinter, buffers, indent: str, threads: int
                  ) -> list[str]:
    """Products of spectra by the runtime."""
    i = printer.doprint_int
    args = [str(threads), str(int(s.conj)), i(s.batch), i(s.m), i(s.n), i(s.k), str(s.count),
            *_views((s.a, s.b, s.c), printer, buffers)]
    return [f"{indent}/* {c_comment(s.describe())} */",
            f"{indent}if (convc_spectra_{printer.suffix}({', '.join(args)}) != CONVC_OK)",
            f"{indent}{INDENT}return CONVC_ERR_SIZE;"]


def _sizes(values) -> str:
    return f"(const size_t[]){{{', '.join(map(str, values))}}}"


def _emit_transform(t: Transform, printer: CPrinter, buffers, indent: str, threads: int
                    ) -> list[str]:
    """Real FFTs by the runtime, in the module's FFT scratch."""
    source, target = buffers[t.source].cname, buffers[t.target].cname
    head = [str(threads), str(len(t.dims)), _sizes(t.dims), printer.doprint_int(t.count)]
    if t.inverse:
        args = [*head, source, _sizes(t.offset), _sizes(t.shape), target, "fft_scratch"]
    else:
        args = [*head, _sizes(t.shape), source, target, "fft_scratch"]
    call = f"convc_{'irfft' if t.inverse else 'rfft'}_{printer.suffix}({', '.join(args)})"
    return [f"{indent}/* {c_comment(t.describe())} */",
            f"{indent}if ({call} != CONVC_OK)", f"{indent}{INDENT}return CONVC_ERR_SIZE;"]


def fft_scratch(fname: str, transforms: list[Transform], float_type: str, threads: int
                ) -> list[str]:
    """The function giving the bytes of scratch the module's largest FFT needs."""
    suffix = "f32" if float_type == "float" else "f64"
    lines = [f"/* bytes of scratch for the FFTs of {fname} */",
             f"static size_t {fname}_fft_scratch(void)", "{", f"{INDENT}size_t bytes = 0;"]
    for dims in dict.fromkeys(t.dims for t in transforms):
        need = f"convc_rfft_scratch_{suffix}({threads}, {len(dims)}, {_sizes(dims)})"
        lines.append(f"{INDENT}bytes = convc_max_size(bytes, {need});")
    return [*lines, f"{INDENT}return bytes;", "}"]


def _own_temps(temps: list[Buffer], calls) -> list[list[Buffer]]:
    """Per call, the intermediate tensors no other call touches (a step's packing): they
    share one stretch of the workspace with the other steps' own."""
    users = {b.name: [i for i, (_, args, _) in enumerate(calls) if b.cname in args]
             for b in temps}
    return [[b for b in temps if users[b.name] == [i]] for i in range(len(calls))]


def emit_entry(fname: str, header: list[str], calls: list[tuple[str, list[str], bool]],
               buffers: dict[str, Buffer], printer: CPrinter, profile: bool = False,
               ffts: bool = False) -> tuple[str, str]:
    """The module's entry point, the function sizing its workspace, and their prototypes.

    ``calls`` lists the node functions in order with their argument names, and whether
    each returns a status to check. The intermediate tensors live in one workspace of
    ``<fname>_workspace(sizes)`` bytes: the caller's (reused from call to call, so no page
    is faulted in twice), or one the entry allocates when given NULL. ``profile`` times
    each call; ``<fname>_profile(seconds)`` reads the times added up since it last ran.
    ``ffts``: the steps share a scratch for their FFTs (``<fname>_fft_scratch()`` bytes),
    kept in the workspace.
    """
    temps = [b for b in buffers.values() if b.role == "temp"]
    reads = [b.name for b in buffers.values() if b.role in ("input", "param", "seed")]
    writes = [b.name for b in buffers.values() if b.role in ("output", "grad")]
    sizes = size_symbols(buffers.values())
    params = parameter_list(sizes, reads, writes, buffers, restrict=False)
    params = (params + ", " if params != "void" else "") + "void *workspace"
    size_params = ", ".join(f"int64_t {s}" for s in sizes) or "void"
    nbytes = {b.name: f"sizeof({b.ctype}) * (size_t)({printer.doprint_int(b.size)})"
              for b in temps}
    own = _own_temps(temps, calls)
    kept = [b for b in temps if not any(b in mine for mine in own)]
    scratch = f"convc_aligned({fname}_fft_scratch())"
    sizer = [f"/* bytes of workspace that {fname} needs: the tensors kept from step to step,",
             " * then the largest set that one step uses alone */",
             f"size_t {fname}_workspace({size_params})", "{"]
    if not temps:
        sizer += [f"{INDENT}(void){s};" for s in sizes] + [f"{INDENT}return 0;", "}"]
    else:
        total = f"\n{INDENT}    + ".join([f"convc_aligned({nbytes[b.name]})" for b in kept]
                                       + ([scratch] if ffts else [])) or "0"
        if not any(own):
            sizer += [f"{INDENT}return {total};", "}"]
        else:
            sizer += [f"{INDENT}size_t kept = {total};", f"{INDENT}size_t alone = 0;"]
            for mine in (m for m in own if m):
                step = " + ".join(f"convc_aligned({nbytes[b.name]})" for b in mine)
                sizer.append(f"{INDENT}alone = convc_max_size(alone, {step});")
            sizer += [f"{INDENT}return kept + alone;", "}"]
    comment = "\n".join(f" * {c_comment(line)}".rstrip() for line in header)
    lines = [f"/*{comment[2:]}\n */", f"int {fname}({params})", "{"]
    if temps:
        size_args = ", ".join(map(str, sizes))
        lines += [f"{INDENT}char *scratch = workspace ? workspace : "
                  f"convc_alloc({fname}_workspace({size_args}));",
                  f"{INDENT}if (!scratch)", f"{INDENT}{INDENT}return CONVC_ERR_NOMEM;",
                  f"{INDENT}char *next = scratch;"]
        lines += [f"{INDENT}{b.ctype} *{b.cname} = convc_take(&next, {nbytes[b.name]});"
                  for b in kept]
        if ffts:
            lines.append(f"{INDENT}void *fft_scratch = convc_take(&next, {scratch});")
        if any(own):
            lines += [f"{INDENT}/* each step's own tensors, one step at a time */",
                      f"{INDENT}char *alone = next;"]
    else:
        lines.append(f"{INDENT}(void)workspace; /* no intermediate tensors */")
    checked = any(fails for _, _, fails in calls)
    if checked:
        lines.append(f"{INDENT}int status = CONVC_OK;")
    if profile:
        lines.append(f"{INDENT}double started;")
    for i, ((name, args, fails), mine) in enumerate(zip(calls, own)):
        if mine:
            lines.append(f"{INDENT}next = alone;")
            lines += [f"{INDENT}{b.ctype} *{b.cname} = convc_take(&next, {nbytes[b.name]});"
                      for b in mine]
        if profile:
            lines.append(f"{INDENT}started = convc_seconds();")
        call = f"{name}({', '.join(args)})"
        if fails:
            lines += [f"{INDENT}if ((status = {call}) != CONVC_OK)",
                      f"{INDENT}{INDENT}goto done;"]
        else:
            lines.append(f"{INDENT}{call};")
        if profile:
            lines.append(f"{INDENT}{fname}_spent[{i}] += convc_seconds() - started;")
    if checked:
        lines.append("done:")
    if temps:
        lines += [f"{INDENT}if (!workspace)", f"{INDENT}{INDENT}convc_free(scratch);"]
    lines += [f"{INDENT}return {'status' if checked else 'CONVC_OK'};", "}"]
    text = "\n".join(sizer) + "\n\n" + "\n".join(lines)
    cdef = f"int {fname}({params});\nsize_t {fname}_workspace({size_params});"
    if profile:
        text = "\n".join(_timers(fname, len(calls))) + "\n\n" + text
        cdef += f"\nvoid {fname}_profile(double *seconds);"
    return text, cdef


def _timers(fname: str, count: int) -> list[str]:
    """The seconds each step of a profiled entry has taken, and the function reading them."""
    return [f"/* seconds spent in each step since {fname}_profile last read them */",
            f"static double {fname}_spent[{count}];", "",
            f"void {fname}_profile(double *seconds)", "{",
            f"{INDENT}for (int i = 0; i < {count}; ++i) {{",
            f"{INDENT}{INDENT}seconds[i] = {fname}_spent[i];",
            f"{INDENT}{INDENT}{fname}_spent[i] = 0.0;", f"{INDENT}}}", "}"]
