"""Convolution as a matrix (section 9.1): the dense matrix a small convolution multiplies by.

A convolution of one example is linear in its input, ``conv(x).ravel() == M @ x.ravel()``.
For a 1-D kernel ``M`` is Toeplitz (each row the kernel shifted by one, or by the stride);
for 2-D, doubly block Toeplitz; with ``circular=True`` the input wraps around instead of
reading zero padding, and the matrices are circulant and doubly block circulant. `conv_matrix`
builds ``M`` from the convolution's own comprehension: every point of its variables adds
the weight it reads (the kernel access) at the row of the output access and the column of
the input access, where that access lands inside the input (padding reads 0 and adds
nothing). Its transpose is the input gradient h (9.13), the transposed convolution.
"""

from __future__ import annotations

import numpy as np
import sympy

from .errors import GraphError
from .graph import Graph, user_source
from .ops import BATCH


def conv_matrix(weight, input_shape, stride=1, padding="valid", dilation=1, groups=1,
                flip=False, circular=False) -> np.ndarray:
    """The dense matrix ``M`` with ``conv(x).ravel() == M @ x.ravel()`` for one example.

    ``weight`` is a ``(K, C / groups, *kernel)`` array and ``input_shape`` the example's
    ``(C, *spatial)`` (1-D or 2-D are sizes for which a dense matrix is reasonable; 3-D
    works too); the other arguments are those of `Graph.conv`. ``M`` has
    ``K·prod(output spatial)`` rows and ``C·prod(spatial)`` columns. ``circular=True``
    reads the input periodically where the padding would read zeros (``padding="same"``
    then gives the circulant matrix of section 9.1).

    Examples
    --------
    >>> import numpy as np
    >>> conv_matrix(np.array([[[-1.0, 1.0]]]), (1, 4))
    array([[-1.,  1.,  0.,  0.],
           [ 0., -1.,  1.,  0.],
           [ 0.,  0., -1.,  1.]])
    """
    w = np.asarray(weight, dtype=np.float64)
    input_shape = tuple(input_shape)
    if w.ndim < 3 or len(input_shape) != w.ndim - 1:
        raise GraphError(f"conv_matrix: expected a (K, C/groups, *kernel) weight and a "
                         f"(C, *spatial) input shape of one less axis, found weight "
                         f"{w.shape} and input shape {input_shape} ({user_source()})")
    g = Graph("conv_matrix")
    x = g.input("x", (1, *input_shape))
    k = g.constant("w", w)
    y = g.conv(x, w.shape[0], w.shape[2:], stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=False, flip=flip, weight=k)
    node = g.node(y.name)
    shapes = tuple(g.node(i).shape for i in node.inputs)
    (comp,) = node.op.comprehensions(node.name, node.inputs, shapes, node.shape)
    return _matrix(comp, "x", "w", w, (1, *input_shape), node.shape, circular)


def _matrix(comp, x: str, w: str, weight: np.ndarray, x_shape, out_shape,
            circular: bool = False) -> np.ndarray:
    """Read ``out[o] = Σ x[a]·w[b]`` over every point of ``comp``'s variables: ``M[o, a]``
    gathers ``w[b]`` (an ``a`` outside the input wraps around when ``circular``, else adds
    nothing)."""
    accesses = {str(a.base.label): a for a in comp.body.atoms(sympy.Indexed)}
    if set(accesses) != {x, w} or comp.body != accesses[x] * accesses[w]:
        raise GraphError(f"conv_matrix: expected a body x·w, found {comp.body}")
    dims = [(d.var, int(d.start.subs(BATCH, 1)), int(d.stop.subs(BATCH, 1)))
            for d in comp.variables]
    grids = np.meshgrid(*(np.arange(lo, hi) for _, lo, hi in dims), indexing="ij")
    env = [v for v, _, _ in dims]

    def values(access):
        return [np.broadcast_to(sympy.lambdify(env, i, "numpy")(*grids), grids[0].shape)
                for i in access.indices]

    xi, wi, oi = values(accesses[x]), values(accesses[w]), values(comp.output)
    if circular:
        xi = xi[:2] + [i % size for i, size in zip(xi[2:], x_shape[2:])]
    inside = np.ones(grids[0].shape, bool)
    for i, size in zip(xi, x_shape):
        inside &= (i >= 0) & (i < size)
    rows = np.ravel_multi_index([i[inside] for i in oi[1:]], tuple(out_shape[1:]))
    cols = np.ravel_multi_index([i[inside] for i in xi[1:]], tuple(x_shape[1:]))
    m = np.zeros((int(np.prod(out_shape[1:])), int(np.prod(x_shape[1:]))))
    np.add.at(m, (rows, cols), weight[tuple(i[inside] for i in wi)])
    return m
