"""The compiled module: argument checks before any C runs, views, dtypes, what it shows of
itself (source, library, explain) and calls from several threads at once.

Every check of a bad call replaces the module's C entry point with a recorder, so that
"raised before any C runs" is observed, not assumed.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import convc

CLASSES = 4


def build_small() -> convc.Graph:
    """conv (2 -> 3 channels, kernel 3) -> relu -> flatten -> dense 4, and the loss."""
    g = convc.Graph("small")
    x = g.input("x", (None, 2, 6))
    labels = g.input("labels", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=3, kernel=3))
    logits = g.dense(g.flatten(h), CLASSES)
    g.output(logits, g.softmax_cross_entropy(logits, labels, name="loss"))
    return g


def reference(x, labels, p):
    """The small network in float64 numpy."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x = x.astype(np.float64)
    w = p["conv0.weight"]
    conv = p["conv0.bias"][None, :, None] + sum(
        np.einsum("kc,ncl->nkl", w[:, :, m], x[:, :, m:m + 4]) for m in range(3))
    logits = np.maximum(conv, 0).reshape(len(x), 12) @ p["dense0.weight"].T + p["dense0.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return logits, -logp[np.arange(len(x)), labels].mean()


def random_params(net, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float32 if net.dtype == "float32" else np.float64
    return {name: rng.standard_normal(tuple(int(d) for d in shape)).astype(dtype)
            for name, shape in net.parameters.items()}


@pytest.fixture(scope="module")
def small():
    return convc.compile(build_small())


@pytest.fixture(scope="module")
def small64():
    return convc.compile(build_small(), "float64")


@pytest.fixture
def args(small):
    rng = np.random.default_rng(1)
    return dict(x=rng.standard_normal((5, 2, 6)).astype(np.float32),
                labels=np.array([0, 3, 1, 2, 3]), **random_params(small, 2))


@pytest.fixture
def recorder(small, monkeypatch):
    """Replaces the C entry point: the list of calls it received."""
    calls = []

    def entry(*pointers):
        calls.append(pointers)
        return 0

    monkeypatch.setattr(small, "_entry", entry)
    return calls


def refused(net, calls, pattern, **arrays) -> str:
    with pytest.raises(convc.ArgumentError, match=pattern) as info:
        net(**arrays)
    assert calls == [], "C ran before the arguments were checked"
    return str(info.value)


# -- a good call ---------------------------------------------------------------------------------

def test_small_network_against_numpy(small, args):
    out = small(**args)
    assert set(out) == {"dense0", "loss"}
    assert out["dense0"].dtype == np.float32 and out["dense0"].shape == (5, CLASSES)
    assert out["loss"].shape == ()
    logits, loss = reference(args["x"], args["labels"], {k: v for k, v in args.items()
                                                         if "." in k})
    np.testing.assert_allclose(out["dense0"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)


def test_the_recorder_sees_a_call_that_passes_the_checks(small, args, recorder):
    small(**args)
    assert len(recorder) == 1


def test_argument_error_is_a_value_error():
    assert issubclass(convc.ArgumentError, ValueError)
    assert issubclass(convc.ArgumentError, convc.ConvcError)


# -- refused calls -------------------------------------------------------------------------------

def test_missing_input(small, args, recorder):
    del args["labels"]
    message = refused(small, recorder, "missing: labels", **args)
    assert "takes x, labels, conv0.weight" in message


def test_missing_parameter(small, args, recorder):
    del args["dense0.bias"]
    refused(small, recorder, r"missing: dense0\.bias", **args)


def test_unexpected_argument(small, args, recorder):
    message = refused(small, recorder, "unexpected: z", z=args["x"], **args)
    assert "missing" not in message


def test_misspelt_parameter(small, args, recorder):
    args["conv0.weights"] = args.pop("conv0.weight")
    message = refused(small, recorder, r"unexpected: conv0\.weights", **args)
    assert "missing: conv0.weight" in message


@pytest.mark.parametrize("name, shape, shown", [
    ("x", (2, 6), r"'x': expected shape \(N, 2, 6\) \(3-d\), found \(2, 6\) \(2-d\)"),
    ("x", (5, 2, 6, 1), r"'x': expected shape \(N, 2, 6\) \(3-d\), found \(5, 2, 6, 1\)"),
    ("labels", (5, 1), r"'labels': expected shape \(N,\) \(1-d\), found \(5, 1\) \(2-d\)"),
    ("conv0.bias", (), r"'conv0\.bias': expected shape \(3,\) \(1-d\), found \(\) \(0-d\)"),
])
def test_wrong_rank(small, args, recorder, name, shape, shown):
    args[name] = np.zeros(shape, args[name].dtype)
    refused(small, recorder, shown, **args)


@pytest.mark.parametrize("name, shape, shown", [
    ("x", (5, 1, 6), r"'x': expected shape \(N, 2, 6\), found \(5, 1, 6\) \(axis 1\)"),
    ("x", (5, 2, 7), r"'x': expected shape \(N, 2, 6\), found \(5, 2, 7\) \(axis 2\)"),
    ("conv0.weight", (3, 2, 2),
     r"'conv0\.weight': expected shape \(3, 2, 3\), found \(3, 2, 2\) \(axis 2\)"),
    ("dense0.weight", (12, 4),
     r"'dense0\.weight': expected shape \(4, 12\), found \(12, 4\) \(axis 0\)"),
])
def test_wrong_size_on_a_fixed_axis(small, args, recorder, name, shape, shown):
    args[name] = np.zeros(shape, args[name].dtype)
    refused(small, recorder, shown, **args)


def test_inconsistent_batch_size(small, args, recorder):
    args["labels"] = args["labels"][:4]
    refused(small, recorder, r"'labels': size N is 5 in 'x' but 4 here", **args)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64, np.bool_])
def test_wrong_dtype_into_float32(small, args, recorder, dtype):
    args["x"] = args["x"].astype(dtype)
    found = np.dtype(dtype).name
    refused(small, recorder, f"'x': expected dtype float32, found {found}", **args)


def test_wrong_dtype_of_a_parameter(small, args, recorder):
    args["dense0.weight"] = args["dense0.weight"].astype(np.float64)
    refused(small, recorder, r"'dense0\.weight': expected dtype float32, found float64", **args)


def test_a_list_is_converted_then_checked(small, args, recorder):
    args["x"] = args["x"].tolist()  # becomes float64
    refused(small, recorder, "'x': expected dtype float32, found float64", **args)


@pytest.mark.parametrize("bad, index", [(4, 3), (-1, 0), (100, 4)])
def test_labels_out_of_range(small, args, recorder, bad, index):
    args["labels"] = args["labels"].copy()
    args["labels"][index] = bad
    message = refused(small, recorder, r"'labels': values must lie in \[0, 4\)", **args)
    assert f"found {bad} at index ({index},)" in message


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float_labels(small, args, recorder, dtype):
    args["labels"] = args["labels"].astype(dtype)
    refused(small, recorder, f"'labels': expected an integer array .*found dtype "
            f"{np.dtype(dtype).name}", **args)


def test_int32_labels_are_accepted(small, args):
    """...and converted at every call (a call like it is not taken as checked)."""
    want = small(**args)
    args["labels"] = args["labels"].astype(np.int32)
    for _ in range(2):
        got = small(**args)
        np.testing.assert_array_equal(got["loss"], want["loss"])


def test_a_call_like_a_checked_one_checks_only_the_labels(small, args, recorder):
    """Arrays of the names, shapes, dtypes and layout of a call that passed are not checked
    again, but the values of the labels are, and any other signature is checked in full."""
    small(**args)
    small(**args)
    assert len(recorder) == 2
    bad = args["labels"].copy()
    bad[2] = 7
    with pytest.raises(convc.ArgumentError, match=r"'labels': values must lie in \[0, 4\)"):
        small(**{**args, "labels": bad})
    with pytest.raises(convc.ArgumentError, match="'dense0.weight'"):
        small(**{**args, "dense0.weight": np.zeros((3, 9), np.float32)})
    assert len(recorder) == 2


def test_calls_of_other_batch_sizes_run_at_their_sizes(small, args):
    for batch in (5, 2, 5, 7):
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, 2, 6)).astype(np.float32)
        labels = rng.integers(0, CLASSES, batch)
        out = small(**{**args, "x": x, "labels": labels})
        logits, loss = reference(x, labels, {k: v for k, v in args.items() if "." in k})
        np.testing.assert_allclose(out["dense0"], logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)


def test_module_float64_refuses_float32(small64, args):
    params = random_params(small64, 2)
    with pytest.raises(convc.ArgumentError, match="'x': expected dtype float64, found float32"):
        small64(x=args["x"], labels=args["labels"], **params)


# -- views ---------------------------------------------------------------------------------------

def test_non_contiguous_inputs_give_the_contiguous_result(small, args):
    want = small(**args)
    x = args["x"]
    transposed = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    strided = np.zeros((5, 4, 12), np.float32)
    strided[:, ::2, ::2] = x
    strided = strided[:, ::2, ::2]
    reversed_ = np.ascontiguousarray(x[::-1])[::-1]
    labels = np.zeros(10, np.int64)
    labels[::2] = args["labels"]
    w = args["dense0.weight"]
    weight = np.asfortranarray(w)
    for view in (transposed, strided, reversed_):
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(view, x)
        got = small(**{**args, "x": view, "labels": labels[::2],
                       "dense0.weight": weight})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert not labels[::2].flags.c_contiguous and not weight.flags.c_contiguous


# -- what a module shows -------------------------------------------------------------------------

def test_source_and_library(small):
    assert isinstance(small.source, str)
    assert re.search(r"^int convc_small_forward\(int64_t N, ", small.source, re.MULTILINE)
    assert Path(small.library_path).is_file()
    assert Path(small.source_path).read_text() == small.source
    assert list(small.inputs) == ["x", "labels"]
    assert [str(d) for d in small.inputs["x"]] == ["N", "2", "6"]
    assert list(small.parameters) == ["conv0.weight", "conv0.bias", "dense0.weight",
                                      "dense0.bias"]
    assert list(small.outputs) == ["dense0", "loss"]


def explain_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^NODE +", text, flags=re.MULTILINE)
    return {part.split()[0]: part for part in parts[1:]}


def test_explain(small):
    text = small.explain()
    assert "convc_small_forward" in text
    sections = explain_sections(text)
    # every computed node, with its shapes, FLOPs, loop nest and C function
    assert list(sections) == ["conv0", "relu0", "flatten0", "dense0", "loss"]
    shapes = {
        "conv0": "x (N, 2, 6), conv0.weight (3, 2, 3), conv0.bias (3,) -> (N, 3, 4)",
        "relu0": "conv0 (N, 3, 4) -> (N, 3, 4)",
        "flatten0": "relu0 (N, 3, 4) -> (N, 12)",
        "dense0": "flatten0 (N, 12), dense0.weight (4, 12), dense0.bias (4,) -> (N, 4)",
        "loss": "dense0 (N, 4), labels (N,) -> ()",
    }
    functions = re.findall(r"^static (?:void|int) (\w+)\(", small.source, re.MULTILINE)
    assert len(functions) == 5
    for (name, section), function in zip(sections.items(), functions):
        assert "test_module.py:" in section.splitlines()[0], name
        assert re.search(rf"^SHAPES +{re.escape(shapes[name])}$", section, re.MULTILINE), name
        assert re.search(r"^FLOPS +fwd: \d+ per (example|call)$", section, re.MULTILINE), name
        loops = r"^LOOPS +fwd:\n +for \w+ in \[0, [^)]+\):"
        assert re.search(loops, section, re.MULTILINE), name
        assert re.search(rf"^C +{function}, source lines \d+-\d+$", section, re.MULTILINE), name
        assert re.search(r"^ALGORITHM fwd: (direct loops|gemm .*|register-blocked .*)$",
                         section, re.MULTILINE), name
        assert name in function
    # a multiply and an add per tap: conv 3·4 outputs × 2·3 taps, dense 4 × 12
    assert "FLOPS     fwd: 144 per example" in sections["conv0"]
    assert "FLOPS     fwd: 96 per example" in sections["dense0"]


def test_explain_counts_a_fixed_batch_per_call():
    """With the batch fixed in the graph, the counts are the whole call's, and the time is
    estimated at that batch, not at an assumed one."""
    g = convc.Graph("fixed")
    x = g.input("x", (5, 2, 6))
    g.output(g.relu(g.conv(x, channels=3, kernel=3)))
    text = convc.compile(g, grad=["x"]).explain()
    assert "FLOPS     fwd: 720 per call" in text  # 5 images, 3·4 outputs, 2·3 taps, 2 flops
    assert "bytes per call of the forward pass" in text
    assert "per example" not in text and "at N=" not in text


def test_explain_line_ranges_point_at_the_functions(small):
    lines = small.source.splitlines()
    for name, section in explain_sections(small.explain()).items():
        function, first, last = re.search(r"^C +(\w+), source lines (\d+)-(\d+)$", section,
                                          re.MULTILINE).groups()
        body = "\n".join(lines[int(first) - 1:int(last)])
        assert re.search(rf"static (void|int) {function}\(", body), name
        assert lines[int(last) - 1] == "}", name


# -- float64 -------------------------------------------------------------------------------------

def test_float64_module(small64, args):
    params = random_params(small64, 3)
    x = args["x"].astype(np.float64)
    out = small64(x=x, labels=args["labels"], **params)
    assert out["dense0"].dtype == np.float64
    logits, loss = reference(x, args["labels"], params)
    np.testing.assert_allclose(out["dense0"], logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-12)
    assert "double" in small64.source and "float *" not in small64.source


# -- threads -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide():
    """A convolution with enough work per example to time: (N, 8, 32, 32) -> (N, 16, 32, 32)."""
    g = convc.Graph("wide")
    g.output(g.relu(g.conv(g.input("x", (None, 8, 32, 32)), channels=16, kernel=3,
                           padding="same")))
    net = convc.compile(g)
    return net, random_params(net, 5)


def wide_reference(x, p):
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = p["conv0.weight"].astype(np.float64)
    out = p["conv0.bias"].astype(np.float64)[None, :, None, None] + sum(
        np.einsum("kc,nchw->nkhw", w[:, :, a, b], x[:, :, a:a + 32, b:b + 32])
        for a in range(3) for b in range(3))
    return np.maximum(out, 0)


def test_one_module_from_eight_threads(wide):
    net, params = wide
    rng = np.random.default_rng(11)
    inputs = [[rng.standard_normal((2, 8, 32, 32)).astype(np.float32) for _ in range(3)]
              for _ in range(8)]
    serial = [[net(x=x, **params) for x in xs] for xs in inputs]
    np.testing.assert_allclose(serial[0][0], wide_reference(inputs[0][0], params), rtol=1e-4,
                               atol=1e-4)
    start = threading.Barrier(8, timeout=60)

    def work(i):
        start.wait()
        return [net(x=x, **params) for x in inputs[i]]

    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(work, range(8)))
    for i, (got, want) in enumerate(zip(threaded, serial)):
        for j, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_array_equal(a, b, err_msg=f"thread {i}, call {j}")
    assert not np.array_equal(serial[0][0], serial[1][0])  # the inputs differ per thread


def timed(call) -> float:
    begin = time.perf_counter()
    call()
    return time.perf_counter() - begin


def largest_pause(call) -> tuple[float, float]:
    """Run ``call`` while another Python thread ticks every half millisecond; return the
    longest stretch without a tick during the call, and the call's duration. A call that
    holds the GIL stops the ticks for as long as it runs."""
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.01)
    begin = time.perf_counter()
    call()
    end = time.perf_counter()
    stop.set()
    ticker.join()
    inside = [begin, *(t for t in ticks if begin < t < end), end]
    return float(np.max(np.diff(inside))), end - begin


def test_a_call_releases_the_gil(wide):
    """Python threads keep running while a ~20 ms call is inside C (retried when the
    machine is busy); the same probe does see a call that holds the GIL."""
    net, params = wide
    batch, took = 8, 0.0
    while took < 0.02 and batch < 2048:  # a call of 20 ms, however busy the machine
        batch *= 2
        x = np.random.default_rng(0).standard_normal((batch, 8, 32, 32)).astype(np.float32)
        net(x=x, **params)  # the first call at a size faults its workspace in
        took = min(timed(lambda: net(x=x, **params)) for _ in range(3))  # the least disturbed

    shuffled = list(np.random.default_rng(0).permutation(300_000).tolist())
    pause, duration = largest_pause(lambda: sorted(shuffled))  # list.sort holds the GIL
    assert pause > 0.5 * duration

    tries = []
    for _ in range(5):
        pause, duration = largest_pause(lambda: net(x=x, **params))
        tries.append((round(pause * 1e3, 1), round(duration * 1e3, 1)))
        if duration > 0.005 and pause < 0.5 * duration:  # ten tick periods, a tick in each half
            break
    else:
        pytest.fail(f"no tick while the call ran: (longest pause, call) in ms: {tries}")


# -- one tensor read twice -----------------------------------------------------------------------

def test_a_tensor_added_to_itself():
    g = convc.Graph("twice")
    x = g.input("x", (None, 3))
    g.output(g.add(x, x))
    net = convc.compile(g)
    xs = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(net(x=xs), 2 * xs)
