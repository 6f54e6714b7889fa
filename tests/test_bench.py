"""The benchmark, `python -m convc.bench`: a smoke run on a tiny layer, its FLOP count against
a direct count, the reading of explain()'s algorithm line, and the PyTorch peer.

Speed itself stays out of the suite: these check that every figure is produced and sane.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform

import numpy as np
import pytest

from convc import bench


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_run_on_a_tiny_layer(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--layers", "tiny", "--threads", "1", "--sections", "layers", "--no-torch",
                "--json", str(out), "--repeat", "3"])
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    rows = report["layers"]
    assert [r["pass"] for r in rows] == ["fwd", "grad-in", "grad-w"]
    for r in rows:
        assert r["layer"] == "tiny" and r["threads"] == 1
        assert finite_positive(r["ms"]) and finite_positive(r["gflops"]), r
        assert r["gflops"] == pytest.approx(
            bench.conv_flops(bench.HIDDEN_LAYERS["tiny"]) / (r["ms"] / 1e3) / 1e9)
        assert r["gbps"] == pytest.approx(
            bench.pass_bytes(bench.HIDDEN_LAYERS["tiny"]) / (r["ms"] / 1e3) / 1e9)
        assert r["algorithm"] and r["ratio"] is None
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "--no-torch: ratios omitted" in printed


def test_the_other_sections_give_finite_figures(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--threads", "1", "--sections", "peak,pool,compile,digits", "--no-torch",
                "--json", str(out), "--repeat", "3"])
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    peak = report["peak"]
    assert finite_positive(peak["gflops_per_core"]) and finite_positive(peak["copy_gbps"])
    assert peak["gflops_all_cores"] == pytest.approx(peak["gflops_per_core"] * peak["cores"])
    assert [p["pool"] for p in report["pools"]] == list(bench.POOLS)
    assert all(finite_positive(p["ms"]) and finite_positive(p["gbps"]) for p in report["pools"])
    assert all(finite_positive(v) for v in report["compile"].values())
    (digits,) = report["digits"]
    assert finite_positive(digits["images_per_s"]) and digits["ratio"] is None


def test_thread_counts_the_compiler_cannot_take_are_not_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "supports_threads", lambda: False)
    out = tmp_path / "bench.json"
    bench.main(["--layers", "tiny", "--threads", "2", "--passes", "fwd", "--sections",
                "layers", "--no-torch", "--json", str(out), "--repeat", "3"])
    (row,) = json.loads(out.read_text())["layers"]
    assert row["threads"] == 2 and row["ms"] is None and row["gflops"] is None


def direct_flops(spec: bench.LayerSpec) -> int:
    """Two flops per multiply-add, counted by walking every output, input channel of its
    group and kernel tap of the direct algorithm."""
    count = 0
    for _n in range(spec.n):
        for _k in range(spec.k):
            for _out in np.ndindex(*spec.out_spatial):
                for _c in range(spec.c // spec.groups):
                    for _tap in np.ndindex(*spec.kernel):
                        count += 2
    return count


@pytest.mark.parametrize("spec", [
    bench.LayerSpec("a", "2-D strided, padded", 2, 4, (7, 6), 3, (3, 2), stride=2, padding=1),
    bench.LayerSpec("b", "grouped", 1, 6, (5, 5), 4, (3, 3), groups=2),
    bench.LayerSpec("c", "1-D", 3, 1, (20,), 2, (4,), stride=4),
    bench.LayerSpec("d", "3-D", 1, 2, (4, 5, 3), 2, (2, 3, 1), padding=1),
])
def test_flop_count_matches_a_direct_count(spec):
    assert bench.conv_flops(spec) == direct_flops(spec)


@pytest.mark.parametrize("key", ["L8", "tiny"])
def test_bytes_are_those_of_the_arrays_a_pass_moves(key):
    spec = {**bench.LAYERS, **bench.HIDDEN_LAYERS}[key]
    a = bench.layer_arrays(spec)
    assert bench.pass_bytes(spec) == a["x"].nbytes + a["w"].nbytes + a["gy"].nbytes


def test_suite_output_sizes():
    assert bench.LAYERS["L1"].out_spatial == (24, 24)
    assert bench.LAYERS["L4"].out_spatial == (112, 112)
    assert bench.LAYERS["L6"].out_spatial == (28, 28)
    assert bench.LAYERS["L9"].out_spatial == (3985,)
    assert bench.LAYERS["L11"].out_spatial == (1024, 1024)


def test_rank1_weight_is_an_outer_product():
    w = bench.layer_arrays(bench.LAYERS["L11"])["w"]
    assert w.shape == (1, 1, 31, 31) and w.dtype == np.float32
    assert np.linalg.matrix_rank(w[0, 0].astype(np.float64), tol=1e-4) == 1


def test_algorithm_read_from_explain():
    text = ("graph 'g'\n\nNODE      conv0 (conv) at f.py:1\nFLOPS     fwd: 10 per example\n"
            "ALGORITHM fwd: gemm 8x9x10; packed x~\nALGORITHM dinput: direct loops\n"
            "\nNODE      conv1 (conv) at f.py:2\nALGORITHM fwd: winograd F(2,3)\n"
            "\nNODE      conv2 (conv) at f.py:3\nALGORITHM candidates fft, im2col; chosen: fft\n")
    assert bench.chosen_algorithm(text, "conv0", "fwd") == "gemm"
    assert bench.chosen_algorithm(text, "conv0", "dinput") == "direct"
    assert bench.chosen_algorithm(text, "conv0", "dweight") == "direct"
    assert bench.chosen_algorithm(text, "conv1", "fwd") == "winograd"
    assert bench.chosen_algorithm(text, "conv2", "dinput") == "fft"
    assert bench.chosen_algorithm(text, "conv3", "fwd") == "direct"  # no such node


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_this_process_gets_the_peers_malloc_settings():
    """glibc takes both settings (mallopt returns 1 for each)."""
    assert bench.same_malloc_settings()


def test_unknown_layer_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--layers", "L99"])
    assert "unknown L99" in capsys.readouterr().err


def test_torch_peer_on_a_tiny_layer():
    pytest.importorskip("torch")
    spec = bench.HIDDEN_LAYERS["tiny"]
    result = bench.run_peer({"threads": [1], "repeat": 3, "passes": list(bench.PASSES),
                             "layers": [dataclasses.asdict(spec)], "pools": [], "digits": False})
    assert result is not None and result["torch"]
    timings = result["layers"]["tiny"]["1"]
    assert set(timings) == set(bench.PASSES)
    for t in timings.values():
        assert finite_positive(t["s"]) and t["format"] in ("nchw", "channels_last")


def test_the_fft_section_times_convc_and_numpy(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--threads", "1", "--sections", "fft", "--no-torch", "--json", str(out),
                "--repeat", "3"])
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert [r["shape"] for r in report["fft"]] == [list(s) for s in bench.FFT_SHAPES]
    assert all(finite_positive(r["ns_per_point"]) and finite_positive(r["numpy_ns_per_point"])
               for r in report["fft"])
