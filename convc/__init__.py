"""convc: a symbolic compiler for convolutional networks.

Define a network as a `Graph`, then `compile` it to a shared library and call the
returned `Module` with numpy arrays; `lower` shows every intermediate representation.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .build import clear_cache
from .errors import (
    ArgumentError,
    CompileError,
    ConvcError,
    DerivationError,
    ExecutionError,
    GraphError,
    InternalError,
    ScheduleError,
)
from .graph import Graph, Tensor
from .matrix import conv_matrix
from .module import Module
from .pipeline import Lowered, lower


def compile(graph: Graph, dtype: str = "float32", *, grad=False, algorithm: str = "auto",
            num_threads: int | None = None, tune: bool | int = False, profile: bool = False,
            sanitize: bool = False, sizes: dict[str, int] | None = None) -> Module:
    """Compile ``graph`` to C, build it into a shared library and load it. The lowering and
    the library are both kept in the cache directory (`convc.memo`, `convc.build`): compiling
    the same graph again, in this process or another, reads them back.

    ``dtype`` is ``"float32"`` or ``"float64"``. ``grad=True`` adds the backward pass for
    every parameter (or give a list of parameters and inputs); see `Module`.
    ``algorithm`` (``"auto"``, ``"gemm"``, ``"direct"``, ``"fft"``, ``"winograd"``,
    ``"col2im"``, ``"blocked"`` or ``"separable"``) says how convolutions, their gradients
    and dense layers run; ``num_threads`` how many threads it may use (default: every
    core); see `lower`.
    ``tune=True`` times each step with every algorithm on this machine (at a batch of 32,
    or of ``tune`` when it is an int) and runs each with the faster; the times are cached
    per machine and step (see `convc.tune`) and shown by `Module.explain`.
    ``profile=True`` adds step timers to the C, read by `Module.profile`.
    ``sanitize=True`` builds with AddressSanitizer and UBSan (the host process must
    preload their runtimes).
    ``sizes`` fixes variable sizes (section 9.7): an input ``(None, 3, None, None)`` named
    ``x`` has the sizes ``N``, ``x_H`` and ``x_W``, given at call time; with
    ``sizes={"x_H": 28, "x_W": 28}`` the module is compiled for those alone, as if the
    graph had been built with them (constant loop bounds, faster code); see `lower`.

    Examples
    --------
    >>> import numpy as np, convc
    >>> g = convc.Graph("doc")
    >>> x = g.input("x", (None, 1, 5))
    >>> g.output(g.conv(x, channels=1, kernel=2, bias=False))
    >>> net = convc.compile(g)
    >>> net(x=np.ones((1, 1, 5), np.float32), **{"conv0.weight": np.ones((1, 1, 2), np.float32)})
    array([[[2., 2., 2., 2.]]], dtype=float32)
    """
    from . import memo
    from .build import build_library

    tuned = None
    if tune:
        from .tune import DEFAULT_BATCH, tune as measure

        batch = DEFAULT_BATCH if tune is True else tune
        tuned = measure(graph, dtype, grad, num_threads, batch, sizes=sizes)
    lowered = memo.lowered(graph, dtype, grad=grad, algorithm=algorithm,
                           num_threads=num_threads, profile=profile, tuned=tuned, sizes=sizes)
    cdef = lowered.cdef + "\nconst char *convc_error_message(int code);"
    return Module(lowered, build_library(lowered.source, cdef, sanitize=sanitize))


__all__ = [
    "ArgumentError", "CompileError", "ConvcError", "DerivationError", "ExecutionError",
    "Graph", "GraphError", "InternalError", "Lowered", "Module", "ScheduleError", "Tensor",
    "clear_cache", "compile", "conv_matrix", "lower",
]
