"""Step timers (`compile(profile=True)`, `Module.profile`), tuning (`compile(tune=True)`) and
the TIME lines of `explain()`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import convc
import convc.tune


def small_graph():
    g = convc.Graph("tuned")
    x = g.input("x", (None, 3, 12, 12))
    h = g.relu(g.conv(x, channels=8, kernel=3, padding=1))
    g.output(g.dense(g.flatten(h), 5))
    return g


@pytest.fixture
def tune_file(tmp_path, monkeypatch):
    """Tuning results go to a fresh file; compiled libraries stay in the session cache."""
    monkeypatch.setattr(convc.tune, "cache_dir", lambda: tmp_path)
    return tmp_path / f"tune-{convc.tune.machine_signature()}.json"


def test_profile_times_every_step_and_changes_no_result():
    g = small_graph()
    timed = convc.compile(g, grad=True, profile=True, num_threads=1)
    plain = convc.compile(g, grad=True, num_threads=1)
    args = timed.example_arguments(batch=4)
    seconds = timed.profile(repeat=3, **args)
    assert list(seconds) == [(s.node, s.role) for s in timed.lowered.steps]
    assert all(t >= 0 for t in seconds.values())
    assert seconds[("conv0", "fwd")] > 0
    start = time.perf_counter()
    timed(**args)
    whole = time.perf_counter() - start
    assert sum(seconds.values()) < 10 * whole + 1e-3  # the steps are parts of one call
    (out_t, grads_t), (out_p, grads_p) = timed(**args), plain(**args)
    np.testing.assert_array_equal(out_t, out_p)
    for name in grads_p:
        np.testing.assert_array_equal(grads_t[name], grads_p[name])


def test_profile_needs_step_timers():
    net = convc.compile(small_graph())
    with pytest.raises(ValueError, match="profile=True"):
        net.profile(**net.example_arguments(2))


def test_example_arguments_respect_shapes_and_label_ranges():
    g = convc.Graph("labels")
    x = g.input("x", (None, 6))
    y = g.input("y", (None,), dtype="int64")
    g.output(g.softmax_cross_entropy(g.dense(x, 4), y))
    args = convc.compile(g).example_arguments(batch=50, seed=3)
    assert args["x"].shape == (50, 6) and args["x"].dtype == np.float32
    assert args["y"].shape == (50,) and 0 <= args["y"].min() and args["y"].max() < 4


def test_tune_keeps_the_faster_algorithm_of_each_step_and_caches_it(tune_file, monkeypatch):
    g = small_graph()
    net = convc.compile(g, grad=True, tune=8, num_threads=1)
    tuned = net.lowered.tuned
    # the steps with a choice are exactly those that can be matrix products
    probe = convc.lower(g, grad=True, algorithm="gemm", num_threads=1)
    with_products = {(s.node, s.role) for s in probe.steps
                     if any(isinstance(p, convc.contract.Gemm) for p in probe.parts[s])}
    assert set(tuned) == with_products and ("conv0", "fwd") in tuned
    # every candidate is timed but "separable", which has no constant kernel to run here
    for entry in tuned.values():
        assert set(entry["seconds"]) == set(convc.tune.CANDIDATES) - {"separable"}
        assert entry["batch"] == 8
        assert entry["algorithm"] == min(entry["seconds"], key=entry["seconds"].get)
    assert len(json.loads(tune_file.read_text())) == len(tuned)
    # tuned or not, the module computes the same function
    plain = convc.compile(g, grad=True, num_threads=1)
    args = net.example_arguments(batch=3)
    (a, ga), (b, gb) = net(**args), plain(**args)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for name in ga:
        np.testing.assert_allclose(ga[name], gb[name], rtol=1e-4, atol=1e-4)

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached tuning must not time anything again")

    monkeypatch.setattr(convc, "compile", no_timing)
    assert convc.tune.tune(g, "float32", True, 1, batch=8) == tuned


def test_a_cached_choice_decides_how_the_step_runs(tune_file):
    g = small_graph()
    convc.tune.tune(g, "float32", False, 1, batch=4, repeat=1)
    known = json.loads(tune_file.read_text())
    for seconds in known.values():  # pretend direct loops won everywhere
        seconds.update(direct=1e-9, gemm=1.0)
    tune_file.write_text(json.dumps(known))
    net = convc.compile(g, tune=4, num_threads=1)
    assert "ALGORITHM fwd: direct loops" in net.explain().split("NODE      relu0")[0]
    fresh = convc.compile(g, num_threads=1)  # the cost model's choice
    assert "ALGORITHM fwd: direct loops" not in fresh.explain().split("NODE      relu0")[0]


def test_explain_estimates_every_step_and_shows_what_tuning_measured(tune_file):
    g = small_graph()
    text = convc.compile(g, grad=True, tune=4, num_threads=1).explain()
    lowered = convc.lower(g, grad=True, num_threads=1)
    steps = [s for s in lowered.steps if s.role != "start"]
    times = [line for line in text.splitlines() if line.startswith("TIME")]
    assert len(times) == len(steps)
    assert all("estimated" in line and "at N=4" in line for line in times)
    conv_fwd = next(line for line in text.split("NODE      conv0")[1].splitlines()
                    if line.startswith("TIME      fwd"))
    assert "measured gemm" in conv_fwd and "direct" in conv_fwd and "(tuned: " in conv_fwd
    assert "GFLOP/s" in conv_fwd
