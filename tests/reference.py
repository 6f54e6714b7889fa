"""Independent numpy references for the op tests: plain loops and slices, no convc code.

Every function takes and returns float64 arrays laid out ``(N, C, spatial...)``. They follow
the conventions of the README (padding modes, ceil mode, the average's divisor) as written
there, and are kept short enough to check by eye.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def extent(kernel: int, dilation: int) -> int:
    """Cells spanned by a dilated kernel or window."""
    return dilation * (kernel - 1) + 1


def padding_pairs(padding, sizes, kernels, strides, dilations) -> list[tuple[int, int]]:
    """Per-axis ``(before, after)`` padding for a mode string, an int, ints or pairs."""
    rank = len(sizes)
    if padding == "valid":
        return [(0, 0)] * rank
    if padding == "full":
        return [(extent(k, d) - 1,) * 2 for k, d in zip(kernels, dilations)]
    if padding == "same":
        pairs = []
        for size, k, s, d in zip(sizes, kernels, strides, dilations):
            out = math.ceil(size / s)
            total = max((out - 1) * s + extent(k, d) - size, 0)
            pairs.append((total // 2, total - total // 2))  # the odd cell goes after
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def conv(x, w, b=None, stride=1, padding=(), dilation=1, groups=1):
    """Cross-correlation, with ``k`` in group ``g`` of ``C'`` input channels::

        out[n, k, i] = b[k] + sum_{c < C', m} x_pad[n, g*C' + c, s*i + d*m] * w[k, c, m]

    ``padding`` is a list of ``(before, after)`` pairs; stride and dilation are ints or tuples.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    rank = x.ndim - 2
    stride = (stride,) * rank if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * rank if isinstance(dilation, int) else tuple(dilation)
    padding = list(padding) or [(0, 0)] * rank
    xp = np.pad(x, [(0, 0), (0, 0), *padding])
    kernel = w.shape[2:]
    outs = [(p - extent(k, d)) // s + 1
            for p, k, s, d in zip(xp.shape[2:], kernel, stride, dilation)]
    n, cin, kout = x.shape[0], x.shape[1], w.shape[0]
    cg, kg = cin // groups, kout // groups
    out = np.zeros((n, kout, *outs))
    for m in itertools.product(*(range(k) for k in kernel)):
        # the input cells that kernel tap m meets, for every output position at once
        window = xp[(slice(None), slice(None), *(
            slice(d * mi, d * mi + s * (o - 1) + 1, s)
            for mi, s, d, o in zip(m, stride, dilation, outs)))]
        for g in range(groups):
            xs = window[:, g * cg:(g + 1) * cg]
            ws = w[(slice(g * kg, (g + 1) * kg), slice(None), *m)]
            out[:, g * kg:(g + 1) * kg] += np.einsum("nc...,kc->nk...", xs, ws)
    if b is not None:
        out += np.asarray(b, np.float64).reshape((1, kout) + (1,) * rank)
    return out


def pool_out_size(size, window, stride, pad, dilation, ceil_mode) -> int:
    """Number of windows along one axis; ceil mode keeps a last partial window that starts
    inside the input or its left padding."""
    lo, hi = pad
    span = size + lo + hi - extent(window, dilation)
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + lo else out


def pool_windows(size, window, stride, pad, dilation, ceil_mode):
    """For each output position along one axis, the input positions its window covers."""
    out = pool_out_size(size, window, stride, pad, dilation, ceil_mode)
    return [[stride * j + dilation * m - pad[0] for m in range(window)] for j in range(out)]


def all_windows_reach_input(sizes, window, stride, padding, dilation, ceil_mode) -> bool:
    """False when some window covers padding (or overhang) only."""
    return all(any(0 <= q < size for q in cells)
               for size, w, s, p, d in zip(sizes, window, stride, padding, dilation)
               for cells in pool_windows(size, w, s, p, d, ceil_mode))


def pool(x, kind, window, stride, padding, dilation, ceil_mode=False, count_include_pad=True,
         p=2.0):
    """Max, average or Lp pooling by visiting every window cell by cell.

    A cell outside the input reads -inf (max) or 0 (avg, lp). The average divides by the cells
    inside the padded input (``count_include_pad``) or inside the input only; the overhang of
    a ceil-mode partial window never counts.
    """
    x = np.asarray(x, np.float64)
    sizes = x.shape[2:]
    axes = [pool_windows(n, w, s, pd, d, ceil_mode)
            for n, w, s, pd, d in zip(sizes, window, stride, padding, dilation)]
    out = np.empty(x.shape[:2] + tuple(len(a) for a in axes))
    for j in itertools.product(*(range(len(a)) for a in axes)):
        values, counted = [], 0
        for cell in itertools.product(*(a[ji] for a, ji in zip(axes, j))):
            inside = all(0 <= q < n for q, n in zip(cell, sizes))
            in_padded = all(-pd[0] <= q < n + pd[1] for q, n, pd in zip(cell, sizes, padding))
            counted += inside or (count_include_pad and in_padded)
            if inside:
                values.append(x[(slice(None), slice(None), *cell)])
        v = np.stack(values, axis=-1) if values else np.zeros(x.shape[:2] + (0,))
        if kind == "max":
            out[(slice(None), slice(None), *j)] = v.max(axis=-1)
        elif kind == "avg":
            out[(slice(None), slice(None), *j)] = v.sum(axis=-1) / counted
        else:
            out[(slice(None), slice(None), *j)] = (np.abs(v) ** p).sum(axis=-1) ** (1 / p)
    return out


def softmax(x):
    """Softmax over axis 1, shifted by the maximum so no exp overflows."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels) -> float:
    """Mean over the batch of ``logsumexp(logits[n]) - logits[n, labels[n]]``."""
    z = np.asarray(logits, np.float64)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def dense(x, w, b=None):
    out = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return out if b is None else out + b
