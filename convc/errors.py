"""The convc error tree: every error a user can meet derives from `ConvcError`.

Each class lists its usual causes. User errors never use `assert`.
"""

from __future__ import annotations


class ConvcError(Exception):
    """Base of every error raised by convc."""


class GraphError(ConvcError, ValueError):
    """A graph that cannot be built, raised at construction.

    Usual causes: mismatched ranks or shapes between a layer and its input, a kernel larger
    than the padded input, channels not divisible by groups, a non-positive stride, an unknown
    padding string, a duplicate or non-string name. The message names the node, the expected
    and the actual values, and the user's file:line.
    """


class DerivationError(ConvcError):
    """A comprehension that cannot be differentiated or solved (a non-affine access)."""


class ScheduleError(ConvcError):
    """A schedule step that does not apply to the loop nest; the message quotes the step."""


class CompileError(ConvcError):
    """The C compiler is missing or rejected the generated source.

    The message gives the compiler's first diagnostics and the path where the C was kept.
    """


class ArgumentError(ConvcError, ValueError):
    """An array passed to a compiled module has the wrong name, shape or dtype.

    Raised before any C runs.
    """


class ExecutionError(ConvcError):
    """The generated C returned an error code (for example, out of memory).

    The message comes from the one table that `runtime/convc_runtime.h` mirrors.
    """


class InternalError(ConvcError):
    """A bug in convc: an unexpected exception inside a compiler stage, which it names."""
