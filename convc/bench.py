"""Benchmark: ``python -m convc.bench`` times convc's generated code against the machine and
against PyTorch.

It measures, in one run and printed as plain-text tables:

1. the machine's peak: a C kernel of independent FMA chains on GCC vector extensions, built
   with `convc.build.build_library` and timed on one core (the best of several runs), and the
   memory bandwidth of a numpy copy of a large array;
2. per layer of a fixed suite (LeNet, ResNet-like 3×3, stem, pointwise, strided, large kernel,
   depthwise, 1-D audio, 3-D volume, separable blur) and per pass (fwd, grad-in, grad-w) at
   each thread count: the median time, GFLOP/s counted for the direct algorithm, the share of
   the peak, the algorithm convc chose and the speed ratio to PyTorch;
3. pooling throughput (2×2 max, 3×3 average);
4. compile times of a LeNet-like training graph, cold and from the disk cache;
5. the training step of examples/train_digits.py's network, in images per second;
6. the runtime's real FFT (runtime/fft.c) on 2-D float32 arrays, in ns per point, against
   numpy.fft.rfft2 (pocketfft, one thread) in the same run.

Every time is a median: each case runs once to warm up, then again until ``--repeat`` runs
or 0.5 s are spent, at least 3 times (a call over 0.25 s is its own warm-up). PyTorch runs in a
subprocess of the same run, after convc, one case at a time, so the two never share the cores;
its figures come back as JSON on stdout. Both sides run with the same malloc settings (large
arrays from the heap, freed memory kept: `same_malloc_settings`), so that neither pays for
faulting in fresh pages of its outputs on every call. A backward pass is timed as the median
of the module that runs forward and backward, less the median of the forward module.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PASSES = ("fwd", "grad-in", "grad-w")
ROLE = {"fwd": "fwd", "grad-in": "dinput", "grad-w": "dweight"}  # step roles in explain()
SECTIONS = ("peak", "layers", "pool", "compile", "digits", "fft")
DEFAULT_REPEAT = 10
BUDGET_S = 0.5          # stop repeating a case once this much time is spent (>= 3 runs)
SELF_WARMING_S = 0.25   # a first call this slow counts as a run: no separate warm-up
MMAP_THRESHOLD, TRIM_THRESHOLD = 33554432, 4294967296
PEER_ENV = {"GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:"
                              f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}"}
NA, NONE = "n/a", "—"


@dataclass(frozen=True)
class LayerSpec:
    """One convolution of the suite: batch, channels, input size, filters, kernel, stride,
    padding and groups; ``rank1`` makes the weight an outer product (a separable blur)."""

    key: str
    title: str
    n: int
    c: int
    spatial: tuple[int, ...]
    k: int
    kernel: tuple[int, ...]
    stride: int = 1
    padding: int = 0
    groups: int = 1
    rank1: bool = False

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple((s + 2 * self.padding - m) // self.stride + 1
                     for s, m in zip(self.spatial, self.kernel))

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n, self.c, *self.spatial)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.k, self.c // self.groups, *self.kernel)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.n, self.k, *self.out_spatial)

    @classmethod
    def from_dict(cls, d: dict) -> LayerSpec:
        return cls(**{**d, "spatial": tuple(d["spatial"]), "kernel": tuple(d["kernel"])})


def _dims(sizes: Sequence[int]) -> str:
    return "×".join(map(str, sizes))


LAYERS = {s.key: s for s in (
    LayerSpec("L1", "LeNet conv1", 64, 1, (28, 28), 6, (5, 5)),
    LayerSpec("L2", "LeNet conv2", 64, 6, (12, 12), 16, (5, 5)),
    LayerSpec("L3", "3×3", 8, 64, (56, 56), 64, (3, 3), 1, 1),
    LayerSpec("L4", "stem", 8, 3, (224, 224), 64, (7, 7), 2, 3),
    LayerSpec("L5", "pointwise", 8, 256, (28, 28), 256, (1, 1)),
    LayerSpec("L6", "strided", 8, 128, (56, 56), 128, (3, 3), 2, 1),
    LayerSpec("L7", "large kernel", 4, 16, (128, 128), 16, (15, 15), 1, 7),
    LayerSpec("L8", "depthwise", 8, 128, (56, 56), 128, (3, 3), 1, 1, 128),
    LayerSpec("L9", "1-D audio", 16, 1, (16000,), 32, (64,), 4),
    LayerSpec("L10", "3-D volume", 2, 4, (32, 32, 32), 8, (3, 3, 3), 1, 1),
    LayerSpec("L11", "separable blur", 1, 1, (1024, 1024), 1, (31, 31), 1, 15, rank1=True),
)}
# Not in the default suite; for the tests (``--layers tiny``).
HIDDEN_LAYERS = {"tiny": LayerSpec("tiny", "tiny test layer", 4, 8, (24, 24), 8, (3, 3), 1, 1)}


def conv_flops(spec: LayerSpec) -> int:
    """Floating-point operations of the direct algorithm, two per multiply-add, padding taps
    included: N·K·out_spatial·(C/groups)·kernel_volume·2 (the same for all three passes).

    Examples
    --------
    >>> conv_flops(LAYERS["L1"])  # 64·6·24·24·1·25·2
    11059200
    """
    return (2 * spec.n * spec.k * math.prod(spec.out_spatial) * (spec.c // spec.groups)
            * math.prod(spec.kernel))


def pass_bytes(spec: LayerSpec) -> int:
    """Bytes each pass cannot avoid moving, the same for all three: the forward pass reads
    x and w and writes y, grad-in reads y's gradient and w and writes x's, grad-w reads x
    and y's gradient and writes w's, each once, in float32. A pass that moves them faster
    than a copy moves memory (section 1) runs from the cache.

    Examples
    --------
    >>> pass_bytes(LAYERS["L8"])  # (8·128·56·56 + 128·1·3·3 + 8·128·56·56)·4
    25694720
    """
    return 4 * sum(math.prod(s) for s in (spec.x_shape, spec.w_shape, spec.y_shape))


# -- timing --------------------------------------------------------------------------------

def measure(fn: Callable[[], object], repeat: int, budget: float = BUDGET_S) -> float:
    """The median time of ``fn()`` in seconds: a warm-up call, then runs until ``repeat`` of
    them or ``budget`` seconds, at least 3.

    Examples
    --------
    >>> measure(lambda: None, repeat=3) < 0.01
    True
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    samples = [first] if first > SELF_WARMING_S else []
    while len(samples) < max(repeat, 1) and (len(samples) < 3 or sum(samples) < budget):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def progress(message: str) -> None:
    """A progress line on stderr, when it is a terminal (the tables go to stdout)."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# -- 1. peak ---------------------------------------------------------------------------------

PEAK_CHAINS, PEAK_LANES = 16, 16
PEAK_SOURCE = r"""#include "convc_runtime.h"
typedef float v16 __attribute__((vector_size(64)));
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) \
                  X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define DECLARE(i) v16 a##i = zero + (float)(i) * 1e-3f;
#define STEP(i) a##i = a##i * m + c;
#define SUM(i) s += a##i;
double convc_bench_fma(int64_t iterations, float scale) {
    v16 zero = {0}, m = zero + scale, c = zero + (1.0f - scale), s = zero;
    CHAINS(DECLARE)
    for (int64_t t = 0; t < iterations; t++) {
        CHAINS(STEP)
    }
    CHAINS(SUM)
    double total = 0;
    for (int lane = 0; lane < 16; lane++) total += s[lane];
    return total;
}
"""


def probe_fma() -> float:
    """Single-core GFLOP/s of 16 independent chains of 16-lane float FMAs (the best of 5)."""
    from .build import build_library

    cdef = "double convc_bench_fma(int64_t iterations, float scale);"
    try:
        lib = build_library(PEAK_SOURCE, cdef, cflags=("-march=native", "-ffp-contract=fast"))
    except Exception:  # a compiler without -march=native: the default flags
        lib = build_library(PEAK_SOURCE, cdef, cflags=("-ffp-contract=fast",))
    fma = lib.module.lib.convc_bench_fma
    iterations = 1 << 16
    while True:
        start = time.perf_counter()
        fma(iterations, 0.9999)
        if time.perf_counter() - start > 0.05:
            break
        iterations *= 2
    best = min(_timed(lambda: fma(iterations, 0.9999)) for _ in range(5))
    return iterations * PEAK_CHAINS * PEAK_LANES * 2 / best / 1e9


def probe_bandwidth(megabytes: int = 256) -> float:
    """GB/s of a numpy copy of a large float32 array (bytes read plus bytes written)."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    seconds = measure(lambda: np.copyto(dst, src), repeat=5, budget=0)
    return 2 * src.nbytes / seconds / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- 2. layers: convc ------------------------------------------------------------------------

def supports_threads() -> bool:
    """Whether `convc.compile` takes ``num_threads``."""
    import convc

    return "num_threads" in inspect.signature(convc.compile).parameters


def compile_module(graph, threads: int, **kwargs):
    """`convc.compile` at ``threads`` threads, or None when it cannot take a thread count."""
    import convc

    if supports_threads():
        return convc.compile(graph, num_threads=threads, **kwargs)
    return convc.compile(graph, **kwargs) if threads == 1 else None


def conv_graph(spec: LayerSpec):
    import convc

    g = convc.Graph(f"bench_{spec.key}")
    x = g.input("x", spec.x_shape)
    g.output(g.conv(x, channels=spec.k, kernel=spec.kernel, stride=spec.stride,
                    padding=spec.padding, groups=spec.groups, bias=False, name="conv0",
                    separable=spec.rank1))
    return g


def weights(spec: LayerSpec, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The convc parameters of the layer: its weight, or a rank-1 weight's 1-D factors."""
    if not spec.rank1:
        return {"conv0.weight": arrays["w"]}
    return {f"conv0.weight{a}": arrays[f"u{a}"] for a in range(len(spec.kernel))}


def layer_arrays(spec: LayerSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random input, weight and output gradient (float32); a rank-1 weight for ``rank1``."""
    rng = np.random.default_rng(seed)
    factors = {}
    if spec.rank1:
        u, v = (rng.standard_normal(m) for m in spec.kernel)
        w = np.broadcast_to(np.outer(u, v), spec.w_shape)
        factors = {f"u{a}": np.broadcast_to(f, (spec.k, spec.c // spec.groups, f.size))
                   .astype(np.float32) for a, f in enumerate((u, v))}
    else:
        w = rng.standard_normal(spec.w_shape)
    return {"x": rng.standard_normal(spec.x_shape, np.float32),
            "w": np.ascontiguousarray(w, np.float32),
            "gy": rng.standard_normal(spec.y_shape, np.float32), **factors}


def chosen_algorithm(explain: str, node: str, role: str) -> str:
    """The algorithm ``explain()`` reports for ``node``'s ``role`` step, else "direct".

    Reads an ``ALGORITHM`` line of the node's section, ``ALGORITHM [role:] name ...``, or the
    name after "chosen" where the line lists candidates.

    Examples
    --------
    >>> text = "NODE      conv0 (conv) at x.py:3\\nALGORITHM fwd: im2col (chosen)\\n"
    >>> chosen_algorithm(text, "conv0", "fwd"), chosen_algorithm(text, "conv0", "dinput")
    ('im2col', 'direct')
    """
    section = ""
    for block in re.split(r"\n(?=NODE )", explain):
        if re.match(rf"NODE\s+{re.escape(node)}\s", block):
            section = block
    for line in section.splitlines():
        found = re.match(r"ALGORITHM\s+(?:(\w+):\s*)?(.*)", line, re.IGNORECASE)
        if not found or found.group(1) not in (None, role):
            continue
        text = found.group(2)
        named = re.search(r"chosen:?\s*([\w-]+)", text) or re.search(r"([\w-]+)", text)
        if named:
            return named.group(1)
    return "direct"


def time_convc_layer(spec: LayerSpec, passes: Sequence[str], threads: int,
                     repeat: int) -> dict[str, dict] | None:
    """Per pass: ``{"s": seconds, "algorithm": name}``; None when ``threads`` is unsupported."""
    g = conv_graph(spec)
    fwd = compile_module(g, threads)
    if fwd is None:
        return None
    a = layer_arrays(spec)
    args = {"x": a["x"], **weights(spec, a)}
    t_fwd = measure(lambda: fwd(**args), repeat)
    results = {}
    if "fwd" in passes:
        results["fwd"] = {"s": t_fwd,
                          "algorithm": chosen_algorithm(fwd.explain(), "conv0", "fwd")}
    for name, wrt in (("grad-in", ["x"]), ("grad-w", list(weights(spec, a)))):
        if name not in passes:
            continue
        module = compile_module(g, threads, grad=wrt)
        both = measure(lambda: module(**args, **{"grad:conv0": a["gy"]}), repeat)
        results[name] = {"s": both - t_fwd, "with_fwd_s": both,
                         "algorithm": chosen_algorithm(module.explain(), "conv0", ROLE[name])}
    return results


# -- 2-5. PyTorch, in its own process --------------------------------------------------------

def run_peer(job: dict) -> dict | None:
    """Run `peer_main` in a subprocess with PyTorch's allocator settings; its JSON, or None
    (with a note on stderr) when it failed."""
    root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); import convc.bench as b; b.peer_main()"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(job), text=True,
                          capture_output=True, env={**os.environ, **PEER_ENV})
    try:
        return json.loads(done.stdout)
    except ValueError:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        print(f"PyTorch peer failed (exit {done.returncode}): ratios omitted\n{tail}",
              file=sys.stderr)
        return None


def peer_main() -> None:
    """The PyTorch side: read a job from stdin, write its timings as JSON to stdout."""
    import torch

    job = json.load(sys.stdin)
    out = {"torch": torch.__version__, "layers": {}, "pools": {}, "digits": {}}
    with torch.inference_mode():
        for t in job["threads"]:
            torch.set_num_threads(t)
            for d in job["layers"]:
                spec = LayerSpec.from_dict(d)
                out["layers"].setdefault(spec.key, {})[str(t)] = torch_layer(
                    spec, job["passes"], job["repeat"])
            for p in job["pools"]:
                out["pools"].setdefault(p, {})[str(t)] = torch_pool(p, job["repeat"])
    for t in job["threads"] if job["digits"] else ():
        torch.set_num_threads(t)
        out["digits"][str(t)] = torch_digits_step(job["repeat"])
    json.dump(out, sys.stdout)


def torch_layer(spec: LayerSpec, passes: Sequence[str], repeat: int) -> dict:
    """Per pass ``{"s", "format"}``: the better of NCHW and channels_last (2-D only)."""
    import torch

    conv = getattr(torch.nn.functional, f"conv{len(spec.spatial)}d")
    a = {k: torch.from_numpy(v) for k, v in layer_arrays(spec).items()}
    dims = len(spec.spatial)
    geometry = ([spec.stride] * dims, [spec.padding] * dims, [1] * dims, False, [0] * dims,
                spec.groups)
    calls = {
        "fwd": lambda x, w, gy: conv(x, w, None, spec.stride, spec.padding, 1, spec.groups),
        "grad-in": lambda x, w, gy: torch.ops.aten.convolution_backward(
            gy, x, w, None, *geometry, [True, False, False]),
        "grad-w": lambda x, w, gy: torch.ops.aten.convolution_backward(
            gy, x, w, None, *geometry, [False, True, False]),
    }
    formats = {"nchw": torch.contiguous_format}
    if dims == 2:
        formats["channels_last"] = torch.channels_last
    results = {}
    for name in passes:
        best = {}
        for label, memory_format in formats.items():
            x, w, gy = (a[k].contiguous(memory_format=memory_format) for k in ("x", "w", "gy"))
            best[label] = measure(lambda: calls[name](x, w, gy), repeat)
        label = min(best, key=best.get)
        results[name] = {"s": best[label], "format": label}
    return results


# -- 3. pooling --------------------------------------------------------------------------------

POOL_SHAPE = (8, 64, 56, 56)
POOLS = {  # name: (kind, window, stride, padding)
    "max 2×2 s2": ("max", 2, 2, 0),
    "avg 3×3 s1 p1": ("avg", 3, 1, 1),
}


def time_convc_pool(name: str, threads: int, repeat: int) -> float | None:
    import convc

    kind, window, stride, padding = POOLS[name]
    g = convc.Graph("bench_pool")
    x = g.input("x", POOL_SHAPE)
    pool = g.max_pool if kind == "max" else g.avg_pool
    g.output(pool(x, window=window, stride=stride, padding=padding))
    module = compile_module(g, threads)
    if module is None:
        return None
    data = np.random.default_rng(0).standard_normal(POOL_SHAPE, np.float32)
    return measure(lambda: module(x=data), repeat)


def torch_pool(name: str, repeat: int) -> float:
    import torch

    kind, window, stride, padding = POOLS[name]
    fn = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
    data = torch.from_numpy(np.random.default_rng(0).standard_normal(POOL_SHAPE, np.float32))
    return min(measure(lambda: fn(x, window, stride, padding), repeat)
               for x in (data, data.contiguous(memory_format=torch.channels_last)))


# -- 4. compile times --------------------------------------------------------------------------

def lenet_graph():
    import convc

    g = convc.Graph("bench_lenet")
    x = g.input("x", (None, 1, 28, 28))
    y = g.input("y", (None,), dtype="int64")
    h = g.max_pool(g.relu(g.conv(x, channels=6, kernel=5)), window=2)
    h = g.max_pool(g.relu(g.conv(h, channels=16, kernel=5)), window=2)
    h = g.relu(g.dense(g.flatten(h), 120))
    h = g.relu(g.dense(h, 84))
    g.output(g.softmax_cross_entropy(g.dense(h, 10), y))
    return g


def time_compiles() -> dict[str, float]:
    """Seconds to lower the LeNet-like training graph to C, to compile it into a fresh cache
    (cold), and to compile it again from that cache; each compile in a new process, timed
    there from the call of `convc.compile` (imports not counted)."""
    import convc

    with tempfile.TemporaryDirectory(prefix="convc-bench-cache-") as cache:
        cold, *again = (_compile_in_new_process(cache) for _ in range(4))
    lower = measure(lambda: convc.lower(lenet_graph(), grad=True), repeat=3)
    return {"lower_s": lower, "cold_s": cold, "cached_s": statistics.median(again)}


_COMPILE_LENET = """
import time, convc
from convc.bench import lenet_graph
graph = lenet_graph()
start = time.perf_counter()
convc.compile(graph, grad=True)
print(time.perf_counter() - start)
"""


def _compile_in_new_process(cache: str) -> float:
    env = dict(os.environ, CONVC_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-c", _COMPILE_LENET], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.split()[-1])


# -- 5. the digits training step ---------------------------------------------------------------

DIGITS_BATCH = 64


def digits_graph():
    """The network of examples/train_digits.py."""
    import convc

    g = convc.Graph("digits")
    x = g.input("x", (None, 1, 8, 8))
    y = g.input("y", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=16, kernel=3, padding=1))
    h = g.relu(g.conv(h, channels=32, kernel=3, padding=1))
    h = g.max_pool(h, window=2)
    logits = g.dense(g.flatten(h), 10)
    g.output(logits, g.softmax_cross_entropy(logits, y))
    return g


def digits_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((DIGITS_BATCH, 1, 8, 8), np.float32),
            rng.integers(0, 10, DIGITS_BATCH).astype(np.int64))


def time_convc_digits_step(threads: int, repeat: int) -> float | None:
    """Seconds per training step (module call and Adam step), or None if unsupported."""
    from .train import Adam

    module = compile_module(digits_graph(), threads, grad=True)
    if module is None:
        return None
    params = module.init_params(seed=0)
    optimizer = Adam(params, lr=3e-3)
    x, y = digits_batch()

    def step():
        _, grads = module(x=x, y=y, **params)
        optimizer.step(grads)

    return measure(step, repeat)


def torch_digits_step(repeat: int) -> float:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = (torch.from_numpy(a) for a in digits_batch())

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return measure(step, repeat)


# -- report ------------------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; text left-aligned, everything else right.

    Examples
    --------
    >>> print(format_table(["layer", "ms"], [["L1", "1.25"], ["L10", "12.5"]]))
    layer    ms
    -----  ----
    L1     1.25
    L10    12.5
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]
    lines = []
    for row in cells[:1] + [["-" * w for w in widths]] + cells[1:]:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w)
                               for c, w, num in zip(row, widths, numeric)).rstrip())
    return "\n".join(lines)


def _is_number(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,]+(e[-+]?\d+)?%?|n/a|—|", cell))


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits, without exponents; None is n/a."""
    if value is None or not math.isfinite(value):
        return NA
    decimals = max(digits - 1 - int(math.floor(math.log10(abs(value)))), 0) if value else 0
    return f"{value:,.{decimals}f}"


def machine_line(torch_version: str | None) -> str:
    import convc

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    line = (f"machine: {model}, {usable_cores()} cores | convc {convc.__version__} | "
            f"torch {torch_version or 'not installed'} | numpy {np.__version__} | "
            f"python {platform.python_version()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        line += f"\nwarning: load average {load:.2f} before the run; other processes share the CPUs"
    return line


def torch_version() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


# -- the run -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m convc.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default=",".join(LAYERS),
                   help=f"comma-separated, of {','.join(LAYERS)} (default: all)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--passes", default=",".join(PASSES),
                   help="of fwd,grad-in,grad-w (default: all)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                   help=f"timing runs per case, at most (at least 3; stops after {BUDGET_S} s)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    args = p.parse_args(argv)
    known = {**LAYERS, **HIDDEN_LAYERS}
    args.layers = _choices(p, "--layers", args.layers, known)
    args.passes = _choices(p, "--passes", args.passes, PASSES)
    args.sections = _choices(p, "--sections", args.sections, SECTIONS)
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads takes comma-separated integers, found {args.threads!r}")
    if any(t < 1 for t in args.threads):
        p.error("--threads must be at least 1")
    return args


def _choices(parser, option: str, value: str, known) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(k for k in known if k not in HIDDEN_LAYERS)}")
    return chosen


def same_malloc_settings() -> bool:
    """Give this process the malloc settings of the PyTorch peer (`PEER_ENV`), through
    glibc's ``mallopt``: arrays up to 32 MB come from the heap and freed memory is kept,
    so that a module's fresh output arrays do not fault in new pages on every call on one
    side only. False where the C library has no ``mallopt``."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)
                and mallopt(m_trim_threshold, min(TRIM_THRESHOLD, 2**31 - 1)))


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print its tables and return every figure (also ``--json``)."""
    args = parse_args(argv)
    same_malloc_settings()
    started = time.perf_counter()
    version = None if args.no_torch else torch_version()
    machine = machine_line(version)
    print(machine)
    if not version:
        print("PyTorch not installed: ratios omitted" if not args.no_torch else
              "--no-torch: ratios omitted")
    report: dict = {"machine": machine, "options": {
        k: v for k, v in vars(args).items() if k != "json"}}
    specs = [{**LAYERS, **HIDDEN_LAYERS}[k] for k in args.layers]
    report["errors"] = errors = {}
    if "peak" in args.sections:
        report["peak"] = _guarded(errors, "peak", section_peak)
    peak = (report.get("peak") or {}).get("gflops_per_core")
    peer, peer_started = None, time.perf_counter()
    if version:
        progress("running the PyTorch peer")
        peer = run_peer({"threads": args.threads, "repeat": args.repeat,
                         "passes": args.passes,
                         "layers": [asdict(s) for s in specs] if "layers" in args.sections
                         else [],
                         "pools": list(POOLS) if "pool" in args.sections else [],
                         "digits": "digits" in args.sections})
        report["torch"] = peer and peer.get("torch")
    report["peer_seconds"] = time.perf_counter() - peer_started
    if "layers" in args.sections:
        report["layers"], report["geomean"] = section_layers(specs, args, peak, peer, errors)
    if "pool" in args.sections:
        report["pools"] = _guarded(errors, "pool", section_pool, args, peer)
    if "compile" in args.sections:
        report["compile"] = _guarded(errors, "compile", section_compile)
    if "digits" in args.sections:
        report["digits"] = _guarded(errors, "digits", section_digits, args, peer)
    if "fft" in args.sections:
        report["fft"] = _guarded(errors, "fft", section_fft, args)
    report["seconds"] = time.perf_counter() - started
    print(f"\nwhole run {report['seconds']:.1f} s, PyTorch peer {report['peer_seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _guarded(errors: dict, name: str, fn: Callable, *args):
    """``fn(*args)``, or None with the error printed and kept: one failing part of the
    benchmark (a layer the compiler rejects, say) must not end the run."""
    try:
        return fn(*args)
    except Exception as exc:
        errors[name] = f"{type(exc).__name__}: {exc}"
        print(f"\n{name} failed: {errors[name]}")
        return None


def section_peak() -> dict:
    per_core, bandwidth = probe_fma(), probe_bandwidth()
    cores = usable_cores()
    print("\n1. Peak (FMA chains on 16-float vectors, one core, best of 5; numpy copy, median)")
    print(format_table(["figure", "value"], [
        ["GFLOP/s per core", fmt(per_core)],
        [f"GFLOP/s × {cores} cores (estimate)", fmt(per_core * cores)],
        ["memory bandwidth, copy (GB/s, read + write)", fmt(bandwidth)],
    ]))
    return {"gflops_per_core": per_core, "cores": cores, "gflops_all_cores": per_core * cores,
            "copy_gbps": bandwidth}


def section_layers(specs, args, peak, peer, errors) -> tuple[list[dict], list[dict]]:
    print("\n2. Convolutions (float32)")
    print(format_table(
        ["layer", "", "N", "C", "input", "K", "kernel", "stride", "pad", "groups", "GFLOP"],
        [[s.key, s.title, s.n, s.c, _dims(s.spatial), s.k,
          _dims(s.kernel) + (" rank 1" if s.rank1 else ""), s.stride, s.padding, s.groups,
          fmt(conv_flops(s) / 1e9)] for s in specs]))
    rows = []
    for spec in specs:
        for t in args.threads:
            progress(f"convc {spec.key} at {t} thread{'s' * (t > 1)}")
            ours = _guarded(errors, f"{spec.key} at {t} threads", time_convc_layer, spec,
                            args.passes, t, args.repeat)
            theirs = ((peer or {}).get("layers", {}).get(spec.key, {}).get(str(t), {}))
            for name in args.passes:
                rows.append(layer_row(spec, name, t, (ours or {}).get(name), theirs.get(name),
                                      peak))
    print(f"\nmedian of up to {args.repeat} runs; grad-in and grad-w are median(forward + "
          "backward) − median(forward) of convc's modules, PyTorch's convolution_backward "
          "alone;\nGFLOP/s count 2·multiply-adds of the direct algorithm; ratio = convc speed "
          "/ PyTorch speed (>1: convc faster), PyTorch at its better memory format;\n"
          "GB/s: the bytes of the pass's tensors, each read or written once, per second "
          "(against the copy bandwidth of section 1)")
    if any(t > 1 for t in args.threads) and not supports_threads():
        print("convc.compile takes no num_threads: convc is timed at 1 thread only (n/a)")
    print(format_table(
        ["layer", "pass", "threads", "ms", "GFLOP/s", "% peak", "GB/s", "algorithm",
         "torch ms", "torch format", "ratio"],
        [[r["layer"], r["pass"], r["threads"], fmt(r["ms"]), fmt(r["gflops"]),
          fmt(r["peak_pct"], 2), fmt(r["gbps"]), r["algorithm"] or NA, _or_none(r["torch_ms"]),
          r["torch_format"] or NONE, _or_none(r["ratio"])] for r in rows]))
    means = geomeans(rows, args.passes, args.threads)
    print("\ngeometric mean of the ratio convc / PyTorch")
    print(format_table(["pass", *(f"{t} thread{'s' * (t > 1)}" for t in args.threads)],
                       [[p, *(_or_none(m["ratio"]) for m in means if m["pass"] == p)]
                        for p in args.passes]))
    return rows, means


def layer_row(spec, name, threads, ours, theirs, peak) -> dict:
    seconds = ours["s"] if ours and ours["s"] > 0 else None
    gflops = conv_flops(spec) / seconds / 1e9 if seconds else None
    gbps = pass_bytes(spec) / seconds / 1e9 if seconds else None
    peak_t = peak * min(threads, usable_cores()) if peak else None
    torch_s = theirs["s"] if theirs else None
    return {"layer": spec.key, "pass": name, "threads": threads,
            "ms": seconds * 1e3 if seconds else None, "gflops": gflops, "gbps": gbps,
            "peak_pct": 100 * gflops / peak_t if gflops and peak_t else None,
            "algorithm": ours["algorithm"] if ours else None,
            "torch_ms": torch_s * 1e3 if torch_s else None,
            "torch_format": theirs["format"] if theirs else None,
            "ratio": torch_s / seconds if torch_s and seconds else None,
            "with_fwd_ms": ours["with_fwd_s"] * 1e3 if ours and "with_fwd_s" in ours else None}


def geomeans(rows: list[dict], passes, threads) -> list[dict]:
    means = []
    for p in passes:
        for t in threads:
            ratios = [r["ratio"] for r in rows if r["pass"] == p and r["threads"] == t
                      and r["ratio"]]
            mean = math.exp(statistics.fmean(map(math.log, ratios))) if ratios else None
            means.append({"pass": p, "threads": t, "ratio": mean, "layers": len(ratios)})
    return means


def section_pool(args, peer) -> list[dict]:
    rows = []
    read = math.prod(POOL_SHAPE) * 4
    for name in POOLS:
        for t in args.threads:
            ours = time_convc_pool(name, t, args.repeat)
            theirs = (peer or {}).get("pools", {}).get(name, {}).get(str(t))
            rows.append({"pool": name, "threads": t, "ms": ours and ours * 1e3,
                         "gbps": ours and read / ours / 1e9,
                         "torch_ms": theirs and theirs * 1e3,
                         "ratio": theirs / ours if ours and theirs else None})
    print(f"\n3. Pooling on {_dims(POOL_SHAPE)} float32 (GB/s of input read; ratio = convc "
          "speed / PyTorch speed)")
    print(format_table(["pool", "threads", "ms", "GB/s", "torch ms", "ratio"],
                       [[r["pool"], r["threads"], fmt(r["ms"]), fmt(r["gbps"]),
                         _or_none(r["torch_ms"]), _or_none(r["ratio"])] for r in rows]))
    return rows


def section_compile() -> dict:
    times = time_compiles()
    print("\n4. Compile times, LeNet-like training graph (grad=True)")
    print(format_table(["stage", "s"], [
        ["lower (graph → C, no build)", fmt(times["lower_s"])],
        ["compile, cold (fresh cache)", fmt(times["cold_s"])],
        ["compile, cached (new process: disk cache)", fmt(times["cached_s"])],
    ]))
    return times


def section_digits(args, peer) -> list[dict]:
    rows = []
    for t in args.threads:
        ours = time_convc_digits_step(t, args.repeat)
        theirs = (peer or {}).get("digits", {}).get(str(t))
        rows.append({"threads": t, "images_per_s": ours and DIGITS_BATCH / ours,
                     "torch_images_per_s": theirs and DIGITS_BATCH / theirs,
                     "ratio": theirs / ours if ours and theirs else None})
    print(f"\n5. Digits training step (examples/train_digits.py's network, batch "
          f"{DIGITS_BATCH}, Adam; PyTorch eager)")
    print(format_table(["threads", "images/s", "torch images/s", "ratio"],
                       [[r["threads"], fmt(r["images_per_s"]),
                         _or_none(r["torch_images_per_s"]), _or_none(r["ratio"])]
                        for r in rows]))
    return rows


def _or_none(value: float | None) -> str:
    return NONE if value is None else fmt(value)


# -- 6. FFT ---------------------------------------------------------------------------------

FFT_SHAPES = ((144, 144), (1080, 1080))
FFT_CDEF = """
size_t convc_rfft_scratch_f32(int threads, int rank, const size_t *dims);
int convc_rfft_f32(int threads, int rank, const size_t *dims, size_t count,
                   const size_t *in_dims, const float *in, float *out, void *scratch);
"""


def time_convc_rfft(shape: Sequence[int], threads: int, repeat: int) -> float:
    """Median seconds of one forward real FFT of a float32 array of `shape` (runtime/fft.c)."""
    from .build import build_library

    module = build_library('#include "convc_runtime.h"\n', FFT_CDEF).module
    ffi, lib = module.ffi, module.lib
    dims = ffi.new("size_t[]", list(shape))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = np.empty((*shape[:-1], shape[-1] // 2 + 1), np.complex64)
    scratch = np.empty(lib.convc_rfft_scratch_f32(threads, len(shape), dims), np.uint8)
    args = (threads, len(shape), dims, 1, ffi.NULL, ffi.cast("float *", x.ctypes.data),
            ffi.cast("float *", out.ctypes.data), ffi.cast("void *", scratch.ctypes.data))
    if lib.convc_rfft_f32(*args) != 0:
        raise RuntimeError(f"convc_rfft_f32 refused the shape {shape}")
    return measure(lambda: lib.convc_rfft_f32(*args), repeat)


def section_fft(args) -> list[dict]:
    rows = []
    for shape in FFT_SHAPES:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        theirs = measure(lambda: np.fft.rfft2(x), args.repeat)
        for t in args.threads:
            ours = time_convc_rfft(shape, t, args.repeat)
            points = math.prod(shape)
            rows.append({"shape": list(shape), "threads": t, "ns_per_point": ours / points * 1e9,
                         "numpy_ns_per_point": theirs / points * 1e9, "ratio": theirs / ours})
    print("\n6. Real FFT, 2-D float32, forward (ratio = convc speed / numpy.fft.rfft2 speed, "
          "numpy on one thread)")
    print(format_table(["shape", "threads", "ns/point", "numpy ns/point", "ratio"],
                       [[_dims(r["shape"]), r["threads"], fmt(r["ns_per_point"]),
                         fmt(r["numpy_ns_per_point"]), fmt(r["ratio"])] for r in rows]))
    return rows


if __name__ == "__main__":
    main()
