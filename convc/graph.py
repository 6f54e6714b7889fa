"""Graph layer: the network a user writes, as a `networkx.DiGraph` of op nodes.

Every node produces one tensor named like the node. Inputs, parameters and layers are all
nodes; a layer that owns parameters (``conv``, ``dense``) creates them as ``<node>.weight`` and
``<node>.bias``. Shapes are inferred and checked when a node is added, so a bad graph fails
at the line that built it, with a `GraphError` naming the node and both shapes.

A dimension is a positive ``int`` or the batch symbol ``N`` (written ``None`` by the user,
allowed on the leading axis): the batch size is given at call time.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import networkx as nx

from .contract import ALGORITHMS
from .errors import GraphError
from .ops import Op, OpContext, fmt
from .ops.activation import Relu, Sigmoid, Tanh
from .ops.conv import Conv
from .ops.conv_transpose import ConvTranspose
from .ops.dense import Dense
from .ops.elementwise import Add
from .ops.loss import MeanSquaredError
from .ops.pool import GlobalPool, Pool
from .ops.pool_regions import AdaptivePool, ChannelPool
from .ops.reshape import Flatten
from .ops.separable import SeparableConv
from .ops.softmax import Softmax, SoftmaxCrossEntropy
from .ops.source import Constant, Input, Param
from .ops.tiled import LocallyConnected, TiledConv
from .ops.weighted_pool import WeightedPool
from .sizes import check_size_names

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the graph: its op, the names of its inputs, and its output tensor."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[Any, ...]
    dtype: str
    source: str
    algorithm: str | None = None  # how its contractions run, if not the module's choice

    @property
    def is_source(self) -> bool:
        return isinstance(self.op, (Input, Param, Constant))


@dataclass(frozen=True, slots=True)
class Tensor:
    """A handle on a node's output, passed from one layer call to the next."""

    graph: Graph
    name: str

    @property
    def shape(self) -> tuple[Any, ...]:
        return self.graph.node(self.name).shape

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, shape={fmt(self.shape)})"


def user_source() -> str:
    """The ``file:line`` of the first stack frame outside the convc package."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


class Graph:
    """A network under construction.

    Examples
    --------
    >>> g = Graph("tiny")
    >>> x = g.input("x", (None, 1, 8, 8))
    >>> y = g.relu(g.conv(x, channels=4, kernel=3))
    >>> g.output(y)
    >>> y.shape
    (N, 4, 6, 6)
    >>> g.parameters()
    {'conv0.weight': (4, 1, 3, 3), 'conv0.bias': (4,)}
    """

    def __init__(self, name: str = "net"):
        if not isinstance(name, str) or not name:
            raise GraphError(f"graph name must be a non-empty string, got {name!r} "
                             f"({user_source()})")
        self.name = name
        self._nx = nx.DiGraph()
        self._outputs: list[str] = []

    # -- reading ---------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        if name not in self._nx:
            raise GraphError(f"graph {self.name!r} has no node {name!r}")
        return self._nx.nodes[name]["node"]

    def nodes(self) -> list[Node]:
        """All nodes in a topological order that keeps the order they were added in."""
        order = {n: i for i, n in enumerate(self._nx.nodes)}
        names = nx.lexicographical_topological_sort(self._nx, key=order.__getitem__)
        return [self.node(n) for n in names]

    def inputs(self) -> dict[str, tuple[Any, ...]]:
        """Graph inputs (not parameters) and their shapes."""
        return {n.name: n.shape for n in self.nodes() if isinstance(n.op, Input)}

    def parameters(self) -> dict[str, tuple[Any, ...]]:
        """Parameters created by the layers, with their shapes."""
        return {n.name: n.shape for n in self.nodes() if isinstance(n.op, Param)}

    def tensor(self, name: str) -> Tensor:
        """A handle on the tensor of a node, parameters included (``"conv0.weight"``)."""
        self.node(name)
        return Tensor(self, name)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self._nx.number_of_nodes()} nodes)"

    # -- building --------------------------------------------------------------------------

    def input(self, name: str, shape: tuple, dtype: str = "float") -> Tensor:
        """A graph input. ``None`` on the leading axis is the batch size ``N``, on another
        axis a size of this input (``x_H``, ``x_W``; section 9.7), all given at call time."""
        self._check_name(name)
        ctx = OpContext(name, (), (), user_source())
        op = Input.from_args(ctx, shape=shape, dtype=dtype)
        shape, dtype = op.infer(ctx)
        node = Node(name, op, (), shape, dtype, ctx.source)
        check_size_names(self, node)
        return self._insert(node)

    def output(self, *tensors: Tensor) -> None:
        """Mark tensors as outputs of the compiled module, in this order."""
        for t in tensors:
            self._check_tensor(t, "output")
            if t.name in self._outputs:
                raise GraphError(f"{t.name!r} is already an output of graph {self.name!r} "
                                 f"({user_source()})")
            if self.node(t.name).is_source:
                raise GraphError(f"output {t.name!r} is a graph input or parameter; an output "
                                 f"must be computed by a layer ({user_source()})")
            self._outputs.append(t.name)

    def conv(
        self,
        x: Tensor,
        channels: int,
        kernel,
        stride=1,
        padding="valid",
        dilation=1,
        groups: int = 1,
        bias: bool | str = True,
        weight: Tensor | None = None,
        name: str | None = None,
        algorithm: str | None = None,
        bias_tiles=None,
        separable: bool = False,
        flip: bool = False,
        connections=None,
    ) -> Tensor:
        """Convolution (cross-correlation, equation 9.7) over 1, 2 or 3 spatial axes.

        ``padding`` is ``"valid"``, ``"same"``, ``"full"``, an int, a per-axis tuple of ints,
        or a per-axis tuple of ``(before, after)`` pairs. ``"same"`` keeps the size at
        stride 1 (the odd cell of an even kernel's padding goes after); at stride ``s`` it
        gives ``ceil(size / s)`` outputs, as TensorFlow does. ``weight`` reuses an
        existing parameter instead of creating ``<node>.weight`` (shared weights).
        ``algorithm`` (``"gemm"``, ``"direct"``, ``"fft"``, ``"winograd"``, ``"col2im"``,
        ``"blocked"``, ``"separable"`` or ``"auto"``) overrides, for this node and its gradients, the
        module's choice of how they run (see `convc.lower`); ``"separable"`` runs a
        `constant` weight of rank 1 for every channel pair as one 1-D pass per axis and
        refuses any other weight (`convc.rank`), which ``"auto"`` does where it pays.
        ``bias`` (section 9.5) is ``"shared"`` (``True``: one per channel), ``"untied"``
        (one per channel and output position, shape ``(channels, out...)``), ``"tiled"``
        (``bias_tiles`` biases cycled along each axis, shape ``(channels, bias_tiles...)``)
        or ``False``.
        ``separable=True`` learns the kernel as an outer product of one 1-D factor per axis,
        ``<node>.weight0``, ``<node>.weight1``… of shape ``(channels, in_channels / groups,
        kernel[a])``, and runs it as one pass per axis (section 9.8).
        ``weight`` may also be a `constant` (a fixed kernel). ``flip=True`` computes true
        convolution (equations 9.4-9.5, the kernel flipped) instead of cross-correlation.
        ``connections``, a boolean ``(channels, in_channels)`` array, connects output
        channel k to input channel c only where ``connections[k, c]`` (figure 9.15).
        """
        if separable:
            if weight is not None or flip or connections is not None or bias_tiles is not None \
                    or bias not in (True, False, "shared"):
                raise GraphError(f"a separable convolution learns its own 1-D factors and a "
                                 f"shared bias; it takes no weight, flip, connections, or "
                                 f"untied or tiled bias ({user_source()})")
            return self._layer(SeparableConv, (x,), name, None, algorithm, channels=channels,
                               kernel=kernel, stride=stride, padding=padding,
                               dilation=dilation, groups=groups, bias=bias)
        return self._layer(Conv, (x,), name, {"weight": weight}, algorithm, channels=channels,
                           kernel=kernel, stride=stride,
                           padding=padding, dilation=dilation, groups=groups, bias=bias,
                           bias_tiles=bias_tiles, flip=flip, connections=connections)

    def conv_transpose(
        self,
        x: Tensor,
        channels: int,
        kernel,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        output_padding=0,
        output_size=None,
        weight: Tensor | None = None,
        name: str | None = None,
        algorithm: str | None = None,
    ) -> Tensor:
        """Transposed convolution (section 9.5): the input gradient of the convolution with
        the same kernel, stride, dilation, padding and groups, as a layer.

        The weight is ``(in_channels, channels / groups, *kernel)``. The output has
        ``(size - 1)·stride - padding + dilation·(kernel - 1) + 1 + output_padding`` cells
        per axis; ``output_size`` gives it directly instead of ``output_padding``.
        ``weight`` reuses a parameter (a convolution's, for the tied autoencoder of 9.14).
        ``algorithm`` as for `conv`.
        """
        return self._layer(ConvTranspose, (x,), name, {"weight": weight}, algorithm,
                           channels=channels,
                           kernel=kernel,
                           stride=stride, padding=padding, dilation=dilation, groups=groups,
                           bias=bias, output_padding=output_padding, output_size=output_size)

    def max_pool(self, x, window, stride=None, padding=0, dilation=1, ceil_mode=False,
                 name=None) -> Tensor:
        """Max pooling; ``ceil_mode`` keeps a last partial window instead of dropping it."""
        return self._layer(Pool, (x,), name, kind="max", window=window, stride=stride,
                           padding=padding, dilation=dilation, ceil_mode=ceil_mode)

    def avg_pool(self, x, window, stride=None, padding=0, dilation=1, ceil_mode=False,
                 count_include_pad=True, name=None) -> Tensor:
        """Average pooling; ``count_include_pad`` counts the zero-padded cells."""
        return self._layer(Pool, (x,), name, kind="avg", window=window, stride=stride,
                           padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                           count_include_pad=count_include_pad)

    def lp_pool(self, x, window, p=2, stride=None, padding=0, dilation=1, ceil_mode=False,
                name=None) -> Tensor:
        """Lp-norm pooling, ``(sum |x|^p)^(1/p)`` over each window (L2 by default)."""
        return self._layer(Pool, (x,), name, kind="lp", window=window, stride=stride,
                           padding=padding, dilation=dilation, ceil_mode=ceil_mode, p=p)

    def global_max_pool(self, x: Tensor, name: str | None = None) -> Tensor:
        """Maximum over all spatial positions: ``(N, C, ...)`` to ``(N, C)``."""
        return self._layer(GlobalPool, (x,), name, kind="max")

    def global_avg_pool(self, x: Tensor, name: str | None = None) -> Tensor:
        """Mean over all spatial positions: ``(N, C, ...)`` to ``(N, C)``."""
        return self._layer(GlobalPool, (x,), name, kind="avg")

    # -- constants, weighted pooling (figure 9.15, section 9.3) -----------------------------

    def constant(self, name: str, array) -> Tensor:
        """A fixed float tensor: not an input a caller passes, not a parameter, never
        differentiated. Its values are baked into the generated C (see
        `convc.ops.source.Constant`); use it as a layer's ``weight=`` or as an operand.

        Examples
        --------
        >>> import numpy as np
        >>> g = Graph("edges")
        >>> k = g.constant("k", np.array([[[[-1.0, 1.0]]]]))
        >>> g.conv(g.input("x", (None, 1, 4, 5)), 1, (1, 2), weight=k, bias=False).shape
        (N, 1, 4, 4)
        """
        self._check_name(name)
        ctx = OpContext(name, (), (), user_source())
        op = Constant.from_args(ctx, array=array)
        shape, dtype = op.infer(ctx)
        return self._insert(Node(name, op, (), shape, dtype, ctx.source))

    def constants(self) -> dict[str, tuple[Any, ...]]:
        """Constant tensors, with their shapes."""
        return {n.name: n.shape for n in self.nodes() if isinstance(n.op, Constant)}

    def weighted_pool(self, x: Tensor, window, stride=None, padding=0, weights="gaussian",
                      sigma: float = 1.0, name: str | None = None) -> Tensor:
        """Weighted average pooling (section 9.3): each window's cells weighted by their
        distance from its centre, ``exp(-r² / (2·sigma²))``, or by ``weights``, an array of
        the window's shape; either way divided by their sum. Padded cells read 0 and keep
        their weight (as ``avg_pool(count_include_pad=True)``). The weights are a constant
        ``<node>.weights``.
        """
        return self._layer(WeightedPool, (x,), name, window=window, stride=stride,
                           padding=padding, weights=weights, sigma=sigma)

    def global_lp_pool(self, x: Tensor, p=2, name: str | None = None) -> Tensor:
        """Lp norm over all spatial positions, ``(sum |x|^p)^(1/p)``: ``(N, C, ...)`` to
        ``(N, C)`` (section 9.3)."""
        return self._layer(GlobalPool, (x,), name, kind="lp", p=p)

    def channel_pool(self, x: Tensor, group: int, kind: str = "max",
                     name: str | None = None) -> Tensor:
        """Max (``kind="max"``) or mean (``"avg"``) over each run of ``group`` consecutive
        channels, at every position: ``(N, C, ...)`` to ``(N, C / group, ...)``, for any
        number of spatial axes, ``(N, C)`` included (cross-channel pooling, figure 9.9)."""
        return self._layer(ChannelPool, (x,), name, kind=kind, pieces=group)

    def maxout(self, x: Tensor, pieces: int, name: str | None = None) -> Tensor:
        """Maxout (section 9.3, figure 9.9): the maximum of each run of ``pieces``
        consecutive channels, ``(N, C, ...)`` to ``(N, C / pieces, ...)``."""
        return self._layer(ChannelPool, (x,), name, kind="max", pieces=pieces)

    def adaptive_max_pool(self, x: Tensor, output_size, name: str | None = None) -> Tensor:
        """Max over a fixed grid of ``output_size`` cells whatever the input's size (section
        9.3): along an axis of ``I`` cells, output ``i`` covers ``floor(i·I/O) <= r <
        ceil((i + 1)·I/O)``. ``output_size`` is an int or one int (or None: keep the axis)
        per spatial axis, at most the input's size."""
        return self._layer(AdaptivePool, (x,), name, kind="max", output_size=output_size)

    def adaptive_avg_pool(self, x: Tensor, output_size, name: str | None = None) -> Tensor:
        """Mean over a fixed grid of ``output_size`` cells whatever the input's size (section
        9.3), each cell divided by its own count; cells as in `adaptive_max_pool`."""
        return self._layer(AdaptivePool, (x,), name, kind="avg", output_size=output_size)

    def locally_connected(self, x: Tensor, channels: int, kernel, stride=1, padding=0,
                          dilation=1, bias: bool | str = True, bias_tiles=None,
                          name: str | None = None, algorithm: str | None = None) -> Tensor:
        """Locally connected layer (unshared convolution, equation 9.9): a kernel of its
        own at every output position, over 1, 2 or 3 spatial axes.

        The weight is ``(out..., channels, in_channels, *kernel)``: the kernel of output
        position ``i`` is ``weight[i]``, so the layer runs as a batch of matrix products
        over positions. ``padding`` as for `conv`. ``bias`` is ``"shared"`` (``True``, one
        per channel), ``"untied"`` (one per channel and position, ``(channels, out...)``,
        the chapter's natural choice here), ``"tiled"`` (with ``bias_tiles``) or ``False``.
        """
        return self._layer(LocallyConnected, (x,), name, None, algorithm, channels=channels,
                           kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                           bias=bias, bias_tiles=bias_tiles)

    def tiled_conv(self, x: Tensor, channels: int, kernel, tiles, stride=1, padding=0,
                   dilation=1, bias: bool | str = True, name: str | None = None,
                   algorithm: str | None = None) -> Tensor:
        """Tiled convolution (equation 9.10): ``tiles`` kernels (an int or one per spatial
        axis) cycled through space, output position ``i`` using kernel ``i mod tiles``.

        ``tiles=1`` is a convolution and ``tiles`` equal to the output size a locally
        connected layer. The weight is ``(tiles..., channels, in_channels, *kernel)``.
        ``bias`` is ``"shared"`` (``True``), ``"tiled"`` (cycled like the kernels,
        ``(channels, tiles...)``), ``"untied"`` or ``False``.
        """
        return self._layer(TiledConv, (x,), name, None, algorithm, channels=channels,
                           kernel=kernel, tiles=tiles, stride=stride, padding=padding,
                           dilation=dilation, bias=bias)

    def relu(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._layer(Relu, (x,), name)

    def sigmoid(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._layer(Sigmoid, (x,), name)

    def tanh(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._layer(Tanh, (x,), name)

    def add(self, a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
        return self._layer(Add, (a, b), name)

    def flatten(self, x: Tensor, name: str | None = None) -> Tensor:
        """``(N, C, ...)`` to ``(N, C * ...)``, in row-major order."""
        return self._layer(Flatten, (x,), name)

    def dense(self, x: Tensor, units: int, bias: bool = True, name: str | None = None,
              algorithm: str | None = None):
        """Fully connected layer ``y = x W^T + b`` on ``(N, features)``."""
        return self._layer(Dense, (x,), name, None, algorithm, units=units, bias=bias)

    def softmax(self, x: Tensor, name: str | None = None) -> Tensor:
        """Softmax over axis 1 (the channels), at every other index."""
        return self._layer(Softmax, (x,), name)

    def mean_squared_error(self, a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
        """Mean over every element (batch included) of ``(a - b)²``; a 0-d tensor."""
        return self._layer(MeanSquaredError, (a, b), name)

    def softmax_cross_entropy(self, logits: Tensor, labels: Tensor, name: str | None = None):
        """Mean over the batch of ``-log softmax(logits)[n, labels[n]]``; a 0-d tensor."""
        return self._layer(SoftmaxCrossEntropy, (logits, labels), name)

    # -- internals -------------------------------------------------------------------------

    def _layer(self, cls: type[Op], args: tuple[Tensor, ...], name: str | None,
               shared: dict[str, Tensor | None] | None = None, algorithm: str | None = None,
               **attrs):
        """Build an op from the user's arguments, create its parameters, add its node.

        ``shared`` maps a parameter role (``"weight"``) to an existing parameter to use
        instead of a new one: weight sharing, whose gradients add up. ``algorithm``
        overrides, for this node, how the module runs its contractions.
        """
        name = self._fresh_name(cls.kind) if name is None else name
        self._check_name(name)
        for t in args:
            self._check_tensor(t, f"node {name!r} ({cls.kind})")
        ctx = self._context(name, args)
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise ctx.error(f"algorithm must be one of {ALGORITHMS}, found {algorithm!r}")
        op = cls.from_args(ctx, **attrs)
        specs = op.parameters(ctx)  # validates the inputs before anything is added
        given = {role: t for role, t in (shared or {}).items() if t is not None}
        for spec in specs:
            if spec.role in given:
                self._check_shared(ctx, spec, given[spec.role])
            else:
                self._check_name(f"{name}.{spec.role}")
        full = OpContext(name, ctx.shapes + tuple(s.shape for s in specs),
                         ctx.dtypes + ("float",) * len(specs), ctx.source)
        shape, dtype = op.infer(full)
        params = []
        for spec in specs:
            if spec.role in given:
                params.append(given[spec.role].name)
                continue
            params.append(f"{name}.{spec.role}")
            made = (Param(fan_in=spec.fan_in) if spec.value is None
                    else Constant.from_args(ctx, array=spec.value))
            self._insert(Node(params[-1], made, (), spec.shape, "float", ctx.source))
        inputs = tuple(t.name for t in args) + tuple(params)
        return self._insert(Node(name, op, inputs, shape, dtype, ctx.source, algorithm))

    def _check_shared(self, ctx: OpContext, spec, tensor) -> None:
        self._check_tensor(tensor, f"{spec.role} of {ctx.name}")
        node = self.node(tensor.name)
        if spec.value is not None or not isinstance(node.op, Param | Constant):
            raise ctx.error(f"a shared {spec.role} must be a parameter or a constant, "
                            f"found {tensor.name!r} "
                            f"({node.op.kind})")
        if node.shape != spec.shape:
            raise ctx.error(f"shared {spec.role} {tensor.name!r} has shape {fmt(node.shape)}, "
                            f"expected {fmt(spec.shape)}")

    def _context(self, name: str, args: tuple[Tensor, ...]) -> OpContext:
        nodes = [self.node(t.name) for t in args]
        return OpContext(name, tuple(n.shape for n in nodes), tuple(n.dtype for n in nodes),
                         user_source())

    def _insert(self, node: Node) -> Tensor:
        self._nx.add_node(node.name, node=node)
        for src in node.inputs:
            self._nx.add_edge(src, node.name)
        return Tensor(self, node.name)

    def _fresh_name(self, kind: str) -> str:
        """The first of ``kind0``, ``kind1``… not taken (a refused call takes none)."""
        i = 0
        while f"{kind}{i}" in self._nx:
            i += 1
        return f"{kind}{i}"

    def _check_name(self, name: object) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"a node name must be a non-empty string, got {name!r} "
                             f"({user_source()})")
        if name in self._nx:
            raise GraphError(f"duplicate node name {name!r}: graph {self.name!r} already "
                             f"has a node of that name ({user_source()})")

    def _check_tensor(self, t: object, where: str) -> None:
        if isinstance(t, Tensor) and t.graph is not self:
            raise GraphError(f"{where}: expected a Tensor of graph {self.name!r}, got tensor "
                             f"{t.name!r} of graph {t.graph.name!r} ({user_source()})")
        if not isinstance(t, Tensor):
            raise GraphError(f"{where}: expected a Tensor of graph {self.name!r}, got {t!r} "
                             f"({user_source()})")
