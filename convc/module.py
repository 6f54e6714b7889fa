"""Module: a compiled graph, called with numpy arrays.

Every array is checked (name, shape, dtype, and the value range an op asks of an integer
input) before any C runs; non-contiguous arrays are copied to contiguous ones. The C call
releases the GIL; its intermediate tensors live in a workspace kept per thread and reused
from call to call, so one module may serve several threads.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import sympy

from .build import Library
from .errors import ArgumentError, ExecutionError, GraphError
from .ops import ASSUMED_SIZE, BATCH, fmt
from .pipeline import Lowered

NUMPY = {"float32": np.float32, "float64": np.float64}
ALIGNMENT = 64  # CONVC_ALIGNMENT of the runtime: a cache line, one 512-bit vector


class Module:
    """A compiled network: ``module(**arrays)`` runs its forward pass.

    One output comes back as an array; several come back as a dict by name. A module
    compiled with ``grad`` also runs the backward pass and returns ``(outputs, grads)``,
    ``grads`` a dict from each differentiated tensor's name to its gradient. It takes the
    gradient of each output as ``grad:<output>``; one not given is 1 for a 0-d output (a
    loss) and 0 otherwise, so by default the gradients are those of the loss.
    """

    def __init__(self, lowered: Lowered, library: Library):
        self.lowered = lowered
        self._library = library
        self._ffi = library.module.ffi
        self._lib = library.module.lib
        self._entry = getattr(self._lib, lowered.entry)
        self._workspace_bytes = getattr(self._lib, lowered.entry + "_workspace")
        self._workspaces = threading.local()  # one per thread: calls share no scratch
        self._sizes = lowered.sizes  # computed once: sympy is slow on every call
        self._arguments = lowered.arguments()
        self._expected = [b for b in self._arguments if b.role in ("input", "param", "seed")]
        self._dims = {b.name: tuple(int(d) if d.is_Integer else d
                                    for d in map(sympy.sympify, b.shape))
                      for b in self._arguments}  # ints, or size symbols such as N
        self._array = {b.name: f"{b.ctype}[]" for b in self._arguments}  # cffi's view type
        self._default_seeds: dict[tuple, np.ndarray] = {}
        self.dtype = lowered.dtype
        self._ranges = _integer_ranges(lowered)
        # an output's given gradient is the argument grad:<output>, a seed buffer in the C
        self._seeds = {f"grad:{out}": seed for out, seed in lowered.seeds.items()}
        self._variable = [s for s in self._sizes if s != BATCH]  # x_H, x_W...: checked
        self._fitting: set[tuple[int, ...]] = set()  # sizes the graph was checked to fit
        self._calls: dict[tuple, tuple] = {}  # signatures of checked calls: `_prepared`
        self._outputs = [b.name for b in self._arguments if b.role == "output"]

    # -- what it is ------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """The generated C."""
        return self.lowered.source

    @property
    def library_path(self) -> Path:
        """The shared library this module runs."""
        return self._library.path

    @property
    def source_path(self) -> Path:
        """The C file kept beside the library."""
        return self._library.source_path

    @property
    def inputs(self) -> dict[str, tuple]:
        return self._shapes("input")

    @property
    def parameters(self) -> dict[str, tuple]:
        return self._shapes("param")

    @property
    def outputs(self) -> dict[str, tuple]:
        return self._shapes("output")

    def _shapes(self, role: str) -> dict[str, tuple]:
        return {b.name: b.shape for b in self.lowered.arguments() if b.role == role}

    def explain(self) -> str:
        """Per node: where it was written, shapes, equations, FLOPs, loops and C lines."""
        from .explain import explain

        return explain(self.lowered)

    def __repr__(self) -> str:
        return f"<convc.Module {self.lowered.graph.name!r} {self.dtype} at {self.library_path}>"

    # -- running ---------------------------------------------------------------------------

    def init_params(self, seed: int = 0, scheme: str = "he") -> dict[str, np.ndarray]:
        """Fresh parameters from ``seed``: zero biases, and weights drawn by ``scheme``.

        ``"he"``: normal with std ``sqrt(2 / fan_in)`` (for ReLU networks). ``"glorot"``:
        uniform on ``±sqrt(6 / (fan_in + fan_out))``. ``fan_in`` is what one output reads
        (input channels per group times the kernel), ``fan_out`` the first axis times the
        kernel.
        """
        if scheme not in ("he", "glorot"):
            raise ValueError(f"scheme must be 'he' or 'glorot', found {scheme!r}")
        rng = np.random.default_rng(seed)
        params = {}
        for b in self._arguments:
            if b.role != "param":
                continue
            shape = tuple(int(d) for d in b.shape)
            if b.name.endswith(".bias"):
                params[b.name] = np.zeros(shape, NUMPY[self.dtype])
                continue
            fan_in = self.lowered.graph.node(b.name).op.fan_in
            if scheme == "he":
                w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            else:
                fan_out = shape[0] * int(np.prod(shape[2:]))
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                w = rng.uniform(-limit, limit, shape)
            params[b.name] = w.astype(NUMPY[self.dtype])
        return params

    @property
    def sizes(self) -> list[str]:
        """The sizes given at call time, read from the arrays: ``N`` (the batch), and
        ``x_H``, ``x_W``... for an input ``x`` with other axes of size ``None``."""
        return [s.name for s in self._sizes]

    def __call__(self, **arrays):
        arrays = {self._seeds.get(k, k): v for k, v in arrays.items()}
        sizes, args, results = self._prepared(arrays)
        for name, shape in results:
            args[name] = np.empty(shape, NUMPY[self.dtype])
        ffi = self._ffi
        pointers = [sizes[s] for s in self._sizes]
        pointers += [ffi.from_buffer(self._array[b.name], args[b.name])
                     for b in self._arguments]
        pointers.append(self._workspace([sizes[s] for s in self._sizes]))
        status = self._entry(*pointers)
        if status != 0:
            message = ffi.string(self._lib.convc_error_message(status)).decode()
            raise ExecutionError(f"{self.lowered.entry} failed with code {status}: {message}")
        outputs = {n: args[n] for n in self._outputs}
        result = next(iter(outputs.values())) if len(outputs) == 1 else outputs
        if not self.lowered.wrt:
            return result
        return result, {n: args[buffer] for n, buffer in self.lowered.grads.items()}

    def _prepared(self, arrays: dict) -> tuple[dict, dict, list]:
        """The sizes, the arguments and the shapes of the results of a call on ``arrays``.
        Checked in full the first time arrays of their names, shapes, dtypes and layout
        come, and kept when none had to be converted: a call with the same again checks
        only the values its integer inputs must lie in."""
        key = _signature(arrays)
        known = self._calls.get(key)
        if known is not None:
            sizes, seeds, results = known
            for name in self._ranges.keys() & arrays.keys():
                self._check_values(name, arrays[name])
            return sizes, {**arrays, **seeds}, results
        given = self._with_default_seeds(arrays)
        sizes, args = self._check(given)
        self._check_fit(sizes)
        results = [(b.name, _evaluate(b.shape, sizes)) for b in self._arguments
                   if b.role in ("output", "grad")]
        if key is not None and all(args[k] is v for k, v in arrays.items()):
            if len(self._calls) > 64:
                self._calls.clear()
            seeds = {k: v for k, v in given.items() if k not in arrays}
            self._calls[key] = (sizes, seeds, results)
        return sizes, args, results

    def profile(self, repeat: int = 5, **arrays) -> dict[tuple[str, str], float]:
        """The median seconds each step ``(node, role)`` takes over ``repeat`` calls on
        ``arrays`` (after one call that warms caches and threads up); for a module compiled
        with ``profile=True``, whose C times its steps (in counters of the library, so
        profile from one thread at a time)."""
        if not self.lowered.profile:
            raise ValueError(f"module {self.lowered.graph.name!r} was compiled without step "
                             f"timers: compile it with profile=True to profile it")
        read = getattr(self._lib, self.lowered.entry + "_profile")
        seconds = self._ffi.new("double[]", len(self.lowered.steps))
        self(**arrays)
        read(seconds)
        runs = []
        for _ in range(repeat):
            self(**arrays)
            read(seconds)
            runs.append(list(seconds))
        medians = np.median(np.array(runs), axis=0)
        return {(s.node, s.role): float(t) for s, t in zip(self.lowered.steps, medians)}

    def example_arguments(self, batch: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
        """Random arrays for every input and parameter at batch size ``batch`` (other
        variable sizes at `convc.ops.ASSUMED_SIZE`; standard normal floats; integers drawn
        in the range their op accepts)."""
        rng = np.random.default_rng(seed)
        arrays = {}
        for b in self._expected:
            if b.role == "seed":
                continue
            shape = _evaluate(b.shape, {s: batch if s == BATCH else ASSUMED_SIZE
                                        for s in self._sizes})
            if b.ctype == "int64_t":
                lo, hi = self._ranges.get(b.name, (0, 2))
                arrays[b.name] = rng.integers(lo, hi, shape)
            else:
                arrays[b.name] = rng.standard_normal(shape).astype(NUMPY[self.dtype])
        return arrays

    def _workspace(self, sizes: list[int]):
        """This thread's workspace for the intermediate tensors, grown when too small."""
        need = self._workspace_bytes(*sizes)
        have = getattr(self._workspaces, "array", None)
        if have is None or have.nbytes < need + ALIGNMENT:
            have = self._workspaces.array = np.empty(need + ALIGNMENT, np.uint8)
        start = -have.ctypes.data % ALIGNMENT
        return self._ffi.cast("void *", have.ctypes.data + start)

    def _with_default_seeds(self, arrays: dict) -> dict:
        """Output gradients not given: 1 for a 0-d output (a loss), else 0; so by default
        the gradients are those of the sum of the 0-d outputs."""
        sizes = {}
        for b in self._arguments:
            if b.role == "input" and b.name in arrays:
                for want, got in zip(b.shape, np.shape(arrays[b.name])):
                    if isinstance(want, sympy.Symbol):
                        sizes.setdefault(want, got)
        if all(s in sizes for s in self._variable):
            self._check_fit(sizes)  # before a default seed is shaped by them
        for b in self._arguments:
            if b.role == "seed" and b.name not in arrays:
                arrays = {**arrays, b.name: self._default_seed(b, _evaluate(b.shape, sizes))}
        return arrays

    def _default_seed(self, b, shape: tuple[int, ...]) -> np.ndarray:
        """Made once per shape and kept, read-only (the C only reads seeds)."""
        seed = self._default_seeds.get((b.name, shape))
        if seed is None:
            fill = np.ones if not b.shape else np.zeros
            seed = self._default_seeds[(b.name, shape)] = fill(shape, NUMPY[self.dtype])
            seed.flags.writeable = False
        return seed

    def _check_fit(self, sizes: dict) -> None:
        """The variable sizes given must fit the graph: each node's shape inference, run on
        them, must accept them (a kernel no larger than the padded input...); checked once
        per set of sizes."""
        if not self._variable:
            return
        key = tuple(sizes[s] for s in self._variable)
        if key in self._fitting:
            return
        from .sizes import infer_at

        values = dict(zip(self._variable, key))
        for s, v in values.items():
            if v < 1:
                raise ArgumentError(f"size {s} must be at least 1, found {v}")
        try:
            infer_at(self.lowered.graph, values)
        except GraphError as e:
            given = ", ".join(f"{s} = {v}" for s, v in values.items())
            raise ArgumentError(f"module {self.lowered.graph.name!r} cannot run on sizes "
                                f"{given}: {e}") from None
        if len(self._fitting) > 4096:
            self._fitting.clear()
        self._fitting.add(key)

    def _check_values(self, name: str, a: np.ndarray) -> None:
        """The values an integer input must lie in (labels below the number of classes)."""
        if name in self._ranges and a.size:
            _check_range(name, a, *self._ranges[name])

    def _check(self, arrays: dict) -> tuple[dict, dict[str, np.ndarray]]:
        """Every argument's name, dtype and shape; the sizes (``N``, ``x_H``...) they give,
        the same in every argument that uses one."""
        expected = self._expected
        names = [b.name for b in expected]
        unknown = sorted(set(arrays) - set(names))
        missing = [n for n in names if n not in arrays]
        if unknown or missing:
            seeds = set(self._seeds.values())
            shown = [n for n in names if n not in seeds] + list(self._seeds)
            raise ArgumentError(
                f"module {self.lowered.graph.name!r} takes {', '.join(shown)}"
                + (f"; unexpected: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else ""))
        sizes: dict[sympy.Symbol, int] = {}
        bound_by: dict[sympy.Symbol, str] = {}
        args, derived = {}, []
        for b in expected:
            a = _as_array(b, arrays[b.name], self.dtype)
            if a.ndim != len(b.shape):
                raise ArgumentError(f"{b.name!r}: expected shape {fmt(b.shape)} "
                                    f"({len(b.shape)}-d), found {a.shape} ({a.ndim}-d)")
            for axis, (want, got) in enumerate(zip(self._dims[b.name], a.shape)):
                if isinstance(want, sympy.Symbol):
                    if want in sizes and sizes[want] != got:
                        raise ArgumentError(
                            f"{b.name!r}: size {want} is {sizes[want]} in "
                            f"{bound_by[want]!r} but {got} here (axis {axis} of {a.shape}, "
                            f"expected {fmt(b.shape)})")
                    if want != BATCH and got < 1:
                        raise ArgumentError(f"{b.name!r}: size {want} (axis {axis} of shape "
                                            f"{a.shape}) must be at least 1, found {got}")
                    sizes.setdefault(want, got)
                    bound_by.setdefault(want, b.name)
                elif not isinstance(want, int):
                    derived.append((b, axis, want, got, a.shape))  # once the sizes are known
                elif want != got:
                    raise ArgumentError(f"{b.name!r}: expected shape {fmt(b.shape)}, "
                                        f"found {a.shape} (axis {axis})")
            self._check_values(b.name, a)
            args[b.name] = np.ascontiguousarray(a)
        for s in self._sizes:
            sizes.setdefault(s, 0)
        for b, axis, want, got, shape in derived:
            value = _evaluate((want,), sizes)[0]
            if value != got:
                raise ArgumentError(f"{b.name!r}: axis {axis} must have {want} = {value} "
                                    f"cells, found {got} (shape {shape}, expected "
                                    f"{fmt(b.shape)})")
        return sizes, args


def _signature(arrays: dict) -> tuple | None:
    """What a call's checks depend on: each array's name, shape, dtype and layout (None
    when one is not a numpy array)."""
    if not all(type(v) is np.ndarray for v in arrays.values()):
        return None
    return tuple((k, v.shape, v.dtype.str, v.flags.c_contiguous)
                 for k, v in arrays.items())


def _evaluate(shape: tuple, sizes: dict) -> tuple[int, ...]:
    """A shape with its size symbols (the batch N) replaced by their values."""
    return tuple(int(d) if isinstance(d, int | sympy.Integer) else _dimension(d)(sizes)
                 for d in shape)


@functools.cache
def _dimension(d: sympy.Expr):
    """A symbolic dimension as a function of the sizes, built once (sympy is slow per call).

    A dimension with floor or ceiling divisions (``floor((x_H - 3)/2) + 1``) is evaluated
    exactly, by sympy, once per set of sizes: in floats ``5/3 - 2/3`` may fall below 1."""
    d = sympy.sympify(d)
    symbols = sorted(d.free_symbols, key=str)
    if d.has(sympy.floor, sympy.ceiling, sympy.Piecewise, sympy.Mod):
        exact = functools.lru_cache(maxsize=1024)(
            lambda values: int(d.xreplace(dict(zip(symbols, map(sympy.Integer, values))))))
        return lambda sizes: exact(tuple(sizes[s] for s in symbols))
    f = sympy.lambdify(symbols, d, "math")
    return lambda sizes: int(f(*(sizes[s] for s in symbols)))


def _as_array(buffer, value, dtype: str) -> np.ndarray:
    a = np.asarray(value)
    if buffer.ctype == "int64_t":
        if a.dtype.kind not in "iu" or not np.can_cast(a.dtype, np.int64):
            raise ArgumentError(f"{buffer.name!r}: expected an integer array (int64), "
                                f"found dtype {a.dtype}")
        return a.astype(np.int64, copy=False)
    if a.dtype != NUMPY[dtype]:
        raise ArgumentError(f"{buffer.name!r}: expected dtype {dtype}, found {a.dtype} "
                            f"(convert with .astype(np.{dtype}))")
    return a


def _check_range(name: str, a: np.ndarray, lo: int, hi: int) -> None:
    if lo <= a.min() and a.max() < hi:
        return
    bad = np.flatnonzero((a < lo) | (a >= hi))
    if bad.size:
        i = np.unravel_index(bad[0], a.shape)
        raise ArgumentError(f"{name!r}: values must lie in [{lo}, {hi}), found {a[i]} at "
                            f"index {tuple(int(j) for j in i)}")


def _integer_ranges(lowered: Lowered) -> dict[str, tuple[int, int]]:
    """The value range each consuming op asks of an integer input (labels < classes)."""
    ranges = {}
    for node in lowered.nodes:
        shapes = tuple(lowered.graph.node(i).shape for i in node.inputs)
        for pos, (lo, hi) in node.op.input_ranges(shapes).items():
            name = node.inputs[pos]
            old = ranges.get(name, (lo, hi))
            ranges[name] = (max(lo, old[0]), min(hi, old[1]))
    return ranges
