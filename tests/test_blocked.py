"""Register-blocked direct sums (`convc.blocked`): that they compute the same function for
the forward pass and both gradients, what they hold in registers, and when the cost model
picks them.

The hypothesis suites of test_ops_conv and test_autodiff draw ``algorithm="blocked"`` with
the rest; here: strided, dilated, grouped and 1-3 D convolutions against numpy, in both
precisions, with channel counts that leave part of a vector empty and rows that leave a
narrower last block.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import padding_pairs
from test_autodiff import conv_grads_scatter
from test_col2im import check_against_references, conv_graph

import convc
from convc import blocked
from convc.blocked import Blocked
from convc.explain import explain
from convc.loops import (Block, Let, Loop, LoopKind, RowsStore, TransposeTile, Update, VLoad,
                         walk)

WRT = ["x", "conv0.weight", "conv0.bias"]

CASES = {
    # 20 channels: a full vector and a part of one; 31 columns: blocks of 14, 14, 3
    "plain": dict(cin=20, size=(6, 31), channels=20, kernel=(3, 3), padding=1),
    "strided": dict(cin=5, size=(13, 12), channels=17, kernel=(5, 4), stride=2, padding=2),
    "dilated_groups": dict(cin=4, size=(9, 8), channels=6, kernel=(3, 2), stride=1,
                           padding=((1, 0), (2, 1)), groups=2, dilation=2),
    "audio": dict(cin=1, size=(40,), channels=9, kernel=(8,), stride=3, padding=0),
    "volume": dict(cin=2, size=(5, 6, 4), channels=3, kernel=(3, 3, 2), stride=(1, 2, 1),
                   padding=1),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_the_references(case, dtype):
    net = convc.compile(conv_graph(**CASES[case]), dtype, grad=WRT, algorithm="blocked")
    assert "register-blocked" in net.explain()
    # float32: sums of up to 100 products
    check_against_references(net, CASES[case], len(case), dtype,
                             1e-10 if dtype == "float64" else 2e-5)


def _blocked(lowered, role):
    step = next(s for s in lowered.steps if s.role == role and s.node == "conv0")
    return [p for p in lowered.parts[step] if isinstance(p, Blocked)]


def test_what_each_pass_holds_in_registers():
    """Forward and h: vectors of output (input) channels by blocks of output (input)
    columns; g: vectors of output channels by blocks of input channels. A row of 31 is
    three blocks as even as can be (11, 11, 9); 20 channels, a vector and a part of one."""
    lowered = convc.lower(conv_graph(**CASES["plain"]), grad=WRT, algorithm="blocked")
    (fwd,), (h,), (g,) = (_blocked(lowered, r) for r in ("fwd", "dinput", "dweight"))
    assert (str(fwd.vector), str(fwd.block.var), fwd.width) == ("k", "i1", 11)
    assert (fwd.extent, fwd.lanes) == (20, 16)
    assert (str(h.vector), h.extent, int(h.block.stop)) == ("c", 20, 31)
    assert (str(g.vector), str(g.block.var), g.width) == ("k", "c", 10)
    nest = walk(blocked.lower(fwd))
    assert [(s.start, s.stop, s.step) for s in nest if isinstance(s, Loop)
            and str(s.var) == "i1_block"] == [(0, 22, 11)]
    tail = next(s for s in nest if isinstance(s, Block))
    (accumulators,) = [s for s in walk(tail.body) if isinstance(s, Let) and s.count]
    assert accumulators.count == 9
    assert "i1_block in [0, 22) step 11" in explain(lowered)


def test_rows_of_outputs_are_stored_a_row_at_a_time():
    """Where a block's outputs lie in a row (the forward pass's and h's columns), each
    lane's row is stored at once (`RowsStore`), the bias added as a vector first; g's
    blocks (input channels, 9 apart in the kernel gradient) are stored lane by lane."""
    lowered = convc.lower(conv_graph(**CASES["plain"]), grad=WRT, algorithm="blocked")
    (fwd,), (h,), (g,) = (_blocked(lowered, r) for r in ("fwd", "dinput", "dweight"))
    assert (fwd.rows, h.rows, g.rows) == (6 * 31, 6 * 31, None)
    rows = [s for s in walk(blocked.lower(fwd)) if isinstance(s, RowsStore)]
    assert [(r.width, str(r.rows)) for r in rows] == [(11, "Min(16, 20 - 16*k_vector)"),
                                                       (9, "Min(16, 20 - 16*k_vector)")]
    bias = [s for s in walk(blocked.lower(fwd)) if isinstance(s, Update)
            and "conv0.bias" in str(s.value)]
    assert bias and all(isinstance(s.value, VLoad) for s in bias)
    assert not [s for s in walk(blocked.lower(g)) if isinstance(s, RowsStore)]
    assert "convc_vstore_rows_f32(&" in convc.compile(conv_graph(**CASES["plain"]),
                                                      algorithm="blocked").source


@pytest.mark.parametrize("target", ["native", "portable", "scalar"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_are_stored_on_every_target(target, dtype, monkeypatch):
    """The transposing store (GCC's and Clang's vector shuffles, or lane by lane on the
    scalar target) writes each row where it belongs: 20 channels (a vector and 4 lanes of
    one), rows of 11 and 9 (eight accumulators transposed at a time, and what is left)."""
    monkeypatch.setenv("CONVC_TARGET", target)
    net = convc.compile(conv_graph(**CASES["plain"]), dtype, grad=WRT, algorithm="blocked")
    assert f"convc_vstore_rows_{dtype[0]}{dtype[-2:]}(&" in net.source
    check_against_references(net, CASES["plain"], 11, dtype,
                             1e-10 if dtype == "float64" else 2e-5)


STRIDED_H = dict(cin=20, size=(9, 30), channels=6, kernel=(3, 3), stride=2, padding=1)


@pytest.mark.parametrize("target", ["native", "portable", "scalar"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_strided_layers_input_gradient_stores_rows_every_other_element(target, dtype,
                                                                         monkeypatch):
    """h of a stride-2 layer is four phases, each writing every other element of a row of
    the input gradient; between them they write each element once, so each stores its
    elements (no zeros first) a row per lane at step 2 (`RowsStore(add=False, step=2)`:
    the runtime's masked even lanes, or element by element), on every target. 20 input
    channels (a vector and 4 lanes of one); rows of 15 outputs per phase (eight transposed
    at a time, and seven); 9 rows, so that two phases have a row more than the others."""
    monkeypatch.setenv("CONVC_TARGET", target)
    lowered = convc.lower(conv_graph(**STRIDED_H), dtype, grad=WRT, algorithm="blocked")
    phases = _blocked(lowered, "dinput")
    assert len(phases) == 4 and all(p.step == 2 and p.init is None for p in phases)
    stores = [s for p in phases for s in walk(blocked.lower(p)) if isinstance(s, RowsStore)]
    assert stores and not any(s.add for s in stores) and all(s.step == 2 for s in stores)
    assert not any(c.tensor == "grad:x" for s in lowered.steps for c in s.comps
                   if c.body == 0)  # no zeros written first
    net = convc.compile(conv_graph(**STRIDED_H), dtype, grad=WRT, algorithm="blocked")
    assert f"convc_vstore_rows_{dtype[0]}{dtype[-2:]}(&" in net.source
    check_against_references(net, STRIDED_H, 12, dtype, 1e-10 if dtype == "float64" else 2e-5)


@pytest.mark.parametrize("target", ["native", "portable", "scalar"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_strided_layers_input_gradient_adds_rows_to_another(target, dtype, monkeypatch):
    """Where the input also feeds a ReLU, whose gradient is written first, the phases add
    theirs to it, a row per lane at step 2 (`RowsStore(add=True, step=2)`)."""
    monkeypatch.setenv("CONVC_TARGET", target)
    g = convc.Graph("shared")
    x = g.input("x", (None, 20, 9, 30))
    g.output(g.conv(x, channels=6, kernel=3, stride=2, padding=1, bias=False, name="conv0"),
             g.relu(x, name="relu0"))
    net = convc.compile(g, dtype, grad=["x"], algorithm="blocked")
    phases = _blocked(net.lowered, "dinput")
    assert len(phases) == 4 and all(p.step == 2 and p.init == p.output for p in phases)
    assert f"convc_vadd_rows_{dtype[0]}{dtype[-2:]}(&" in net.source
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((2, 20, 9, 30))
    w = rng.standard_normal((6, 20, 3, 3))
    gy, gz = rng.standard_normal((2, 6, 5, 15)), rng.standard_normal(xs.shape)
    pads = padding_pairs(1, (9, 30), (3, 3), (2, 2), (1, 1))
    dx, _, _ = conv_grads_scatter(xs, w, gy, (2, 2), (1, 1), pads, 1)
    arrays = {"x": xs, "conv0.weight": w, "grad:conv0": gy, "grad:relu0": gz}
    _, grads = net(**{k: v.astype(dtype) for k, v in arrays.items()})
    tol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(grads["x"], dx + gz * (xs > 0), rtol=tol, atol=tol)


def test_the_phases_of_a_strided_input_gradient_share_their_loops():
    """The four phases add into every other element of the input gradient's rows, two
    phases a row: they run in one nest (one parallel region), each in a scope of its own
    below the loops they share, so that a row one phase added to is still in the cache
    when the next adds to it (the kernel of each laid out in vectors before them all)."""
    c = dict(cin=20, size=(10, 30), channels=6, kernel=(3, 3), stride=2, padding=1)
    net = convc.compile(conv_graph(**c), grad=WRT, algorithm="blocked", num_threads=2)
    step = next(s for s in net.lowered.steps if s.role == "dinput")
    nests = [n for n in net.lowered.kernels[step].nests
             if any(isinstance(s, RowsStore) for s in walk((n,)))]
    assert len(nests) == 1 and nests[0].kind is LoopKind.PARALLEL
    stores = [s for s in walk(nests) if isinstance(s, RowsStore)]
    assert len({s.target.base for s in stores}) == 1 and len(stores) == 8  # 15 = 8 + 7
    check_against_references(net, c, 12, "float32", 2e-5)


@pytest.mark.parametrize("target", ["native", "portable", "scalar"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_output_gradient_is_laid_out_by_transposed_tiles(target, dtype, monkeypatch):
    """g reads the output gradient in vectors of output channels: a copy that moves the
    channel innermost, done in tiles transposed a vector at a time (`TransposeTile`): 32
    channels (whole vectors of either type), rows of 21 (a whole tile and a narrower
    one), on every target."""
    monkeypatch.setenv("CONVC_TARGET", target)
    c = dict(cin=3, size=(5, 23), channels=32, kernel=(3, 3), padding=0)
    net = convc.compile(conv_graph(**c), dtype, grad=WRT, algorithm="blocked")
    lanes = 16 if dtype == "float32" else 8
    step = next(s for s in net.lowered.steps if s.role == "dweight")
    tiles = [t for t in walk(net.lowered.kernels[step].nests) if isinstance(t, TransposeTile)]
    assert [(t.rows, t.cols) for t in tiles] == [(lanes, lanes), (lanes, 21 % lanes)]
    assert f"convc_transpose_{dtype[0]}{dtype[-2:]}(&" in net.source
    check_against_references(net, c, 12, dtype, 1e-10 if dtype == "float64" else 2e-5)
    partial = convc.lower(conv_graph(**CASES["plain"]), dtype, grad=WRT, algorithm="blocked")
    assert "convc_transpose" not in partial.source  # 20 channels: reads past the last tested


def test_results_do_not_depend_on_the_thread_count():
    """Each output is summed by one thread in one order: identical bits."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 20, 6, 31)).astype(np.float32)
    params = {"conv0.weight": rng.standard_normal((20, 20, 3, 3)).astype(np.float32),
              "conv0.bias": rng.standard_normal(20).astype(np.float32)}
    outs = [convc.compile(conv_graph(**CASES["plain"]), algorithm="blocked",
                          num_threads=t)(x=x, **params) for t in (1, 2)]
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_functions_of_blocked_sums_keep_broadcasts_in_their_multiply_adds(threads):
    """Their functions, and those their parallel loops became, are marked for the compiler
    (`CONVC_BROADCASTING`), and no others are."""
    graph = conv_graph(**CASES["plain"])
    source = convc.lower(graph, grad=WRT, algorithm="blocked", num_threads=threads).source
    lines = source.splitlines()
    functions = {line.split("(")[0].split()[-1]: lines[i - 1] == "CONVC_BROADCASTING"
                 for i, line in enumerate(lines) if line.startswith("static void ")}
    for step in ("fwd", "dweight", "dinput"):
        assert functions[f"convc_cols_conv0_{step}"]
    assert not functions["convc_cols_conv0_dbias"]  # a plain sum
    if threads > 1:  # the bodies of its parallel loops too
        assert functions["convc_cols_conv0_fwd_n_k_vector_i0"]
    direct = convc.lower(graph, grad=WRT, algorithm="direct", num_threads=threads).source
    assert "CONVC_BROADCASTING" not in direct
    header = (convc.build.runtime_dir() / "convc_runtime.h").read_text()
    assert '__attribute__((optimize("no-predictive-commoning")))' in header


def test_the_cost_model_takes_it_where_vectors_fill():
    """A strided layer with 128 channels each way runs blocked; a depthwise layer (one
    output channel per group: nothing to put in a vector) never does."""
    g = convc.Graph("strided")
    x = g.input("x", (8, 128, 56, 56))
    g.output(g.conv(x, 128, 3, stride=2, padding=1, bias=False, name="conv0"))
    assert convc.lower(g).algorithms[next(iter(convc.lower(g).algorithms))] == ("blocked",)
    d = convc.Graph("depthwise")
    x = d.input("x", (8, 32, 20, 20))
    d.output(d.conv(x, 32, 3, padding=1, groups=32, bias=False, name="conv0"))
    lowered = convc.lower(d, grad=True, algorithm="blocked")
    assert all("blocked" not in used for used in lowered.algorithms.values())


def test_a_long_sum_is_split_outside_the_blocks(monkeypatch, unremembered):
    """g of a large layer sums over every image and position: its blocks would each read
    megabytes of the output gradient, so the images loop outside them and each block adds
    to what the images before stored. Shrunk here so that a small layer splits too."""
    lowered = convc.lower(conv_graph(cin=64, size=(56, 56), channels=64, kernel=3,
                                     padding=1), grad=["conv0.weight"], algorithm="blocked")
    (g,) = _blocked(lowered, "dweight")
    assert [str(d.var) for d in g.outside] == ["n"]
    monkeypatch.setattr(blocked, "CACHE", 64 * 40)
    monkeypatch.setattr(blocked, "LONG_SUM", 7)
    monkeypatch.setattr(blocked, "STRETCH", 1)
    c = dict(cin=3, size=(5, 7), channels=18, kernel=(2, 3), padding=1)
    net = convc.compile(conv_graph(**c), "float64", grad=WRT, algorithm="blocked")
    (g,) = _blocked(net.lowered, "dweight")
    assert [str(d.var) for d in g.outside] == ["n", "i0"]  # a sum over 7 columns left
    check_against_references(net, c, seed=5)


def test_the_phases_of_a_strided_input_gradient_read_one_padded_copy():
    """Each phase reads a box of the output gradient a cell from the others'; the copy the
    first one pads holds them all (a phase that stays inside reads the gradient itself)."""
    lowered = convc.lower(conv_graph(**CASES["strided"]), grad=["x"], algorithm="blocked")
    step = next(s for s in lowered.steps if s.role == "dinput")
    assert lowered.algorithms[step] == ("blocked",) * 4
    pads = [p for p in lowered.parts[step] if "~pad" in getattr(p, "tensor", "")]
    assert len(pads) == 1
    reads = [str(p.signal.base.label) for p in _blocked(lowered, "dinput")]
    assert set(reads) <= {pads[0].tensor, "seed:conv0"} and reads.count(pads[0].tensor) > 1


def test_a_sum_into_few_blocks_is_split_into_partial_sums():
    """A 5x5 kernel gradient of 6 channels is 5 blocks, too few to share among threads:
    each image sums its own partial result (the images run in parallel with the blocks),
    then the partial results are added in order. Same numbers on 1 and 2 threads."""
    c = dict(cin=1, size=(12, 12), channels=6, kernel=(5, 5), padding=0)
    nets = [convc.compile(conv_graph(**c), "float64", grad=WRT, algorithm="blocked",
                          num_threads=t) for t in (1, 2)]
    (g,) = _blocked(nets[0].lowered, "dweight")
    assert g.tensor == "grad:conv0.weight~partial" and str(g.loops[0].var) == "n"
    assert "n" not in {str(d.var) for d in g.reduced}
    check_against_references(nets[1], c, seed=6)
    rng = np.random.default_rng(7)
    args = {"x": rng.standard_normal((5, 1, 12, 12)),
            "conv0.weight": rng.standard_normal((6, 1, 5, 5)),
            "conv0.bias": rng.standard_normal(6), "grad:conv0": rng.standard_normal((5, 6, 8, 8))}
    one, two = (net(**args)[1]["conv0.weight"] for net in nets)
    assert np.array_equal(one, two)
