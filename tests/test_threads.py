"""num_threads: large loops and the products' batches are shared among threads; results do
not depend on the count beyond the order of a kernel gradient's partial sums, and a given
count gives the same bits on every run."""

import re
import threading

import numpy as np
import pytest

import convc


def network():
    g = convc.Graph("threads")
    x = g.input("x", (None, 3, 12, 12))
    y = g.input("y", (None,), dtype="int64")
    h = g.relu(g.conv(x, channels=16, kernel=3, padding=1))
    h = g.max_pool(g.relu(g.conv(h, channels=24, kernel=3, stride=2, padding=1)), 2)
    logits = g.dense(g.flatten(h), 10)
    g.output(g.softmax_cross_entropy(logits, y))
    return g


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((37, 3, 12, 12)).astype(np.float32),
            rng.integers(0, 10, 37))


def run(threads, batch, params=None):
    net = convc.compile(network(), grad=True, num_threads=threads)
    params = params if params is not None else net.init_params(seed=3)
    x, y = batch
    return net(x=x, y=y, **params), params, net


def test_thread_counts_agree_and_each_repeats_exactly(batch):
    (loss1, grads1), params, _ = run(1, batch)
    for threads in (2, 3):
        (loss, grads), _, net = run(threads, batch, params)
        assert f"num_threads({threads})" in net.source
        np.testing.assert_allclose(loss, loss1, rtol=1e-5)
        for name in grads1:
            np.testing.assert_allclose(grads[name], grads1[name], rtol=1e-4, atol=1e-5)
        again, again_grads = net(x=batch[0], y=batch[1], **params)
        assert again == loss
        for name in grads:
            np.testing.assert_array_equal(again_grads[name], grads[name])


def test_one_thread_has_no_pragma_and_explain_says_how_many():
    net = convc.compile(network(), num_threads=1)
    assert "#pragma omp parallel" not in net.source
    assert ", 1 thread, " in net.explain()
    two = convc.compile(network(), num_threads=2)
    assert ", 2 threads, " in two.explain() and "(parallel)" in two.explain()


def test_threaded_module_serves_several_python_threads(batch):
    (expected, grads), params, net = run(2, batch)
    results = []

    def work():
        results.append(net(x=batch[0], y=batch[1], **params))

    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 4
    for loss, got in results:
        assert loss == expected
        for name in grads:
            np.testing.assert_array_equal(got[name], grads[name])


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_num_threads_must_be_a_positive_int(bad):
    with pytest.raises(convc.GraphError, match="num_threads must be a positive int"):
        convc.lower(network(), num_threads=bad)


def test_parallel_loop_bodies_are_functions_whose_pointers_stay_restrict():
    """GCC moves an OpenMP loop's body into a function of its own in which the kernel's
    pointers lose ``restrict``; a body with loops in it is therefore a function of its own
    with ``restrict`` pointers, called with the loop's variables (all of a collapse)."""
    source = convc.compile(network(), grad=True, num_threads=2).source
    pragma = re.compile(r"#pragma omp parallel for(?: collapse\((\d+)\))? num_threads\(2\)\n"
                        r"((?:\s*for \(int64_t (\w+) = .*\n)+)\s*(\w+)\((.*)\);\n")
    calls = list(pragma.finditer(source))
    assert len(calls) >= 5
    for call in calls:
        loops = re.findall(r"for \(int64_t (\w+) =", call.group(2))
        assert len(loops) == int(call.group(1) or 1)
        name, args = call.group(4), call.group(5).split(", ")
        assert args[-len(loops):] == loops
        signature = re.search(rf"static void {name}\((.*)\)\n{{", source).group(1)
        pointers = [p for p in signature.split(", ") if "*" in p]
        assert pointers and all("*restrict " in p for p in pointers)
        assert signature.endswith(", ".join(f"int64_t {v}" for v in loops))
    assert any(int(c.group(1) or 1) > 1 for c in calls)  # the blocked sums' collapsed loops
