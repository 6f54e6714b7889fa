"""Training: optimizers that update parameters in place, and a small training loop.

A module compiled with ``grad=True`` returns the gradients; an optimizer's `step` applies
them to the parameter arrays it was given, in place. `fit` runs epochs of shuffled
mini-batches and prints one progress line per epoch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class Optimizer:
    """Base: holds the parameter arrays (updated in place) and a per-parameter state."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params
        self.steps = 0

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.steps += 1
        for name, p in self.params.items():
            self.update(name, p, grads[name].astype(p.dtype, copy=False))

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """``v = momentum·v + g + weight_decay·p``; ``p -= lr·v``.

    Examples
    --------
    >>> import numpy as np
    >>> p = {"w": np.ones(2, np.float32)}
    >>> SGD(p, lr=0.5).step({"w": np.array([1.0, -1.0], np.float32)})
    >>> p["w"]
    array([0.5, 1.5], dtype=float32)
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = {n: np.zeros_like(p) for n, p in params.items()}

    def update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = self.velocity[name]
        v *= self.momentum
        v += g
        p -= self.lr * v


class Adam(Optimizer):
    """Adam (Kingma and Ba), with bias-corrected moments and optional L2 weight decay.

    A float32 or float64 parameter laid out contiguously (as `Module.init_params` makes
    them) steps in one pass of the runtime's ``convc_adam_*``, built once with the runtime
    and cached like a module; any other, with numpy (the same formula)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = {n: np.zeros_like(p) for n, p in params.items()}
        self.v = {n: np.zeros_like(p) for n, p in params.items()}
        self._steps: dict[str, tuple] = {}  # per parameter: its array and compiled step

    def update(self, name, p, g):
        b1, b2 = self.betas
        m, v = self.m[name], self.v[name]
        c1, c2 = 1 - b1**self.steps, 1 - b2**self.steps
        step = self._step(name, p, g)
        if step is not None:
            ffi, function, ctype, buffers = step
            function(p.size, buffers[0], ffi.from_buffer(ctype, g), *buffers[1:], self.lr,
                     b1, b2, self.eps, self.weight_decay, c1, c2)
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def _step(self, name: str, p: np.ndarray, g: np.ndarray) -> tuple | None:
        """``(ffi, function, C array type, buffers of p, m and v)`` for a step of ``p`` in
        C (see `_compiled_step`), kept while ``params[name]`` is the same array."""
        kept = self._steps.get(name)
        if kept is None or kept[0] is not p:
            found = _compiled_step(p, self.m[name], self.v[name])
            if found is not None:
                ffi, _, ctype = found
                found += (tuple(ffi.from_buffer(ctype, a)
                                for a in (p, self.m[name], self.v[name])),)
            kept = self._steps[name] = (p, found)
        step = kept[1]
        if step is None or g.dtype != p.dtype or not g.flags.c_contiguous:
            return None
        return step


ADAM_CDEF = "\n".join(
    f"void convc_adam_{s}(int64_t n, {t} *p, const {t} *g, {t} *m, {t} *v, double lr, "
    f"double b1, double b2, double eps, double decay, double c1, double c2);"
    for s, t in (("f32", "float"), ("f64", "double")))


def _compiled_step(*arrays: np.ndarray):
    """``(ffi, convc_adam_<type>, C array type)`` for arrays of one float type, each
    contiguous and writable (the parameter and its moments); else None."""
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64) or not all(
            a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable for a in arrays):
        return None
    library = _optimizer_library()
    suffix, ctype = ("f32", "float[]") if dtype == np.float32 else ("f64", "double[]")
    return library.ffi, getattr(library.lib, f"convc_adam_{suffix}"), ctype


@functools.cache
def _optimizer_library():
    """The runtime's optimizer steps, as a library of their own (built once, cached)."""
    from .build import build_library

    return build_library('#include "convc_runtime.h"\n', ADAM_CDEF).module


@dataclass
class Epoch:
    """What one epoch of `fit` measured."""

    epoch: int
    loss: float
    accuracy: float | None
    images_per_second: float


def fit(module, params: dict, optimizer: Optimizer, inputs: dict[str, np.ndarray],
        epochs: int, batch_size: int = 64, seed: int = 0,
        evaluate: Callable[[], float] | None = None, metric: str = "held-out accuracy",
        log=print) -> list[Epoch]:
    """Train ``module`` (compiled with ``grad``) on ``inputs`` for ``epochs``.

    ``inputs`` maps each graph input to an array whose first axis is the example; each
    epoch shuffles them with ``seed``. The module's 0-d output is the loss. ``evaluate``
    returns a figure (an accuracy, say) printed as ``metric`` on each epoch's line and kept
    in `Epoch.accuracy`.
    """
    count = len(next(iter(inputs.values())))
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(count)
        start, total = time.perf_counter(), 0.0
        for first in range(0, count, batch_size):
            batch = order[first:first + batch_size]
            outputs, grads = module(**{k: v[batch] for k, v in inputs.items()}, **params)
            total += float(_loss(outputs)) * len(batch)
            optimizer.step(grads)
        rate = count / (time.perf_counter() - start)
        accuracy = evaluate() if evaluate else None
        history.append(Epoch(epoch, total / count, accuracy, rate))
        shown = f"  {metric} {accuracy:.4f}" if accuracy is not None else ""
        log(f"epoch {epoch:3d}  loss {total / count:.4f}{shown}  {rate:,.0f} images/s")
    return history


def _loss(outputs) -> np.ndarray:
    if isinstance(outputs, dict):
        return next(v for v in outputs.values() if v.ndim == 0)
    return outputs


def predict(module, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None,
            batch_size: int = 256):
    """Run ``module``'s forward pass over a whole data set, ``batch_size`` examples a call.

    ``inputs`` maps each graph input to an array whose first axis is the example (as in
    `fit`); ``params`` are passed unchanged to every call. Outputs come back as the module
    returns them (one array, or a dict by name), each the batches' results joined along
    axis 0; a 0-d output (a loss: a mean over the batch) is the mean of the batches'
    values weighted by their sizes, the mean over the whole set. A module compiled with
    ``grad`` returns its outputs only. Used to compute a frozen layer's features once for a
    data set (section 9.9).

    Examples
    --------
    >>> import convc, numpy as np
    >>> g = convc.Graph("doc_predict")
    >>> g.output(g.relu(g.input("x", (None, 3))))
    >>> predict(convc.compile(g), {"x": np.full((5, 3), -1.0, np.float32)}, batch_size=2).shape
    (5, 3)
    """
    counts = {len(v) for v in inputs.values()}
    if len(counts) != 1:
        raise ValueError(f"every input needs the same number of examples on axis 0, found "
                         f"{ {k: len(v) for k, v in inputs.items()} }")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, found {batch_size!r}")
    count = counts.pop()
    if count == 0:
        raise ValueError("predict needs at least one example")
    parts: list[dict[str, np.ndarray]] = []
    sizes = []
    for first in range(0, count, batch_size):
        out = module(**{k: v[first:first + batch_size] for k, v in inputs.items()},
                     **(params or {}))
        out = out[0] if module.lowered.wrt else out
        parts.append(out if isinstance(out, dict) else {"": out})
        sizes.append(min(batch_size, count - first))
    joined = {name: (np.average([p[name] for p in parts], axis=0, weights=sizes)
                     .astype(parts[0][name].dtype) if parts[0][name].ndim == 0
                     else np.concatenate([p[name] for p in parts]))
              for name in parts[0]}
    return joined[""] if "" in joined else joined
