"""Run the generated code of every op under AddressSanitizer and UBSan, checking the numbers.

Started by ``tests/test_sanitizers.py`` in a child process whose ``LD_PRELOAD`` holds the
sanitizer runtimes (a Python host cannot load an ASan library otherwise). Each graph below
groups several ops with odd sizes and borders; every graph is built with
``convc.compile(g, dtype, sanitize=True)`` in float32 and float64 and called with batch sizes
3, 1 and 0. The results are compared with a small numpy reference written here, independent
of convc's comprehensions.

Usage: ``python tests/sanitizer_run.py [graph ...]`` (default: every graph). Prints one line
per graph and dtype and the mismatches on stderr, and exits with status 1 if any result
differs from numpy; a sanitizer report ends the process at once with a non-zero status.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import sympy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import convc

BATCHES = (3, 1, 0)
DTYPES = ("float32", "float64")
TOLERANCE = {"float32": {"rtol": 2e-4, "atol": 2e-5}, "float64": {"rtol": 1e-10, "atol": 1e-12}}


# --- the numpy reference ------------------------------------------------------------------------


def pooled_out_size(size, lo, hi, window, stride, dilation, ceil_mode):
    """PyTorch's rule: floor or ceil, and no last window starting past the left-padded input."""
    extent = dilation * (window - 1) + 1
    span = size + lo + hi - extent
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + lo else out


def windows(x, pads, window, stride, dilation, out, fill):
    """``x`` (N, C, *S) -> (N, C, *out, *window): the window cells, ``fill`` outside ``x``.

    The padding is ``pads`` (before, after) per axis, extended after by whatever a ceil-mode
    window reaches beyond it (the overhang).
    """
    rank = x.ndim - 2
    widths = [(0, 0), (0, 0)]
    for a in range(rank):
        lo, hi = pads[a]
        reach = (out[a] - 1) * stride[a] + dilation[a] * (window[a] - 1) + 1
        widths.append((lo, max(hi, reach - x.shape[2 + a] - lo)))
    padded = np.pad(x, widths, constant_values=fill)
    for a in range(rank):
        idx = (stride[a] * np.arange(out[a]))[:, None] + dilation[a] * np.arange(window[a])
        # The axis being gathered sits at 2 + 2a (earlier axes became (out, window) pairs).
        padded = np.take(padded, idx, axis=2 + 2 * a)
    # (N, C, o0, w0, o1, w1, ...) -> (N, C, o0, o1, ..., w0, w1, ...)
    order = [0, 1] + [2 + 2 * a for a in range(rank)] + [3 + 2 * a for a in range(rank)]
    return padded.transpose(order)


def conv_ref(x, w, b, pads, stride, dilation, groups):
    rank = x.ndim - 2
    kernel = w.shape[2:]
    out = [(x.shape[2 + a] + sum(pads[a]) - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
           for a in range(rank)]
    cells = windows(x, pads, kernel, stride, dilation, out, 0.0)  # (N, C, *out, *kernel)
    cg, kg = x.shape[1] // groups, w.shape[0] // groups
    letters = "defghi"[:rank], "pqrstu"[:rank]
    spec = f"nc{letters[0]}{letters[1]},kc{letters[1]}->nk{letters[0]}"
    parts = [np.einsum(spec, cells[:, g * cg:(g + 1) * cg], w[g * kg:(g + 1) * kg])
             for g in range(groups)]
    z = np.concatenate(parts, axis=1)
    if b is not None:
        z = z + b.reshape((1, -1) + (1,) * rank)
    return z


def pool_ref(x, kind, window, stride, pads, dilation, ceil_mode, count_include_pad=True, p=2):
    rank = x.ndim - 2
    sizes = x.shape[2:]
    out = [pooled_out_size(sizes[a], *pads[a], window[a], stride[a], dilation[a], ceil_mode)
           for a in range(rank)]
    axes = tuple(range(2 + rank, 2 + 2 * rank))
    if kind == "max":
        return windows(x, pads, window, stride, dilation, out, -np.inf).max(axis=axes)
    if kind == "lp":
        total = (np.abs(windows(x, pads, window, stride, dilation, out, 0.0)) ** p).sum(axis=axes)
        return total ** (1.0 / p)
    total = windows(x, pads, window, stride, dilation, out, 0.0).sum(axis=axes)
    # The count: cells of the padded input (or of the input alone), never the overhang.
    counted = np.zeros((1, 1, *(s + lo + hi for s, (lo, hi) in zip(sizes, pads))))
    if count_include_pad:
        counted[...] = 1.0
    else:
        counted[(0, 0, *(slice(lo, lo + s) for s, (lo, _) in zip(sizes, pads)))] = 1.0
    # The mask already spans the padded input, so it takes no padding of its own; the
    # ceil-mode overhang beyond it reads 0 (not counted).
    mask = windows(counted, [(0, 0)] * rank, window, stride, dilation, out, 0.0)
    return total / mask.sum(axis=axes)


def softmax_ref(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy_ref(logits, labels):
    if len(labels) == 0:
        return np.array(np.nan)
    m = logits.max(axis=1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    return np.array((lse - logits[np.arange(len(labels)), labels]).mean())


def sigmoid_ref(x):
    return 1.0 / (1.0 + np.exp(-x))


# --- the graphs: each returns the graph and a reference (arrays -> {output: array}) ------------


def graph_conv1d():
    g = convc.Graph("san_conv1d")
    x = g.input("x", (None, 4, 11))
    g.output(
        g.conv(x, 6, 3, stride=2, padding=((2, 1),), dilation=2, groups=2, name="grouped"),
        g.conv(x, 3, 4, stride=3, padding="same", name="same"),
        g.conv(x, 2, 3, dilation=2, padding="full", bias=False, name="full"),
        g.conv(x, 5, 11, name="whole"),  # the kernel covers the whole input: one output
        g.relu(g.conv(x, 4, 1, groups=4, name="pointwise")),
    )

    def ref(a):
        x = a["x"]
        return {
            "grouped": conv_ref(x, a["grouped.weight"], a["grouped.bias"], [(2, 1)], [2], [2], 2),
            # same, size 11, stride 3, kernel 4: 4 outputs, total pad 3*3 + 4 - 11 = 2 -> (1, 1)
            "same": conv_ref(x, a["same.weight"], a["same.bias"], [(1, 1)], [3], [1], 1),
            "full": conv_ref(x, a["full.weight"], None, [(4, 4)], [1], [2], 1),
            "whole": conv_ref(x, a["whole.weight"], a["whole.bias"], [(0, 0)], [1], [1], 1),
            "relu0": np.maximum(conv_ref(x, a["pointwise.weight"], a["pointwise.bias"],
                                         [(0, 0)], [1], [1], 4), 0),
        }

    return g, ref


def graph_conv2d():
    g = convc.Graph("san_conv2d")
    x = g.input("x", (None, 3, 9, 7))
    g.output(
        g.conv(x, 6, (3, 2), stride=(2, 3), padding=((1, 2), (0, 1)), dilation=(1, 2),
               groups=3, name="grouped"),
        # same with an even kernel at stride 2: ceil(9/2)=5, ceil(7/2)=4 outputs; total pads
        # 4*2 + 4 - 9 = 3 -> (1, 2) and 3*2 + 2 - 7 = 1 -> (0, 1)
        g.conv(x, 2, (4, 2), stride=2, padding="same", name="same"),
        g.conv(x, 4, (2, 3), padding="full", dilation=(2, 1), bias=False, name="full"),
        g.conv(x, 1, 3, padding=(2, 0), stride=(4, 1), name="ints"),
    )

    def ref(a):
        x = a["x"]
        return {
            "grouped": conv_ref(x, a["grouped.weight"], a["grouped.bias"], [(1, 2), (0, 1)],
                                [2, 3], [1, 2], 3),
            "same": conv_ref(x, a["same.weight"], a["same.bias"], [(1, 2), (0, 1)], [2, 2],
                             [1, 1], 1),
            "full": conv_ref(x, a["full.weight"], None, [(2, 2), (2, 2)], [1, 1], [2, 1], 1),
            "ints": conv_ref(x, a["ints.weight"], a["ints.bias"], [(2, 2), (0, 0)], [4, 1],
                             [1, 1], 1),
        }

    return g, ref


def graph_conv3d():
    g = convc.Graph("san_conv3d")
    x = g.input("x", (None, 2, 5, 6, 3))
    g.output(
        g.conv(x, 4, (2, 3, 2), stride=(2, 1, 3), padding=((1, 0), (1, 1), (0, 2)),
               dilation=(1, 2, 1), groups=2, name="grouped"),
        # same at stride 1 with kernel 3: pads (1, 1) everywhere
        g.conv(x, 3, 3, padding="same", name="same"),
        g.conv(x, 1, (1, 2, 3), padding="full", bias=False, name="full"),
    )

    def ref(a):
        x = a["x"]
        return {
            "grouped": conv_ref(x, a["grouped.weight"], a["grouped.bias"],
                                [(1, 0), (1, 1), (0, 2)], [2, 1, 3], [1, 2, 1], 2),
            "same": conv_ref(x, a["same.weight"], a["same.bias"], [(1, 1)] * 3, [1] * 3,
                             [1] * 3, 1),
            "full": conv_ref(x, a["full.weight"], None, [(0, 0), (1, 1), (2, 2)], [1] * 3,
                             [1] * 3, 1),
        }

    return g, ref


def graph_pool2d():
    g = convc.Graph("san_pool2d")
    x = g.input("x", (None, 3, 9, 8))
    g.output(
        g.max_pool(x, 3, stride=2, padding=1, ceil_mode=True, name="max_ceil"),
        g.max_pool(x, (2, 3), stride=(3, 2), padding=((0, 1), (1, 0)), dilation=(2, 1),
                   name="max_dil"),
        g.avg_pool(x, 3, stride=2, padding=1, ceil_mode=True, name="avg_ceil_incl"),
        g.avg_pool(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False,
                   name="avg_ceil_excl"),
        g.avg_pool(x, (2, 4), stride=(3, 3), padding=((1, 1), (2, 1)), ceil_mode=True,
                   name="avg_asym"),
        g.avg_pool(x, (2, 4), stride=(3, 3), padding=((1, 1), (2, 1)), ceil_mode=True,
                   count_include_pad=False, name="avg_asym_excl"),
        g.avg_pool(x, 2, name="avg_floor"),
        g.lp_pool(x, 3, stride=2, ceil_mode=True, name="l2"),
        g.lp_pool(x, 2, p=3, stride=(1, 3), padding=(1, 0), name="l3"),
        g.lp_pool(x, (3, 2), p=1.5, dilation=(2, 3), name="l15"),
        g.global_max_pool(x, name="gmax"),
        g.global_avg_pool(x, name="gavg"),
    )

    def ref(a):
        x = a["x"]
        return {
            "max_ceil": pool_ref(x, "max", (3, 3), (2, 2), [(1, 1)] * 2, (1, 1), True),
            "max_dil": pool_ref(x, "max", (2, 3), (3, 2), [(0, 1), (1, 0)], (2, 1), False),
            "avg_ceil_incl": pool_ref(x, "avg", (3, 3), (2, 2), [(1, 1)] * 2, (1, 1), True),
            "avg_ceil_excl": pool_ref(x, "avg", (3, 3), (2, 2), [(1, 1)] * 2, (1, 1), True,
                                      count_include_pad=False),
            "avg_asym": pool_ref(x, "avg", (2, 4), (3, 3), [(1, 1), (2, 1)], (1, 1), True),
            "avg_asym_excl": pool_ref(x, "avg", (2, 4), (3, 3), [(1, 1), (2, 1)], (1, 1), True,
                                      count_include_pad=False),
            "avg_floor": pool_ref(x, "avg", (2, 2), (2, 2), [(0, 0)] * 2, (1, 1), False),
            "l2": pool_ref(x, "lp", (3, 3), (2, 2), [(0, 0)] * 2, (1, 1), True),
            "l3": pool_ref(x, "lp", (2, 2), (1, 3), [(1, 1), (0, 0)], (1, 1), False, p=3),
            "l15": pool_ref(x, "lp", (3, 2), (3, 2), [(0, 0)] * 2, (2, 3), False, p=1.5),
            "gmax": x.max(axis=(2, 3)),
            "gavg": x.mean(axis=(2, 3)),
        }

    return g, ref


def graph_pool_1d_3d():
    g = convc.Graph("san_pool_1d_3d")
    u = g.input("u", (None, 2, 10))
    v = g.input("v", (None, 2, 5, 4, 7))
    g.output(
        g.max_pool(u, 4, stride=3, padding=2, ceil_mode=True, name="max1"),
        g.avg_pool(u, 4, stride=3, padding=((2, 0),), ceil_mode=True, name="avg1"),
        g.avg_pool(u, 4, stride=3, padding=((2, 0),), ceil_mode=True, count_include_pad=False,
                   name="avg1_excl"),
        g.lp_pool(u, 3, p=4, stride=2, dilation=2, ceil_mode=True, name="lp1"),
        g.global_max_pool(u, name="gmax1"),
        g.global_avg_pool(u, name="gavg1"),
        g.max_pool(v, (2, 3, 2), stride=(2, 2, 3), padding=(1, 1, 0), ceil_mode=True,
                   name="max3"),
        g.avg_pool(v, 2, stride=(2, 2, 3), padding=((0, 0), (1, 0), (1, 1)), ceil_mode=True,
                   count_include_pad=False, name="avg3"),
        g.avg_pool(v, 2, stride=(2, 2, 3), padding=((0, 0), (1, 0), (1, 1)), ceil_mode=True,
                   name="avg3_incl"),
        g.lp_pool(v, (1, 2, 3), name="lp3"),
        g.global_max_pool(v, name="gmax3"),
        g.global_avg_pool(v, name="gavg3"),
    )

    def ref(a):
        u, v = a["u"], a["v"]
        pads3 = [(0, 0), (1, 0), (1, 1)]
        return {
            "max1": pool_ref(u, "max", (4,), (3,), [(2, 2)], (1,), True),
            "avg1": pool_ref(u, "avg", (4,), (3,), [(2, 0)], (1,), True),
            "avg1_excl": pool_ref(u, "avg", (4,), (3,), [(2, 0)], (1,), True,
                                  count_include_pad=False),
            "lp1": pool_ref(u, "lp", (3,), (2,), [(0, 0)], (2,), True, p=4),
            "gmax1": u.max(axis=2),
            "gavg1": u.mean(axis=2),
            "max3": pool_ref(v, "max", (2, 3, 2), (2, 2, 3), [(1, 1), (1, 1), (0, 0)],
                             (1, 1, 1), True),
            "avg3": pool_ref(v, "avg", (2, 2, 2), (2, 2, 3), pads3, (1, 1, 1), True,
                             count_include_pad=False),
            "avg3_incl": pool_ref(v, "avg", (2, 2, 2), (2, 2, 3), pads3, (1, 1, 1), True),
            "lp3": pool_ref(v, "lp", (1, 2, 3), (1, 2, 3), [(0, 0)] * 3, (1, 1, 1), False),
            "gmax3": v.max(axis=(2, 3, 4)),
            "gavg3": v.mean(axis=(2, 3, 4)),
        }

    return g, ref


def adaptive_ref(x, outs, kind):
    """Adaptive pooling, cell by cell: cell ``i`` of ``O`` over ``I`` input cells covers
    ``[floor(i·I/O), ceil((i + 1)·I/O))`` along each axis."""
    out = np.empty(x.shape[:2] + tuple(outs))
    for j in np.ndindex(*outs):
        region = tuple(slice(i * size // o, -(-(i + 1) * size // o))
                       for i, size, o in zip(j, x.shape[2:], outs))
        block = x[(slice(None), slice(None), *region)]
        values = block.reshape(*x.shape[:2], int(np.prod(block.shape[2:])))  # batch 0 too
        out[(slice(None), slice(None), *j)] = (values.max(axis=-1) if kind == "max"
                                               else values.mean(axis=-1))
    return out


def graph_pool_regions():
    """Pooling across channels (maxout) and adaptive pooling to sizes that do not divide."""
    g = convc.Graph("san_pool_regions")
    f = g.input("f", (None, 6))
    u = g.input("u", (None, 6, 7))
    w = g.input("w", (None, 4, 5, 7))
    v = g.input("v", (None, 2, 5, 4, 7))
    g.output(
        g.maxout(f, 3, name="maxout0"),
        g.channel_pool(w, group=2, kind="avg", name="cavg2"),
        g.maxout(v, 2, name="maxout3"),
        g.adaptive_max_pool(u, 3, name="amax1"),
        g.adaptive_avg_pool(u, 4, name="aavg1"),
        g.adaptive_max_pool(w, (3, 2), name="amax2"),
        g.adaptive_avg_pool(w, (2, 4), name="aavg2"),
        g.adaptive_avg_pool(v, (2, 3, 3), name="aavg3"),
        g.adaptive_max_pool(v, (3, 2, 5), name="amax3"),
        g.global_lp_pool(u, p=3, name="glp1"),
    )

    def groups(x, pieces):
        return x.reshape(x.shape[0], x.shape[1] // pieces, pieces, *x.shape[2:])

    def ref(a):
        f, u, w, v = a["f"], a["u"], a["w"], a["v"]
        return {
            "maxout0": groups(f, 3).max(axis=2),
            "cavg2": groups(w, 2).mean(axis=2),
            "maxout3": groups(v, 2).max(axis=2),
            "amax1": adaptive_ref(u, (3,), "max"),
            "aavg1": adaptive_ref(u, (4,), "avg"),
            "amax2": adaptive_ref(w, (3, 2), "max"),
            "aavg2": adaptive_ref(w, (2, 4), "avg"),
            "aavg3": adaptive_ref(v, (2, 3, 3), "avg"),
            "amax3": adaptive_ref(v, (3, 2, 5), "max"),
            "glp1": (np.abs(u) ** 3).sum(axis=2) ** (1 / 3),
        }

    return g, ref


def graph_chain():
    """A small network: every op that is not a conv or a pool, and temporaries between nodes."""
    g = convc.Graph("san_chain")
    x = g.input("x", (None, 2, 5, 3))
    y = g.input("y", (None,), dtype="int64")
    h = g.conv(x, 3, 2, padding=((1, 0), (0, 1)), name="c")          # (N, 3, 5, 3)
    h = g.max_pool(h, 2, ceil_mode=True, name="p")                     # (N, 3, 3, 2)
    s = g.sigmoid(h)
    t = g.tanh(h)
    r = g.relu(g.add(s, t))
    f = g.flatten(r)                                                   # (N, 18)
    d = g.dense(f, 7, name="d")
    logits = g.dense(g.tanh(d), 5, bias=False, name="logits")
    g.output(
        g.softmax(logits, name="probs"),
        g.softmax(x, name="probs4d"),  # over axis 1 of a 4-d tensor
        g.softmax_cross_entropy(logits, y, name="loss"),
        f,
    )

    def ref(a):
        x, y = a["x"], a["y"]
        h = conv_ref(x, a["c.weight"], a["c.bias"], [(1, 0), (0, 1)], [1, 1], [1, 1], 1)
        h = pool_ref(h, "max", (2, 2), (2, 2), [(0, 0)] * 2, (1, 1), True)
        f = np.maximum(sigmoid_ref(h) + np.tanh(h), 0).reshape(len(x), np.prod(h.shape[1:]))
        d = f @ a["d.weight"].T + a["d.bias"]
        logits = np.tanh(d) @ a["logits.weight"].T
        return {
            "probs": softmax_ref(logits),
            "probs4d": softmax_ref(x),
            "loss": softmax_cross_entropy_ref(logits, y),
            "flatten0": f,
        }

    return g, ref


def graph_extremes():
    """Size-1 axes, kernels and windows larger than the input, outputs that see only padding."""
    g = convc.Graph("san_extremes")
    x = g.input("x", (None, 1, 2, 1))
    w = g.input("w", (None, 1, 1))
    y = g.input("y", (None,), dtype="int64")
    one = g.flatten(g.global_avg_pool(w))  # (N, 1): a single class
    g.output(
        g.conv(x, 2, 3, padding="same", name="same"),                 # pads (1, 1) both axes
        g.conv(x, 2, (4, 1), stride=3, padding="same", name="same_s3"),  # pads (1, 1), (0, 0)
        g.conv(x, 1, 1, padding=3, name="pad_only"),                   # (N, 1, 8, 7)
        g.conv(x, 2, 2, stride=5, padding=((4, 4), (1, 0)), name="far"),
        g.conv(x, 1, (2, 1), dilation=(5, 1), padding=((3, 2), (0, 0)), name="wide"),
        g.conv(w, 3, 1, padding="full", name="conv1x1"),
        g.avg_pool(x, 2, stride=3, padding=1, name="avg_big"),
        g.avg_pool(x, 1, padding=1, name="avg_pad_only"),
        g.lp_pool(x, 1, padding=1, name="lp_pad_only"),
        g.max_pool(x, (2, 1), stride=(4, 1), ceil_mode=True, name="max_s4"),
        g.avg_pool(x, (3, 1), padding=((1, 1), (0, 0)), ceil_mode=True, count_include_pad=False,
                   name="avg_excl"),
        g.global_max_pool(w, name="gmax"),
        g.softmax(one, name="softmax1"),
        g.softmax_cross_entropy(g.dense(one, 1, name="d1"), y, name="loss1"),
    )

    def ref(a):
        x, w = a["x"], a["w"]
        conv = {name: (a[f"{name}.weight"], a[f"{name}.bias"])
                for name in ("same", "same_s3", "pad_only", "far", "wide", "conv1x1")}
        one = w.reshape(len(w), 1)
        d1 = one @ a["d1.weight"].T + a["d1.bias"]
        return {
            "same": conv_ref(x, *conv["same"], [(1, 1), (1, 1)], [1, 1], [1, 1], 1),
            "same_s3": conv_ref(x, *conv["same_s3"], [(1, 1), (0, 0)], [3, 3], [1, 1], 1),
            "pad_only": conv_ref(x, *conv["pad_only"], [(3, 3), (3, 3)], [1, 1], [1, 1], 1),
            "far": conv_ref(x, *conv["far"], [(4, 4), (1, 0)], [5, 5], [1, 1], 1),
            "wide": conv_ref(x, *conv["wide"], [(3, 2), (0, 0)], [1, 1], [5, 1], 1),
            "conv1x1": conv_ref(w, *conv["conv1x1"], [(0, 0)], [1], [1], 1),
            "avg_big": pool_ref(x, "avg", (2, 2), (3, 3), [(1, 1)] * 2, (1, 1), False),
            "avg_pad_only": pool_ref(x, "avg", (1, 1), (1, 1), [(1, 1)] * 2, (1, 1), False),
            "lp_pad_only": pool_ref(x, "lp", (1, 1), (1, 1), [(1, 1)] * 2, (1, 1), False),
            "max_s4": pool_ref(x, "max", (2, 1), (4, 1), [(0, 0)] * 2, (1, 1), True),
            "avg_excl": pool_ref(x, "avg", (3, 1), (3, 1), [(1, 1), (0, 0)], (1, 1), True,
                                 count_include_pad=False),
            "gmax": w.max(axis=2),
            "softmax1": softmax_ref(one),
            "loss1": softmax_cross_entropy_ref(d1, a["y"]),
        }

    return g, ref


GRAPHS = {
    "conv1d": graph_conv1d,
    "conv2d": graph_conv2d,
    "conv3d": graph_conv3d,
    "pool2d": graph_pool2d,
    "pool_1d_3d": graph_pool_1d_3d,
    "pool_regions": graph_pool_regions,
    "chain": graph_chain,
    "extremes": graph_extremes,
}


# --- running ------------------------------------------------------------------------------------


def arguments(net, batch: int, dtype: str, rng) -> dict[str, np.ndarray]:
    args = {}
    for name, shape in {**net.inputs, **net.parameters}.items():
        dims = tuple(batch if isinstance(d, sympy.Symbol) else int(d) for d in shape)
        if name == "y":  # the labels of the graph's softmax_cross_entropy
            classes = next(net.lowered.graph.node(node.inputs[0]).shape[1]
                           for node in net.lowered.nodes if "y" in node.inputs)
            args[name] = rng.integers(0, classes, size=dims).astype(np.int64)
        else:
            args[name] = rng.standard_normal(dims).astype(dtype)
    return args


def check(graph_name: str, dtype: str) -> list[str]:
    g, ref = GRAPHS[graph_name]()
    net = convc.compile(g, dtype, sanitize=True)
    problems = []
    rng = np.random.default_rng(len(graph_name))
    for batch in BATCHES:
        args = arguments(net, batch, dtype, rng)
        got = net(**args)
        want = ref({k: v.astype(np.float64) if v.dtype.kind == "f" else v
                    for k, v in args.items()})
        if set(got) != set(want):
            problems.append(f"outputs {sorted(got)}, the reference has {sorted(want)}")
            continue
        for name, expected in want.items():
            where = f"{graph_name} {dtype} batch {batch} output {name!r}"
            actual = got[name]
            if actual.dtype != np.dtype(dtype):
                problems.append(f"{where}: dtype {actual.dtype}, expected {dtype}")
            if actual.shape != expected.shape:
                problems.append(f"{where}: shape {actual.shape}, expected {expected.shape}")
                continue
            try:
                np.testing.assert_allclose(actual, expected, equal_nan=True, **TOLERANCE[dtype])
            except AssertionError as e:
                problems.append(f"{where}: values differ from the numpy reference{e}")
    return problems


def main(names: list[str]) -> int:
    failed = 0
    for name in names or list(GRAPHS):
        for dtype in DTYPES:
            problems = check(name, dtype)
            print(f"{name:12s} {dtype}: {'ok' if not problems else 'MISMATCH'}", flush=True)
            for problem in problems:
                print(problem, file=sys.stderr, flush=True)
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
