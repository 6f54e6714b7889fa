"""Rank-1 kernels (section 9.8): a given kernel that is an outer product runs as 1-D passes.

A graph-to-graph pass, run by `convc.pipeline.lower` before the comprehensions are built.
A convolution whose weight is a `constant` (or a weighted pool, whose window weights are
one) has a fixed kernel; where, for every output channel ``k`` and input channel ``c``,
that kernel is an outer product of one vector per spatial axis,

    W[k, c, m0, m1] = u0[k, c, m0] · u1[k, c, m1]

(and likewise on three axes), the node is replaced by a `SeparableConv` whose factors are
constants (``<node>.weight0``, ``<node>.weight1``…, baked into the C): one pass per axis,
about ``M0 + M1`` multiply-adds per output and channel pair instead of ``M0·M1``. The passes
are ordinary comprehensions, so the input gradient (9.13) is derived through them; the
constants are never differentiated.

Detection is numerical (`rank_one_factors`). On two axes the kernel of a pair is a matrix
``A = U·diag(σ)·Vᵀ`` (its SVD); it is an outer product exactly when ``σ1 = σ2 = … = 0``, and
``u0 = √σ0·U[:, 0]``, ``u1 = √σ0·V[:, 0]``. On three axes a tensor is of rank 1 exactly when
each of its unfoldings (the matrix of one axis against the others) is; each factor is the
leading singular vector of its axis's unfolding, the scale ``λ = W ×0 u0 ×1 u1 ×2 u2``
shared among them. Both are checked the same way: the outer product of the factors must
give back the kernel, ``‖W - u0 ∘ u1 ∘ …‖ <= (max(M)·ε + 64·ε64)·‖W‖`` for each pair (the
threshold of numpy's ``matrix_rank``, ``ε`` the machine epsilon of the module's dtype, plus
room for the float64 SVD's own rounding), so the passes compute what the dense kernel
would, to the dtype's precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GraphError
from .graph import Graph, Node
from .ops import is_size
from .ops.conv import Conv
from .ops.separable import SeparableConv
from .ops.source import Constant
from .ops.weighted_pool import WeightedPool

PAYS = 2.0
"""Under ``"auto"`` a node runs as passes when the dense kernel's multiply-adds per output
are at least this many times the passes' (and its dense form would not be a wide matrix
product, see `pays`): a 3×3 kernel (9 against 6) stays dense, a 5×5 (25 against 10) does
not."""


@dataclass(frozen=True)
class Separated:
    """A node the pass rewrote: what it was, and the constants it reads its factors from."""

    node: str
    kind: str  # the op it was: "conv" or "weighted_pool"
    kernel: str  # the constant holding its dense kernel
    factors: tuple[str, ...]

    def describe(self) -> str:
        return (f"separable: rank-1 constant kernel {self.kernel!r} as "
                f"{' ∘ '.join(repr(f) for f in self.factors)}, one 1-D pass per axis")


def rank_one_factors(kernel: np.ndarray, dtype: str = "float64") -> list[np.ndarray] | None:
    """One factor per spatial axis of a kernel ``(K, C', M0, M1[, M2])`` whose every pair
    ``[k, c]`` is an outer product, or None when some pair is not (see the module).

    The factors have shapes ``(K, C', M_a)``; a pair that is all zero gets zero factors.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.einsum("i,j->ij", [1.0, 2.0, 1.0], [1.0, 0.0, -1.0])[None, None]
    >>> u0, u1 = rank_one_factors(w)
    >>> np.allclose(np.einsum("kci,kcj->kcij", u0, u1), w)
    True
    >>> rank_one_factors(np.eye(3)[None, None]) is None
    True
    """
    w = np.asarray(kernel, dtype=np.float64)
    spatial = w.shape[2:]
    if len(spatial) < 2:
        return None
    pairs = w.reshape(-1, *spatial)
    factors = []
    for axis, size in enumerate(spatial):  # the leading left singular vector of unfolding a
        unfolded = np.moveaxis(pairs, axis + 1, 1).reshape(len(pairs), size, -1)
        u, _, _ = np.linalg.svd(unfolded, full_matrices=False)
        lead = u[:, :, 0]
        lead *= np.where(lead.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)  # sign: sum >= 0
        factors.append(lead)
    scale = pairs
    for f in factors:  # λ = W contracted with every unit factor
        scale = np.einsum("pm...,pm->p...", scale, f)
    root = np.abs(scale) ** (1.0 / len(spatial))
    factors = [f * root[:, None] for f in factors]
    factors[0] *= np.sign(scale)[:, None]
    rebuilt = factors[0]
    for f in factors[1:]:
        rebuilt = rebuilt[..., None] * f.reshape(len(pairs), *([1] * (rebuilt.ndim - 1)), -1)
    error = np.sqrt(((pairs - rebuilt) ** 2).reshape(len(pairs), -1).sum(axis=1))
    norm = np.sqrt((pairs ** 2).reshape(len(pairs), -1).sum(axis=1))
    tolerance = max(spatial) * np.finfo(dtype).eps + 64 * np.finfo(np.float64).eps
    if (error > tolerance * norm).any():
        return None
    return [f.reshape(*w.shape[:2], size) for f, size in zip(factors, spatial)]


def separate(graph, dtype: str, algorithm: str, tuned=None):
    """``graph`` with every convolution or weighted pool whose constant kernel is of rank 1
    run as 1-D passes, where asked (``algorithm="separable"``, the node's own, else the
    step's tuned choice, else the module's) or, under ``"auto"``, where it `pays`; and the
    `Separated` record of each node rewritten. A node that asks for it itself and cannot
    (a learned weight, a kernel of higher rank) raises a `GraphError` naming it."""
    rewrites: dict[str, tuple[Node, list[Node]]] = {}
    for node in graph.nodes():
        wanted = node.algorithm or (tuned or {}).get((node.name, "fwd"), {}).get(
            "algorithm", algorithm)
        forced = node.algorithm == "separable"
        if wanted not in ("separable", "auto"):
            continue
        found = _rewrite(graph, node, dtype, forced)
        if found and (wanted == "separable" or pays(graph, found[0])):
            rewrites[node.name] = found
    if not rewrites:
        return graph, {}
    read = {i for n in graph.nodes() if n.name not in rewrites for i in n.inputs}
    read |= {i for new, _ in rewrites.values() for i in new.inputs}
    dropped = {i for n in rewrites for i in graph.node(n).inputs
               if isinstance(graph.node(i).op, Constant)} - read
    out, records = Graph(graph.name), {}
    for node in graph.nodes():
        if node.name in dropped:
            continue
        if node.name in rewrites:
            new, constants = rewrites[node.name]
            for c in constants:
                out._insert(c)
            records[node.name] = Separated(node.name, node.op.kind, node.inputs[1],
                                           tuple(c.name for c in constants))
            node = new
        out._insert(node)
    out._outputs.extend(graph.outputs)
    return out, records


def pays(graph, node) -> bool:
    """Whether the passes are cheaper than the dense kernel: its multiply-adds per output
    and channel pair, ``Π M``, at least `PAYS` times the passes' (the pass along axis ``a``
    runs over the input rows of the axes before it, ``M_a·Π_{b<a} s_b``), and the dense
    form not a matrix product of 8 or more columns (output channels per group), which runs
    about ten times faster per multiply-add than the passes' loops."""
    op = node.op
    passes = sum(m * math.prod(op.stride[:a]) for a, m in enumerate(op.kernel))
    per_group = graph.node(node.inputs[0]).shape[1] // op.groups
    wide = op.channels // op.groups >= 8 and per_group * math.prod(op.kernel) >= 8
    return not wide and math.prod(op.kernel) >= PAYS * passes


def _rewrite(graph, node, dtype: str, forced: bool):
    """The `SeparableConv` node and its factor constants for ``node``, or None where the
    node cannot run so (then, if ``forced``, a `GraphError` saying why)."""
    op = node.op
    if type(op) not in (Conv, WeightedPool) or len(op.stride) < 2:
        if forced and not isinstance(op, SeparableConv) and not (
                type(op) is Conv and len(op.stride) == 1):
            raise _refuse(node, f"it applies to a convolution or weighted pool over 2 or 3 "
                                f"axes, not to a {op.kind}")
        return None
    kernel_node = graph.node(node.inputs[1])
    if not isinstance(kernel_node.op, Constant):
        if forced:
            raise _refuse(node, f"its weight {kernel_node.name!r} is a "
                                f"{kernel_node.op.kind}, not a constant: a learned kernel "
                                f"is made separable by conv(..., separable=True)")
        return None
    cin = graph.node(node.inputs[0]).shape[1]
    if isinstance(op, Conv) and op.bias not in (False, "shared"):
        if forced:
            raise _refuse(node, f"the passes add a shared bias only, not a {op.bias} one")
        return None
    if not is_size(cin):  # a weighted pool over a variable number of channels
        return None
    kernel = _dense_kernel(op, kernel_node, int(cin))
    factors = rank_one_factors(kernel, dtype)
    if factors is None:
        if forced:
            raise _refuse(node, f"its kernel {kernel_node.name!r} is not of rank 1 for every "
                                f"channel pair at {dtype} precision ({_worst(kernel)})")
        return None
    taken = set(graph._nx.nodes)
    constants = []
    for a, f in enumerate(factors):
        name = _fresh(f"{node.name}.weight{a}", taken)
        taken.add(name)
        constants.append(Node(name, Constant(dims=f.shape, values=tuple(f.ravel().tolist())),
                              (), f.shape, "float", kernel_node.source))
    rank = len(factors)
    if isinstance(op, Conv):
        sep = SeparableConv(channels=op.channels, kernel=op.kernel, stride=op.stride,
                            dilation=op.dilation, padding=op.padding, groups=op.groups,
                            bias=op.bias)
        bias = node.inputs[2:3] if op.bias else ()
    else:
        sep = SeparableConv(channels=int(cin), kernel=op.window, stride=op.stride,
                            dilation=(1,) * rank, padding=op.padding, groups=int(cin),
                            bias=False)
        bias = ()
    inputs = (node.inputs[0], *(c.name for c in constants), *bias)
    return Node(node.name, sep, inputs, node.shape, node.dtype, node.source,
                node.algorithm), constants


def _dense_kernel(op, constant, cin: int) -> np.ndarray:
    """The kernel ``(K, C', *M)`` that each channel pair applies, as the op reads it: a
    convolution's flipped for ``flip`` and masked by its ``connections``; a weighted pool's
    window, the same for every channel."""
    w = np.array(constant.op.values).reshape(constant.shape)
    if isinstance(op, WeightedPool):
        return np.broadcast_to(w, (cin, 1, *w.shape))
    if op.flip:
        w = w[(..., *[slice(None, None, -1)] * op.rank)]
    if op.connections is not None:
        table = np.array(op.connections, dtype=np.float64)
        kg, cg = op.channels // op.groups, cin // op.groups
        mask = np.stack([table[k, (k // kg) * cg:(k // kg + 1) * cg]
                         for k in range(op.channels)])
        w = w * mask.reshape(*mask.shape, *[1] * op.rank)
    return w


def _worst(kernel: np.ndarray) -> str:
    """The channel pair and axis whose unfolding has the largest second singular value
    relative to its first, for the refusal's message."""
    pairs = kernel.reshape(-1, *kernel.shape[2:])
    worst = (-1.0, 0, 0)
    for axis, size in enumerate(kernel.shape[2:]):
        unfolded = np.moveaxis(pairs, axis + 1, 1).reshape(len(pairs), size, -1)
        s = np.linalg.svd(unfolded, compute_uv=False)
        ratio = s[:, 1] / np.maximum(s[:, 0], np.finfo(np.float64).tiny)
        worst = max(worst, (float(ratio.max()), int(np.argmax(ratio)), axis))
    ratio, pair, axis = worst
    k, c = divmod(pair, kernel.shape[1])
    return (f"channel pair k={k}, c={c} has σ1/σ0 = {ratio:.3g} along spatial axis {axis}")


def _fresh(name: str, taken: set[str]) -> str:
    unique, i = name, 0
    while unique in taken:
        i += 1
        unique = f"{name}~{i}"
    return unique


def _refuse(node, why: str) -> GraphError:
    return GraphError(f"node {node.name!r} ({node.source}): algorithm='separable' cannot "
                      f"run it as 1-D passes: {why}")
